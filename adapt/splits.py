"""Which rows train and which are held out: stratified folds, and hold-outs keyed by row id.

Every split here depends only on the labels, the row ids and a seed, never on row order or on
how many workers read the rows, so that a resumed run, another cluster and another stage agree:
- `splits`: stratified k-fold (or repeated 80/20) splits of a task's rows, for the score stage;
- `holdout_mask`: a seeded, per-class hold-out by id hash (early stopping, the search);
- `fixed_holdout_mask`: an unseeded share of ids that stays put as a corpus grows (nightly).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from adapt.labels import check_task_type

SCHEMES = ("kfold", "repeated")


# "repeated" splits hold out one fold of a fresh 5-fold partition: a test size of 1/5 = 0.2.
REPEATED_TEST_FOLDS = 5


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
    check_task_type(task_type)
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


def row_keys(ids: Sequence[Any], seed: int) -> np.ndarray:
    """A uint64 pseudo-random key per row id, the same for the same (id, seed) on any machine."""
    salt = str(seed).encode() + b"\0"
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(salt + str(i).encode(), digest_size=8).digest(), "little"
            )
            for i in ids
        ],
        dtype=np.uint64,
    )


def holdout_mask(
    y: np.ndarray, task_type: str, fraction: float, seed: int, ids: Sequence[Any] | None = None
) -> np.ndarray:
    """Boolean mask of the validation rows: `fraction` of each class, chosen by id hash.

    Within each class the rows with the smallest `row_keys` are held out (round(fraction * rows),
    always leaving one row of the class to train on), so the split depends on the set of ids, the
    labels and the seed, never on row order: a resumed run, another worker count and the score
    stage all get the same split. Multi-label tasks are split by key alone, unstratified.
    Without ids, row positions stand in for them.
    """
    keys = row_keys(range(len(y)) if ids is None else ids, seed)
    return holdout_thresholds(y, task_type, fraction, keys)[0]


def holdout_thresholds(
    y: np.ndarray, task_type: str, fraction: float, keys: np.ndarray
) -> tuple[np.ndarray, list[int | None]]:
    """`holdout_mask` from given row keys, and the rule that reproduces it row by row: per class
    id, the largest key held out (None: none of that class), so that a row is held out exactly
    when its key is at most its class's threshold. Multi-label tasks: one threshold, first.
    Keys are distinct for distinct ids (64-bit hashes), so the rule and the mask agree."""
    n = len(y)
    mask = np.zeros(n, dtype=bool)
    multilabel = task_type == "multilabel" or y.ndim == 2
    n_classes = 1 if multilabel or n == 0 else int(y.max()) + 1
    thresholds: list[int | None] = [None] * n_classes
    if fraction <= 0 or n == 0:
        return mask, thresholds
    if multilabel:
        k = min(int(round(fraction * n)), n - 1)
        held = np.argsort(keys, kind="stable")[:k]
        mask[held] = True
        thresholds[0] = int(keys[held].max()) if k > 0 else None
        return mask, thresholds
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = min(int(round(fraction * len(rows))), len(rows) - 1)
        if k > 0:
            held = rows[np.argsort(keys[rows], kind="stable")[:k]]
            mask[held] = True
            thresholds[int(c)] = int(keys[held].max())
    return mask, thresholds


def under_thresholds(
    y: np.ndarray, keys: np.ndarray, thresholds: Sequence[int | None], multilabel: bool
) -> np.ndarray:
    """Rows whose key is at most their class's threshold (`holdout_thresholds`' rule)."""
    if multilabel:
        t = thresholds[0] if thresholds else None
        return np.zeros(len(keys), bool) if t is None else keys <= np.uint64(t)
    has = np.array([t is not None for t in thresholds], dtype=bool)
    limit = np.array([t or 0 for t in thresholds], dtype=np.uint64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return np.zeros(0, dtype=bool)
    return has[y] & (keys <= limit[y])


def sample_mask(
    y: np.ndarray,
    task_type: str,
    k: int,
    seed: int,
    ids: Sequence[Any],
    min_per_class: int = 1,
) -> np.ndarray:
    """Boolean mask of a stratified sample of about `k` rows, chosen by id hash.

    Each class keeps its share of the rows (round(k * class rows / rows)), and at least
    `min_per_class` of them (all, when it has fewer), so that every class still reaches every fold.
    Within a class the rows with the smallest `row_keys` are kept: the sample depends on the ids,
    labels and seed, never on row order. Multi-label tasks are sampled by key alone.
    """
    n = len(y)
    if k >= n:
        return np.ones(n, dtype=bool)
    mask = np.zeros(n, dtype=bool)
    keys = row_keys(ids, seed)
    if task_type == "multilabel" or y.ndim == 2:
        mask[np.argsort(keys, kind="stable")[:k]] = True
        return mask
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        take = min(len(rows), max(min_per_class, int(round(k * len(rows) / n))))
        mask[rows[np.argsort(keys[rows], kind="stable")[:take]]] = True
    return mask


def val_order(n: int, seed: int) -> np.ndarray:
    """Order of n validation rows (given sorted by id, or by position): random with respect to
    class and fixed by the seed, so that the fixed validation batches mix classes. The local fit
    and every Ray Train worker use it, so both see the same batches."""
    return np.argsort(row_keys(range(n), seed + 1), kind="stable")


def in_fixed_holdout(row_id: str, fraction: float) -> bool:
    """Stable per id: a row is held out tonight exactly when it was last night."""
    h = int.from_bytes(hashlib.sha256(f"holdout:{row_id}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def fixed_holdout_mask(ids, fraction: float) -> np.ndarray:
    """`in_fixed_holdout` of every id."""
    return np.array([in_fixed_holdout(str(i), fraction) for i in ids], dtype=bool)
