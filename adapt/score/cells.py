"""One cell: fit one classifier on one representation of one fold and score its test rows.

Pure numpy / scikit-learn: the executors in `adapt.score.workers` run cells in this process or as
Ray tasks; nightly and the search call `score_cell` directly. Features that are fitted (PCA,
standardisation) are fitted on the training rows only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sklearn
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from adapt.classifiers import approximated, chosen_c, default_standardize, make_classifier
from adapt.labels import check_task_type
from adapt.metrics import _check_ids, metrics

if TYPE_CHECKING:  # a cell only calls the methods of these
    from adapt.score.plan import Fold
    from adapt.score.representations import RepData


def _as_2d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dims), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf: drop or repair those rows before scoring")
    return x


def fit_pca(X_train: np.ndarray, k: int, seed: int) -> tuple[PCA, dict[str, Any]]:
    """Fit a k-component PCA on training rows; returns (pca, info).

    k is clipped to min(k, rows, dims), since PCA has no more components than that; info says
    {"k_requested", "k", "note"} with a non-empty note when clipping happened.
    """
    X_train = _as_2d(X_train, "X_train")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"PCA needs k >= 1 components, got {k!r}")
    n, dims = X_train.shape
    k_used = min(int(k), n, dims)
    note = ""
    if k_used != k:
        note = f"k clipped from {k} to {k_used}: {n} training rows x {dims} dims"
    pca = PCA(n_components=k_used, random_state=seed).fit(X_train)
    return pca, {"k_requested": int(k), "k": k_used, "note": note}


def apply_pca(pca: PCA, X: np.ndarray) -> np.ndarray:
    """Project rows with a PCA from `fit_pca`."""
    return pca.transform(_as_2d(X, "X"))


def standardize_train_test(
    X_train: np.ndarray, X_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scale each feature to zero mean and unit variance, with statistics of the training rows."""
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test)


# Early stopping judges on 10% of the training rows; below this many held-out rows its score moves
# in steps of 1% or more and it stops on noise, after a handful of optimiser steps (one per epoch
# under 200 rows). So training sets under ~1000 rows train the full max_iter instead.
MIN_EARLY_STOPPING_ROWS = 100


def _fit_to_data(
    estimator: Any, n_train: int, y_fit: np.ndarray, task_type: str, params: dict[str, Any] | None
) -> list[str]:
    """Change settings that cannot work, or work badly, on this few training rows; returns what
    was changed. Settings the caller chose in `params` are changed only where fitting would fail."""
    notes = []
    current = estimator.get_params(deep=False)
    chosen = params or {}
    if current.get("n_neighbors", 0) > n_train:
        estimator.set_params(n_neighbors=n_train)
        notes.append(f"n_neighbors lowered from {current['n_neighbors']} to {n_train} rows")
    if current.get("early_stopping"):
        n_val = math.ceil(current["validation_fraction"] * n_train)
        impossible = False
        if task_type != "multilabel":
            # The held-out share is stratified, so it needs a row of every class, and every
            # class needs a second row to stay in training.
            counts = np.bincount(y_fit)
            impossible = counts.min() < 2 or n_val < len(counts)
        noisy = n_val < MIN_EARLY_STOPPING_ROWS and "early_stopping" not in chosen
        if impossible or noisy:
            estimator.set_params(early_stopping=False)
            notes.append(f"early_stopping off: {n_val} held-out rows are too few to judge on")
    return notes


def _positive_scores(estimator: Any, X: np.ndarray) -> np.ndarray | None:
    """Scores that rank rows by class: predict_proba where there is one, else decision_function."""
    if hasattr(estimator, "predict_proba"):
        scores = estimator.predict_proba(X)
    elif hasattr(estimator, "decision_function"):
        scores = estimator.decision_function(X)
    else:
        return None
    if isinstance(scores, list):
        # Native multi-output trees and kNN: one (rows x classes seen) array per label; keep the
        # probability of 1 (0 when the label was never 1 in training).
        columns = []
        for label_classes, proba in zip(estimator.classes_, scores, strict=True):
            hit = np.flatnonzero(np.asarray(label_classes) == 1)
            columns.append(proba[:, hit[0]] if len(hit) else np.zeros(len(X)))
        scores = np.column_stack(columns)
    return np.asarray(scores, dtype=float)


