"""What //src/training:evaluate and //src/training:predict share: their flags (a typed config, validated before
anything is loaded) and setup: threads, precision, the trained classifier and its tokenizer, a data split.

The model is the output of train_model (its --output_dir, or the model/ folder in it), of the finetuned_model rule
(bazel-bin/<package>/<name>) or of a store entry: any folder with config.json, or with model/config.json.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from src.common.classify import load_trained_classifier, trained_classifier_classes
from src.common.cpu import configure_threads, cpu_flags, resolve_precision
from src.common.data import Columns, LabelledData, load_split, tokenize
from src.common.errors import UserError
from src.common.logging_utils import level_number
from src.training.config import MAX_LENGTH_RANGE, CliHfArgumentParser

logger = logging.getLogger(__name__)


@dataclass
class ClassifierUseConfig:
    """Flags of every command that uses a trained classifier."""

    model: str = field(
        metadata={"help": "The trained classifier: train_model's --output_dir (or its model/ folder), a "
                  "finetuned_model output folder, a store entry, or a Hub id of a fine-tuned classifier."}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Column of the text (default as train_model: text, sentence, ...)."}
    )
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Column of a sentence pair's second text (default as train_model)."}
    )
    split: str | None = field(
        default=None,
        metadata={"help": "Split of a folder or Hub dataset: default validation (or dev), else test; a single file "
                  "is its own split."},
    )
    max_length: int = field(
        default=128, metadata={"help": "Truncate texts to this many tokens (8-512); use the value trained with."}
    )
    batch_size: int = field(default=128, metadata={"help": "Examples per forward pass (length-sorted batches)."})
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto",
        metadata={"help": "auto = bf16 autocast if the CPU has native bf16 (AVX512-BF16/AMX), else fp32."},
    )
    log_level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata={"help": "Console log level."}
    )

    def __post_init__(self) -> None:
        low, high = MAX_LENGTH_RANGE
        if not low <= self.max_length <= high:
            raise UserError(f"--max_length must be in [{low}, {high}] tokens, got {self.max_length}")
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be at least 1, got {self.batch_size}")

    @property
    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, cpu_flags())

    @property
    def console_level(self) -> int:
        return level_number(self.log_level)

    def columns(self, label_column: str | None = None) -> Columns:
        return Columns(self.text_column, self.text_pair_column, label_column)


def require_writable_file(path: Path) -> None:
    """UserError, before any work, if `path` is a folder or lies under something that is not one."""
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; name a file in it")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--output {path}: {parent} is not a folder")


def parse(config_class: type, argv: list[str], prog: str, description: str) -> ClassifierUseConfig:
    parser = CliHfArgumentParser(config_class, prog=prog, description=description, allow_abbrev=False)
    return config_class(**vars(parser.parse_args(argv)))


@dataclass
class Setup:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # the model's folder
    threads: int
    split: LabelledData  # the data, labels (if read) as the model's class ids
    where: str  # the data's file (or Hub id and split), for messages
    encoded: Dataset  # the split tokenized


def setup(config: ClassifierUseConfig, data: str, labelled: bool, label_column: str | None = None) -> Setup:
    """Everything checked before anything is logged (bad input: one line): the model's classes from its config,
    the data against them, then the weights and tokenizer; then threads and tokenization."""
    source, classes = trained_classifier_classes(config.model)
    split, where = load_split(data, split=config.split, columns=config.columns(label_column), labelled=labelled,
                              known=classes if labelled else None)
    model, tokenizer, source = load_trained_classifier(source)
    threads = configure_threads()
    logger.info("model %s: %d classes (%s)", source, len(classes), ", ".join(classes))
    check_pair(split, model, where)
    encoded = tokenize(split.splits, tokenizer, config.max_length)["data"]
    return Setup(model, tokenizer, source, threads, split, where, encoded)


def check_pair(split: LabelledData, model: PreTrainedModel, where: str) -> None:
    """A warning if the texts are single but the model saw pairs in training, or the other way round (a model
    trained by train_model records which in its config: cpu_finetune_sentence_pairs)."""
    trained_on_pairs = getattr(model.config, "cpu_finetune_sentence_pairs", None)
    if trained_on_pairs is not None and trained_on_pairs != split.pair:
        logger.warning("%s has %s but the model was trained on %s; pass --text_column/--text_pair_column to match",
                       where, "sentence pairs" if split.pair else "single texts",
                       "sentence pairs" if trained_on_pairs else "single texts")
