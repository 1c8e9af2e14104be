"""Unit tests of the train stage's pure core (adapt.train.fit): no Ray, no storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from adapt.config import TrainConfig
from adapt.splits import holdout_mask
from adapt.train.fit import auroc, epoch_batches, fit_head, make_head, project
from adapt.train.heads import InputNorm, fit_skip, skip_moments
from tests.synthetic import buried_signal, knn_accuracy

DIMS = {"text": 32, "image": 24}
# Small and fast settings for tests that check the loop, not the quality.
FAST = {"hidden_dims": [32], "out_dim": 16, "batch_size": 64, "epochs": 4, "torch_threads": 1}


@pytest.fixture(scope="module")
def task():
    features, labels = buried_signal(400, DIMS, n_classes=4, seed=1)
    return features, labels


def weights(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.head.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- config -----------------------------------------------------------------------------------------


def test_paper_preset_is_the_authors_recipe(task):
    cfg = TrainConfig(preset="paper")
    assert (cfg.loss, cfg.temperature, cfg.normalize, cfg.input_norm) == (
        "pairwise_bce",
        0.1,
        False,
        "none",
    )
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.patience, cfg.weight_decay) == (
        1e-3,
        128,
        10,
        None,
        0.0,
    )
    # The authors' head: 768 -> 16 -> 128, 14,480 parameters, per modality.
    head = make_head(cfg, {"text": 768, "image": 768})
    assert head.out_dim == 256
    assert sum(p.numel() for p in head.heads["text"].parameters()) == 14_480
    spec = head.specs["text"]
    assert (spec.hidden_dims, spec.out_dim, spec.normalize, spec.dropout) == ((16,), 128, False, 0)
    # Hidden width min(d // 2, 16) for narrow inputs.
    assert make_head(cfg, {"text": 20}).specs["text"].hidden_dims == (10,)

    features, labels = task
    result = fit_head(features, labels, cfg.model_copy(update={"torch_threads": 1}))
    assert len(result.history) == 10 and result.best_epoch == 10  # no early stopping
    assert result.head.out_dim == 256
    z = project(result.head, features)
    assert z.shape == (400, 256) and z.dtype == np.float32
    assert not np.allclose(np.linalg.norm(z, axis=1), 1.0)  # unnormalised outputs


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValidationError, match="fixes the head shape"):
        TrainConfig(preset="paper", out_dim=64)
    with pytest.raises(ValidationError, match="per_modality"):
        TrainConfig(mode="single", cross_modal_weight=0.5)
    with pytest.raises(ValidationError, match="early_stopping_fraction"):
        TrainConfig(early_stopping_fraction=0.0)
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(epoch=3)
    # A dumped paper config validates again (the implied shape keys are accepted).
    cfg = TrainConfig(preset="paper", epochs=3)
    assert TrainConfig(**cfg.model_dump()) == cfg


# -- split, batches, normalisation ----------------------------------------------------------------------


def test_holdout_is_stratified_and_keyed_by_id():
    y = np.repeat(np.arange(3), [50, 30, 20])
    ids = [f"id-{i}" for i in range(len(y))]
    mask = holdout_mask(y, "multiclass", 0.2, seed=7, ids=ids)
    assert [int(mask[y == c].sum()) for c in range(3)] == [10, 6, 4]
    # Row order does not matter: the same ids are held out after a shuffle.
    perm = np.random.default_rng(0).permutation(len(y))
    mask2 = holdout_mask(y[perm], "multiclass", 0.2, seed=7, ids=[ids[i] for i in perm])
    assert {ids[i] for i in perm[mask2]} == {ids[i] for i in np.flatnonzero(mask)}
    # Another seed, another split; a class of one row always trains.
    assert not np.array_equal(mask, holdout_mask(y, "multiclass", 0.2, seed=8, ids=ids))
    assert not holdout_mask(np.array([0, 1, 1, 1, 1]), "multiclass", 0.5, 0)[0]


def test_epoch_batches_cover_rows_and_fill_fixed_step_counts():
    y = np.arange(103) % 5
    batches = epoch_batches(y, 10, "shuffle", seed=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    assert min(len(b) for b in batches) >= 2  # a lone last row joins the batch before
    fixed = epoch_batches(y, 10, "shuffle", seed=0, n_steps=15)
    assert len(fixed) == 15 and all(len(b) == 10 for b in fixed)
    balanced = epoch_batches(y, 10, "balanced", seed=0)
    for b in balanced:
        assert np.bincount(y[b]).max() >= 2  # every batch holds a positive pair


def test_standardize_is_fitted_on_training_rows_and_round_trips():
    rng = np.random.default_rng(0)
    x = {
        "image": rng.normal(5.0, 30.0, size=(500, 8)).astype(np.float32),
        "text": rng.normal(0.0, 0.05, size=(500, 4)).astype(np.float32),
    }
    norm = InputNorm.fit("standardize", x)
    out = norm.apply({m: torch.from_numpy(v) for m, v in x.items()})
    for v in out.values():
        assert np.allclose(v.mean(0).numpy(), 0, atol=1e-4)
        assert np.allclose(v.std(0, unbiased=False).numpy(), 1, atol=1e-3)
    again = InputNorm.from_tensors("standardize", norm.to_tensors())
    assert all(np.array_equal(again.shift[m], norm.shift[m]) for m in x)
    # Sums of moments over shards give the statistics of the whole.
    halves = [
        InputNorm.moments({m: v[:200] for m, v in x.items()}),
        InputNorm.moments({m: v[200:] for m, v in x.items()}),
    ]
    merged = InputNorm.from_moments("standardize", {m: halves[0][m] + halves[1][m] for m in x})
    assert np.allclose(merged.scale["image"], norm.scale["image"], rtol=1e-5)


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(3):
        score = rng.integers(0, 20, size=2000).astype(np.float32)  # many ties
        target = rng.random(2000) < 0.3
        assert auroc(score, target) == pytest.approx(roc_auc_score(target, score), abs=1e-12)


# -- fitting --------------------------------------------------------------------------------------------


def test_fit_is_reproducible_with_a_seed(task):
    features, labels = task
    cfg = TrainConfig(**FAST, dropout=0.1, sampler="balanced", patience=None)
    a = weights(fit_head(features, labels, cfg, seed=3))
    b = weights(fit_head(features, labels, cfg, seed=3))
    c = weights(fit_head(features, labels, cfg, seed=4))
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_early_stopping_restores_the_best_epoch():
    # Random labels: the head memorises the training rows and the validation loss soon rises.
    rng = np.random.default_rng(0)
    features = {"text": rng.normal(size=(240, 32)).astype(np.float32)}
    labels = [f"c{c}" for c in rng.integers(0, 3, size=240)]
    cfg = TrainConfig(**{**FAST, "epochs": 60}, lr=1e-2, patience=3)
    result = fit_head(features, labels, cfg)
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) < 60, "expected an early stop"
    assert result.state.stopped_early
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert len(losses) == result.best_epoch + cfg.patience
    # Each epoch's batches and dropout masks depend only on the seed and the epoch number, so
    # training exactly best_epoch epochs reproduces the restored weights.
    again = fit_head(
        features, labels, cfg.model_copy(update={"epochs": result.best_epoch, "patience": None})
    )
    assert same_weights(weights(result), weights(again))


def test_batches_without_positive_pairs_are_skipped_and_counted():
    # 30 classes of 2 rows and 4-row shuffled batches: most batches hold no pair.
    rng = np.random.default_rng(0)
    labels = [f"c{i // 2}" for i in range(60)]
    features = {"text": rng.normal(size=(60, 8)).astype(np.float32)}
    cfg = TrainConfig(
        **{**FAST, "batch_size": 4, "epochs": 2, "sampler": "shuffle"},
        patience=None,
        early_stopping_fraction=0.0,
    )
    result = fit_head(features, labels, cfg)
    for h in result.history:
        assert 0 < h["skipped_batches"] < h["steps"]
        assert np.isfinite(h["train_loss"])
    # Every row its own class: nothing can be trained, and that is an error, not a zero loss.
    unique = [f"u{i}" for i in range(60)]
    with pytest.raises(RuntimeError, match="positive pair"):
        fit_head(features, unique, cfg)


def test_multilabel_fit(task):
    features, labels = task
    rng = np.random.default_rng(0)
    multi = [[lab] + (["extra"] if rng.random() < 0.3 else []) for lab in labels]
    for rule in ("overlap", "jaccard"):
        result = fit_head(features, multi, TrainConfig(**FAST, multilabel_rule=rule))
        assert result.task_type == "multilabel"
        assert result.classes == ["c0", "c1", "c2", "c3", "extra"]
        assert all(np.isfinite(h["train_loss"]) for h in result.history)
        assert result.head.skip_dim == 56  # the default 128, clipped to the input width
        assert project(result.head, features).shape == (400, 32 + 56)


@pytest.mark.parametrize(
    "settings",
    [
        {"loss": "pairwise_bce"},
        {"loss": "triplet", "sampler": "balanced"},
        {"cross_modal_weight": 0.5},
        {"mode": "single", "input_norm": "l2"},
    ],
)
def test_other_losses_and_settings_train(task, settings):
    features, labels = task
    result = fit_head(features, labels, TrainConfig(**FAST, **settings))
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert np.isfinite(last) and last < first


def test_given_validation_rows_are_used(task):
    features, labels = task
    train = {m: x[:300] for m, x in features.items()}
    val = {m: x[300:] for m, x in features.items()}
    result = fit_head(train, labels[:300], TrainConfig(**FAST), val, labels[300:])
    assert (result.n_train, result.n_val) == (300, 100)
    with pytest.raises(ValueError, match="val_labels"):
        fit_head(train, labels[:300], TrainConfig(**FAST), val)


def test_projection_separates_classes_that_raw_embeddings_do_not():
    features, labels = buried_signal(800, DIMS, n_classes=4, seed=0)
    train, test = np.arange(800) < 500, np.arange(800) >= 500
    y_train = [lab for lab, t in zip(labels, train, strict=True) if t]
    y_test = [lab for lab, t in zip(labels, test, strict=True) if t]
    raw = np.hstack([features[m] for m in sorted(features)])
    raw_acc = knn_accuracy(raw[train], y_train, raw[test], y_test)

    cfg = TrainConfig(hidden_dims=[64], out_dim=16, epochs=20, torch_threads=1)
    result = fit_head({m: x[train] for m, x in features.items()}, y_train, cfg)
    z = project(result.head, features)
    projected_acc = knn_accuracy(z[train], y_train, z[test], y_test)
    assert raw_acc < 0.5  # chance is 0.25: the noise dimensions dominate
    assert projected_acc > raw_acc + 0.3, (raw_acc, projected_acc)


# -- the skip branch ---------------------------------------------------------------------------


def test_skip_branch_is_the_principal_components_of_the_weighted_inputs():
    # Two modalities of very different scale: each is weighted to total variance 1 before PCA, so
    # the skip branch equals scikit-learn's PCA of the block-weighted concatenation (up to sign).
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    x = {"image": rng.normal(size=(300, 12)) * 40.0, "text": rng.normal(size=(300, 5))}
    x["text"][:, 0] += x["image"][:, 0] / 40.0  # shared structure across modalities
    tensors = {m: torch.from_numpy(v) for m, v in x.items()}
    mean, weight = fit_skip(
        skip_moments(tensors, ["image", "text"]), {"image": 12, "text": 5}, 4, 2
    )
    assert mean.shape == (17,) and weight.shape == (17, 4)

    cat = np.concatenate([x["image"], x["text"]], axis=1)
    w = np.concatenate(
        [
            np.full(12, 1 / np.sqrt(x["image"].var(0).sum())),
            np.full(5, 1 / np.sqrt(x["text"].var(0).sum())),
        ]
    )
    expected = PCA(4).fit_transform(cat * w)
    got = (cat - mean) @ weight
    for j in range(4):  # same directions, one common scale
        corr = np.corrcoef(got[:, j], expected[:, j])[0, 1]
        assert abs(corr) > 0.999
    # Largest entry of each component positive (a deterministic sign), and the branch's mean
    # squared norm equals the number of heads it sits beside (2 here).
    assert (weight[np.abs(weight).argmax(axis=0), np.arange(4)] > 0).all()
    centred = cat - cat.mean(axis=0)
    assert np.mean(np.sum((centred @ weight) ** 2, axis=1)) == pytest.approx(2.0, rel=1e-4)


def test_fit_head_fills_the_skip_branch_and_projects_it(task):
    features, labels = task
    cfg = TrainConfig(**FAST, skip_pca=3)
    fit = fit_head(features, labels, cfg)
    head = fit.head
    assert head.skip_dim == 3 and head.out_dim == 16 * len(features) + 3
    assert torch.count_nonzero(head.skip_weight) > 0
    z = project(head, features)
    assert z.shape == (len(labels), head.out_dim)
    # The skip columns are the fixed linear map of the normalised inputs, nothing trained.
    norm = head.input_norm
    xs = norm.apply({m: torch.from_numpy(v) for m, v in features.items()})
    cat = torch.cat([xs[m] for m in head.modalities], dim=1)
    expected = ((cat - head.skip_mean) @ head.skip_weight).numpy()
    np.testing.assert_allclose(z[:, -3:], expected, rtol=1e-4, atol=1e-5)
    # Off, and under the paper preset, there is no branch.
    assert fit_head(features, labels, TrainConfig(**FAST, skip_pca=0)).head.skip_dim == 0
    assert make_head(TrainConfig(preset="paper"), {"text": 8}).skip_dim == 0
