"""Classification metrics (adapt.metrics), checked against scikit-learn on tiny fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from adapt.metrics import metrics

BIN_TRUE = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])


BIN_PRED = np.array([0, 1, 1, 1, 0, 0, 1, 0, 0, 1])


BIN_SCORE = np.array([0.1, 0.6, 0.8, 0.7, 0.4, 0.2, 0.9, 0.3, 0.45, 0.55])


def test_metrics_binary_matches_sklearn():
    m = metrics(BIN_TRUE, BIN_PRED, BIN_SCORE, "binary", ["neg", "pos"])
    assert m["macro_f1"] == pytest.approx(f1_score(BIN_TRUE, BIN_PRED, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(BIN_TRUE, BIN_PRED, average="micro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(BIN_TRUE, BIN_PRED))
    assert m["auroc"] == pytest.approx(roc_auc_score(BIN_TRUE, BIN_SCORE))
    per = f1_score(BIN_TRUE, BIN_PRED, average=None)
    assert m["per_class_f1"] == pytest.approx({"neg": per[0], "pos": per[1]})
    # (rows, 2) probabilities give the same AUROC as the positive column.
    proba = np.column_stack([1 - BIN_SCORE, BIN_SCORE])
    assert metrics(BIN_TRUE, BIN_PRED, proba, "binary", ["n", "p"])["auroc"] == m["auroc"]
    # One class in the test rows: AUROC is undefined.
    ones = np.ones(4, dtype=int)
    assert metrics(ones, ones, np.ones(4), "binary", ["n", "p"])["auroc"] is None
    assert metrics(BIN_TRUE, BIN_PRED, None, "binary", ["n", "p"])["auroc"] is None


MC_TRUE = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 2, 1, 1])


MC_PRED = np.array([0, 2, 2, 2, 1, 0, 1, 1, 1, 2, 0, 1])


def _mc_proba(seed=3):
    raw = np.random.default_rng(seed).random((len(MC_TRUE), 3))
    raw[np.arange(len(MC_TRUE)), MC_TRUE] += 0.5
    return raw / raw.sum(axis=1, keepdims=True)


def test_metrics_multiclass_matches_sklearn():
    proba = _mc_proba()
    m = metrics(MC_TRUE, MC_PRED, proba, "multiclass", ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(f1_score(MC_TRUE, MC_PRED, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(MC_TRUE, MC_PRED, average="micro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(MC_TRUE, MC_PRED))
    assert m["auroc"] == pytest.approx(roc_auc_score(MC_TRUE, proba, multi_class="ovr"))
    per = f1_score(MC_TRUE, MC_PRED, average=None)
    assert list(m["per_class_f1"].values()) == pytest.approx(per.tolist())


def test_metrics_multiclass_absent_class():
    # Class "d" (id 3) is neither in the test rows nor predicted: left out of macro F1, as
    # scikit-learn does by default, reported as None, and AUROC is undefined.
    proba = np.column_stack([_mc_proba(), np.zeros(len(MC_TRUE))])
    m = metrics(MC_TRUE, MC_PRED, proba, "multiclass", ["a", "b", "c", "d"])
    assert m["macro_f1"] == pytest.approx(f1_score(MC_TRUE, MC_PRED, average="macro"))
    assert m["per_class_f1"]["d"] is None
    assert m["auroc"] is None


ML_TRUE = np.array(
    [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]]
)


ML_PRED = np.array(
    [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]]
)


ML_SCORE = np.array(
    [
        [0.9, 0.2, 0.4, 0.1],
        [0.1, 0.8, 0.3, 0.1],
        [0.7, 0.45, 0.2, 0.1],
        [0.3, 0.1, 0.9, 0.1],
        [0.8, 0.6, 0.1, 0.1],
        [0.2, 0.7, 0.8, 0.1],
    ]
)


def test_metrics_multilabel_matches_sklearn():
    classes = ["w", "x", "y", "z"]  # "z" is never present nor predicted
    m = metrics(ML_TRUE, ML_PRED, ML_SCORE, "multilabel", classes)
    macro = f1_score(ML_TRUE, ML_PRED, average="macro", zero_division=np.nan)
    assert m["macro_f1"] == pytest.approx(macro)
    assert m["micro_f1"] == pytest.approx(f1_score(ML_TRUE, ML_PRED, average="micro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(ML_TRUE, ML_PRED))
    # AUROC over the labels with both values in y_true: w, x, y.
    auroc = roc_auc_score(ML_TRUE[:, :3], ML_SCORE[:, :3], average="macro")
    assert m["auroc"] == pytest.approx(auroc)
    per = f1_score(ML_TRUE[:, :3], ML_PRED[:, :3], average=None)
    assert [m["per_class_f1"][c] for c in "wxy"] == pytest.approx(per.tolist())
    assert m["per_class_f1"]["z"] is None


def test_metrics_rejects_bad_ids():
    with pytest.raises(ValueError, match="ids outside"):
        metrics(np.array([0, 3]), np.array([0, 1]), None, "multiclass", ["a", "b", "c"])
    with pytest.raises(ValueError, match="same shape"):
        metrics(np.array([0, 1]), np.array([0]), None, "binary", ["a", "b"])
