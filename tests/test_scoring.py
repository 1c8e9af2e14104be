"""Unit tests of the score stage core, checked against scikit-learn on tiny fixed inputs."""


import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.multiclass import OneVsRestClassifier

from adapt import scoring

# ---------------------------------------------------------------------------------------------
# Labels


def test_infer_task_type():
    assert scoring.infer_task_type(["a", "b", "a"]) == "binary"
    assert scoring.infer_task_type(["a", "b", "c"]) == "multiclass"
    assert scoring.infer_task_type([["a"], [], ["a", "b"]]) == "multilabel"
    with pytest.raises(ValueError, match="mix lists"):
        scoring.infer_task_type(["a", ["b"]])
    with pytest.raises(ValueError, match="two or more classes"):
        scoring.infer_task_type(["a", "a"])
    with pytest.raises(ValueError, match="no label"):
        scoring.infer_task_type(["a", None])


def test_encode_labels():
    y, classes = scoring.encode_labels(["pos", "neg", "pos"], "binary")
    assert classes == ["neg", "pos"]
    assert y.tolist() == [1, 0, 1]

    y, classes = scoring.encode_labels(["c", "a", "b", "a"], "multiclass")
    assert classes == ["a", "b", "c"]
    assert y.tolist() == [2, 0, 1, 0]

    y, classes = scoring.encode_labels([["x", "y"], [], ["y"]], "multilabel")
    assert classes == ["x", "y"]
    assert y.tolist() == [[1, 1], [0, 0], [0, 1]]

    with pytest.raises(ValueError, match="multiclass"):
        scoring.encode_labels(["a", "b", "c"], "binary")
    with pytest.raises(ValueError, match="multilabel"):
        scoring.encode_labels([["a"], ["b"]], "multiclass")
    with pytest.raises(ValueError, match="unknown task type"):
        scoring.encode_labels(["a", "b"], "regression")


# ---------------------------------------------------------------------------------------------
# Metrics against scikit-learn

BIN_TRUE = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
BIN_PRED = np.array([0, 1, 1, 1, 0, 0, 1, 0, 0, 1])
BIN_SCORE = np.array([0.1, 0.6, 0.8, 0.7, 0.4, 0.2, 0.9, 0.3, 0.45, 0.55])


