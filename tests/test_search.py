"""Hyper-parameter selection for the head: config checks, the rows it uses, what it picks, and the
Ray Tune runner against the local one."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from adapt.config import SearchConfig, TrainConfig
from adapt.train import search
from adapt.train.workers import run_tune
from tests.synthetic import buried_signal

DIMS = {"text": 32, "image": 24}
FAST = {
    "hidden_dims": [32],
    "out_dim": 16,
    "batch_size": 64,
    "epochs": 4,
    "torch_threads": 1,
    "skip_pca": 0,
}
# A learning rate too small to move the head from its random start against one that trains:
# kNN and logistic regression on a random projection of buried signal are near chance.
LR_GRID = {"grid": {"lr": [1e-7, 1e-2]}, "probes": ["knn", "logreg"], "folds": 1}


@pytest.fixture(scope="module")
def task():
    return buried_signal(400, DIMS, n_classes=4, seed=3)


# -- config -------------------------------------------------------------------------------------


def test_search_config_checks_keys_values_and_the_paper_preset():
    cfg = TrainConfig()
    assert cfg.search is not None and cfg.search.n_trials == 4
    assert cfg.trial_overrides() == [
        {"temperature": 0.1, "dropout": 0.0},
        {"temperature": 0.1, "dropout": 0.3},
        {"temperature": 0.2, "dropout": 0.0},
        {"temperature": 0.2, "dropout": 0.3},
    ]
    with pytest.raises(ValidationError, match="cannot search over"):
        TrainConfig(search={"grid": {"num_workers": [1, 2]}})
    with pytest.raises(ValidationError, match="list no values"):
        TrainConfig(search={"grid": {"lr": []}})
    # Every combination must be a valid config: a bad value names its trial.
    with pytest.raises(ValidationError, match=r"search trial \{'temperature': -1"):
        TrainConfig(search={"grid": {"temperature": [0.1, -1]}})
    with pytest.raises(ValidationError, match="cross_modal_weight > 0 needs mode"):
        TrainConfig(mode="single", search={"grid": {"cross_modal_weight": [0.0, 0.5]}})
    with pytest.raises(ValidationError, match="at most 256"):
        TrainConfig(search={"grid": {"lr": [1e-3] * 17, "epochs": list(range(1, 18))}})
    # The paper preset is the authors' recipe: no search unless asked for, never over its shape.
    assert TrainConfig(preset="paper").search is None
    assert TrainConfig(preset="paper", search={"grid": {"lr": [1e-3]}}).search.n_trials == 1
    with pytest.raises(ValidationError, match=r"search.grid.dropout"):
        TrainConfig(preset="paper", search={"grid": {"dropout": [0.0, 0.3]}})
    assert TrainConfig(search=None).trial_overrides() == []
    chosen = TrainConfig().with_overrides({"temperature": 0.2})
    assert chosen.temperature == 0.2 and chosen.search is None


# -- rows ---------------------------------------------------------------------------------------


def test_search_rows_are_a_stratified_hash_split_of_the_training_rows():
    y = np.repeat(np.arange(4), 50)
    ids = [f"r{i}" for i in range(len(y))]
    one = SearchConfig(folds=1)
    rows, splits = search.search_splits(y, "multiclass", one, seed=0, ids=ids)
    assert np.array_equal(rows, np.arange(200)) and len(splits) == 1
    fit, held = splits[0]
    assert not set(fit) & set(held) and len(fit) + len(held) == 200
    assert np.bincount(y[held]).tolist() == [10, 10, 10, 10]  # 20% of each class
    # By id, not by position: the same ids in another order hold out the same rows.
    order = np.random.default_rng(0).permutation(200)
    _, (shuffled,) = search.search_splits(y[order], "multiclass", one, 0, [ids[i] for i in order])
    assert {ids[order[i]] for i in shuffled[1]} == {ids[i] for i in held}
    # A sample of at most max_rows, still stratified; k folds partition it.
    rows, splits = search.search_splits(
        y, "multiclass", SearchConfig(max_rows=100, folds=3), 0, ids
    )
    assert len(rows) == 100 and np.bincount(y[rows]).tolist() == [25] * 4
    # A sample of the sample is itself: a caller may read only these rows and search on them.
    again = search.sample_rows(
        y[rows], "multiclass", SearchConfig(max_rows=100), 0, [ids[i] for i in rows]
    )
    assert np.array_equal(again, np.arange(100))
    # Rounding per class never takes more than max_rows.
    odd = np.repeat(np.arange(7), 31)
    assert len(search.sample_rows(odd, "multiclass", SearchConfig(max_rows=45), 0)) <= 45
    held = np.concatenate([h for _, h in splits])
    assert len(splits) == 3 and sorted(held.tolist()) == list(range(100))
    # By default, k-fold while one hold-out would hold fewer than min_held rows.
    assert SearchConfig().n_folds(4999) == 3 and SearchConfig().n_folds(5000) == 1
    assert len(search.search_splits(y, "multiclass", SearchConfig(), 0, ids)[1]) == 3


# -- selection ------------------------------------------------------------------------------------


def test_search_picks_the_setting_that_separates_held_out_rows(task):
    features, labels = task
    cfg = TrainConfig(**FAST, search=LR_GRID)
    selection = search.select(features, labels, cfg, ids=[f"r{i}" for i in range(400)])
    assert selection.overrides == {"lr": 1e-2}
    frozen, trained = selection.trials
    assert [t.overrides for t in selection.trials] == [{"lr": 1e-7}, {"lr": 1e-2}]
    assert set(trained.probes) == {"knn", "logreg"}
    assert trained.score > frozen.score + 0.2, selection.describe()
    assert selection.n_rows == 400 and selection.n_held == 80 and selection.folds == 1
    # The record travels as JSON (report, head card) and comes back the same.
    again = search.Selection.from_json(selection.to_json())
    assert again.overrides == selection.overrides and again.best.score == trained.score
    # Same rows, config and seed: the same scores.
    repeat = search.select(features, labels, cfg, ids=[f"r{i}" for i in range(400)])
    assert [t.score for t in repeat.trials] == [t.score for t in selection.trials]


def test_fit_selected_fits_all_rows_with_the_choice_and_skips_when_it_should(task):
    features, labels = task
    fit, selection = search.fit_selected(features, labels, TrainConfig(**FAST, search=LR_GRID))
    assert selection.overrides == {"lr": 1e-2}
    assert fit.n_train + fit.n_val == 400  # all the rows, not the search's fit rows
    _, none = search.fit_selected(features, labels, TrainConfig(**FAST, search=None))
    assert none.skipped == "no search configured" and none.overrides == {}
    few = {m: x[:40] for m, x in features.items()}
    _, small = search.fit_selected(few, labels[:40], TrainConfig(**FAST, search=LR_GRID))
    assert "fewer than search.min_rows=50" in small.skipped and small.trials == []


def test_a_failing_trial_is_recorded_and_the_others_still_decide(task, monkeypatch):
    features, labels = task

    original = search.fit_head

    def fit_head(inputs, labels, cfg, *args, **kwargs):
        if cfg.lr == 1e-7:
            raise RuntimeError("out of memory")
        return original(inputs, labels, cfg, *args, **kwargs)

    monkeypatch.setattr(search, "fit_head", fit_head)
    selection = search.select(features, labels, TrainConfig(**FAST, search=LR_GRID))
    failed, ok = selection.trials
    assert failed.score is None and "out of memory" in failed.error
    assert selection.overrides == {"lr": 1e-2} and ok.score is not None
    monkeypatch.setattr(
        search, "fit_head", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    )
    with pytest.raises(RuntimeError, match="every search trial failed.*disk full"):
        search.select(features, labels, TrainConfig(**FAST, search=LR_GRID))


def test_ray_tune_runs_the_same_trials_as_the_local_runner(task, ray_local):
    features, labels = task
    cfg = TrainConfig(**FAST, search=LR_GRID)
    ids = [f"r{i}" for i in range(400)]
    local = search.select(features, labels, cfg, ids=ids)
    tuned = search.select(features, labels, cfg, ids=ids, runner=run_tune(0.5))
    assert tuned.overrides == local.overrides == {"lr": 1e-2}
    for a, b in zip(local.trials, tuned.trials, strict=True):
        assert a.overrides == b.overrides
        assert b.score == pytest.approx(a.score, abs=1e-9)
