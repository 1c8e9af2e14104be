"""Each list of names a config accepts is pinned to the registry the code really uses: a name
the config takes is one the stage can run, and every registered one can be asked for."""

from __future__ import annotations

import typing

import pytest

from adapt import classifiers, encoders
from adapt.config import (
    PROJECTED_MODES,
    SCORE_FAMILIES,
    ConfigError,
    ScoreConfig,
    SearchConfig,
    TrainConfig,
    load_config,
)
from adapt.score.representations import CONCAT, expand_representations
from adapt.train import heads, losses

BASE = {
    "corpus": "c",
    "output": "o",
    "encoders": {"text": "minilm-l6", "image": "efficientnet-lite0"},
}


def test_classifier_names_come_from_the_registry():
    assert classifiers.NAMES == tuple(classifiers.CLASSIFIERS)
    # The tuned probes are asked for by name; the default list is every other classifier.
    assert ScoreConfig().classifiers == [
        c for c in classifiers.CLASSIFIERS if c not in ("logreg_tuned", "svc_tuned")
    ]
    for name in classifiers.NAMES:  # each registered one can be asked for, alone
        assert load_config(data={**BASE, "score": {"classifiers": [name]}}).score.classifiers == [
            name
        ]
        assert SearchConfig(probes=[name]).probes == [name]
    with pytest.raises(ConfigError, match=r"unknown classifier\(s\) \['lda'\]"):
        load_config(data={**BASE, "score": {"classifiers": ["logreg", "lda"]}})
    with pytest.raises(ValueError, match="lda"):
        SearchConfig(probes=["lda"])


def test_every_registered_classifier_builds_and_says_how_it_runs():
    for name, entry in classifiers.CLASSIFIERS.items():
        estimator = classifiers.make_classifier(name, "multiclass", 0)
        assert hasattr(estimator, "fit") and hasattr(estimator, "predict")
        assert entry.cell_s > 0
    assert classifiers.slow_first(["knn", "logreg", "xgboost"]) == ["xgboost", "knn", "logreg"]
    assert set(classifiers.slow_first(list(classifiers.NAMES))) == set(classifiers.NAMES)


def test_loss_names_match_the_registry_the_fit_loop_calls():
    assert set(typing.get_args(TrainConfig.model_fields["loss"].annotation)) == set(losses.LOSSES)
    # Every setting a registered loss takes is a train setting of the same name.
    for name in losses.LOSSES:
        for parameter in losses._parameters(name):
            assert parameter in TrainConfig.model_fields, (name, parameter)


def test_representation_names_match_what_the_score_stage_expands():
    modalities = ["image", "text"]
    expanded = expand_representations(list(SCORE_FAMILIES), modalities)
    assert {r.partition(":")[0] for r in expanded} == set(SCORE_FAMILIES)
    assert [r.partition(":")[2] for r in expanded if r.startswith("projected:")] == list(
        PROJECTED_MODES
    )
    assert f"raw:{CONCAT}" in expanded and f"pca:{CONCAT}" in expanded
    # The projected variants are the head layouts the train stage builds.
    assert tuple(PROJECTED_MODES) == heads.MODES
    assert set(typing.get_args(TrainConfig.model_fields["mode"].annotation)) == set(heads.MODES)
    for rep in expanded:
        assert load_config(data={**BASE, "score": {"representations": [rep]}})


def test_encoder_names_parse_as_the_registry_lists_them():
    for alias, modality in encoders.ALIASES.items():
        assert load_config(data={**BASE, "encoders": {modality: alias}})
    for scheme in encoders.SCHEMES:
        example = "sim:20x64" if scheme == "sim" else f"{scheme}:model"  # sim names a time
        assert encoders.parse_name(example).scheme == scheme
        assert any(form.startswith(f"{scheme}:") for form in encoders.VALID_FORMS)
    with pytest.raises(ConfigError, match="valid forms"):
        load_config(data={**BASE, "encoders": {"text": "sbert:x"}})


def test_renamed_keys_name_their_new_name():
    cases = [
        (
            {"train": {"val_fraction": 0.1}},
            "train: val_fraction is now called early_stopping_fraction",
        ),
        ({"score": {"val_fraction": 0.1}}, "score: val_fraction is now called validation_fraction"),
        (
            {"train": {"search": {"holdout": 0.3}}},
            "train.search: holdout is now called holdout_fraction",
        ),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as e:
            load_config(data={**BASE, **data})
        assert message in str(e.value)
    config = load_config(
        data={
            **BASE,
            "train": {"early_stopping_fraction": 0.1, "search": {"holdout_fraction": 0.3}},
            "score": {"validation_fraction": 0.1},
        }
    )
    assert config.train.early_stopping_fraction == 0.1
    assert config.train.search.holdout_fraction == 0.3
    assert config.score.validation_fraction == 0.1
