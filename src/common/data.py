"""Labelled-sentence datasets as a `DatasetDict` with splits train/validation and columns text/label.

A data source is one string:
  builtin:<name>      a set shipped in the repo under src/common/data/<name>/ (default: builtin:sentiment_small)
  /path/to/folder     SST-2 TSVs (train.tsv + dev.tsv or validation.tsv, header `sentence<TAB>label`)
                      or JSON lines (train.jsonl + validation.jsonl or test.jsonl, fields `text` and `label`)
  org/name, glue/sst2 a Hugging Face Hub dataset, loaded with `datasets.load_dataset` (network or local cache)
"""

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from src.common.errors import UserError
from src.common.hub import require_dataset_reachable
from src.common.paths import looks_like_local_path, read_user_text, resolve_user_path

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATA_DIR = Path(__file__).parent / "data"  # shipped as Bazel runfiles next to this module
DEFAULT_DATA = "builtin:sentiment_small"

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
LENGTH_COLUMN = "length"  # tokens per example, read by the length-grouped sampler
LABEL_NAMES = ("negative", "positive")  # label id -> name for the sentiment sets
ID2LABEL = dict(enumerate(LABEL_NAMES))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}

# Local folder layouts, tried in order: (format, train file, validation files in order of preference).
LOCAL_LAYOUTS = (
    ("tsv", "train.tsv", ("dev.tsv", "validation.tsv")),
    ("jsonl", "train.jsonl", ("validation.jsonl", "test.jsonl")),
)
EXPECTED_FILES = "train.tsv + dev.tsv (or validation.tsv), or train.jsonl + validation.jsonl (or test.jsonl)"
TSV_TEXT_COLUMN = "sentence"  # SST-2 header: sentence<TAB>label
HUB_TEXT_COLUMNS = ("text", "sentence")  # the text column of a Hub dataset, first match wins


@dataclass(frozen=True)
class LocalFiles:
    """The two files of a local data source."""

    format: str  # "tsv" or "jsonl"
    train: Path
    validation: Path


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DATA_DIR.iterdir() if p.is_dir()) if BUILTIN_DATA_DIR.is_dir() else []


