"""Integration tests of the train stage: local Ray Train, a moto S3 server, a killed job resumed.

Fixtures from conftest.py: `ray_local` (one local Ray, 2 CPUs), `moto_server` / `s3_bucket`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from adapt import layout, schema
from adapt.apply.stage import apply_head
from adapt.bench.procs import descendants, processes
from adapt.config import load_config
from adapt.embeddings import load_embeddings
from adapt.layout import CARD_FILE
from adapt.storage import Storage, join
from adapt.train.artifact import EncoderMismatchError, load_head, save_head
from adapt.train.fit import fit_head, project
from adapt.train.io import search_rows
from adapt.train.plan import plan_run
from adapt.train.stage import run_train
from tests.synthetic import buried_signal, knn_accuracy, write_embeddings

REPO = Path(__file__).resolve().parents[1]
DIMS = {"text": 24, "image": 16}
SMALL_HEAD = {
    "hidden_dims": [32],
    "out_dim": 16,
    "batch_size": 64,
    "torch_threads": 1,
    "search": None,
}
# Two learning rates: one too small to move the head from its random start, one that trains.
LR_SEARCH = {"grid": {"lr": [1e-7, 1e-2]}, "cpus_per_trial": 0.5}


def config_data(output: str, **train) -> dict:
    return {
        "corpus": "unused",
        "output": output,
        "encoders": {"text": "minilm-l6"},
        "train": {**SMALL_HEAD, **train},
    }


def make_config(output: str, **train):
    return load_config(data=config_data(output, **train))


def write_task(store: Storage, output: str, n: int = 600, seed: int = 0, test_share: float = 0.3):
    features, labels = buried_signal(n, DIMS, n_classes=4, seed=seed)
    splits = ["test" if i < int(n * test_share) else "train" for i in range(n)]
    write_embeddings(store, output, features, labels, n_shards=3, splits=splits)
    return features, labels, np.array(splits)


def raw_and_projected_knn(store: Storage, output: str, head_uri: str) -> tuple[float, float]:
    """kNN accuracy on the held-out `test` split: raw concatenation vs the trained head."""
    emb = load_embeddings(store, output)
    test = np.array([s == "test" for s in emb.labels("split")])
    labels = emb.labels()
    y_train = [lab for lab, t in zip(labels, test, strict=True) if not t]
    y_test = [lab for lab, t in zip(labels, test, strict=True) if t]
    raw = np.hstack([emb.features[m] for m in sorted(emb.features)])
    z = load_head(head_uri, store)(emb.features)
    return (
        knn_accuracy(raw[~test], y_train, raw[test], y_test),
        knn_accuracy(z[~test], y_train, z[test], y_test),
    )


# -- no Ray ---------------------------------------------------------------------------------------------


def test_plan_holds_out_test_rows_and_splits_by_id(tmp_path):
    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out)
    plan = plan_run(make_config(out), store)
    assert len(plan.train_ids) + len(plan.val_ids) == 420  # 600 rows, 180 in split "test"
    assert set(plan.train_ids).isdisjoint(plan.val_ids)
    assert plan.run_id == plan_run(make_config(out), store).run_id  # derived, stable
    assert plan.run_id != plan_run(make_config(out, lr=2e-3), store).run_id
    # Resources do not change the run: a job resumed on other hardware finds its checkpoints.
    assert plan.run_id == plan_run(make_config(out, num_workers=4), store).run_id
    # Fit on a given id set (as the score stage does): validation is held out of those rows.
    ids = sorted(plan.train_ids)[:100]
    given = plan_run(make_config(out), store, train_ids=ids)
    assert sorted([*given.train_ids, *given.val_ids]) == ids
    # Given ids replace the split rule (the caller chose them), and unknown ids are an error.
    emb = load_embeddings(store, out)
    test_ids = sorted(
        str(i) for i, s in zip(emb.ids, emb.labels("split"), strict=True) if s == "test"
    )
    with_test = plan_run(make_config(out), store, train_ids=ids + test_ids[:50])
    assert len(with_test.train_ids) + len(with_test.val_ids) == 150
    with pytest.raises(ValueError, match="2 requested training ids are not in the embeddings"):
        plan_run(make_config(out), store, train_ids=[*ids, "nope-1", "nope-2"])


class FileBlocks:
    """Stands in for a worker's dataset shard: the embedding files' rows in blocks of 50."""

    def __init__(self, store: Storage, plan, columns: list[str]) -> None:
        self.store, self.plan, self.columns = store, plan, columns

    def iter_batches(self, batch_size=None, batch_format="pyarrow"):
        for f in self.plan.files[::-1]:  # another order than the driver's
            table = self.store.read_parquet(f, columns=self.columns)
            yield from (table.slice(lo, 50) for lo in range(0, table.num_rows, 50))


def test_workers_find_the_planned_rows_from_the_rule_alone(tmp_path):
    """A worker gets no id lists: from each row's id, label and split it finds the rows the
    driver planned, train and validation, with or without the nightly's fixed hold-out."""
    from adapt.splits import fixed_holdout_mask
    from adapt.train.workers import _materialize

    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out, n=900)
    emb = load_embeddings(store, out)
    for holdout in (None, 0.3):
        plan = plan_run(make_config(out), store, fixed_holdout=holdout)
        sent = plan.for_workers()
        assert len(sent.train_ids) == len(sent.val_ids) == 0 and sent.y_train is None
        columns = [schema.ID, plan.label_column, schema.SPLIT]
        columns += [schema.embedding_column(m) for m in plan.modalities]
        x, y, is_val = _materialize(FileBlocks(store, plan, columns), sent)
        position = {str(i): k for k, i in enumerate(emb.ids)}
        want = np.sort(np.concatenate([plan.train_ids, plan.val_ids]))
        got_rows = [position[i] for i in want]
        assert len(y) == len(want) and int(is_val.sum()) == len(plan.val_ids) > 0
        np.testing.assert_array_equal(x["text"], emb.features["text"][got_rows])
        assert set(want[is_val]) == set(plan.val_ids)
        if holdout:
            assert not fixed_holdout_mask(want, holdout).any()
            assert len(want) < 630 * 0.8  # 900 rows, 270 in split "test", then the hold-out
        else:
            assert len(want) == 630
    # Multi-label rows (lists of labels) are held out by key alone, by one threshold.
    ml = str(tmp_path / "multilabel")
    feats, _ = buried_signal(300, DIMS, n_classes=4, seed=1)
    write_embeddings(store, ml, feats, [[f"t{i % 3}", f"u{i % 2}"] for i in range(300)])
    plan = plan_run(make_config(ml), store)
    assert plan.task_type == "multilabel" and len(plan.rule.val_thresholds) == 1
    columns = [schema.ID, plan.label_column, *(schema.embedding_column(m) for m in plan.modalities)]
    _, y, is_val = _materialize(FileBlocks(store, plan, columns), plan.for_workers())
    assert y.shape == (300, 5) and int(is_val.sum()) == len(plan.val_ids) == 60


