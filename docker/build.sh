#!/usr/bin/env bash
# Builds the remote worker image from this repository, with no Docker daemon and no base image from a registry:
#   1. mmdebstrap: a Debian bookworm minbase root with Python 3.11, tcmalloc, libstdc++, zip and file from Debian's
#      mirror;
#      the installed packages must be exactly docker/debian_packages.lock.
#   2. the venv at /opt/cpu-finetune/venv, exactly bazel_requirements_lock.txt (--no-deps --require-hashes),
#      installed inside that root by bubblewrap with the network unshared, from wheels pip downloaded first.
#   3. the unprivileged user `worker` (uid 10001, home /home/worker), /action (where a worker mounts an action's
#      input root) and the marker /etc/cpu-finetune-image.
#   4. tools/remote/oci.py writes it as an OCI image layout: one layer for the root, one for the venv.
# The same inputs give the same digest (SOURCE_DATE_EPOCH, sorted tar entries, fixed mtimes, no gzip name/time).
# An output that already holds the image of the current inputs is kept (printed, not rebuilt) unless --force.
#
# usage: docker/build.sh [--output DIR] [--force] [--pin | --check-pin] [--update-packages]
#   --output DIR       where the OCI layout goes [$CPU_FINETUNE_IMAGE_DIR, else
#                      ${XDG_CACHE_HOME:-~/.cache}/cpu-finetune/worker-image]
#   --force            rebuild even if DIR holds the image of the current inputs
#   --pin              write the built digest and the inputs digest into docker/worker_image.bzl (and the
#                      image string into tools/remote/nativelink/, render.sh)
#   --check-pin        exit 1 unless the built digest is the one docker/worker_image.bzl pins
#   --update-packages  accept the mirror's package versions and rewrite docker/debian_packages.lock
# Prints the image's digest (sha256:...) on the last line of stdout. Needs root (or sudo) for mmdebstrap, Linux
# x86_64, and Python 3.11 on the host (pip downloads the lock's cp311 wheels with it).
#
# Push it:   skopeo copy --preserve-digests oci:DIR:latest docker://REGISTRY/REPOSITORY:TAG
# Docker:    skopeo copy oci:DIR:latest docker-daemon:cpu-finetune-worker:latest   (or podman load)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# --- The recipe (docker/debian_packages.lock pins what these resolve to) ----------------------------------------
suite=bookworm
mirror=http://deb.debian.org/debian
# Debian 12.15's release date (2026-07-11 00:00 UTC): every file's mtime, the image's creation time.
epoch=1783728000
# zip and file: Bazel's test-setup.sh zips a test's undeclared outputs and lists their types with them.
packages=(python3.11 python3.11-venv libtcmalloc-minimal4 libstdc++6 zip file)
venv=/opt/cpu-finetune/venv # = WORKER_PYTHON's venv in docker/worker_image.bzl
user=worker
uid=10001
action_root=/action # tools/remote/worker.py binds each action's input root here
marker=/etc/cpu-finetune-image
# -----------------------------------------------------------------------------------------------------------------
python="${SETUP_PYTHON:-python3}"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/cpu-finetune"
output="${CPU_FINETUNE_IMAGE_DIR:-$cache_root/worker-image}"
force=0
pin=0
check_pin=0
update_packages=0
packages_lock="$repo/docker/debian_packages.lock"
pin_file="$repo/docker/worker_image.bzl"

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit "${2:-1}"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --output) output="${2:?--output needs a directory}"; shift 2 ;;
    --force) force=1; shift ;;
    --pin) pin=1; shift ;;
    --check-pin) check_pin=1; shift ;;
    --update-packages) update_packages=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" 2 ;;
  esac
