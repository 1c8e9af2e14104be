"""The extract stage on a real local Ray, reading from and writing to a moto S3 server."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from adapt import layout
from adapt.config import load_config
from adapt.embeddings import load_embeddings
from adapt.extract import readers
from adapt.extract.io import read_records
from adapt.extract.readers import CorpusError
from adapt.extract.stage import RejectBudgetExceeded, run_extract, survey
from adapt.storage import Storage, join
from tests import corpus_fixtures as cf
from tests.faults import FaultProxy

REPO = Path(__file__).resolve().parents[1]


BASE = {"corpus": "x", "output": "y", "encoders": {"text": "minilm-l6"}}


def make_config(corpus, output, tiny, endpoint=None, **extract):
    data = {
        "corpus": corpus,
        "output": output,
        "encoders": {"text": f"hf:{tiny['bert']}", "image": f"hf:{tiny['vit']}"},
        "extract": {"batch_size": 8, "max_reject_fraction": 0.5, **extract},
    }
    if endpoint:
        data["storage"] = {"endpoint_url": endpoint}
    return load_config(data=data)


def output_rows(store, output):
    ids = []
    for sub in ("embeddings", "rejects"):
        for f in store.list_files(join(output, sub), (".parquet",)):
            ids += store.read_parquet(f, columns=["id"]).column("id").to_pylist()
    return ids


@pytest.mark.parametrize(
    "fmt", ["parquet", "parquet-paths", "webdataset", "folder-jsonl", "folder-csv"]
)
def test_extract_each_format_on_s3(fmt, s3_bucket, moto_server, ray_local, tiny_models):
    store = Storage(
        load_config(
            data={
                "corpus": "x",
                "output": "y",
                "encoders": {"text": "minilm-l6"},
                "storage": {"endpoint_url": moto_server},
            }
        ).storage
    )
    corpus, output = f"{s3_bucket}/corpus", f"{s3_bucket}/run"
    n = cf.write_corpus(store, corpus, fmt)
    result = run_extract(make_config(corpus, output, tiny_models, moto_server), store)

    assert result.input_rows == n and result.embedded + result.rejected == n
    # Found again from listings alone: the signatures the listing gives are those of a request
    # per object, so every shard counts as committed.
    again = survey(make_config(corpus, output, tiny_models, moto_server), store)
    assert not again.pending and len(again.committed) == result.shards
    for shard in again.shards:
        asked = readers.source_signature(store, dataclasses.replace(shard, info=None))
        assert readers.source_signature(store, shard) == asked
    ids = output_rows(store, output)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == n  # every row exactly once
    rejects = {}
    for f in store.list_files(join(output, "rejects"), (".parquet",)):
        t = store.read_parquet(f)
        rows = zip(t.column("reason").to_pylist(), t.column("detail").to_pylist(), strict=True)
        rejects.update(zip(t.column("id").to_pylist(), rows, strict=True))
    for rid, reason in cf.BAD.items():
        assert rejects[rid][0] == reason
    if fmt.startswith("folder"):
        assert rejects["r-missing"] == ("missing_file", "img/absent.png")

    emb = load_embeddings(store, output)
    assert emb.features["text"].shape == (result.embedded, 32)
    assert emb.features["image"].shape == (result.embedded, 32)
    files = store.list_files(join(output, "embeddings"), (".parquet",))
    meta = pq.ParquetFile(store.fs(files[0]).open(store.strip(files[0]))).schema_arrow.metadata
    assert b"adapt.lineage" in meta
    field = pq.read_schema(store.fs(files[0]).open(store.strip(files[0]))).field("text_embedding")
    assert pa.types.is_fixed_size_list(field.type) and field.type.list_size == 32
    assert field.type.value_type == pa.float32()


def test_throttled_image_reads_are_retried_or_fail_the_shard_never_rejected(
    s3_bucket, moto_server, ray_local, tiny_models
):
    """503 SlowDown on image reads (a fault proxy in front of moto): a few are retried and every
    row is embedded; throttling that does not end fails the run without committing the shard,
    and a re-run once the store recovers embeds its rows. No row is ever rejected for it."""
    with FaultProxy(moto_server) as proxy:
        data = {"storage": {"endpoint_url": proxy.url, "max_attempts": 3}}
        store = Storage(load_config(data={**BASE, **data}).storage)
        corpus, output = f"{s3_bucket}/corpus", f"{s3_bucket}/run"
        n = cf.write_corpus(store, corpus, "parquet-paths", n=12, n_shards=2)
        cfg = make_config(corpus, output, tiny_models, proxy.url)
        cfg = cfg.model_copy(update={"storage": store.config})

        proxy.fail("images/r0001.png", times=2)  # transient: within the retries
        first = run_extract(cfg, store)
        assert proxy.faults == 2
        assert first.input_rows == n and first.rejected == len(cf.BAD)
        assert "r0001" in load_embeddings(store, output).ids

        other = f"{s3_bucket}/run2"
        proxy.fail("images/r0002.png")  # throttled for good
        with pytest.raises(Exception, match="r0002"):
            run_extract(cfg.model_copy(update={"output": other}), store)
        committed = store.list_files(join(other, "embeddings", "_commits"), (".json",))
        assert len(committed) <= 1  # the other shard may have committed; not this one
        assert not any(
            "r0002" in store.read_parquet(f, columns=["id"]).column("id").to_pylist()
            for f in store.list_files(join(other, "rejects"), (".parquet",))
        )
        proxy.clear()
        again = run_extract(cfg.model_copy(update={"output": other}), store)
        assert (again.input_rows, again.rejected) == (n, len(cf.BAD))
        assert "r0002" in load_embeddings(store, other).ids


def test_rerun_writes_nothing_new(tmp_path, ray_local, tiny_models):
    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    cf.write_corpus(store, corpus, "parquet", n=20, n_shards=2)
    cfg = make_config(corpus, output, tiny_models)
    first = run_extract(cfg, store)
    before = {f: os.stat(f).st_mtime_ns for f in store.list_files(output)}
    second = run_extract(cfg, store)
    after = {f: os.stat(f).st_mtime_ns for f in store.list_files(output)}
    assert second.skipped_shards == second.shards == 2
    assert (second.embedded, second.rejected) == (first.embedded, first.rejected)
    assert before == after  # no shard file rewritten (only the manifest, which is hidden)


def test_a_lost_or_replaced_output_file_is_embedded_again(tmp_path, ray_local, tiny_models):
    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=30, n_shards=3)
    cfg = make_config(corpus, output, tiny_models)
    first = run_extract(cfg, store)
    files = sorted(store.list_files(join(output, "embeddings"), (".parquet",)))
    lost, cut = files[0], files[1]
    os.remove(lost)  # deleted after its commit
    table = pq.read_table(cut)
    pq.write_table(table.slice(0, table.num_rows - 1), cut)  # replaced by a shorter file

    second = run_extract(cfg, store)
    assert second.skipped_shards == 1  # only the shard whose files are whole is kept
    assert 0 < second.embedded_now < first.embedded_now  # its rows were not embedded again
    assert (second.input_rows, second.embedded, second.rejected) == (
        n,
        first.embedded,
        first.rejected,
    )
    ids = output_rows(store, output)
    assert len(ids) == n and len(set(ids)) == n  # every row back, none twice
    assert len(load_embeddings(store, output)) == first.embedded
    assert len(pq.read_table(join(output, "embeddings")).column("id")) == first.embedded
    # Whole again: every shard is skipped, judged from one listing of the output files' sizes;
    # a record written before records kept the sizes is judged by its file's footer instead.
    records = store.list_files(join(output, "embeddings", "_commits"), (".json",))
    old = store.read_json(records[0])
    assert old["embeddings_bytes"] == os.path.getsize(old["embeddings_file"])
    store.write_json(records[0], {k: v for k, v in old.items() if not k.endswith("_bytes")})
    third = run_extract(cfg, store)
    assert third.skipped_shards == 3 and third.embedded_now == 0


def test_reject_budget_stops_the_job(tmp_path, ray_local, tiny_models):
    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    cf.write_corpus(store, corpus, "parquet", n=6, n_shards=1)
    with pytest.raises(RejectBudgetExceeded, match="2 of 8 rows rejected"):
        run_extract(make_config(corpus, output, tiny_models, max_reject_fraction=0.1), store)


def test_missing_columns_and_empty_corpus_are_clear(tmp_path, ray_local, tiny_models):
    import pyarrow as pa

    store = Storage()
    with pytest.raises(CorpusError, match="no corpus found"):
        run_extract(make_config(str(tmp_path / "nothing"), str(tmp_path / "o"), tiny_models), store)
    (tmp_path / "c").mkdir()
    pq.write_table(pa.table({"name": ["a"], "text": ["x"]}), tmp_path / "c" / "p.parquet")
    with pytest.raises(Exception, match="has no `id` column"):
        run_extract(make_config(str(tmp_path / "c"), str(tmp_path / "o2"), tiny_models), store)


def _write_yaml(path, cfg):
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_killed_run_resumes_with_every_row_once(tmp_path, tiny_models):
    """kill -9 the driver (and its local Ray) after the first shard commits, then run again."""
    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=120, n_shards=6)
    cfg = make_config(corpus, output, tiny_models, shards_per_wave=1, batch_size=4)
    cfg = cfg.model_copy(
        update={"ray": cfg.ray.model_copy(update={"num_cpus": 2, "object_store_memory_mb": 200})}
    )
    path = _write_yaml(tmp_path / "job.yaml", cfg)
    cmd = [sys.executable, str(REPO / "jobs" / "extract.py"), "--config", str(path)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    commits = Path(output) / "embeddings" / "_commits"
    deadline = time.time() + 240
    while time.time() < deadline and not (commits.exists() and any(commits.iterdir())):
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(commits.iterdir()))
    assert 1 <= done_before < 6, "kill landed mid-run"
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    ids = output_rows(store, output)
    assert len(ids) == n and len(set(ids)) == n
    manifest = store.read_json(join(output, "embeddings", "_manifest.json"))
    assert manifest["complete"] and manifest["input_rows"] == n
    assert not store.exists(join(output, "embeddings", "_staging")) or not store.list_files(
        join(output, "embeddings", "_staging")
    )


def test_incremental_run_embeds_only_new_and_changed_rows(tmp_path, ray_local, tiny_models):
    """Rows keyed by id + content hash: new and changed rows are embedded, unchanged ones copied."""
    store = Storage()
    corpus, output = tmp_path / "corpus", str(tmp_path / "out")
    items = cf.rows(24, bad=False)
    cf.write_parquet(store, str(corpus), [dict(r) for r in items], 3)
    cfg = make_config(str(corpus), output, tiny_models)
    first = run_extract(cfg, store)
    assert first.embedded_now == 24
    before = load_embeddings(store, output)
    old_vectors = dict(zip(before.ids, before.features["text"], strict=True))

    # part-001 changes: one text edited, one row added; part-000 and part-002 are untouched.
    part = [dict(r) for r in items[1::3]]
    part[0]["text"] = "a blue moon"
    part.append(
        {"id": "r-new", "text": "the red car", "image": cf.png(3), "label": "c1", "split": "train"}
    )
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(part), buf)
    store.write_bytes(str(corpus / "part-001.parquet"), buf.getvalue().to_pybytes())

    second = run_extract(cfg, store)
    assert second.skipped_shards == 2
    assert second.embedded_now == 2  # the edited row and the new one
    assert second.embedded == 25 and second.input_rows == 25
    after = load_embeddings(store, output)
    new_vectors = dict(zip(after.ids, after.features["text"], strict=True))
    changed = part[0]["id"]
    assert not np.allclose(new_vectors[changed], old_vectors[changed])
    for rid in old_vectors:
        if rid != changed:
            np.testing.assert_array_equal(new_vectors[rid], old_vectors[rid])
    record = store.read_json(join(output, "embeddings", "_commits", "part-001.json"))
    assert (record["reused"], record["newly_embedded"]) == (7, 2)


def test_other_encoders_are_refused_in_the_same_output(tmp_path, ray_local, tiny_models):
    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    cf.write_corpus(store, corpus, "parquet", n=6, n_shards=1)
    run_extract(make_config(corpus, output, tiny_models), store)
    other = load_config(
        data={
            **make_config(corpus, output, tiny_models).model_dump(mode="json"),
            "encoders": {"text": {"name": f"hf:{tiny_models['bert']}", "pooling": "cls"}},
        }
    )
    with pytest.raises(ValueError, match="holds embeddings of other encoders"):
        run_extract(other, store)


def test_optional_modality_missing_keeps_the_row_with_a_null(tmp_path, ray_local, tiny_models):
    store = Storage()
    corpus, output = tmp_path / "corpus", str(tmp_path / "out")
    items = cf.rows(8, bad=False)
    items[2]["image"] = None
    cf.write_parquet(store, str(corpus), items, 1)
    result = run_extract(
        make_config(str(corpus), output, tiny_models, required_modalities=["text"]), store
    )
    assert (result.embedded, result.rejected) == (8, 0)
    table = pq.read_table(tmp_path / "out" / "embeddings" / "part-000.parquet")
    images = dict(
        zip(
            table.column("id").to_pylist(), table.column("image_embedding").to_pylist(), strict=True
        )
    )
    assert images["r0002"] is None and len(images["r0001"]) == 32
    emb = load_embeddings(store, output)  # a head needs every modality: the row is left out
    assert len(emb) == 7 and emb.manifest["dropped_incomplete"] == 1


def test_shards_commit_while_the_encoders_work_on_later_ones(tmp_path, ray_local):
    """One streaming dataset: the first shard is committed before the encoder's last forward
    starts, and every row still lands once with its commit record."""
    from datetime import datetime

    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=96, n_shards=6)
    cfg = load_config(
        data={
            "corpus": corpus,
            "output": output,
            "encoders": {"image": "sim:150x8", "text": "sim:0x8"},
            "extract": {"batch_size": 4, "max_reject_fraction": 0.5, "num_cpus_per_worker": 0.2},
        }
    )
    result = run_extract(cfg, store)
    assert result.embedded + result.rejected == n
    ids = output_rows(store, output)
    assert len(ids) == n and len(set(ids)) == n
    records = [store.read_json(f) for f in store.list_files(join(output, "embeddings", "_commits"))]
    assert len(records) == 6
    first_commit = min(datetime.fromisoformat(r["committed_at"]).timestamp() for r in records)
    enc = result.encoders
    assert enc["encoders"] == 1 and 0 < enc["busy_fraction"] <= 1.0
    assert first_commit < enc["last_forward_start"], "the first commit waited for the stream"


def _physical_operators(ds) -> list[str]:
    from ray.data._internal.util import explain_plan

    text = explain_plan(ds._logical_plan).split("Physical Plan (Optimized)")[1]
    return [line.strip(" +-") for line in text.splitlines()[1:] if line.strip()]


def test_decode_runs_in_its_own_operator_not_in_the_encoder_actor():
    """Ray Data fuses operators of equal resources into one task: the plan keeps read, decode,
    encode and write apart, and a config that would fuse decode into the encoders is refused."""
    from adapt.extract.readers import Shard
    from adapt.extract.stage import _pipeline

    cfg = load_config(data={**BASE, "encoders": {"image": "sim:0"}})
    ds = _pipeline(cfg, Storage(), [Shard(uri="u", format="parquet", key="k")], {}, "w")
    ops = _physical_operators(ds)
    for stage in ("read_shards", "decode_rows", "EncodeWorker", "write_pieces"):
        assert sum(stage in op for op in ops) == 1, ops
        assert [op for op in ops if stage in op][0].count("->") == 0, ops
    with pytest.raises(ValueError, match="fuse decoding into the encoder"):
        load_config(data={**BASE, "extract": {"decode_num_cpus": 1.0, "num_cpus_per_worker": 1}})
    with pytest.raises(ValueError, match="fuse reading and decoding"):
        load_config(data={**BASE, "extract": {"decode_num_cpus": 0.25}})
    # The default steps aside from another stage's value instead.
    auto = load_config(data={**BASE, "extract": {"num_cpus_per_worker": 0.5}}).extract
    assert auto.decode_cpus == 0.45


def test_busy_log_measures_forwards_over_their_span_and_its_steady_state():
    from adapt.extract.stage import BusyLog

    log = BusyLog(slots=1)
    # 20 forwards of 1 s back to back, a 10 s start-up gap after the first one; then, after a
    # 5 s barrier, a second stream's new actor with 10 forwards, busy half of its time.
    t = 0.0
    for k in range(20):
        log.add("a", t, t + 1.0, 10)
        t += 1.0 + (10.0 if k == 0 else 0.0)
    for k in range(10):
        log.add("b", 35.0 + 2 * k, 36.0 + 2 * k, 10)
    s = log.summary()
    assert s["encoders"] == 2 and s["forwards"] == 30
    assert s["busy_s"] == 30.0
    assert s["span_s"] == 54.0  # the barrier between the streams counts as idle
    assert s["busy_fraction"] == 30.0 / 54.0
    # Steady state: the first three and last three forwards go (a's first ones, b's last).
    assert s["steady_busy_fraction"] == 24.0 / (48.0 - 13.0)
    assert s["steady_rows_per_s"] == 240 / (48.0 - 13.0)  # the same forwards' rows, same span
    assert s["last_forward_start"] == 53.0
    two = BusyLog(slots=2)
    two.add("a", 0.0, 10.0)
    two.add("b", 5.0, 10.0)
    assert two.summary()["busy_fraction"] == 15.0 / 20.0


def test_commit_records_come_from_one_listing_and_the_manifest(tmp_path, monkeypatch):
    store, out = Storage(), str(tmp_path / "out")
    shards = [readers.Shard(f"/corpus/s{i}.parquet", "parquet", f"s{i}") for i in range(4)]
    for i in range(4):
        store.write_json(layout.commit_record(out, f"s{i}"), {"shard": f"s{i}", "v": 1})
    copies = [{"shard": f"s{i}", "v": 1} for i in range(4)]
    store.write_json(layout.manifest(out), {"shards": copies})
    past = time.time() - 100
    for i in range(4):
        os.utime(layout.commit_record(out, f"s{i}"), (past, past))
    os.utime(layout.manifest(out), (past + 50, past + 50))
    # s2 was committed again after the manifest (a run killed before its own manifest), and
    # s3's record is gone.
    store.write_json(layout.commit_record(out, "s2"), {"shard": "s2", "v": 2})
    os.remove(layout.commit_record(out, "s3"))
    reads = []
    read = store.read_json_or_none
    monkeypatch.setattr(store, "read_json_or_none", lambda uri: reads.append(uri) or read(uri))
    records = read_records(store, out, shards)
    assert records == {
        "s0": {"shard": "s0", "v": 1},
        "s1": {"shard": "s1", "v": 1},
        "s2": {"shard": "s2", "v": 2},
        "s3": None,
    }
    assert reads == [layout.manifest(out), layout.commit_record(out, "s2")]


def test_busy_log_stays_bounded_over_a_long_run_and_keeps_its_figures():
    from adapt.extract.stage import BusyLog

    fine, coarse = BusyLog(slots=1), BusyLog(slots=1)
    coarse.MAX_RECORDS = 64
    # 2,000 forwards of 1 s with 1 s between them, after a 100 s start-up gap; decode batches
    # of 50 rows every 0.5 s from the start.
    for k in range(2000):
        start = 100.0 + 2.0 * k
        for log in (fine, coarse):
            log.add(f"a{k % 3}", start, start + 1.0, 100)
    for k in range(4000):
        for log in (fine, coarse):
            log.add_decode(0.5 * k + 100.0, 0.5 * k + 100.4, 50)
    assert len(coarse.intervals) <= 2 * coarse.MAX_RECORDS
    assert len(coarse.decodes) <= 2 * coarse.MAX_RECORDS
    a, b = fine.summary(), coarse.summary()
    assert a["forwards"] == b["forwards"] == 2000 and b["encoders"] == 3
    assert b["busy_s"] == a["busy_s"] == 2000.0
    assert b["last_forward_start"] == a["last_forward_start"] == 100.0 + 2.0 * 1999
    for key in (
        "busy_fraction",
        "steady_busy_fraction",
        "steady_rows_per_s",
        "decode_steady_rows_per_s",
    ):
        assert b[key] == pytest.approx(a[key], rel=0.02), key
    assert a["steady_busy_fraction"] == pytest.approx(0.5, rel=0.01)
    assert a["decode_steady_rows_per_s"] == pytest.approx(100.0, rel=0.01)