def test_a_share_over_the_memory_bound_is_spilled_and_read_back_one_bucket_at_a_time(tmp_path):
    """A worker whose share exceeds train.max_rows_in_memory writes its rows to local disk in
    buckets by id hash: the same training and validation rows as in memory, the same input
    moments, no bucket over the bound, every training row drawn once an epoch (or exactly
    n_steps batches), the same batches again for the same seed."""
    from adapt.train.fit import InputNorm
    from adapt.train.spill import SpilledSplit, remove_worker_folder, worker_folder
    from adapt.train.workers import _materialize, _spill

    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out, n=900)
    plan = plan_run(make_config(out), store)
    columns = [schema.ID, plan.label_column, schema.SPLIT]
    columns += [schema.embedding_column(m) for m in plan.modalities]
    x, y, is_val = _materialize(FileBlocks(store, plan, columns), plan.for_workers())
    bound = 100
    folder = worker_folder("spill-test", 0)
    train, val, moments = _spill(
        FileBlocks(store, plan, columns),
        plan.for_workers(),
        folder,
        bound,
        (len(plan.train_ids), len(plan.val_ids)),
    )
    assert (len(train), len(val)) == (len(plan.train_ids), len(plan.val_ids))
    assert train.n_buckets == 7 and max(train.counts) <= bound  # 504 rows, buckets of ~75
    norm = InputNorm.from_moments("standardize", moments)
    want = InputNorm.fit("standardize", {m: v[~is_val] for m, v in x.items()})
    for m in plan.modalities:
        np.testing.assert_allclose(norm.shift[m], want.shift[m], rtol=1e-6, atol=1e-6)
    side = SpilledSplit(train, norm)

    # Each row is identified by its first text input (continuous values, distinct).
    def seen(batches):
        return [float(v) for bx, _ in batches for v in bx["text"][:, 0]]

    expect = np.sort(norm.apply({"text": torch.from_numpy(x["text"][~is_val])})["text"][:, 0])
    epoch = seen(side.batches(32, "shuffle", seed=3))
    np.testing.assert_allclose(np.sort(epoch), expect, rtol=1e-5)
    assert epoch == seen(side.batches(32, "shuffle", seed=3))
    assert epoch != seen(side.batches(32, "shuffle", seed=4))
    assert len(list(side.batches(32, "balanced", seed=0, n_steps=40))) == 40
    val_side = SpilledSplit(val, norm)
    assert sum(len(b) for _, b in val_side.in_order(50)) == len(plan.val_ids)
    assert len(val_side.first(30)[1]) == 30
    remove_worker_folder(folder)
    assert not os.path.exists(os.path.dirname(folder))


