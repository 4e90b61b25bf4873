#!/usr/bin/env bash
# Measures the figures in README.md's "Remote execution" section, all in one run
# (so that ratios are comparable on a busy machine), against a fresh deployment
# on its own ports (tools/remote/selfhosted.sh, 2 workers):
#   1. the default job (//src/training:training_test) locally, then remotely
#      (--nocache_test_results --noremote_accept_cached: both really run);
#   2. a remote run that fills the remote cache, `bazel clean`, and the rerun;
#   3. a worker killed with SIGKILL (with the action it runs) mid-training;
#   4. the whole deployment stopped mid-training, with --remote_local_fallback;
#   5. the same without it.
# With --sweep, only this instead: //src/experiments:lr_sweep (one training
# action per learning rate) built from scratch on 1 worker, then on 2.
# Prints a table of results; logs and Bazel outputs stay in the work dir printed.
#
# usage: tools/remote/measure.sh [--target LABEL] [--port PORT] [--pg-port PORT] [--skip-failures | --sweep]
#   --skip-failures   only 1 and 2 (no killed worker, no stopped deployment)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

target=//src/training:training_test
port=50071
pg_port=54349
failures=1
sweep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) target="${2:?--target needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --pg-port) pg_port="${2:?--pg-port needs a value}"; shift 2 ;;
    --skip-failures) failures=0; shift ;;
    --sweep) sweep=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "measure.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

remote_venv="${REMOTE_VENV:-/opt/cpu-finetune/remote-venv}"
work="$(mktemp -d "${TMPDIR:-/tmp}/cpu-finetune-measure.XXXXXX")"
chmod 755 "$work"
state="$work/state"
selfhosted=(tools/remote/selfhosted.sh --state-dir "$state" --port "$port" --pg-port "$pg_port")
deployment=("${selfhosted[@]}" --workers 2)
remote=(--config=selfhosted "--remote_executor=grpc://127.0.0.1:$port" --disk_cache=)
fresh=(--nocache_test_results --noremote_accept_cached)
results="$work/results.txt"
trap '"${deployment[@]}" --purge stop >/dev/null 2>&1 || true; echo "measure.sh: logs in $work"' EXIT

log() { echo "measure.sh: $*" >&2; }
now_ms() { date +%s%3N; }
since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; } # seconds since now_ms
# measure NAME ARGS...: bazel ARGS, output in $work/NAME.log; appends "NAME exit wall test" to the table.
measure() {
  local name="$1"
  shift
  local start rc elapsed passed wall
  start=$(now_ms)
  set +e
  bazel "$@" --test_summary=short >"$work/$name.log" 2>&1
  rc=$?
  set -e
  wall="$(since "$start")"
  elapsed="$(grep -oE 'Elapsed time: [0-9.]+s' "$work/$name.log" | tail -n 1 | grep -oE '[0-9.]+' || echo '?')"
  passed="$(grep -oE "$target +(\(cached\) )?[A-Z]+ in [0-9.]+s" "$work/$name.log" | tail -n 1 || true)"
  printf '%-28s exit=%-3s wall=%6ss bazel_elapsed=%ss  %s\n' "$name" "$rc" "$wall" \
    "$elapsed" "$passed" | tee -a "$results"
}

worker_pid_running() { # prints the pid file of the worker whose log shows $target's test running
  local path="${target#//}" f
  path="${path/://}"
  for f in "$state"/logs/worker-*.log; do
    local lease
    lease="$(grep -E "action-run lease=\S+ argv=\S+ $path " "$f" | tail -n 1 | sed -E 's/.*lease=(\S+).*/\1/')"
    if [[ -n "$lease" ]] && ! grep -q "action-end lease=$lease" "$f"; then
      echo "$state/$(basename "$f" .log).pid"
      return 0
    fi
  done
  return 1
}

wait_for_training() {
  local i pid_file
  for ((i = 0; i < 600; i++)); do
    if pid_file="$(worker_pid_running)"; then echo "$pid_file"; return 0; fi
    sleep 1
  done
  return 1
}

