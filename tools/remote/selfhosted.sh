#!/usr/bin/env bash
# A self-hosted REAPI deployment: PostgreSQL + BuildGrid (CAS, action cache,
# execution, bots) + N Remote Workers API workers (tools/remote/worker.py).
# `bazel test --config=selfhosted ...` uses it (default grpc://127.0.0.1:50051, instance "main").
#
# usage: tools/remote/selfhosted.sh [FLAGS] install|start|stop|status|check-bazel-log FILE
#        tools/remote/selfhosted.sh bazel COMMAND [BAZEL ARGS...]
#
#   install   Debian's postgresql-15 and bubblewrap (apt, if missing) and the
#             deployment's venv ($REMOTE_VENV, default /opt/cpu-finetune/remote-venv)
#             from tools/remote/requirements_lock.txt (--require-hashes).
#   start     install, then start what is not running yet (idempotent): PostgreSQL
#             (initdb into the state dir, trust auth on 127.0.0.1), `bgd migrate
#             apply`, `bgd server start` with a generated config, N workers. The
#             workers run every action inside the pinned worker image
#             (docker/worker_image.bzl): docker/build.sh builds it into --image-layout
#             unless that holds it already (the build is reproducible, so every
#             machine can build its own), and it is unpacked once per machine.
#   stop      stop workers, server and PostgreSQL; keeps the state dir (CAS, DB)
#             unless --purge.
#   status    what runs here and whether the endpoint answers; exit 1 if something is down.
#   check-bazel-log FILE
#             print a one-line fix for known configuration mistakes found in a
#             Bazel output log (unknown platform property, unknown instance name);
#             exit 1 if one was found.
#   bazel COMMAND ARGS...
#             `bazel COMMAND --config=selfhosted ARGS...`; if it fails, the
#             check-bazel-log hints, e.g. `tools/remote/selfhosted.sh bazel test //...`
#
# Flags (defaults in brackets):
#   --state-dir DIR   PID files, logs, PostgreSQL data, CAS, worker dirs
#                     [$CPU_FINETUNE_REMOTE_STATE, else ${XDG_RUNTIME_DIR:-/tmp}/cpu-finetune-remote;
#                     /tmp/cpu-finetune-remote as root]
#   --workers N       workers to run on this machine [half the cores, at least 1:
#                     a training test uses 2 cores]; 0 for a server-only head node
#   --port PORT       BuildGrid's gRPC port [50051]
#   --bind ADDR       address BuildGrid listens on [127.0.0.1]; 0.0.0.0 to serve
#                     workers and Bazel clients on other machines (trusted network
#                     only: the endpoint is unauthenticated and insecure)
#   --pg-port PORT    PostgreSQL's port, always on 127.0.0.1 [54329]
#   --server URL      where workers connect [grpc://127.0.0.1:PORT]; with
#                     --workers-only, the head node's endpoint
#   --workers-only    start only workers (a worker machine of a cluster)
#   --keepalive S     bot session keepalive, seconds [10]
#   --image-layout DIR  the OCI layout of the pinned image [$CPU_FINETUNE_IMAGE_DIR, else
#                     ${XDG_CACHE_HOME:-~/.cache}/cpu-finetune/worker-image, as docker/build.sh]
#   --purge           with stop: also delete the state dir
#
# Several machines: on the head node
#   tools/remote/selfhosted.sh --bind 0.0.0.0 --workers 2 start
# on each worker machine (same repo checkout; no project venv needed: actions run in the image)
#   tools/remote/selfhosted.sh --workers-only --server grpc://HEAD:50051 --workers 2 start
# and in each client's user.bazelrc
#   build:selfhosted --remote_executor=grpc://HEAD:50051
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
remote_venv="${REMOTE_VENV:-/opt/cpu-finetune/remote-venv}"
python="${SETUP_PYTHON:-python3}"
pg_bin="/usr/lib/postgresql/15/bin"

# Defaults.
# As root, PostgreSQL runs as the postgres user, which cannot enter root's /run/user/0.
runtime_dir="${XDG_RUNTIME_DIR:-/tmp}"
[[ $(id -u) -eq 0 ]] && runtime_dir=/tmp
state_dir="${CPU_FINETUNE_REMOTE_STATE:-$runtime_dir/cpu-finetune-remote}"
workers=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
port=50051
bind=127.0.0.1
pg_port=54329
server=""
workers_only=0
keepalive=10
image_layout="${CPU_FINETUNE_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cpu-finetune/worker-image}"
purge=0
instance=main

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "selfhosted.sh: $*" >&2; exit 1; }
log() { echo "selfhosted.sh: $*" >&2; }
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

