"""Score stage core: how well downstream classifiers do on one representation of a task.

The project's question is whether projected embeddings beat the raw ones and PCA for the classifiers
a user would actually fit, and by how much. The score stage answers it one *cell* at a time: one
(task, representation, classifier, fold). This module holds everything a cell needs as plain
numpy / scikit-learn functions, with no Ray and no storage, so that the Ray adapter can spread many
cells over workers and the tests can check every piece on tiny arrays:

- labels: `infer_task_type`, `encode_labels`
- classifiers: `CLASSIFIERS`, `make_classifier`
- folds: `splits`
- features, always fitted on training rows only: `fit_pca` / `apply_pca`, `standardize_train_test`
- one cell: `metrics`, `score_cell`
- uncertainty: `bootstrap_mean_ci` (a metric's mean over folds), `paired_gain_ci` (a gain between two
  representations, resampling test rows), `aggregate` (per-fold rows -> one row per group)

Class ids index the sorted class names returned by `encode_labels`; every function here takes and
returns those ids, never names, except the per-class F1 dict which is keyed by name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

TASK_TYPES = ("binary", "multiclass", "multilabel")
SCHEMES = ("kfold", "repeated")

# "repeated" splits hold out one fold of a fresh 5-fold partition: a test size of 1/5 = 0.2.
REPEATED_TEST_FOLDS = 5

# Bootstrap resamples are drawn in blocks of about this many row draws (8 bytes each as float
# weights, so ~16 MiB per block) to keep memory flat however many rows or resamples are asked for.
_BOOT_BLOCK_DRAWS = 2_000_000


def _check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}: use one of {list(TASK_TYPES)}")


# --------------------------------------------------------------------------------------------
# Labels


def _is_multi(label: Any) -> bool:
    return isinstance(label, list | tuple | np.ndarray)


def _label_name(label: Any, row: int) -> str:
    if label is None or (isinstance(label, float) and math.isnan(label)):
        raise ValueError(f"row {row} has no label: drop unlabelled rows before scoring")
    return str(label)


def infer_task_type(labels: Sequence[Any]) -> str:
    """Guess the task type from raw labels.

    A list (or tuple) per row means "multilabel"; otherwise two distinct labels mean "binary" and
    more mean "multiclass".
    """
    if len(labels) == 0:
        raise ValueError("no labels: the task has no rows")
    multi = [_is_multi(x) for x in labels]
    if all(multi):
        return "multilabel"
    if any(multi):
        row = multi.index(not multi[0])
        raise ValueError(
            f"labels mix lists and single values (row 0: {labels[0]!r}, row {row}: {labels[row]!r}):"
            " give every row a list of labels for a multi-label task, or one label otherwise"
        )
    n_classes = len({_label_name(x, i) for i, x in enumerate(labels)})
    if n_classes < 2:
        raise ValueError(f"every row has the label {labels[0]!r}: a task needs two or more classes")
    return "binary" if n_classes == 2 else "multiclass"


def encode_labels(
    labels: Sequence[str] | Sequence[Sequence[str]], task_type: str
) -> tuple[np.ndarray, list[str]]:
    """Turn raw labels into class ids and the sorted class names.

    binary / multiclass: y is an int64 vector of indices into `classes`. For binary tasks the
    positive class (id 1) is the second name in sorted order, e.g. "pos" of ("neg", "pos").
    multilabel: y is an int64 (rows x classes) 0/1 matrix; a row may carry no label at all.
    """
    _check_task_type(task_type)
    if len(labels) == 0:
        raise ValueError("no labels: the task has no rows")
    if task_type == "multilabel":
        rows: list[set[str]] = []
        for i, x in enumerate(labels):
            if not _is_multi(x):
                raise ValueError(
                    f"row {i}: a multilabel task needs a list of labels per row, got {x!r};"
                    " wrap single labels in a list or use task type 'binary'/'multiclass'"
                )
            rows.append({_label_name(v, i) for v in x})
        classes = sorted(set().union(*rows))
        if not classes:
            raise ValueError("no row carries any label: a multilabel task needs at least one label")
        index = {c: j for j, c in enumerate(classes)}
        y = np.zeros((len(rows), len(classes)), dtype=np.int64)
        for i, row in enumerate(rows):
            y[i, [index[c] for c in row]] = 1
        return y, classes

    names = []
    for i, x in enumerate(labels):
        if _is_multi(x):
            raise ValueError(
                f"row {i} holds a list of labels {x!r} but the task type is {task_type!r}:"
                " use task type 'multilabel'"
            )
        names.append(_label_name(x, i))
    classes = sorted(set(names))
    if task_type == "binary" and len(classes) != 2:
        raise ValueError(
            f"a binary task needs exactly 2 classes, found {len(classes)} ({classes[:10]}):"
            " use task type 'multiclass'" + (" or add the other class" if len(classes) < 2 else "")
        )
    if len(classes) < 2:
        raise ValueError(
            f"every row has the label {classes[0]!r}: a task needs two or more classes"
        )
    index = {c: j for j, c in enumerate(classes)}
    return np.array([index[c] for c in names], dtype=np.int64), classes


# --------------------------------------------------------------------------------------------
# Classifiers
#
# Defaults are scikit-learn's unless a reason is given. Every estimator runs on one thread
# (n_jobs=1): parallelism comes from running many cells at once, not from one cell.


def _logreg(seed: int) -> Any:
    # lbfgs often needs more than the default 100 iterations on 384-1536-d embeddings.
    return LogisticRegression(max_iter=1000, random_state=seed)


def _xgboost(seed: int) -> Any:
    # Imported here: xgboost is heavy, and only this classifier needs it.
    from xgboost import XGBClassifier

    # 200 trees with the histogram method: a few seconds on thousands of rows on one core.
    return XGBClassifier(
        n_estimators=200, tree_method="hist", n_jobs=1, random_state=seed, verbosity=0
    )


def _random_forest(seed: int) -> Any:
    return RandomForestClassifier(n_estimators=200, n_jobs=1, random_state=seed)


def _svc(seed: int) -> Any:
    # gamma="scale" (1 / (dims * variance)) rather than the reference's gamma=1, which on
    # standardised 100+-d inputs makes every kernel value ~0. No probability calibration (an inner
    # 5-fold CV, 5x the cost; `probability` is SVC's default False, not passed because
    # scikit-learn >= 1.9 warns on any use of it): AUROC uses decision_function, which ranks rows
    # just as well.
    return SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)


def _mlp(seed: int) -> Any:
    # Early stopping holds out 10% of the training rows and stops after 10 epochs without gain
    # (turned off on small training sets, see _fit_to_data).
    return MLPClassifier(
        hidden_layer_sizes=(256,), early_stopping=True, max_iter=300, random_state=seed
    )


def _cart(seed: int) -> Any:
    return DecisionTreeClassifier(random_state=seed)


def _knn(seed: int) -> Any:
    # k=15 smooths over label noise; cosine suits embedding spaces. kNN has no randomness, so the
    # seed is unused.
    return KNeighborsClassifier(n_neighbors=15, metric="cosine", n_jobs=1)


CLASSIFIERS: dict[str, Callable[[int], Any]] = {
    "logreg": _logreg,
    "xgboost": _xgboost,
    "random_forest": _random_forest,
    "svc": _svc,
    "mlp": _mlp,
    "cart": _cart,
    "knn": _knn,
}

# These accept a (rows x labels) 0/1 target as is; the others get one binary model per label.
NATIVE_MULTILABEL = frozenset({"random_forest", "cart", "knn", "mlp"})

# Scale-sensitive classifiers; trees split on thresholds and do not care.
STANDARDIZED_BY_DEFAULT = frozenset({"logreg", "svc", "mlp", "knn"})

# Classifiers whose fit draws random numbers with their default settings: the MLP's initial weights
# and early-stopping hold-out, the forest's bootstrap rows and feature draws. Seen on a 785-row,
# 16-class task, two MLP seeds on the same split differed by 0.15 macro-F1, more than most gaps
# between representations. (xgboost draws none unless it subsamples rows or columns; logistic
# regression, SVC, kNN and CART are fixed by their data, up to ties.)
SEED_DEPENDENT = frozenset({"mlp", "random_forest"})
_XGBOOST_SAMPLING = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")


def seed_dependent(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether the classifier's scores depend on its seed with these parameters."""
    if name in SEED_DEPENDENT:
        return True
    if name == "xgboost" and params:
        return any(params.get(k, 1) < 1 for k in _XGBOOST_SAMPLING)
    return False


