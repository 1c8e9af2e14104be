"""Extraction efficiency: the whole Ray Data pipeline against the bare model forward.

    python -m adapt.bench.extract [--rows 3000] [--batch-size 64] [--threads 2] [--out FILE]

For each modality of the offline default encoders, in one run:
- bare: `encoder.forward` on pre-decoded, pre-processed batches (no I/O, no decode, no Ray);
- pipeline: `run_extract` on a Parquet corpus of encoded images / texts (read -> decode -> embed ->
  write Parquet) on a local Ray with the same batch size and thread count.
Pipeline start-up (Ray, model load, ONNX export) is separated by running the pipeline twice, on
`rows` and on `rows // 4`, and taking the throughput of the difference: (N1 - N2) / (t1 - t2).
The report prints both throughputs in rows/s and their ratio (goal: 0.9 or better).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from adapt.bench import save_report
from adapt.config import load_config
from adapt.extract.core import decode_image
from adapt.extract.stage import run_extract
from adapt.storage import Storage

DEMO = os.path.join(os.path.dirname(__file__), "..", "data", "demo", "emoji")


def demo_items(modality: str, rows: int) -> list:
    table = pq.read_table(DEMO, columns=["id", "text", "image"])
    values = table.column(modality).to_pylist()
    return [values[i % len(values)] for i in range(rows)]


def write_corpus(path: str, modality: str, rows: int, files: int = 8) -> None:
    values = demo_items(modality, rows)
    os.makedirs(path, exist_ok=True)
    for f in range(files):
        idx = range(f, rows, files)
        pq.write_table(
            pa.table(
                {
                    "id": [f"r{i:07d}" for i in idx],
                    modality: [values[i] for i in idx],
                    "label": ["x"] * len(idx),
                }
            ),
            os.path.join(path, f"part-{f:03d}.parquet"),
        )


def bare_throughput(encoder, items: list, batch_size: int) -> float:
    batches = [
        encoder.preprocess(items[i : i + batch_size]) for i in range(0, len(items), batch_size)
    ]
    import torch

    with torch.inference_mode():
        encoder.forward(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            encoder.forward(b)
        return len(items) / (time.perf_counter() - t)


def pipeline_time(
    modality: str, encoder_name: str, rows: int, batch_size: int, threads: int, root: str
) -> float:
    corpus, output = (
        os.path.join(root, f"c-{modality}-{rows}"),
        os.path.join(root, f"o-{modality}-{rows}"),
    )
    write_corpus(corpus, modality, rows)
    cfg = load_config(
        data={
            "corpus": corpus,
            "output": output,
            "encoders": {modality: encoder_name},
            "extract": {
                "batch_size": batch_size,
                "num_workers": 1,
                "num_cpus_per_worker": 1,
                "torch_threads": threads,
            },
        }
    )
    t = time.perf_counter()
    result = run_extract(cfg, Storage())
    elapsed = time.perf_counter() - t
    if result.embedded != rows:
        raise RuntimeError(f"pipeline embedded {result.embedded} of {rows} rows")
    return elapsed, result.timings


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modalities", default="image,text")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from adapt.config import EncoderSpec
    from adapt.encoders import build_encoder

    torch.set_num_threads(args.threads)
    names = {"image": "efficientnet-lite0", "text": "minilm-l6"}
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=512 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
    )
    report = {
        "rows": args.rows,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "results": {},
    }
    root = tempfile.mkdtemp(prefix="adapt-bench-")
    try:
        for modality in args.modalities.split(","):
            encoder = build_encoder(EncoderSpec(name=names[modality]), modality)
            raw = demo_items(modality, args.rows)
            items = [decode_image(v) for v in raw] if modality == "image" else raw
            bare = bare_throughput(encoder, items, args.batch_size)
            small = max(args.batch_size * 4, args.rows // 4)
            t_big, timings = pipeline_time(
                modality, names[modality], args.rows, args.batch_size, args.threads, root
            )
            t_small, _ = pipeline_time(
                modality, names[modality], small, args.batch_size, args.threads, root
            )
            steady = (args.rows - small) / max(1e-9, t_big - t_small)
            report["results"][modality] = {
                "encoder": names[modality],
                "bare_rows_per_s": round(bare, 1),
                "pipeline_rows_per_s": round(steady, 1),
                "pipeline_end_to_end_rows_per_s": round(args.rows / t_big, 1),
                "pipeline_startup_s": round(t_big - args.rows / steady, 1),
                "ratio": round(steady / bare, 3),
                "worker_seconds": {k: round(v, 2) for k, v in timings.items()},
            }
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nextract efficiency ({args.rows} rows, batch {args.batch_size}, {args.threads} threads)"
    )
    print(
        f"{'modality':8} {'encoder':20} {'bare r/s':>9} {'pipeline r/s':>13} {'ratio':>6} "
        f"{'end-to-end r/s':>15} {'start-up s':>10}"
    )
    for m, r in report["results"].items():
        print(
            f"{m:8} {r['encoder']:20} {r['bare_rows_per_s']:9.1f} {r['pipeline_rows_per_s']:13.1f} "
            f"{r['ratio']:6.3f} {r['pipeline_end_to_end_rows_per_s']:15.1f} {r['pipeline_startup_s']:10.1f}"
        )
    for m, r in report["results"].items():
        print(f"  {m} pipeline seconds by part: {r['worker_seconds']}")
    save_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