def test_metrics_binary_matches_sklearn():
    m = scoring.metrics(BIN_TRUE, BIN_PRED, BIN_SCORE, "binary", ["neg", "pos"])
    assert m["macro_f1"] == pytest.approx(f1_score(BIN_TRUE, BIN_PRED, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(BIN_TRUE, BIN_PRED, average="micro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(BIN_TRUE, BIN_PRED))
    assert m["auroc"] == pytest.approx(roc_auc_score(BIN_TRUE, BIN_SCORE))
    per = f1_score(BIN_TRUE, BIN_PRED, average=None)
    assert m["per_class_f1"] == pytest.approx({"neg": per[0], "pos": per[1]})
    # (rows, 2) probabilities give the same AUROC as the positive column.
    proba = np.column_stack([1 - BIN_SCORE, BIN_SCORE])
    assert scoring.metrics(BIN_TRUE, BIN_PRED, proba, "binary", ["n", "p"])["auroc"] == m["auroc"]
    # One class in the test rows: AUROC is undefined.
    ones = np.ones(4, dtype=int)
    assert scoring.metrics(ones, ones, np.ones(4), "binary", ["n", "p"])["auroc"] is None
    assert scoring.metrics(BIN_TRUE, BIN_PRED, None, "binary", ["n", "p"])["auroc"] is None


MC_TRUE = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 2, 1, 1])
MC_PRED = np.array([0, 2, 2, 2, 1, 0, 1, 1, 1, 2, 0, 1])


def _mc_proba(seed=3):
    raw = np.random.default_rng(seed).random((len(MC_TRUE), 3))
    raw[np.arange(len(MC_TRUE)), MC_TRUE] += 0.5
    return raw / raw.sum(axis=1, keepdims=True)


def test_metrics_multiclass_matches_sklearn():
    proba = _mc_proba()
    m = scoring.metrics(MC_TRUE, MC_PRED, proba, "multiclass", ["a", "b", "c"])
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
    m = scoring.metrics(MC_TRUE, MC_PRED, proba, "multiclass", ["a", "b", "c", "d"])
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
    m = scoring.metrics(ML_TRUE, ML_PRED, ML_SCORE, "multilabel", classes)
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
        scoring.metrics(np.array([0, 3]), np.array([0, 1]), None, "multiclass", ["a", "b", "c"])
    with pytest.raises(ValueError, match="same shape"):
        scoring.metrics(np.array([0, 1]), np.array([0]), None, "binary", ["a", "b"])


# ---------------------------------------------------------------------------------------------
# Splits


def _check_partition(folds, n):
    tests = [test for _, test in folds]
    for train, test in folds:
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == n
    all_test = np.concatenate(tests)
    assert sorted(all_test.tolist()) == list(range(n))  # each row in exactly one test fold


def test_splits_kfold_stratified():
    y = np.array([0] * 50 + [1] * 30 + [2] * 17)
    folds = scoring.splits(y, "multiclass", n_folds=5, seed=1)
    _check_partition(folds, len(y))
    counts = np.array([np.bincount(y[test], minlength=3) for _, test in folds])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [t.tolist() for _, t in folds] == [
        t.tolist() for _, t in scoring.splits(y, "multiclass", n_folds=5, seed=1)
    ]
    assert folds[0][1].tolist() != scoring.splits(y, "multiclass", n_folds=5, seed=2)[0][1].tolist()


def test_splits_rare_classes():
    # Classes with 1 and 3 rows and 5 folds: no error; each rare row is tested exactly once.
    y = np.array([0] * 20 + [1] * 3 + [2])
    folds = scoring.splits(y, "multiclass", n_folds=5, seed=0)
    _check_partition(folds, len(y))
    tested_rare = [np.isin(test, np.flatnonzero(y == 1)).sum() for _, test in folds]
    assert sorted(tested_rare) == [0, 0, 1, 1, 1]


def test_splits_multilabel():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(int)
    folds = scoring.splits(y, "multilabel", n_folds=3, seed=0)
    _check_partition(folds, len(y))
    per_fold = np.array([y[test].sum(axis=0) for _, test in folds])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 2).all()
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 2


def test_splits_repeated():
    y = np.array([0] * 60 + [1] * 40)
    folds = scoring.splits(y, "binary", n_folds=3, seed=0, scheme="repeated")
    assert len(folds) == 3
    for train, test in folds:
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
        assert len(test) == 20  # test size 0.2
        assert np.bincount(y[test]).tolist() == [12, 8]
    assert folds[0][1].tolist() != folds[1][1].tolist()


def test_splits_errors():
    with pytest.raises(ValueError, match="unknown split scheme"):
        scoring.splits(np.array([0, 1] * 5), "binary", scheme="loo")
    with pytest.raises(ValueError, match="cannot fill"):
        scoring.splits(np.array([0, 1, 0]), "binary", n_folds=5)
    with pytest.raises(ValueError, match="2-D"):
        scoring.splits(np.array([0, 1] * 5), "multilabel")


# ---------------------------------------------------------------------------------------------
# Features


def test_pca_fitted_on_train_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)) * [5, 3, 2, 1, 1, 1]
    X[30:] += 10 * rng.normal(size=(10, 6))  # the "test" rows pull PCA another way
    X_train = X[:30]
    pca, info = scoring.fit_pca(X_train, 3, seed=0)
    alone = PCA(n_components=3, random_state=0).fit(X_train)
    everything = PCA(n_components=3, random_state=0).fit(X)
    np.testing.assert_allclose(pca.components_, alone.components_)
    assert not np.allclose(np.abs(pca.components_), np.abs(everything.components_), atol=1e-3)
    assert info == {"k_requested": 3, "k": 3, "note": ""}
    assert scoring.apply_pca(pca, X[30:]).shape == (10, 3)


