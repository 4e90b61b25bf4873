"""A store of fine-tuned models, keyed by what produced them: train once, load afterwards.

Layout: <root>/<key>/model/ (from_pretrained-loadable) and <root>/<key>/metadata.json. An entry appears only
by an atomic rename of a complete temp dir, so a crash never leaves a half-written entry.

The key is the sha256 of (base model, its revision, the training settings), where the revision is the Hub
commit hash for Hub models or a content hash of config.json + weights for builtin and local models.
"""

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, is_offline_mode
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import httpx

from src.cache_manager.hub_cache import resolve_cached_revision
from src.common.errors import UserError
from src.common.models import CONFIG_FILE, is_hub_id, resolve_model_source
from src.common.paths import atomic_dir, atomic_write_json, resolve_user_path

logger = logging.getLogger(__name__)

STORE_ENV = "CPU_FINETUNE_STORE"  # overrides the default store root
MODEL_SUBDIR = "model"
METADATA_FILE = "metadata.json"
KEY_PATTERN = re.compile(r"[0-9a-f]{64}")  # sha256 hex digest
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")  # weight files hashed into a local model's revision
HUB_TIMEOUT_S = 10.0  # seconds to wait for the Hub's answer about a model's latest commit


def default_store_root() -> Path:
    """$CPU_FINETUNE_STORE, else <HF_HOME>/cpu-finetune/finetuned (HF_HOME from huggingface_hub)."""
    if os.environ.get(STORE_ENV):
        return resolve_user_path(os.environ[STORE_ENV])
    return Path(constants.HF_HOME) / "cpu-finetune" / "finetuned"


def key_for(base_model: str, revision: str, training_config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the inputs: equal inputs give equal keys, any change a new key."""
    payload = {"base_model": base_model, "revision": revision, "training_config": dict(training_config)}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def content_revision(model_dir: str | Path) -> str:
    """A content hash of a local model: config.json plus its weight files, by name and bytes."""
    model_dir = Path(model_dir)
    files = [model_dir / CONFIG_FILE, *sorted(p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern))]
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            file_hash = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(f"{path.name}\0{file_hash}\n".encode())
    return "sha256:" + digest.hexdigest()


def model_revision(spec: str) -> str:
    """The revision of a model source: the Hub commit hash, or content_revision() of a builtin/local model.

    Online, a Hub model's revision is the latest commit on the Hub; offline (or when the Hub is unreachable),
    the cached snapshot's commit hash.
    """
    source = resolve_model_source(spec)
    if not is_hub_id(spec):
        return content_revision(source)
    if not is_offline_mode():
        try:
            return HfApi().model_info(spec, timeout=HUB_TIMEOUT_S).sha
        except (OfflineModeIsEnabled, httpx.HTTPError) as e:
            logger.warning("cannot ask the Hub for the revision of %s (%s); using the cached one", spec, e)
    cached = resolve_cached_revision(spec)
    if cached is None:
        raise UserError(
            f"model {spec!r} is not in the Hugging Face cache at {constants.HF_HUB_CACHE} and the Hub is unreachable; "
            "run once with network access or pass a local model directory"
        )
    return cached


@dataclass(frozen=True)
class StoreEntry:
    key: str
    model_dir: Path
    metadata: dict[str, Any]
    size_bytes: int


def _check_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise UserError(f"invalid store key {key!r}: expected 64 lowercase hex characters (a key_for() digest)")
    return key


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class FinetunedModelStore:
    """Fine-tuned models on disk under `root`, one directory per key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_store_root()

    def entry_dir(self, key: str) -> Path:
        return self.root / _check_key(key)

    def get(self, key: str) -> Path | None:
        """The model directory stored under `key`, or None."""
        entry = self.entry_dir(key)
        return entry / MODEL_SUBDIR if (entry / METADATA_FILE).is_file() else None

    def put(self, key: str, model_dir: str | Path, metadata: Mapping[str, Any]) -> Path:
        """Copy a saved model into the store under `key`; returns the stored model directory.

        Atomic: the entry is assembled in a temp dir and renamed into place; an existing entry under the same
        key is replaced only once the new one is complete, and kept if anything fails.
        """
        model_dir = Path(model_dir)
        if not (model_dir / CONFIG_FILE).is_file():
            raise ValueError(f"{model_dir} is not a saved model (no {CONFIG_FILE})")
        entry = self.entry_dir(key)
        with atomic_dir(entry) as staging:
            shutil.copytree(model_dir, staging / MODEL_SUBDIR)
            record = {"key": key, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **metadata}
            atomic_write_json(staging / METADATA_FILE, record)
        logger.info("stored %s under %s", model_dir, entry)
        return entry / MODEL_SUBDIR

    def get_or_create(self, key: str, build_fn: Callable[[], tuple[Path, Mapping[str, Any]]]) -> Path:
        """The stored model for `key`; on a miss, `build_fn()` makes one -> (model dir, metadata) and it is put.

        If `build_fn` raises, nothing is stored.
        """
        found = self.get(key)
        if found is not None:
            logger.info("store hit for %s", key[:12])
            return found
        logger.info("store miss for %s: building", key[:12])
        model_dir, metadata = build_fn()
        return self.put(key, model_dir, metadata)

    def list(self) -> list[StoreEntry]:
        """Complete entries, oldest first (temp dirs of writes in progress are skipped)."""
        if not self.root.is_dir():
            return []
        entries = []
        for entry in self.root.iterdir():
            if KEY_PATTERN.fullmatch(entry.name) and (entry / METADATA_FILE).is_file():
                metadata = json.loads((entry / METADATA_FILE).read_text(encoding="utf-8"))
                entries.append(StoreEntry(entry.name, entry / MODEL_SUBDIR, metadata, _dir_size(entry)))
        return sorted(entries, key=lambda e: (e.metadata.get("created", ""), e.key))

    def remove(self, key: str) -> bool:
        """Delete the entry for `key`; False if there was none. The entry disappears at once (a rename)."""
        entry = self.entry_dir(key)
        if not entry.exists():
            return False
        doomed = entry.with_name(f".{entry.name}.removing-{os.getpid()}")
        os.rename(entry, doomed)
        shutil.rmtree(doomed)
        return True
