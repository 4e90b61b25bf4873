#!/usr/bin/env bash
# The one wrapper every sh_test uses to run Python: it runs a py_binary from the test's runfiles, whose launcher
# brings the interpreter and packages the build declared, so the same test runs in both Bazel modes and on remote
# workers:
#   connected mode (Bazel 8)  rules_python's toolchain interpreter and the @pypi wheels in the runfiles
#   offline mode (Bazel 4)    the venv tools/setup.sh builds (the toolchain; @pypi records its locked versions)
#   --config=remote           the worker image's interpreter and packages (//bazel/platforms:image_python_toolchain)
#
# usage: python_provider.sh BINARY [ARGS...]
#   BINARY  the runfiles path of a py_binary in the sh_test's data, e.g. $(rootpath //src/training:train_model)
#
# Under `bazel test`, outputs (metrics JSON, plots, models) go to $TEST_UNDECLARED_OUTPUTS_DIR via
# $CPU_FINETUNE_OUTPUT_DIR, and the Hugging Face cache to the test's private $TEST_TMPDIR unless HF_HOME is set.
set -euo pipefail

die() { echo "python_provider.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: python_provider.sh BINARY [ARGS...] (BINARY: \$(rootpath) of a py_binary in data)"
[[ -n "${TEST_SRCDIR:-}" && -n "${TEST_WORKSPACE:-}" ]] \
  || die "runs a py_binary from a test's runfiles: use it as an sh_test's srcs (outside Bazel: bazel run the binary)"

binary="$TEST_SRCDIR/$TEST_WORKSPACE/$1"
shift
[[ -f "$binary" && -x "$binary" ]] || die "no py_binary at $binary: add it to the sh_test's data and pass its \$(rootpath)"

if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
  export CPU_FINETUNE_OUTPUT_DIR="$TEST_UNDECLARED_OUTPUTS_DIR"
fi
if [[ -n "${TEST_TMPDIR:-}" && -z "${HF_HOME:-}" ]]; then
  export HF_HOME="$TEST_TMPDIR/hf_home"
fi
# The launcher finds its runfiles (interpreter, packages, sources) in the test's tree.
export RUNFILES_DIR="${RUNFILES_DIR:-$TEST_SRCDIR}"
exec "$binary" "$@"
