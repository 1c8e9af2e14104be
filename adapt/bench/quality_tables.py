"""The quality benchmark's reading of finished score reports: the bar, its tables, the per-cell
check over several fold splits, and recommendations derived again from saved predictions.

Everything here reads reports (report.json, predictions.npz) that `adapt.bench.quality` wrote; it
runs no stage, so a change of a rule can be judged on the cells a finished run scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapt.config import ScoreConfig
from adapt.score.io import read_predictions
from adapt.score.summary import Pool, recommend
from adapt.storage import Storage

# The bar: the best learned representation beats raw and PCA in the metric averaged over every
# classifier, with the interval above zero; the recommended representation of no (task,
# classifier) cell is worse than the best raw one by more than this.
CELL_TOLERANCE = 0.01


LEARNED = ("projected", "head")


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
        "| task | representation | mean macro-F1 over classifiers | gain over best raw [95%] "
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


# The pair target: the recommended pair beats the best tuned raw pair by at least this on the
# pooled test rows, with the paired interval above zero.
PAIR_MARGIN = 0.01


def check_pairs(results: list[dict]) -> dict:
    """Per task: the recommended (representation, classifier) pair, chosen on validation rows,
    against the best raw pair on the pooled test rows (`report["pair_verdict"]`; a tuned probe
    where the run had one), and whether it wins by PAIR_MARGIN with the interval above zero."""
    out = {}
    for r in results:
        report = r["report"]
        for task in report["tasks"]:
            name = task["name"]
            pair = (report.get("recommendation", {}).get(name) or {}).get("pair")
            verdict = (report.get("pair_verdict") or {}).get(name)
            if not pair or not verdict or verdict.get("mean") is None:
                continue
            out[name] = {
                "pair": [pair["representation"], pair["classifier"]],
                "validation_score": pair["score"],
                "score": verdict.get("candidate_score"),
                "baseline_pair": verdict["baseline_pair"],
                "baseline_kind": verdict["baseline_kind"],
                "baseline_score": verdict.get("baseline_score"),
                "gap": verdict["mean"],
                "lo": verdict["lo"],
                "hi": verdict["hi"],
                "n_rows": verdict.get("n_rows"),
                "met": verdict["mean"] >= PAIR_MARGIN and verdict["lo"] > 0,
            }
    return out


def pair_table(pairs: dict) -> str:
    """Markdown: per task, the recommended pair against the best tuned raw pair."""
    lines = [
        "| task | recommended pair (validation) | test macro-F1 | best raw pair on test | "
        "its macro-F1 | gap [95%] | target met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, p in pairs.items():
        kind = "" if p["baseline_kind"] == "tuned probe" else f" ({p['baseline_kind']})"
        lines.append(
            f"| {task} | {' + '.join(p['pair'])} ({p['validation_score']:.3f}) | "
            f"{p['score']:.3f} | {' + '.join(p['baseline_pair'])}{kind} | "
            f"{p['baseline_score']:.3f} | {p['gap']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] | "
            f"{'yes' if p['met'] else 'no'} |"
        )
    return "\n".join(lines)


def write_summary(out: Path, results: list[dict], wall_s: float | None, run_id: str) -> dict:
    bar = check_bar(results)
    pairs = check_pairs(results)
    md = "\n\n".join([bar_table(bar), pair_table(pairs), averaged_table(results), table(results)])
    summary = {
        "wall_s": wall_s,
        "bar": bar,
        "pairs": pairs,
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
    print(json.dumps({k: v for k, v in summary.items() if k not in ("bar", "pairs")}, indent=2))
    return summary


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
    pairs = {}
    for task in tasks:
        per = {i: runs[i].get("pairs", {}).get(task) for i in ids}
        if any(v is None for v in per.values()):
            continue
        gaps = [per[i]["gap"] for i in ids]
        pairs[task] = {
            "per_split": per,
            "mean_gap": sum(gaps) / len(gaps),
            "splits_above_zero": sum(per[i]["lo"] > 0 for i in ids),
            "splits_met": sum(per[i]["met"] for i in ids),
            "mean_met": sum(gaps) / len(gaps) >= PAIR_MARGIN and all(per[i]["lo"] > 0 for i in ids),
        }
    return {
        "splits": ids,
        "per_split": per_split,
        "pairs": pairs,
        "pair_target_met": bool(pairs) and all(p["mean_met"] for p in pairs.values()),
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
    if combined.get("pairs"):
        lines += [
            "",
            "| task | "
            + " | ".join(f"{i}: recommended pair vs best raw pair, gap [95%]" for i in ids)
            + " | mean gap | target met |",
            "| --- | " + " | ".join("---" for _ in ids) + " | --- | --- |",
        ]
        for task, p in combined["pairs"].items():
            per = " | ".join(
                f"{' + '.join(v['pair'])} vs {' + '.join(v['baseline_pair'])}, "
                f"{v['gap']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
                for v in (p["per_split"][i] for i in ids)
            )
            lines.append(
                f"| {task} | {per} | {p['mean_gap']:+.3f} | {'yes' if p['mean_met'] else 'no'} |"
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
