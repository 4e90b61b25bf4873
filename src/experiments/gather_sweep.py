"""Gather the metrics.json of several fine-tuning runs (a sweep) into one comparison table, Markdown and JSON.

    python -m src.experiments.gather_sweep --run NAME=METRICS_JSON [--run ...] --markdown OUT.md --json OUT.json

Each --run names one configuration and the metrics.json its job wrote (src/training/train_model.py). The table has
one row per run, in the order given: the training settings that differ between runs, accuracy before and after,
F1 and loss after, optimizer steps, training time, examples/s and the job's wall time. Used by the `sweep_table`
rule (src/experiments/sweep.bzl); runs on its own too.

Exit codes: 0 success, 2 bad input (one line on stderr).
"""

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from src.common.errors import CliArgumentParser, UserError, run_cli
from src.common.paths import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

# Fields read from each metrics.json, as dotted paths (what train_model's report holds).
ACCURACY_BEFORE = "before.metrics.accuracy"
ACCURACY_AFTER = "after.metrics.accuracy"
F1_AFTER = "after.metrics.f1"
LOSS_AFTER = "after.loss"
STEPS = "train.steps"
TRAIN_SECONDS = "train.seconds"
EXAMPLES_PER_SECOND = "train.examples_per_second"
WALL_SECONDS = "timings.total_s"  # the job from start to report, after Python's imports
SETTINGS = "config"  # the settings that determine the weights (learning rate, steps, seed, ...)


@dataclass(frozen=True)
class Run:
    """One configuration's results, as the table shows them."""

    name: str
    metrics_file: str
    settings: dict[str, Any]
    accuracy_before: float
    accuracy_after: float
    f1_after: float
    loss_after: float
    steps: int
    train_seconds: float
    examples_per_second: float
    wall_seconds: float


def _field(report: dict[str, Any], dotted: str, path: Path) -> Any:
    value: Any = report
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise UserError(f"{path}: no field '{dotted}'; is it a metrics.json written by train_model?")
        value = value[key]
    return value


def _number(report: dict[str, Any], dotted: str, path: Path) -> float:
    value = _field(report, dotted, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: field '{dotted}' must be a number, got {value!r}")
    return float(value)


def read_run(name: str, path: Path) -> Run:
    """One run from its metrics.json; UserError if the file is missing, not JSON or lacks a field."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read metrics file {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(report, dict):
        raise UserError(f"{path}: expected a JSON object (a train_model metrics.json)")
    settings = _field(report, SETTINGS, path)
    if not isinstance(settings, dict):
        raise UserError(f"{path}: field '{SETTINGS}' must be an object, got {settings!r}")
    return Run(
        name=name,
        metrics_file=str(path),
        settings=settings,
        accuracy_before=_number(report, ACCURACY_BEFORE, path),
        accuracy_after=_number(report, ACCURACY_AFTER, path),
        f1_after=_number(report, F1_AFTER, path),
        loss_after=_number(report, LOSS_AFTER, path),
        steps=int(_number(report, STEPS, path)),
        train_seconds=_number(report, TRAIN_SECONDS, path),
        examples_per_second=_number(report, EXAMPLES_PER_SECOND, path),
        wall_seconds=_number(report, WALL_SECONDS, path),
    )


def varied_settings(runs: Sequence[Run]) -> list[str]:
    """The settings whose values differ between runs, in the order of the first run's settings."""
    names = list(dict.fromkeys(key for run in runs for key in run.settings))
    return [n for n in names if len({json.dumps(run.settings.get(n), sort_keys=True) for run in runs}) > 1]


def best_run(runs: Sequence[Run]) -> Run:
    """Highest accuracy after; ties go to the lower loss, then to the run given first."""
    return min(runs, key=lambda run: (-run.accuracy_after, run.loss_after))


def _cell(value: Any) -> str:
    return "-" if value is None else str(value).replace("|", "\\|")


def markdown_table(runs: Sequence[Run]) -> str:
    varied, best = varied_settings(runs), best_run(runs)
    header = ["config", *varied, "accuracy before", "accuracy after", "f1 after", "loss after", "steps", "train s",
              "examples/s", "job wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        name = f"**{run.name}** (best)" if run is best else run.name
        cells = [
            name,
            *(_cell(run.settings.get(n)) for n in varied),
            f"{run.accuracy_before:.4f}",
            f"{run.accuracy_after:.4f}",
            f"{run.f1_after:.4f}",
            f"{run.loss_after:.4f}",
            str(run.steps),
            f"{run.train_seconds:.1f}",
            f"{run.examples_per_second:.1f}",
            f"{run.wall_seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    total_train = sum(run.train_seconds for run in runs)
    total_wall = sum(run.wall_seconds for run in runs)
    lines += ["", f"{len(runs)} runs; summed train time {total_train:.1f} s, summed job wall time {total_wall:.1f} s "
              "(each run's own time: runs on parallel workers overlap)."]
    return "\n".join(lines) + "\n"


def table_json(runs: Sequence[Run]) -> dict[str, Any]:
    return {"varied": varied_settings(runs), "best": best_run(runs).name, "runs": [asdict(run) for run in runs]}


def parse_run(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--run {spec!r} must be NAME=METRICS_JSON, e.g. --run lr_1e-4=out/metrics.json")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = CliArgumentParser(prog="gather_sweep", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=METRICS_JSON",
                        help="one configuration's name and metrics.json; repeat for each run")
    parser.add_argument("--markdown", required=True, type=Path, help="where to write the Markdown table")
    parser.add_argument("--json", required=True, type=Path, help="where to write the table as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    specs = [parse_run(spec) for spec in args.run]
    names = [name for name, _ in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--run names must be unique; repeated: {', '.join(duplicates)}")
    runs = [read_run(name, path) for name, path in specs]
    table = markdown_table(runs)
    atomic_write_bytes(args.markdown, table.encode("utf-8"))
    atomic_write_json(args.json, table_json(runs))
    logger.info("%d runs -> %s, %s", len(runs), args.markdown, args.json)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
