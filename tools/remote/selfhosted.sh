#!/usr/bin/env bash
# A self-hosted REAPI deployment: PostgreSQL + BuildGrid (CAS, action cache,
# execution, bots) + N Remote Workers API workers (tools/remote/worker.py).
# `bazel test --config=selfhosted ...` uses it (default grpc://127.0.0.1:50051, instance "main").
#
# usage: tools/remote/selfhosted.sh [FLAGS] install|start|stop|status|check-bazel-log FILE
#        tools/remote/selfhosted.sh [FLAGS] issue [--worker] NAME | revoke NAME | certs
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
#   issue NAME  a client certificate for a developer from the deployment's CA, into
#             PKI_DIR/clients/NAME.{crt,key}; prints the user.bazelrc lines. With --worker, a
#             worker machine's, into PKI_DIR/workers/ (only the workers' endpoint takes those, and
#             only it takes them); prints the worker machine's start command. Accepted from now on
#             (running servers started with this PKI dir are restarted).
#   revoke NAME the servers refuse NAME's certificate from now on (restarted as for issue); its
#             key is deleted.
#   certs     the CA, the server certificate's names and the client certificates, issued and revoked.
#
# Flags (defaults in brackets):
#   --state-dir DIR   PID files, logs, PostgreSQL data, CAS, worker dirs
#                     [$CPU_FINETUNE_REMOTE_STATE, else ${XDG_RUNTIME_DIR:-/tmp}/cpu-finetune-remote;
#                     /tmp/cpu-finetune-remote as root]
#   --workers N       workers to run on this machine [half the cores, at least 1:
#                     a training test uses 2 cores]; 0 for a server-only head node
#   --port PORT       BuildGrid's gRPC port [50051]
#   --bind ADDR       address BuildGrid listens on [127.0.0.1]; 0.0.0.0 to serve
#                     workers and Bazel clients on other machines (then over mutual TLS)
#   --tls auto|on|off  mutual TLS: the server proves itself with a certificate from the
#                     deployment's CA and accepts only the client certificates it issued
#                     (`issue`) and has not revoked [auto: on unless --bind is 127.0.0.1,
#                     ::1 or localhost]. off is refused for any other --bind.
#   --pki-dir DIR     the CA, server and client keys and certificates, owner-only, created on
#                     the first TLS start; never inside the repository
#                     [$CPU_FINETUNE_REMOTE_PKI, else ${XDG_CONFIG_HOME:-~/.config}/cpu-finetune/remote-pki]
#   --server-name N   another DNS name or address clients use for this head node, in the server
#                     certificate (repeatable) [this host's names and addresses, localhost, --bind]
#   --tls-ca FILE --tls-cert FILE --tls-key FILE
#                     a worker's TLS files, with --workers-only on another machine: the CA
#                     certificate and a client certificate issued on the head node (`issue NAME`)
#                     [PKI_DIR/ca.crt and PKI_DIR/workers/worker-$(hostname).{crt,key}]
#   --allow-action-network
#                     in cluster mode (grpcs://), let actions that ask for it (dockerNetwork=standard)
#                     share the worker's network; by default they are refused
#   --bots-port PORT  with TLS, the workers' endpoint (the Bots API) [--port + 1]; --port serves clients
#   --allow-client-cache-writes
#                     let clients write action results (Bazel's --remote_upload_local_results);
#                     by default only the workers' results enter the action cache
#   --pg-port PORT    PostgreSQL's port, always on 127.0.0.1 [54329]
#   --server URL      where workers connect [grpc://127.0.0.1:PORT; with TLS grpcs://BIND:BOTS_PORT];
#                     with --workers-only, the head node's workers' endpoint (grpcs://HEAD:50052)
#   --workers-only    start only workers (a worker machine of a cluster)
#   --keepalive S     bot session keepalive, seconds [10]
#   --image-layout DIR  the OCI layout of the pinned image [$CPU_FINETUNE_IMAGE_DIR, else
#                     ${XDG_CACHE_HOME:-~/.cache}/cpu-finetune/worker-image, as docker/build.sh]
#   --purge           with stop: also delete the state dir
#
# Several machines: on the head node (HEAD: the name clients and workers use for it)
#   tools/remote/selfhosted.sh --bind 0.0.0.0 --server-name HEAD --workers 2 start
#   tools/remote/selfhosted.sh issue --worker host2   # one per worker machine: prints its start command
#   tools/remote/selfhosted.sh issue alice            # one per developer: prints user.bazelrc lines
# copy ca.crt and workers/host2.{crt,key} from the head node's PKI_DIR to worker machine host2 (same
# repo checkout; no project venv needed: actions run in the image), and there
#   tools/remote/selfhosted.sh --workers-only --server grpcs://HEAD:50052 --workers 2 \
#     --tls-ca ca.crt --tls-cert host2.crt --tls-key host2.key start
# and in each developer's user.bazelrc the lines `issue alice` printed:
#   build:selfhosted --remote_executor=grpcs://HEAD:50051
#   build:selfhosted --tls_certificate=.../ca.crt
#   build:selfhosted --tls_client_certificate=.../alice.crt --tls_client_key=.../alice.key
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
tls=auto
pki_dir="${CPU_FINETUNE_REMOTE_PKI:-${XDG_CONFIG_HOME:-$HOME/.config}/cpu-finetune/remote-pki}"
server_names=()
tls_ca=""
tls_cert=""
tls_key=""
allow_client_cache_writes=0
bots_port="" # the workers' endpoint with TLS [--port + 1]
issue_worker=0
allow_action_network=0
cert_days=825 # certificates' validity; the CA's is 10 years

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "selfhosted.sh: $*" >&2; exit 1; }
bad_input() { echo "selfhosted.sh: $*" >&2; exit 2; }
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
    --tls) tls="${2:?--tls needs auto, on or off}"; shift 2 ;;
    --pki-dir) pki_dir="${2:?--pki-dir needs a directory}"; shift 2 ;;
    --server-name) server_names+=("${2:?--server-name needs a name or address}"); shift 2 ;;
    --tls-ca) tls_ca="${2:?--tls-ca needs a file}"; shift 2 ;;
    --tls-cert) tls_cert="${2:?--tls-cert needs a file}"; shift 2 ;;
    --tls-key) tls_key="${2:?--tls-key needs a file}"; shift 2 ;;
    --allow-client-cache-writes) allow_client_cache_writes=1; shift ;;
    --bots-port) bots_port="${2:?--bots-port needs a value}"; shift 2 ;;
    --worker) issue_worker=1; shift ;;
    --allow-action-network) allow_action_network=1; shift ;;
    -h | --help) usage; exit 0 ;;
    install | start | stop | status | certs) command="$1"; shift ;;
    issue | revoke)
      command="$1"
      shift
      if [[ "$command" == issue && "${1:-}" == --worker ]]; then issue_worker=1; shift; fi
      cert_name="${1:-}"
      if [[ $# -gt 0 ]]; then shift; fi
      ;;
    check-bazel-log) command="$1"; check_file="${2:?check-bazel-log needs a file}"; shift 2 ;;
    bazel) command="$1"; shift; bazel_args=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ -n "$command" ]] || { usage >&2; die "missing command: install, start, stop, status, issue, revoke, certs or check-bazel-log"; }
