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


def classification_metrics(preds: npt.ArrayLike, labels: npt.ArrayLike, num_labels: int = 2) -> dict:
    """accuracy, precision, recall, f1 and confusion_matrix (list of lists, rows = true, cols = predicted).

    Binary tasks report precision/recall/F1 of the positive class (label 1); more labels report the macro
    average over classes. A ratio with a zero denominator counts as 0.0.
    """
    cm = confusion_matrix(preds, labels, num_labels)
    true_pos = np.diag(cm)
    per_class_precision = _safe_divide(true_pos, cm.sum(axis=0))  # over predicted counts
    per_class_recall = _safe_divide(true_pos, cm.sum(axis=1))  # over true counts
    per_class_f1 = _safe_divide(
        2 * per_class_precision * per_class_recall, per_class_precision + per_class_recall
    )
    if num_labels == 2:
        precision, recall, f1 = per_class_precision[1], per_class_recall[1], per_class_f1[1]
    else:
        precision, recall, f1 = per_class_precision.mean(), per_class_recall.mean(), per_class_f1.mean()
    return {
        "accuracy": float(_safe_divide(true_pos.sum(), cm.sum())),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": cm.tolist(),
    }


def format_confusion_matrix(cm: Sequence[Sequence[int]], label_names: Sequence[str]) -> str:
    """A small text table: one row per true label, one column per predicted label."""
    header = ["true \\ pred", *label_names]
    rows = [[name, *(str(int(n)) for n in row)] for name, row in zip(label_names, cm, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header, *rows])
