#!/usr/bin/env bash
# Regenerates the locks from bazel_requirements.in and bazel_requirements_nodeps.in. Run it as
# `bazel run //:requirements_update` (either Bazel mode) or directly from the repository root.
#
#   bazel_requirements_lock.txt         Linux x86_64, Python 3.11, torch's CPU build (+cpu): tools/setup.sh,
#                                       the worker image, offline mode, and pip.parse on Linux hosts
#   bazel_requirements_lock_darwin.txt  macOS arm64 (14+), Python 3.11, torch from PyPI: pip.parse on Macs;
#                                       the same version of every package as the Linux lock
#   tools/lock/patches/*.metadata.patch the nodeps packages' METADATA without their Requires-Dist lines, applied
#                                       by rules_python (pip.override in MODULE.bazel) so that the hub does not
#                                       depend on packages the lock leaves out
#
# usage: update_lock.sh [--upgrade]   (without --upgrade, versions already locked are kept: pip-compile's default)
#
# Environment:
#   TORCH_CPU_INDEX_URL  index that serves CPU builds of torch (default https://download.pytorch.org/whl/cpu; set
#                        it empty where pip already finds torch locally, e.g. via a find-links entry in pip.conf)
#   LOCK_PYTHON          a Python 3.11 interpreter to resolve with (default python3.11, else python3)
set -euo pipefail

repo="${BUILD_WORKSPACE_DIRECTORY:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$repo"

python="${LOCK_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "3.11" ]]; then
  echo "error: the locks are resolved for Python 3.11; set LOCK_PYTHON to a python3.11 interpreter" >&2
  exit 2
fi

# Tools pinned here; the locks only change when the inputs or these pins do.
pip_tools_version="7.6.2"
uv_version="0.13.9"
darwin_platform="aarch64-apple-darwin"
darwin_min_macos="14.0"  # torch 2.13's macOS wheels are macosx_14_0_arm64

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "pip-tools==$pip_tools_version" "uv==$uv_version"

index_args=()
torch_index="${TORCH_CPU_INDEX_URL-https://download.pytorch.org/whl/cpu}"
torch_hash_checked=1
if [[ -n "$torch_index" ]] && "$work/venv/bin/python" - "$torch_index" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10)
PY
  index_args+=(--extra-index-url "$torch_index")
else
  torch_hash_checked=0
  echo "update_lock.sh: torch CPU index unreachable; torch's +cpu wheel comes from pip's configured indexes" >&2
fi

upgrade=()
case "${1:-}" in
  "") ;;
  --upgrade) upgrade=(--upgrade) ;;
  *) echo "update_lock.sh: unknown argument '$1' (usage: update_lock.sh [--upgrade])" >&2; exit 2 ;;
esac

# 1. Linux x86_64 (existing pins are kept unless --upgrade) ---------------------------------------------------------
cp bazel_requirements_lock.txt "$work/linux.txt"
"$work/venv/bin/pip-compile" ${upgrade[@]+"${upgrade[@]}"} --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --no-header ${index_args[@]+"${index_args[@]}"} \
  --output-file "$work/linux.txt" bazel_requirements.in

# 2. macOS arm64: the same versions (the Linux lock as constraints), torch without the +cpu label -----------------------
sed -E 's/^(torch==[^+ ]+)\+cpu/\1/' bazel_requirements.in >"$work/darwin.in"
grep -E '^[A-Za-z0-9][A-Za-z0-9._-]*==' "$work/linux.txt" | sed -E 's/ .*$//' | grep -v '^torch==' >"$work/constraints.txt"
MACOSX_DEPLOYMENT_TARGET="$darwin_min_macos" "$work/venv/bin/uv" pip compile --quiet --generate-hashes \
  --no-header --python-version 3.11 --python-platform "$darwin_platform" \
  --index-url https://pypi.org/simple --constraints "$work/constraints.txt" \
  --output-file "$work/darwin.txt" "$work/darwin.in"
sed -E "s|$work/darwin.in|bazel_requirements.in|; s|$work/constraints.txt|bazel_requirements_lock.txt|" \
  "$work/darwin.txt" >"$work/darwin.named.txt"
mv "$work/darwin.named.txt" "$work/darwin.txt"

