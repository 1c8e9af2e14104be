"""The classifier registry (adapt.classifiers): building, parameters, wrapping, seeds."""

from __future__ import annotations

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
