"""Benchmark of every stage as the corpus grows: wall time, rows/s, peak memory, bytes written.

    python -m adapt.bench.scale --out out/bench/scale.json                  # 10k, 100k, 1M rows
    python -m adapt.bench.scale --sizes 10000,100000 --out out/bench/scale.json

For each size N the script writes a corpus of N rows (Parquet shards of 10,000 rows: a text that
names the class plus a per-row word, and a 48 x 48 PNG of the class's colour with per-row noise, so
every content hash differs; 8 classes), then runs each stage as its own `adapt` process on a local
Ray of 2 CPUs, in order: extract, train, apply, score, then a night with 1% new rows (one new
shard) and a night with nothing new. The encoders are the simulated accelerator (`sim:0x32@32`,
a forward that takes no time) so that the pipeline, not a model, is measured.

Memory is sampled from /proc four times a second: the driver (the `adapt` process), the Ray
workers (`ray::` processes) and Ray's own daemons, each the largest resident size any one such
process reached (its VmHWM). `bytes_written` is the growth of the output folder over the stage.

The score stage runs a light protocol (3 folds, one validation fold, logreg and kNN, raw and
projected) at every size: with the row cap (`score.max_rows`) its cost does not grow with N past
the cap, which is what the figures show; the default protocol's time is measured on the demo
corpus (README). Train runs a fixed number of epochs, without the search, so that the time per
row is compared and not how soon early stopping ends a run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from adapt.bench import save_report
from adapt.bench.procs import descendants, hwm_mb, processes

SIZES = (10_000, 100_000, 1_000_000)
SHARD_ROWS = 10_000
CLASSES = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "black")
COLOURS = np.array(
    [
        (220, 40, 40),
        (40, 200, 60),
        (40, 60, 220),
        (230, 220, 40),
        (40, 220, 220),
        (220, 40, 220),
        (235, 235, 235),
        (25, 25, 25),
    ],
    dtype=np.int16,
)
WORDS = ("apple", "river", "stone", "cloud", "ember", "maple", "quartz", "violet", "harbor", "fern")
ENCODERS = {"text": "sim:0x32", "image": "sim:0x32@32"}
STAGES = ("extract", "train", "apply", "score")


# -- the corpus ------------------------------------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def shard_table(start: int, rows: int, seed: int = 0) -> pa.Table:
    """Rows start..start+rows-1: id, text, image (PNG bytes) and label; content differs per row."""
    rng = np.random.default_rng([seed, start])
    idx = np.arange(start, start + rows)
    cls = (idx * 7 + idx // 3) % len(CLASSES)
    noise = rng.integers(-60, 61, size=(rows, 48, 48, 3), dtype=np.int16)
    images = np.clip(COLOURS[cls][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    words = rng.integers(0, len(WORDS), size=rows)
    return pa.table(
        {
            "id": [f"r{i:08d}" for i in idx],
            "text": [
                f"a {CLASSES[c]} thing, {WORDS[w]} number {i}"
                for i, c, w in zip(idx, cls, words, strict=True)
            ],
            "image": pa.array([_png(im) for im in images], pa.binary()),
            "label": [CLASSES[c] for c in cls],
        }
    )


def write_corpus(folder: str, start: int, rows: int) -> list[str]:
    """Shards of SHARD_ROWS rows for rows start..start+rows-1 under `folder`."""
    os.makedirs(folder, exist_ok=True)
    files = []
    for s in range(start, start + rows, SHARD_ROWS):
        path = os.path.join(folder, f"part-{s // SHARD_ROWS:05d}.parquet")
        pq.write_table(shard_table(s, min(SHARD_ROWS, start + rows - s)), path)
        files.append(path)
    return files


# -- measuring a stage -----------------------------------------------------------------------------


class TreeMemory:
    """Peak resident memory of a process tree, sampled from /proc: the root (the driver), its
    `ray::` descendants (workers) and its other descendants (Ray's daemons)."""

    def __init__(self, root: int, interval_s: float = 0.25) -> None:
        self.root, self.interval_s = root, interval_s
        self.peaks: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        procs = processes()
        for pid in descendants(self.root, procs) | {self.root}:
            cmd = procs[pid].cmd if pid in procs else ""
            kind = (
                "driver" if pid == self.root else ("worker" if cmd.startswith("ray::") else "ray")
            )
            self.kinds[pid] = kind
            self.peaks[pid] = max(self.peaks.get(pid, 0.0), hwm_mb(pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, kind: str) -> float:
        return round(max((v for p, v in self.peaks.items() if self.kinds[p] == kind), default=0), 1)


def folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def run_stage(stage: str, config_path: str, output_root: str, log_path: str) -> dict:
    """One `adapt STAGE` process: its wall time, peak memory and the bytes it added."""
    before = folder_bytes(output_root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "adapt.cli", stage, "--config", config_path]
    start = time.perf_counter()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as mem:
            rc = proc.wait()
    wall = time.perf_counter() - start
    if rc:
        raise RuntimeError(f"adapt {stage} exited with {rc}; see {log_path}")
    return {
        "wall_s": round(wall, 2),
        "driver_peak_rss_mb": mem.peak_mb("driver"),
        "worker_peak_rss_mb": mem.peak_mb("worker"),
        "ray_daemon_peak_rss_mb": mem.peak_mb("ray"),
        "bytes_written": folder_bytes(output_root) - before,
    }


# -- one size --------------------------------------------------------------------------------------


def stage_config(corpus: str, root: str) -> dict:
    """The configuration every stage of one size runs with; the embeddings live where the
    nightly job keeps its encoder version, so that the nights continue from the extract."""
    from adapt.config import load_config
    from adapt.extract.stage import encoders_fingerprint_id

    data = {
        "corpus": corpus,
        "output": root,
        "encoders": ENCODERS,
        "ray": {"num_cpus": 2, "object_store_memory_mb": 1024},
        "extract": {"batch_size": 256, "decode_batch_size": 256, "num_workers": 1},
        "train": {
            "num_workers": 1,
            "num_cpus_per_worker": 0.5,
            "torch_threads": 1,
            "epochs": 2,
            "patience": None,
            "batch_size": 256,
            "search": None,
        },
        "score": {
            "n_folds": 3,
            "validation_folds": 1,
            "classifiers": ["logreg", "knn"],
            "representations": ["raw:concat", "projected:single"],
            "plots": False,
        },
        "nightly": {"probe_rows": 16},
    }
    encoders_id = encoders_fingerprint_id(load_config(data=data))
    from adapt import layout

    return {**data, "output": layout.version_root(root, encoders_id)}


def corpus_ready(corpus: str, n: int) -> bool:
    """Whether `corpus` holds exactly the shards `write_corpus(corpus, 0, n)` writes, whole."""
    want = [f"part-{s // SHARD_ROWS:05d}.parquet" for s in range(0, n, SHARD_ROWS)]
    if not os.path.isdir(corpus) or sorted(os.listdir(corpus)) != want:
        return False
    rows = sum(pq.ParquetFile(os.path.join(corpus, f)).metadata.num_rows for f in want)
    return rows == n


def run_size(n: int, work: str, reuse_corpus: bool = False) -> dict:
    """Every stage on a corpus of n rows under `work`; returns the figures per stage.
    `reuse_corpus`: keep a corpus of n rows already there (made by an earlier `--keep` run or
    by `write_corpus`) instead of writing it again; outputs always start empty."""
    corpus, root = os.path.join(work, "corpus"), os.path.join(work, "out")
    reuse = reuse_corpus and corpus_ready(corpus, n)
    if reuse:
        for name in os.listdir(work):
            if name != "corpus":
                path = os.path.join(work, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    else:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(root)
    t = time.perf_counter()
    if not reuse:
        write_corpus(corpus, 0, n)
    made_s = time.perf_counter() - t
    cfg = stage_config(corpus, root)
    path, night_path = os.path.join(work, "stages.yaml"), os.path.join(work, "nightly.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    with open(night_path, "w") as f:
        yaml.safe_dump({**cfg, "output": root}, f)
    log = os.path.join(work, "stages.log")
    out: dict = {"rows": n, "corpus_s": None if reuse else round(made_s, 1)}
    for stage in STAGES:
        print(f"  {n} rows: {stage} ...", flush=True)
        out[stage] = run_stage(stage, path, root, log)
        out[stage]["rows_per_s"] = round(n / out[stage]["wall_s"], 1)
        print(f"  {n} rows: {stage} {out[stage]['wall_s']:.1f} s", flush=True)

    # A night with 1% new rows: one new shard of n / 100 rows, then a night with nothing new.
    new = max(1, n // 100)
    write_corpus(corpus, n, new)
    print(f"  {n} rows: nightly with {new} new rows ...", flush=True)
    night = run_stage("nightly", night_path, root, log)
    record = _last_decision(root)
    stage_s = record.get("stage_s", {})
    extract_part = stage_s.get("extract", 0.0) + stage_s.get("health", 0.0)
    night.update(
        rows_per_s=round((n + new) / night["wall_s"], 1),
        new_rows=new,
        embedded_now=record.get("rows", {}).get("embedded_now"),
        stage_s=stage_s,
        extract_part_s=round(extract_part, 2),
        extract_part_ratio=round(extract_part / out["extract"]["wall_s"], 4),
    )
    out["nightly"] = night
    print(f"  {n} rows: nightly {night['wall_s']:.1f} s; a night with nothing new ...", flush=True)
    idle = run_stage("nightly", night_path, root, log)
    idle["nothing_new"] = bool(_last_decision(root).get("nothing_new"))
    out["nightly_nothing_new"] = idle
    return out


def _last_decision(root: str) -> dict:
    folder = os.path.join(root, "registry", "history")
    newest = sorted(f for f in os.listdir(folder) if f.endswith(".json"))[-1]
    with open(os.path.join(folder, newest)) as f:
        return json.load(f)


def slope(a: tuple[int, float], b: tuple[int, float]) -> float | None:
    """Growth exponent of wall time between two sizes (log-log): 1.0 is linear."""
    (n1, t1), (n2, t2) = a, b
    if min(n1, n2, t1, t2) <= 0 or n1 == n2:
        return None
    return round(math.log(t2 / t1) / math.log(n2 / n1), 3)


def summarise(runs: list[dict]) -> dict:
    stages = {}
    for stage in (*STAGES, "nightly", "nightly_nothing_new"):
        stages[stage] = {str(r["rows"]): r[stage] for r in runs}
    slopes = {}
    if len(runs) >= 2:
        a, b = runs[-2], runs[-1]
        for stage in (*STAGES, "nightly"):
            slopes[stage] = slope((a["rows"], a[stage]["wall_s"]), (b["rows"], b[stage]["wall_s"]))
    largest = runs[-1]
    return {
        "sizes": [r["rows"] for r in runs],
        "encoders": ENCODERS,
        "stages": stages,
        "slope": slopes,
        "slope_between": [r["rows"] for r in runs[-2:]],
        "nightly_1pct_ratio": largest["nightly"]["extract_part_ratio"],
        "nightly_1pct_at": largest["rows"],
        "nightly_1pct_train_s": largest["nightly"]["stage_s"].get("train"),
        "nightly_1pct_compare_s": largest["nightly"]["stage_s"].get("compare"),
        "nothing_new_s": largest["nightly_nothing_new"]["wall_s"],
        "corpus_s": {str(r["rows"]): r["corpus_s"] for r in runs},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated row counts")
    p.add_argument("--work", default="out/bench/scale-work", help="corpora and outputs (removed)")
    p.add_argument("--keep", action="store_true", help="keep the corpora and outputs")
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    p.add_argument(
        "--reuse-corpus",
        action="store_true",
        help="use a corpus of the right size already under --work (from --keep) instead of "
        "writing it again",
    )
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    runs = []
    for n in sizes:
        print(f"scale: {n} rows", flush=True)
        runs.append(run_size(n, os.path.join(args.work, str(n)), args.reuse_corpus))
        report = summarise(runs)
        save_report(args.out, report)  # after every size: a long run keeps what it measured
        if not args.keep and not args.reuse_corpus:
            shutil.rmtree(os.path.join(args.work, str(n)), ignore_errors=True)
    print(json.dumps({k: report[k] for k in report if k != "stages"}, indent=2))
    return report


if __name__ == "__main__":
    main()
