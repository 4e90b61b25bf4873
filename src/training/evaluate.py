"""Evaluate a trained classifier on labelled data, without training: the same metrics as train_model's "after".

    bazel run //src/training:evaluate -- --model outputs/train_model --data held_out.csv [--split test]

--data is anything train_model reads (a builtin set, a folder, one .csv/.tsv/.json/.jsonl/.parquet file, a Hub
id); labels (names or ids) are mapped onto the model's classes, and a label the model does not know is bad input.
Prints the summary (metrics, per class with more than two classes, confusion matrix) and writes it as JSON to
--output (default <outputs>/evaluate/metrics.json). Exit codes: 0, 2 bad input, 3 a quality gate failed.
"""

from src.common.allocator import restart_with_fast_allocator

if __name__ == "__main__":  # before the heavy imports below: the process it replaces should not pay for them
    restart_with_fast_allocator()

import logging
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from src.common.classify import evaluate, quality_gate_exit_code
from src.common.cpu import peak_rss_mib
from src.common.data import PaddingCollator
from src.common.errors import UserError, run_cli
from src.common.logging_utils import setup_logging
from src.common.metrics import format_confusion_matrix, format_per_class, format_scores
from src.common.paths import atomic_write_json, default_output_dir, resolve_user_path
from src.training import classifier_use
from src.training.classifier_use import ClassifierUseConfig, require_writable_file

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class EvaluateConfig(ClassifierUseConfig):
    """Evaluate a trained sequence classifier on labelled data."""

    data: str = field(default="", metadata={"help": "Labelled data: a builtin set, a folder, a file or a Hub id."})
    label_column: str | None = field(
        default=None, metadata={"help": "Column of the class (names or ids); default: label or labels."}
    )
    output: str | None = field(
        default=None, metadata={"help": f"Write the metrics here as JSON; default <outputs>/evaluate/{METRICS_FILE}."}
    )
    expect_min_accuracy: float | None = field(
        default=None, metadata={"help": "Exit with code 3 if the accuracy (0-1) is below this."}
    )
    expect_min_macro_f1: float | None = field(
        default=None, metadata={"help": "Exit with code 3 if the macro F1 (0-1) is below this."}
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar on stderr."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise UserError("--data is required: the labelled data to evaluate on")
        for name in ("expect_min_accuracy", "expect_min_macro_f1"):
            gate = getattr(self, name)
            if gate is not None and not 0 <= gate <= 1:
                raise UserError(f"--{name} must be in [0, 1], got {gate}")
        require_writable_file(self.output_path)

    @property
    def output_path(self) -> Path:
        return resolve_user_path(self.output) if self.output else default_output_dir("evaluate") / METRICS_FILE


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate as configured; writes config.output_path and returns the same report."""
    s = classifier_use.setup(config, config.data, labelled=True, label_column=config.label_column)
    precision = config.resolved_precision
    logger.info("evaluating on %s: %d examples, %s, %d threads", s.where, len(s.encoded), precision, s.threads)
    result = evaluate(s.model, s.encoded, PaddingCollator(s.tokenizer), config.batch_size, precision,
                      "evaluate" if config.show_progress else None)
    report = {
        "model": s.source,
        "data": config.data,
        "split_file": s.where,
        "sentence_pairs": s.split.pair,
        "precision": precision,
        "threads": s.threads,
        "max_length": config.max_length,
        "evaluation": asdict(result),
        "examples_per_second": result.examples / result.seconds if result.seconds else None,
        "peak_rss_mib": peak_rss_mib(),
    }
    path = atomic_write_json(config.output_path, report)
    logger.info("wrote %s", path)
    report["output"] = str(path)
    return report


def format_report(report: dict[str, Any]) -> str:
    result = report["evaluation"]
    metrics, classes = result["metrics"], result["label_names"]
    lines = [
        f"model      {report['model']}",
        f"data       {report['split_file']} ({result['examples']} examples{', sentence pairs' if report['sentence_pairs'] else ''})",
        f"classes    {len(classes)}: {', '.join(classes)}",
        "",
        *format_scores({"score": result}, len(classes)),
        "",
        *(["per class:", format_per_class(metrics["per_class"]), ""] if len(classes) > 2 else []),
        "confusion matrix:",
        format_confusion_matrix(metrics["confusion_matrix"], classes),
        "",
        f"time       {result['seconds']:.2f} s ({report['examples_per_second']:.1f} examples/s, {report['precision']}, "
        f"{report['threads']} threads), peak RSS {report['peak_rss_mib']:.0f} MiB",
        f"metrics    {report['output']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    config = classifier_use.parse(EvaluateConfig, argv, "evaluate", __doc__.split("\n\n")[0])
    setup_logging(config.console_level)
    logger.debug("command: %s", shlex.join(["evaluate", *argv]))
    report = run(config)
    print(format_report(report))
    metrics = report["evaluation"]["metrics"]
    return quality_gate_exit_code(metrics, config.expect_min_accuracy, config.expect_min_macro_f1,
                                  scored=report["split_file"])


if __name__ == "__main__":
    sys.exit(run_cli(main))
