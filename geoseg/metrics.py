"""Segmentation metrics from a confusion matrix (rows: truth, columns: prediction)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """Counts of (truth, pred) pairs over valid pixels whose ids are both < ``num_classes``."""
    keep = (truth < num_classes) & (pred < num_classes)
    if valid is not None:
        keep &= valid
    index = truth[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def summarize(
    cm: np.ndarray, class_names: dict[int, str] | None = None, class_ids: list[int] | None = None
) -> dict[str, Any]:
    """Per-class IoU/F1/precision/recall, mIoU, pixel accuracy.

    Classes that occur neither in truth nor in prediction are left out of the means (their IoU is
    undefined, and counting them as 0 or 1 would bias mIoU with the number of classes in the legend).
    ``class_ids``: the class id of each row/column (default: the row index).
    """
    ids = class_ids if class_ids is not None else list(range(len(cm)))
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    union = support + predicted - tp
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / union, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
    names = class_names or {}
    per_class = {
        names.get(ids[i], str(ids[i])): {
            "id": ids[i],
            "iou": _num(iou[i]),
            "f1": _num(f1[i]),
            "precision": _num(precision[i]),
            "recall": _num(recall[i]),
            "support": int(support[i]),
        }
        for i in range(len(cm))
        if present[i]
    }
    total = cm.sum()
    return {
        "miou": _num(np.nanmean(iou[present])) if present.any() else None,
        "mean_f1": _num(np.nanmean(f1[present])) if present.any() else None,
        "pixel_accuracy": _num(tp.sum() / total) if total else None,
        "pixels": int(total),
        "per_class": per_class,
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "class_ids": list(ids),
    }


def _num(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)
