"""Benchmark of the train stage: Ray Train (1 worker) against a bare PyTorch loop.

    python -m adapt.bench.train [--rows 100000] [--threads 1] [--out bench-train.json]

The paper's protocol (arXiv 2502.02048, as the authors' code runs it): per-modality heads of the "paper" preset (hidden 16, 128 outputs),
pairwise BCE at T = 0.1, Adam lr 1e-3, batch 128, 10 epochs, 80 % of the rows to train and 20 % for
a validation loss each epoch; here on synthetic rows of 768 + 384 dimensions, 10 classes.

Three runs over the same rows, in one process, one after the other:
- bare: numpy arrays in memory, a hand-written loop (shuffle, forward, loss, step; validation
  loss per epoch); the floor, with no framework at all;
- local: `trainer.fit_head` in this process (what `train.local: true` runs);
- ray: `train.run_train` with one Ray Train worker, reading the Parquet embeddings through Ray
  Data, checkpointing every epoch through Storage (what a submitted job runs).
Start-up (for ray: from the trainer's start to its first optimiser step, Ray itself already up)
is reported apart from the training loop; the ratio compares loop times. Goals: ratio <= 1.3,
start-up < 15 s. A report, not a test: it prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from adapt import schema
from adapt.storage import Storage, join

PAPER = {"preset": "paper"}
GOAL_RATIO = 1.3
GOAL_STARTUP_S = 15.0


def synthetic(rows: int, dims: dict[str, int], n_classes: int, seed: int):
    """Gaussian rows with a weak class signal in a few dimensions of each modality."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=rows)
    features = {}
    for m, d in sorted(dims.items()):
        x = rng.standard_normal((rows, d), dtype=np.float32)
        x[:, :8] += rng.standard_normal((n_classes, 8), dtype=np.float32)[y]
        features[m] = x
    return features, [f"class-{c}" for c in y]


def write_layout(store: Storage, output: str, features: dict, labels: list, shards: int) -> None:
    """Rows in the extract stage's layout: Parquet shards, then the manifest (last)."""
    n = len(labels)
    records = []
    bounds = np.linspace(0, n, shards + 1).astype(int)
    fingerprints = {
        m: {"dim": x.shape[1], "encoder": f"synthetic:{m}"} for m, x in features.items()
    }
    for s in range(shards):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        cols = {
            schema.ID: pa.array([f"r{i:07d}" for i in range(lo, hi)]),
            schema.LABEL: pa.array(labels[lo:hi]),
            schema.SPLIT: pa.array(["train"] * (hi - lo)),
        }
        for m, x in sorted(features.items()):
            flat = pa.array(x[lo:hi].reshape(-1), pa.float32())
            cols[schema.embedding_column(m)] = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
        uri = join(output, "embeddings", f"part-{s:05d}.parquet")
        store.write_parquet(uri, pa.table(cols))
        records.append(
            {
                "shard": f"part-{s:05d}",
                "embedded": hi - lo,
                "embeddings_file": uri,
                "committed_at": datetime.now(UTC).isoformat(),
            }
        )
    store.write_json(
        join(output, "embeddings", "_manifest.json"),
        {
            "complete": True,
            "shards": records,
            "embedded": n,
            "fingerprints": fingerprints,
            "schema": {m: schema.embedding_column(m) for m in sorted(features)},
        },
    )


