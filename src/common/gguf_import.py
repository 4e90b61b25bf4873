"""GGUF checkpoints imported once into a from_pretrained-loadable safetensors folder, keyed by the file's hash.

De-quantizing a GGUF with transformers takes 15-40 s for a 135M model on 2 cores; loading the imported folder
takes well under a second. Layout: <root>/<sha256 of the .gguf>/ with config.json, model.safetensors, the
tokenizer files and import.json (source path, size, repaired metadata keys, seconds). An entry appears only by an
atomic rename of a complete temp folder, so a killed import never leaves a half-written entry.

Broken metadata is repaired on a private copy: a special-token id outside the vocabulary (llama2.c exports such
as stories260K set the padding and separator ids to 0xFFFFFFFF) is dropped, which transformers would otherwise
reject ("Padding_idx must be within num_embeddings", an IndexError in the tokenizer).
"""

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from huggingface_hub import constants

from src.common.errors import UserError
from src.common.paths import atomic_dir, atomic_write_json, resolve_user_path

logger = logging.getLogger(__name__)

STORE_ENV = "CPU_FINETUNE_GGUF_STORE"  # overrides the default store root
IMPORT_FILE = "import.json"  # written last into an entry: what was imported, from where, and how
TOKEN_ID_SUFFIX = "_token_id"  # GGUF keys such as tokenizer.ggml.padding_token_id
TOKENS_KEY = "tokenizer.ggml.tokens"
DROPPED_PREFIX = b"_dropped_"  # overwrites a key's first bytes in the private copy, so readers no longer see it
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing


def default_store_root() -> Path:
    """$CPU_FINETUNE_GGUF_STORE, else <HF_HOME>/cpu-finetune/gguf (HF_HOME from huggingface_hub)."""
    if os.environ.get(STORE_ENV):
        return resolve_user_path(os.environ[STORE_ENV])
    return Path(constants.HF_HOME) / "cpu-finetune" / "gguf"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def invalid_token_id_keys(reader: GGUFReader) -> list[str]:
    """Keys of special-token ids that point outside the vocabulary (e.g. 0xFFFFFFFF meaning "none")."""
    tokens = reader.fields.get(TOKENS_KEY)
    vocab_size = len(tokens.data) if tokens is not None else None
    bad = []
    for key, field in reader.fields.items():
        if not key.endswith(TOKEN_ID_SUFFIX) or len(field.types) != 1 or field.types[0] == GGUFValueType.STRING:
            continue
        value = int(field.parts[field.data[0]][0])
        if value < 0 or (vocab_size is not None and value >= vocab_size):
            bad.append(key)
    return bad


def repair_metadata(path: Path) -> list[str]:
    """Drop invalid special-token ids from the GGUF at `path`, in place (use a copy). Returns the dropped keys.

    GGUF keys are length-prefixed byte strings, so a key is dropped by overwriting its first bytes: the file keeps
    its size and layout, and no reader looks up the renamed key.
    """
    reader = GGUFReader(path, "r+")
    bad = invalid_token_id_keys(reader)
    for key in bad:
        key_bytes = reader.fields[key].parts[1]  # parts: key length, key bytes, value type, value
        key_bytes[: len(DROPPED_PREFIX)] = np.frombuffer(DROPPED_PREFIX, dtype=np.uint8)
    reader.data.flush()
    del reader
    return bad


def _check_gguf(path: Path) -> None:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read GGUF file {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def import_gguf(gguf_path: str | os.PathLike, store_root: Path | None = None) -> Path:
    """The imported folder of a GGUF file: found by the file's sha256, or imported now (de-quantized once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy; only an import needs them

    source = resolve_user_path(gguf_path)
    _check_gguf(source)
    root = store_root or default_store_root()
    sha = file_sha256(source)
    entry = root / sha
    if (entry / IMPORT_FILE).is_file():
        logger.info("GGUF %s already imported at %s", source.name, entry)
        return entry

    logger.info("importing GGUF %s into %s (once; de-quantizing takes a while)", source, entry)
    start = perf_counter()
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch_dir = tempfile.TemporaryDirectory(dir=root, prefix=".gguf-copy-")
    except OSError as e:
        raise UserError(
            f"cannot write the GGUF import store {root}: {e.strerror}; "
            f"set {STORE_ENV} (or HF_HOME) to a writable folder"
        ) from None
    with scratch_dir as scratch:
        copy = Path(scratch) / source.name
        shutil.copyfile(source, copy)
        dropped = repair_metadata(copy)
        if dropped:
            logger.warning("GGUF %s: dropped invalid metadata %s", source.name, ", ".join(dropped))
        try:
            tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=copy.name)
            model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=copy.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, IndexError) as e:
            first_line = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise UserError(f"could not load GGUF {source}: {first_line}") from None
        # The weights are now plain fp32 tensors; forget that they came from a quantized file so they can be saved.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        with atomic_dir(entry) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            atomic_write_json(
                staging / IMPORT_FILE,
                {
                    "source": str(source),
                    "sha256": sha,
                    "bytes": source.stat().st_size,
                    "dropped_metadata": dropped,
                    "import_seconds": round(perf_counter() - start, 2),
                },
            )
    logger.info("imported %s in %.1f s", source.name, perf_counter() - start)
    return entry


def list_imports(store_root: Path | None = None) -> list[Path]:
    """Complete entries of the GGUF store, oldest first."""
    root = store_root or default_store_root()
    if not root.is_dir():
        return []
    entries = [p for p in root.iterdir() if p.is_dir() and (p / IMPORT_FILE).is_file()]
    return sorted(entries, key=lambda p: (p / IMPORT_FILE).stat().st_mtime)
