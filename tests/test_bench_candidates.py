"""The candidates benchmark: its rows, its cells and its table against the tuned raw baseline."""

from __future__ import annotations

import numpy as np

from adapt.bench.candidates import (
    cache_key,
    fit_class_head,
    fold_predictions,
    markdown,
    task_rows,
    task_table,
)
from adapt.splits import splits


def _blobs(n_per_class: int = 40, n_classes: int = 4, dims: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dims))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = (centres[y] + rng.normal(0, 1, (len(y), dims))).astype(np.float32)
    return x, y


def test_task_rows_drop_unlabelled_and_rare_classes():
    labels = ["a"] * 12 + ["b"] * 10 + ["c"] * 2 + [None, ""]
    rows, y, classes = task_rows(labels, min_class_count=10)
    assert classes == ["a", "b"]
    assert len(rows) == 22 and set(rows) == set(range(22))
    assert np.array_equal(y, [0] * 12 + [1] * 10)
    # Without a floor of its own, a class still needs a row per fold.
    _, _, classes = task_rows(labels, min_class_count=None)
    assert classes == ["a", "b"]


def test_class_head_learns_separable_classes():
    x, y = _blobs()
    train, test = splits(y, "multiclass", 3, 0)[0]
    proba = fit_class_head(x[train], y[train], seed=0)(x[test])
    assert proba.shape == (len(test), 4)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba.argmax(1) == y[test]).mean() > 0.9


def test_fold_cells_and_table_against_the_best_raw_pair():
    x, y = _blobs(n_per_class=30, n_classes=3, dims=10, seed=1)
    rng = np.random.default_rng(2)
    # Two modalities: one informative, one noise; a fake head: 6 outputs plus a 2-wide skip.
    features = {"image": rng.normal(size=x.shape).astype(np.float32), "text": x}
    heads = {
        "proj_single": np.concatenate([x[:, :6], rng.normal(size=(len(y), 2))], 1).astype(
            np.float32
        ),
        "skip_single": np.array(2),
    }
    y_true, preds = [], {}
    for train, test in splits(y, "multiclass", 3, 0):
        for key, pred in fold_predictions(features, heads, y, train, test).items():
            assert pred.shape == (len(test),)
            preds.setdefault(key, []).append(pred)
        y_true.append(y[test])
    assert {
        ("raw:concat", "svc_tuned"),
        ("raw:image", "logreg_tuned"),
        ("projected:single", "knn"),
        ("mix:single", "logreg_tuned"),
        ("ensemble:single", "logreg_tuned"),
        ("class_head", "own"),
        ("ensemble:class_head", "logreg_tuned"),
    } <= set(preds)
    pooled = {k: np.concatenate(v) for k, v in preds.items()}
    # A candidate that predicts exactly what the baseline does has a gap of 0, 0, 0.
    table = task_table(np.concatenate(y_true), pooled, 3)
    base = (table["baseline"]["representation"], table["baseline"]["classifier"])
    assert base[0] in ("raw:text", "raw:concat")  # the noise modality is never the best
    assert table["baseline"]["macro_f1"] == max(r["macro_f1"] for r in table["raw"])
    pooled[("copy", "own")] = pooled[base]
    table = task_table(np.concatenate(y_true), pooled, 3)
    copy = next(c for c in table["candidates"] if c["representation"] == "copy")
    assert (copy["mean"], copy["lo"], copy["hi"]) == (0.0, 0.0, 0.0)
    assert all(c["lo"] <= c["mean"] <= c["hi"] for c in table["candidates"])
    text = markdown([{"task": "t", "n_classes": 3, "seeds": [0], **table}])
    assert "| `copy` | own |" in text and "Baseline: `raw:" in text


def test_cache_key_follows_the_rows_and_the_training_rows():
    ids = np.array([f"r{i}" for i in range(10)])
    train = np.arange(7)
    assert cache_key(ids, train) == cache_key(ids.copy(), train.copy())
    assert cache_key(ids, train) != cache_key(ids, np.arange(1, 8))
    assert cache_key(ids, train) != cache_key(ids[::-1], train)
