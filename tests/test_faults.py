"""The fault suite (`make test-faults`): real processes, real Ray, moto S3 behind a fault proxy.

Each case injects one fault and asserts the invariant it must not break; `-m faults` selects
them, and `make test` runs the quick ones that carry `faults_quick` as well.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapt.config import StorageConfig
from adapt.lease import Lease, LeaseHeld
from adapt.storage import Storage, join
from tests import poison
from tests.faults import FaultProxy

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.faults


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return {}, str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    return {"endpoint_url": request.getfixturevalue("moto_server")}, f"{bucket}/out"


@pytest.fixture
def record(request):
    """`record(injects=..., invariant=..., rows_in=..., embedded_ids=..., rejected_ids=...)` at
    the end of a case (after its assertions) adds its row to the suite's table when
    ADAPT_FAULTS_REPORT names a file. Duplicated: embedded rows whose id is embedded more than
    once; lost: input rows in neither folder (a row repeating an input id is one row of its own,
    in rejects/ as duplicate_id)."""
    import time

    t0 = time.perf_counter()
    figures: dict = {}
    yield figures.update
    path = os.environ.get("ADAPT_FAULTS_REPORT")
    if not path or not figures:
        return
    emb, rej = figures.pop("embedded_ids", None), figures.pop("rejected_ids", None)
    if emb is not None:
        rej = list(rej or [])
        duplicated = len(emb) - len(set(emb))
        figures.update(
            embedded=len(emb),
            rejected=len(rej),
            lost=max(0, figures["rows_in"] - (len(emb) - duplicated) - len(rej)),
            duplicated=duplicated,
        )
    figures.update(case=request.node.name, wall_s=round(time.perf_counter() - t0, 1))
    with open(path, "a") as f:
        f.write(json.dumps(figures) + "\n")


def _run_worker(role: str, args: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run a `tests.fault_workers` role to its end; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "tests.fault_workers", role, json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _spawn(role: str, args: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fault_workers", role, json.dumps(args)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_lease_race_eight_processes_never_overlap(where, tmp_path, record):
    """Eight processes take the lease in turns, two of them dying while they hold it: no two
    hold intervals overlap, and every process gets all its rounds."""
    storage, output = where
    folder = join(output, "lease")
    log = tmp_path / "holds.jsonl"
    procs = [
        _spawn(
            "lease",
            {
                "storage": storage,
                "folder": folder,
                "log": str(log),
                "seed": i,
                "rounds": 3,
                "ttl_s": 30,
                "hold_s": 0.05,
                "crash": i < 2,
            },
        )
        for i in range(8)
    ]
    for p in procs:
        assert p.wait(timeout=240) == 0
    holds = sorted(
        (json.loads(line) for line in log.read_text().splitlines()), key=lambda h: h["start"]
    )
    assert len(holds) == 24
    for before, after in itertools.pairwise(holds):
        assert after["start"] >= before["end"], (before, after)
    # Free at the end: the dead holders were taken over, the live ones released.
    Lease(Storage(StorageConfig(**storage)), folder, ttl_s=5).acquire().release()
    record(
        injects=f"8 processes x 3 rounds on one lease ({'s3' if storage else 'disk'}), 2 die holding it",
        invariant=f"hold intervals never overlap: {len(holds)} holds, 0 overlaps",
    )


@pytest.mark.faults_quick
def test_lost_reply_to_the_conditional_put(moto_server, s3_bucket, record):
    """The store applies the lease's conditional PUT but the reply is lost; the client's retry
    gets 412. The run must know the lease is its own, not refuse itself as held by another."""
    with FaultProxy(moto_server) as proxy:
        store = Storage(StorageConfig(endpoint_url=proxy.url, max_attempts=4))
        folder = f"{s3_bucket}/lost/lease"
        proxy.fail("000000000001.json", times=1, kind="lost_reply", method="PUT")
        lease = Lease(store, folder, ttl_s=60).acquire()
        assert proxy.by_kind["lost_reply"] == 1
        assert lease.generation == 1 and lease.state()[1]["token"] == lease._token
        proxy.fail("000000000002.json", times=1, kind="lost_reply", method="PUT")
        lease.renew()
        assert lease.generation == 2
        with pytest.raises(LeaseHeld, match="another run holds"):
            Lease(store, folder, ttl_s=60).acquire()
        lease.release()
        Lease(store, folder, ttl_s=60).acquire().release()
        record(
            injects="the reply to the lease's conditional PUT lost (take, then renew)",
            invariant="the run knows the lease is its own; another run is refused",
        )


def _extract_config(corpus: str, output: str, tiny: dict, **extract):
    from adapt.config import load_config

    return load_config(
        data={
            "corpus": corpus,
            "output": output,
            "encoders": {"text": f"hf:{tiny['bert']}", "image": f"hf:{tiny['vit']}"},
            "extract": {
                "batch_size": 16,
                "max_reject_fraction": 1.0,
                "required_modalities": ["text"],
                **extract,
            },
        }
    )


def _rows_out(store: Storage, output: str) -> tuple[list[str], dict[str, str]]:
    """(embedded ids, {rejected id: reason}) read from the output folders."""
    import pyarrow.parquet as pq

    embedded = []
    for f in store.list_files(join(output, "embeddings"), (".parquet",)):
        embedded += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    rejected = {}
    for f in store.list_files(join(output, "rejects"), (".parquet",)):
        t = pq.read_table(f)
        for rid, reason in zip(
            t.column("id").to_pylist(), t.column("reason").to_pylist(), strict=True
        ):
            assert rid not in rejected, rid
            rejected[rid] = reason
    return embedded, rejected


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "kind",
    [pytest.param("folder", marks=pytest.mark.faults_quick), "parquet", "webdataset"],
)
def test_poison_corpus_quarantines_every_bad_row(kind, tmp_path, ray_local, tiny_models, record):
    """Every bad row of item 6 and 7 (wrong types, invalid UTF-8, extra CSV fields, paths out of
    the corpus, /dev/zero, a 20k x 20k PNG, missing ids, mixed label kinds, repeated ids,
    WebDataset names that repeat in two folders) ends in rejects/ with its reason; every good
    row is embedded; nothing is lost or twice."""
    from collections import Counter

    import pandas as pd

    from adapt.extract.stage import run_extract
    from adapt.extract.validate import REASONS

    corpus = tmp_path / "corpus"
    expected = poison.CORPORA[kind](corpus)
    output = str(tmp_path / "out")
    result = run_extract(_extract_config(str(corpus), output, tiny_models))
    embedded, rejected = _rows_out(Storage(), output)
    assert rejected == expected
    assert set(rejected.values()) <= set(REASONS)
    assert len(embedded) == len(set(embedded)) == poison.GOOD_ROWS[kind]
    assert not set(embedded) & set(rejected) - {"g0001", "a0005"}  # duplicates: the first is kept
    assert result.input_rows == len(embedded) + len(rejected)
    assert result.rejected_by_reason == dict(sorted(Counter(expected.values()).items()))
    assert len(pd.read_parquet(join(output, "embeddings"))) == len(embedded)
    record(
        injects=f"poison {kind} corpus: {', '.join(sorted(set(expected.values())))}",
        invariant="each bad row in rejects/ with its reason, every good row embedded",
        rows_in=result.input_rows,
        embedded_ids=embedded,
        rejected_ids=list(rejected),
    )


def _yaml(path: Path, cfg) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _driver(stage: str, config: Path, log: Path) -> subprocess.Popen:
    """A stage's job script as `ray job submit` runs it, in its own session (killable whole)."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / f"{stage}.py"), "--config", str(config)],
        cwd=REPO,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _small_ray(cfg):
    ray = cfg.ray.model_copy(update={"num_cpus": 2, "object_store_memory_mb": 200})
    return cfg.model_copy(update={"ray": ray})


