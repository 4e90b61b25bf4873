"""Labelled-text datasets for classification, read through `datasets`, as `LabelledData`: splits with columns
text (+ text_pair for sentence-pair tasks) and label (class ids), and the class names.

A data source is one string:
  builtin:<name>      a set shipped in the repo under src/common/data/<name>/ (default: builtin:sentiment_small)
  /path/to/folder     files named by split, as on the Hugging Face Hub: train.*, validation.* (or dev.*, valid.*,
                      val.*), test.*, in one format: .csv, .tsv, .json, .jsonl or .parquet (CSV/TSV with a header
                      line, quoted and multi-line fields allowed); a README.md dataset card may name the labels
  /path/to/file.csv   one file (evaluate and predict only): a single split
  org/name, glue/sst2 a Hugging Face Hub dataset, loaded with `datasets.load_dataset` (network or local cache)

Columns are chosen by name (--text_column, --text_pair_column, --label_column) or found among the defaults below.
Labels are integers (ids; named by --class_names, the dataset card or a Hub dataset's features, else "0", "1", ...)
or strings (the names; ids in sorted order of the names). A class that no training example has is warned about.
"""

import contextlib
import csv
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import DatasetCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from src.common.errors import UserError
from src.common.hub import require_dataset_reachable
from src.common.paths import looks_like_local_path, resolve_user_path

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATA_DIR = Path(__file__).parent / "data"  # shipped as Bazel runfiles next to this module
DEFAULT_DATA = "builtin:sentiment_small"

# The columns of a loaded split.
TEXT_COLUMN = "text"
TEXT_PAIR_COLUMN = "text_pair"  # the second text of a sentence-pair task
LABEL_COLUMN = "label"  # class ids
LENGTH_COLUMN = "length"  # tokens per example, read by the length-grouped sampler

# Column defaults, first match wins: sentence pairs first (GLUE's names), then single texts.
PAIR_COLUMN_DEFAULTS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                        ("question", "sentence"))
TEXT_COLUMN_DEFAULTS = ("text", "sentence", "content", "review")
LABEL_COLUMN_DEFAULTS = ("label", "labels")

# The shipped sentiment sets' classes (builtin:sentiment_small's dataset card names them too).
LABEL_NAMES = ("negative", "positive")
ID2LABEL = dict(enumerate(LABEL_NAMES))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}

# File formats: suffix -> (datasets' packaged builder, its options). CSV cells are read verbatim: an empty cell is
# an empty string (na_filter off), not a missing value.
# index_col=False: a row with more fields than the header is an error (pandas would otherwise make the extra
# leading fields an index, silently shifting the columns).
FORMATS = {
    ".csv": ("csv", {"na_filter": False, "index_col": False}),
    ".tsv": ("csv", {"sep": "\t", "na_filter": False, "index_col": False}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),  # one text per line, no labels: texts to label (predict)
}
# Split names as file stems, the Hub's conventions (datasets.data_files.SPLIT_KEYWORDS).
SPLIT_STEMS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing"),
}
EVAL_SPLITS = ("validation", "test")  # what the job evaluates on, in order of preference
DATASET_CARD = "README.md"
EXPECTED_FILES = "train.csv + validation.csv (or .tsv, .json, .jsonl, .parquet; dev/test for validation)"
INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Columns:
    """The columns a user chose (None: found among the defaults)."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class DataFiles:
    """A local source's files: split -> path, all of one suffix; `folder` holds a possible dataset card."""

    splits: Mapping[str, Path]
    suffix: str
    folder: Path


@dataclass
class LabelledData:
    """Splits with columns text (+ text_pair) and label (ids into label_names)."""

    splits: DatasetDict
    label_names: tuple[str, ...]
    source: str

    @property
    def pair(self) -> bool:
        return TEXT_PAIR_COLUMN in next(iter(self.splits.values())).column_names

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def __getitem__(self, split: str) -> Dataset:
        return self.splits[split]


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DATA_DIR.iterdir() if p.is_dir()) if BUILTIN_DATA_DIR.is_dir() else []


