"""The `adapt` command itself: version, the resolved config, one JSON document per call."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import yaml

from adapt import __version__, cli


def _config(tmp_path, **storage):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "corpus": str(tmp_path / "in"),
                "output": str(tmp_path / "out"),
                "encoders": {"text": "minilm-l6"},
                "storage": storage,
            }
        )
    )
    return str(path)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"adapt {__version__}"


def test_config_show_prints_the_resolved_config_with_secrets_masked(tmp_path, capsys):
    path = _config(tmp_path, endpoint_url="http://user:hunter2@127.0.0.1:9000")
    assert cli.main(["config", "show", "--config", path, "--set", "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 7 and shown["score"]["n_folds"] >= 2  # defaults filled in
    assert (
        "hunter2" not in out
        and shown["storage"]["endpoint_url"] == "http://user:***@127.0.0.1:9000"
    )
    assert cli.masked({"aws_secret_access_key": "x", "hf_token": "", "name": "secret-model"}) == {
        "aws_secret_access_key": "***",
        "hf_token": "",
        "name": "secret-model",
    }
    assert cli.main(["config", "show", "--config", path, "--set", "train.epochs=-1"]) == 2


@dataclass
class _Done:
    stage: str
    report: dict | None = None

    def describe(self) -> str:
        return f"{self.stage} done"


def test_run_json_prints_one_document(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        cli,
        "_stage",
        lambda name: lambda config: _Done(name, {"recommendation": {"t": 1}, "big": [0] * 9}),
    )
    assert cli.main(["run", "--config", _config(tmp_path), "--json", "-q"]) == 0
    document = json.loads(capsys.readouterr().out)  # one document: it parses whole
    assert list(document) == cli.PIPELINE
    assert document["score"] == {"stage": "score", "recommendation": {"t": 1}, "pair_verdict": None}
    assert cli.main(["train", "--config", _config(tmp_path)]) == 0
    assert capsys.readouterr().out == "train done\n"
