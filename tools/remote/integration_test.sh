#!/usr/bin/env bash
# Integration tests of remote execution against a real REAPI server: starts a
# fresh self-hosted deployment (tools/remote/selfhosted.sh: PostgreSQL + BuildGrid
# + 2 workers) on its own ports, state dir and certificates, bound to 127.0.0.2 as a
# cluster's head node is bound to its network address (so: mutual TLS, the clients'
# and the workers' endpoints apart), runs Bazel with --config=selfhosted and a client
# certificate against it, then the single-machine default (plain gRPC on 127.0.0.1),
# and stops it again. Every check prints PASS or FAIL; the script exits 1 if any
# failed. CI runs it (.ci/run, stage "remote").
#
# usage: tools/remote/integration_test.sh [--keep] [--port PORT] [--pg-port PORT] [--image-layout DIR]
#   --keep          leave the deployment running afterwards (stop it with the
#                   selfhosted.sh command printed at the end)
#   --port PORT     BuildGrid's port for this run, and PORT+1 for the workers' endpoint
#                   [50061, not the default 50051, so that a running deployment is left alone]
#   --pg-port PORT  PostgreSQL's port for this run [54339]
#   --image-layout DIR  the pinned worker image's OCI layout (selfhosted.sh builds it
#                   there if it does not hold it) [selfhosted.sh's default]
#
# Checks:
#   worker      the worker's unit tests (tools/remote/worker_test.py)
#   remote      //src/training:training_test and //src/cache_manager:cache_manager_test
#               pass, the execution log shows both ran on a remote worker, and the
#               workers' logs that both ran inside the pinned image
#   image       //tools/remote:in_image_test passes on a worker: the image's marker is
#               there, a path that exists only on the host is not, uid 10001, read-only
#               root, no network
#   other-image an action naming another container-image is refused, naming the
#               images the worker has, with a hint
#   parallel    with 2 workers, those two training tests ran at the same time
#   outputs     the remote test's undeclared outputs (metrics JSON, plot, model) are
#               in bazel-testlogs/.../test.outputs/outputs.zip
#   failure     a failing remote test (//tools/remote:failing_test) fails the build
#               and its log is shown
#   cached      after `bazel clean`, the rerun is served from the remote cache and
#               no worker runs training again
#   property    an unregistered platform property fails with a hint that says what to change
#   instance    a wrong --remote_instance_name fails with a hint that says what to change
#   tls         clients without a certificate, with another CA's, with a revoked one (revoked while the
#               deployment runs) and over plain grpc:// are refused at the connection, by gRPC and by Bazel
#               (with a hint), and nothing runs on a worker for them; workers with such certificates, or with
#               a developer's, never register; the allowed client still runs the same target; a client cannot
#               write the action cache (gRPC, and Bazel's upload of a local result); an action asking for
#               the network is refused; --tls off on a non-loopback address and a --pki-dir inside the
#               repository are refused
#   loopback    the same deployment restarted on 127.0.0.1 serves plain gRPC (the single-machine default)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

keep=0
image_layout=()
port=50061
pg_port=54339
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keep) keep=1; shift ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --pg-port) pg_port="${2:?--pg-port needs a value}"; shift 2 ;;
    --image-layout) image_layout=(--image-layout "${2:?--image-layout needs a directory}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "integration_test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

remote_venv="${REMOTE_VENV:-/opt/cpu-finetune/remote-venv}"
work="$(mktemp -d "${TMPDIR:-/tmp}/cpu-finetune-remote-it.XXXXXX")"
chmod 755 "$work"
state="$work/state"
pki="$work/pki"
host=127.0.0.2 # a loopback address other than 127.0.0.1 stands in for a head node's network address
deployment=(tools/remote/selfhosted.sh --state-dir "$state" --pki-dir "$pki" --port "$port" --pg-port "$pg_port"
  --workers 2 "${image_layout[@]}")
image="$("$remote_venv/bin/python" tools/remote/oci.py pinned .)"
# A file only the host has: an action that sees it did not run in the image.
host_only="$work/host-only-marker"
touch "$host_only"
# --disk_cache= : results must come from the remote cache, not a local disk cache in user.bazelrc.
# --test_timeout: two training tests share 2 cores here (moderate: 300 s -> 900 s).
tls_flags=("--tls_certificate=$pki/ca.crt" "--tls_client_certificate=$pki/clients/ci-client.crt"
  "--tls_client_key=$pki/clients/ci-client.key")
remote_flags=(--config=selfhosted "--remote_executor=grpcs://$host:$port" "${tls_flags[@]}" --disk_cache=
  --test_timeout=60,900,1800,3600)
training=//src/training:training_test
cache_manager=//src/cache_manager:cache_manager_test
failures=()

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures+=("$1"); }
section() { echo; echo "== $*"; }

