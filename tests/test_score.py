"""The score stage: tasks and their config, folds shared by every representation, no test row in
any fitted representation, a multi-label task end to end, and the Ray job on a synthetic corpus
where the projection must beat raw features for a tree classifier."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from adapt import cli
from adapt.bench import quality_tables
from adapt.bench.score import synthetic_embeddings, write_embeddings
from adapt.classifiers import CLASSIFIERS
from adapt.config import ConfigError, ScoreConfig, load_config
from adapt.labels import build_task
from adapt.metrics import metrics
from adapt.score.cells import fit_pca, run_cell, score_cell
from adapt.score.io import read_predictions
from adapt.score.plan import make_plan, validation_splits
from adapt.score.report.schema import validate_report
from adapt.score.representations import RepData, build_representations, expand_representations
from adapt.score.stage import run_score
from adapt.score.summary import _guarded, recommend_pair
from adapt.storage import Storage
from adapt.train.fit import fit_head

ENCODERS = {"text": "minilm-l6", "image": "efficientnet-lite0"}
# Small heads that train in a second or two on a few hundred rows (30 epochs of 6 batches); with
# fewer epochs the head has not yet found the rotated signal dimensions.
FAST_TRAIN = {
    "hidden_dims": [64],
    "out_dim": 16,
    "epochs": 30,
    "lr": 3e-3,
    "patience": None,
    "early_stopping_fraction": 0.0,
    "batch_size": 64,
    "search": None,  # tests/test_search.py covers the search; in-fold heads here fit as given
}
# For tests that check plumbing, not quality.
TINY_TRAIN = {**FAST_TRAIN, "epochs": 3}


def make_config(output: str, train: dict = FAST_TRAIN, **score_section) -> dict:
    return {
        "corpus": "synthetic",
        "output": output,
        "encoders": ENCODERS,
        "train": train,
        # One inner validation split unless a test asks for more: 300 rows would get five.
        "score": {"n_boot": 200, "validation_rows": 0, **score_section},
    }


def output_over(corpus: str, tmp_path) -> str:
    """A fresh output folder whose embeddings are the shared corpus's (a symlink, no copy)."""
    out = str(tmp_path / "out")
    os.makedirs(out)
    os.symlink(os.path.join(corpus, "embeddings"), os.path.join(out, "embeddings"))
    return out


@pytest.fixture(scope="module")
def emb():
    return synthetic_embeddings(n_rows=300, n_classes=4, seed=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, emb):
    """The synthetic embeddings written in the extract stage's layout."""
    out = str(tmp_path_factory.mktemp("score-corpus"))
    write_embeddings(Storage(), out, emb)
    return out


# -- configuration ---------------------------------------------------------------------------


def test_default_score_section():
    sc = load_config(data={"corpus": "c", "output": "o", "encoders": ENCODERS}).score
    assert [t.task_name for t in sc.tasks] == ["label"]
    assert sc.representations == ["raw", "pca", "projected"]
    assert sc.classifiers == [c for c in CLASSIFIERS if not c.endswith("_tuned")]


def test_config_rejects_bad_tasks_all_at_once():
    data = make_config(
        "o",
        tasks=[
            {"label_column": "category"},
            {"label_column": "label", "positive": "a", "type": "multilabel"},
            {"label_column": "label", "min_class_count": 0},
            {"label_column": "label", "typo": 1},
        ],
        representations=["raw", "umap"],
        classifiers=["logreg", "svm"],
        n_folds=1,
    )
    with pytest.raises(ConfigError) as e:
        load_config(data=data)
    msg = str(e.value)
    assert "score.tasks.0: label_column must be 'label' or 'label_*'" in msg
    assert "score.tasks.1: positive makes a binary task" in msg
    assert "score.tasks.2.min_class_count" in msg
    assert "score.tasks.3.typo: unknown key" in msg and "positive" in msg
    assert "unknown representation(s) ['umap']" in msg
    assert "unknown classifier(s) ['svm']" in msg and "random_forest" in msg
    assert "score.n_folds" in msg


@pytest.mark.parametrize(
    "section, message",
    [
        ({"tasks": [{"label_column": "label"}, {"label_column": "label"}]}, "used twice"),
        (
            {"tasks": [{"label_column": "label", "positive": "c0"}, {"name": "label=c0"}]},
            "used twice",
        ),
        ({"representations": ["raw:audio"]}, "name no configured modality"),
        ({"classifiers": ["cart"], "classifier_params": {"svc": {"C": 2}}}, "not in classifiers"),
        ({"n_folds": 3, "validation_folds": 4}, "validation_folds"),
        ({"n_folds": 3, "only_folds": [3]}, "only_folds"),
    ],
)
def test_config_rejects_inconsistent_score_sections(section, message):
    with pytest.raises(ConfigError, match=message):
        load_config(data=make_config("o", **section))


