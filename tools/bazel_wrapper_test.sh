#!/usr/bin/env bash
# Checks that tools/bazel gives each Bazel version its own rc file, and that the rc files
# are read in an order where user.bazelrc comes last (so a user can override any
# committed flag) and ~/.bazelrc is read once.
set -euo pipefail

wrapper="$1"
workspace="$(cd "$(dirname "$wrapper")/.." && pwd)"
fail() { echo "FAIL: $*" >&2; exit 1; }

fake_bazel() {  # fake_bazel VERSION -> path of a fake Bazel that prints its version or its args
  local path="$TEST_TMPDIR/bazel-$1"
  printf '#!/usr/bin/env bash\nif [[ "$1" == --version ]]; then echo "bazel %s"; else echo "$@"; fi\n' "$1" >"$path"
  chmod +x "$path"
  echo "$path"
}

export HOME="$TEST_TMPDIR/home"
mkdir -p "$HOME"
touch "$HOME/.bazelrc"

# Offline mode (Debian's Bazel 4): where Debian's netty-tcnative JNI library is installed, the wrapper hands Bazel a
# copy under the name netty loads (Bazel 4's only TLS); elsewhere no startup flag.
tcnative="$(compgen -G "/usr/lib/*/jni/libnetty-tcnative.so" | head -n 1 || true)"
jni_dir="$HOME/.cache/cpu-finetune/bazel-jni"
startup=""
[[ -n "$tcnative" && -d /usr/share/bazel ]] && startup="--host_jvm_args=-Djava.library.path=/usr/share/bazel/:$jni_dir "
for version in no_version 4.2.3; do
  out="$(BAZEL_REAL="$(fake_bazel "$version")" "$wrapper" test //...)"
  [[ "$out" == "$startup--bazelrc=$workspace/bazel/rc/offline.bazelrc test //..." ]] || fail "Bazel $version: $out"
done
if [[ -n "$startup" ]]; then
  cmp -s "$tcnative" "$jni_dir/libnetty_tcnative.so" || fail "no copy of $tcnative as $jni_dir/libnetty_tcnative.so"
  [[ ! -L "$jni_dir/libnetty_tcnative.so" ]] || fail "$jni_dir/libnetty_tcnative.so is a link (the library refuses one)"
fi

out="$(BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" build //x)"
[[ "$out" == "--bazelrc=$workspace/bazel/rc/bzlmod.bazelrc build //x" ]] || fail "Bazel 8: $out"

# Bazel (4.2.3 and 8) reads: /etc/bazel.bazelrc, %workspace%/.bazelrc, ~/.bazelrc, then each
# --bazelrc in order; an import is read where it stands. Expand that order from the
# wrapper's arguments and check where user.bazelrc and ~/.bazelrc land.
expand() {  # expand RC: RC's name, then the files it imports, depth first
  local rc="$1" line target
  echo "${rc#"$workspace"/}"
  [[ -f "$rc" ]] || return 0
  while read -r line; do
    target="${line#* }"
    target="${target//%workspace%/$workspace}"
    expand "$target"
  done < <(grep -E '^(try-)?import ' "$rc" || true)
}
for version in 4.2.3 8.4.2; do
  args="$(BAZEL_REAL="$(fake_bazel "$version")" "$wrapper" build //x)"
  order=("$(expand "$workspace/.bazelrc")" "$HOME/.bazelrc")
  for arg in $args; do
    [[ "$arg" == --bazelrc=* ]] && order+=("$(expand "${arg#--bazelrc=}")")
  done
  order_text="$(printf '%s\n' "${order[@]}")"
  [[ "$(tail -n 1 <<<"$order_text")" == "user.bazelrc" ]] || fail "Bazel $version: user.bazelrc is not read last: $order_text"
  [[ "$(grep -c '^user.bazelrc$' <<<"$order_text")" -eq 1 ]] || fail "Bazel $version: user.bazelrc read twice: $order_text"
  [[ "$(grep -cF "$HOME/.bazelrc" <<<"$order_text")" -eq 1 ]] || fail "Bazel $version: ~/.bazelrc read twice: $order_text"
done

# Explicit override, and a bad value.
out="$(CPU_FINETUNE_BAZEL_MODE=offline BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" info)"
[[ "$out" == *offline.bazelrc* ]] || fail "override ignored: $out"
set +e
CPU_FINETUNE_BAZEL_MODE=bogus BAZEL_REAL="$(fake_bazel 8.4.2)" "$wrapper" info 2>/dev/null
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "bad mode accepted (rc=$rc)"

echo "tools/bazel: all checks passed"