def _full_columns(scores: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """Place scores of the classes seen in training at their ids; unseen classes score 0."""
    if scores.ndim == 1:
        # A decision function over two classes scores only the second one.
        scores = np.column_stack([-scores, scores])
    full = np.zeros((len(scores), n_classes))
    full[:, present] = scores
    return full


# The chunk size of scikit-learn's pairwise computations (kNN's distances), in MiB. Its default,
# 1,024, made one kNN cell on 20,000 x 20,000 rows peak at 1.8 GB; 64 peaked at 0.4 GB and ran
# faster (9 s against 16 s).
WORKING_MEMORY_MB = 64


def score_cell(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    classifier: str,
    task_type: str,
    classes: Sequence[str],
    seed: int,
    params: dict[str, Any] | None = None,
    standardize: bool | None = None,
    *,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Fit one classifier on the training rows and score it on the test rows.

    Returns `metrics(...)` plus fit_s and predict_s (wall seconds; predict_s includes scoring),
    n_train, n_test, standardized, and notes (settings changed to fit tiny data, "" if none).
    keep_predictions=True adds y_pred (class ids, or a 0/1 matrix) for `paired_gain_ci`.
    standardize=None uses the classifier's default (see STANDARDIZED_BY_DEFAULT).
    A class missing from the training rows is never predicted and scores 0 for AUROC.
    """
    check_task_type(task_type)
    X_train = _as_2d(X_train, "X_train")
    X_test = _as_2d(X_test, "X_test")
    n_classes = len(classes)
    y_train = _check_ids(y_train, task_type, n_classes, "y_train")
    y_test = _check_ids(y_test, task_type, n_classes, "y_test")
    if len(X_train) != len(y_train) or len(X_test) != len(y_test):
        raise ValueError(
            f"rows and labels disagree: X_train {len(X_train)} vs y_train {len(y_train)},"
            f" X_test {len(X_test)} vs y_test {len(y_test)}"
        )
    if X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"X_train has {X_train.shape[1]} dims but X_test {X_test.shape[1]}")
    if standardize is None:
        standardize = default_standardize(classifier)
    estimator = make_classifier(classifier, task_type, seed, params, n_rows=len(X_train))
    if standardize:
        X_train, X_test = standardize_train_test(X_train, X_test)

    present = None
    y_fit = y_train
    if task_type != "multilabel":
        # Fit on consecutive ids of the classes in training (xgboost requires 0..m-1) and map back.
        present = np.unique(y_train)
        if len(present) < 2:
            raise ValueError(
                f"the training rows hold a single class ({classes[present[0]]!r}):"
                " a classifier needs two; check the split or the task's labels"
            )
        y_fit = np.searchsorted(present, y_train)
    notes = _fit_to_data(estimator, len(X_train), y_fit, task_type, params)
    approximation = approximated(classifier, len(X_train))
    if approximation:
        notes.append(approximation)

    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        start = time.perf_counter()
        estimator.fit(X_train, y_fit)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        y_pred = np.asarray(estimator.predict(X_test))
        scores = _positive_scores(estimator, X_test)
        predict_s = time.perf_counter() - start

    chosen = chosen_c(estimator)
    if chosen:
        notes.append(chosen)
    if present is None:
        y_pred = y_pred.astype(np.int64)
    else:
        y_pred = present[y_pred.astype(np.int64)]
        if scores is not None:
            scores = _full_columns(scores, present, n_classes)
            if task_type == "binary":
                scores = scores[:, 1]
    result = metrics(y_test, y_pred, scores, task_type, classes)
    result.update(
        fit_s=fit_s,
        predict_s=predict_s,
        n_train=len(X_train),
        n_test=len(X_test),
        standardized=bool(standardize),
        notes="; ".join(notes),
    )
    if keep_predictions:
        result["y_pred"] = y_pred
    return result


# The metric whose value per fit a row of several fits lists, to show the spread between seeds.
FITS_METRIC = "macro_f1"


def run_cell(
    rep: RepData,
    fold: Fold,
    task_type: str,
    classes: list[str],
    classifier: str,
    params: dict | None,
    seeds: list[int],
    resolve: Callable[[Any], np.ndarray] = lambda x: x,
) -> tuple[dict, np.ndarray | None]:
    """Score one classifier on one representation of one fold, once per seed in `seeds`.

    Returns (row, y_pred): the report row (metrics averaged over the fits, timings per fit,
    status "ok" or "error" with the reason) and the test predictions stacked over the fits, shaped
    (fits, *y_test.shape) (None when the cell failed), for pooled paired gains.
    """
    row: dict[str, Any] = {
        "task": fold.task,
        "representation": rep.name,
        "classifier": classifier,
        "fold": fold.label,
        "dims": rep.dims,
        "worker": os.getpid(),
    }
    try:
        x_train, x_test = rep.matrices(fold, resolve)
        fits = [
            score_cell(
                x_train,
                fold.y_train,
                x_test,
                fold.y_test,
                classifier,
                task_type,
                classes,
                seed,
                params,
                keep_predictions=True,
            )
            for seed in seeds
        ]
    except Exception as e:  # a failed cell is a row with its reason, not a failed job
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
        for m in ("macro_f1", "micro_f1", "accuracy", "auroc"):
            row[m] = None
        return row, None
    y_pred = np.stack([f.pop("y_pred") for f in fits])
    row.update(status="ok", error=None, **_mean_of_fits(fits))
    if len(fits) > 1:
        row["seeds"] = list(seeds)
        row[f"{FITS_METRIC}_fits"] = [f[FITS_METRIC] for f in fits]
    return row, y_pred


def _mean_of_fits(fits: list[dict]) -> dict[str, Any]:
    """One result from several fits of a classifier on the same rows: metrics and timings averaged
    (None when a fit has none, e.g. an AUROC that needs every class), per-class F1 per class."""
    out = dict(fits[0])
    for key in ("macro_f1", "micro_f1", "accuracy", "auroc", "fit_s", "predict_s"):
        values = [f[key] for f in fits]
        out[key] = None if any(v is None for v in values) else float(np.mean(values))
    out["per_class_f1"] = {
        c: None
        if any(f["per_class_f1"][c] is None for f in fits)
        else float(np.mean([f["per_class_f1"][c] for f in fits]))
        for c in fits[0]["per_class_f1"]
    }
    return out
