"""The classifier registry (adapt.classifiers): building, parameters, wrapping, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.multiclass import OneVsRestClassifier

from adapt.classifiers import make_classifier, seed_dependent


def test_make_classifier_errors_and_wrapping():
    with pytest.raises(ValueError, match="valid names are"):
        make_classifier("lightgbm", "binary", 0)
    with pytest.raises(ValueError, match="rejected params"):
        make_classifier("svc", "binary", 0, {"bogus": 1})
    with pytest.raises(ValueError, match="no parameter"):
        make_classifier("xgboost", "binary", 0, {"bogus": 1})
    svc = make_classifier("svc", "multilabel", 3, {"C": 10.0})
    assert isinstance(svc, OneVsRestClassifier)
    assert svc.estimator.C == 10.0 and svc.estimator.random_state == 3
    assert make_classifier("xgboost", "binary", 0, {"n_jobs": 2}).n_jobs == 2
    assert not isinstance(make_classifier("cart", "multilabel", 0), OneVsRestClassifier)


def test_seed_dependent_classifiers():
    assert seed_dependent("mlp") and seed_dependent("random_forest")
    assert not any(seed_dependent(c) for c in ("logreg", "svc", "knn", "xgboost"))
    assert seed_dependent("xgboost", {"subsample": 0.8})
    assert not seed_dependent("xgboost", {"n_estimators": 100})


def test_svc_past_its_exact_size_is_approximated_and_the_cell_says_so(monkeypatch):
    from adapt import classifiers
    from adapt.approx_svc import ApproxRBFSVC
    from adapt.score.cells import score_cell

    rng = np.random.default_rng(0)
    y = np.arange(400) % 3
    x = rng.normal(size=(400, 8)) + 2.0 * np.eye(3, 8)[y]
    exact = score_cell(x[:300], y[:300], x[300:], y[300:], "svc", "multiclass", ["a", "b", "c"], 0)
    assert exact["notes"] == ""
    monkeypatch.setattr(classifiers, "SVC_EXACT_MAX_ROWS", 200)
    assert isinstance(classifiers.make_classifier("svc", "multiclass", 0, n_rows=300), ApproxRBFSVC)
    approx = score_cell(x[:300], y[:300], x[300:], y[300:], "svc", "multiclass", ["a", "b", "c"], 0)
    assert (
        "RBF kernel approximated" in approx["notes"]
        and "300 training rows > 200" in approx["notes"]
    )
    assert approx["macro_f1"] > 0.8 and abs(approx["macro_f1"] - exact["macro_f1"]) < 0.1
    assert approx["auroc"] is not None  # ranks rows by its decision function
    # Its parameters are SVC's C and gamma; a multilabel task wraps it one model per label.
    est = classifiers.make_classifier("svc", "multilabel", 0, {"C": 10.0}, n_rows=300)
    assert est.estimator.C == 10.0
    est.fit(x[:300], np.eye(3, dtype=int)[y[:300]])
    assert est.predict(x[300:]).shape == (100, 3)
    with pytest.raises(ValueError, match="kernel"):
        classifiers.make_classifier("svc", "multiclass", 0, {"kernel": "poly"}, n_rows=300)
