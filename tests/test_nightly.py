"""Nightly re-adaptation on local Ray and a moto S3 server: incremental, champion/challenger,
failure safety, and two runs at once."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adapt import layout
from adapt.config import load_config
from adapt.lease import LeaseHeld
from adapt.nightly.champion import Registry
from adapt.nightly.stage import run_nightly
from adapt.splits import fixed_holdout_mask
from adapt.storage import Storage, join
from adapt.train.artifact import load_head
from tests import corpus_fixtures as cf


def _items(n: int, start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        c = i % 3
        # Texts that say the class, so a head has something to learn from tiny encoders.
        out.append(
            {
                "id": f"r{i:04d}",
                "text": ["the cat", "a red dog", "blue car"][c],
                "image": cf.png(c),
                "label": f"c{c}",
                "split": "train",
            }
        )
    return out


def _write(store, uri, rows):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    store.write_bytes(uri, buf.getvalue())


def _config(corpus, output, tiny, endpoint, **nightly):
    return load_config(
        data={
            "corpus": corpus,
            "output": output,
            "storage": {"endpoint_url": endpoint},
            "encoders": {"text": f"hf:{tiny['bert']}", "image": f"hf:{tiny['vit']}"},
            "extract": {"batch_size": 16},
            "train": {
                "num_workers": 0,
                "epochs": 3,
                "batch_size": 32,
                "hidden_dims": [16],
                "out_dim": 8,
                "patience": 3,
                "search": None,
            },
            "nightly": {
                "probe_rows": 4,
                "classifiers": ["logreg"],
                "holdout_fraction": 0.3,
                **nightly,
            },
        }
    )


def test_two_nights_incremental_then_failure_and_lease(
    s3_bucket, moto_server, ray_local, tiny_models, monkeypatch
):
    corpus, output = f"{s3_bucket}/corpus", f"{s3_bucket}/adapt"
    cfg = _config(corpus, output, tiny_models, moto_server, margin=0.0, tolerance=1.0)
    store = Storage(cfg.storage)
    _write(store, join(corpus, "part-000.parquet"), _items(40))
    _write(store, join(corpus, "part-001.parquet"), _items(40, 40))

    first = run_nightly(cfg, store)
    assert first.promoted and first.decision["reason"] == "no champion yet"
    assert first.embedded_now == 80 and first.health["healthy"], first.health
    assert first.health["probe"]["text"]["min"] > 0.999
    reg = Registry(store, output)
    assert reg.champion()["head"] == first.decision["head"]

    # The corpus grows by a new shard and one row changes in an old one.
    # The new shard's rows are in the user's test split: the night's head must not train on them.
    new_rows = [{**r, "split": "test"} for r in _items(6, 80)]
    _write(store, join(corpus, "part-002.parquet"), new_rows)
    changed = _items(40, 40)
    changed[0]["text"] = "the blue cat"
    _write(store, join(corpus, "part-001.parquet"), changed)
    second = run_nightly(cfg, store)
    assert second.embedded_now == 7  # 6 new rows + 1 changed row, nothing else
    assert second.input_rows == 86
    # Drift is checked on the rows of the shards the night redid: 39 of part-001's 40 are the same.
    assert second.health["modalities"]["text"]["unchanged_rows"] == 39
    assert second.decision["champion"] is not None and "challenger" in second.decision
    assert second.version == first.version
    card = load_head(second.decision["head"], store).card
    ids = [f"r{i:04d}" for i in range(86)]
    trains = [i for i, h in zip(ids, fixed_holdout_mask(ids, 0.3), strict=True) if not h]
    assert card["data"]["train_rows"] + card["data"]["val_rows"] == len(
        [i for i in trains if int(i[1:]) < 80]
    )
    history = reg.history()
    assert [h["status"] for h in history] == ["ok", "ok"]
    champion_before = reg.champion()

    # A night that fails in train leaves the champion and history intact, and says where it failed.
    bad = cfg.model_copy(update={"train": cfg.train.model_copy(update={"label_column": "nope"})})
    with pytest.raises(Exception, match="nope"):  # noqa: B017 - whatever train raises, it names it
        run_nightly(bad, store)
    assert reg.champion() == champion_before
    history = reg.history()
    assert (
        len(history) == 3 and history[-1]["status"] == "failed" and history[-1]["stage"] == "train"
    )
    assert reg.lease(60).state()[1]["released"]
    # ...and its finished extract is reused: the next run embeds nothing. Nothing changed since
    # the second night, under its settings: the night ends there, with no Ray and no model.
    from adapt.extract import stage as extract_stage
    from adapt.nightly import stage as nightly_stage

    def no(*args, **kwargs):
        raise AssertionError("a night with nothing new started Ray or loaded a model")

    for target in (nightly_stage, extract_stage):
        monkeypatch.setattr(target, "init_ray", no)
    monkeypatch.setattr(nightly_stage, "embed_in_process", no)
    third = run_nightly(cfg, store)
    assert third.embedded_now == 0 and not third.promoted
    assert third.decision["nothing_new"] and "nothing new since" in third.describe()
    assert third.decision["inputs_key"] == reg.history()[1]["inputs_key"]
    assert reg.champion() == champion_before
    monkeypatch.undo()

    # Two runs at once: the second exits cleanly without touching anything.
    lease = reg.lease(60).acquire()
    try:
        with pytest.raises(LeaseHeld, match="another run holds"):
            run_nightly(cfg, store)
    finally:
        lease.release()
    assert len(reg.history()) == 4
    assert store.exists(
        join(layout.version_root(output, first.version), "embeddings", "_manifest.json")
    )