def test_unknown_classifier_params_fail_before_any_work(tmp_path, corpus):
    config = load_config(
        data=make_config(corpus, classifier_params={"svc": {"bogus": 1}}, classifiers=["svc"])
    )
    with pytest.raises(ValueError, match="score.classifier_params.svc.*bogus"):
        run_score(config)


# -- tasks -----------------------------------------------------------------------------------


def task_spec(**kw):
    return load_config(data=make_config("o", tasks=[kw])).score.tasks[0]


def test_build_task_drops_rare_classes_and_unlabelled_rows():
    columns = {"label": ["a"] * 5 + ["b"] * 5 + ["c"] * 2 + [None]}
    task = build_task(task_spec(), columns, default_min_count=3)
    assert task.task_type == "binary" and task.classes == ["a", "b"]
    assert task.rows.tolist() == list(range(10))
    assert task.dropped == {"unlabelled": 1, "classes": {"c": 2}}
    task = build_task(task_spec(min_class_count=1), columns, default_min_count=3)
    assert task.task_type == "multiclass" and task.classes == ["a", "b", "c"]


def test_build_task_one_vs_rest_and_multilabel():
    columns = {
        "label": ["a", "b", "c", "a", "b", "c"],
        "label_tags": [["x", "y"], ["x"], [], ["y"], ["x", "z"], ["x"]],
    }
    task = build_task(task_spec(positive="a"), columns, default_min_count=2)
    assert task.task_type == "binary" and task.name == "label=a"
    assert task.classes == ["not a", "a"] and task.y.tolist() == [1, 0, 0, 1, 0, 0]
    assert task.labels[0] == "a" and task.labels[1] == "not a"

    task = build_task(task_spec(label_column="label_tags"), columns, default_min_count=2)
    assert task.task_type == "multilabel" and task.classes == ["x", "y"]  # z: one row, dropped
    assert task.y.tolist() == [[1, 1], [1, 0], [0, 0], [0, 1], [1, 0], [1, 0]]
    assert task.labels[4] == ["x"] and task.dropped["classes"] == {"z": 1}

    tags_ovr = build_task(task_spec(label_column="label_tags", positive="y"), columns, 2)
    assert tags_ovr.y.tolist() == [1, 0, 0, 1, 0, 0]


def test_build_task_errors_name_the_fix():
    columns = {"label": ["a", "b"] * 5, "split": ["train"] * 10}
    with pytest.raises(ValueError, match=r"no label column 'label_x'.*\['label'\]"):
        build_task(task_spec(label_column="label_x"), columns, 2)
    with pytest.raises(ValueError, match="positive class 'q' is in no row.*'a', 'b'"):
        build_task(task_spec(positive="q"), columns, 2)
    with pytest.raises(ValueError, match="fewer than 2 classes"):
        build_task(task_spec(min_class_count=6), columns, 2)
    with pytest.raises(ValueError, match="use type multilabel"):
        build_task(task_spec(type="multiclass"), {"label": [["a"], ["b"]] * 3}, 2)


def test_expand_representations():
    mods = ["image", "text"]
    assert expand_representations(["raw", "pca:text", "projected"], mods, ["h1"]) == [
        "raw:image",
        "raw:text",
        "raw:concat",
        "pca:text",
        "projected:single",
        "projected:per_modality",
        "head:h1",
    ]
    assert expand_representations(["raw", "projected"], ["text"]) == [
        "raw:text",
        "projected:single",
    ]
    with pytest.raises(ValueError, match="no modality 'audio'"):
        expand_representations(["raw:audio"], mods)


# -- folds and leakage -----------------------------------------------------------------------


