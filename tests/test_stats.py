"""Intervals (adapt.stats): means over folds, paired gains, aggregation of fold rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from adapt.stats import aggregate, folds_mean_ci, paired_gain_ci, paired_mean_gain_ci


def test_folds_mean_ci():
    values = [0.71, 0.74, 0.69]
    plain = folds_mean_ci(values)
    # Student t with 2 degrees of freedom: mean +- 4.303 * s / sqrt(3)
    half = 4.302653 * np.std(values, ddof=1) / np.sqrt(3)
    assert plain["mean"] == pytest.approx(np.mean(values))
    assert plain["lo"] == pytest.approx(np.mean(values) - half, abs=1e-5)
    assert plain["hi"] == pytest.approx(np.mean(values) + half, abs=1e-5)
    # 3-fold CV trains on twice the rows it tests on: the correction adds 1/2 to 1/3
    corrected = folds_mean_ci(values, test_train_ratio=0.5)
    assert corrected["hi"] - corrected["mean"] == pytest.approx(half * np.sqrt(2.5), abs=1e-5)
    # wider than the spread of the values, unlike a bootstrap of three values
    assert corrected["lo"] < min(values) and corrected["hi"] > max(values)
    assert folds_mean_ci([0.98, 0.99, 0.90])["hi"] == 1.0  # clipped to the metric's range
    assert folds_mean_ci([0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
    with pytest.raises(ValueError, match="finite"):
        folds_mean_ci([])
    with pytest.raises(ValueError, match="alpha"):
        folds_mean_ci(values, alpha=1.5)


def _noisy_predictions(y, error_rate, n_classes, rng):
    wrong = rng.random(len(y)) < error_rate
    return np.where(wrong, (y + rng.integers(1, n_classes, len(y))) % n_classes, y)


def test_paired_gain_ci_identical_is_exactly_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = _noisy_predictions(y, 0.3, 4, rng)
    assert paired_gain_ci(y, pred, pred.copy()) == {"mean": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_gain_ci_detects_a_clear_gain():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    worse = _noisy_predictions(y, 0.4, 4, rng)
    better = _noisy_predictions(y, 0.1, 4, rng)
    ci = paired_gain_ci(y, worse, better, seed=0)
    expected = f1_score(y, better, average="macro") - f1_score(y, worse, average="macro")
    assert ci["mean"] == pytest.approx(expected)
    assert 0 < ci["lo"] < ci["mean"] < ci["hi"]
    assert paired_gain_ci(y, worse, better, seed=0) == ci
    reverse = paired_gain_ci(y, better, worse, seed=0)
    assert reverse["mean"] == pytest.approx(-ci["mean"]) and reverse["hi"] < 0


def test_paired_gain_ci_fast_path_matches_a_plain_function():
    # The count-based bootstrap and a per-resample call of scikit-learn agree on every resample
    # when both draw the same rows; compare their intervals loosely (different draw order).
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    a = _noisy_predictions(y, 0.4, 3, rng)
    b = _noisy_predictions(y, 0.2, 3, rng)
    fast = paired_gain_ci(y, a, b, "micro_f1", n_boot=300, seed=0)

    def accuracy(t, p):
        return accuracy_score(t, p)

    slow = paired_gain_ci(y, a, b, accuracy, n_boot=300, seed=0)
    assert fast["mean"] == pytest.approx(slow["mean"])
    assert fast["lo"] == pytest.approx(slow["lo"], abs=0.03)
    assert fast["hi"] == pytest.approx(slow["hi"], abs=0.03)


def test_paired_mean_gain_ci_averages_classifiers_on_shared_draws():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 400)
    a1, b1 = _noisy_predictions(y, 0.4, 4, rng), _noisy_predictions(y, 0.1, 4, rng)
    a2, b2 = _noisy_predictions(y, 0.2, 4, rng), _noisy_predictions(y, 0.25, 4, rng)
    # One pair is exactly paired_gain_ci, same seed, same draws.
    assert paired_mean_gain_ci(y, [a1], [b1], seed=3) == paired_gain_ci(y, a1, b1, seed=3)
    both = paired_mean_gain_ci(y, [a1, a2], [b1, b2], seed=3)
    g1 = f1_score(y, b1, average="macro") - f1_score(y, a1, average="macro")
    g2 = f1_score(y, b2, average="macro") - f1_score(y, a2, average="macro")
    assert both["mean"] == pytest.approx((g1 + g2) / 2)
    assert both["lo"] < both["mean"] < both["hi"] and both["lo"] > 0  # g1 large, g2 small loss
    same = paired_mean_gain_ci(y, [a1, a2], [a1.copy(), a2.copy()])
    assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    with pytest.raises(ValueError, match="pairs"):
        paired_mean_gain_ci(y, [a1], [b1, b2])


def test_paired_gain_ci_multilabel():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (200, 3))
    flip_a = rng.random(y.shape) < 0.3
    flip_b = rng.random(y.shape) < 0.05
    a, b = np.where(flip_a, 1 - y, y), np.where(flip_b, 1 - y, y)
    ci = paired_gain_ci(y, a, b, n_boot=200)
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
    ci = paired_gain_ci(y, a, b, n_boot=300, seed=1)
    f1 = lambda s: np.mean([f1_score(y, p, average="macro") for p in s])  # noqa: E731
    assert ci["mean"] == pytest.approx(f1(b) - f1(a))
    assert ci["lo"] > 0
    assert paired_gain_ci(y, a[:1], b[:1], seed=1) == paired_gain_ci(y, a[0], b[0], seed=1)
    # Sides may hold different numbers of fits; a mixed classifier list averages each pair first.
    mixed = paired_mean_gain_ci(y, [a, a[0]], [b[:2], b[2]], n_boot=200)
    g1 = f1(b[:2]) - f1(a)
    g2 = f1_score(y, b[2], average="macro") - f1_score(y, a[0], average="macro")
    assert mixed["mean"] == pytest.approx((g1 + g2) / 2)
    with pytest.raises(ValueError, match="stack of fits"):
        paired_gain_ci(y, a[:, :10], b)
    with pytest.raises(ValueError, match="stack of fits"):
        paired_gain_ci(y, a[:0], b)


def test_paired_gain_ci_errors():
    y = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="stack of fits"):
        paired_gain_ci(y, y, y[:2])
    with pytest.raises(ValueError, match="same shape"):
        paired_gain_ci(y, y, y[:2], lambda t, p: float((t == p).mean()))
    with pytest.raises(ValueError, match="unknown metric"):
        paired_gain_ci(y, y, y, "auroc")


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
                    "n_train": 400,
                    "n_test": 100,
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
    out = aggregate(rows)
    assert [r["representation"] for r in out] == ["raw", "head"]
    raw = out[0]
    assert raw["fold"] == "mean" and raw["n_folds"] == 5
    assert raw["macro_f1"] == pytest.approx(0.72)
    assert raw["macro_f1_std"] == pytest.approx(np.std([0.70, 0.71, 0.72, 0.73, 0.74], ddof=1))
    expected = folds_mean_ci([0.70, 0.71, 0.72, 0.73, 0.74], test_train_ratio=0.25)
    assert (raw["macro_f1_lo"], raw["macro_f1_hi"]) == (expected["lo"], expected["hi"])
    assert raw["micro_f1"] == pytest.approx(0.72) and raw["micro_f1_std"] == pytest.approx(0.0)
    assert raw["auroc"] is None and raw["fit_s"] == 1.0
    assert aggregate(rows + out) == out  # aggregated rows are skipped
    with pytest.raises(ValueError, match="lacks"):
        aggregate([{"task": "t", "fold": 0}])
