#!/usr/bin/env bash
# Integration tests of remote execution against a real REAPI server: starts a
# fresh self-hosted deployment (tools/remote/selfhosted.sh: PostgreSQL + BuildGrid
# + 2 workers) on its own ports and state dir, runs Bazel with --config=selfhosted
# against it, and stops it again. Every check prints PASS or FAIL; the script
# exits 1 if any failed. CI runs it (.ci/run, stage "remote").
#
# usage: tools/remote/integration_test.sh [--keep] [--port PORT] [--pg-port PORT] [--image-layout DIR]
#   --keep          leave the deployment running afterwards (stop it with the
#                   selfhosted.sh command printed at the end)
#   --port PORT     BuildGrid's port for this run [50061, not the default 50051,
#                   so that a running deployment is left alone]
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
deployment=(tools/remote/selfhosted.sh --state-dir "$state" --port "$port" --pg-port "$pg_port" --workers 2
  "${image_layout[@]}")
image="$("$remote_venv/bin/python" tools/remote/oci.py pinned .)"
# A file only the host has: an action that sees it did not run in the image.
host_only="$work/host-only-marker"
touch "$host_only"
# --disk_cache= : results must come from the remote cache, not a local disk cache in user.bazelrc.
# --test_timeout: two training tests share 2 cores here (moderate: 300 s -> 900 s).
remote_flags=(--config=selfhosted "--remote_executor=grpc://127.0.0.1:$port" --disk_cache=
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

section "deployment: start"
"${deployment[@]}" start
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

section "summary"
if [[ ${#failures[@]} -gt 0 ]]; then
  echo "integration_test.sh: ${#failures[@]} check(s) failed: ${failures[*]}" >&2
  echo "integration_test.sh: deployment logs: $state/logs (kept with --keep)" >&2
  exit 1
fi
echo "integration_test.sh: all checks passed"