def test_local_run_round_trip_and_rerun(tmp_path):
    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out)
    config = make_config(out, local=True, epochs=15)
    result = run_train(config)
    assert not result.skipped and result.mode == "local"
    card = json.loads(Path(result.card).read_text())
    assert card["run_id"] == result.run_id and card["task_type"] == "multiclass"
    assert card["classes"] == ["c0", "c1", "c2", "c3"]
    assert card["head"]["mode"] == "per_modality" and card["input_norm"] == "standardize"
    assert card["embeddings"]["fingerprints"]["text"]["dim"] == 24
    assert len(card["history"]) == card["epochs_run"] and card["versions"]["torch"]
    assert json.loads((tmp_path / "run/heads/latest.json").read_text())["run_id"] == result.run_id
    raw, projected = raw_and_projected_knn(store, out, result.head)
    assert projected > raw + 0.3, (raw, projected)
    # A second run of the same config finds the card and does nothing.
    again = run_train(config)
    assert again.skipped and again.run_id == result.run_id
    assert "already complete" in again.describe()
    # A copied heads/ folder loads its own copy of the run, with the original gone.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run" / "heads", copy / "heads")
    shutil.rmtree(tmp_path / "run" / "heads" / result.run_id)
    moved = load_head(str(copy))
    assert moved.uri == str(copy / "heads" / result.run_id)
    with pytest.raises(FileNotFoundError, match="holds no completed head"):
        load_head(out)
    # Embeddings of another encoder are refused, with both named; another dtype or library
    # version is the same space.
    fps = card["embeddings"]["fingerprints"]
    other = {**fps, "text": {**fps["text"], "encoder": "hf:other", "weights": "w2"}}
    with pytest.raises(EncoderMismatchError, match="hf:other.*differ in weights"):
        load_head(str(copy), fingerprints=other)
    same = {**fps, "text": {**fps["text"], "dtype": "bfloat16", "versions": {"torch": "9"}}}
    assert load_head(str(copy), fingerprints=same).uri == moved.uri


def test_local_search_chooses_settings_and_a_rerun_reuses_the_choice(tmp_path):
    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out)
    config = make_config(out, local=True, epochs=8, skip_pca=0, search=LR_SEARCH)
    result = run_train(config)
    card = store.read_json(result.card)
    assert card["search"]["overrides"] == {"lr": 1e-2}
    low, high = card["search"]["trials"]
    assert high["score"] > low["score"] + 0.1
    # The card's settings are those the head was fitted with: the choice, no search left.
    assert card["train"]["lr"] == 1e-2 and card["train"]["search"] is None
    assert card["timings"]["search_s"] > 0
    assert "search: 2 trials" in result.describe() and "chose {'lr': 0.01}" in result.describe()
    # The choice is kept beside the run's checkpoints: a run that stopped after the search fits
    # what was chosen then, without searching again (here: a choice edited to tell them apart).
    saved = layout.search_choice(out, result.run_id)
    choice = store.read_json(saved)
    store.write_json(saved, {**choice, "overrides": {"lr": 1e-7}})
    store.delete(result.head, recursive=True)
    again = run_train(config)
    assert not again.skipped and again.run_id == result.run_id
    card = store.read_json(again.card)
    assert card["train"]["lr"] == 1e-7 and card["search"]["overrides"] == {"lr": 1e-7}