def test_pca_clips_k():
    pca, info = scoring.fit_pca(np.random.default_rng(0).normal(size=(8, 5)), 128, seed=0)
    assert pca.n_components_ == 5
    assert info["k"] == 5 and info["k_requested"] == 128 and "clipped" in info["note"]
    with pytest.raises(ValueError, match="k >= 1"):
        scoring.fit_pca(np.ones((4, 3)), 0, seed=0)


def test_standardize_uses_train_statistics():
    X_train = np.array([[0.0, 10.0], [2.0, 30.0]])
    X_test = np.array([[1.0, 20.0], [4.0, 50.0]])
    tr, te = scoring.standardize_train_test(X_train, X_test)
    np.testing.assert_allclose(tr, [[-1, -1], [1, 1]])
    np.testing.assert_allclose(te, [[0, 0], [3, 3]])


# ---------------------------------------------------------------------------------------------
# Classifiers and cells


def test_make_classifier_errors_and_wrapping():
    with pytest.raises(ValueError, match="valid names are"):
        scoring.make_classifier("lightgbm", "binary", 0)
    with pytest.raises(ValueError, match="rejected params"):
        scoring.make_classifier("svc", "binary", 0, {"bogus": 1})
    with pytest.raises(ValueError, match="no parameter"):
        scoring.make_classifier("xgboost", "binary", 0, {"bogus": 1})
    svc = scoring.make_classifier("svc", "multilabel", 3, {"C": 10.0})
    assert isinstance(svc, OneVsRestClassifier)
    assert svc.estimator.C == 10.0 and svc.estimator.random_state == 3
    assert scoring.make_classifier("xgboost", "binary", 0, {"n_jobs": 2}).n_jobs == 2
    assert not isinstance(scoring.make_classifier("cart", "multilabel", 0), OneVsRestClassifier)


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


@pytest.mark.parametrize("task_type", scoring.TASK_TYPES)
@pytest.mark.parametrize("classifier", sorted(scoring.CLASSIFIERS))
def test_score_cell_every_classifier(classifier, task_type):
    X_train, y_train, X_test, y_test, classes = _separable(task_type)
    result = scoring.score_cell(
        X_train, y_train, X_test, y_test, classifier, task_type, classes, seed=0
    )
    assert result["macro_f1"] > 0.8, result
    assert result["auroc"] is not None and result["auroc"] > 0.8
    assert result["fit_s"] >= 0 and result["predict_s"] >= 0
    assert result["n_train"] == 100 and result["n_test"] == 50
    assert result["standardized"] == (classifier in scoring.STANDARDIZED_BY_DEFAULT)
    assert set(result["per_class_f1"]) == set(classes)


