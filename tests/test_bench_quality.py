"""The quality benchmark's verdict: the bar is computed from a score report, not asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.bench.quality import _without, corpus_output, main, split_run_id
from adapt.bench.quality_tables import (
    _cell_interval,
    averaged_table,
    bar_table,
    check_bar,
    check_pairs,
    combine_splits,
    pair_table,
    splits_table,
)


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
        {
            "task": "t",
            "representation": r,
            "classifier": c,
            "fold": "mean",
            "macro_f1": v,
            "macro_f1_lo": v - 0.01,
            "macro_f1_hi": v + 0.01,
        }
        for (r, c), v in means.items()
    ]
    gains = [
        {
            "task": "t",
            "representation": "projected:single",
            "baseline": base,
            "baseline_representation": rep,
            "mean": 0.1,
            "lo": gain_lo,
            "hi": 0.2,
        }
        for base, rep in (("raw", "raw:text"), ("pca", "pca:text"))
    ]
    return {
        "protocol": {
            "metric": "macro_f1",
            "classifiers": ["logreg", "cart"],
            "representations": ["raw:text", "raw:concat", "projected:single"],
        },
        "tasks": [{"name": "t"}],
        "results": results,
        "mean_gains": gains,
        "recommendation": {
            "t": {
                "representation": "projected:single",
                "by_classifier": {c: {"representation": r} for c, r in recommended.items()},
            }
        },
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
    y = {
        ("t", 0): rng.integers(0, 3, 60),
        ("t", 1): rng.integers(0, 3, 60),
        ("t", "val0"): rng.integers(0, 3, 20),
    }
    pred = {}
    for (task, fold), truth in y.items():
        wrong = (truth + 1) % 3
        pred[(task, "raw:text", "mlp", fold)] = np.stack([truth, truth])
        pred[(task, "projected:single", "mlp", fold)] = np.stack(
            [np.where(rng.random(len(truth)) < 0.3, wrong, truth) for _ in range(2)]
        )
    ci = _cell_interval({"y": y, "pred": pred}, "t", "mlp", "raw:text", "projected:single")
    assert -0.5 < ci["mean"] < -0.1 and ci["hi"] < 0
    pred[("t", "projected:single", "mlp", "val0")] = np.zeros((2, 5), int)  # never read
    assert _cell_interval({"y": y, "pred": pred}, "t", "mlp", "raw:text", "projected:single") == ci


def _split(means: dict, recs: dict, beats: bool = True) -> dict:
    """One fold split as `write_summary` writes it: the bar's cells and the test means."""
    rows = [
        {"task": "t", "representation": r, "classifier": c, "fold": "mean", "macro_f1": v}
        for (r, c), v in means.items()
    ]
    rows.append(
        {
            "task": "t",
            "representation": "raw:text",
            "classifier": "xgboost",
            "fold": 0,
            "macro_f1": 0.0,
        }
    )  # a fold row, never read as a mean
    cells = {}
    for clf, rec in recs.items():
        top = max(v for (r, c), v in means.items() if c == clf and r.startswith("raw:"))
        cells[clf] = {"recommended": rec, "vs_raw": means[(rec, clf)] - top}
    return {
        "bar": {
            "t": {
                "cells": cells,
                "beats_raw_and_pca": beats,
                "averaged_gains": {"raw": {"mean": 0.05}, "pca": {"mean": 0.02}},
            }
        },
        "results": {"c": rows},
    }


def _two_splits() -> dict:
    a = {
        ("raw:text", "xgboost"): 0.515,
        ("raw:concat", "xgboost"): 0.50,
        ("projected:single", "xgboost"): 0.45,
        ("raw:text", "cart"): 0.45,
        ("raw:concat", "cart"): 0.30,
        ("projected:single", "cart"): 0.40,
    }
    b = {
        ("raw:text", "xgboost"): 0.53,
        ("raw:concat", "xgboost"): 0.50,
        ("projected:single", "xgboost"): 0.54,
        ("raw:text", "cart"): 0.44,
        ("raw:concat", "cart"): 0.30,
        ("projected:single", "cart"): 0.41,
    }
    return {
        "a": _split(a, {"xgboost": "raw:concat", "cart": "projected:single"}),
        "b": _split(b, {"xgboost": "raw:text", "cart": "projected:single"}, beats=False),
    }