def test_search_reads_only_its_sample_of_the_training_rows(tmp_path):
    store = Storage()
    out = str(tmp_path / "run")
    features, labels, _ = write_task(store, out)
    config = make_config(out, search={**LR_SEARCH, "max_rows": 101})
    plan = plan_run(config, store)
    inputs, got_labels, ids = search_rows(store, plan, config.train)
    # At most max_rows (per-class rounding may leave one or two fewer), stratified by class.
    assert 98 <= len(ids) <= 101 and ids == sorted(ids) and set(ids) <= set(plan.train_ids)
    assert all(24 <= n <= 26 for n in Counter(got_labels).values()), Counter(got_labels)
    position = {f"row-{i:06d}": i for i in range(len(labels))}
    rows = [position[i] for i in ids]
    for m in DIMS:
        np.testing.assert_array_equal(inputs[m], features[m][rows])
    assert got_labels == [labels[r] for r in rows]


def test_head_round_trips_through_safetensors(tmp_path):
    features, labels = buried_signal(300, DIMS, seed=2)
    fit = fit_head(features, labels, make_config("x", epochs=3, skip_pca=4).train)
    store = Storage()
    uri = str(tmp_path / "heads" / "h1")
    save_head(store, uri, fit, {"run_id": "h1"})
    applied = load_head(uri)
    expected = project(fit.head, features)
    assert np.array_equal(applied(features), expected)
    # Two heads of 16 plus the 4-wide skip branch, whose buffers travel in the safetensors file.
    assert applied.out_dim == 36 and applied.modalities == ["image", "text"]
    assert torch.equal(applied.head.skip_weight, fit.head.skip_weight)
    assert applied.card["run_id"] == "h1" and applied.card["n_train"] == fit.n_train
    # Tables and data frames with *_embedding columns work too.
    frame = pd.DataFrame({f"{m}_embedding": list(x) for m, x in features.items()})
    assert np.allclose(applied(frame), expected, atol=1e-6)
    # No pickle anywhere in the artifact.
    data = (Path(uri) / "head.safetensors").read_bytes()
    assert b"__metadata__" in data[:4096] and b"\x80\x04\x95" not in data[:64]
    # A missing card means an unfinished run: refuse it.
    (Path(uri) / CARD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="adapt train"):
        load_head(uri)


def test_a_head_travels_through_the_hub_format_and_loads_from_hf_uris(tmp_path):
    """save_pretrained writes the head's own files plus the hub's config and model card;
    from_pretrained and load_head read them back from a folder, and load_head("hf://ORG/NAME")
    from the Hugging Face cache (offline, in a fresh process: the real download code)."""
    from adapt.train.artifact import AppliedHead, HeadNotFoundError

    features, labels = buried_signal(300, DIMS, seed=3)
    fit = fit_head(features, labels, make_config("x", epochs=2).train)
    store = Storage()
    uri = str(tmp_path / "heads" / "h2")
    fps = {
        m: {"encoder": f"hf:enc-{m}", "weights": f"sha256:{m}", "dim": d} for m, d in DIMS.items()
    }
    save_head(store, uri, fit, {"run_id": "h2", "embeddings": {"fingerprints": fps}})
    applied = load_head(uri)
    folder = tmp_path / "pretrained"
    applied.save_pretrained(folder)
    assert {p.name for p in folder.iterdir()} == {
        "head.safetensors",
        "card.json",
        "config.json",
        "README.md",
    }
    card = json.loads((folder / "card.json").read_text())
    assert card["weights"]["uri"] == "head.safetensors" and card["run_id"] == "h2"
    config = json.loads((folder / "config.json").read_text())
    assert config["head_encoders"] == {"image": "hf:enc-image", "text": "hf:enc-text"}
    readme = (folder / "README.md").read_text()
    assert "library_name: adapt" in readme and "`hf:enc-text`" in readme
    assert "Classes (4): c0, c1, c2, c3." in readme and "{{" not in readme
    expected = applied(features)
    again = AppliedHead.from_pretrained(str(folder))
    assert np.array_equal(again(features), expected) and again.card["run_id"] == "h2"
    assert np.array_equal(load_head(str(folder))(features), expected)
    # The same folder as a hub repository in the Hugging Face cache: refs/main -> a snapshot.
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--acme--head" / "snapshots" / ("ab" * 20)
    shutil.copytree(folder, snapshot)
    (cache / "models--acme--head" / "refs").mkdir()
    (cache / "models--acme--head" / "refs" / "main").write_text("ab" * 20)
    np.save(tmp_path / "text.npy", features["text"][:5])
    np.save(tmp_path / "image.npy", features["image"][:5])
    script = (
        "import sys, numpy as np, adapt\n"
        "head = adapt.load_head(sys.argv[1])\n"
        "x = {m: np.load(f'{sys.argv[2]}/{m}.npy') for m in ('text', 'image')}\n"
        "np.save(f'{sys.argv[2]}/out.npy', head(x))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def project_with(uri: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script, uri, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = project_with("hf://acme/head")
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.allclose(np.load(tmp_path / "out.npy"), expected[:5], atol=1e-6)
    missing = project_with("hf://acme/none")
    assert missing.returncode != 0 and "no head at hub repository 'acme/none'" in missing.stderr
    with pytest.raises(ValueError, match="expected hf://ORG/NAME"):
        load_head("hf://just-a-name")
    assert HeadNotFoundError.__mro__[1] is FileNotFoundError


# -- Ray ------------------------------------------------------------------------------------------------


def job(tmp_path: Path, name: str, data: dict) -> tuple[list[str], dict]:
    """The command and environment of the real train job, joined to the test's Ray cluster (as a
    job submitted to a running cluster would be); its init_ray hands AWS_* to the job's workers."""
    import ray

    config_path = tmp_path / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(data))
    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONPATH": str(REPO),
    }
    return [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config_path)], env


