"""Evidence checks for tools/remote/integration_test.sh, read from Bazel's
`--execution_log_json_file` and the workers' logs. Each prints PASS/FAIL lines and
exits 1 on a failure.

    check_run.py ran-remotely EXEC_LOG TARGET...    the tests' spawns ran on a remote worker
    check_run.py ran-locally EXEC_LOG TARGET...     the tests' spawns ran on this machine, not a remote cache hit
    check_run.py cache-hit EXEC_LOG TARGET...       the tests' results came from the remote cache
    check_run.py runs WORKER_LOG_DIR TARGET         print how many times the workers ran TARGET's test
    check_run.py overlap WORKER_LOG_DIR TARGET TARGET
                                                    the two tests ran at the same time on different workers
    check_run.py in-image WORKER_LOG_DIR IMAGE TARGET...
                                                    every run of the tests was inside IMAGE (the exact
                                                    container-image string), none on the host
    check_run.py intervals WORKER_LOG_DIR           print every test run: worker, start, end (no-end: still
                                                    running, or the worker died), target

TARGET is a test label such as //src/training:training_test.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# The worker's log lines (tools/remote/worker.py): "<date> <time> <worker> INFO action-run lease=L argv=A ...".
RUN_LINE = re.compile(r"^(\S+ \S+) (\S+) INFO action-run lease=(\S+) argv=(.*?) timeout=.* image=(\S+) network=")
END_LINE = re.compile(r"^(\S+ \S+) (\S+) INFO action-end lease=(\S+) .*exit_code=(-?\d+)")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


def test_path(label: str) -> str:
    """//src/training:training_test -> src/training/training_test (the test's path under testlogs)."""
    package, _, name = label.removeprefix("//").partition(":")
    return f"{package}/{name}" if package else name


def spawns(exec_log: Path) -> Iterator[dict]:
    """The SpawnExec objects of a JSON execution log (concatenated JSON objects)."""
    text = exec_log.read_text()
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        spawn, position = decoder.raw_decode(text, position)
        yield spawn


def test_spawns(exec_log: Path, label: str) -> list[dict]:
    """The spawns that ran `label`'s test: `test-setup.sh <package>/<name> ARGS...`
    (not the TestRunner spawn that only writes test.xml)."""
    return [
        spawn
        for spawn in spawns(exec_log)
        if spawn.get("mnemonic") == "TestRunner"
        and is_test_run(spawn.get("commandArgs", []), test_path(label))
    ]


def is_test_run(args: list[str], path: str) -> bool:
    return len(args) >= 2 and args[0].endswith("test-setup.sh") and args[1] == path


def report(ok: bool, message: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}: {message}", flush=True)
    return ok


def check_spawn_runner(exec_log: Path, labels: list[str], want_cache_hit: bool, want_local: bool = False) -> bool:
    ok = True
    for label in labels:
        found = test_spawns(exec_log, label)
        if not found:
            ok &= report(False, f"{label}: no test spawn in {exec_log}")
            continue
        for spawn in found:
            runner = spawn.get("runner", "")
            cache_hit = bool(spawn.get("remoteCacheHit", False))
            if want_cache_hit:
                good = cache_hit
                what = "served from the remote cache"
            elif want_local:
                good = runner not in ("remote", "remote cache hit", "") and not cache_hit
                what = "ran on this machine, not from the remote cache"
            else:
                good = runner == "remote" and not cache_hit
                what = "ran on a remote worker"
            ok &= report(good, f"{label} {what} (execution log: runner={runner!r}, remoteCacheHit={cache_hit})")
    return ok


@dataclass
class Run:
    worker: str
    lease: str
    target: str
    start: datetime
    end: datetime | None
    exit_code: int | None
    image: str = ""


