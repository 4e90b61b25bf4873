"""Test support: a tiny random BERT, small synthetic data sets and declared data files, so tests run offline in
seconds."""

import contextlib
import io
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from src.common.data import ID2LABEL, LABEL2ID, LABEL_NAMES
from src.common.errors import run_cli
from src.common.models import builtin_model_dir

# A 2-layer BERT with hidden size 32: ~1M parameters, almost all in the 30,522-row embedding table.
TINY_BERT_SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,  # >= the largest --max_length the config accepts
}
# Borrowed from the builtin MiniLM model, so the tiny model has a real WordPiece tokenizer.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_SOURCE = "all-MiniLM-L6-v2"

POSITIVE_WORDS = ("great", "wonderful", "excellent", "delightful", "superb", "moving")
NEGATIVE_WORDS = ("awful", "terrible", "boring", "dreadful", "poor", "tedious")

Rows = Sequence[tuple[str, int]]


def make_tiny_bert(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny BertForSequenceClassification plus a tokenizer into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = builtin_model_dir(TOKENIZER_SOURCE)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, path / name)
    vocab_size = len((path / "vocab.txt").read_text(encoding="utf-8").splitlines())
    config = BertConfig(
        vocab_size=vocab_size,
        num_labels=len(LABEL_NAMES),
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        **TINY_BERT_SHAPE,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def make_tiny_base_bert(path: str | Path) -> Path:
    """A tiny BertModel without a classification head, as a pretrained base model is: loading it as a classifier
    initialises a new head of any number of classes (transformers' LOAD REPORT lists it as missing)."""
    path = Path(path)
    full = make_tiny_bert(path.with_name(path.name + "-full"))
    BertForSequenceClassification.from_pretrained(full).bert.save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copy(full / name, path / name)
    return path


def synthetic_sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """`n` easy, balanced (text, label) rows: the label is given away by the adjectives."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        first, second = rng.sample(POSITIVE_WORDS if label else NEGATIVE_WORDS, 2)
        rows.append((f"the film was {first} and the acting was {second}", label))
    return rows


def write_sst2_folder(path: str | Path, train: Rows, dev: Rows, dev_name: str = "dev.tsv") -> Path:
    """Write an SST-2 style folder: train.tsv and `dev_name`, header `sentence<TAB>label`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train), (dev_name, dev)):
        lines = ["sentence\tlabel", *(f"{text}\t{label}" for text, label in rows)]
        (path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl_folder(path: str | Path, train: Rows, test: Rows) -> Path:
    """Write an IMDB style folder: train.jsonl and test.jsonl with `text` and `label` per line."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        lines = [json.dumps({"text": text, "label": label, "id": i}) for i, (text, label) in enumerate(rows)]
        (path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli_captured(main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> tuple[int, str, str]:
    """Run a CLI's main through run_cli, as `python -m` would; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(main, list(argv))
    return code, out.getvalue(), err.getvalue()


# A minimal ChatML template, for tests that need a tokenizer with a chat template (the tiny GGUF has none).
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_LLAMA_GGUF_ENV = "TINY_LLAMA_GGUF"  # set by the BUILD file: $(rootpath //src/common:tiny_llama_gguf)


def declared_file(env_var: str) -> Path:
    """A data file the test's BUILD target declares and passes in `env_var` (a runfiles-relative path).

    Fails (never skips) when it is missing: these files are the inputs of core code paths.
    """
    value = os.environ.get(env_var)
    if not value:
        raise AssertionError(f"${env_var} is not set; run this test with bazel test, which declares the file")
    path = Path(value).resolve()
    if not path.is_file():
        raise AssertionError(f"${env_var} names {path}, which does not exist")
    return path


def tiny_llama_gguf() -> Path:
    """The repository's tiny Llama-architecture GGUF (src/common/tiny_llama_gguf.py; llama2.c's metadata quirks)."""
    return declared_file(TINY_LLAMA_GGUF_ENV)