def bare_loop(train_x, train_y, val_x, val_y, epochs: int, batch: int, seed: int) -> dict:
    """The same work with nothing but torch: per-modality paper heads, pairwise BCE, Adam."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    heads = nn.ModuleDict(
        {
            m: nn.Sequential(
                nn.Linear(x.shape[1], min(x.shape[1] // 2, 16)),
                nn.ReLU(),
                nn.Linear(min(x.shape[1] // 2, 16), 128),
            )
            for m, x in sorted(train_x.items())
        }
    )
    opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
    tx = {m: torch.from_numpy(x) for m, x in train_x.items()}
    vx = {m: torch.from_numpy(x) for m, x in val_x.items()}
    ty, vy = torch.from_numpy(train_y), torch.from_numpy(val_y)

    def loss_of(x, y):
        z = torch.cat([heads[m](x[m]) for m in sorted(x)], dim=1)
        i, j = torch.triu_indices(len(y), len(y), offset=1)
        logits = (z @ z.T / 0.1)[i, j]
        return F.binary_cross_entropy_with_logits(logits, (y[i] == y[j]).float())

    rng = np.random.default_rng(seed)
    n = len(ty)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for lo in range(0, n, batch):
            idx = order[lo : lo + batch]
            if len(idx) < 2:
                continue
            loss = loss_of({m: x[idx] for m, x in tx.items()}, ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for lo in range(0, len(vy), batch):
                loss_of({m: x[lo : lo + batch] for m, x in vx.items()}, vy[lo : lo + batch])
    loop_s = time.perf_counter() - t0
    return {"startup_s": 0.0, "loop_s": loop_s, "steps": epochs * math.ceil(n / batch)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dims", default="text=768,image=384", help="modality=width,...")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for all runs")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    p.add_argument("--workdir", default=None, help="where to write the rows (default: a temp dir)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    import ray
    import torch

    from adapt.bench import save_report
    from adapt.config import load_config
    from adapt.train.fit import fit_head
    from adapt.train.plan import plan_run
    from adapt.train.stage import run_train

    torch.set_num_threads(args.threads)
    dims = {k: int(v) for k, v in (kv.split("=") for kv in args.dims.split(","))}
    workdir = args.workdir or tempfile.mkdtemp(prefix="adapt-bench-train-")
    store = Storage()
    t = time.perf_counter()
    features, labels = synthetic(args.rows, dims, args.classes, seed=0)
    write_layout(store, workdir, features, labels, shards=8)
    prepare_s = time.perf_counter() - t

    train = {
        **PAPER,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "num_workers": 1,
        "num_cpus_per_worker": 1,
        "run_id": f"bench-{os.getpid()}",
    }
    config = load_config(
        data={
            "corpus": "synthetic",
            "output": workdir,
            "encoders": {m: "minilm-l6" for m in dims},
            "train": train,
        }
    )
    # The rows every run trains and validates on: the stage's own split.
    plan = plan_run(config, store)
    index = {f"r{i:07d}": i for i in range(args.rows)}
    tr = np.array([index[i] for i in plan.train_ids])
    va = np.array([index[i] for i in plan.val_ids])
    y = np.array([int(lab.rsplit("-", 1)[1]) for lab in labels])
    results = {}

    results["bare"] = bare_loop(
        {m: x[tr] for m, x in features.items()},
        y[tr],
        {m: x[va] for m, x in features.items()},
        y[va],
        args.epochs,
        args.batch_size,
        seed=0,
    )

    t = time.perf_counter()
    fit = fit_head(
        {m: x[tr] for m, x in features.items()},
        [labels[i] for i in tr],
        config.train,
        {m: x[va] for m, x in features.items()},
        [labels[i] for i in va],
    )
    total = time.perf_counter() - t
    loop = sum(h["epoch_s"] for h in fit.history)
    results["local"] = {
        "startup_s": total - loop,
        "loop_s": loop,
        "steps": sum(h["steps"] for h in fit.history),
    }

    del features
    t = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray_init_s = time.perf_counter() - t
    try:
        out = run_train(config, store)
    finally:
        ray.shutdown()
    tm = out.timings
    results["ray"] = {
        "startup_s": tm["first_step_s"],
        "loop_s": tm["loop_s"],
        "worker_start_s": tm["worker_start_s"],
        "data_ready_s": tm["data_ready_s"],
        "teardown_s": tm["trainer_fit_s"] - tm["first_step_s"] - tm["loop_s"],
        "ray_init_s": ray_init_s,
        "steps": sum(h["steps"] for h in store.read_json(out.card)["history"]),
    }

    n_train = len(tr)
    for r in results.values():
        r["rows_per_s"] = n_train * args.epochs / r["loop_s"]
        r["ratio_to_bare"] = r["loop_s"] / results["bare"]["loop_s"]
    report = {
        "protocol": {
            "rows": args.rows,
            "train_rows": n_train,
            "val_rows": len(va),
            "dims": dims,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "preset": "paper",
            "threads": args.threads,
        },
        "prepare_s": prepare_s,
        "results": results,
        "goals": {
            "ratio": GOAL_RATIO,
            "startup_s": GOAL_STARTUP_S,
            "ratio_met": results["ray"]["ratio_to_bare"] <= GOAL_RATIO,
            "startup_met": results["ray"]["startup_s"] < GOAL_STARTUP_S,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "created_at": datetime.now(UTC).isoformat(),
    }
    print(
        f"train benchmark: {args.rows} rows ({n_train} train), "
        f"{'+'.join(str(d) for d in dims.values())} dims, paper preset, {args.epochs} epochs, "
        f"batch {args.batch_size}, {args.threads} torch thread(s), "
        f"load {report['machine']['load_avg_1m']:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'run':<8}{'start-up s':>12}{'loop s':>10}{'rows/s':>12}{'vs bare':>10}")
    for name, r in results.items():
        print(
            f"{name:<8}{r['startup_s']:>12.1f}{r['loop_s']:>10.1f}{r['rows_per_s']:>12,.0f}"
            f"{r['ratio_to_bare']:>10.2f}"
        )
    ray_r = results["ray"]
    print(
        f"ray start-up: Ray init {ray_r['ray_init_s']:.1f} s (not counted), worker up "
        f"{ray_r['worker_start_s']:.1f} s, rows read {ray_r['data_ready_s']:.1f} s, first step "
        f"{ray_r['startup_s']:.1f} s; teardown {ray_r['teardown_s']:.1f} s"
    )
    print(
        f"goals: ratio <= {GOAL_RATIO}: {'met' if report['goals']['ratio_met'] else 'NOT met'}; "
        f"start-up < {GOAL_STARTUP_S:.0f} s: "
        f"{'met' if report['goals']['startup_met'] else 'NOT met'}"
    )
    if args.out:
        save_report(args.out, report)
        print(f"figures: {args.out}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