[[ "$workers" =~ ^[0-9]+$ ]] || die "--workers must be a number, not '$workers'"

# Loopback in the sense of --tls auto: the single-machine default. Any other address (another interface,
# 0.0.0.0, even 127.0.0.2) is served over mutual TLS.
is_local_bind() { [[ "$1" == 127.0.0.1 || "$1" == localhost || "$1" == ::1 || "$1" == "[::1]" ]]; }
case "$tls" in
  auto) if is_local_bind "$bind"; then use_tls=0; else use_tls=1; fi ;;
  on) use_tls=1 ;;
  off)
    use_tls=0
    is_local_bind "$bind" || bad_input "refusing to serve plain gRPC on --bind $bind: anyone who reaches it could run commands on every worker and write the action cache; drop --tls off (mutual TLS) or bind 127.0.0.1"
    ;;
  *) bad_input "--tls must be auto, on or off, not '$tls'" ;;
esac
[[ -n "$bots_port" ]] || bots_port=$((port + 1))
# Where this machine's workers (and status) connect: the bound address, or loopback for a wildcard bind. With TLS,
# workers use the workers' endpoint (--bots-port).
connect_host="$bind"
[[ "$connect_host" == 0.0.0.0 || "$connect_host" == "[::]" || "$connect_host" == "::" ]] && connect_host=127.0.0.1
if [[ -z "$server" ]]; then
  if [[ $use_tls -eq 1 ]]; then server="grpcs://$connect_host:$bots_port"; else server="grpc://$connect_host:$port"; fi
