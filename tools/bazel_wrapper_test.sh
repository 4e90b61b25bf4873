#!/usr/bin/env bash
# Checks that tools/bazel gives each Bazel version its own rc file.
set -euo pipefail

wrapper="$1"
fail() { echo "FAIL: $*" >&2; exit 1; }

fake_bazel() {  # fake_bazel VERSION -> path of a fake Bazel that prints its version or its args
  local path="$TEST_TMPDIR/bazel-$1"
  printf '#!/usr/bin/env bash\nif [[ "$1" == --version ]]; then echo "bazel %s"; else echo "$@"; fi\n' "$1" >"$path"
  chmod +x "$path"
  echo "$path"
}

export HOME="$TEST_TMPDIR/home"
mkdir -p "$HOME"

for version in no_version 4.2.3; do
  out="$(BAZEL_REAL="$(fake_bazel "$version")" "$wrapper" test //...)"
  [[ "$out" == --bazelrc=*/bazel/rc/offline.bazelrc\ test\ //... ]] || fail "Bazel $version: $out"
done

out="$(BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" build //x)"
[[ "$out" == --bazelrc=*/bazel/rc/bzlmod.bazelrc\ build\ //x ]] || fail "Bazel 8: $out"

# The home rc is still read after ours.
touch "$HOME/.bazelrc"
out="$(BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" info)"
[[ "$out" == *"--bazelrc=$HOME/.bazelrc info" ]] || fail "home rc dropped: $out"

# Explicit override, and a bad value.
out="$(CPU_FINETUNE_BAZEL_MODE=offline BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" info)"
[[ "$out" == *offline.bazelrc* ]] || fail "override ignored: $out"
set +e
CPU_FINETUNE_BAZEL_MODE=bogus BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" info 2>/dev/null
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "bad mode accepted (rc=$rc)"

echo "tools/bazel: all checks passed"