# 3. Packages locked without their dependencies, and their METADATA patches ----------------------------------------
mkdir -p "$work/nodeps" tools/lock/patches
rm -f tools/lock/patches/*.metadata.patch
nodeps_block="$work/nodeps.txt"
: >"$nodeps_block"
grep -Ev '^\s*(#|$)' bazel_requirements_nodeps.in | while read -r req; do
  rm -f "$work/nodeps/"*
  "$work/venv/bin/pip" download --quiet --no-deps --dest "$work/nodeps" "$req"
  wheel="$(cd "$work/nodeps" && ls ./*.whl)"
  wheel="${wheel#./}"
  hash="$("$work/venv/bin/pip" hash "$work/nodeps/$wheel" | sed -n 's/^--hash=//p')"
  printf '%s \\\n    --hash=%s\n    # via -r bazel_requirements_nodeps.in\n' "$req" "$hash" >>"$nodeps_block"
  "$work/venv/bin/python" - "$work/nodeps/$wheel" tools/lock/patches <<'PY'
import base64, difflib, hashlib, pathlib, re, sys, zipfile
wheel, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
name, version = wheel.name.split("-")[:2]
dist_info = f"{name}-{version}.dist-info"
archive = zipfile.ZipFile(wheel)
original = archive.read(f"{dist_info}/METADATA").decode("utf-8")
# Unconditional requirements only: a requirement behind an extra is never installed.
patched = "".join(
    line for line in original.splitlines(keepends=True) if not re.match(r"Requires-Dist: [^;]*$", line.rstrip("\n"))
)
# RECORD lists METADATA's hash and size; patch that line too, so rules_python's repacked wheel has the RECORD the
# patched wheel claims (otherwise it prints a warning on every fetch).
digest = base64.urlsafe_b64encode(hashlib.sha256(patched.encode("utf-8")).digest()).rstrip(b"=").decode()
record = archive.read(f"{dist_info}/RECORD").decode("utf-8")
new_record = re.sub(rf"(?m)^{re.escape(dist_info)}/METADATA,[^\n]*$",
                    f"{dist_info}/METADATA,sha256={digest},{len(patched.encode('utf-8'))}", record)
diff = ""
for path, before, after in (("METADATA", original, patched), ("RECORD", record, new_record)):
    diff += "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                         f"a/{dist_info}/{path}", f"b/{dist_info}/{path}"))
(out / f"{name}-{version}.metadata.patch").write_text(diff, encoding="utf-8")
PY
done

header() {  # header PLATFORM FILE NOTE...: the generated header, one comment line per NOTE
  local platform="$1" file="$2"
  shift 2
  cat <<HEADER
# GENERATED by tools/lock/update_lock.sh (bazel run //:requirements_update) from
# bazel_requirements.in and bazel_requirements_nodeps.in. Do not edit by hand.
# Python 3.11, $platform.
# bazel_requirements_lock.txt (Linux x86_64) and bazel_requirements_lock_darwin.txt (macOS arm64) pin the same
# versions; MODULE.bazel maps each to its platform (pip.parse requirements_by_platform).
#
# The lock is complete (every transitive dependency is pinned and hashed), so
# install it without dependency resolution:
#   pip install --no-deps --require-hashes -r $file
HEADER
  printf '# %s\n' "$@"
}

if [[ "$torch_hash_checked" -eq 1 ]]; then
  torch_note=("torch's CPU build comes from --extra-index-url $torch_index, and so does its hash.")
else
  torch_note=(
    "torch's CPU build comes from --extra-index-url https://download.pytorch.org/whl/cpu. Its hash was NOT"
    "checked against that index: it is the hash of the wheel that pip's configured indexes and find-links"
    "found where this lock was generated (PyTorch's index was unreachable there). pip refuses a mismatch;"
    "if it does, regenerate this lock where download.pytorch.org is reachable."
  )
fi

{
  header "Linux x86_64; torch is the CPU build (+cpu)" bazel_requirements_lock.txt "${torch_note[@]}"
  cat "$work/linux.txt"
  echo
  echo "# ---- locked without their dependencies (see bazel_requirements_nodeps.in) ----"
  cat "$nodeps_block"
} >"$work/final_linux.txt"

{
  header "macOS arm64 (macOS $darwin_min_macos or newer); torch from PyPI" bazel_requirements_lock_darwin.txt \
    "Resolved for $darwin_platform by uv $uv_version against https://pypi.org/simple: those hashes are PyPI's;" \
    "the nodeps packages' are those of the wheels pip downloaded, as in the Linux lock (pure-Python wheels)."
  cat "$work/darwin.txt"
  echo
  echo "# ---- locked without their dependencies (see bazel_requirements_nodeps.in) ----"
  cat "$nodeps_block"
} >"$work/final_darwin.txt"

mv "$work/final_linux.txt" bazel_requirements_lock.txt
mv "$work/final_darwin.txt" bazel_requirements_lock_darwin.txt
echo "wrote $repo/bazel_requirements_lock.txt, $repo/bazel_requirements_lock_darwin.txt and tools/lock/patches/"
