"""Classification metrics of one set of predictions: F1 (per class, macro, micro), accuracy, AUROC.

F1 comes from per-class counts so that the bootstrap in `adapt.stats` can compute it for a
thousand resamples at once: `weights` is a (resamples x rows) matrix of how often each row was
drawn, and the plain metric is the one resample that draws every row once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from adapt.labels import check_task_type


def _indicators(y: np.ndarray, task_type: str, n_classes: int) -> np.ndarray:
    if task_type == "multilabel":
        return y.astype(float)
    out = np.zeros((len(y), n_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


def _counts(
    y_true: np.ndarray, y_pred: np.ndarray, task_type: str, n_classes: int, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, true counts and predicted counts (resamples x classes), and the
    number of exactly right rows (resamples,)."""
    true = _indicators(y_true, task_type, n_classes)
    pred = _indicators(y_pred, task_type, n_classes)
    exact = y_true == y_pred
    if exact.ndim == 2:
        exact = exact.all(axis=1)
    return weights @ (true * pred), weights @ true, weights @ pred, weights @ exact


def _f1_from_counts(
    tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class, macro and micro F1 over the last axis.

    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (true + predicted). A class neither present nor predicted
    has no F1 (NaN) and is left out of the macro mean, as scikit-learn does with
    zero_division=np.nan (and, for single-label tasks, by default).
    """
    denom = n_true + n_pred
    seen = denom > 0
    per_class = np.where(seen, 2 * tp / np.where(seen, denom, 1), np.nan)
    n_seen = seen.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.where(seen, per_class, 0.0).sum(axis=-1) / n_seen
        micro = 2 * tp.sum(axis=-1) / denom.sum(axis=-1)
    return per_class, macro, micro


def _check_ids(y: np.ndarray, task_type: str, n_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if task_type == "multilabel":
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"{name} must be a (rows x {n_classes}) 0/1 matrix, got {y.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 in a multilabel task")
        return y.astype(np.int64)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a vector of class ids, got shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} holds ids outside 0..{n_classes - 1}: use encode_labels' ids")
    return y.astype(np.int64)


def _auroc(y_true: np.ndarray, y_score: Any, task_type: str, n_classes: int) -> float | None:
    if y_score is None:
        return None
    s = np.asarray(y_score, dtype=float)
    n = len(y_true)
    if task_type == "binary":
        if s.ndim == 2 and s.shape[1] == 2:
            s = s[:, 1]
        if s.shape != (n,):
            raise ValueError(f"binary y_score must have shape ({n},) or ({n}, 2), got {s.shape}")
        if len(np.unique(y_true)) < 2:
            return None
        return float(roc_auc_score(y_true, s))
    if s.shape != (n, n_classes):
        raise ValueError(f"y_score must have shape ({n}, {n_classes}), got {s.shape}")
    if task_type == "multiclass":
        # One-vs-rest macro average, computed per class so that decision_function scores (which
        # do not sum to 1) are accepted too; equals roc_auc_score(multi_class="ovr") on
        # probabilities. Undefined unless every class is in the test rows.
        if len(np.unique(y_true)) < n_classes:
            return None
        return float(np.mean([roc_auc_score(y_true == k, s[:, k]) for k in range(n_classes)]))
    positives = y_true.sum(axis=0)
    labels = np.flatnonzero((positives > 0) & (positives < n))
    if len(labels) == 0:
        return None
    return float(np.mean([roc_auc_score(y_true[:, k], s[:, k]) for k in labels]))


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None,
    task_type: str,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Classification metrics of one test fold.

    macro_f1: mean F1 over classes present in y_true or y_pred (all of them for a fixed label
      set). micro_f1: pooled F1 (equals accuracy for single-label tasks).
    per_class_f1: {class name: F1, or None when the class is neither present nor predicted}.
    accuracy: subset accuracy for multilabel (every label of a row right).
    auroc: binary ROC AUC on the positive class's score (y_score of shape (rows,) or (rows, 2));
      multiclass one-vs-rest macro, None unless every class is in y_true; multilabel macro over
      labels with both values in y_true, None if none. None whenever y_score is None.
    """
    check_task_type(task_type)
    n_classes = len(classes)
    y_true = _check_ids(y_true, task_type, n_classes, "y_true")
    y_pred = _check_ids(y_pred, task_type, n_classes, "y_pred")
    if y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must be non-empty and the same shape"
        )
    n = len(y_true)
    tp, n_true, n_pred, exact = _counts(y_true, y_pred, task_type, n_classes, np.ones((1, n)))
    per_class, macro, micro = _f1_from_counts(tp[0], n_true[0], n_pred[0])
    return {
        "macro_f1": float(macro),
        "micro_f1": float(micro),
        "accuracy": float(exact[0] / n),
        "auroc": _auroc(y_true, y_score, task_type, n_classes),
        "per_class_f1": {c: _none_if_nan(f) for c, f in zip(classes, per_class, strict=True)},
    }


FAST_GAIN_METRICS = ("macro_f1", "micro_f1", "accuracy")


def _count_metric(
    name: str, y_true: np.ndarray, y_pred: np.ndarray, task_type: str, n_classes: int, w: np.ndarray
) -> np.ndarray:
    tp, n_true, n_pred, exact = _counts(y_true, y_pred, task_type, n_classes, w)
    if name == "accuracy":
        return exact / w.sum(axis=1)
    _, macro, micro = _f1_from_counts(tp, n_true, n_pred)
    return macro if name == "macro_f1" else micro