def _wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    import time

    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the point waited for")
        if time.time() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.1)


def test_extract_under_503s_resets_lost_replies_and_slow_replies(
    s3_bucket, moto_server, ray_local, tiny_models, record
):
    """Every kind of transient fault on every kind of request: every readable row is embedded
    and the only rejects are the corpus's own bad rows, none for a transient error."""
    from adapt.embeddings import load_embeddings
    from adapt.extract.stage import run_extract
    from tests import corpus_fixtures as cf

    with FaultProxy(moto_server) as proxy:
        store = Storage(StorageConfig(endpoint_url=proxy.url, max_attempts=10))
        corpus, output = f"{s3_bucket}/corpus", f"{s3_bucket}/run"
        n = cf.write_corpus(store, corpus, "parquet-paths", n=24, n_shards=3)
        proxy.fail("/", kind="503", every=7)
        proxy.fail("/", kind="reset", method="GET", every=11)
        proxy.fail("/", kind="lost_reply", method="PUT", every=5)
        proxy.fail("images/", kind="slow", every=3, delay_s=0.3)
        cfg = _extract_config(corpus, output, tiny_models, batch_size=8)
        cfg = cfg.model_copy(update={"storage": store.config})
        result = run_extract(cfg, store)
        assert min(proxy.by_kind.values()) > 0, proxy.by_kind
        proxy.clear()
        embedded, rejected = _rows_out(store, output)
        assert rejected == cf.BAD
        assert len(embedded) == len(set(embedded)) == n - len(cf.BAD) == result.embedded
        assert len(load_embeddings(store, output)) == n - len(cf.BAD)
        record(
            injects="503 every 7th request, reset every 11th GET, lost reply every 5th PUT, "
            f"slow image reads ({proxy.faults} faults)",
            invariant="every readable row embedded, none rejected for a transient error",
            rows_in=n,
            embedded_ids=embedded,
            rejected_ids=list(rejected),
        )