def test_folds_partition_rows_and_validation_never_touches_test(emb):
    config = load_config(
        data=make_config(
            "o",
            n_folds=4,
            validation_folds=2,
            tasks=[{"label_column": "label"}, {"label_column": "label_tags"}],
        )
    )
    plan = make_plan(config, emb)
    for task in plan.tasks:
        folds = plan.folds[task.name]
        outer = [f for f in folds if f.kind == "test"]
        tests = np.concatenate([f.test for f in outer])
        assert sorted(tests.tolist()) == list(range(len(task.rows)))  # each row tested once
        for f in outer:
            assert not set(f.train) & set(f.test)
            assert (f.rows_test == task.rows[f.test]).all()
        for v in (f for f in folds if f.kind == "validation"):
            outer_train = set(outer[v.index].train)
            assert set(v.train) <= outer_train and set(v.test) <= outer_train
            assert not set(v.train) & set(v.test)
    # The same folds for a different representation list: folds depend on labels and seed only.
    other = load_config(
        data=make_config(
            "o",
            n_folds=4,
            validation_folds=2,
            representations=["raw:text"],
            tasks=[{"label_column": "label"}, {"label_column": "label_tags"}],
        )
    )
    for t, folds in make_plan(other, emb).folds.items():
        for a, b in zip(folds, plan.folds[t], strict=True):
            assert (a.train == b.train).all() and (a.test == b.test).all()


def test_fitted_representations_never_see_test_rows(emb):
    """Replacing the test rows' embeddings by garbage changes nothing fitted on the training
    rows: the PCA, the concatenation's scales and the in-fold head."""
    config = load_config(data=make_config("o", TINY_TRAIN, n_folds=3))
    plan = make_plan(config, emb)
    fold = plan.folds["label"][0]
    reps = ["raw:concat", "pca:text", "pca:concat", "projected:single"]

    def build(features):
        built, info = build_representations(
            features, dict(features), fold, reps, plan.train_cfg, plan.pca_k, 0, plan.ids
        )
        return {r.name: r for r in built}, info

    clean, info = build(emb.features)
    rng = np.random.default_rng(5)
    dirty_features = {m: x.copy() for m, x in emb.features.items()}
    for x in dirty_features.values():
        x[fold.rows_test] = rng.normal(0, 1000, size=(len(fold.rows_test), x.shape[1]))
    dirty, dirty_info = build(dirty_features)
    assert all(r.error is None for r in clean.values())
    assert info["modality_scales"] == dirty_info["modality_scales"]
    for name in ("pca:text", "pca:concat", "projected:single"):
        np.testing.assert_allclose(clean[name].train, dirty[name].train, rtol=1e-5, atol=1e-6)
        assert not np.allclose(clean[name].test, dirty[name].test)
    # The PCA is the one fitted on the training rows alone, with k = the head's output size.
    x_train = emb.features["text"][fold.rows_train]
    pca, pinfo = fit_pca(x_train, plan.pca_k, 0)
    assert pinfo["k"] == plan.pca_k == TINY_TRAIN["out_dim"]
    np.testing.assert_allclose(
        clean["pca:text"].train, pca.transform(x_train), rtol=1e-4, atol=1e-4
    )
    everything, _ = fit_pca(emb.features["text"], plan.pca_k, 0)
    assert not np.allclose(np.abs(everything.components_), np.abs(pca.components_), atol=1e-3)


def test_in_fold_search_reads_the_folds_training_rows_only(emb):
    """An in-fold head's hyper-parameter search holds out rows of the fold's training rows: test
    rows replaced by garbage change neither its trials' scores nor its choice. The representation
    fixes the mode, so a grid over `mode` searches only the other keys."""
    searched = {
        **TINY_TRAIN,
        "search": {
            "grid": {"lr": [1e-7, 3e-3], "mode": ["single", "per_modality"]},
            "min_rows": 20,
        },
    }
    config = load_config(data=make_config("o", searched, n_folds=3))
    plan = make_plan(config, emb)
    fold = plan.folds["label"][0]

    def selection(features):
        built, info = build_representations(
            features,
            dict(features),
            fold,
            ["projected:single"],
            plan.train_cfg,
            plan.pca_k,
            0,
            plan.ids,
        )
        assert built[0].error is None
        return info["representations"]["projected:single"]["search"]

    clean = selection(emb.features)
    assert [t["overrides"] for t in clean["trials"]] == [{"lr": 1e-7}, {"lr": 3e-3}]
    assert clean["n_rows"] == len(fold.train) and clean["skipped"] is None
    assert all(t["score"] is not None for t in clean["trials"])
    rng = np.random.default_rng(6)
    dirty = {m: x.copy() for m, x in emb.features.items()}
    for x in dirty.values():
        x[fold.rows_test] = rng.normal(0, 1000, size=(len(fold.rows_test), x.shape[1]))
    again = selection(dirty)
    assert again["overrides"] == clean["overrides"]
    assert [t["score"] for t in again["trials"]] == [t["score"] for t in clean["trials"]]