def find_local_files(spec: str) -> LocalFiles | None:
    """The files of a builtin or local-folder source; None for a Hub dataset id. Cheap: no data is read.

    Raises UserError for an unknown builtin name, a missing folder or a folder without the expected files.
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec.removeprefix(BUILTIN_PREFIX)
        folder = BUILTIN_DATA_DIR / name
        if not folder.is_dir():
            raise UserError(f"unknown builtin dataset {spec!r}; available: {', '.join(builtin_names()) or 'none'}")
    elif looks_like_local_path(spec):
        folder = resolve_user_path(spec)
        if not folder.is_dir():
            raise UserError(f"data folder {folder} does not exist; pass a folder with {EXPECTED_FILES}")
    else:
        try:
            validate_repo_id(spec)
        except HFValidationError:
            raise UserError(
                f"--data {spec!r} is neither a folder nor a Hugging Face dataset id; "
                f"pass a folder with {EXPECTED_FILES}"
            ) from None
        return None

    for fmt, train_name, validation_names in LOCAL_LAYOUTS:
        train = folder / train_name
        validation = next((folder / n for n in validation_names if (folder / n).is_file()), None)
        if train.is_file() and validation is not None:
            return LocalFiles(fmt, train, validation)
    raise UserError(f"data folder {folder} lacks the expected files; it needs {EXPECTED_FILES}")


def _check_label(value: object, where: str, num_labels: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise UserError(f"{where}: label {value!r} is not an integer in [0, {num_labels})")
    label = int(value)
    if label >= num_labels:
        raise UserError(f"{where}: label {label} is out of range; labels must be in [0, {num_labels})")
    return label


def read_tsv(path: Path, num_labels: int = len(LABEL_NAMES)) -> Dataset:
    """Read an SST-2 style TSV. Quotes are ordinary characters (QUOTE_NONE): text is kept verbatim."""
    with io.StringIO(read_user_text(path), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or TSV_TEXT_COLUMN not in header or LABEL_COLUMN not in header:
            raise UserError(f"{path}: expected a header line 'sentence<TAB>label', got {header!r}")
        text_idx, label_idx = header.index(TSV_TEXT_COLUMN), header.index(LABEL_COLUMN)
        texts, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{line_no}: expected {len(header)} tab-separated fields, got {len(row)}")
            texts.append(row[text_idx])
            labels.append(_check_label(row[label_idx], f"{path}:{line_no}", num_labels))
    return Dataset.from_dict({TEXT_COLUMN: texts, LABEL_COLUMN: labels})


def read_jsonl(path: Path, num_labels: int = len(LABEL_NAMES)) -> Dataset:
    """Read JSON lines with `text` and `label` fields; other fields are dropped."""
    texts, labels = [], []
    with io.StringIO(read_user_text(path)) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record[TEXT_COLUMN]
                label = record[LABEL_COLUMN]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{path}:{line_no}: expected a JSON object with 'text' and 'label' ({e})") from None
            texts.append(str(text))
            labels.append(_check_label(label, f"{path}:{line_no}", num_labels))
    return Dataset.from_dict({TEXT_COLUMN: texts, LABEL_COLUMN: labels})


def _hub_path_and_config(spec: str) -> tuple[str, str | None]:
    """`glue/<task>` names a configuration of the GLUE repo; anything else is a dataset repo id."""
    if spec.startswith("glue/"):
        return "nyu-mll/glue", spec.removeprefix("glue/")
    return spec, None


def load_hub_dataset(spec: str) -> DatasetDict:
    """Load a Hub dataset (from the network or the local datasets cache) as train/validation text/label."""
    path, config_name = _hub_path_and_config(spec)
    cache = datasets.config.HF_DATASETS_CACHE
    if not datasets.config.HF_HUB_OFFLINE:  # one quick request first: a missing id or a dead network fails fast
        require_dataset_reachable(path, spec, cache)
    try:
        loaded = datasets.load_dataset(path, config_name)
    except DatasetNotFoundError as e:  # reached the Hub, which does not know it
        raise UserError(f"dataset {spec!r} was not found on the Hugging Face Hub: {e}") from None
    except (ConnectionError, FileNotFoundError) as e:
        offline = datasets.config.HF_HUB_OFFLINE
        reason = "HF_HUB_OFFLINE is set" if offline else f"the Hub is unreachable: {type(e).__name__}"
        raise UserError(
            f"dataset {spec!r} is not available offline ({reason}, and it is not in the datasets cache at {cache}); "
            "pass --data /path/to/sst2 (a folder with train.tsv and dev.tsv, or train.jsonl and test.jsonl) "
            "or run once with network access"
        ) from None

    validation_split = next((s for s in ("validation", "test") if s in loaded), None)
    columns = loaded["train"].column_names if "train" in loaded else []
    text_column = next((c for c in HUB_TEXT_COLUMNS if c in columns), None)
    if validation_split is None or text_column is None or LABEL_COLUMN not in columns:
        raise UserError(
            f"dataset {spec!r} needs a train split with text (or sentence) and label columns and a validation "
            f"or test split; it has splits {list(loaded)} with columns {columns}"
        )

    def normalize(split: Dataset) -> Dataset:
        split = split.select_columns([text_column, LABEL_COLUMN])
        return split if text_column == TEXT_COLUMN else split.rename_column(text_column, TEXT_COLUMN)

    return DatasetDict(train=normalize(loaded["train"]), validation=normalize(loaded[validation_split]))


def subsample(
    dataset: Dataset, max_samples: int | None = None, fraction: float | None = None, seed: int = 42
) -> Dataset:
    """A deterministic random subset: `fraction` of the rows (rounded, at least 1), then at most `max_samples`."""
    n = len(dataset)
    if fraction is not None:
        n = max(1, round(n * fraction))
    if max_samples is not None:
        n = min(n, max_samples)
    if n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def load_data(
    spec: str = DEFAULT_DATA,
    *,
    num_labels: int = len(LABEL_NAMES),
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    train_fraction: float | None = None,
    seed: int = 42,
) -> DatasetDict:
    """Load a data source (see module docstring) into splits train/validation with columns text/label.

    The validation split is the source's own dev/validation (or test) file, never a slice of train.
    """
    files = find_local_files(spec)
    if files is None:
        data = load_hub_dataset(spec)
    else:
        read = read_tsv if files.format == "tsv" else read_jsonl
        data = DatasetDict(train=read(files.train, num_labels), validation=read(files.validation, num_labels))
    for split, ds in data.items():
        if len(ds) == 0:
            raise UserError(f"the {split} split of {spec!r} is empty")

    data["train"] = subsample(data["train"], max_train_samples, train_fraction, seed)
    data["validation"] = subsample(data["validation"], max_eval_samples, seed=seed)
    logger.info("data %s: %d train / %d validation examples", spec, len(data["train"]), len(data["validation"]))
    return data


def tokenize(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Tokenize once, without padding (the collator pads each batch), truncating at `max_length` tokens.

    Replaces `text` with the tokenizer's model inputs and adds `length` (tokens) for length grouping.
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch[TEXT_COLUMN], truncation=True, max_length=max_length)
        encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return data.map(encode, batched=True, remove_columns=[TEXT_COLUMN])


class PaddingCollator(DataCollatorWithPadding):
    """Dynamic padding to the longest example of each batch; drops the `length` column.

    `length` only steers the length-grouped sampler and must not reach the model's forward().
    """

    def __call__(self, features: list[dict]) -> dict:
        return super().__call__([{k: v for k, v in f.items() if k != LENGTH_COLUMN} for f in features])