def _split_of(path: Path) -> str | None:
    stem = path.name[: -len(path.suffix)].lower() if path.suffix else path.name.lower()
    return next((split for split, stems in SPLIT_STEMS.items() if stem in stems), None)


def find_local_files(spec: str) -> DataFiles | None:
    """The files of a builtin, folder or file source; None for a Hub dataset id. Cheap: no data is read.

    Raises UserError for an unknown builtin name, a missing path, an unknown format, or a folder without split files
    (or with split files in more than one format, or a split twice).
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec.removeprefix(BUILTIN_PREFIX)
        path = BUILTIN_DATA_DIR / name
        if not path.is_dir():
            raise UserError(f"unknown builtin dataset {spec!r}; available: {', '.join(builtin_names()) or 'none'}")
    elif looks_like_local_path(spec):
        path = resolve_user_path(spec)
        if not path.exists():
            raise UserError(f"data {path} does not exist; pass a data file, or a folder with {EXPECTED_FILES}")
    else:
        try:
            validate_repo_id(spec)
        except HFValidationError:
            raise UserError(
                f"--data {spec!r} is neither a folder nor a Hugging Face dataset id; pass a folder with {EXPECTED_FILES}"
            ) from None
        return None

    formats = ", ".join(FORMATS)
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise UserError(f"{path}: unknown data format {path.suffix or '(no suffix)'!r}; use one of {formats}")
        return DataFiles({_split_of(path) or "data": path}, path.suffix.lower(), path.parent)
    found: dict[str, list[Path]] = {}
    for child in sorted(path.iterdir()):
        split = _split_of(child)
        if split and child.is_file() and child.suffix.lower() in FORMATS:
            found.setdefault(split, []).append(child)
    if "train" not in found and not any(s in found for s in EVAL_SPLITS):
        raise UserError(f"data folder {path} has no split files; it needs {EXPECTED_FILES}")
    for split, paths in found.items():
        if len(paths) > 1:
            raise UserError(f"data folder {path} has {len(paths)} {split} files ({', '.join(p.name for p in paths)}); "
                            "keep one")
    suffixes = {paths[0].suffix.lower() for paths in found.values()}
    if len(suffixes) > 1:
        raise UserError(f"data folder {path} mixes formats ({', '.join(sorted(suffixes))}); use one for all splits")
    return DataFiles({split: paths[0] for split, paths in found.items()}, suffixes.pop(), path)


def require_train_files(files: DataFiles | None) -> None:
    """UserError unless a local source has a train split and an evaluation split (what training needs)."""
    if files is None:
        return
    if "train" not in files.splits or not any(s in files.splits for s in EVAL_SPLITS):
        have = ", ".join(p.name for p in files.splits.values())
        raise UserError(f"data {files.folder} has {have}; training needs {EXPECTED_FILES}")


def _first_line(error: BaseException) -> str:
    """The innermost cause of a datasets/pyarrow/pandas read error, as one line."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.args):
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _cause_of_type(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def read_files(files: DataFiles, use_card: bool = True) -> DatasetDict:
    """Read local split files with datasets' packaged builder for their format, in memory (a private cache folder,
    removed afterwards: local files are not copied into the user's datasets cache). A dataset card (README.md with
    dataset_info features) in the folder gives the columns' types, e.g. the class names of an integer label;
    use_card=False ignores it (texts only: a label the card does not know must not stop predict). Without a card
    CSV/TSV cells are strings, as written ("0042" stays "0042"). Blank lines of a .txt file are skipped."""
    builder, options = FORMATS[files.suffix]
    card = _card_features(files.folder) if use_card and files.folder.joinpath(DATASET_CARD).is_file() else None
    data: dict[str, Dataset] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-finetune-data-") as cache:
        for split, path in files.splits.items():  # one at a time: an error names its file
            features = _features_for(card, path)
            if builder == "csv" and features is None:  # every column a string, cells as written
                features = _all_strings(path)
            _require_rows(path, files.suffix)
            try:
                with warnings.catch_warnings(), _builder_errors_quiet():
                    # pandas warns, and drops fields, for rows longer than the header: an error here
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    loaded = datasets.load_dataset(
                        builder, data_files={split: str(path)}, split=split, cache_dir=cache, keep_in_memory=True,
                        features=features, **options,
                    )
            except Exception as e:  # pandas, pyarrow and datasets each raise their own for a malformed file
                raise _read_error(e, path, files.suffix) from None
            if files.suffix == ".txt":
                loaded = loaded.filter(lambda row: bool(row[TEXT_COLUMN].strip()), keep_in_memory=True)
                loaded = loaded.flatten_indices(keep_in_memory=True)
            if len(loaded) == 0:
                raise UserError(f"{path}: no rows{' (a header line only)' if builder == 'csv' else ''}; add examples")
            data[split] = loaded
    return DatasetDict(data)


def _all_strings(path: Path) -> datasets.Features | None:
    """String features for each column of a CSV/TSV header (None if it has none, or names a column twice: the reader
    then says what is wrong)."""
    columns = _columns_of(path)
    if not columns or len(set(columns)) != len(columns):
        return None
    return datasets.Features({name: datasets.Value("string") for name in columns})


def _require_rows(path: Path, suffix: str) -> None:
    """UserError for a file with nothing in it (the readers' own messages for one say nothing useful)."""
    try:
        empty = path.stat().st_size == 0 or (suffix != ".parquet" and not path.read_bytes().strip())
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror}") from None
    if empty:
        raise UserError(f"{path}: the file is empty; add examples")