def test_combined_splits_average_each_cell_before_the_check():
    combined = combine_splits(_two_splits())
    cells = {c["classifier"]: c for c in combined["cells"]}
    # xgboost: 1.5 points below raw on split a, on raw on b; on the mean 0.515 against raw:text's
    # 0.5225, within the point.
    assert round(cells["xgboost"]["mean_vs_raw"], 4) == -0.0075
    assert cells["xgboost"]["best_raw_representation"] == "raw:text"
    assert combined["per_split"]["a"]["misses"] == 2 and combined["per_split"]["b"]["misses"] == 1
    # cart misses on both splits and on the mean, so the combined check fails on it.
    assert round(cells["cart"]["mean_vs_raw"], 3) == -0.04
    assert not combined["cells_ok_on_mean"] and combined["worst_cell"] == ("t", "cart")
    assert combined["per_split"]["a"]["bar_met"] and not combined["bar_met_every_split"]
    # The noise floor: on split a, split b's best for xgboost (projected:single) misses; its
    # best for cart (raw:text) does not. On split b, split a's best (raw:text) never misses.
    assert combined["per_split"]["a"]["noise_floor"] == 1
    assert combined["per_split"]["b"]["noise_floor"] == 0
    md = splits_table(combined)
    assert (
        "| t | cart | `projected:single` -0.050 | `projected:single` -0.030 | -0.040 "
        "(`raw:text`) (over 1 pt) |" in md
    )
    assert md.index("| t | cart |") < md.index("| t | xgboost |")  # worst first


def test_combine_reads_the_runs_of_each_seed(tmp_path):
    runs = _two_splits()
    (tmp_path / "x.json").write_text(json.dumps(runs["a"]))
    (tmp_path / "x-seed5.json").write_text(json.dumps(runs["b"]))
    assert split_run_id("x", 0, [0, 5]) == "x" and split_run_id("x", 5, [0, 5]) == "x-seed5"
    combined = main(["--out", str(tmp_path), "--run-id", "x", "--seeds", "0,5", "--combine"])
    assert combined["splits"] == ["x", "x-seed5"]
    assert json.loads((tmp_path / "x-splits.json").read_text())["worst_cell"] == ["t", "cart"]
    assert "| x-seed5 | no |" in (tmp_path / "x-splits.md").read_text()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--combine"])
    assert _without(
        ["--seeds", "0,1", "--out", "o", "--seed=3", "--run-id", "r", "--folds", "2"],
        ("--seeds", "--seed", "--run-id"),
    ) == ["--out", "o", "--folds", "2"]


def test_another_text_encoder_gets_its_own_output_folder(tmp_path):
    # One output folder holds the embeddings of one set of encoders (extract refuses a second).
    assert corpus_output(tmp_path, "icd10") == tmp_path / "icd10"
    assert corpus_output(tmp_path, "icd10", "minilm-l6") == tmp_path / "icd10"
    assert corpus_output(tmp_path, "icd10", "mpnet-base") == tmp_path / "icd10-mpnet-base"
    assert corpus_output(tmp_path, "emoji", "hf:/m/x y") == tmp_path / "emoji-hf_m_x_y"


def test_combine_keeps_the_tasks_every_split_scored():
    runs = _two_splits()
    runs["a"]["bar"]["u"] = {**runs["a"]["bar"]["t"], "beats_raw_and_pca": False}
    combined = combine_splits(runs)
    assert {c["task"] for c in combined["cells"]} == {"t"}
    assert combined["per_split"]["a"]["bar_met"] and list(combined["per_split"]["a"]["gains"]) == [
        "t"
    ]


def _with_pair(report: dict, gap: float, lo: float) -> dict:
    report["recommendation"]["t"]["pair"] = {
        "representation": "projected:single",
        "classifier": "logreg_tuned",
        "score": 0.83,
    }
    report["pair_verdict"] = {
        "t": {
            "baseline_pair": ["raw:text", "svc_tuned"],
            "baseline_kind": "tuned probe",
            "mean": gap,
            "lo": lo,
            "hi": gap + 0.02,
            "candidate_score": 0.80 + gap,
            "baseline_score": 0.80,
            "n_rows": 300,
        }
    }
    return report


def test_the_pair_view_needs_a_point_and_an_interval_above_zero():
    base = {"logreg": "projected:single", "cart": "projected:single"}
    won = check_pairs([{"report": _with_pair(_report(0.05, base), 0.015, 0.002)}])["t"]
    assert won["met"] and won["pair"] == ["projected:single", "logreg_tuned"]
    assert won["baseline_pair"] == ["raw:text", "svc_tuned"] and round(won["score"], 3) == 0.815
    md = pair_table({"t": won})
    assert "| t | projected:single + logreg_tuned (0.830) | 0.815 | raw:text + svc_tuned |" in md
    assert "+0.015 [+0.002, +0.035] | yes |" in md
    # Half a point, or an interval reaching zero, misses the target.
    for gap, lo in ((0.005, 0.001), (0.02, -0.001)):
        missed = check_pairs([{"report": _with_pair(_report(0.05, base), gap, lo)}])["t"]
        assert not missed["met"]
    # Over splits: the mean gap counts, and every split's interval must be above zero.
    runs = _two_splits()
    runs["a"]["pairs"] = {"t": won}
    runs["b"]["pairs"] = {"t": {**won, "gap": 0.003, "lo": -0.01, "met": False}}
    combined = combine_splits(runs)
    assert round(combined["pairs"]["t"]["mean_gap"], 4) == 0.009
    assert combined["pairs"]["t"]["splits_above_zero"] == 1 and not combined["pair_target_met"]
    assert "| t | projected:single + logreg_tuned vs raw:text + svc_tuned, +0.015" in splits_table(
        combined
    )