command=""
check_file=""
bazel_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --state-dir) state_dir="${2:?--state-dir needs a value}"; shift 2 ;;
    --workers) workers="${2:?--workers needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --bind) bind="${2:?--bind needs a value}"; shift 2 ;;
    --pg-port) pg_port="${2:?--pg-port needs a value}"; shift 2 ;;
    --server) server="${2:?--server needs a value}"; shift 2 ;;
    --workers-only) workers_only=1; shift ;;
    --keepalive) keepalive="${2:?--keepalive needs a value}"; shift 2 ;;
    --image-layout) image_layout="${2:?--image-layout needs a directory}"; shift 2 ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    install | start | stop | status) command="$1"; shift ;;
    check-bazel-log) command="$1"; check_file="${2:?check-bazel-log needs a file}"; shift 2 ;;
    bazel) command="$1"; shift; bazel_args=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ -n "$command" ]] || { usage >&2; die "missing command: install, start, stop, status or check-bazel-log"; }
[[ "$workers" =~ ^[0-9]+$ ]] || die "--workers must be a number, not '$workers'"
[[ -n "$server" ]] || server="grpc://127.0.0.1:$port"
state_dir="$(realpath -m "$state_dir")"
pg_data="$state_dir/postgres"
db_url="postgresql+psycopg2://postgres@127.0.0.1:$pg_port/buildgrid"

# PostgreSQL refuses to run as root: then it runs as the `postgres` user.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

