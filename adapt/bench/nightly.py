"""Cost of a nightly run with 1% new rows against a full run on the same corpus.

    python -m adapt.bench.nightly [--new-fraction 0.01] [--out FILE]

Night 1 starts from an empty output (everything is embedded and trained); then 1% new rows arrive
as a new shard and night 2 runs. Reports wall time per stage, rows embedded, and the ratio.
Corpus: the bundled demo (emoji images and names), offline encoders (MiniLM, EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import pyarrow.parquet as pq

from adapt.bench import save_report
from adapt.config import load_config
from adapt.nightly.stage import run_nightly
from adapt.storage import Storage

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "emoji")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-fraction", type=float, default=0.01)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    root = tempfile.mkdtemp(prefix="adapt-bench-nightly-")
    corpus, output = os.path.join(root, "corpus"), os.path.join(root, "out")
    table = pq.read_table(DEMO)
    n_new = max(1, round(table.num_rows * args.new_fraction))
    base, new = table.slice(0, table.num_rows - n_new), table.slice(table.num_rows - n_new)
    os.makedirs(corpus)
    for i in range(4):
        pq.write_table(
            base.take(list(range(i, base.num_rows, 4))),
            os.path.join(corpus, f"part-{i:03d}.parquet"),
        )
    cfg = load_config(
        data={
            "corpus": corpus,
            "output": output,
            "encoders": {"text": "minilm-l6", "image": "efficientnet-lite0"},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 512},
            "extract": {"batch_size": 64, "torch_threads": 2},
            "train": {"num_workers": 0, "epochs": 20, "patience": 3},
            "nightly": {"classifiers": ["logreg", "knn"]},
        }
    )
    store = Storage()
    try:
        full = run_nightly(cfg, store)
        pq.write_table(new, os.path.join(corpus, "part-new.parquet"))
        night = run_nightly(cfg, store)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    report = {
        "rows": table.num_rows,
        "new_rows": n_new,
        "full": {
            "wall_s": round(full.wall_s, 1),
            "embedded": full.embedded_now,
            "stages_s": {k: round(v, 1) for k, v in full.stage_s.items()},
        },
        "incremental": {
            "wall_s": round(night.wall_s, 1),
            "embedded": night.embedded_now,
            "stages_s": {k: round(v, 1) for k, v in night.stage_s.items()},
        },
    }
    report["wall_ratio"] = round(night.wall_s / full.wall_s, 3)
    report["extract_ratio"] = round(night.stage_s["extract"] / full.stage_s["extract"], 3)
    print(f"\nnightly cost, {table.num_rows} rows, {n_new} new ({args.new_fraction:.0%})")
    for name in ("full", "incremental"):
        r = report[name]
        print(
            f"  {name:12} {r['wall_s']:7.1f} s  embedded {r['embedded']:6d}  stages {r['stages_s']}"
        )
    print(
        f"  incremental / full: wall {report['wall_ratio']:.3f}, extract {report['extract_ratio']:.3f}"
    )
    save_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
