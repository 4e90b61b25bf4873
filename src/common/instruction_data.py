"""Instruction-tuning data for causal LMs: read, validate, render with the chat template, tokenize with masks.

A data source is one string:
  builtin:<name>         a set shipped under src/common/data/<name>/ (default: builtin:instructions_small)
  file.json / file.jsonl  one file: a JSON list, or one JSON object a line
  folder/                 train.json(l) plus validation.json(l) or test.json(l) (else a held-out split is cut)
  org/name               a Hugging Face Hub dataset (its train split), online or from the local cache

Record formats (detected from the first record; every record of a file must have the same one):
  alpaca  {"instruction": str, "input": str (optional), "output": str}
  chat    {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}
  text    {"text": str}
Rendering: alpaca and chat go through the tokenizer's chat template when it has one (alpaca becomes one user turn
and one assistant turn); without one, alpaca uses the classic "### Instruction / ### Response" prompt. By default
the loss counts only response tokens (assistant turns, alpaca outputs); text records train on every token.
"""

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import Dataset
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedTokenizerBase

from src.common.data import BUILTIN_DATA_DIR, BUILTIN_PREFIX, LENGTH_COLUMN
from src.common.errors import UserError
from src.common.hub import require_dataset_reachable
from src.common.paths import looks_like_local_path, read_user_text, resolve_user_path

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION_DATA = "builtin:instructions_small"
IGNORE_INDEX = -100  # label of tokens the loss skips (prompt tokens, padding)
SUFFIXES = (".jsonl", ".json")
TRAIN_NAMES = ("train",)
VALIDATION_NAMES = ("validation", "test")
ROLES = ("system", "user", "assistant")
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"  # used only without a chat template
ALPACA_PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass(frozen=True)
class Record:
    """One validated example and where it came from (for error messages)."""

    format: str  # "alpaca", "chat" or "text"
    value: dict[str, Any]
    where: str  # "file.jsonl:12"


@dataclass(frozen=True)
class InstructionFiles:
    train: Path
    validation: Path | None  # None: a held-out split is cut from train


# --- Reading and validation -----------------------------------------------------------------------------------