if [[ $sweep -eq 1 ]]; then
  sweep_target=//src/experiments:lr_sweep
  for workers in 1 2; do
    "${selfhosted[@]}" --workers "$workers" start
    bazel clean >/dev/null 2>&1
    measure "sweep-$workers-worker" build "${remote[@]}" --noremote_accept_cached "$sweep_target"
  done
  cp bazel-bin/src/experiments/lr_sweep.md "$work/" 2>/dev/null && cat "$work/lr_sweep.md"
  echo
  echo "== results ($(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  cat "$results"
  exit 0
fi

"${deployment[@]}" start
log "warming up: building $target locally and remotely (not timed)"
bazel build "$target" >"$work/warm-local.log" 2>&1
bazel build "${remote[@]}" "$target" >"$work/warm-remote.log" 2>&1

# Starts the training test remotely (extra bazel flags after NAME), stops the whole
# deployment 20 s into the training, and records what Bazel did.
stop_deployment_mid_training() {
  local name="$1"
  shift
  bazel test "${remote[@]}" "${fresh[@]}" "$@" --test_summary=short "$target" >"$work/$name.log" 2>&1 &
  local bazel_pid=$!
  local start
  start=$(now_ms)
  wait_for_training >/dev/null || { log "training never started"; exit 1; }
  sleep 20
  log "stopping the deployment at +$(since "$start")s"
  "${deployment[@]}" stop >/dev/null 2>&1
  set +e; wait "$bazel_pid"; rc=$?; set -e
  printf '%-28s exit=%-3s wall=%6ss  %s\n' "$name" "$rc" "$(since "$start")" \
    "$(grep -oE "$target +[A-Z]+ in [0-9.]+s" "$work/$name.log" | tail -n 1)" | tee -a "$results"
  grep -E "WARNING|ERROR|FAILED|processes:" "$work/$name.log" | cut -c1-300 | head -n 5 | tee -a "$results" || true
}

log "1. local vs remote (both really run)"
measure local test "${fresh[@]}" "$target"
measure remote test "${remote[@]}" "${fresh[@]}" "$target"

log "2. fill the remote cache (after bazel clean, so the run is not a local cache hit), bazel clean, rerun"
bazel clean >/dev/null 2>&1
measure remote-fill-cache test "${remote[@]}" "$target"
bazel clean >/dev/null 2>&1
measure remote-cached-after-clean test "${remote[@]}" "$target"

if [[ $failures -eq 1 ]]; then
  log "3. SIGKILL the worker (and its action) mid-training"
  bazel test "${remote[@]}" "${fresh[@]}" --test_summary=short "$target" >"$work/killed-worker.log" 2>&1 &
  bazel_pid=$!
  start=$(now_ms)
  pid_file="$(wait_for_training)" || { log "training never started"; exit 1; }
  sleep 20
  worker_pid="$(cat "$pid_file")"
  # The action runs in a session of its own (its leader is the worker's child): a
  # machine that dies takes the action with it, so kill that whole session too.
  action_session="$(pgrep -P "$worker_pid" | head -n 1 || true)"
  action_pids="$( [[ -n "$action_session" ]] && pgrep -s "$action_session" | tr '\n' ' ' || true)"
  log "killing worker pid $worker_pid ($pid_file) and its action (pids: $action_pids) at +$(since "$start")s"
  kill -KILL "$worker_pid" $action_pids
  set +e; wait "$bazel_pid"; rc=$?; set -e
  printf '%-28s exit=%-3s wall=%6ss  %s\n' killed-worker "$rc" "$(since "$start")" \
    "$(grep -oE "$target +[A-Z]+ in [0-9.]+s" "$work/killed-worker.log" | tail -n 1)" | tee -a "$results"
  grep -E "WARNING|ERROR|processes:" "$work/killed-worker.log" | head -n 5 | tee -a "$results" || true
  "$remote_venv/bin/python" tools/remote/check_run.py intervals "$state/logs" | tee -a "$results"
  "${deployment[@]}" start >/dev/null 2>&1

  log "4. stop the whole deployment mid-training, with --remote_local_fallback"
  stop_deployment_mid_training server-down-fallback --remote_local_fallback
  "${deployment[@]}" start >/dev/null 2>&1

  log "5. stop the whole deployment mid-training, without --remote_local_fallback"
  stop_deployment_mid_training server-down
fi

echo
echo "== results ($(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg))"
cat "$results"