# What the readers say for a file without rows (a header only, [], a zero-row Parquet file).
NO_ROWS = ("corresponds to no data", "StopIteration", "at least one example", "BatchSize must be greater than 0")


def _read_error(error: BaseException, path: Path, suffix: str) -> UserError:
    """A reader's exception as our one line, naming the file."""
    not_utf8 = _cause_of_type(error, UnicodeDecodeError)
    if not_utf8 is not None:
        return UserError(f"{path} is not UTF-8 text (byte 0x{not_utf8.object[not_utf8.start]:02x}); save it as UTF-8")
    reason = _first_line(error)
    if any(marker in reason for marker in NO_ROWS):
        return UserError(f"{path}: no rows{' (a header line only)' if suffix in ('.csv', '.tsv') else ''}; add examples")
    if "Length of header" in reason:
        reason = "a row has more fields than the header line"
    if "EOF inside string" in reason:
        reason += " (a field that starts with a double quote must end with one; write a quote inside a quoted field as two)"
    return UserError(f"{path}: cannot read it as {suffix[1:].upper()}: {reason}")


@contextlib.contextmanager
def _builder_errors_quiet() -> Iterator[None]:
    """datasets' packaged builders log a read error before raising it; the raised one becomes our one line."""
    builders = logging.getLogger("datasets.packaged_modules")
    level = builders.level
    builders.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        builders.setLevel(level)


def _card_features(folder: Path) -> datasets.Features | None:
    """The features a dataset card (README.md YAML header, dataset_info.features) declares, if any."""
    path = folder / DATASET_CARD
    if not path.read_text(encoding="utf-8", errors="replace").startswith("---"):
        return None  # a plain README, no YAML header
    try:
        info = DatasetCard.load(path).data.to_dict().get("dataset_info") or {}
        return DatasetInfo._from_yaml_dict(info).features if isinstance(info, dict) else None
    except Exception as e:  # a card is free-form text: only a dataset_info header that cannot be read is bad input
        if "dataset_info" not in path.read_text(encoding="utf-8", errors="replace"):
            return None  # a README that starts with a --- rule, not a card
        raise UserError(f"{path}: its dataset_info header cannot be read: {_first_line(e)}") from None


def _features_for(features: datasets.Features | None, path: Path) -> datasets.Features | None:
    """The card's features if they name exactly the file's columns (else None: datasets infers them)."""
    if features is None:
        return None
    return features if set(features) == set(_columns_of(path)) else None


