"""The quality benchmark's verdict: the bar is computed from a score report, not asserted."""

from __future__ import annotations

import numpy as np

from adapt.bench.quality import _cell_interval, averaged_table, bar_table, check_bar


def _report(gain_lo: float, recommended: dict[str, str]) -> dict:
    means = {
        ("raw:text", "logreg"): 0.80,
        ("raw:concat", "logreg"): 0.78,
        ("projected:single", "logreg"): 0.785,
        ("raw:text", "cart"): 0.40,
        ("raw:concat", "cart"): 0.42,
        ("projected:single", "cart"): 0.60,
    }
    results = [
        {"task": "t", "representation": r, "classifier": c, "fold": "mean", "macro_f1": v,
         "macro_f1_lo": v - 0.01, "macro_f1_hi": v + 0.01}
        for (r, c), v in means.items()
    ]
    gains = [
        {"task": "t", "representation": "projected:single", "baseline": base,
         "baseline_representation": rep, "mean": 0.1, "lo": gain_lo, "hi": 0.2}
        for base, rep in (("raw", "raw:text"), ("pca", "pca:text"))
    ]
    return {
        "protocol": {"metric": "macro_f1", "classifiers": ["logreg", "cart"],
                     "representations": ["raw:text", "raw:concat", "projected:single"]},
        "tasks": [{"name": "t"}],
        "results": results,
        "mean_gains": gains,
        "recommendation": {"t": {"representation": "projected:single", "by_classifier": {
            c: {"representation": r} for c, r in recommended.items()}}},
    }


def test_bar_met_and_cells_within_a_point():
    report = _report(0.05, {"logreg": "projected:single", "cart": "projected:single"})
    bar = check_bar([{"report": report}])["t"]
    assert bar["beats_raw_and_pca"] and bar["best_learned"] == "projected:single"
    # logreg: 0.785 against the best raw 0.80 is -0.015, over the one-point tolerance.
    assert not bar["cells_ok"] and round(bar["worst_cell_vs_raw"], 3) == -0.015
    assert round(bar["cells"]["cart"]["vs_raw"], 3) == 0.18  # against raw:concat, the best raw
    assert "| t | projected:single | +0.100 [+0.050, +0.200]" in bar_table({"t": bar})
    table = averaged_table([{"report": report}])
    assert "| t | projected:single | 0.693 | +0.100" in table


def test_bar_not_met_when_an_interval_reaches_zero():
    report = _report(-0.001, {"logreg": "raw:text", "cart": "projected:single"})
    bar = check_bar([{"report": report}])["t"]
    assert not bar["beats_raw_and_pca"]
    assert bar["cells_ok"] and bar["worst_cell_vs_raw"] == 0.0


def test_a_cell_below_raw_gets_its_pooled_test_interval(tmp_path):
    # Two outer folds and a validation split saved as the score stage saves them: the interval
    # pools the outer folds only, and averages a stack of fits.
    rng = np.random.default_rng(0)
    y = {("t", 0): rng.integers(0, 3, 60), ("t", 1): rng.integers(0, 3, 60),
         ("t", "val0"): rng.integers(0, 3, 20)}
    pred = {}
    for (task, fold), truth in y.items():
        wrong = (truth + 1) % 3
        pred[(task, "raw:text", "mlp", fold)] = np.stack([truth, truth])
        pred[(task, "projected:single", "mlp", fold)] = np.stack(
            [np.where(rng.random(len(truth)) < 0.3, wrong, truth) for _ in range(2)])
    ci = _cell_interval({"y": y, "pred": pred}, "t", "mlp", "raw:text", "projected:single")
    assert -0.5 < ci["mean"] < -0.1 and ci["hi"] < 0
    pred[("t", "projected:single", "mlp", "val0")] = np.zeros((2, 5), int)  # never read
    assert _cell_interval({"y": y, "pred": pred}, "t", "mlp", "raw:text",
                          "projected:single") == ci