def make_classifier(
    name: str, task_type: str, seed: int, params: dict[str, Any] | None = None
) -> Any:
    """Build an unfitted classifier from the registry.

    `params` override the defaults and go to the base estimator (e.g. {"C": 10} for "svc"), also
    when a multilabel task wraps it in a OneVsRestClassifier.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}: valid names are {sorted(CLASSIFIERS)}")
    _check_task_type(task_type)
    estimator = CLASSIFIERS[name](seed)
    if params:
        valid = set(estimator.get_params(deep=False))
        try:
            estimator.set_params(**params)
        except (ValueError, TypeError) as e:
            raise ValueError(f"classifier {name!r} rejected params {params!r}: {e}") from e
        # xgboost stores unknown keys instead of rejecting them, and only warns at fit time.
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ValueError(
                f"classifier {name!r} has no parameter(s) {unknown}: valid ones are {sorted(valid)}"
            )
    if task_type == "multilabel" and name not in NATIVE_MULTILABEL:
        estimator = OneVsRestClassifier(estimator)
    return estimator


def default_standardize(classifier: str) -> bool:
    """Whether `score_cell` standardises features for this classifier unless told otherwise."""
    return classifier in STANDARDIZED_BY_DEFAULT


# --------------------------------------------------------------------------------------------
# Folds


def _single_label_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    # Shuffle, sort by class (stable, so rows stay shuffled within a class), then deal the rows to
    # folds in turn, continuing the deal from one class to the next. Fold sizes differ by at most
    # one, and so do each class's counts in any two folds. A class with m < n_folds rows appears in
    # the test side of m folds only; if m == 1, the fold that tests it has none in training.
    order = rng.permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    fold_of_position = rng.permutation(n_folds)[np.arange(len(y)) % n_folds]
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = fold_of_position
    return fold


def _multilabel_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    # Iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011): take the label with the
    # fewest unassigned rows, give each of its rows to the fold that still wants most of that label
    # (ties: the fold that wants most rows, then random), and repeat. Rare labels are placed first,
    # while there is still room to spread them; rows with no label fill the remaining room.
    n = len(y)
    fold = np.full(n, -1, dtype=np.int64)
    want_rows = np.full(n_folds, n / n_folds)
    want_label = np.tile(y.sum(axis=0) / n_folds, (n_folds, 1)).astype(float)
    order = rng.permutation(n)

    def pick(candidates: np.ndarray) -> int:
        best = candidates[want_rows[candidates] == want_rows[candidates].max()]
        return int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])

    left = y.sum(axis=0).astype(np.int64)  # unassigned rows per label
    while left.any():
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for row in order[(fold[order] < 0) & (y[order, label] == 1)]:
            wants = want_label[:, label]
            f = pick(np.flatnonzero(wants == wants.max()))
            fold[row] = f
            want_rows[f] -= 1
            want_label[f] -= y[row]
            left -= y[row]
    for row in order[fold[order] < 0]:
        f = pick(np.arange(n_folds))
        fold[row] = f
        want_rows[f] -= 1
    return fold


def _assign_folds(
    y: np.ndarray, task_type: str, n_folds: int, rng: np.random.Generator
) -> np.ndarray:
    if task_type == "multilabel":
        return _multilabel_folds(y, n_folds, rng)
    return _single_label_folds(y, n_folds, rng)


def splits(
    y: np.ndarray, task_type: str, n_folds: int = 5, seed: int = 0, scheme: str = "kfold"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train_idx, test_idx) pairs over the rows of `y`.

    scheme="kfold": a partition into `n_folds` folds; every row is in exactly one test fold.
      binary / multiclass: rows of each class are shuffled and dealt to folds in turn, so each
      class's count differs by at most one between folds. A class with fewer rows than folds is
      kept (no error, no warning): it is tested in as many folds as it has rows, and is missing
      from the others' test rows (their multiclass AUROC is then None).
      multilabel: iterative stratification, implemented here (rarest label placed first).
    scheme="repeated": `n_folds` independent 80/20 splits, each the first fold of a fresh
      stratified 5-fold partition; test sets of different repeats overlap.
    Indices are sorted; the result depends only on `y`, `n_folds`, `seed` and `scheme`.
    """
    _check_task_type(task_type)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}: use one of {list(SCHEMES)}")
    y = np.asarray(y)
    want_ndim = 2 if task_type == "multilabel" else 1
    if y.ndim != want_ndim:
        raise ValueError(
            f"a {task_type} task needs a {want_ndim}-D label array, got shape {y.shape}:"
            " pass the y returned by encode_labels"
        )
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    folds_needed = n_folds if scheme == "kfold" else REPEATED_TEST_FOLDS
    if len(y) < folds_needed:
        raise ValueError(
            f"{len(y)} rows cannot fill {folds_needed} folds: lower n_folds or add rows"
        )
    if scheme == "kfold":
        fold = _assign_folds(y, task_type, n_folds, np.random.default_rng(seed))
        return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n_folds)]
    out = []
    for repeat in range(n_folds):
        rng = np.random.default_rng([seed, repeat])
        fold = _assign_folds(y, task_type, REPEATED_TEST_FOLDS, rng)
        out.append((np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)))
    return out