def test_seed_dependent_classifiers_average_several_fits(emb):
    """An MLP cell is fitted once per seed; its row and its predictions are those of the fits,
    and a deterministic classifier is fitted once."""
    config = load_config(data=make_config("o", n_folds=2, classifier_seeds=3, seed=4))
    plan = make_plan(config, emb)
    fold = plan.folds["label"][1]
    assert plan.cell_seeds(fold, "mlp") == [5, 1005, 2005]
    assert plan.cell_seeds(fold, "logreg") == [5]
    (raw,), _ = build_representations(
        emb.features, dict(emb.features), fold, ["raw:text"], plan.train_cfg, 8, 0, plan.ids
    )
    classes = ["c0", "c1", "c2", "c3"]
    args = (raw, fold, "multiclass", classes)
    row, y_pred = run_cell(*args, "mlp", None, plan.cell_seeds(fold, "mlp"))
    assert y_pred.shape == (3, len(fold.test)) and row["seeds"] == [5, 1005, 2005]
    x_train, x_test = raw.matrices(fold)
    alone = [
        score_cell(
            x_train,
            fold.y_train,
            x_test,
            fold.y_test,
            "mlp",
            "multiclass",
            classes,
            s,
            keep_predictions=True,
        )
        for s in row["seeds"]
    ]
    assert row["macro_f1_fits"] == [a["macro_f1"] for a in alone]
    assert len(set(row["macro_f1_fits"])) > 1  # the seeds do change the fit
    assert row["macro_f1"] == pytest.approx(np.mean(row["macro_f1_fits"]))
    assert row["accuracy"] == pytest.approx(np.mean([a["accuracy"] for a in alone]))
    for c in classes:
        assert row["per_class_f1"][c] == pytest.approx(
            np.mean([a["per_class_f1"][c] for a in alone])
        )
    np.testing.assert_array_equal(y_pred, np.stack([a["y_pred"] for a in alone]))
    row, y_pred = run_cell(*args, "logreg", None, plan.cell_seeds(fold, "logreg"))
    assert y_pred.shape == (1, len(fold.test)) and "seeds" not in row


def test_failed_representation_becomes_failed_rows_not_a_crash(emb):
    config = load_config(data=make_config("o", n_folds=2))
    fold = make_plan(config, emb).folds["label"][0]
    row, y_pred = run_cell(
        RepData("pca:text", error="ValueError: boom"),
        fold,
        "multiclass",
        ["c0", "c1", "c2", "c3"],
        "cart",
        None,
        [0],
    )
    assert row["status"] == "error" and "boom" in row["error"] and row["macro_f1"] is None
    assert y_pred is None


# -- end to end ------------------------------------------------------------------------------