def _columns_of(path: Path) -> list[str]:
    """A file's column names (header line, first JSON record, Parquet schema)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with path.open(encoding="utf-8", newline="") as f:
                return next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), [])
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                line = next((ln for ln in f if ln.strip()), "{}")
            return list(json.loads(line))
        if suffix == ".json":  # a list of records, or {"data": [...]}
            records = json.loads(path.read_text(encoding="utf-8"))
            records = records.get("data", []) if isinstance(records, dict) else records
            return list(records[0]) if records and isinstance(records[0], dict) else []
        if suffix == ".parquet":
            return pq.read_schema(path).names
        if suffix == ".txt":
            return [TEXT_COLUMN]
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    return []


def _hub_path_and_config(spec: str) -> tuple[str, str | None]:
    """`glue/<task>` names a configuration of the GLUE repo; anything else is a dataset repo id."""
    if spec.startswith("glue/"):
        return "nyu-mll/glue", spec.removeprefix("glue/")
    return spec, None


def load_hub_dataset(spec: str) -> DatasetDict:
    """A Hub dataset's splits (from the network or the local datasets cache)."""
    path, config_name = _hub_path_and_config(spec)
    cache = datasets.config.HF_DATASETS_CACHE
    if not datasets.config.HF_HUB_OFFLINE:  # one quick request first: a missing id or a dead network fails fast
        require_dataset_reachable(path, spec, cache)
    try:
        return datasets.load_dataset(path, config_name)
    except DatasetNotFoundError as e:  # reached the Hub, which does not know it
        raise UserError(f"dataset {spec!r} was not found on the Hugging Face Hub: {e}") from None
    except (ConnectionError, FileNotFoundError) as e:
        offline = datasets.config.HF_HUB_OFFLINE
        reason = "HF_HUB_OFFLINE is set" if offline else f"the Hub is unreachable: {type(e).__name__}"
        raise UserError(
            f"dataset {spec!r} is not available offline ({reason}, and it is not in the datasets cache at {cache}); "
            f"pass --data /path/to/folder (with {EXPECTED_FILES}) or run once with network access"
        ) from None


def resolve_columns(columns: Sequence[str], chosen: Columns, where: str) -> tuple[str, str | None, str | None]:
    """The (text, text pair or None, label or None) column names of a split with `columns`; UserError naming
    the file and its columns if a chosen one is missing or no default matches."""

    def need(name: str, flag: str) -> str:
        if name not in columns:
            raise UserError(f"{where}: no column {name!r} ({flag}); its columns are {', '.join(columns)}")
        return name

    label = need(chosen.label, "--label_column") if chosen.label else next(
        (c for c in LABEL_COLUMN_DEFAULTS if c in columns), None)
    if chosen.text:
        text = need(chosen.text, "--text_column")
        return text, need(chosen.text_pair, "--text_pair_column") if chosen.text_pair else None, label
    if chosen.text_pair:
        need(chosen.text_pair, "--text_pair_column")
        text = next((c for c in TEXT_COLUMN_DEFAULTS if c in columns and c != chosen.text_pair), None)
        if text is None:
            raise UserError(f"{where}: --text_pair_column needs --text_column too; its columns are {', '.join(columns)}")
        return text, chosen.text_pair, label
    for first, second in PAIR_COLUMN_DEFAULTS:
        if first in columns and second in columns:
            return first, second, label
    text = next((c for c in TEXT_COLUMN_DEFAULTS if c in columns), None)
    if text is None:
        raise UserError(
            f"{where}: no text column (looked for {', '.join(TEXT_COLUMN_DEFAULTS)}); its columns are "
            f"{', '.join(columns)}; pass --text_column NAME (and --text_pair_column for sentence pairs)"
        )
    return text, None, label