def test_score_cell_class_missing_from_training():
    # Class 2 exists in the task but not in the training rows (ids 0, 1, 3): xgboost needs
    # consecutive ids, the scores need a column per class.
    X_train, y_train, X_test, y_test, classes = _separable("multiclass")
    keep = y_train != 2
    result = scoring.score_cell(
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
    result = scoring.score_cell(
        X_train[:6], y_train[:6], X_test, y_test, "knn", "binary", classes, seed=0
    )
    assert "n_neighbors lowered" in result["notes"]
    result = scoring.score_cell(
        X_train[:6], y_train[:6], X_test, y_test, "mlp", "binary", classes, seed=0
    )
    assert "early_stopping off" in result["notes"]
    with pytest.raises(ValueError, match="single class"):
        scoring.score_cell(
            X_train[:1], y_train[:1], X_test, y_test, "cart", "binary", classes, seed=0
        )


# ---------------------------------------------------------------------------------------------
# Uncertainty


def test_bootstrap_mean_ci():
    values = [0.71, 0.74, 0.69, 0.77, 0.72]
    ci = scoring.bootstrap_mean_ci(values, seed=4)
    assert ci["mean"] == pytest.approx(np.mean(values))
    assert ci["lo"] <= ci["mean"] <= ci["hi"]
    assert ci["lo"] >= min(values) and ci["hi"] <= max(values)
    assert scoring.bootstrap_mean_ci(values, seed=4) == ci
    assert scoring.bootstrap_mean_ci([0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
    with pytest.raises(ValueError, match="finite"):
        scoring.bootstrap_mean_ci([])


def _noisy_predictions(y, error_rate, n_classes, rng):
    wrong = rng.random(len(y)) < error_rate
    return np.where(wrong, (y + rng.integers(1, n_classes, len(y))) % n_classes, y)


def test_paired_gain_ci_identical_is_exactly_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = _noisy_predictions(y, 0.3, 4, rng)
    assert scoring.paired_gain_ci(y, pred, pred.copy()) == {"mean": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_gain_ci_detects_a_clear_gain():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    worse = _noisy_predictions(y, 0.4, 4, rng)
    better = _noisy_predictions(y, 0.1, 4, rng)
    ci = scoring.paired_gain_ci(y, worse, better, seed=0)
    expected = f1_score(y, better, average="macro") - f1_score(y, worse, average="macro")
    assert ci["mean"] == pytest.approx(expected)
    assert 0 < ci["lo"] < ci["mean"] < ci["hi"]
    assert scoring.paired_gain_ci(y, worse, better, seed=0) == ci
    reverse = scoring.paired_gain_ci(y, better, worse, seed=0)
    assert reverse["mean"] == pytest.approx(-ci["mean"]) and reverse["hi"] < 0


def test_paired_gain_ci_fast_path_matches_a_plain_function():
    # The count-based bootstrap and a per-resample call of scikit-learn agree on every resample
    # when both draw the same rows; compare their intervals loosely (different draw order).
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    a = _noisy_predictions(y, 0.4, 3, rng)
    b = _noisy_predictions(y, 0.2, 3, rng)
    fast = scoring.paired_gain_ci(y, a, b, "micro_f1", n_boot=300, seed=0)

    def accuracy(t, p):
        return accuracy_score(t, p)

    slow = scoring.paired_gain_ci(y, a, b, accuracy, n_boot=300, seed=0)
    assert fast["mean"] == pytest.approx(slow["mean"])
    assert fast["lo"] == pytest.approx(slow["lo"], abs=0.03)
    assert fast["hi"] == pytest.approx(slow["hi"], abs=0.03)


def test_paired_mean_gain_ci_averages_classifiers_on_shared_draws():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 400)
    a1, b1 = _noisy_predictions(y, 0.4, 4, rng), _noisy_predictions(y, 0.1, 4, rng)
    a2, b2 = _noisy_predictions(y, 0.2, 4, rng), _noisy_predictions(y, 0.25, 4, rng)
    # One pair is exactly paired_gain_ci, same seed, same draws.
    assert scoring.paired_mean_gain_ci(y, [a1], [b1], seed=3) == scoring.paired_gain_ci(
        y, a1, b1, seed=3
    )
    both = scoring.paired_mean_gain_ci(y, [a1, a2], [b1, b2], seed=3)
    g1 = f1_score(y, b1, average="macro") - f1_score(y, a1, average="macro")
    g2 = f1_score(y, b2, average="macro") - f1_score(y, a2, average="macro")
    assert both["mean"] == pytest.approx((g1 + g2) / 2)
    assert both["lo"] < both["mean"] < both["hi"] and both["lo"] > 0  # g1 large, g2 small loss
    same = scoring.paired_mean_gain_ci(y, [a1, a2], [a1.copy(), a2.copy()])
    assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    with pytest.raises(ValueError, match="pairs"):
        scoring.paired_mean_gain_ci(y, [a1], [b1, b2])


def test_paired_gain_ci_multilabel():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (200, 3))
    flip_a = rng.random(y.shape) < 0.3
    flip_b = rng.random(y.shape) < 0.05
    a, b = np.where(flip_a, 1 - y, y), np.where(flip_b, 1 - y, y)
    ci = scoring.paired_gain_ci(y, a, b, n_boot=200)
    expected = f1_score(y, b, average="macro") - f1_score(y, a, average="macro")
    assert ci["mean"] == pytest.approx(expected)
    assert ci["lo"] > 0


def test_paired_gain_ci_averages_stacked_fits():
    # Several fits (seeds) of one classifier per side: the gain is that of the fits' mean metric,
    # scored on the same row draws, and a stack of one fit is the plain prediction.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, 500)
    a = np.stack([_noisy_predictions(y, p, 6, rng) for p in (0.5, 0.3, 0.4)])
    b = np.stack([_noisy_predictions(y, p, 6, rng) for p in (0.2, 0.35, 0.1)])
    ci = scoring.paired_gain_ci(y, a, b, n_boot=300, seed=1)
    f1 = lambda s: np.mean([f1_score(y, p, average="macro") for p in s])  # noqa: E731
    assert ci["mean"] == pytest.approx(f1(b) - f1(a))
    assert ci["lo"] > 0
    assert scoring.paired_gain_ci(y, a[:1], b[:1], seed=1) == scoring.paired_gain_ci(
        y, a[0], b[0], seed=1
    )
    # Sides may hold different numbers of fits; a mixed classifier list averages each pair first.
    mixed = scoring.paired_mean_gain_ci(y, [a, a[0]], [b[:2], b[2]], n_boot=200)
    g1 = f1(b[:2]) - f1(a)
    g2 = f1_score(y, b[2], average="macro") - f1_score(y, a[0], average="macro")
    assert mixed["mean"] == pytest.approx((g1 + g2) / 2)
    with pytest.raises(ValueError, match="stack of fits"):
        scoring.paired_gain_ci(y, a[:, :10], b)
    with pytest.raises(ValueError, match="stack of fits"):
        scoring.paired_gain_ci(y, a[:0], b)


def test_seed_dependent_classifiers():
    assert scoring.seed_dependent("mlp") and scoring.seed_dependent("random_forest")
    assert not any(scoring.seed_dependent(c) for c in ("logreg", "svc", "knn", "xgboost"))
    assert scoring.seed_dependent("xgboost", {"subsample": 0.8})
    assert not scoring.seed_dependent("xgboost", {"n_estimators": 100})


def test_paired_gain_ci_errors():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="stack of fits"):
        scoring.paired_gain_ci(y, y, y[:2])
    with pytest.raises(ValueError, match="same shape"):
        scoring.paired_gain_ci(y, y, y[:2], lambda t, p: float((t == p).mean()))
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.paired_gain_ci(y, y, y, "auroc")


def test_aggregate():
    rows = []
    for rep, base in (("raw", 0.70), ("head", 0.78)):
        for fold in range(5):
            rows.append(
                {
                    "task": "t",
                    "representation": rep,
                    "classifier": "logreg",
                    "fold": fold,
                    "macro_f1": base + 0.01 * fold,
                    "micro_f1": base + 0.02,
                    "auroc": None,
                    "fit_s": 1.0,
                }
            )
    rows.append(
        {
            "task": "t",
            "representation": "raw",
            "classifier": "logreg",
            "fold": 5,
            "macro_f1": None,
            "micro_f1": None,
        }
    )  # a failed cell
    out = scoring.aggregate(rows)
    assert [r["representation"] for r in out] == ["raw", "head"]
    raw = out[0]
    assert raw["fold"] == "mean" and raw["n_folds"] == 5
    assert raw["macro_f1"] == pytest.approx(0.72)
    assert raw["macro_f1_std"] == pytest.approx(np.std([0.70, 0.71, 0.72, 0.73, 0.74], ddof=1))
    assert raw["macro_f1_lo"] <= raw["macro_f1"] <= raw["macro_f1_hi"]
    assert raw["micro_f1"] == pytest.approx(0.72) and raw["micro_f1_std"] == pytest.approx(0.0)
    assert raw["auroc"] is None and raw["fit_s"] == 1.0
    assert scoring.aggregate(rows + out) == out  # aggregated rows are skipped
    with pytest.raises(ValueError, match="lacks"):
        scoring.aggregate([{"task": "t", "fold": 0}])
