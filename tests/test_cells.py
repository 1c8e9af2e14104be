"""One score cell (adapt.score.cells): features fitted on training rows, every classifier on every task type."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from adapt.classifiers import CLASSIFIERS, STANDARDIZED_BY_DEFAULT
from adapt.labels import TASK_TYPES
from adapt.score.cells import apply_pca, fit_pca, score_cell, standardize_train_test


def test_pca_fitted_on_train_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)) * [5, 3, 2, 1, 1, 1]
    X[30:] += 10 * rng.normal(size=(10, 6))  # the "test" rows pull PCA another way
    X_train = X[:30]
    pca, info = fit_pca(X_train, 3, seed=0)
    alone = PCA(n_components=3, random_state=0).fit(X_train)
    everything = PCA(n_components=3, random_state=0).fit(X)
    np.testing.assert_allclose(pca.components_, alone.components_)
    assert not np.allclose(np.abs(pca.components_), np.abs(everything.components_), atol=1e-3)
    assert info == {"k_requested": 3, "k": 3, "note": ""}
    assert apply_pca(pca, X[30:]).shape == (10, 3)


def test_pca_clips_k():
    pca, info = fit_pca(np.random.default_rng(0).normal(size=(8, 5)), 128, seed=0)
    assert pca.n_components_ == 5
    assert info["k"] == 5 and info["k_requested"] == 128 and "clipped" in info["note"]
    with pytest.raises(ValueError, match="k >= 1"):
        fit_pca(np.ones((4, 3)), 0, seed=0)


def test_standardize_uses_train_statistics():
    X_train = np.array([[0.0, 10.0], [2.0, 30.0]])
    X_test = np.array([[1.0, 20.0], [4.0, 50.0]])
    tr, te = standardize_train_test(X_train, X_test)
    np.testing.assert_allclose(tr, [[-1, -1], [1, 1]])
    np.testing.assert_allclose(te, [[0, 0], [3, 3]])


def _separable(task_type, n=150, dims=8, seed=0):
    """Well separated clusters; the first 100 rows train, the rest test."""
    rng = np.random.default_rng(seed)
    noise = 0.5 * rng.normal(size=(n, dims))
    if task_type == "multilabel":
        y = rng.integers(0, 2, size=(n, 3))
        X = noise
        X[:, :3] += 3 * (2 * y - 1)  # label l is the sign of feature l
        classes = ["a", "b", "c"]
    else:
        n_classes = 2 if task_type == "binary" else 4
        y = np.arange(n) % n_classes
        X = noise + 4 * np.eye(n_classes, dims)[y]
        classes = [f"c{k}" for k in range(n_classes)]
    return X[:100], y[:100], X[100:], y[100:], classes


@pytest.mark.parametrize("task_type", TASK_TYPES)
@pytest.mark.parametrize("classifier", sorted(CLASSIFIERS))
def test_score_cell_every_classifier(classifier, task_type):
    X_train, y_train, X_test, y_test, classes = _separable(task_type)
    result = score_cell(X_train, y_train, X_test, y_test, classifier, task_type, classes, seed=0)
    assert result["macro_f1"] > 0.8, result
    assert result["auroc"] is not None and result["auroc"] > 0.8
    assert result["fit_s"] >= 0 and result["predict_s"] >= 0
    assert result["n_train"] == 100 and result["n_test"] == 50
    assert result["standardized"] == (classifier in STANDARDIZED_BY_DEFAULT)
    assert set(result["per_class_f1"]) == set(classes)


def test_tuned_probes_choose_c_on_their_training_rows_and_say_which():
    """Few rows, many noise dimensions: the RBF SVC at C = 1 underfits; the tuned probe picks
    another C by its inner CV over the training rows alone and scores higher. A multi-label
    task tunes one C per label."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 400))
    x[:, :3] += np.eye(3)[y]
    args = (x[:120], y[:120], x[120:], y[120:])
    plain = score_cell(*args, "svc", "multiclass", ["a", "b", "c"], seed=0)
    tuned = score_cell(*args, "svc_tuned", "multiclass", ["a", "b", "c"], seed=0)
    assert tuned["notes"] == "C=10 chosen by inner 3-fold CV", tuned["notes"]
    assert tuned["macro_f1"] > plain["macro_f1"] + 0.03, (plain["macro_f1"], tuned["macro_f1"])
    X_train, y_train, X_test, y_test, classes = _separable("multilabel")
    result = score_cell(
        X_train, y_train, X_test, y_test, "logreg_tuned", "multilabel", classes, seed=0
    )
    assert result["notes"].startswith("C per label chosen by inner CV: ")


def test_score_cell_class_missing_from_training():
    # Class 2 exists in the task but not in the training rows (ids 0, 1, 3): xgboost needs
    # consecutive ids, the scores need a column per class.
    X_train, y_train, X_test, y_test, classes = _separable("multiclass")
    keep = y_train != 2
    result = score_cell(
        X_train[keep],
        y_train[keep],
        X_test,
        y_test,
        "xgboost",
        "multiclass",
        classes,
        seed=0,
        keep_predictions=True,
    )
    assert 2 not in result["y_pred"]
    assert set(np.unique(result["y_pred"])) <= {0, 1, 3}
    assert result["per_class_f1"]["c2"] == 0.0
    assert 0 < result["auroc"] <= 1


def test_score_cell_tiny_training_set_adjusts():
    X_train, y_train, X_test, y_test, classes = _separable("binary")
    result = score_cell(X_train[:6], y_train[:6], X_test, y_test, "knn", "binary", classes, seed=0)
    assert "n_neighbors lowered" in result["notes"]
    result = score_cell(X_train[:6], y_train[:6], X_test, y_test, "mlp", "binary", classes, seed=0)
    assert "early_stopping off" in result["notes"]
    with pytest.raises(ValueError, match="single class"):
        score_cell(X_train[:1], y_train[:1], X_test, y_test, "cart", "binary", classes, seed=0)