def _column(split: Dataset, column: str) -> list:
    """A column's values as a list: plain values and class ids straight from the Arrow table (row by row is far
    slower); other features (a JSON column of mixed types) decoded by datasets."""
    plain = isinstance(split.features[column], (datasets.Value, ClassLabel))
    if plain and split._indices is None:  # the table is the rows (no selection or shuffle on top of it)
        return split.data.column(column).to_pylist()
    return list(split[column])


def _texts(split: Dataset, column: str, where: str) -> list[str]:
    """A text column's strings; UserError on the first empty, missing or non-string text."""
    values = _column(split, column)
    for row, value in enumerate(values, start=1):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UserError(f"{where}: row {row} has an empty {column!r}; remove the row or fill it in")
        if not isinstance(value, str):
            raise UserError(f"{where}: column {column!r} holds {type(value).__name__} values (row {row}: {value!r}), "
                            "not text; pick the text column with --text_column")
    return values


def _label_kind(value: object, where: str, row: int, column: str) -> int | str:
    """A raw label as an int (an integer or a numeral) or a name (a non-numeric string)."""
    if isinstance(value, bool) or value is None:
        raise UserError(f"{where}: row {row} has label {value!r} in {column!r}; labels are integers or class names")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise UserError(f"{where}: row {row} has label {value!r} in {column!r}: a fraction (a regression target?); "
                        "this job classifies: labels are integers or class names")
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise UserError(f"{where}: row {row} has an empty label in {column!r}")
        return int(stripped) if INTEGER.fullmatch(stripped) else stripped
    raise UserError(f"{where}: row {row} has label {value!r} in {column!r}; labels are integers or class names")


def encode_labels(
    raw: Mapping[str, list], wheres: Mapping[str, str], column: str, names: Sequence[str] | None,
    known: Sequence[str] | None = None, names_from: str = "--class_names",
) -> tuple[dict[str, list[int]], tuple[str, ...]]:
    """Class ids per split, and the class names.

    raw: each split's label values. names: --class_names, or a dataset's ClassLabel names (ids are then the values);
    names_from says which, for messages. known: the classes of a trained model (evaluate): names map onto its ids by
    name (integer labels that `names` names too); unnamed integers must be below its count.
    """
    kinds = {split: [_label_kind(v, wheres[split], row, column) for row, v in enumerate(values, start=1)]
             for split, values in raw.items()}
    ints = [(s, i) for s, vs in kinds.items() for i, v in enumerate(vs, start=1) if isinstance(v, int)]
    strs = [(s, i) for s, vs in kinds.items() for i, v in enumerate(vs, start=1) if isinstance(v, str)]
    if ints and strs:
        (si, ri), (ss, rs) = ints[0], strs[0]
        raise UserError(
            f"{wheres[si]}: labels in {column!r} mix integers (row {ri}: {kinds[si][ri - 1]!r}) and class names "
            f"({wheres[ss]} row {rs}: {kinds[ss][rs - 1]!r}); use one kind"
        )
    if ints:
        for split, values in kinds.items():
            bad = next(((row, v) for row, v in enumerate(values, start=1) if v < 0), None)
            if bad:
                raise UserError(f"{wheres[split]}: row {bad[0]} has label {bad[1]} in {column!r}; class ids start at 0 "
                                "(-1 marks an unlabelled row: label it or drop it)")
        top = max(v for values in kinds.values() for v in values)
        named = names is not None and known is not None  # named ids onto a model's classes: by name, below
        classes = tuple(names) if named else tuple(known) if known else tuple(names) if names else tuple(
            str(i) for i in range(top + 1))
        if top >= len(classes):
            split = next(s for s, vs in kinds.items() if top in vs)
            what = names_from if names else "the model's classes"
            raise UserError(f"{wheres[split]}: label {top} in {column!r} has no class among {what} "
                            f"({len(classes)}: {', '.join(classes)})")
        if not named:
            return {split: list(values) for split, values in kinds.items()}, classes
        kinds = {split: [classes[v] for v in values] for split, values in kinds.items()}
    found = sorted({v for values in kinds.values() for v in values})
    classes = tuple(known) if known else tuple(names) if names else tuple(found)
    index = {name: i for i, name in enumerate(classes)}
    for split, values in kinds.items():
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            what = "the model's classes" if known else names_from
            raise UserError(f"{wheres[split]}: label{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown[:5]))} not among {what} ({', '.join(classes)})")
    return {split: [index[v] for v in values] for split, values in kinds.items()}, classes


