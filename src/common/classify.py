"""Running a sequence classifier over a tokenized split: length-sorted batches (least padding), bf16 autocast where
asked; scoring the predictions (evaluate) or returning each text's class and probability (predict). The training
job's before/after evaluations, //src/training:evaluate and //src/training:predict all classify through here."""

import logging
import sys
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from src.common.cpu import autocast
from src.common.data import LABEL_COLUMN, LENGTH_COLUMN, PaddingCollator
from src.common.errors import UserError
from src.common.logging_utils import progress_bar
from src.common.metrics import classification_metrics, quality_gate_failure
from src.common.models import CONFIG_FILE, load_sequence_classifier, load_tokenizer, resolve_model_source
from src.common.paths import looks_like_local_path, resolve_user_path

logger = logging.getLogger(__name__)

MODEL_SUBDIR = "model"  # where train_model, the finetuned_model rule and the model store keep the model
EXIT_QUALITY_GATE = 3  # a classifier's metrics failed --expect_min_accuracy or --expect_min_macro_f1


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # accuracy, precision, recall, f1, averages, per_class, confusion_matrix (common.metrics)
    loss: float  # mean cross-entropy per example
    seconds: float
    examples: int
    label_names: list[str]


@dataclass
class Outputs:
    probabilities: np.ndarray  # (examples, classes) float32, in the split's order
    loss: float | None  # mean cross-entropy per example; None when the split has no labels
    seconds: float


@torch.inference_mode()
def classify(
    model: PreTrainedModel,
    dataset: datasets.Dataset,
    collator: PaddingCollator,
    batch_size: int,
    precision: str,
    progress: str | None = None,
) -> Outputs:
    """Class probabilities of every example of a tokenized split (and the loss, if it has labels).

    progress: the name of a progress bar to show (examples/s, ETA); None: none.
    """
    start = perf_counter()
    order = np.argsort(np.asarray(dataset[LENGTH_COLUMN]), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collator)
    probabilities = np.empty((len(dataset), model.config.num_labels), dtype=np.float32)
    labelled = LABEL_COLUMN in dataset.column_names
    total_loss = 0.0
    model.eval()
    with autocast(precision), progress_bar(progress, len(dataset), "examples") as bar:
        for indices, batch in zip(batches, loader, strict=True):
            output = model(**batch)
            probabilities[indices] = output.logits.float().softmax(dim=-1).numpy()
            if labelled:
                total_loss += output.loss.float().item() * len(indices)
            bar.update(len(indices))
    loss = total_loss / len(dataset) if labelled else None
    return Outputs(probabilities, loss, perf_counter() - start)


def evaluate(
    model: PreTrainedModel,
    dataset: datasets.Dataset,
    collator: PaddingCollator,
    batch_size: int,
    precision: str,
    progress: str | None = None,
) -> Evaluation:
    """Classify a labelled tokenized split and score the predictions against its labels."""
    outputs = classify(model, dataset, collator, batch_size, precision, progress)
    names = label_names(model)
    preds = outputs.probabilities.argmax(axis=-1)
    metrics = classification_metrics(preds, np.asarray(dataset[LABEL_COLUMN]), len(names), names)
    return Evaluation(metrics, outputs.loss, outputs.seconds, len(dataset), names)


@torch.inference_mode()
def predict_one(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, precision: str, max_length: int,
    text_pair: str | None = None,
) -> dict[str, Any]:
    """The predicted class name of one text (or pair), with its probability."""
    model.eval()
    inputs = tokenizer(text, text_pair, truncation=True, max_length=max_length, return_tensors="pt")
    with autocast(precision):
        logits = model(**inputs).logits
    probs = logits.float().softmax(dim=-1)[0]
    label_id = int(probs.argmax())
    pair = {"text_pair": text_pair} if text_pair is not None else {}
    return {"text": text, **pair, "label": model.config.id2label[label_id], "probability": float(probs[label_id])}


def quality_gate_exit_code(
    metrics: dict[str, Any], min_accuracy: float | None, min_macro_f1: float | None, scored: str = "validation"
) -> int:
    """0 if the metrics pass the gates; else EXIT_QUALITY_GATE, after one error line on stderr saying why."""
    failed = quality_gate_failure(metrics, min_accuracy, min_macro_f1, scored)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return EXIT_QUALITY_GATE
    return 0


def label_names(model: PreTrainedModel) -> list[str]:
    """The model's class names in id order (config.id2label)."""
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


def trained_model_dir(spec: str) -> str:
    """The model folder of a trained classifier: a folder with config.json, or the output folder of train_model,
    of the finetuned_model rule or of a store entry (which keep it in model/); a Hub id as resolve_model_source."""
    if not looks_like_local_path(spec):
        return resolve_model_source(spec)
    path = resolve_user_path(spec)  # under `bazel run`, relative to where the user typed it
    for candidate in (path, path / MODEL_SUBDIR):
        if (candidate / CONFIG_FILE).is_file():
            return str(candidate)
    raise UserError(f"--model {path}: no {CONFIG_FILE} there or in {MODEL_SUBDIR}/; pass the output folder of "
                    "train_model (or its model/ folder)")


def trained_classifier_classes(spec: str) -> tuple[str, list[str]]:
    """A trained classifier's folder and class names, from its config.json alone (cheap: no weights); UserError if
    it holds another kind of model (a causal LM, a base model without a classification head)."""
    source = trained_model_dir(spec)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"--model {source}: cannot read its {CONFIG_FILE}: {' '.join(str(e).split())[:200]}") from None
    architectures = list(config.architectures or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"--model {source} is a {', '.join(architectures) or 'model without a named architecture'}, "
                        "not a sequence classifier; pass a model trained by train_model (the classification job)")
    return source, [str(config.id2label[i]) for i in range(config.num_labels)]


def load_trained_classifier(spec: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A fine-tuned sequence classifier (its own classes), its tokenizer and its folder."""
    source, _ = trained_classifier_classes(spec)
    return load_sequence_classifier(source), load_tokenizer(source), source