done
[[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] || die "the worker image is linux/amd64: build it on Linux x86_64" 2
[[ $(id -u) -eq 0 ]] || die "mmdebstrap needs root here: run sudo docker/build.sh" 2
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "Python 3.11 is required on the host to fetch the lock's cp311 wheels (set SETUP_PYTHON)" 2
output="$(realpath -m "$output")"
oci=("$python" "$repo/tools/remote/oci.py")
inputs="$("${oci[@]}" inputs "$repo")"

finish() { # digest
  log "image $1 in $output"
  if [[ $pin -eq 1 ]]; then
    sed -i -E "s|^WORKER_IMAGE_DIGEST = \".*\"|WORKER_IMAGE_DIGEST = \"$1\"|; s|^WORKER_IMAGE_INPUTS = \".*\"|WORKER_IMAGE_INPUTS = \"$inputs\"|" "$pin_file"
    log "pinned $1 (inputs $inputs) in docker/worker_image.bzl"
    PYTHON="$python" "$repo/tools/remote/nativelink/render.sh" # the NativeLink example's copies of the string
  fi
  if [[ $check_pin -eq 1 ]]; then
    pinned="$(sed -nE 's/^WORKER_IMAGE_DIGEST = "(.*)"/\1/p' "$pin_file")"
    [[ "$pinned" == "$1" ]] \
      || die "built $1 but docker/worker_image.bzl pins $pinned: rebuild and re-pin with docker/build.sh --force --pin"
    log "the pin in docker/worker_image.bzl matches"
  fi
  echo "$1"
  exit 0
}

if [[ $force -eq 0 && -f "$output/index.json" ]]; then
  if digest="$("${oci[@]}" verify "$output" 2>/dev/null)" \
    && [[ "$("${oci[@]}" label "$output" cpu-finetune.inputs)" == "$inputs" ]]; then
    log "up to date: $output holds the image of the current inputs"
    finish "$digest"
  fi
fi

for tool in mmdebstrap bwrap; do
  if ! command -v "$tool" >/dev/null; then
    log "installing Debian's mmdebstrap and bubblewrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap bubblewrap >/dev/null
    break
  fi
done

mkdir -p "$cache_root" "$(dirname "$output")"
work="$(mktemp -d "$cache_root/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
started=$SECONDS

log "1/4 Debian $suite minbase + ${packages[*]} (mmdebstrap)"
SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --mode=root --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  "$suite" "$root" "$mirror" >&2
got="$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package}=${Version}\n' | LC_ALL=C sort)"
if [[ $update_packages -eq 1 ]]; then
  { echo "# The Debian packages of the worker image (docker/build.sh), name=version. Rewritten by"
    echo "# docker/build.sh --update-packages; the build fails when the mirror's versions differ."
    echo "$got"; } >"$packages_lock"
  log "wrote docker/debian_packages.lock ($(wc -l <<<"$got") packages)"
  inputs="$("${oci[@]}" inputs "$repo")"
elif ! diff <(grep -v '^#' "$packages_lock") <(echo "$got") >"$work/packages.diff"; then
  cat "$work/packages.diff" >&2
  die "Debian's mirror has other package versions than docker/debian_packages.lock (above: < lock, > mirror); accept them with docker/build.sh --update-packages --force --pin"
fi

log "2/4 the venv $venv from bazel_requirements_lock.txt (wheels cached in $cache_root/wheels)"
mkdir -p "$cache_root/wheels"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
  -r "$repo/bazel_requirements_lock.txt" -d "$cache_root/wheels" 2> >(grep -v "^WARNING: Location" >&2)
# Inside the new root, no network: the install can only use the downloaded wheels, checked against the lock's
# hashes. SOURCE_DATE_EPOCH makes the compiled .pyc files hash-based (no source mtimes in them).
bwrap --bind "$root" / --dev /dev --proc /proc --tmpfs /tmp \
  --ro-bind "$cache_root/wheels" /tmp/wheels --ro-bind "$repo/bazel_requirements_lock.txt" /tmp/lock.txt \
  --unshare-all --die-with-parent --clearenv --setenv PATH /usr/bin:/bin --setenv HOME /tmp \
  --setenv SOURCE_DATE_EPOCH "$epoch" --setenv PIP_NO_CACHE_DIR 1 --setenv PIP_DISABLE_PIP_VERSION_CHECK 1 \
  -- /bin/sh -ec "python3.11 -m venv $venv
    $venv/bin/pip install --quiet --no-index --find-links /tmp/wheels --no-deps --require-hashes -r /tmp/lock.txt"

log "3/4 user $user (uid $uid), $action_root, $marker"
echo "$user:x:$uid:$uid:cpu-finetune worker:/home/$user:/bin/bash" >>"$root/etc/passwd"
echo "$user:x:$uid:" >>"$root/etc/group"
echo "$user:*:0:0:99999:7:::" >>"$root/etc/shadow"
install -d -m 0755 -o "$uid" -g "$uid" "$root/home/$user"
install -d -m 0755 "$root$action_root"
printf '{"image": "cpu-finetune worker", "inputs": "%s", "venv": "%s"}\n' "$inputs" "$venv" >"$root$marker"
# Nothing the build itself left behind: logs, apt's caches.
rm -rf "$root"/var/log/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/tmp/*

log "4/4 OCI layout -> $output"
digest="$("${oci[@]}" write --root "$root" --output "$output" --split "${venv#/}" --epoch "$epoch" \
  --user "$uid:$uid" --working-dir "/home/$user" \
  --env "PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --env "VIRTUAL_ENV=$venv" --env "HF_HOME=/home/$user/.cache/huggingface" --env HF_HUB_OFFLINE=1 \
  --env LANG=C.UTF-8 \
  --label "cpu-finetune.inputs=$inputs" \
  --label "org.opencontainers.image.title=cpu-finetune worker" \
  --history "docker/build.sh: Debian $suite minbase, ${packages[*]}, user $user" \
            "docker/build.sh: $venv from bazel_requirements_lock.txt")"
log "built in $((SECONDS - started)) s"
finish "$digest"