def _normalise(
    loaded: Mapping[str, Dataset], wheres: Mapping[str, str], chosen: Columns, label_names: Sequence[str] | None,
    known: Sequence[str] | None, need_labels: bool = True,
) -> tuple[DatasetDict, tuple[str, ...]]:
    """Each split as text (+ text_pair) and label ids, and the class names."""
    picked = {split: resolve_columns(ds.column_names, chosen, wheres[split]) for split, ds in loaded.items()}
    out: dict[str, dict[str, list]] = {}
    for split, (text, pair, _) in picked.items():
        out[split] = {TEXT_COLUMN: _texts(loaded[split], text, wheres[split])}
        if pair:
            out[split][TEXT_PAIR_COLUMN] = _texts(loaded[split], pair, wheres[split])
    if not need_labels:
        return DatasetDict({s: Dataset.from_dict(c) for s, c in out.items()}), ()
    for split, (_, _, label) in picked.items():
        if label is None:
            columns = ", ".join(loaded[split].column_names)
            raise UserError(f"{wheres[split]}: no label column (looked for {', '.join(LABEL_COLUMN_DEFAULTS)}); its "
                            f"columns are {columns}; pass --label_column NAME")
    features = [loaded[s].features[picked[s][2]] for s in loaded]
    card_names = features[0].names if all(isinstance(f, ClassLabel) for f in features) else None
    if label_names and card_names and len(label_names) != len(card_names):
        raise UserError(f"--class_names has {len(label_names)} names; the data's card names {len(card_names)} "
                        f"({', '.join(card_names)})")
    raw = {s: _column(loaded[s], picked[s][2]) for s in loaded}
    ids, classes = encode_labels(raw, wheres, picked[next(iter(loaded))][2], label_names or card_names, known,
                                 names_from="--class_names" if label_names else "the dataset's class names")
    for split in out:
        out[split][LABEL_COLUMN] = ids[split]
    return DatasetDict({s: Dataset.from_dict(c) for s, c in out.items()}), classes


def _load_source(
    spec: str, training: bool = False, split: str | None = None, use_card: bool = True
) -> tuple[DatasetDict, dict[str, str]]:
    """A source's splits as loaded, and how to name each in messages (its file, or the Hub id and split).
    training: of a local source, read only the train split and the one evaluated on; else only the split
    load_split would pick (`split`, or its default)."""
    files = find_local_files(spec)
    if files is None:
        loaded = load_hub_dataset(spec)
        return loaded, {name: f"{spec} ({name} split)" for name in loaded}
    if training:
        require_train_files(files)
        keep = {"train", _eval_split_name(list(files.splits))}
    else:
        keep = {_pick_split(spec, list(files.splits), split)}
    files = DataFiles({s: p for s, p in files.splits.items() if s in keep}, files.suffix, files.folder)
    return read_files(files, use_card), {name: str(path) for name, path in files.splits.items()}


def _pick_split(spec: str, names: Sequence[str], split: str | None) -> str:
    """`split`, else a single split, else validation (or dev), else test; UserError if there is none such."""
    chosen = split or (names[0] if len(names) == 1 else _eval_split_name(names))
    if chosen not in names:
        wanted = f"no split {split!r}" if split else "which split?"
        raise UserError(f"{spec}: {wanted}; it has {', '.join(names)}; pass --split NAME")
    return chosen


def _eval_split_name(splits: Sequence[str]) -> str | None:
    return next((s for s in EVAL_SPLITS if s in splits), next((s for s in splits if s.startswith("validation")), None))