# --------------------------------------------------------------------------------------------
# Features (fitted on training rows only, so no test row leaks into the representation)


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


# --------------------------------------------------------------------------------------------
# Metrics
#
# F1 comes from per-class counts so that the bootstrap below can compute it for 1000 resamples at
# once. `weights` is a (resamples x rows) matrix of how often each row was drawn; the plain metric
# is the single resample that draws every row once.


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
    _check_task_type(task_type)
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


# --------------------------------------------------------------------------------------------
# One cell


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
    _check_task_type(task_type)
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
    estimator = make_classifier(classifier, task_type, seed, params)
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

    start = time.perf_counter()
    estimator.fit(X_train, y_fit)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    y_pred = np.asarray(estimator.predict(X_test))
    scores = _positive_scores(estimator, X_test)
    predict_s = time.perf_counter() - start

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


# --------------------------------------------------------------------------------------------
# Uncertainty


def _check_bootstrap(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha!r}")


def _interval(point: float, stats: np.ndarray, alpha: float) -> dict[str, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi)}


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """Percentile bootstrap CI of the mean of `values` (e.g. a metric over folds).

    Returns {"mean": the plain mean, "lo", "hi"}. With five folds this interval is rough; prefer
    `paired_gain_ci` to judge a gain.
    """
    _check_bootstrap(n_boot, alpha)
    v = np.asarray(values, dtype=float).ravel()
    if len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"need one or more finite values, got {v.tolist()}")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    return _interval(v.mean(), v[idx].mean(axis=1), alpha)


