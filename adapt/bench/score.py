"""Benchmark of the score stage: wall time of a grid, and scaling from 1 to 2 Ray workers.

    python -m adapt.bench.score            # scaling runs, cell costs, extrapolated full grid
    python -m adapt.bench.score --full     # the whole grid, every fold (hours on 2 cores)

The grid of the question is 5 tasks x 4 representations x 7 classifiers x 5 folds = 700 cells on
20,000 synthetic rows (text 384-d, image 1280-d, as the demo encoders give). On 2 cores that takes
hours, almost all of it xgboost and the SVC on the 1,664-d raw concatenation, so by default two
documented subsets are measured instead, each run in its own subprocess with its own local Ray
(`ray.init(num_cpus=N)`), sharing nothing but the embeddings on disk:
1. scaling: all 5 tasks, outer fold 0 only, the three cheap classifiers (logreg, cart, knn), on
   1 CPU and then on 2 CPUs: 60 cells and 5 representation builds (PCA, two in-fold heads);
2. cell costs: task `label` (8 classes), fold 0, all 7 classifiers, on 2 CPUs: 28 cells. The full
   grid is 5 folds x 5 tasks of these; the extrapolation says so and why it is an upper bound.

This module also makes the synthetic corpus the score tests use (`synthetic_embeddings`): class
signal in a few dimensions, rotated together with many dimensions of high-variance noise, so that
raw features defeat axis-aligned trees and a PCA keeps mostly noise, while a head trained on the
labels finds the signal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from adapt import schema
from adapt.bench import save_report
from adapt.embeddings import Embeddings
from adapt.storage import Storage, join

REPRESENTATIONS = ["raw:concat", "pca:concat", "projected:single", "projected:per_modality"]
CLASSIFIERS = ["logreg", "xgboost", "random_forest", "svc", "mlp", "cart", "knn"]
TASKS = [
    {"label_column": "label"},  # 8 classes
    {"label_column": "label_group"},  # 3 classes
    {"label_column": "label_tags"},  # multilabel, 3 tags
    {"label_column": "label", "positive": "c0"},  # one-vs-rest
    {"label_column": "label_group", "positive": "g0"},
]


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def synthetic_embeddings(
    n_rows: int = 600,
    n_classes: int = 4,
    dims: dict[str, int] | None = None,
    signal_dims: int = 4,
    noise_std: float = 4.0,
    separation: float = 1.5,
    seed: int = 0,
) -> Embeddings:
    """Embeddings where the class lives in `signal_dims` dimensions of each modality (class
    centroids ~ N(0, separation), within-class noise 1) next to `d - signal_dims` dimensions of
    noise with std `noise_std`, all turned by a random rotation.

    Label columns: `label` (c0..c{n-1}), `label_group` (g0..g2, classes taken modulo 3),
    `label_tags` (lists: "even" for even classes, "low" for the first half, "c0" for class 0),
    `split` (every fifth row "test").
    """
    dims = dims or {"text": 24, "image": 40}
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n_rows) % n_classes)
    features = {}
    for m, d in sorted(dims.items()):
        centroids = rng.normal(0.0, separation, size=(n_classes, signal_dims))
        signal = centroids[y] + rng.normal(size=(n_rows, signal_dims))
        noise = rng.normal(0.0, noise_std, size=(n_rows, d - signal_dims))
        x = np.concatenate([signal, noise], axis=1) @ _rotation(d, rng)
        features[m] = x.astype(np.float32)
    tags = [
        [t for t, on in (("even", k % 2 == 0), ("low", k < n_classes / 2), ("c0", k == 0)) if on]
        for k in y
    ]
    columns = {
        "label": [f"c{k}" for k in y],
        "label_group": [f"g{k % 3}" for k in y],
        "label_tags": tags,
        "split": ["test" if i % 5 == 0 else "train" for i in range(n_rows)],
    }
    ids = np.array([f"row-{i:06d}" for i in range(n_rows)], dtype=object)
    manifest = {
        "complete": True,
        "corpus": f"synthetic:n={n_rows},classes={n_classes},seed={seed}",
        "fingerprints": {m: {"encoder": "synthetic", "dim": d} for m, d in dims.items()},
    }
    return Embeddings(ids, features, columns, manifest)


def write_embeddings(
    store: Storage, output: str, emb: Embeddings, rows_per_file: int = 5000
) -> str:
    """Write embeddings in the extract stage's layout (Parquet files, manifest last); return the
    manifest URI, so `load_embeddings(store, output)` reads them back."""
    files = []
    for part, lo in enumerate(range(0, len(emb), rows_per_file)):
        sl = slice(lo, lo + rows_per_file)
        cols = {schema.ID: pa.array(emb.ids[sl].tolist(), pa.string())}
        for name, values in emb.columns.items():
            cols[name] = pa.array(values[sl])
        for m, x in sorted(emb.features.items()):
            flat = pa.array(x[sl].reshape(-1), pa.float32())
            cols[schema.embedding_column(m)] = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
        uri = join(output, "embeddings", f"part-{part:05d}.parquet")
        store.write_parquet(uri, pa.table(cols))
        files.append(
            {
                "shard": f"part-{part:05d}",
                "embeddings_file": uri,
                "embedded": len(emb.ids[sl]),
                "rejected": 0,
            }
        )
    manifest = {
        **emb.manifest,
        "complete": True,
        "shards": files,
        "embedded": len(emb),
        "schema": {m: schema.embedding_column(m) for m in sorted(emb.features)},
        "written_at": "synthetic",
    }
    uri = join(output, "embeddings", "_manifest.json")
    store.write_json(uri, manifest)
    return uri


# -- the benchmark ---------------------------------------------------------------------------


def _config(output: str, args: argparse.Namespace, num_cpus: int) -> dict:
    return {
        "corpus": "synthetic",
        "output": output,
        "encoders": {"text": "minilm-l6", "image": "efficientnet-lite0"},
        "ray": {"num_cpus": num_cpus, "object_store_memory_mb": args.object_store_mb},
        "train": {"epochs": args.epochs, "patience": None, "early_stopping_fraction": 0.0},
        "score": {
            "tasks": TASKS[: args.tasks],
            "representations": REPRESENTATIONS,
            "classifiers": args.classifiers,
            "n_folds": args.folds,
            "validation_folds": 0,
            "num_cpus_per_cell": 0.5,
            "num_cpus_per_fold": 1.0,
            "plots": False,
            "n_boot": 200,
        },
    }


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O), from
    /proc/stat: over a run, divided by its wall time, the cores the run got, plus whatever else
    the machine was doing (`load_before` says how much that was)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _worker(args: argparse.Namespace) -> None:
    """One timed run in this process: local Ray with `args.num_cpus` CPUs."""
    import logging

    from adapt.config import load_config
    from adapt.rayutil import init_ray
    from adapt.score.stage import run_score

    logging.basicConfig(level=logging.WARNING)
    data = _config(args.output, args, args.num_cpus)
    if args.one_fold:
        data["score"]["only_folds"] = [0]
    config = load_config(data=data)
    if hasattr(os, "sched_setaffinity"):
        # Ray's CPUs are a count, not cores: pin this process (and the Ray it starts) to N cores,
        # so that a 1-CPU run really has one core and not every core of the machine.
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.num_cpus]))
    start = time.perf_counter()
    init_ray(config.ray)  # started outside the timed part: the wall is the stage's own work
    ray_start_s = time.perf_counter() - start
    cpu_before = _busy_cpu_s()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_score(config)
    wall = time.perf_counter() - start
    cpu_used = _busy_cpu_s() - cpu_before
    import ray

    ray.shutdown()
    rows = [r for r in result.report["results"] if r["fold"] != "mean"]
    per_clf: dict[str, float] = {}
    for r in rows:
        per_clf[r["classifier"]] = (
            per_clf.get(r["classifier"], 0.0) + (r.get("fit_s") or 0) + (r.get("predict_s") or 0)
        )
    builds = [
        v.get("build_s", 0.0) for f in result.report["folds"] for v in f["representations"].values()
    ]
    print(
        json.dumps(
            {
                "num_cpus": args.num_cpus,
                "ray_start_s": ray_start_s,
                "cpu_s": cpu_used,
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
                "wall_s": wall,
                "cells": result.n_cells,
                "failed": result.failed_cells,
                "cell_cpu_s": per_clf,
                "build_s": float(sum(builds)),
                "timings": result.report["timings"],
            }
        )
    )


def _run(
    args: argparse.Namespace,
    output: str,
    num_cpus: int,
    tasks: int,
    classifiers: list[str],
    one_fold: bool,
) -> dict:
    """One timed run in a fresh subprocess (its own local Ray); returns its JSON summary."""
    cmd = [
        sys.executable,
        "-m",
        "adapt.bench.score",
        "--worker",
        "--num-cpus",
        str(num_cpus),
        "--output",
        output,
        "--folds",
        str(args.folds),
        "--tasks",
        str(tasks),
        "--epochs",
        str(args.epochs),
        "--object-store-mb",
        str(args.object_store_mb),
        "--classifiers",
        *classifiers,
    ]
    if one_fold:
        cmd.append("--one-fold")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run with {num_cpus} CPUs failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _describe(label: str, r: dict) -> str:
    by_clf = ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(r["cell_cpu_s"].items(), key=lambda kv: -kv[1])
    )
    return (
        f"  {label}: {r['cells']} cells ({r['failed']} failed) in {r['wall_s']:.0f} s wall "
        f"on {r['num_cpus']} CPU(s); representation builds (PCA, in-fold heads) "
        f"{r['build_s']:.0f} s; Ray start {r['ray_start_s']:.0f} s (not counted)\n"
        f"    machine cores busy: {r['cpu_s'] / r['wall_s']:.2f} ({r['cpu_s']:.0f} CPU s); "
        f"load average {r['load_before']:.1f} before, {r['load_after']:.1f} after\n"
        f"    cell seconds (fit + predict) by classifier: {by_clf}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m adapt.bench.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--text-dim", type=int, default=384, help="like MiniLM")
    p.add_argument("--image-dim", type=int, default=1280, help="like EfficientNet-Lite0")
    p.add_argument("--tasks", type=int, default=5, choices=range(1, 6))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--classifiers", nargs="+", default=CLASSIFIERS)
    p.add_argument(
        "--scaling-classifiers",
        nargs="+",
        default=["logreg", "cart", "knn"],
        help="classifiers of the 1-vs-2-CPU runs",
    )
    p.add_argument("--epochs", type=int, default=10, help="head epochs per fold")
    p.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    p.add_argument("--full", action="store_true", help="run the whole grid instead")
    p.add_argument("--skip-costs", action="store_true", help="only the scaling runs")
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one-fold", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--num-cpus", type=int, help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="adapt-bench-score-") as tmp:
        start = time.perf_counter()
        emb = synthetic_embeddings(
            args.rows, n_classes=8, dims={"text": args.text_dim, "image": args.image_dim}
        )
        write_embeddings(Storage(), tmp, emb)
        grid = args.tasks * len(REPRESENTATIONS) * len(args.classifiers) * args.folds
        print(
            f"synthetic embeddings: {args.rows} rows, text {args.text_dim}-d, image "
            f"{args.image_dim}-d, written in {time.perf_counter() - start:.1f} s; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(
            f"grid: {args.tasks} tasks x {len(REPRESENTATIONS)} representations "
            f"({', '.join(REPRESENTATIONS)}) x {len(args.classifiers)} classifiers x "
            f"{args.folds} folds = {grid} cells; head epochs {args.epochs}"
        )
        figures: dict = {
            "rows": args.rows,
            "dims": {"text": args.text_dim, "image": args.image_dim},
            "grid_cells": grid,
            "runs": {},
        }
        if args.full:
            for n in args.cpus:
                r = _run(args, tmp, n, args.tasks, args.classifiers, one_fold=False)
                figures["runs"][f"full_{n}cpu"] = r
                print(_describe("full grid", r))
            save_report(args.out, figures)
            return 0

        # 1. Scaling: every task, fold 0, the cheap classifiers, on 1 then 2 CPUs.
        scaling = {}
        for n in args.cpus:
            scaling[n] = _run(args, tmp, n, args.tasks, args.scaling_classifiers, one_fold=True)
            figures["runs"][f"scaling_{n}cpu"] = scaling[n]
            print(
                _describe(
                    f"scaling, {args.tasks} tasks x fold 0 x {'/'.join(args.scaling_classifiers)}",
                    scaling[n],
                )
            )
        if len(scaling) > 1:
            lo, hi = min(scaling), max(scaling)
            speedup = scaling[lo]["wall_s"] / scaling[hi]["wall_s"]
            print(
                f"  speed-up {lo} -> {hi} CPUs: {speedup:.2f}x "
                f"(parallel efficiency {speedup / (hi / lo):.0%})"
            )
            figures["speedup"] = speedup
        if args.skip_costs:
            save_report(args.out, figures)
            return 0

        # 2. Cell costs: the first task (8 classes, the costliest for xgboost and logreg), fold 0,
        #    every classifier, on the most CPUs; the full grid is 5 folds x 5 tasks of that.
        n = max(args.cpus)
        costs = _run(args, tmp, n, 1, args.classifiers, one_fold=True)
        figures["runs"][f"costs_{n}cpu"] = costs
        figures["full_grid_estimate_s"] = args.folds * args.tasks * costs["wall_s"]
        print(_describe("costs, task label x fold 0 x every classifier", costs))
        factor = args.folds * args.tasks
        print(
            f"extrapolated full grid on {n} CPU(s): {factor} x {costs['wall_s']:.0f} s = "
            f"{factor * costs['wall_s'] / 3600:.1f} h; an upper bound, since the other tasks "
            "have 2-3 classes and cost xgboost and logreg less than the 8-class one"
        )
    save_report(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