do_install() {
  local packages=()
  [[ ! -x "$pg_bin/postgres" && $workers_only -eq 0 ]] && packages+=(postgresql-15)
  command -v bwrap >/dev/null || packages+=(bubblewrap)
  if [[ ${#packages[@]} -gt 0 ]]; then
    log "installing Debian's ${packages[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
  local lock="$repo/tools/remote/requirements_lock.txt" stamp="$remote_venv/.lock.sha256"
  local want
  want="$(sha256sum "$lock" | cut -d' ' -f1)"
  if [[ -x "$remote_venv/bin/bgd" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "Python 3.11 is required: the lock is resolved for it (set SETUP_PYTHON)"
  if [[ ! -x "$remote_venv/bin/python" ]]; then
    log "creating $remote_venv"
    mkdir -p "$(dirname "$remote_venv")"
    "$python" -m venv "$remote_venv"
  fi
  log "installing tools/remote/requirements_lock.txt (BuildGrid) into $remote_venv"
  "$remote_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$lock" 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" >"$stamp"
}

start_postgres() {
  if as_pg "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
    return 0
  fi
  if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x "$state_dir"; then
    die "the postgres user cannot reach $state_dir: choose a --state-dir outside private directories such as /root or /run/user"
  fi
  if [[ ! -f "$pg_data/PG_VERSION" ]]; then
    log "initdb into $pg_data"
    mkdir -p "$pg_data"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$pg_data"
    chmod 700 "$pg_data"
    as_pg "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 >"$state_dir/logs/initdb.log" 2>&1 \
      || die "initdb failed, see $state_dir/logs/initdb.log"
  fi
  log "starting PostgreSQL on 127.0.0.1:$pg_port"
  local pg_log="$state_dir/logs/postgres.log"
  touch "$pg_log"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$pg_log"
  as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_data" start >/dev/null \
    || die "PostgreSQL did not start, see $pg_log"
  if ! as_pg "$pg_bin/../bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='buildgrid'" 2>/dev/null | grep -q 1; then
    as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres buildgrid || die "createdb buildgrid failed"
  fi
  "$remote_venv/bin/bgd" migrate apply "$db_url" >"$state_dir/logs/migrate.log" 2>&1 \
    || die "bgd migrate apply failed, see $state_dir/logs/migrate.log"
}

write_config() {
  cat >"$state_dir/buildgrid.yml" <<EOF
# Generated by tools/remote/selfhosted.sh; edits are overwritten on start.
description: cpu-finetune self-hosted REAPI deployment
server:
  - !channel
    address: "$bind:$port"
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: $db_url
    pool-size: 5
    max-overflow: 10
storages:
  - !disk-storage &cas
    path: $state_dir/cas
caches:
  - !lru-action-cache &action-cache
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *action-cache
    # Every platform property Bazel sends must be declared (//bazel/platforms:remote_worker
    # sends OSFamily and container-image); jobs are matched to workers on OSFamily.
    # The workers check container-image themselves (exactly, against the images they
    # hold) and refuse another; dockerNetwork=standard gives an action the network.
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily]
      wildcard-property-keys: [ISA, container-image, dockerNetwork]
    # Workers heartbeat every 2 s and long-poll for 80% of this: a killed worker's
    # lease is requeued about this long (plus up to 10 s) after its last heartbeat.
    bot-session-keepalive-timeout: $keepalive
    max-execution-timeout: 7200
instances:
  - name: $instance
    description: The instance --config=selfhosted uses (--remote_instance_name=$instance).
    services:
      - !action-cache
        cache: *action-cache
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 60
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 40
EOF
}

start_server() {
  if pid_alive "$state_dir/server.pid"; then return 0; fi
  write_config
  log "starting BuildGrid on $bind:$port (instance '$instance')"
  setsid "$remote_venv/bin/bgd" server start "$state_dir/buildgrid.yml" \
    >"$state_dir/logs/server.log" 2>&1 </dev/null &
  echo $! >"$state_dir/server.pid"
  local host="$bind"
  [[ "$host" == 0.0.0.0 || "$host" == "[::]" ]] && host=127.0.0.1
  wait_for_port "$host" "$port" 60 \
    || die "BuildGrid did not open $bind:$port within 60 s, see $state_dir/logs/server.log"
}

# The pinned image's OCI layout, built here unless it holds the image of the current inputs; unpacked once for
# all the workers of this machine (each verifies it against the pinned digest).
prepare_image() {
  image_name="$("$remote_venv/bin/python" "$repo/tools/remote/oci.py" pinned "$repo")"
  local digest
  digest="$("$remote_venv/bin/python" "$repo/tools/remote/oci.py" digest "$image_layout" 2>/dev/null || true)"
  if [[ "$digest" != "${image_name##*@}" ]]; then
    log "building the worker image into $image_layout (docker/build.sh)"
    sudo_if_needed env CPU_FINETUNE_IMAGE_DIR="$image_layout" "$repo/docker/build.sh" --check-pin >/dev/null \
      || die "the worker image could not be built as pinned (see above)"
  fi
  "$remote_venv/bin/python" "$repo/tools/remote/worker.py" --work-dir "$state_dir/images" --prepare-only \
    --image "$image_name=$image_layout" --image-cache "$state_dir/images" >>"$state_dir/logs/images.log" 2>&1 \
    || { tail -n 3 "$state_dir/logs/images.log" >&2; die "the worker image is not usable, see $state_dir/logs/images.log"; }
}

start_workers() {
  local i
  [[ $workers -gt 0 ]] && prepare_image
  for ((i = 1; i <= workers; i++)); do
    local pid_file="$state_dir/worker-$i.pid"
    if pid_alive "$pid_file"; then continue; fi
    log "starting worker $i -> $server"
    setsid "$remote_venv/bin/python" "$repo/tools/remote/worker.py" \
      --server "$server" --instance "$instance" --name "$(hostname)-worker-$i" \
      --work-dir "$state_dir/worker-$i" --poll-timeout "$keepalive" \
      --image "$image_name=$image_layout" --image-cache "$state_dir/images" \
      >>"$state_dir/logs/worker-$i.log" 2>&1 </dev/null &
    echo $! >"$pid_file"
  done
}

stop_pid() { # pid_file what
  local pid_file="$1" pid i
  [[ -f "$pid_file" ]] || return 0
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $2 (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
}

do_stop() {
  local f
  for f in "$state_dir"/worker-*.pid; do
    [[ -e "$f" ]] && stop_pid "$f" "worker $(basename "$f" .pid)"
  done
  stop_pid "$state_dir/server.pid" "BuildGrid"
  if [[ -f "$pg_data/PG_VERSION" ]] && as_pg "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null
  fi
  if [[ $purge -eq 1 ]]; then
    log "deleting $state_dir"
    rm -rf "$state_dir"
  fi
}

do_status() {
  local down=0 f
  if [[ $workers_only -eq 0 ]]; then
    if [[ -f "$pg_data/PG_VERSION" ]] && as_pg "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
      echo "postgres: running on 127.0.0.1:$pg_port ($pg_data)"
    else
      echo "postgres: stopped"; down=1
    fi
    if pid_alive "$state_dir/server.pid"; then
      echo "buildgrid: running (pid $(cat "$state_dir/server.pid")), listening on $bind:$port, instance '$instance'"
    else
      echo "buildgrid: stopped"; down=1
    fi
  fi
  local n=0
  for f in "$state_dir"/worker-*.pid; do
    [[ -e "$f" ]] || continue
    if pid_alive "$f"; then
      echo "$(basename "$f" .pid): running (pid $(cat "$f")), log $state_dir/logs/$(basename "$f" .pid).log"
      n=$((n + 1))
    else
      echo "$(basename "$f" .pid): dead, see $state_dir/logs/$(basename "$f" .pid).log"; down=1
    fi
  done
  echo "workers running here: $n (actions run in $("$remote_venv/bin/python" "$repo/tools/remote/oci.py" pinned "$repo"))"
  if [[ $down -eq 0 && $workers_only -eq 0 ]]; then
    "$remote_venv/bin/bgd" capabilities --remote "http://${server#grpc://}" --instance-name "$instance" \
      >/dev/null 2>&1 && echo "endpoint: $server instance '$instance' answers" \
      || { echo "endpoint: $server instance '$instance' does not answer"; down=1; }
  fi
  echo "bazel: bazel test --config=selfhosted //...   (state and logs: $state_dir)"
  return $down
}

# Known mistakes in a Bazel output log, each with the one line that says what to change.
do_check_bazel_log() {
  [[ -f "$check_file" ]] || die "no such file: $check_file"
  local found=0 property
  if property="$(grep -oE 'Unregistered platform property \[[^]=]+' "$check_file" | head -n 1)"; then
    property="${property#Unregistered platform property [}"
    echo "selfhosted.sh: hint: the server does not know the platform property '$property': remove it from the target's or the platform's exec_properties (bazel/platforms/BUILD) or add it to wildcard-property-keys in tools/remote/selfhosted.sh's BuildGrid config (then restart the deployment)" >&2
    found=1
  fi
  if grep -qE "Invalid instance name|[Ii]nstance.*(does not exist|not found|unknown|Unknown)|INVALID_ARGUMENT: .*instance" "$check_file"; then
    echo "selfhosted.sh: hint: the server has no instance named by --remote_instance_name: use --remote_instance_name=$instance (the deployment's instance) in user.bazelrc, or name the instance in the server's config" >&2
    found=1
  fi
  if grep -qE "this worker has no image" "$check_file"; then
    echo "selfhosted.sh: hint: the action names a container-image the workers do not hold: //bazel/platforms:remote_worker sends WORKER_IMAGE from docker/worker_image.bzl; rebuild and re-pin with docker/build.sh --pin, then restart the workers (tools/remote/selfhosted.sh stop; start)" >&2
    found=1
  fi
  return $((found == 1 ? 1 : 0))
}

case "$command" in
  install) do_install ;;
  start)
    do_install
    mkdir -p "$state_dir/logs"
    chmod 755 "$state_dir"
    if [[ $workers_only -eq 0 ]]; then
      start_postgres
      start_server
    fi
    start_workers
    do_status >/dev/null || { do_status >&2 || true; die "the deployment did not come up, see $state_dir/logs"; }
    log "up: $server instance '$instance', $workers worker(s) here; stop with: tools/remote/selfhosted.sh stop"
    ;;
  stop) do_stop ;;
  status) do_status ;;
  check-bazel-log) do_check_bazel_log ;;
  bazel)
    [[ ${#bazel_args[@]} -ge 1 ]] || die "usage: selfhosted.sh bazel COMMAND [ARGS...]"
    output="$(mktemp)"
    trap 'rm -f "$output"' EXIT
    set +e
    (cd "$repo" && bazel "${bazel_args[0]}" --config=selfhosted "${bazel_args[@]:1}") 2>&1 | tee "$output"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc -ne 0 ]]; then
      check_file="$output"
      do_check_bazel_log || true
    fi
    exit "$rc"
    ;;
esac
