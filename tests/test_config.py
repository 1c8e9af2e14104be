"""Configuration: strict keys, every problem reported at once with the key to change, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adapt.config import Config, ConfigError, load_config

BASE = {"corpus": "data/c", "output": "out/x", "encoders": {"text": "minilm-l6"}}
REPO = Path(__file__).resolve().parents[1]


def test_minimal_config_and_shorthand():
    cfg = load_config(data=dict(BASE))
    assert cfg.encoders["text"].name == "minilm-l6" and cfg.encoders["text"].normalize
    assert cfg.required_modalities == ["text"]


def test_all_errors_reported_at_once_with_valid_keys():
    data = {
        **BASE,
        "encoders": {"text": "clip:nope", "audio": "hf:x"},
        "bogus": 1,
        "extract": {"batch_size": 0, "num_wrokers": 2},
    }
    with pytest.raises(ConfigError) as e:
        load_config(data=data)
    msg = str(e.value)
    assert "bogus: unknown key; valid keys here: apply, corpus, encoders" in msg
    assert "extract.num_wrokers: unknown key; valid keys here:" in msg and "num_workers" in msg
    assert "extract.batch_size" in msg and "greater than or equal to 1" in msg
    assert "unknown encoder 'clip:nope'" in msg and "open_clip:ARCH" in msg
    assert "encoders.audio" in msg
    assert msg.count("\n  - ") >= 5


def test_missing_required_keys():
    with pytest.raises(ConfigError) as e:
        load_config(data={"encoders": {"text": "minilm-l6"}})
    assert "corpus: required" in str(e.value) and "output: required" in str(e.value)


def test_overrides_are_typed_and_validated():
    cfg = load_config(
        data=dict(BASE),
        overrides=["extract.batch_size=7", "ray.num_cpus=2", "encoders.image=efficientnet-lite0"],
    )
    assert cfg.extract.batch_size == 7 and cfg.ray.num_cpus == 2 and "image" in cfg.encoders
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(data=dict(BASE), overrides=["extract.batch_size"])
    with pytest.raises(ConfigError, match="extract.batch_size"):
        load_config(data=dict(BASE), overrides=["extract.batch_size=-3"])


def test_required_modality_needs_an_encoder():
    with pytest.raises(ConfigError, match="required_modalities names"):
        load_config(data={**BASE, "extract": {"required_modalities": ["image"]}})


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def shipped_configs():
    return sorted((REPO / "cluster").rglob("*.yaml"))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_job_config_validates(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if isinstance(doc, dict) and "corpus" in doc:  # an adapt job config
            Config.model_validate(doc)


def test_local_paths_are_anchored_to_the_working_directory(tmp_path, monkeypatch):
    """Ray Train workers run elsewhere: a relative output must not follow them there."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(data={**BASE, "output": "out/x", "corpus": "file://data/c"})
    assert cfg.output == str(tmp_path / "out" / "x") and cfg.corpus == str(tmp_path / "data" / "c")
    remote = load_config(data={**BASE, "output": "s3://bucket/out"})
    assert remote.output == "s3://bucket/out"
