#!/usr/bin/env bash
# Checks python_provider.sh: interpreter choice, module and script modes, exit
# code pass-through, outputs pointed at $TEST_UNDECLARED_OUTPUTS_DIR.
set -euo pipefail

provider="$1"
probe="tools/testdata/provider_probe.py"
fail() { echo "FAIL: $*" >&2; exit 1; }

# Module mode, imports from the repository root, outputs redirected.
out="$("$provider" -m tools.testdata.provider_probe print-env)"
grep -q "^output_dir=$TEST_UNDECLARED_OUTPUTS_DIR\$" <<<"$out" || fail "CPU_FINETUNE_OUTPUT_DIR not set: $out"
grep -q "^hf_home=$TEST_TMPDIR/hf_home\$" <<<"$out" || fail "HF_HOME not private to the test: $out"
grep -q "^executable=/opt/cpu-finetune/venv/bin/python" <<<"$out" || fail "did not prefer the venv: $out"

# Script mode, relative to the repository root; arguments pass through verbatim.
out="$("$provider" "$probe" echo "two words" --flag)"
[[ "$out" == $'two words\n--flag' ]] || fail "arguments not passed through: $out"

# The exit code passes through.
set +e
"$provider" "$probe" exit 7
rc=$?
set -e
[[ $rc -eq 7 ]] || fail "exit code $rc, expected 7"

# $PYTHON wins over the venv.
fake="$TEST_TMPDIR/fake_python"
printf '#!/usr/bin/env bash\necho "fake python $*"\n' >"$fake"
chmod +x "$fake"
out="$(PYTHON="$fake" "$provider" -m some.module --x)"
[[ "$out" == "fake python -m some.module --x" ]] || fail "PYTHON not honoured: $out"

# Bad usage: one line on stderr, non-zero exit.
set +e
err="$("$provider" no/such/script.py 2>&1 >/dev/null)"
rc=$?
set -e
[[ $rc -eq 2 && "$(wc -l <<<"$err")" -eq 1 ]] || fail "bad script: rc=$rc err=$err"

echo "python_provider.sh: all checks passed"