FAST_GAIN_METRICS = ("macro_f1", "micro_f1", "accuracy")


def _count_metric(
    name: str, y_true: np.ndarray, y_pred: np.ndarray, task_type: str, n_classes: int, w: np.ndarray
) -> np.ndarray:
    tp, n_true, n_pred, exact = _counts(y_true, y_pred, task_type, n_classes, w)
    if name == "accuracy":
        return exact / w.sum(axis=1)
    _, macro, micro = _f1_from_counts(tp, n_true, n_pred)
    return macro if name == "macro_f1" else micro


def paired_gain_ci(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric_fn: str | Callable[[np.ndarray, np.ndarray], float] = "macro_f1",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap CI of metric(b) - metric(a) over the same test rows.

    Each resample draws test rows with replacement and scores both predictions on the same draw,
    so the interval reflects the gain's own noise, not each side's. Returns {"mean": the gain on
    all rows, "lo", "hi"}; identical predictions give exactly 0, 0, 0.
    `metric_fn`: "macro_f1", "micro_f1" or "accuracy" (computed for all resamples at once from
    per-class counts, matching `metrics`), or any f(y_true, y_pred) -> float (one call per resample,
    slower). Labels are class ids (vector) or a 0/1 matrix (multilabel). With a named metric, a
    side may be a stack of several fits (seeds) of one classifier, see `paired_mean_gain_ci`.
    """
    _check_bootstrap(n_boot, alpha)
    y_true, pred_a, pred_b = (np.asarray(x) for x in (y_true, pred_a, pred_b))
    if callable(metric_fn):
        if not (y_true.shape == pred_a.shape == pred_b.shape) or len(y_true) == 0:
            raise ValueError(
                f"y_true {y_true.shape}, pred_a {pred_a.shape} and pred_b {pred_b.shape} must be"
                " non-empty and the same shape: predictions of both sides on the same test rows"
            )
        n = len(y_true)
        rng = np.random.default_rng(seed)
        point = metric_fn(y_true, pred_b) - metric_fn(y_true, pred_a)
        stats = np.empty(n_boot)
        for i in range(n_boot):
            idx = rng.integers(0, n, size=n)
            stats[i] = metric_fn(y_true[idx], pred_b[idx]) - metric_fn(y_true[idx], pred_a[idx])
        return _interval(point, stats, alpha)

    if metric_fn not in FAST_GAIN_METRICS:
        raise ValueError(
            f"unknown metric {metric_fn!r}: use one of {list(FAST_GAIN_METRICS)} or a function"
            " f(y_true, y_pred) -> float"
        )
    # The count-based bootstrap, shared with the classifier-averaged gain: one pair is its k = 1.
    return paired_mean_gain_ci(y_true, [pred_a], [pred_b], metric_fn, n_boot, alpha, seed)


def paired_mean_gain_ci(
    y_true: np.ndarray,
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    metric: str = "macro_f1",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap CI of mean_k metric(preds_b[k]) - mean_k metric(preds_a[k]).

    The k pairs are several classifiers' predictions on the same test rows (e.g. each classifier
    on a learned representation vs on the baseline); every resample draws the rows once and scores
    all 2k predictions on that draw, so the interval is that of the gain averaged over classifiers.
    A prediction may also be a stack of several fits of one classifier (seeds), shaped
    (fits, *y_true.shape): its metric is then the mean over the fits, scored on the same draw.
    `metric`: "macro_f1", "micro_f1" or "accuracy".
    """
    _check_bootstrap(n_boot, alpha)
    if metric not in FAST_GAIN_METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {list(FAST_GAIN_METRICS)}")
    y_true = np.asarray(y_true)
    if not preds_a or len(preds_a) != len(preds_b) or len(y_true) == 0:
        raise ValueError("need one or more (baseline, candidate) prediction pairs on >= 1 row")

    def stack(p: Any) -> np.ndarray:
        p = np.asarray(p)
        if p.shape == y_true.shape:
            return p[None]
        if p.ndim == y_true.ndim + 1 and p.shape[1:] == y_true.shape and len(p):
            return p
        raise ValueError(
            f"a prediction of shape {p.shape} fits neither y_true {y_true.shape} nor a stack of"
            f" fits (fits, *{y_true.shape})"
        )

    stacks_a, stacks_b = [stack(p) for p in preds_a], [stack(p) for p in preds_b]
    if y_true.ndim == 2:
        task_type, n_classes = "multilabel", y_true.shape[1]
    else:
        task_type = "multiclass"
        n_classes = int(max(y_true.max(), *(p.max() for p in (*stacks_a, *stacks_b)))) + 1
    y_true = _check_ids(y_true, task_type, n_classes, "y_true")

    def name(side: str, k: int) -> str:
        return f"pred_{side}" if len(stacks_a) == 1 else f"preds_{side}[{k}]"

    def checked(stacks: list[np.ndarray], side: str) -> list[list[np.ndarray]]:
        return [
            [_check_ids(fit, task_type, n_classes, name(side, k)) for fit in s]
            for k, s in enumerate(stacks)
        ]

    fits_a, fits_b = checked(stacks_a, "a"), checked(stacks_b, "b")

    def mean_metric(fits: list[np.ndarray], w: np.ndarray) -> np.ndarray:
        return sum(_count_metric(metric, y_true, p, task_type, n_classes, w) for p in fits) / len(
            fits
        )

    def gain(w: np.ndarray) -> np.ndarray:
        total = np.zeros(len(w))
        for a, b in zip(fits_a, fits_b, strict=True):
            total += mean_metric(b, w) - mean_metric(a, w)
        return total / len(fits_a)

    n = len(y_true)
    rng = np.random.default_rng(seed)
    point = float(gain(np.ones((1, n)))[0])
    block = max(1, _BOOT_BLOCK_DRAWS // n)
    stats = []
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        flat = (np.arange(m)[:, None] * n + idx).ravel()
        w = np.bincount(flat, minlength=m * n).reshape(m, n).astype(float)
        stats.append(gain(w))
    return _interval(point, np.concatenate(stats), alpha)


GROUP_KEYS = ("task", "representation", "classifier")
CI_METRICS = ("macro_f1", "micro_f1")
MEAN_METRICS = ("accuracy", "auroc", "fit_s", "predict_s")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool) and math.isfinite(x)


def aggregate(
    rows: Sequence[dict[str, Any]],
    group_keys: Sequence[str] = GROUP_KEYS,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per group (fold="mean") from per-fold result rows, in first-seen order.

    For macro_f1 and micro_f1: the mean, `{m}_std` (sample std over folds, None for one fold), and
    `{m}_lo` / `{m}_hi` (bootstrap CI of the mean over folds). accuracy, auroc, fit_s and
    predict_s: plain means. Folds whose metric is missing, None or NaN (failed cells) are left out
    of that metric; n_folds counts the folds with a macro_f1. Rows with fold="mean" are skipped,
    so aggregating already aggregated rows adds nothing. Add keys to `group_keys` when rows differ
    in more than task, representation and classifier (e.g. a seed or a split scheme).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (*group_keys, "fold") if k not in row]
        if missing:
            raise ValueError(f"result row {i} lacks {missing}: every row needs {list(group_keys)}")
        if row["fold"] == "mean":
            continue
        groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)

    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(group_keys, key, strict=True))
        agg["fold"] = "mean"
        agg["n_folds"] = sum(_finite(r.get("macro_f1")) for r in members)
        for m in CI_METRICS:
            values = [float(r[m]) for r in members if _finite(r.get(m))]
            if not values:
                agg.update({m: None, f"{m}_std": None, f"{m}_lo": None, f"{m}_hi": None})
                continue
            ci = bootstrap_mean_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
            agg[m] = ci["mean"]
            agg[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            agg[f"{m}_lo"] = ci["lo"]
            agg[f"{m}_hi"] = ci["hi"]
        for m in MEAN_METRICS:
            values = [float(r[m]) for r in members if _finite(r.get(m))]
            agg[m] = float(np.mean(values)) if values else None
        out.append(agg)
    return out