def worker_runs(log_dir: Path) -> list[Run]:
    """Every test action the workers ran, from their logs."""
    runs: dict[tuple[str, str], Run] = {}  # by (worker, lease): a requeued job keeps its lease id
    for log_file in sorted(log_dir.glob("worker-*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            if match := RUN_LINE.match(line):
                when, worker, lease, argv, image = match.groups()
                args = argv.split()
                if is_test_run(args, args[1] if len(args) >= 2 else ""):
                    runs[(worker, lease)] = Run(
                        worker, lease, args[1], datetime.strptime(when, TIME_FORMAT), None, None, image)
            elif (match := END_LINE.match(line)) and (match.group(2), match.group(3)) in runs:
                run = runs[(match.group(2), match.group(3))]
                run.end = datetime.strptime(match.group(1), TIME_FORMAT)
                run.exit_code = int(match.group(4))
    return sorted(runs.values(), key=lambda run: run.start)


def check_overlap(log_dir: Path, first: str, second: str) -> bool:
    runs = worker_runs(log_dir)
    a_runs = [r for r in runs if r.target == test_path(first) and r.end]
    b_runs = [r for r in runs if r.target == test_path(second) and r.end]
    for a in a_runs:
        for b in b_runs:
            assert a.end is not None and b.end is not None
            overlap = (min(a.end, b.end) - max(a.start, b.start)).total_seconds()
            if overlap > 0 and a.worker != b.worker:
                return report(
                    True,
                    f"{first} on {a.worker} [{a.start:%H:%M:%S}-{a.end:%H:%M:%S}] and {second} on {b.worker} "
                    f"[{b.start:%H:%M:%S}-{b.end:%H:%M:%S}] ran at the same time ({overlap:.0f} s overlap)",
                )
    return report(False, f"no overlapping runs of {first} and {second} on two workers in {log_dir}")


def check_in_image(log_dir: Path, image: str, labels: list[str]) -> bool:
    runs = worker_runs(log_dir)
    ok = True
    for label in labels:
        found = [run for run in runs if run.target == test_path(label)]
        outside = [f"{run.worker}:{run.image}" for run in found if run.image != image]
        ok &= report(bool(found) and not outside,
                     f"{label}: {len(found)} run(s), all inside {image}" if found and not outside
                     else f"{label}: {len(found)} run(s); not inside {image}: {outside or 'no runs'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("ran-remotely", "ran-locally", "cache-hit"):
        sub = commands.add_parser(name)
        sub.add_argument("exec_log", type=Path)
        sub.add_argument("targets", nargs="+")
    runs_parser = commands.add_parser("runs")
    runs_parser.add_argument("log_dir", type=Path)
    runs_parser.add_argument("target")
    overlap = commands.add_parser("overlap")
    overlap.add_argument("log_dir", type=Path)
    overlap.add_argument("targets", nargs=2)
    in_image = commands.add_parser("in-image")
    in_image.add_argument("log_dir", type=Path)
    in_image.add_argument("image")
    in_image.add_argument("targets", nargs="+")
    intervals = commands.add_parser("intervals")
    intervals.add_argument("log_dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "ran-remotely":
        ok = check_spawn_runner(args.exec_log, args.targets, want_cache_hit=False)
    elif args.command == "ran-locally":
        ok = check_spawn_runner(args.exec_log, args.targets, want_cache_hit=False, want_local=True)
    elif args.command == "cache-hit":
        ok = check_spawn_runner(args.exec_log, args.targets, want_cache_hit=True)
    elif args.command == "runs":
        print(sum(1 for run in worker_runs(args.log_dir) if run.target == test_path(args.target)))
        ok = True
    elif args.command == "in-image":
        ok = check_in_image(args.log_dir, args.image, args.targets)
    elif args.command == "overlap":
        ok = check_overlap(args.log_dir, *args.targets)
    else:
        for run in worker_runs(args.log_dir):
            end = f"{run.end:%H:%M:%S}" if run.end else "no-end"
            print(f"{run.worker} {run.start:%H:%M:%S} {end} exit={run.exit_code} {run.target}")
        ok = True
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