def warn_untrained_classes(data: LabelledData) -> None:
    """One warning line if some class has no training example (the model cannot learn to predict it)."""
    present = set(data["train"][LABEL_COLUMN])
    missing = [name for i, name in enumerate(data.label_names) if i not in present]
    if missing:
        logger.warning("class%s %s %s no training example: the model cannot learn to predict %s",
                       "es" if len(missing) > 1 else "", ", ".join(map(repr, missing)),
                       "have" if len(missing) > 1 else "has", "them" if len(missing) > 1 else "it")


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
    columns: Columns = Columns(),
    label_names: Sequence[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    train_fraction: float | None = None,
    seed: int = 42,
) -> LabelledData:
    """A source (see module docstring) as splits train and validation, for training.

    The validation split is the source's own validation (or dev, or test) split, never a slice of train.
    """
    loaded, wheres = _load_source(spec, training=True)
    eval_split = _eval_split_name(list(loaded))
    if "train" not in loaded or eval_split is None:
        raise UserError(f"dataset {spec!r} needs a train split and a validation or test split; it has {list(loaded)}")
    picked = {"train": loaded["train"], "validation": loaded[eval_split]}
    wheres = {"train": wheres["train"], "validation": wheres[eval_split]}
    for split, ds in picked.items():
        if len(ds) == 0:
            raise UserError(f"{wheres[split]}: the {split} split is empty")
    splits, classes = _normalise(picked, wheres, columns, label_names, known=None)
    if len(classes) < 2:
        raise UserError(f"{wheres['train']}: only one class ({classes[0]!r}); classification needs at least two")
    data = LabelledData(splits, classes, spec)
    warn_untrained_classes(data)
    data.splits["train"] = subsample(data["train"], max_train_samples, train_fraction, seed)
    data.splits["validation"] = subsample(data["validation"], max_eval_samples, seed=seed)
    logger.info("data %s: %d train / %d validation examples, %d classes (%s)%s", spec, len(data["train"]),
                len(data["validation"]), len(classes), ", ".join(classes), ", sentence pairs" if data.pair else "")
    return data


def load_split(
    spec: str, *, split: str | None = None, columns: Columns = Columns(), labelled: bool = True,
    known: Sequence[str] | None = None, label_names: Sequence[str] | None = None,
) -> tuple[LabelledData, str]:
    """One split of a source (evaluate, predict): `split`, else validation, test, or a file's only split; and how
    to name it. labelled=False reads texts only. known: a trained model's classes, which labels must be among."""
    loaded, wheres = _load_source(spec, split=split, use_card=labelled)
    chosen = _pick_split(spec, list(loaded), split)
    if len(loaded[chosen]) == 0:
        raise UserError(f"{wheres[chosen]}: no rows")
    splits, classes = _normalise({chosen: loaded[chosen]}, {chosen: wheres[chosen]}, columns, label_names, known,
                                 need_labels=labelled)
    return LabelledData(DatasetDict(data=splits[chosen]), classes, spec), wheres[chosen]


def tokenize(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> DatasetDict:
    """Tokenize once, without padding (the collator pads each batch), truncating at `max_length` tokens (a pair
    together, the longer text first).

    Replaces the text column(s) with the tokenizer's model inputs and adds `length` (tokens) for length grouping.
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pair = batch.get(TEXT_PAIR_COLUMN)
        encoded = tokenizer(batch[TEXT_COLUMN], pair, truncation=True, max_length=max_length)
        encoded[LENGTH_COLUMN] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    text_columns = [c for c in (TEXT_COLUMN, TEXT_PAIR_COLUMN) if c in next(iter(data.values())).column_names]
    return data.map(encode, batched=True, remove_columns=text_columns)


class PaddingCollator(DataCollatorWithPadding):
    """Dynamic padding to the longest example of each batch; drops the `length` column.

    `length` only steers the length-grouped sampler and must not reach the model's forward().
    """

    def __call__(self, features: list[dict]) -> dict:
        return super().__call__([{k: v for k, v in f.items() if k != LENGTH_COLUMN} for f in features])
