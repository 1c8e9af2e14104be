"""Stratified folds (adapt.splits): partitions, rare classes, multi-label, repeats."""

from __future__ import annotations

import numpy as np
import pytest

from adapt.splits import splits


def _check_partition(folds, n):
    tests = [test for _, test in folds]
    for train, test in folds:
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == n
    all_test = np.concatenate(tests)
    assert sorted(all_test.tolist()) == list(range(n))  # each row in exactly one test fold


def test_splits_kfold_stratified():
    y = np.array([0] * 50 + [1] * 30 + [2] * 17)
    folds = splits(y, "multiclass", n_folds=5, seed=1)
    _check_partition(folds, len(y))
    counts = np.array([np.bincount(y[test], minlength=3) for _, test in folds])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [t.tolist() for _, t in folds] == [
        t.tolist() for _, t in splits(y, "multiclass", n_folds=5, seed=1)
    ]
    assert folds[0][1].tolist() != splits(y, "multiclass", n_folds=5, seed=2)[0][1].tolist()


def test_splits_rare_classes():
    # Classes with 1 and 3 rows and 5 folds: no error; each rare row is tested exactly once.
    y = np.array([0] * 20 + [1] * 3 + [2])
    folds = splits(y, "multiclass", n_folds=5, seed=0)
    _check_partition(folds, len(y))
    tested_rare = [np.isin(test, np.flatnonzero(y == 1)).sum() for _, test in folds]
    assert sorted(tested_rare) == [0, 0, 1, 1, 1]


def test_splits_multilabel():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(int)
    folds = splits(y, "multilabel", n_folds=3, seed=0)
    _check_partition(folds, len(y))
    per_fold = np.array([y[test].sum(axis=0) for _, test in folds])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 2).all()
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 2


def test_splits_repeated():
    y = np.array([0] * 60 + [1] * 40)
    folds = splits(y, "binary", n_folds=3, seed=0, scheme="repeated")
    assert len(folds) == 3
    for train, test in folds:
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
        assert len(test) == 20  # test size 0.2
        assert np.bincount(y[test]).tolist() == [12, 8]
    assert folds[0][1].tolist() != folds[1][1].tolist()


def test_splits_errors():
    with pytest.raises(ValueError, match="unknown split scheme"):
        splits(np.array([0, 1] * 5), "binary", scheme="loo")
    with pytest.raises(ValueError, match="cannot fill"):
        splits(np.array([0, 1, 0]), "binary", n_folds=5)
    with pytest.raises(ValueError, match="2-D"):
        splits(np.array([0, 1] * 5), "multilabel")


def test_sample_mask_is_stratified_by_id_and_keeps_every_class():
    from adapt.splits import sample_mask

    y = np.array([0] * 900 + [1] * 95 + [2] * 5)
    ids = [f"r{i}" for i in range(len(y))]
    keep = sample_mask(y, "multiclass", 100, seed=3, ids=ids, min_per_class=5)
    counts = np.bincount(y[keep], minlength=3)
    assert counts.tolist() == [90, 10, 5]  # shares kept; the rare class keeps its floor of 5
    # Chosen by id, not by position: the same ids are kept when the rows come in another order.
    order = np.random.default_rng(0).permutation(len(y))
    again = sample_mask(y[order], "multiclass", 100, 3, [ids[i] for i in order], 5)
    assert sorted(np.array(ids)[order][again]) == sorted(np.array(ids)[keep])
    # Another seed draws other rows; no more rows than there are keeps everything.
    assert set(np.flatnonzero(sample_mask(y, "multiclass", 100, 4, ids, 5))) != set(
        np.flatnonzero(keep)
    )
    assert sample_mask(y, "multiclass", 5000, 3, ids).all()
    multi = sample_mask(np.eye(3, dtype=int)[y], "multilabel", 100, 3, ids)
    assert multi.sum() == 100