def _iter_json_list(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(line, value) of each element of a top-level JSON list, so errors can name the line a record starts on."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise UserError(f"{path}:{text.count(chr(10), 0, pos) + 1}: a .json data file must hold a list of records")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        yield line, value
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise UserError(f"{path}:{text.count(chr(10), 0, pos) + 1}: invalid JSON: expected ',' or ']' in the list")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _iter_jsonl(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: invalid JSON: {e.msg}") from None


def detect_format(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if "messages" in value:
        return "chat"
    if "instruction" in value or "output" in value:
        return "alpaca"
    if "text" in value:
        return "text"
    return None


def _require_str(value: dict[str, Any], field: str, where: str, optional: bool = False) -> None:
    if field not in value:
        if optional:
            return
        raise UserError(f"{where}: missing field {field!r}")
    if not isinstance(value[field], str):
        raise UserError(f"{where}: field {field!r} must be a string, got {type(value[field]).__name__}")


def validate_record(value: Any, fmt: str, where: str) -> Record:
    """A Record if `value` is a well-formed record of format `fmt`; UserError naming `where` and the field if not."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: a record must be a JSON object, got {type(value).__name__}")
    if fmt == "alpaca":
        _require_str(value, "instruction", where)
        _require_str(value, "input", where, optional=True)
        _require_str(value, "output", where)
        if not value["output"].strip():
            raise UserError(f"{where}: field 'output' is empty")
    elif fmt == "text":
        _require_str(value, "text", where)
        if not value["text"].strip():
            raise UserError(f"{where}: field 'text' is empty")
    elif fmt == "chat":
        messages = value.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
        for i, message in enumerate(messages):
            field = f"messages[{i}]"
            if not isinstance(message, dict):
                raise UserError(f"{where}: field {field!r} must be an object with role and content")
            if message.get("role") not in ROLES:
                raise UserError(f"{where}: field '{field}.role' must be one of {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise UserError(f"{where}: field '{field}.content' must be a string")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: field 'messages' has no assistant turn to learn from")
    return Record(fmt, value, where)


def read_records(path: Path) -> list[Record]:
    """Validated records of a .json or .jsonl file; UserError naming the file, line and field of a bad record."""
    text = read_user_text(path)
    items = _iter_json_list(text, path) if path.suffix == ".json" else _iter_jsonl(text, path)
    records: list[Record] = []
    fmt = None
    for line, value in items:
        where = f"{path}:{line}"
        if fmt is None:
            fmt = detect_format(value)
            if fmt is None:
                raise UserError(
                    f"{where}: unknown record format; expected fields instruction/input/output (alpaca), "
                    "messages (chat) or text"
                )
        records.append(validate_record(value, fmt, where))
    if not records:
        raise UserError(f"data file {path} has no records")
    return records


# --- Sources -------------------------------------------------------------------------------------------------


def _first_existing(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def find_instruction_files(spec: str) -> InstructionFiles | None:
    """The files of a builtin, file or folder source; None for a Hub dataset id. Cheap: nothing is parsed."""
    if spec.startswith(BUILTIN_PREFIX):
        folder = BUILTIN_DATA_DIR / spec.removeprefix(BUILTIN_PREFIX)
        if not _first_existing(folder, TRAIN_NAMES):
            raise UserError(f"unknown builtin instruction dataset {spec!r}; available: {DEFAULT_INSTRUCTION_DATA}")
    elif looks_like_local_path(spec) or spec.endswith(SUFFIXES):
        folder = resolve_user_path(spec)
        if folder.is_file():
            if folder.suffix not in SUFFIXES:
                raise UserError(f"data file {folder} must be .json (a list of records) or .jsonl (one per line)")
            return InstructionFiles(train=folder, validation=None)
        if not folder.is_dir():
            raise UserError(f"data {folder} does not exist; pass a .json/.jsonl file or a folder with train.jsonl")
    else:
        try:
            validate_repo_id(spec)
        except HFValidationError:
            raise UserError(f"--data {spec!r} is neither a file, a folder nor a Hugging Face dataset id") from None
        return None
    train = _first_existing(folder, TRAIN_NAMES)
    if train is None:
        raise UserError(f"data folder {folder} has no train.jsonl or train.json")
    return InstructionFiles(train=train, validation=_first_existing(folder, VALIDATION_NAMES))


def _hub_records(spec: str) -> list[Record]:
    if not datasets.config.HF_HUB_OFFLINE:  # one quick request first: a missing id or a dead network fails fast
        require_dataset_reachable(spec, spec, datasets.config.HF_DATASETS_CACHE)
    try:
        rows = datasets.load_dataset(spec, split="train")
    except (DatasetNotFoundError, FileNotFoundError, ConnectionError, ValueError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"could not load Hub dataset {spec!r} (offline, or no such dataset?): {first}") from None
    fmt = detect_format(rows[0]) if len(rows) else None
    if fmt is None:
        raise UserError(f"Hub dataset {spec!r}: expected columns instruction/output, messages or text")
    return [validate_record(dict(row), fmt, f"{spec}[{i}]") for i, row in enumerate(rows)]


def load_instruction_data(
    spec: str,
    eval_fraction: float,
    seed: int,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> tuple[list[Record], list[Record]]:
    """(train, held-out) records. Without a validation file, a seeded `eval_fraction` of train is held out."""
    files = find_instruction_files(spec)
    if files is None:
        train, held_out = _hub_records(spec), None
    else:
        train = read_records(files.train)
        held_out = read_records(files.validation) if files.validation else None
    rng = random.Random(seed)
    if held_out is None:
        shuffled = train[:]
        rng.shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * eval_fraction))
        if n_eval >= len(shuffled):
            raise UserError(f"{spec}: {len(shuffled)} records are too few to hold out {eval_fraction:.0%} for eval")
        held_out, train = shuffled[:n_eval], shuffled[n_eval:]
    if max_train_samples is not None and max_train_samples < len(train):
        train = rng.sample(train, max_train_samples)
    if max_eval_samples is not None and max_eval_samples < len(held_out):
        held_out = held_out[:max_eval_samples]
    return train, held_out


# --- Rendering and tokenization ------------------------------------------------------------------------------


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def alpaca_user_text(value: dict[str, Any]) -> str:
    extra = value.get("input", "").strip()
    return f"{value['instruction']}\n\n{extra}" if extra else value["instruction"]


def render(record: Record, tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """The training text of a record and the character spans whose tokens the response-only loss counts."""
    value = record.value
    if record.format == "text":
        return value["text"], [(0, len(value["text"]))]
    if has_chat_template(tokenizer):
        if record.format == "alpaca":
            messages = [{"role": "user", "content": alpaca_user_text(value)},
                        {"role": "assistant", "content": value["output"]}]
        else:
            messages = value["messages"]
        return _render_chat(messages, tokenizer, record.where)
    if record.format == "chat":
        raise UserError(
            f"{record.where}: chat records need a tokenizer with a chat template, and this model's has none; "
            "use alpaca or text records, or a chat model"
        )
    template = ALPACA_PROMPT_WITH_INPUT if value.get("input", "").strip() else ALPACA_PROMPT
    prompt = template.format(instruction=value["instruction"], input=value.get("input", "").strip())
    text = prompt + value["output"]
    return text, [(len(prompt), len(text))]


def _render_chat(messages: list[dict[str, str]], tokenizer, where: str) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; each assistant turn's span runs from the end of the prompt that precedes it (the
    generation prompt) to the end of the turn, so its end-of-turn token is learned too."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto) or not upto.startswith(prompt):
            raise UserError(f"{where}: the chat template does not render this conversation incrementally")
        spans.append((len(prompt), len(upto)))
    return full, spans


def tokenize_records(
    records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, max_length: int, train_on_prompt: bool = False
) -> Dataset:
    """input_ids, labels (IGNORE_INDEX outside the trained spans) and length; truncated to `max_length` tokens.

    Records whose trained tokens are all cut off by truncation are dropped (with a warning).
    """
    chat = has_chat_template(tokenizer)
    rows: dict[str, list] = {"input_ids": [], "labels": [], LENGTH_COLUMN: []}
    dropped = 0
    for record in records:
        text, spans = render(record, tokenizer)
        templated = chat and record.format != "text"
        encoded = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        trained = [train_on_prompt or any(lo <= start < hi for lo, hi in spans) for start, _ in offsets]
        if not templated and tokenizer.eos_token_id is not None:  # teach the model to stop
            ids, trained = ids + [tokenizer.eos_token_id], trained + [True]
        ids, trained = ids[:max_length], trained[:max_length]
        labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, trained, strict=True)]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            dropped += 1
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows[LENGTH_COLUMN].append(len(ids))
    if dropped:
        logger.warning("dropped %d of %d records with no response tokens within %d tokens", dropped, len(records),
                       max_length)
    if not rows["input_ids"]:
        raise UserError(f"no record has response tokens within --max_length {max_length}; raise --max_length")
    return Dataset.from_dict(rows)


class CausalLMCollator:
    """Pads input_ids (pad id) and labels (IGNORE_INDEX) to the longest sequence of the batch, on the right."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"])
            labels[row, :n] = torch.as_tensor(feature["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