cleanup() {
  if [[ $keep -eq 1 ]]; then
    echo "integration_test.sh: deployment left running; stop it with: ${deployment[*]} --purge stop"
  else
    "${deployment[@]}" --purge stop || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# bazel_run NAME ARGS...: runs Bazel, output in $work/NAME.log (also shown), exit code in $rc.
bazel_run() {
  local name="$1"
  shift
  local start=$SECONDS
  set +e
  bazel "$@" 2>&1 | tee "$work/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "integration_test.sh: '$name' took $((SECONDS - start)) s (exit $rc)"
}

section "worker: unit tests"
if "$remote_venv/bin/python" tools/remote/worker_test.py; then
  pass "worker: unit tests"
else
  fail "worker: unit tests"
fi

section "deployment: start on $host (mutual TLS), with client certificates issued first"
"${deployment[@]}" issue ci-client >/dev/null
"${deployment[@]}" issue to-revoke >/dev/null
"${deployment[@]}" issue --worker ci-host2 >"$work/issue-worker.txt" # a worker machine's certificate
"${deployment[@]}" --bind "$host" start
"${deployment[@]}" status

section "remote + parallel + outputs: $training and $cache_manager on 2 workers"
bazel clean
bazel_run remote test "${remote_flags[@]}" --execution_log_json_file="$work/remote.exec.json" \
  "$training" "$cache_manager"
if [[ $rc -eq 0 ]]; then pass "remote: both tests passed"; else fail "remote: bazel test exited $rc"; fi
"$remote_venv/bin/python" tools/remote/check_run.py ran-remotely "$work/remote.exec.json" "$training" "$cache_manager" \
  || fail "remote: execution log"
"$remote_venv/bin/python" tools/remote/check_run.py in-image "$state/logs" "$image" "$training" "$cache_manager" \
  || fail "remote: in the image"
"$remote_venv/bin/python" tools/remote/check_run.py intervals "$state/logs"
"$remote_venv/bin/python" tools/remote/check_run.py overlap "$state/logs" "$training" "$cache_manager" \
  || fail "parallel"

zip="bazel-testlogs/src/training/training_test/test.outputs/outputs.zip"
if [[ -f "$zip" ]]; then
  listing="$("$remote_venv/bin/python" -m zipfile -l "$zip")"
  echo "$listing"
  for pattern in 'metrics\.json' '\.png' 'model/.*\.safetensors' 'model/config\.json'; do
    if grep -qE "$pattern" <<<"$listing"; then
      pass "outputs: $zip has $pattern"
    else
      fail "outputs: $zip lacks $pattern"
    fi
  done
else
  fail "outputs: no $zip came back from the worker"
fi

section "image: a remote action sees the image, not the worker's host"
bazel_run image test "${remote_flags[@]}" --test_output=all "--test_env=HOST_ONLY_PATH=$host_only" \
  //tools/remote:in_image_test
if [[ $rc -eq 0 ]]; then pass "image: in_image_test passed on a worker"; else fail "image: in_image_test exited $rc"; fi
"$remote_venv/bin/python" tools/remote/check_run.py in-image "$state/logs" "$image" //tools/remote:in_image_test \
  || fail "image: worker log"

section "other-image: an action naming an image the workers do not hold"
bazel_run other-image test "${remote_flags[@]}" //tools/remote:other_image_test
if [[ $rc -ne 0 ]] && grep -q "this worker has no image 'docker://example.org/not-the-pinned-image@" "$work/other-image.log" \
  && grep -qF "it has: '$image'" "$work/other-image.log"; then
  pass "other-image: refused, naming the image the workers have"
else
  fail "other-image: expected a refusal naming the held image (exit $rc)"
fi
hint="$(tools/remote/selfhosted.sh check-bazel-log "$work/other-image.log" 2>&1 || true)"
echo "$hint"
if grep -q "container-image the workers do not hold" <<<"$hint"; then pass "other-image: hint"; else fail "other-image: no hint"; fi

section "failure: a failing remote test fails the build and shows its log"
echo "(Bazel's own \"FAIL: //tools/remote:failing_test\" below is expected)"
bazel_run failure test "${remote_flags[@]}" --execution_log_json_file="$work/failure.exec.json" \
  --test_output=errors //tools/remote:failing_test
if [[ $rc -eq 3 ]]; then pass "failure: bazel test exited 3 (tests failed)"; else fail "failure: bazel test exited $rc, not 3"; fi
if grep -q "remote-integration: this test fails on purpose" "$work/failure.log"; then
  pass "failure: the test's log was shown"
else
  fail "failure: the test's log was not shown"
fi
"$remote_venv/bin/python" tools/remote/check_run.py ran-remotely "$work/failure.exec.json" //tools/remote:failing_test \
  || fail "failure: execution log"

section "cached: after bazel clean, the rerun comes from the remote cache"
runs_before="$("$remote_venv/bin/python" tools/remote/check_run.py runs "$state/logs" "$training")"
bazel clean
bazel_run cached test "${remote_flags[@]}" --execution_log_json_file="$work/cached.exec.json" \
  "$training" "$cache_manager"
if [[ $rc -eq 0 ]]; then pass "cached: both tests passed"; else fail "cached: bazel test exited $rc"; fi
"$remote_venv/bin/python" tools/remote/check_run.py cache-hit "$work/cached.exec.json" "$training" "$cache_manager" \
  || fail "cached: execution log"
runs_after="$("$remote_venv/bin/python" tools/remote/check_run.py runs "$state/logs" "$training")"
if [[ "$runs_before" == "$runs_after" ]]; then
  pass "cached: the workers ran $training $runs_after time(s) in all: not again"
else
  fail "cached: the workers ran $training again ($runs_before -> $runs_after runs)"
fi
if [[ -f "$zip" ]]; then pass "cached: outputs.zip came back from the cache"; else fail "cached: no $zip"; fi

section "property: a platform property the server does not declare"
bazel_run property test "${remote_flags[@]}" //tools/remote:unregistered_property_test
if [[ $rc -ne 0 ]] && grep -q "Unregistered platform property" "$work/property.log"; then
  pass "property: the build failed with BuildGrid's 'Unregistered platform property'"
else
  fail "property: expected a failure naming the unregistered property (exit $rc)"
fi
hint="$(tools/remote/selfhosted.sh check-bazel-log "$work/property.log" 2>&1 || true)"
echo "$hint"
if grep -q "platform property 'Pool'" <<<"$hint"; then pass "property: hint"; else fail "property: no hint"; fi

section "instance: an instance name the server does not have"
bazel_run instance test "${remote_flags[@]}" --remote_instance_name=no-such-instance //tools/remote:failing_test
if [[ $rc -ne 0 ]] && grep -q "no-such-instance" "$work/instance.log"; then
  pass "instance: the build failed naming the instance"
else
  fail "instance: expected a failure naming the instance (exit $rc)"
fi
hint="$(tools/remote/selfhosted.sh check-bazel-log "$work/instance.log" 2>&1 || true)"
echo "$hint"
if grep -q "remote_instance_name=main" <<<"$hint"; then pass "instance: hint"; else fail "instance: no hint"; fi

section "tls: who may connect, and who may write results"
tls_check=("$remote_venv/bin/python" tools/remote/tls_check.py)
server_url="grpcs://$host:$port"
workers_url="grpcs://$host:$((port + 1))"
other_pki="$work/other-pki"
tools/remote/selfhosted.sh --pki-dir "$other_pki" issue intruder >/dev/null # a certificate from another CA
probe=//tools/remote:tls_probe_test
probe_runs() { "$remote_venv/bin/python" tools/remote/check_run.py runs "$state/logs" "$probe"; }

# grpc level: the allowed client is accepted (so a refusal below is not a server that is down)
"${tls_check[@]}" connect "$server_url" --ca "$pki/ca.crt" --cert "$pki/clients/ci-client.crt" \
  --key "$pki/clients/ci-client.key" --accepted || fail "tls: the allowed client"
# A worker machine's certificate (issue --worker) registers on the workers' endpoint, until it is revoked.
if grep -q -- "--workers-only --server grpcs://.*:$((port + 1)) --tls-ca ca.crt --tls-cert ci-host2.crt" "$work/issue-worker.txt"; then
  pass "tls: issue --worker printed the worker machine's start command"
else
  fail "tls: issue --worker: $(cat "$work/issue-worker.txt")"
fi
"$remote_venv/bin/python" tools/remote/worker.py --name ci-host2-worker --work-dir "$work/ci-host2" --poll-timeout 5 \
  --server "$workers_url" --tls-ca "$pki/ca.crt" --tls-cert "$pki/workers/ci-host2.crt" \
  --tls-key "$pki/workers/ci-host2.key" >"$work/ci-host2.log" 2>&1 &
host2_pid=$!
sleep 8
"${tls_check[@]}" bots "$pg_port" ci-host2-worker --present || fail "tls: the issued worker certificate"
kill "$host2_pid" 2>/dev/null || true
wait "$host2_pid" 2>/dev/null || true
# The developer and the worker machine whose certificates are revoked still hold copies, with their keys.
cp "$pki/clients/to-revoke.crt" "$pki/clients/to-revoke.key" "$pki/workers/ci-host2.crt" "$pki/workers/ci-host2.key" \
  "$work/"
"${deployment[@]}" revoke to-revoke
"${deployment[@]}" revoke ci-host2
"${tls_check[@]}" connect "$server_url" --ca "$pki/ca.crt" --cert "$pki/clients/ci-client.crt" \
  --key "$pki/clients/ci-client.key" --accepted || fail "tls: the allowed client after the restart"
"${tls_check[@]}" connect "$server_url" --ca "$pki/ca.crt" --refused || fail "tls: no client certificate"
"${tls_check[@]}" connect "$server_url" --ca "$pki/ca.crt" --cert "$other_pki/clients/intruder.crt" \
  --key "$other_pki/clients/intruder.key" --refused || fail "tls: another CA's certificate"
"${tls_check[@]}" connect "$server_url" --ca "$pki/ca.crt" --cert "$work/to-revoke.crt" \
  --key "$work/to-revoke.key" --refused || fail "tls: a revoked certificate"
"${tls_check[@]}" connect "grpc://$host:$port" --refused || fail "tls: plain grpc://"
if [[ ! -e "$pki/clients/to-revoke.key" ]]; then pass "tls: revoke deleted the key"; else fail "tls: revoke kept the key"; fi

# Bazel: each refused at the connection, with a hint, and the probe never reaches a worker
refused_client() { # name hint-pattern bazel-flags...
  local name="$1" pattern="$2"
  shift 2
  bazel_run "tls-$name" test --config=selfhosted --disk_cache= "$@" "$probe"
  if [[ $rc -ne 0 ]]; then pass "tls: bazel $name: refused (exit $rc)"; else fail "tls: bazel $name: the build passed"; fi
  local hint
  hint="$(tools/remote/selfhosted.sh check-bazel-log "$work/tls-$name.log" 2>&1 || true)"
  echo "$hint"
  if grep -q "$pattern" <<<"$hint"; then pass "tls: bazel $name: hint"; else fail "tls: bazel $name: no hint"; fi
}
refused_client no-certificate "client certificate" "--remote_executor=$server_url" "--tls_certificate=$pki/ca.crt"
refused_client other-ca "client certificate" "--remote_executor=$server_url" "--tls_certificate=$pki/ca.crt" \
  "--tls_client_certificate=$other_pki/clients/intruder.crt" "--tls_client_key=$other_pki/clients/intruder.key"
refused_client revoked "client certificate" "--remote_executor=$server_url" "--tls_certificate=$pki/ca.crt" \
  "--tls_client_certificate=$work/to-revoke.crt" "--tls_client_key=$work/to-revoke.key"
refused_client plain-grpc "closed a plain gRPC connection" "--remote_executor=grpc://$host:$port"
refused_client untrusted-server "does not trust the server" "--remote_executor=$server_url" \
  "--tls_certificate=$other_pki/ca.crt" "--tls_client_certificate=$pki/clients/ci-client.crt" \
  "--tls_client_key=$pki/clients/ci-client.key"
runs="$(probe_runs)"
if [[ "$runs" == 0 ]]; then pass "tls: no worker ran $probe for them"; else fail "tls: workers ran $probe $runs time(s)"; fi

# Workers: with no certificate, another CA's, a revoked one, a developer's, or over plain grpc://, they never
# register. Each is still running (retrying) when stopped, so "not registered" is not a worker that died at start.
bad_workers=()
start_bad_worker() { # name flags...
  local name="ci-bad-$1"
  shift
  "$remote_venv/bin/python" tools/remote/worker.py --name "$name" --work-dir "$work/$name" --poll-timeout 5 "$@" \
    >"$work/$name.log" 2>&1 &
  bad_workers+=("$!:$name")
}
start_bad_worker no-certificate --server "$workers_url" --tls-ca "$pki/ca.crt"
start_bad_worker other-ca --server "$workers_url" --tls-ca "$pki/ca.crt" \
  --tls-cert "$other_pki/clients/intruder.crt" --tls-key "$other_pki/clients/intruder.key"
start_bad_worker revoked --server "$workers_url" --tls-ca "$pki/ca.crt" \
  --tls-cert "$work/to-revoke.crt" --tls-key "$work/to-revoke.key"
start_bad_worker developer --server "$workers_url" --tls-ca "$pki/ca.crt" \
  --tls-cert "$pki/clients/ci-client.crt" --tls-key "$pki/clients/ci-client.key"
start_bad_worker revoked-worker --server "$workers_url" --tls-ca "$pki/ca.crt" \
  --tls-cert "$work/ci-host2.crt" --tls-key "$work/ci-host2.key"
start_bad_worker plain-grpc --server "grpc://$host:$((port + 1))"
sleep 12
names=()
for entry in "${bad_workers[@]}"; do
  pid="${entry%%:*}"
  name="${entry#*:}"
  names+=("$name")
  if kill -0 "$pid" 2>/dev/null && grep -q "server unreachable" "$work/$name.log"; then
    pass "tls: worker $name kept retrying, refused"
  else
    fail "tls: worker $name: not retrying against a refusal"; tail -n 3 "$work/$name.log"
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
"${tls_check[@]}" bots "$pg_port" "${names[@]}" --absent || fail "tls: a worker without a valid certificate registered"
"${tls_check[@]}" bots "$pg_port" "$(hostname)-worker-1" --present || fail "tls: the deployment's own worker"
if grep -q "mutual TLS" "$work/ci-bad-no-certificate.log"; then
  pass "tls: the refused worker's log says what to check"
else
  fail "tls: the refused worker's log has no hint"; tail -n 3 "$work/ci-bad-no-certificate.log"
fi
# A developer's certificate: no Bots API on the clients' endpoint, refused on the workers'
"${tls_check[@]}" no-bots "$server_url" --ca "$pki/ca.crt" --cert "$pki/clients/ci-client.crt" \
  --key "$pki/clients/ci-client.key" || fail "tls: the clients' endpoint serves the Bots API"
"${tls_check[@]}" connect "$workers_url" --ca "$pki/ca.crt" --cert "$pki/clients/ci-client.crt" \
  --key "$pki/clients/ci-client.key" --refused || fail "tls: a developer's certificate on the workers' endpoint"

# The allowed client runs the probe: the count above could have moved
bazel_run tls-allowed test "${remote_flags[@]}" "$probe"
if [[ $rc -eq 0 && "$(probe_runs)" == 1 ]]; then
  pass "tls: the allowed client ran $probe on a worker (once)"
else
  fail "tls: the allowed client: exit $rc, $(probe_runs) run(s)"
fi

# Cluster-mode workers give actions no network (it would reach the head node's loopback services)
bazel_run tls-network test "${remote_flags[@]}" //tools/remote:network_test
if [[ $rc -ne 0 ]] && grep -q "gives actions no network" "$work/tls-network.log"; then
  pass "tls: an action asking for the network refused by the workers"
else
  fail "tls: network_test: exit $rc, no refusal"
fi

# Results: only the workers write the action cache (the "cached" section read theirs back)
"${tls_check[@]}" action-cache "$server_url" --ca "$pki/ca.crt" --cert "$pki/clients/ci-client.crt" \
  --key "$pki/clients/ci-client.key" || fail "tls: action cache"

# ... nor through Bazel: a test run locally is not uploaded, and after bazel clean it runs (locally) again
local_flags=("${remote_flags[@]}" --spawn_strategy=local --strategy=TestRunner=local)
bazel_run tls-local-upload test "${local_flags[@]}" //tools/remote:client_result_test
if [[ $rc -eq 0 ]] && grep -q "Updating cache not allowed" "$work/tls-local-upload.log"; then
  pass "tls: Bazel's upload of a local result refused (its warning), the build went on"
else
  fail "tls: local upload: exit $rc, no refusal in the log"
fi
bazel clean
bazel_run tls-local-again test "${local_flags[@]}" --execution_log_json_file="$work/local-again.exec.json" \
  //tools/remote:client_result_test
if [[ $rc -eq 0 ]]; then pass "tls: the local rerun passed"; else fail "tls: local rerun: exit $rc"; fi
"$remote_venv/bin/python" tools/remote/check_run.py ran-locally "$work/local-again.exec.json" \
  //tools/remote:client_result_test || fail "tls: after bazel clean the local test came from the remote cache"

# Refusals of the deployment itself: one line, exit 2
set +e
out="$(tools/remote/selfhosted.sh --state-dir "$work/unused" --bind "$host" --tls off status 2>&1)"
code=$?
set -e
if [[ $code -eq 2 && $(wc -l <<<"$out") -eq 1 ]] && grep -q "refusing to serve plain gRPC" <<<"$out"; then
  pass "tls: --tls off on $host refused in one line"
else
  fail "tls: --tls off on $host: exit $code: $out"
fi
set +e
out="$(tools/remote/selfhosted.sh --state-dir "$work/unused" --pki-dir "$PWD/pki" issue alice 2>&1)"
code=$?
set -e
if [[ $code -eq 2 && ! -e "$PWD/pki" ]] && grep -q "inside the repository" <<<"$out"; then
  pass "tls: a --pki-dir inside the repository refused"
else
  fail "tls: --pki-dir inside the repository: exit $code: $out"
fi
modes="$(stat -c '%a %n' "$pki" "$pki/ca.key" "$pki/server.key" "$pki/clients/ci-client.key" \
  "$pki/workers/worker-$(hostname | tr -c 'A-Za-z0-9._\n-' '-').key")"
if ! grep -qv '^[67]00 ' <<<"$modes"; then pass "tls: keys and the PKI directory are owner-only"; else fail "tls: modes: $modes"; fi
if grep -rqF -- "-----BEGIN PRIVATE KEY" "$state/logs" "$work"/*.log; then
  fail "tls: a private key is in a log"
else
  pass "tls: no private key in any log"
fi

section "loopback: the same deployment on 127.0.0.1 serves plain gRPC (the single-machine default)"
"${deployment[@]}" stop
"${tls_check[@]}" connect "$workers_url" --ca "$pki/ca.crt" --refused \
  || fail "loopback: stop left the workers' endpoint up"
"${deployment[@]}" start
"${tls_check[@]}" connect "grpc://127.0.0.1:$port" --accepted || fail "loopback: plain gRPC"
bazel_run loopback test --config=selfhosted "--remote_executor=grpc://127.0.0.1:$port" --disk_cache= \
  "--test_env=HOST_ONLY_PATH=$host_only" //tools/remote:in_image_test
if [[ $rc -eq 0 ]]; then pass "loopback: in_image_test passed over plain gRPC"; else fail "loopback: exit $rc"; fi

section "summary"
if [[ ${#failures[@]} -gt 0 ]]; then
  echo "integration_test.sh: ${#failures[@]} check(s) failed: ${failures[*]}" >&2
  echo "integration_test.sh: deployment logs: $state/logs (kept with --keep)" >&2
  exit 1
fi
echo "integration_test.sh: all checks passed"