def test_multilabel_and_one_vs_rest_end_to_end_local(tmp_path, corpus, emb):
    out = output_over(corpus, tmp_path)
    config = load_config(
        data=make_config(
            out,
            TINY_TRAIN,
            executor="local",
            n_folds=3,
            validation_folds=1,
            validation_rows=100,  # one split of fold 0's 200 training rows holds out 40: 3 splits
            run_id="ml",
            tasks=[{"label_column": "label_tags"}, {"label_column": "label", "positive": "c0"}],
            representations=["raw:text", "projected:per_modality"],
            classifiers=["knn", "logreg"],
            predictions=True,
        )
    )
    result = run_score(config)
    report = json.loads((tmp_path / "out" / "reports" / "ml" / "report.json").read_text())
    validate_report(report)
    assert [t["type"] for t in report["tasks"]] == ["multilabel", "binary"]
    rows = [r for r in report["results"] if r["task"] == "label_tags" and r["fold"] != "mean"]
    assert len(rows) == 3 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    assert set(rows[0]["per_class_f1"]) == {"c0", "even", "low"}
    assert all(r["auroc"] is not None for r in rows)
    means = [r for r in report["results"] if r["fold"] == "mean"]
    assert len(means) == 2 * 2 * 2 and all(r["n_folds"] == 3 for r in means)
    gains = [g for g in report["gains"] if g["task"] == "label_tags"]
    assert {g["representation"] for g in gains} == {"projected:per_modality"}
    assert all(g["n_rows"] == 300 for g in gains)  # pooled over every outer fold
    for name in ("label_tags", "label=c0"):
        rec = report["recommendation"][name]
        assert rec["representation"] in ("raw:text", "projected:per_modality")
        assert "validation" in rec["basis"] and "no test row" in rec["basis"]
    assert all(
        isinstance(r["fold"], str) and r["fold"].startswith("val")
        for r in report["validation"]
        if r["fold"] != "mean"
    )
    assert "label_tags" in result.describe() and "recommended" in result.describe()
    # Three inner splits of fold 0 (validation_rows 100, 40 rows each), disjoint training rows.
    assert report["protocol"]["validation_splits"] == {"label_tags": 3, "label=c0": 3}
    assert {r["fold"] for r in report["validation"]} == {"val0", "val0.1", "val0.2", "mean"}
    assert "3 inner validation split(s)" in rec["basis"] and "(120 rows pooled)" in rec["basis"]
    # predictions.npz holds every cell's predictions with its fold's rows, validation included.
    saved = read_predictions(Storage(), result.report_dir)
    held = [saved["ids"][("label_tags", f)] for f in ("val0", "val0.1", "val0.2")]
    assert len(set(np.concatenate(held))) == 120
    assert not set(np.concatenate(held)) & set(saved["ids"][("label_tags", 0)])
    assert len(saved["pred"]) == 2 * 6 * 2 * 2  # tasks x folds (3 + 3 val) x reps x classifiers
    assert saved["pred"][("label_tags", "raw:text", "knn", 0)].shape == (1, 100, 3)
    assert saved["pred"][("label=c0", "projected:per_modality", "logreg", "val0")].ndim == 2
    ids = np.concatenate([saved["ids"][("label_tags", f)] for f in range(3)])
    assert sorted(ids) == sorted(map(str, emb.ids))
    pooled = np.concatenate(
        [saved["pred"][("label_tags", "raw:text", "knn", f)] for f in range(3)], axis=1
    )
    truth = np.concatenate([saved["y"][("label_tags", f)] for f in range(3)])
    # The recommendation derived again from the saved validation predictions is the run's own.
    again = quality_tables.recommend_again(report, result.report_dir)
    assert json.loads(json.dumps(again, default=float)) == report["recommendation"]
    classes = list(report["tasks"][0]["class_counts"])
    gain = next(
        g
        for g in report["gains"]
        if g["task"] == "label_tags" and g["classifier"] == "knn" and g["baseline"] == "raw"
    )
    assert gain["baseline_representation"] == "raw:text"
    assert gain["baseline_score"] == pytest.approx(
        metrics(truth, pooled[0], None, "multilabel", classes)["macro_f1"]
    )


def test_head_given_by_uri_is_scored_and_flagged(tmp_path, corpus, emb):
    from adapt.config import TrainConfig
    from adapt.train.artifact import save_head

    store = Storage()
    fit = fit_head(emb.features, emb.columns["label"], TrainConfig(**TINY_TRAIN), seed=0)
    head_uri = str(tmp_path / "heads" / "given")
    save_head(store, head_uri, fit, {"run_id": "given"})
    out = output_over(corpus, tmp_path)
    config = load_config(
        data=make_config(
            out,
            executor="local",
            n_folds=2,
            validation_folds=0,
            run_id="h",
            heads=[head_uri],
            representations=["raw:text"],
            classifiers=["knn"],
            plots=False,
        )
    )
    result = run_score(config)
    assert result.report["protocol"]["representations"] == ["raw:text", "head:given"]
    assert result.report["heads"][0]["uri"] == head_uri
    assert "test rows" in result.report["heads"][0]["note"]
    md = (tmp_path / "out" / "reports" / "h" / "report.md").read_text()
    assert "head:given" in md and "may have seen rows that are test rows here" in md
    assert result.report["recommendation"] == {}