fi
pki_dir="$(realpath -m "$pki_dir")"
for checkout in "$repo" "$(realpath "$repo")"; do
  case "$pki_dir/" in
    "$checkout"/*) bad_input "--pki-dir $pki_dir is inside the repository: keys must never be committed; choose a directory outside $repo" ;;
  esac
done
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

# --- TLS: the deployment's own CA, one server certificate, two allow-lists ----------------------------------
# Mutual TLS splits BuildGrid in two processes on one database and CAS:
#   clients (--port): execution, operations, CAS, ByteStream and a read-only action cache, for the certificates
#     on PKI_DIR/allowed-clients.pem (developers: `issue NAME`);
#   workers (--bots-port): the Bots API, CAS, ByteStream and the action cache the scheduler writes the workers'
#     results into, for the certificates on PKI_DIR/allowed-workers.pem (`issue --worker NAME`).
# So a developer's certificate can neither register a worker (and report a made-up result for someone's action)
# nor write a result; the clients' process reads results from the workers' one (a remote action cache).
# Each server trusts its list's certificates themselves, not the CA: gRPC accepts a listed certificate as its own
# trust anchor, so removing one from the list (revoke) refuses it at the handshake although the CA signed it
# (BuildGrid has no revocation lists). The CA signs the server certificate, which clients verify.
cert_name_ok() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]]; }
host_label() { hostname | tr -c 'A-Za-z0-9._\n-' '-'; }
local_worker_cert() { echo "worker-$(host_label)"; } # this machine's workers, and the clients' server's reads
local_client_cert() { echo "head-$(host_label)"; }   # status's probe of the clients' endpoint

pki_lock() { # one issue/revoke/start at a time per PKI dir (held until this script exits; servers and workers
  # are started without the descriptor)
  command -v flock >/dev/null || return 0
  exec 9>>"$pki_dir/.lock"
  flock -w 120 9 || die "another selfhosted.sh holds $pki_dir/.lock"
}

new_key_and_csr() { # stem subject: STEM.key (owner-only) and STEM.csr
  (umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null) || die "openssl could not create a key for $2"
}

sign() { # stem extensions: STEM.crt from STEM.csr, signed by the CA
  local ext
  ext="$(mktemp)"
  printf '%s\n' "$2" >"$ext"
  (umask 077 && openssl x509 -req -in "$1.csr" -CA "$pki_dir/ca.crt" -CAkey "$pki_dir/ca.key" -CAcreateserial \
    -days "$cert_days" -sha256 -extfile "$ext" -out "$1.crt.tmp" 2>/dev/null) \
    || { rm -f "$ext"; die "openssl could not sign $1.crt"; }
  rm -f "$ext" "$1.csr"
  mv "$1.crt.tmp" "$1.crt"
}

pki_ca() {
  command -v openssl >/dev/null || die "openssl is needed for the deployment's certificates (apt-get install openssl)"
  mkdir -p "$pki_dir/clients" "$pki_dir/workers" "$pki_dir/revoked"
  chmod 700 "$pki_dir"
  pki_lock
  [[ -f "$pki_dir/ca.crt" && -f "$pki_dir/ca.key" ]] && return 0
  [[ -f "$pki_dir/ca.crt" ]] && die "$pki_dir/ca.crt has no ca.key beside it: restore the key (a new CA would invalidate every certificate)"
  log "creating the deployment's certificate authority in $pki_dir"
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -sha256 \
    -keyout "$pki_dir/ca.key.tmp" -out "$pki_dir/ca.crt.tmp" -subj "/CN=cpu-finetune remote CA $(hostname)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null) \
    || die "openssl could not create the CA"
  mv "$pki_dir/ca.key.tmp" "$pki_dir/ca.key"
  mv "$pki_dir/ca.crt.tmp" "$pki_dir/ca.crt"
}

san_entry() { # a name or address -> DNS:... or IP:...
  local name="${1#[}"
  name="${name%]}"
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then echo "IP:$name"; else echo "DNS:$name"; fi
}

# The server certificate names every address and name this head node is reached by (the ones it had, too: a
# restart without --server-name keeps them); it is issued again, by the same CA, when a name is new or it
# expires within 30 days.
pki_server() {
  local names=(localhost 127.0.0.1 "$(hostname)") n
  n="$(hostname -f 2>/dev/null || true)"
  [[ -n "$n" ]] && names+=("$n")
  if [[ "$bind" == 0.0.0.0 || "$bind" == "[::]" || "$bind" == "::" ]]; then
    for n in $(hostname -I 2>/dev/null || true); do names+=("$n"); done
  else
    names+=("$bind")
  fi
  names+=(${server_names[@]+"${server_names[@]}"})
  local san old=""
  [[ -f "$pki_dir/server.names" ]] && old="$(cat "$pki_dir/server.names")"
  san="$( { for n in "${names[@]}"; do san_entry "$n"; done; tr ',' '\n' <<<"$old"; } | grep . | sort -u | paste -sd, -)"
  if [[ -f "$pki_dir/server.crt" && "$old" == "$san" ]] \
    && openssl x509 -in "$pki_dir/server.crt" -noout -checkend 2592000 >/dev/null; then
    return 0
  fi
  log "issuing the server certificate for $san"
  new_key_and_csr "$pki_dir/server" "/CN=$(hostname)"
  sign "$pki_dir/server" "subjectAltName=$san
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
  echo "$san" >"$pki_dir/server.names"
}

allow_lists() { # PKI_DIR/allowed-{clients,workers}.pem: the issued, unrevoked certificates of each kind
  local kind f tmp
  for kind in clients workers; do
    tmp="$(mktemp "$pki_dir/.allowed-$kind.XXXXXX")"
    for f in "$pki_dir/$kind"/*.crt; do [[ -e "$f" ]] && cat "$f" >>"$tmp"; done
    chmod 644 "$tmp"
    mv "$tmp" "$pki_dir/allowed-$kind.pem"
  done
}

issued_kind() { # name -> clients or workers (or nothing)
  local kind
  for kind in clients workers; do [[ -f "$pki_dir/$kind/$1.crt" ]] && { echo "$kind"; return 0; }; done
  return 0
}

pki_leaf() { # kind name: PKI_DIR/KIND/NAME.{crt,key} unless issued already; 0 if new
  local stem="$pki_dir/$1/$2"
  [[ -n "$(issued_kind "$2")" ]] && return 1
  rm -f "$pki_dir/revoked/$2.crt" # issued anew under a revoked name
  new_key_and_csr "$stem" "/CN=$2"
  sign "$stem" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  allow_lists
  return 0
}

pki_head() { # everything a TLS head node needs, created where missing
  pki_ca
  pki_server
  pki_leaf workers "$(local_worker_cert)" || true
  pki_leaf clients "$(local_client_cert)" || true
  allow_lists
  # What issue prints, and which deployments issue/revoke restart.
  echo "${server_names[0]:-$(hostname -f 2>/dev/null || hostname)} $port $bots_port" >"$pki_dir/endpoint"
  grep -qxF "$state_dir" "$pki_dir/servers" 2>/dev/null || echo "$state_dir" >>"$pki_dir/servers"
}

# BuildGrid reads the allow-lists at start: restart the server that reads the changed list (the clients' one for a
# developer's certificate, the workers' one for a worker's) in every deployment started with this PKI dir. Workers
# reconnect within seconds; restarting the workers' one empties the action cache, which lives in its memory.
server_running() { # state-dir name: a live `bgd server start` of that deployment's config (not a reused PID)
  local pid config="$1/buildgrid.yml"
  [[ "$2" == bots-server ]] && config="$1/buildgrid-bots.yml"
  [[ -f "$1/$2.pid" ]] || return 1
  pid="$(cat "$1/$2.pid")"
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "server start $config"
}

restart_servers() { # kind why: 0 if one was restarted
  local dir restarted=0 name=server config=buildgrid.yml what="clients'"
  [[ "$1" == workers ]] && { name=bots-server; config=buildgrid-bots.yml; what="workers'"; }
  [[ -f "$pki_dir/servers" ]] || return 1
  while read -r dir; do
    [[ -n "$dir" && -f "$dir/$config" ]] && grep -qF "$pki_dir/allowed-" "$dir/$config" || continue
    if server_running "$dir" "$name"; then
      log "restarting $dir's BuildGrid ($what endpoint) so that $2"
      stop_pid "$dir/$name.pid" "BuildGrid ($what endpoint)"
      launch_server "$dir" "$config" "$name"
      restarted=1
    fi
  done <"$pki_dir/servers"
  [[ $restarted -eq 1 ]]
}

do_issue() {
  cert_name_ok "$cert_name" || bad_input "issue needs a NAME of letters, digits, '.', '_' or '-' (up to 64), not '$cert_name'"
  local kind=clients
  [[ $issue_worker -eq 1 ]] && kind=workers
  [[ "$cert_name" != "$(local_worker_cert)" && "$cert_name" != "$(local_client_cert)" ]] \
    || bad_input "'$cert_name' is the head node's own certificate's name: choose another"
  pki_ca
  local issued
  issued="$(issued_kind "$cert_name")"
  [[ -z "$issued" || "$issued" == "$kind" ]] \
    || bad_input "'$cert_name' is issued already as one of the $issued: choose another name (or revoke it first)"
  if ! pki_leaf "$kind" "$cert_name"; then
    log "'$cert_name' has a certificate already: $pki_dir/$kind/$cert_name.crt (revoke it first to issue a new one)"
  else
    log "issued '$cert_name' ($kind): $pki_dir/$kind/$cert_name.crt and its key $pki_dir/$kind/$cert_name.key (owner-only; give it to $cert_name only)"
    restart_servers "$kind" "it accepts '$cert_name'" \
      || log "no deployment started with --pki-dir $pki_dir runs: its next start accepts '$cert_name'"
  fi
  local host=HEAD client_port=$port worker_port=$bots_port
  [[ -f "$pki_dir/endpoint" ]] && read -r host client_port worker_port <"$pki_dir/endpoint"
  if [[ "$kind" == workers ]]; then
    echo "# on worker machine '$cert_name': copy $pki_dir/ca.crt and $pki_dir/workers/$cert_name.{crt,key} there, then"
    echo "tools/remote/selfhosted.sh --workers-only --server grpcs://$host:$worker_port --tls-ca ca.crt --tls-cert $cert_name.crt --tls-key $cert_name.key start"
  else
    echo "# user.bazelrc of '$cert_name' (copy the three files to that machine and fix the paths):"
    echo "build:selfhosted --remote_executor=grpcs://$host:$client_port"
    echo "build:selfhosted --tls_certificate=$pki_dir/ca.crt"
    echo "build:selfhosted --tls_client_certificate=$pki_dir/clients/$cert_name.crt"
    echo "build:selfhosted --tls_client_key=$pki_dir/clients/$cert_name.key"
  fi
}

do_revoke() {
  cert_name_ok "$cert_name" || bad_input "revoke needs a NAME of an issued certificate, not '$cert_name'"
  [[ -d "$pki_dir" ]] || bad_input "no PKI dir $pki_dir (see --pki-dir)"
  pki_lock
  local kind
  kind="$(issued_kind "$cert_name")"
  [[ -n "$kind" ]] || bad_input "no certificate named '$cert_name' is issued in $pki_dir (see: selfhosted.sh certs)"
  mv "$pki_dir/$kind/$cert_name.crt" "$pki_dir/revoked/$cert_name.crt"
  rm -f "$pki_dir/$kind/$cert_name.key"
  allow_lists
  if restart_servers "$kind" "it refuses '$cert_name'"; then
    log "revoked '$cert_name' ($kind): the servers refuse its certificate at the handshake"
  else
    log "revoked '$cert_name' ($kind); no deployment started with --pki-dir $pki_dir runs here: its next start refuses it"
  fi
}

do_certs() {
  [[ -f "$pki_dir/ca.crt" ]] || { echo "no CA in $pki_dir yet (created by the first TLS start, or by issue)"; return 0; }
  echo "CA: $pki_dir/ca.crt ($(openssl x509 -in "$pki_dir/ca.crt" -noout -subject -enddate | paste -sd' '))"
  [[ -f "$pki_dir/server.names" ]] && echo "server: $pki_dir/server.crt for $(cat "$pki_dir/server.names")"
  local f kind
  for kind in clients workers; do
    for f in "$pki_dir/$kind"/*.crt; do
      [[ -e "$f" ]] && echo "${kind%s}: $(basename "$f" .crt) (issued, $(openssl x509 -in "$f" -noout -enddate))"
    done
  done
  for f in "$pki_dir"/revoked/*.crt; do
    [[ -e "$f" ]] && echo "revoked: $(basename "$f" .crt)"
  done
  return 0
}

# The TLS files this machine's workers present: --tls-* or the head node's own.
worker_tls_files() {
  worker_tls=()
  [[ "$server" == grpcs://* ]] || return 0
  local name
  name="$(local_worker_cert)"
  local ca="${tls_ca:-$pki_dir/ca.crt}" cert="${tls_cert:-$pki_dir/workers/$name.crt}" key="${tls_key:-$pki_dir/workers/$name.key}" f
  for f in "$ca" "$cert" "$key"; do
    [[ -f "$f" ]] || bad_input "no such TLS file: $f (on the head node: selfhosted.sh issue --worker $name, then copy its ca.crt and workers/$name.{crt,key} here and pass --tls-ca, --tls-cert, --tls-key)"
  done
  worker_tls=(--tls-ca "$(realpath "$ca")" --tls-cert "$(realpath "$cert")" --tls-key "$(realpath "$key")")
}

tls_channel() { # port allow-list
  cat <<EOF
  - !channel
    address: "$bind:$1"
    # Mutual TLS: a client must present a certificate on $(basename "$2") (selfhosted.sh issue/revoke).
    insecure-mode: false
    credentials:
      tls-server-key: $pki_dir/server.key
      tls-server-cert: $pki_dir/server.crt
      tls-client-certs: $2
EOF
}

common_config() { # the database and the CAS both processes share
  cat <<EOF
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
EOF
}

scheduler_config() { # the action cache the scheduler reads (and writes the workers' results into)
  cat <<EOF
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *$1
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
EOF
}

instance_config() { # action-cache endpoints...
  local cache="$1"
  shift
  cat <<EOF
instances:
  - name: $instance
    description: The instance --config=selfhosted uses (--remote_instance_name=$instance).
    services:
      - !action-cache
        cache: *$cache
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 60
        endpoints: [$(IFS=,; echo "$*" | sed 's/,/, /g')]
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 40
EOF
}

results_cache() { # what the workers' finished actions write (the scheduler's cache; with TLS, in the workers' process)
  cat <<EOF
  - !lru-action-cache &action-cache
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
EOF
}

# What clients may not do: write results. Their action cache is a with-cache over an empty fallback with updates
# refused (UpdateActionResult: UNIMPLEMENTED, and update_enabled false in the capabilities); a client cannot
# plant a result (a fake trained model) under an action's key. --allow-client-cache-writes hands them the
# results cache itself.
read_only_cache() { # the results cache's anchor
  cat <<EOF
  - !lru-action-cache &no-results
    storage: *cas
    max-cached-refs: 1
    allow-updates: false
  - !with-cache-action-cache &client-action-cache
    cache: *$1
    fallback: *no-results
    allow-updates: false
    cache-failed-actions: false
EOF
}

write_config() {
  local client_cache=client-action-cache header="# Generated by tools/remote/selfhosted.sh; edits are overwritten on start."
  if [[ $use_tls -eq 0 ]]; then
    # Loopback: one process, plain gRPC.
    rm -f "$state_dir/buildgrid-bots.yml"
    [[ $allow_client_cache_writes -eq 1 ]] && client_cache=action-cache
    cat >"$state_dir/buildgrid.yml" <<EOF
$header
description: cpu-finetune self-hosted REAPI deployment (loopback, plain gRPC)
server:
  - !channel
    address: "$bind:$port"
    insecure-mode: true
$(common_config)
caches:
$(results_cache)
$(read_only_cache action-cache)
$(scheduler_config action-cache)
$(instance_config "$client_cache" execution operations bots)
EOF
    return 0
  fi
  [[ $allow_client_cache_writes -eq 1 ]] && client_cache=results
  local head_cert
  head_cert="$pki_dir/workers/$(local_worker_cert)"
  cat >"$state_dir/buildgrid-bots.yml" <<EOF
$header
description: cpu-finetune self-hosted REAPI deployment, the workers' endpoint (mutual TLS)
server:
$(tls_channel "$bots_port" "$pki_dir/allowed-workers.pem")
$(common_config)
caches:
$(results_cache)
$(scheduler_config action-cache)
$(instance_config action-cache bots)
EOF
  cat >"$state_dir/buildgrid.yml" <<EOF
$header
description: cpu-finetune self-hosted REAPI deployment, the clients' endpoint (mutual TLS)
server:
$(tls_channel "$port" "$pki_dir/allowed-clients.pem")
$(common_config)
caches:
  # The workers' results, read from the workers' endpoint with this head node's worker certificate.
  - !remote-action-cache &results
    url: https://$connect_host:$bots_port
    instance-name: $instance
    credentials:
      tls-client-key: $head_cert.key
      tls-client-cert: $head_cert.crt
      tls-server-cert: $pki_dir/ca.crt
$(read_only_cache results)
$(scheduler_config results)
$(instance_config "$client_cache" execution operations)
EOF
}

start_server() {
  if [[ $use_tls -eq 1 ]]; then
    pid_alive "$state_dir/server.pid" && pid_alive "$state_dir/bots-server.pid" && return 0
    pki_head
    write_config
    pid_alive "$state_dir/bots-server.pid" || launch_server "$state_dir" buildgrid-bots.yml bots-server
    pid_alive "$state_dir/server.pid" || launch_server "$state_dir" buildgrid.yml server
    return 0
  fi
  if pid_alive "$state_dir/server.pid"; then return 0; fi
  write_config
  launch_server "$state_dir" buildgrid.yml server
}

launch_server() { # state-dir config name: with the config written by the last start (a restart keeps its settings)
  local dir="$1" config="$1/$2" name="$3" address
  address="$(sed -n 's/^    address: "\(.*\)"$/\1/p' "$config" | head -n 1)"
  log "starting BuildGrid ($name) on $address (instance '$instance'$(grep -q 'insecure-mode: false' "$config" && echo ', mutual TLS'))"
  setsid "$remote_venv/bin/bgd" server start "$config" >>"$dir/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/$name.pid"
  local host="${address%:*}"
  [[ "$host" == 0.0.0.0 || "$host" == "[::]" ]] && host=127.0.0.1
  wait_for_port "$host" "${address##*:}" 60 \
    || die "BuildGrid ($name) did not open $address within 60 s, see $dir/logs/$name.log"
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
  [[ $workers -gt 0 ]] || return 0
  prepare_image
  worker_tls_files
  # In cluster mode an action gets no network (dockerNetwork=standard is refused): with the host's network it
  # could reach what listens on the worker's loopback, such as the head node's PostgreSQL.
  local network=()
  [[ "$server" == grpcs://* && $allow_action_network -eq 0 ]] && network=(--no-action-network)
  for ((i = 1; i <= workers; i++)); do
    local pid_file="$state_dir/worker-$i.pid"
    if pid_alive "$pid_file"; then continue; fi
    log "starting worker $i -> $server"
    setsid "$remote_venv/bin/python" "$repo/tools/remote/worker.py" \
      --server "$server" --instance "$instance" --name "$(hostname)-worker-$i" \
      --work-dir "$state_dir/worker-$i" --poll-timeout "$keepalive" \
      --image "$image_name=$image_layout" --image-cache "$state_dir/images" ${worker_tls[@]+"${worker_tls[@]}"} \
      ${network[@]+"${network[@]}"} \
      >>"$state_dir/logs/worker-$i.log" 2>&1 </dev/null 9>&- &
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
  stop_pid "$state_dir/bots-server.pid" "BuildGrid (workers)"
  if [[ -f "$pg_data/PG_VERSION" ]] && as_pg "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null
  fi
  if [[ $purge -eq 1 ]]; then
    log "deleting $state_dir"
    rm -rf "$state_dir"
  fi
}

config_address() { sed -n 's/^    address: "\(.*\)"$/\1/p' "$1" | head -n 1; }

endpoint_answers() { # url cert-stem: bgd capabilities over plain gRPC, or mutual TLS with STEM.{crt,key}
  local probe=(--remote "http://${1#grpc://}")
  [[ "$1" == grpcs://* ]] && probe=(--remote "https://${1#grpcs://}" --server-cert "$pki_dir/ca.crt"
    --client-cert "$2.crt" --client-key "$2.key")
  "$remote_venv/bin/bgd" capabilities "${probe[@]}" --instance-name "$instance" >/dev/null 2>&1
}

do_status() {
  local down=0 f
  if [[ $workers_only -eq 0 ]]; then
    if [[ -f "$pg_data/PG_VERSION" ]] && as_pg "$pg_bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
      echo "postgres: running on 127.0.0.1:$pg_port ($pg_data)"
    else
      echo "postgres: stopped"; down=1
    fi
    # Each server where its running config says it listens.
    local name config address host url tls_on=0 stem
    for name in server bots-server; do
      config="$state_dir/buildgrid.yml"
      [[ $name == bots-server ]] && config="$state_dir/buildgrid-bots.yml"
      [[ -f "$config" ]] || continue
      if [[ $name == server ]] && grep -q 'insecure-mode: false' "$config"; then
        tls_on=1
        # The deployment's own PKI dir, whatever --pki-dir this status got.
        pki_dir="$(dirname "$(sed -n 's/^      tls-client-certs: //p' "$config" | head -n 1)")"
      fi
      [[ $name == bots-server && $tls_on -eq 0 ]] && continue # a plain deployment is one process
      address="$(config_address "$config")"
      host="${address%:*}"
      [[ "$host" == 0.0.0.0 || "$host" == "[::]" ]] && host=127.0.0.1
      if [[ $tls_on -eq 1 ]]; then url="grpcs://$host:${address##*:}"; else url="grpc://$host:${address##*:}"; fi
      local what="clients' endpoint" stem="$pki_dir/clients/$(local_client_cert)"
      [[ $name == bots-server ]] && { what="workers' endpoint"; stem="$pki_dir/workers/$(local_worker_cert)"; }
      if ! pid_alive "$state_dir/$name.pid"; then
        echo "buildgrid ($what): stopped"; down=1; continue
      fi
      if endpoint_answers "$url" "$stem"; then
        echo "buildgrid ($what): running (pid $(cat "$state_dir/$name.pid")), $url instance '$instance' answers$([[ $tls_on -eq 1 ]] && echo ", mutual TLS")"
      else
        echo "buildgrid ($what): running (pid $(cat "$state_dir/$name.pid")), but $url does not answer"; down=1
      fi
    done
    [[ -f "$state_dir/buildgrid.yml" ]] || { echo "buildgrid: never started in $state_dir"; down=1; }
    if [[ $tls_on -eq 1 ]]; then
      echo "tls: $(grep -c 'BEGIN CERTIFICATE' "$pki_dir/allowed-clients.pem") client and $(grep -c 'BEGIN CERTIFICATE' "$pki_dir/allowed-workers.pem") worker certificate(s) allowed (selfhosted.sh --pki-dir $pki_dir certs)"
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
  echo "bazel: bazel test --config=selfhosted //...   (state and logs: $state_dir)"
  return $down
}

# Known mistakes in a Bazel output log, each with the one line that says what to change.
hint_if() { # extended-regex message: the hint, if the log matches (sets do_check_bazel_log's found)
  grep -qE -- "$1" "$check_file" || return 0
  echo "selfhosted.sh: hint: $2" >&2
  found=1
}

do_check_bazel_log() {
  [[ -f "$check_file" ]] || die "no such file: $check_file"
  local found=0 property
  if property="$(grep -oE 'Unregistered platform property \[[^]=]+' "$check_file" | head -n 1)"; then
    property="${property#Unregistered platform property [}"
    echo "selfhosted.sh: hint: the server does not know the platform property '$property': remove it from the target's or the platform's exec_properties (bazel/platforms/BUILD) or add it to wildcard-property-keys in tools/remote/selfhosted.sh's BuildGrid config (then restart the deployment)" >&2
    found=1
  fi
  hint_if "Invalid instance name|[Ii]nstance.*(does not exist|not found|unknown|Unknown)|INVALID_ARGUMENT: .*instance" \
    "the server has no instance named by --remote_instance_name: use --remote_instance_name=$instance (the deployment's instance) in user.bazelrc, or name the instance in the server's config"
  hint_if "this worker has no image" \
    "the action names a container-image the workers do not hold: //bazel/platforms:remote_worker sends WORKER_IMAGE from docker/worker_image.bzl; rebuild and re-pin with docker/build.sh --pin, then restart the workers (tools/remote/selfhosted.sh stop; start)"
  # TLS (Bazel 4.2.3's and grpc-java's wording; Bazel 4 reports a refused client certificate as "null").
  hint_if "Failed to query remote execution capabilities: null$|certificate_required|bad_certificate|certificate_unknown|CERTIFICATE_REQUIRED|BAD_CERTIFICATE|unknown_ca" \
    "the server refused this client's TLS client certificate (none given, another CA's, or revoked): set --tls_client_certificate and --tls_client_key in user.bazelrc to the files 'tools/remote/selfhosted.sh issue NAME' printed on the head node, and --tls_certificate to its ca.crt"
  hint_if "General OpenSslEngine problem|PKIX path|unable to find valid certification path|CERTIFICATE_VERIFY_FAILED|No subject alternative|doesn't match any of the subject alternative names" \
    "Bazel does not trust the server's certificate: --tls_certificate must be the head node's PKI_DIR/ca.crt, and the host in the grpcs:// endpoint a name the server certificate has (selfhosted.sh certs on the head node; add a name with --server-name and restart)"
  hint_if "Network closed for unknown reason|First received frame was not SETTINGS" \
    "the endpoint closed a plain gRPC connection: a deployment bound to anything but 127.0.0.1 serves mutual TLS only: use grpcs://HOST:PORT in --remote_executor with --tls_certificate, --tls_client_certificate and --tls_client_key (tools/remote/selfhosted.sh issue NAME prints the lines)"
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
      exec 9>&- # the PKI lock (pki_head), not held while the image builds
    fi
    start_workers
    do_status >/dev/null || { do_status >&2 || true; die "the deployment did not come up, see $state_dir/logs"; }
    if [[ $workers_only -eq 0 && $use_tls -eq 1 ]]; then
      log "up: clients grpcs://$connect_host:$port, workers grpcs://$connect_host:$bots_port (mutual TLS), instance '$instance', $workers worker(s) here; certificates: selfhosted.sh issue NAME / issue --worker NAME; stop with: tools/remote/selfhosted.sh stop"
    else
      log "up: $server instance '$instance', $workers worker(s) here; stop with: tools/remote/selfhosted.sh stop"
    fi
    ;;
  stop) do_stop ;;
  status) do_status ;;
  issue) do_issue ;;
  revoke) do_revoke ;;
  certs) do_certs ;;
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