def run_job(command: list[str], env: dict, timeout: int = 240) -> str:
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_two_workers_on_s3(ray_local, s3_bucket, moto_server, tmp_path):
    """Two DDP workers on fractional CPUs, reading embeddings from and writing the head to S3;
    each worker's share is over train.max_rows_in_memory, so its rows go to its local disk and
    come back one bucket at a time, and the head still learns."""
    store = Storage()
    out = f"{s3_bucket}/run"
    write_task(store, out, n=600)
    command, env = job(
        tmp_path,
        "s3",
        {
            **config_data(
                out,
                run_id="two-workers",
                num_workers=2,
                num_cpus_per_worker=0.5,
                epochs=12,
                checkpoint_every_epochs=4,
                max_rows_in_memory=60,
            ),
            "storage": {"endpoint_url": moto_server},
        },
    )
    stdout = run_job(command, env)
    head = f"{out}/heads/two-workers"
    assert f"head: {head}" in stdout and "ray (2 workers)" in stdout
    card = store.read_json(join(head, CARD_FILE))
    assert card["n_train"] + card["n_val"] == 420 and card["resumed_from"] == []
    assert card["data"]["rows_on_disk"] is True
    assert card["timings"]["startup_s"] > 0
    pointer = store.read_json(layout.checkpoint_pointer(layout.checkpoints_dir(out, "two-workers")))
    assert pointer["epoch"] == card["epochs_run"]  # the final checkpoint
    raw, projected = raw_and_projected_knn(store, out, head)
    assert projected > raw + 0.3, (raw, projected)


def test_search_runs_as_ray_tune_trials_before_ray_train(ray_local, tmp_path):
    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out)
    config = make_config(
        out, num_workers=1, num_cpus_per_worker=0.5, epochs=8, skip_pca=0, search=LR_SEARCH
    )
    result = run_train(config)
    assert result.mode == "ray (1 worker)"
    card = store.read_json(result.card)
    assert card["search"]["overrides"] == {"lr": 1e-2} and card["train"]["lr"] == 1e-2
    assert [t["error"] for t in card["search"]["trials"]] == [None, None]
    assert store.exists(layout.search_choice(out, result.run_id))
    raw, projected = raw_and_projected_knn(store, out, result.head)
    assert projected > raw + 0.3, (raw, projected)


