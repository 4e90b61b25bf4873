#!/usr/bin/env bash
# Checks python_provider.sh: it runs the py_binary it is given through that binary's own
# launcher (so the interpreter and packages are the ones the build declared), passes
# arguments and the exit code through, points outputs at $TEST_UNDECLARED_OUTPUTS_DIR,
# and fails with one line on bad usage.
set -euo pipefail

provider="$1"
probe="$2"  # $(rootpath :provider_probe)
fail() { echo "FAIL: $*" >&2; exit 1; }

# The probe runs through its launcher: its main file is the runfiles copy, outputs are redirected.
out="$("$provider" "$probe" print-env)"
grep -q "^main=.*/tools/testdata/provider_probe.py\$" <<<"$out" || fail "probe did not run: $out"
grep -q "^output_dir=$TEST_UNDECLARED_OUTPUTS_DIR\$" <<<"$out" || fail "CPU_FINETUNE_OUTPUT_DIR not set: $out"
grep -q "^hf_home=$TEST_TMPDIR/hf_home\$" <<<"$out" || fail "HF_HOME not private to the test: $out"
# The launcher picks the interpreter (the build's toolchain), not the environment: a $PYTHON
# or a venv elsewhere changes nothing.
fake="$TEST_TMPDIR/fake_python"
printf '#!/usr/bin/env bash\necho "fake python $*"\n' >"$fake"
chmod +x "$fake"
out="$(PYTHON="$fake" CPU_FINETUNE_VENV=/nonexistent "$provider" "$probe" print-env)"
grep -q "^main=.*/tools/testdata/provider_probe.py\$" <<<"$out" || fail "the environment chose the interpreter: $out"
# An explicit HF_HOME is kept.
out="$(HF_HOME=/somewhere "$provider" "$probe" print-env)"
grep -q "^hf_home=/somewhere\$" <<<"$out" || fail "HF_HOME overridden: $out"

# Arguments pass through verbatim, and so does the exit code.
out="$("$provider" "$probe" echo "two words" --flag)"
[[ "$out" == $'two words\n--flag' ]] || fail "arguments not passed through: $out"
set +e
"$provider" "$probe" exit 7
rc=$?
set -e
[[ $rc -eq 7 ]] || fail "exit code $rc, expected 7"

# Bad usage: one line on stderr, exit 2.
expect_usage_error() {  # expect_usage_error WHAT COMMAND...
  local what="$1" err rc
  shift
  set +e
  err="$("$@" 2>&1 >/dev/null)"
  rc=$?
  set -e
  [[ $rc -eq 2 && "$(wc -l <<<"$err")" -eq 1 ]] || fail "$what: rc=$rc err=$err"
}
expect_usage_error "no arguments" "$provider"
expect_usage_error "a binary not in the runfiles" "$provider" tools/no_such_binary
expect_usage_error "the old -m MODULE form" "$provider" -m tools.testdata.provider_probe
expect_usage_error "outside a test" env -u TEST_SRCDIR "$provider" "$probe" print-env

echo "python_provider.sh: all checks passed"
