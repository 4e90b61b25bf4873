"""Classification metrics in numpy: accuracy, precision, recall, F1 and the confusion matrix."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def confusion_matrix(preds: npt.ArrayLike, labels: npt.ArrayLike, num_labels: int = 2) -> np.ndarray:
    """Counts with rows = true label and columns = predicted label, shape (num_labels, num_labels)."""
    preds, labels = np.asarray(preds, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(f"preds and labels must be 1-D and of equal length, got {preds.shape} and {labels.shape}")
    for name, values in (("preds", preds), ("labels", labels)):
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            raise ValueError(f"{name} must lie in [0, {num_labels}), got values in [{values.min()}, {values.max()}]")
    flat = np.bincount(labels * num_labels + preds, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, with 0.0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(
    preds: npt.ArrayLike, labels: npt.ArrayLike, num_labels: int = 2, label_names: Sequence[str] | None = None
) -> dict:
    """accuracy, precision, recall, f1; macro_* and weighted_* averages; per_class; confusion_matrix.

    precision/recall/f1: binary tasks score the positive class (label 1); more labels the macro average over classes
    (an unweighted mean: every class counts alike; classes that neither the labels nor the predictions have are left
    out). weighted_*: the mean weighted by each class's true count.
    per_class: {name: {precision, recall, f1, support}} (names: label_names, else the ids). confusion_matrix: list of
    lists, rows = true, columns = predicted. A ratio with a zero denominator counts as 0.0.
    """
    cm = confusion_matrix(preds, labels, num_labels)
    true_pos = np.diag(cm)
    support = cm.sum(axis=1)
    per_class_precision = _safe_divide(true_pos, cm.sum(axis=0))  # over predicted counts
    per_class_recall = _safe_divide(true_pos, support)  # over true counts
    per_class_f1 = _safe_divide(
        2 * per_class_precision * per_class_recall, per_class_precision + per_class_recall
    )
    weights = _safe_divide(support, np.full_like(support, support.sum()))
    # Macro averages run over the classes the labels or the predictions have (as scikit-learn's do): a class
    # absent from both (labels 1-5 leave an id 0; a file without one of the model's classes) is not scored 0.
    present = (support > 0) | (cm.sum(axis=0) > 0)
    averages = {
        f"{kind}_{name}": float(
            (values[present].mean() if present.any() else 0.0) if kind == "macro" else (values * weights).sum()
        )
        for kind in ("macro", "weighted")
        for name, values in (("precision", per_class_precision), ("recall", per_class_recall), ("f1", per_class_f1))
    }
    if num_labels == 2:
        precision, recall, f1 = per_class_precision[1], per_class_recall[1], per_class_f1[1]
    else:
        precision, recall, f1 = averages["macro_precision"], averages["macro_recall"], averages["macro_f1"]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    return {
        "accuracy": float(_safe_divide(true_pos.sum(), cm.sum())),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        **averages,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for name, p, r, f, n in zip(names, per_class_precision, per_class_recall, per_class_f1, support, strict=True)
        },
        "confusion_matrix": cm.tolist(),
    }


def summary_metric_names(num_labels: int) -> tuple[str, ...]:
    """The rows of a summary table: the positive class's scores for two classes, macro averages for more."""
    if num_labels == 2:
        return ("accuracy", "precision", "recall", "f1", "macro_f1")
    return ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")


def format_scores(evaluations: dict[str, dict], num_labels: int) -> list[str]:
    """The summary rows of one or more evaluations side by side (column header -> an evaluation's dict with its
    "metrics" and "loss"): a header line, then summary_metric_names' rows and the loss."""
    names = summary_metric_names(num_labels)
    width = max(10, *map(len, names))

    def row(label: str, values: list[float]) -> str:
        return f"{label:<{width}}" + "".join(f"  {v:>7.4f}" for v in values)

    return [
        f"{'metric':<{width}}" + "".join(f"  {header:>7}" for header in evaluations),
        *(row(name, [e["metrics"][name] for e in evaluations.values()]) for name in names),
        row("loss", [e["loss"] for e in evaluations.values()]),
    ]


def format_per_class(per_class: dict[str, dict[str, float]]) -> str:
    """A table of each class's precision, recall, F1 and support (true count)."""
    header = ["class", "precision", "recall", "f1", "support"]
    rows = [[name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"])]
            for name, m in per_class.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def format_confusion_matrix(cm: Sequence[Sequence[int]], label_names: Sequence[str]) -> str:
    """A small text table: one row per true label, one column per predicted label."""
    header = ["true \\ pred", *label_names]
    rows = [[name, *(str(int(n)) for n in row)] for name, row in zip(label_names, cm, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header, *rows])


def quality_gate_failure(
    metrics: dict, min_accuracy: float | None, min_macro_f1: float | None, scored: str = "validation"
) -> str | None:
    """Why `metrics` fail the gates (--expect_min_accuracy, --expect_min_macro_f1), as one line; None if they pass.
    scored: what the metrics were computed on, for the message."""
    for name, minimum in (("accuracy", min_accuracy), ("macro_f1", min_macro_f1)):
        if minimum is not None and metrics[name] < minimum:
            return f"{scored} {name.replace('_', ' ')} {metrics[name]:.4f} is below --expect_min_{name} {minimum}"
    return None
