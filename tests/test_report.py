"""The score report: its documented JSON schema, the tables, the plots, and report.json last."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from adapt.score.io import write_report
from adapt.score.report.html import render_html
from adapt.score.report.markdown import headline, render_markdown
from adapt.score.report.plots import plot_confusion, plot_embedding_2d, plot_gains, plot_scores
from adapt.score.report.schema import REPORT_SCHEMA, SCHEMA_VERSION, validate_report
from adapt.storage import Storage


def cell(rep: str, clf: str, fold: int | str, f1: float) -> dict:
    return {
        "task": "label",
        "representation": rep,
        "classifier": clf,
        "fold": fold,
        "status": "ok",
        "error": None,
        "dims": 8,
        "macro_f1": f1,
        "micro_f1": f1 + 0.01,
        "accuracy": f1 + 0.01,
        "auroc": 0.9,
        "per_class_f1": {"a": f1, "b": None},
        "fit_s": 0.1,
        "predict_s": 0.01,
        "n_train": 80,
        "n_test": 20,
        "standardized": False,
        "notes": "",
        "worker": 123,
    }


def mean(rep: str, clf: str, f1: float) -> dict:
    return {
        "task": "label",
        "representation": rep,
        "classifier": clf,
        "fold": "mean",
        "status": "ok",
        "n_folds": 2,
        "n_failed": 0,
        "dims": 8,
        "macro_f1": f1,
        "macro_f1_lo": f1 - 0.05,
        "macro_f1_hi": f1 + 0.05,
        "macro_f1_std": 0.03,
        "micro_f1": f1,
        "micro_f1_lo": f1 - 0.05,
        "micro_f1_hi": f1 + 0.05,
        "micro_f1_std": 0.03,
        "accuracy": f1,
        "auroc": None,
        "fit_s": 0.1,
        "predict_s": 0.01,
        "per_class_f1": {"a": f1, "b": f1},
    }


# One gap as the report gives it: its interval, each side's score, the pooled rows.
GAP = {
    "mean": 0.3,
    "lo": 0.2,
    "hi": 0.4,
    "candidate_score": 0.8,
    "baseline_score": 0.5,
    "n_rows": 40,
    "n_folds": 2,
}


@pytest.fixture()
def report() -> dict:
    reps, clfs = ["raw:text", "pca:text", "projected:single"], ["cart", "knn"]
    f1 = {"raw:text": 0.5, "pca:text": 0.55, "projected:single": 0.8}
    results = [cell(r, c, f, f1[r]) for r in reps for c in clfs for f in (0, 1)]
    results += [mean(r, c, f1[r]) for r in reps for c in clfs]
    validation = [{**cell(r, c, "val0", f1[r])} for r in reps for c in clfs]
    validation += [mean(r, c, f1[r]) for r in reps for c in clfs]
    gains = [
        {
            "task": "label",
            "classifier": c,
            "representation": r,
            "baseline": b,
            "baseline_representation": f"{b}:text",
            "metric": "macro_f1",
            **GAP,
        }
        for c in clfs
        for r, b in (("pca:text", "raw"), ("projected:single", "raw"), ("projected:single", "pca"))
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": "r1",
        "created_at": "2025-01-01T00:00:00+00:00",
        "adapt_version": "0.1.0",
        "config": {"corpus": "c", "output": "o"},
        "inputs": {"rows": 40, "encoders": {"text": {"dim": 8}}, "manifest_sha256": "ab" * 32},
        "protocol": {
            "n_folds": 2,
            "only_folds": None,
            "scheme": "kfold",
            "seed": 0,
            "metric": "macro_f1",
            "alpha": 0.05,
            "n_boot": 100,
            "validation_folds": 1,
            "validation_fraction": 0.2,
            "pca_k": 8,
            "classifiers": clfs,
            "representations": reps,
        },
        "tasks": [
            {
                "name": "label",
                "label_column": "label",
                "type": "binary",
                "positive": None,
                "n_rows": 40,
                "n_classes": 2,
                "class_counts": {"a": 20, "b": 20},
                "dropped": {"unlabelled": 0, "classes": {}},
            }
        ],
        "heads": [],
        "results": results,
        "validation": validation,
        "gains": gains,
        "recommendation": {
            "label": {
                "representation": "projected:single",
                "metric": "macro_f1",
                "score": 0.8,
                "scores": {"projected:single": 0.8},
                "by_classifier": {"cart": {"representation": "projected:single", "score": 0.8}},
                "basis": "validation only",
                "pair": {
                    "representation": "projected:single",
                    "classifier": "knn",
                    "score": 0.8,
                    "best_on_validation": ["projected:single", "knn"],
                },
            }
        },
        "pair_verdict": {
            "label": {
                "baseline_pair": ["raw:text", "cart"],
                "baseline_kind": "any classifier",
                **GAP,
            }
        },
        "confusion": {
            "label": {
                "representation": "projected:single",
                "classifier": "knn",
                "matrix": [[16.0, 4.0], [3.0, 17.0]],
                "n_rows": 40,
                "n_fits": 1,
            }
        },
        "deploy": {
            "label": {
                "representation": "projected:single",
                "classifier": "knn",
                "head": None,
                "commands": ["adapt train --config c.yaml --set train.mode=single"],
                "note": "no head under o yet: train one",
            }
        },
        "folds": [],
        "failures": [],
        "timings": {"cells_s": 1.0},
    }


def test_schema_is_valid_json_schema_and_accepts_a_report(report):
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    json.dumps(REPORT_SCHEMA)  # documented as plain JSON
    validate_report(report)


@pytest.mark.parametrize(
    "breakage, where",
    [
        (lambda r: r.pop("results"), "results"),
        (lambda r: r["results"][0].update(fold="first"), "results/0"),
        (lambda r: r["results"][0].update(macro_f1="high"), "results/0"),
        (lambda r: r["validation"][0].update(fold=0), "validation/0"),
        (lambda r: r["gains"][0].update(baseline="tfidf"), "gains/0/baseline"),
        (lambda r: r["tasks"][0].update(type="regression"), "tasks/0/type"),
        (lambda r: r.update(schema_version=99), "schema_version"),
    ],
)
def test_schema_rejects_broken_reports(report, breakage, where):
    broken = copy.deepcopy(report)
    breakage(broken)
    with pytest.raises(ValueError, match="does not match REPORT_SCHEMA") as e:
        validate_report(broken)
    assert where in str(e.value) or where == "results"


def test_headline_and_markdown(report):
    text = headline(report)
    assert "task label (binary, 2 classes, 40 rows)" in text
    assert "0.800*" in text  # the best representation per classifier is marked
    assert "+0.300 [+0.200, +0.400]" in text
    assert "recommended: projected:single" in text and "never test" in text
    assert all(line == line.rstrip() for line in text.splitlines())
    md = render_markdown(report, ["f1_by_representation.png"])
    assert "| cart | 0.500 [0.450, 0.550] | 0.550 [0.500, 0.600] | **0.800 [0.750, 0.850]** |" in md
    assert "| cart | `projected:single` | 0.800 | `pca:text` 0.550 |" in md
    assert "| cart | `projected:single` | +0.300 [+0.200, +0.400] (> 0) | `raw:text` |" in md
    assert "**Recommended: `projected:single`**" in md and "never from test rows" in md
    assert "![f1_by_representation.png](f1_by_representation.png)" in md
    assert "chose their settings by a search" not in md  # no fold searched
    # The verdict first: the pair, its gap to the best raw pair on test rows, how to deploy it.
    assert md.index("## Verdict") < md.index("## How to read it")
    assert (
        "- Task `label`: **use `projected:single` + `knn`**. Test macro_f1 0.800 against 0.500 "
        "for the best raw pair `raw:text` + `cart` (any classifier): +0.300 [+0.200, +0.400] over "
        "40 pooled rows, better than the best raw pair: the 95% interval is above zero." in md
    )
    assert "Run `adapt train --config c.yaml --set train.mode=single`." in md
    # Per class: F1 beside the raw pair's, and the class each is most often mistaken for.
    assert "| a | 20 | 0.800 | 0.500 | b (20% of its rows) |" in md
    assert "| b | 20 | 0.800 | 0.500 | a (15% of its rows) |" in md
    assert "## Time" in md and "cart 0.10 s" in md
    assert (
        "With a classifier of your own: `projected:single` has the best validation macro_f1 "
        "averaged over the 2 classifiers (0.800); per classifier: cart `projected:single`." in md
    )
    # A pair that is the best raw pair itself is not compared with itself.
    same = copy.deepcopy(report)
    same["pair_verdict"]["label"]["baseline_pair"] = ["projected:single", "knn"]
    md = render_markdown(same)
    assert "It is also the best raw pair on the test rows (macro_f1 0.800)." in md
    assert "| class | rows | F1 | most often mistaken for |" in md and "gap" not in md


def test_markdown_says_what_the_in_fold_searches_chose(report):
    def fold(index, temperature):
        trials = [{"overrides": {"temperature": t}, "score": 0.5} for t in (0.1, 0.2)]
        selection = {"overrides": {"temperature": temperature}, "trials": trials}
        return {
            "task": "label",
            "fold": index,
            "representations": {"projected:single": {"search": selection}, "raw:text": {"dims": 8}},
        }

    searched = {**report, "folds": [fold(0, 0.2), fold(1, 0.2), fold("val0", 0.1)]}
    validate_report(searched)
    md = render_markdown(searched)
    assert "`projected:single`: temperature=0.2 (2 of 3); temperature=0.1 (1 of 3)." in md, md


def test_plots_are_pngs(report):
    for png in (plot_scores(report), plot_gains(report), plot_confusion(report)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_confusion({**report, "confusion": {}}) is None
    rng = np.random.default_rng(0)
    samples = {
        "raw:text": (rng.normal(size=(30, 5)), rng.integers(0, 2, 30)),
        "projected:single": (rng.normal(size=(30, 3)), rng.integers(0, 2, size=(30, 2))),
    }
    assert plot_embedding_2d(samples, report["tasks"][0])[:4] == b"\x89PNG"


class RecordingStorage(Storage):
    def __init__(self):
        super().__init__()
        self.order: list[str] = []

    def write_bytes(self, uri: str, data: bytes) -> None:
        self.order.append(uri.rsplit("/", 1)[-1])
        super().write_bytes(uri, data)


def test_write_report_validates_and_writes_json_last(tmp_path, report):
    store = RecordingStorage()
    written = write_report(store, str(tmp_path / "r1"), report)
    assert store.order == [
        "f1_by_representation.png",
        "gains.png",
        "confusion.png",
        "report.md",
        "report.html",
        "report.json",
    ]
    assert [p.rsplit("/", 1)[-1] for p in written] == store.order
    assert json.loads((tmp_path / "r1" / "report.json").read_text()) == report
    bad = copy.deepcopy(report)
    bad.pop("gains")
    with pytest.raises(ValueError, match="gains"):
        write_report(store, str(tmp_path / "r2"), bad)
    assert not (tmp_path / "r2").exists()  # nothing written for an invalid report


def test_html_is_one_self_contained_page(report):
    md = render_markdown(report, ["gains.png"])
    page = render_html(md, "Score report r1", {"gains.png": b"\x89PNG-bytes"})
    assert page.startswith("<!DOCTYPE html>") and "<title>Score report r1</title>" in page
    assert '<img src="data:image/png;base64,iVBORy1ieXRlcw==" alt="gains.png"' in page
    assert "<table>" in page and "<h2>Verdict</h2>" in page
    # Text from the data is escaped, never raw HTML.
    hostile = render_html("a <script>alert(1)</script> b", "t", {})
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