def test_score_job_on_ray_projection_beats_raw_for_trees(tmp_path, ray_local, capsys):
    """The job as `adapt score` runs it, cells as Ray tasks, on a corpus where the class signal
    sits in a few rotated dimensions under high-variance noise."""
    store = Storage()
    out = str(tmp_path / "out")
    write_embeddings(store, out, synthetic_embeddings(n_rows=480, n_classes=4, seed=3))
    cfg_path = tmp_path / "score.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            make_config(
                out,
                n_folds=4,
                validation_folds=1,
                representations=["raw:concat", "pca:concat", "projected:per_modality"],
                classifiers=["cart", "random_forest", "logreg"],
                classifier_params={"random_forest": {"n_estimators": 50}},
            )
        )
    )
    assert cli.main(["score", "--config", str(cfg_path)]) == 0
    printed = capsys.readouterr().out
    assert "gain over the best raw representation" in printed and "recommended:" in printed

    (run_dir,) = (tmp_path / "out" / "reports").iterdir()
    files = {p.name: p for p in run_dir.iterdir()}
    plots = ("f1_by_representation.png", "gains.png", "confusion.png", "embedding_2d.png")
    assert set(files) == {"report.json", "report.md", "report.html", *plots}
    for png in plots:
        assert files[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        max(p.stat().st_mtime_ns for p in files.values()) == files["report.json"].stat().st_mtime_ns
    )
    report = json.loads(files["report.json"].read_text())
    validate_report(report)
    md = files["report.md"].read_text()
    assert "### macro_f1 by representation and classifier" in md
    assert "### Gains over raw and over PCA" in md and "Recommended" in md

    cells = [r for r in report["results"] if r["fold"] != "mean"]
    assert len(cells) == 4 * 3 * 3 and not report["failures"]
    # Every representation and classifier of a fold saw the same rows.
    for fold in range(4):
        sizes = {(r["n_train"], r["n_test"]) for r in cells if r["fold"] == fold}
        assert len(sizes) == 1
    assert len({r["worker"] for r in cells}) > 1  # spread over more than one worker process
    # The forest draws random numbers: three fits per cell, the row their mean; cart is fitted once.
    assert report["protocol"]["seed_dependent"] == ["random_forest"]
    for r in cells:
        if r["classifier"] == "random_forest":
            assert len(r["seeds"]) == 3 and len(set(r["seeds"])) == 3
            assert r["macro_f1"] == pytest.approx(np.mean(r["macro_f1_fits"]))
        else:
            assert "seeds" not in r
    assert "`random_forest`: fitted 3 times per cell" in md

    wins = [
        g
        for g in report["gains"]
        if g["classifier"] in ("cart", "random_forest")
        and g["baseline"] == "raw"
        and g["representation"] == "projected:per_modality"
    ]
    assert wins and all(g["n_rows"] == 480 for g in wins)
    assert any(g["lo"] > 0 for g in wins), wins
    means = {
        (r["representation"], r["classifier"]): r["macro_f1"]
        for r in report["results"]
        if r["fold"] == "mean"
    }
    means_acc = {
        (r["representation"], r["classifier"]): r["accuracy"]
        for r in report["results"]
        if r["fold"] == "mean"
    }
    assert means[("projected:per_modality", "cart")] > means[("raw:concat", "cart")]
    # The gain averaged over the three classifiers, against each family's best.
    averaged = {
        (g["representation"], g["baseline"]): g
        for g in report["mean_gains"]
        if g["task"] == "label"
    }
    g = averaged[("projected:per_modality", "raw")]
    assert g["classifiers"] == report["protocol"]["classifiers"] and g["n_rows"] == 480
    assert g["lo"] <= g["mean"] <= g["hi"]
    clfs = report["protocol"]["classifiers"]
    raw_avg = max(
        np.mean([means[(r, c)] for c in clfs])
        for r in report["protocol"]["representations"]
        if r.startswith("raw:")
    )
    assert g["baseline_score"] == pytest.approx(raw_avg)
    assert "### Averaged over all 3 classifiers" in md
    # Every recommendation away from raw rests on a validation gain with its interval above zero.
    for rec in report["recommendation"].values():
        for clf, pick in rec["by_classifier"].items():
            gain = pick.get("validation_gain_over_raw")
            if not pick["representation"].startswith("raw:"):
                assert gain["lo"] > 0, (clf, pick)
            if pick.get("kept_raw"):
                assert gain["lo"] <= 0 and pick["best_on_validation"] != pick["representation"]
    assert report["inputs"]["manifest_sha256"] and report["inputs"]["rows"] == 480
    assert report["config"]["score"]["n_folds"] == 4
    # One pair to deploy, picked on validation rows; on test rows, it against the best raw pair.
    pair = report["recommendation"]["label"]["pair"]
    val_means = {
        (r["representation"], r["classifier"]): r["macro_f1"]
        for r in report["validation"]
        if r["fold"] == "mean"
    }
    best = max(val_means, key=lambda k: (val_means[k], k))
    assert pair["best_on_validation"] == list(best)
    assert pair["score"] == pytest.approx(val_means[(pair["representation"], pair["classifier"])])
    if pair.get("kept_raw"):
        assert pair["validation_gain_over_raw_pair"]["lo"] <= 0
        assert pair["representation"].startswith("raw:")
    elif not best[0].startswith("raw:"):
        assert pair["validation_gain_over_raw_pair"]["lo"] > 0
    verdict = report["pair_verdict"]["label"]
    raw_pairs = {k: v for k, v in means.items() if k[0].startswith("raw:")}
    assert verdict["baseline_pair"] == list(max(raw_pairs, key=lambda k: (raw_pairs[k], k)))
    assert verdict["baseline_kind"] == "any classifier"  # no tuned probe in this protocol
    assert verdict["n_rows"] == 480 and verdict["lo"] <= verdict["mean"] <= verdict["hi"]
    # Pooled over the folds' rows, near the mean of the folds' scores.
    pooled_base = verdict["baseline_score"]
    assert pooled_base == pytest.approx(raw_pairs[tuple(verdict["baseline_pair"])], abs=0.02)
    assert verdict["mean"] == pytest.approx(verdict["candidate_score"] - verdict["baseline_score"])
    assert "**Recommended pair** to deploy: `" in md and "best raw pair" in md
    # The verdict comes first, then the evidence.
    rep, clf = pair["representation"], pair["classifier"]
    assert md.index("## Verdict") < md.index("## How to read it") < md.index("## Task `label`")
    assert f"**use `{rep}` + `{clf}`**" in md
    # How to deploy it: no head for a raw pair; a head folder or the commands that build one.
    deploy = report["deploy"]["label"]
    assert (deploy["representation"], deploy["classifier"]) == (rep, clf)
    if rep.startswith("raw:"):
        assert deploy["head"] is None and deploy["commands"] == [] and "no head" in deploy["note"]
    else:
        assert any(str(cfg_path) in c for c in deploy["commands"]), deploy
    # The pair's confusion on the pooled test rows: every row once, in its true class's row.
    conf = report["confusion"]["label"]
    matrix = np.asarray(conf["matrix"])
    counts = report["tasks"][0]["class_counts"]
    assert conf["n_rows"] == 480 and matrix.sum() == pytest.approx(480)
    assert matrix.sum(axis=1) == pytest.approx(list(counts.values()))
    accuracy = np.trace(matrix) / 480
    assert accuracy == pytest.approx(means_acc[(rep, clf)], abs=0.01)
    assert "### Per class: `" in md and "most often mistaken for" in md
    page = files["report.html"].read_text()
    assert page.count("data:image/png;base64,") == len(plots) and 'src="gains.png"' not in page
    assert "<table>" in page and "<h2>Verdict</h2>" in page


