"""Label new texts with a trained classifier, without training: each text's class and its probability.

    bazel run //src/training:predict -- --model outputs/train_model --input texts.txt [--output labels.csv]

--input: a .txt file (one text per line), or a .csv/.tsv/.json/.jsonl/.parquet file, folder or Hub id with a text
column (and a second one for sentence pairs; any label column is ignored). Texts are classified in length-sorted
batches, as evaluation does; the output keeps the input's order: JSON lines {"text", ["text_pair"], "label",
"probability"} or, for an --output ending in .csv, the same as CSV columns. Default output:
<outputs>/predict/predictions.jsonl. Exit codes: 0, 2 bad input.
"""

from src.common.allocator import restart_with_fast_allocator

if __name__ == "__main__":  # before the heavy imports below: the process it replaces should not pay for them
    restart_with_fast_allocator()

import csv
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.common.classify import classify, label_names
from src.common.data import TEXT_COLUMN, TEXT_PAIR_COLUMN, PaddingCollator
from src.common.errors import UserError, run_cli
from src.common.logging_utils import setup_logging
from src.common.paths import atomic_write_bytes, default_output_dir, resolve_user_path
from src.training import classifier_use
from src.training.classifier_use import ClassifierUseConfig, require_writable_file

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".jsonl", ".csv")
DEFAULT_OUTPUT = "predictions.jsonl"


@dataclass
class PredictConfig(ClassifierUseConfig):
    """Label texts with a trained sequence classifier."""

    input: str = field(default="", metadata={"help": "Texts: a .txt file (one per line), a data file, folder or Hub id."})
    output: str | None = field(
        default=None,
        metadata={"help": f"Where to write the labels: .jsonl or .csv; default <outputs>/predict/{DEFAULT_OUTPUT}."},
    )
    show_progress: bool = field(default=True, metadata={"help": "Show a progress bar on stderr."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.input:
            raise UserError("--input is required: a file of texts to label")
        require_writable_file(self.output_path)
        if self.output_path.suffix.lower() not in OUTPUT_FORMATS:
            raise UserError(f"--output {self.output}: write .jsonl or .csv")

    @property
    def output_path(self) -> Path:
        return resolve_user_path(self.output) if self.output else default_output_dir("predict") / DEFAULT_OUTPUT


def run(config: PredictConfig) -> dict[str, Any]:
    """Label config.input; writes config.output_path and returns a summary."""
    s = classifier_use.setup(config, config.input, labelled=False)
    precision = config.resolved_precision
    logger.info("labelling %s: %d texts, %s, %d threads", s.where, len(s.encoded), precision, s.threads)
    outputs = classify(s.model, s.encoded, PaddingCollator(s.tokenizer), config.batch_size, precision,
                       "predict" if config.show_progress else None)
    names = label_names(s.model)
    ids = outputs.probabilities.argmax(axis=-1)
    texts = s.split["data"]
    columns = [c for c in (TEXT_COLUMN, TEXT_PAIR_COLUMN) if c in texts.column_names]
    records = [
        {**{c: texts[c][i] for c in columns}, "label": names[label], "probability": round(float(p[label]), 6)}
        for i, (label, p) in enumerate(zip(ids, outputs.probabilities))
    ]
    path = atomic_write_bytes(config.output_path, serialise(records, config.output_path.suffix.lower()))
    counts = {name: int((ids == i).sum()) for i, name in enumerate(names)}
    logger.info("wrote %s: %s", path, ", ".join(f"{n} {name}" for name, n in counts.items()))
    return {"model": s.source, "input": s.where, "texts": len(records), "output": str(path), "counts": counts,
            "seconds": outputs.seconds, "texts_per_second": len(records) / outputs.seconds if outputs.seconds else None}


def serialise(records: list[dict[str, Any]], suffix: str) -> bytes:
    """Records as JSON lines, or as CSV with a header (quoted where a text needs it)."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["text", "label", "probability"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    config = classifier_use.parse(PredictConfig, argv, "predict", __doc__.split("\n\n")[0])
    setup_logging(config.console_level)
    summary = run(config)
    print(f"{summary['texts']} texts labelled in {summary['seconds']:.2f} s "
          f"({summary['texts_per_second']:.1f} texts/s): {summary['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