def test_two_overlapping_extract_drivers_then_a_third(tmp_path, tiny_models, record):
    """A second driver on an output being written stops at once and changes nothing; a third
    that waits for the lease runs after the first and has nothing left to embed."""
    from tests import corpus_fixtures as cf

    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=90, n_shards=6)
    cfg = _small_ray(_extract_config(corpus, output, tiny_models, shards_per_wave=1, batch_size=4))
    first = _driver("extract", _yaml(tmp_path / "a.yaml", cfg), tmp_path / "a.log")
    lease = Lease(store, join(output, "embeddings", "_lease"))
    commits = Path(output) / "embeddings" / "_commits"
    _wait_for(lambda: commits.exists() and any(commits.iterdir()), first)
    second = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "extract.py"), "--config", str(tmp_path / "a.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode != 0 and "another run holds" in second.stderr, second.stderr[-2000:]
    waiting = cfg.model_copy(
        update={"extract": cfg.extract.model_copy(update={"wait_for_lease_s": 600})}
    )
    third = _driver("extract", _yaml(tmp_path / "c.yaml", waiting), tmp_path / "c.log")
    assert first.wait(timeout=400) == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert third.wait(timeout=400) == 0, (tmp_path / "c.log").read_text()[-3000:]
    assert "(0 by this run)" in (tmp_path / "c.log").read_text()
    embedded, rejected = _rows_out(store, output)
    assert len(embedded) == len(set(embedded)) and len(embedded) + len(rejected) == n
    assert lease.state()[1]["released"]
    record(
        injects="a second extract driver on a live output, a third waiting for the lease",
        invariant="the second stops, changing nothing; the third embeds 0; every row once",
        rows_in=n,
        embedded_ids=embedded,
        rejected_ids=list(rejected),
    )


def test_kill_then_encoder_change_mixes_no_vectors(tmp_path, ray_local, tiny_models, record):
    """A run killed before its manifest, then the text pooling changed (same width): the next
    run keeps and reuses nothing of the old encoders; every file is the new encoders'."""
    import signal

    from adapt.extract.stage import encoders_fingerprint_id, run_extract
    from tests import corpus_fixtures as cf

    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=90, n_shards=6)
    cfg = _small_ray(_extract_config(corpus, output, tiny_models, shards_per_wave=1, batch_size=4))
    proc = _driver("extract", _yaml(tmp_path / "a.yaml", cfg), tmp_path / "a.log")
    commits = Path(output) / "embeddings" / "_commits"
    _wait_for(lambda: commits.exists() and any(commits.iterdir()), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    old = {p.name for p in commits.iterdir()}
    assert 1 <= len(old) < 6
    from adapt.config import load_config

    data = cfg.model_dump(mode="json")
    data["encoders"]["text"] = {"name": f"hf:{tiny_models['bert']}", "pooling": "cls"}
    changed = load_config(data=data)
    assert encoders_fingerprint_id(changed) != encoders_fingerprint_id(cfg)
    result = run_extract(changed)
    assert result.skipped_shards == 0 and result.embedded_now == n - len(cf.BAD)
    new_id = encoders_fingerprint_id(changed)
    for f in commits.iterdir():
        assert json.loads(f.read_text())["encoders_id"] == new_id
    import pyarrow.parquet as pq

    for f in store.list_files(join(output, "embeddings"), (".parquet",)):
        lineage = json.loads(pq.read_schema(f).metadata[b"adapt.lineage"])
        assert lineage["encoders_id"] == new_id
    embedded, rejected = _rows_out(store, output)
    record(
        injects=f"SIGKILL after {len(old)} of 6 shards, then text pooling changed",
        invariant="no shard of the old encoders kept or reused",
        rows_in=n,
        embedded_ids=embedded,
        rejected_ids=list(rejected),
    )


def test_kill_inside_a_write_then_folder_reads(tmp_path, ray_local, tiny_models, record):
    """A write killed between its bytes and its rename, and an input shard removed: pandas,
    DuckDB and load_embeddings read the folder as its committed rows, each once."""
    import signal
    import textwrap

    import duckdb
    import pandas as pd

    from adapt.embeddings import load_embeddings
    from adapt.extract.stage import run_extract
    from tests import corpus_fixtures as cf

    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=60, n_shards=3)
    cfg = _extract_config(corpus, output, tiny_models)
    run_extract(cfg)
    emb_dir = Path(output) / "embeddings"
    victim = sorted(emb_dir.glob("*.parquet"))[0]
    # A writer that stops for good between writing the bytes aside and renaming them.
    code = textwrap.dedent(
        f"""
        import os, time
        from adapt.storage import Storage
        os.replace = lambda *a: time.sleep(3600)
        Storage().write_bytes({str(victim)!r}, b"x" * 100000)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    _wait_for(lambda: any(emb_dir.glob(".*.tmp-*")), proc, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(emb_dir.glob(".*.tmp-*"))  # the killed write's leftover is there...
    frame = pd.read_parquet(emb_dir)  # ...and no reader picks it up
    rows = duckdb.sql(f"select id from read_parquet('{emb_dir}/*.parquet')").fetchall()
    assert len(frame) == len(rows) == len(load_embeddings(store, output)) == n - len(cf.BAD)
    # An input shard removed: its output goes with the next run, and no id reads twice.
    removed = sorted(Path(corpus).glob("*.parquet"))[-1]
    gone = pq_ids(removed)
    removed.unlink()
    run_extract(cfg)
    frame = pd.read_parquet(emb_dir)
    assert frame["id"].is_unique and not set(frame["id"]) & set(gone)
    assert len(frame) == len(load_embeddings(store, output))
    embedded, rejected = _rows_out(store, output)
    record(
        injects="SIGKILL between a write's bytes and its rename; an input shard removed",
        invariant="pandas, DuckDB, load_embeddings read committed rows only, each once",
        rows_in=n - len(gone),
        embedded_ids=embedded,
        rejected_ids=list(rejected),
    )


def pq_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def _nightly_config(corpus: str, output: str, tiny: dict):
    from adapt.config import load_config

    return load_config(
        data={
            "corpus": corpus,
            "output": output,
            "encoders": {"text": f"hf:{tiny['bert']}", "image": f"hf:{tiny['vit']}"},
            "extract": {"batch_size": 16},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 200},
            # Ray Train (one worker), so that training writes checkpoints a kill can land among.
            "train": {
                "num_workers": 1,
                "num_cpus_per_worker": 0.5,
                "epochs": 40,
                "checkpoint_every_epochs": 1,
                "batch_size": 16,
                "hidden_dims": [16],
                "out_dim": 8,
                "patience": 40,
                "search": None,
            },
            "nightly": {"probe_rows": 4, "classifiers": ["logreg"], "holdout_fraction": 0.3},
        }
    )


def _nightly_corpus(store: Storage, corpus: str, shard: int) -> None:
    import io as _io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests import corpus_fixtures as cf

    rows = [
        {
            "id": f"n{shard}-{i:03d}",
            "text": ["the cat", "a red dog", "blue car"][i % 3],
            "image": cf.png(i % 3),
            "label": f"c{i % 3}",
        }
        for i in range(30)
    ]
    buf = _io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    store.write_bytes(join(corpus, f"part-{shard:03d}.parquet"), buf.getvalue())


@pytest.mark.timeout(900)
def test_nightly_killed_after_extract_during_train_and_before_promotion(
    tmp_path, tiny_models, record, monkeypatch
):
    """Three nights, each SIGKILLed at one point and run again at once: after its extract, in
    the middle of training, between its history record and the champion pointer. Each re-run
    takes the dead night's lease at once, reuses what it finished, and completes a recorded
    promotion; the champion always names a head the history promoted."""
    import glob
    import signal

    from adapt.nightly.champion import Registry
    from adapt.nightly.stage import run_nightly
    from tests.fault_workers import always_promote

    monkeypatch.setattr("adapt.nightly.stage.decide", always_promote)
    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    cfg = _nightly_config(corpus, output, tiny_models)
    path = _yaml(tmp_path / "nightly.yaml", cfg)
    registry = Registry(store, output)

    def night_killed_when(pattern: str) -> None:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fault_workers",
                "nightly",
                json.dumps({"config": str(path)}),
            ],
            cwd=REPO,
            start_new_session=True,
            stdout=(tmp_path / "night.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        _wait_for(lambda: glob.glob(join(output, pattern)), proc, timeout=400)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # Night 1, killed once its extract is complete: the re-run embeds nothing again.
    _nightly_corpus(store, corpus, 0)
    _nightly_corpus(store, corpus, 1)
    night_killed_when("versions/*/embeddings/_manifest.json")
    first = run_nightly(cfg)
    assert first.embedded_now == 0 and first.promoted
    # Night 2, a new shard, killed after its first training checkpoint.
    _nightly_corpus(store, corpus, 2)
    night_killed_when("versions/*/heads/_checkpoints/*/epoch-*.safetensors")
    second = run_nightly(cfg)
    assert second.input_rows == 90 and second.promoted
    assert registry.champion()["head"] == second.decision["head"]
    # Night 3, killed between its history record and the champion pointer.
    _nightly_corpus(store, corpus, 3)
    killed = _run_worker("nightly", {"config": str(path), "die_at": "promote"}, timeout=400)
    assert killed.returncode == -signal.SIGKILL
    recorded = registry.history()[-1]
    assert recorded["promote"] and registry.champion()["head"] == second.decision["head"]
    # The next night completes the promotion; with nothing new since, it stops there.
    third = run_nightly(cfg)
    assert third.decision["nothing_new"] and not third.promoted
    champion = registry.champion()
    assert champion["head"] == recorded["head"] and champion["history"] == recorded["history"]
    promoted = {h["head"] for h in registry.history() if h.get("promote")}
    assert {first.decision["head"], second.decision["head"], recorded["head"]} <= promoted
    assert [h["status"] for h in registry.history()] == ["ok"] * 4
    record(
        injects="nightly SIGKILLed after extract, in train, between history and champion",
        invariant="each re-run at once completes; the champion is a recorded promotion",
        rows_in=third.input_rows,
    )


@pytest.mark.timeout(900)
def test_a_worker_node_sigkilled_mid_extract(tmp_path, tiny_models, record):
    """A real three-node Ray cluster on this machine; one worker node's raylet SIGKILLed once the
    first shard commits, while a fresh node joins. The job, or one re-submission, ends with
    every row exactly once; no cleanup step fails on what the lost node left or removed."""
    from tests import corpus_fixtures as cf

    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    n = cf.write_corpus(store, corpus, "parquet", n=120, n_shards=6)
    cfg = _extract_config(
        corpus,
        output,
        tiny_models,
        shards_per_wave=2,
        batch_size=4,
        num_cpus_per_worker=0.5,
        num_workers=2,
    )
    proc = _run_worker("cluster", {"config": str(_yaml(tmp_path / "c.yaml", cfg))}, timeout=840)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CLUSTER ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(line[len("CLUSTER ") :])
    assert report["killed"]["pid"] and report["attempts"][-1]["ok"], report
    embedded, rejected = _rows_out(store, output)
    assert len(embedded) == len(set(embedded)) and len(embedded) + len(rejected) == n
    assert rejected == cf.BAD
    record(
        injects="a worker node's raylet SIGKILLed mid-extract as a new node joins "
        f"({len(report['attempts'])} attempt(s))",
        invariant="the job or one re-submission ends with every row once",
        rows_in=n,
        embedded_ids=embedded,
        rejected_ids=list(rejected),
    )


@pytest.mark.timeout(600)
def test_sentinel_secrets_appear_nowhere(s3_bucket, moto_server, tiny_models, record):
    """A night on S3 with sentinel values as its secret key, session token and HF token: none
    appears in Ray's session logs, the console, or any object written (footers, manifests, commit
    records, head cards, checkpoints, history)."""
    import shutil
    import tempfile

    sentinel = "sentinel-4b7d0c19"
    store = Storage(StorageConfig(endpoint_url=moto_server))
    corpus, output = f"{s3_bucket}/corpus", f"{s3_bucket}/out"
    for shard in range(2):
        _nightly_corpus(store, corpus, shard)
    data = _nightly_config(corpus, output, tiny_models).model_dump(mode="json")
    data["storage"] = {"endpoint_url": moto_server}
    from adapt.config import load_config

    path = _yaml(Path(tempfile.mkdtemp()) / "n.yaml", load_config(data=data))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths stay under 107 bytes
    env = {
        **os.environ,
        "RAY_TMPDIR": ray_tmp,
        "AWS_SECRET_ACCESS_KEY": sentinel,  # moto takes any key; a real store would check it
        "AWS_SESSION_TOKEN": sentinel,
        "HF_TOKEN": sentinel,
    }
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "nightly.py"), "--config", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    logs = [p for p in Path(ray_tmp).rglob("*") if p.is_file()]
    leaks = [str(p) for p in logs if sentinel.encode() in p.read_bytes()]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    objects = store.fs(output).find(store.strip(output))
    assert objects and len(logs) > 10
    leaks += [o for o in objects if sentinel.encode() in store.read_bytes(f"s3://{o}")]
    assert leaks == [] and sentinel not in run.stdout + run.stderr
    record(
        injects="sentinel AWS secret key, session token and HF token in a nightly's environment",
        invariant=f"in none of {len(logs)} Ray log files, {len(objects)} objects, the console",
    )


@pytest.mark.timeout(900)
def test_a_worker_node_sigkilled_mid_train(tmp_path, tiny_models, record):
    """The same cluster, a node lost after the first checkpoint of a two-worker Ray Train run:
    the job (or one re-submission) finishes and the head trains on every trainable row once.
    Ray may place both Train workers on the surviving node; which node the lost one was is not
    forced here (forcing one worker per 1-CPU node left the restarted run without CPUs for its
    reads)."""
    from tests import corpus_fixtures as cf

    store = Storage()
    corpus, output = str(tmp_path / "corpus"), str(tmp_path / "out")
    cf.write_corpus(store, corpus, "parquet", n=240, n_shards=4)
    data = _extract_config(corpus, output, tiny_models, batch_size=16).model_dump(mode="json")
    data["train"] = {
        "num_workers": 2,
        "num_cpus_per_worker": 0.5,
        "epochs": 30,
        "checkpoint_every_epochs": 1,
        "batch_size": 16,
        "hidden_dims": [16],
        "out_dim": 8,
        "patience": 30,
        "search": None,
        "max_failures": 3,
    }
    from adapt.config import load_config

    path = _yaml(tmp_path / "t.yaml", load_config(data=data))
    proc = _run_worker("cluster", {"config": str(path), "stage": "train"}, timeout=840)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CLUSTER ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(line[len("CLUSTER ") :])
    last = report["attempts"][-1]
    assert report["killed"]["pid"] and last["ok"], report
    trainable = sum(1 for r in cf.rows(240, bad=False) if r["split"] != "test")
    assert last["n_train"] + last["n_val"] == trainable  # test-split rows never train
    record(
        injects="a worker node's raylet SIGKILLed after train's first checkpoint "
        f"({len(report['attempts'])} attempt(s), resumed after epochs {last['resumed_from']})",
        invariant="the head trains on every trainable row once, from one checkpoint",
        rows_in=trainable,
    )