def test_apply_writes_one_projected_file_per_embeddings_file(ray_local, tmp_path):
    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out, n=300)
    result = run_train(make_config(out, local=True, epochs=2))
    dest = str(tmp_path / "projected")
    applied = apply_head(store, result.head, out, dest, num_cpus=0.5)
    # Two heads of 16 outputs, plus the skip branch clipped to the 24 + 16 input dims.
    assert (applied.files, applied.rows, applied.out_dim) == (3, 300, 32 + 40)
    files = sorted(p.name for p in Path(dest).glob("*.parquet"))
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = store.read_parquet(join(dest, files[0]))
    assert {"id", "label", "split", schema.PROJECTED_EMBEDDING} <= set(table.column_names)
    emb = store.read_parquet(join(out, "embeddings", files[0]))
    expected = load_head(result.head)(emb)
    got = np.stack(table.column(schema.PROJECTED_EMBEDDING).to_numpy(zero_copy_only=False))
    assert np.allclose(got, expected, atol=1e-6)
    assert store.read_json(join(dest, "_manifest.json"))["complete"]
    assert apply_head(store, result.head, out, dest).skipped_files == 3  # re-run: nothing to do
    # A run killed before its manifest: the commit records say which files are whole.
    os.remove(join(dest, "_manifest.json"))
    assert apply_head(store, result.head, out, dest).skipped_files == 3
    # A shard extract committed again since (other bytes under the same file name) is projected
    # again, and only it; a projected file cut short is too.
    manifest_uri = join(out, "embeddings", "_manifest.json")
    manifest = store.read_json(manifest_uri)
    manifest["shards"][1]["committed_at"] = "2030-01-01T00:00:00+00:00"
    store.write_json(manifest_uri, manifest)
    with open(join(dest, files[2]), "r+b") as f:
        f.truncate(100)
    again = apply_head(store, result.head, out, dest)
    assert (again.files, again.skipped_files, again.rows) == (3, 1, 300)
    records = store.read_json(join(dest, "_manifest.json"))["files"]
    assert records[1]["source"]["committed_at"] == "2030-01-01T00:00:00+00:00"
    assert store.read_parquet(join(dest, files[2])).num_rows == records[2]["rows"]


def train_workers() -> list[int]:
    """Ray Train worker processes under this test process (its local Ray runs under it)."""
    procs = processes()
    return [p for p in descendants(os.getpid(), procs) if "RayTrainWorker" in procs[p].cmd]


def wait_for_checkpoint(pointer: Path, proc: subprocess.Popen, log: Path, after: int = 0) -> int:
    """The epoch of the first checkpoint newer than `after` that the running job writes."""
    deadline = time.time() + 150
    while True:
        if pointer.exists():
            epoch = json.loads(pointer.read_text())["epoch"]
            if epoch > after:
                return epoch
        assert proc.poll() is None, f"the job ended early:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def test_killed_job_and_killed_worker_resume_from_the_last_checkpoint(ray_local, tmp_path):
    """The real job entrypoint, killed with SIGKILL after its first checkpoint, then submitted
    again; in that second run a Train worker is killed, and Ray Train's FailureConfig restarts it.
    Both resumes start from the last checkpoint and the run completes every epoch once."""
    store = Storage()
    out = str(tmp_path / "run")
    write_task(store, out, n=1200)
    run_id, epochs = "resume-test", 60
    command, env = job(
        tmp_path,
        "resume",
        config_data(
            out,
            run_id=run_id,
            epochs=epochs,
            patience=None,
            batch_size=32,
            num_workers=1,
            num_cpus_per_worker=0.5,
            max_failures=1,
            max_rows_in_memory=200,  # the worker's rows on its local disk
        ),
    )
    pointer = Path(layout.checkpoint_pointer(layout.checkpoints_dir(out, run_id)))
    card_path = Path(out) / "heads" / run_id / CARD_FILE

    log = tmp_path / "first.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            command, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
        )
    try:
        wait_for_checkpoint(pointer, proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Ray stops the dead job's Train worker when it notices its driver is gone; until then (well
    # under a second) the worker may finish an epoch or two and checkpoint them.
    deadline = time.time() + 60
    while train_workers():
        assert time.time() < deadline, "the killed job's Train worker did not stop"
        time.sleep(0.1)
    killed_at = json.loads(pointer.read_text())["epoch"]
    assert 1 <= killed_at < epochs and not card_path.exists()

    log = tmp_path / "second.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            command, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
        )
    try:
        worker_killed_at = wait_for_checkpoint(pointer, proc, log, after=killed_at)
        workers = train_workers()
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"head: {Path(out) / 'heads' / run_id}" in log.read_text()

    card = json.loads(card_path.read_text())
    first, second = card["resumed_from"]
    assert killed_at <= first < worker_killed_at <= second < epochs
    assert [h["epoch"] for h in card["history"]] == list(range(1, epochs + 1))
    assert card["epochs_run"] == epochs and card["data"]["rows_on_disk"] is True
    # The killed workers' row folders went with the workers that replaced them.
    assert not (Path(tempfile.gettempdir()) / "adapt-train-rows" / run_id).exists()
