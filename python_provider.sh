#!/usr/bin/env bash
# The one wrapper every sh_test uses to run Python: it takes the interpreter the
# execution environment provides, so the same test runs locally, in the offline
# Bazel mode and on remote workers (whose image has the venv at the same path).
#
# usage: python_provider.sh -m MODULE [ARGS...]
#        python_provider.sh path/to/script.py [ARGS...]
#
# Interpreter, first found:  $PYTHON, $CPU_FINETUNE_VENV/bin/python
# (default /opt/cpu-finetune/venv), python3 on PATH.
# Under `bazel test`, outputs (metrics JSON, plots, models) go to
# $TEST_UNDECLARED_OUTPUTS_DIR via $CPU_FINETUNE_OUTPUT_DIR, and the Hugging Face
# cache to the test's private $TEST_TMPDIR unless HF_HOME is set.
set -euo pipefail

die() { echo "python_provider.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: python_provider.sh -m MODULE [ARGS...] | SCRIPT.py [ARGS...]"

venv="${CPU_FINETUNE_VENV:-/opt/cpu-finetune/venv}"
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$venv/bin/python" ]]; then
  python="$venv/bin/python"
elif command -v python3 >/dev/null; then
  python="$(command -v python3)"
else
  die "no Python interpreter: set PYTHON, create the venv with tools/setup_venv.sh, or put python3 on PATH"
fi

# Imports are from the repository root: the main repo's runfiles tree under
# Bazel, else the directory of this script (a plain checkout).
if [[ -n "${TEST_SRCDIR:-}" && -n "${TEST_WORKSPACE:-}" ]]; then
  root="$TEST_SRCDIR/$TEST_WORKSPACE"
else
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
  export CPU_FINETUNE_OUTPUT_DIR="$TEST_UNDECLARED_OUTPUTS_DIR"
fi
if [[ -n "${TEST_TMPDIR:-}" && -z "${HF_HOME:-}" ]]; then
  export HF_HOME="$TEST_TMPDIR/hf_home"
fi

if [[ "$1" == "-m" ]]; then
  [[ $# -ge 2 ]] || die "-m needs a module name"
  module="$2"
  shift 2
  exec "$python" -m "$module" "$@"
fi

script="$1"
shift
[[ "$script" == /* ]] || script="$root/$script"
[[ -f "$script" ]] || die "no such script: $script"
exec "$python" "$script" "$@"