def test_failing_cells_are_reported_not_fatal(tmp_path, corpus):
    out = output_over(corpus, tmp_path)
    config = load_config(
        data=make_config(
            out,
            executor="local",
            n_folds=2,
            validation_folds=0,
            run_id="f",
            plots=False,
            representations=["raw:text"],
            classifiers=["knn", "logreg"],
            classifier_params={"logreg": {"max_iter": -1}},  # accepted when built, fails at fit
        )
    )
    result = run_score(config)
    assert result.failed_cells == 2
    means = {r["classifier"]: r for r in result.report["results"] if r["fold"] == "mean"}
    assert means["logreg"]["status"] == "error" and means["logreg"]["macro_f1"] is None
    assert means["knn"]["status"] == "ok" and means["knn"]["n_folds"] == 2
    assert {f["classifier"] for f in result.report["failures"]} == {"logreg"}
    md = (tmp_path / "out" / "reports" / "f" / "report.md").read_text()
    assert "## Failed cells (2)" in md and "max_iter" in md


def test_recommendation_keeps_raw_without_evidence_of_a_gain():
    scores = {"raw:text": 0.70, "raw:concat": 0.72, "pca:concat": 0.73, "projected:single": 0.74}
    seen = []

    def gain(lo):
        def f(base, rep):
            seen.append((base, rep))
            return {"mean": 0.02, "lo": lo, "hi": 0.05}

        return f

    # An interval reaching zero: the best raw one stays.
    pick, note = _guarded(scores, gain(-0.01))
    assert (
        pick == "raw:concat"
        and note["kept_raw"]
        and note["best_on_validation"] == "projected:single"
    )
    assert seen == [("raw:concat", "projected:single")]  # compared against the best raw one
    # A clear gain: the learned one.
    pick, note = _guarded(scores, gain(0.005))
    assert pick == "projected:single" and "kept_raw" not in note
    # Raw best on validation, or nothing to compare with: no test needed.
    assert _guarded({"raw:text": 0.8, "pca:text": 0.7}, gain(-1))[0] == "raw:text"
    assert _guarded({"pca:text": 0.8, "projected:single": 0.7}, gain(-1))[0] == "pca:text"
    # No validation predictions to test on: the best one, as before.
    assert _guarded(scores, lambda b, r: None)[0] == "projected:single"


def test_recommended_pair_needs_a_clear_validation_gain_over_the_best_raw_pair():
    table = {
        ("raw:text", "logreg"): 0.70,
        ("raw:text", "svc_tuned"): 0.75,
        ("projected:single", "knn"): 0.78,
        ("projected:single", "logreg"): None,
    }
    reps, clfs = ["raw:text", "projected:single"], ["logreg", "svc_tuned", "knn"]

    class Pool:
        def __init__(self, lo):
            self.lo, self.seen = lo, []

        def pair_gain(self, base, pair, sc):
            self.seen.append((base, pair))
            return {"mean": 0.03, "lo": self.lo, "hi": 0.06}

    sc = ScoreConfig()
    doubtful = Pool(-0.01)
    pick = recommend_pair(table, reps, clfs, sc, doubtful)
    assert (pick["representation"], pick["classifier"]) == ("raw:text", "svc_tuned")
    assert pick["kept_raw"] and pick["best_on_validation"] == ["projected:single", "knn"]
    assert doubtful.seen == [(("raw:text", "svc_tuned"), ("projected:single", "knn"))]
    clear = recommend_pair(table, reps, clfs, sc, Pool(0.01))
    assert (clear["representation"], clear["classifier"]) == ("projected:single", "knn")
    assert "kept_raw" not in clear and clear["score"] == 0.78
    assert recommend_pair({}, reps, clfs, sc, Pool(0.01)) is None


def test_validation_splits_grow_until_enough_rows_are_held_out():
    def sc(rows):
        return ScoreConfig(validation_rows=rows)

    assert validation_splits([105, 105, 105], 5, sc(1000)) == 4  # a small task: 4 x 315
    assert validation_splits([533, 533, 533], 5, sc(1000)) == 1  # enough in one split
    assert validation_splits([40], 5, sc(10_000)) == 5  # every training row, once
    assert validation_splits([105, 105, 105], 5, sc(0)) == 1
    assert validation_splits([], 5, sc(1000)) == 1


def test_max_rows_scores_a_stratified_sample_and_the_report_says_so(tmp_path, corpus, emb):
    out = output_over(corpus, tmp_path)
    config = load_config(
        data=make_config(
            out,
            TINY_TRAIN,
            executor="local",
            n_folds=3,
            validation_folds=1,
            max_rows=120,
            run_id="sampled",
            representations=["raw:text", "projected:single"],
            classifiers=["knn"],
        )
    )
    plan = make_plan(config, emb)
    (task,) = plan.tasks
    assert len(task.rows) == 120 and task.sample == {
        "rows": 120,
        "of": 300,
        "max_rows": 120,
        "seed": 0,
    }
    assert (np.bincount(task.y) == 30).all()  # 4 balanced classes keep their shares
    sampled = set(task.rows.tolist())
    for fold in plan.folds[task.name]:
        assert set(fold.rows_train) | set(fold.rows_test) <= sampled
    # The stage reads the vectors of the sampled rows only, and draws the same sample.
    from adapt.score.stage import _read_sampled

    read, (read_task,) = _read_sampled(config, Storage())[:2]
    assert len(read) == 120 and read_task.sample == task.sample
    assert sorted(read.ids[read_task.rows]) == sorted(emb.ids[task.rows])
    assert read.labels()[read_task.rows[0]] == read_task.labels[0]
    np.testing.assert_array_equal(
        read.features["text"][read_task.rows], emb.features["text"][task.rows]
    )
    run_score(config)
    report = json.loads((tmp_path / "out" / "reports" / "sampled" / "report.json").read_text())
    validate_report(report)
    assert report["tasks"][0]["sample"]["of"] == 300 and report["tasks"][0]["n_rows"] == 120
    assert report["inputs"]["rows"] == 300
    assert all(g["n_rows"] == 120 for g in report["gains"])  # pooled over the sample's folds
    md = (tmp_path / "out" / "reports" / "sampled" / "report.md").read_text()
    assert "120 rows sampled of 300" in md and "score.max_rows = 120" in md
    # Without a cap (or under it) every row is scored.
    whole = make_plan(load_config(data=make_config(out, TINY_TRAIN, max_rows=None)), emb)
    assert len(whole.tasks[0].rows) == 300 and whole.tasks[0].sample is None
