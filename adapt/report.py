"""The score stage's report: its JSON schema, the tables people read, the plots, and writing it.

A report lives under `{output}/reports/<run-id>/`:
    f1_by_representation.png   the metric by representation and classifier, with intervals
    embedding_2d.png           test rows of one fold in 2-D (PCA), raw beside projected, by label
    report.md                  the tables: best representation, gains with intervals, per classifier
    report.json                every number, the config and input fingerprints; written last, so
                               a report.json means the run is complete

`REPORT_SCHEMA` documents report.json (JSON Schema, draft 2020-12) and `validate_report` checks
a report against it. Rendering and plotting are pure functions of the report dict (plus, for the
2-D view, the sampled arrays), so a report can be re-rendered from its JSON alone.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import Any

import numpy as np

from adapt.storage import Storage, join

SCHEMA_VERSION = 1

_NUM = {"type": ["number", "null"]}
_METRICS = {
    "macro_f1": _NUM,
    "micro_f1": _NUM,
    "accuracy": _NUM,
    "auroc": _NUM,
    "per_class_f1": {"type": "object", "additionalProperties": _NUM},
}
_CELL_KEYS = {
    "task": {"type": "string"},
    "representation": {"type": "string"},
    "classifier": {"type": "string"},
    "status": {"enum": ["ok", "error"]},
    "dims": {"type": ["integer", "null"]},
    **_METRICS,
}
_FOLD_ROW = {  # one cell: a fold's test (or validation) rows
    "type": "object",
    "required": [
        "task",
        "representation",
        "classifier",
        "fold",
        "status",
        "macro_f1",
        "micro_f1",
        "accuracy",
        "auroc",
    ],
    "properties": {
        **_CELL_KEYS,
        "error": {"type": ["string", "null"]},
        "fit_s": _NUM,
        "predict_s": _NUM,
        "n_train": {"type": "integer"},
        "n_test": {"type": "integer"},
        "standardized": {"type": "boolean"},
        "notes": {"type": "string"},
        "worker": {"type": "integer", "description": "process id of the worker that ran it"},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "macro_f1_fits": {"type": "array", "items": _NUM},
    },
}
_MEAN_ROW = {  # one (task, representation, classifier) over folds
    "type": "object",
    "required": [
        "task",
        "representation",
        "classifier",
        "fold",
        "status",
        "n_folds",
        "macro_f1",
        "macro_f1_lo",
        "macro_f1_hi",
        "micro_f1",
        "micro_f1_lo",
        "micro_f1_hi",
    ],
    "properties": {
        **_CELL_KEYS,
        "fold": {"const": "mean"},
        "n_folds": {"type": "integer", "minimum": 0},
        "n_failed": {"type": "integer", "minimum": 0},
        **{f"{m}_{s}": _NUM for m in ("macro_f1", "micro_f1") for s in ("lo", "hi", "std")},
        "fit_s": _NUM,
        "predict_s": _NUM,
    },
}


def _rows(fold_schema: dict) -> dict:
    fold_row = {**_FOLD_ROW, "properties": {**_FOLD_ROW["properties"], "fold": fold_schema}}
    return {"type": "array", "items": {"oneOf": [fold_row, _MEAN_ROW]}}


def _gain_row(extra: dict[str, Any]) -> dict[str, Any]:
    """Schema of one gain row: a representation against a family's best, with `extra` fields
    (the classifier, or the classifiers averaged over) required as well."""
    return {
        "type": "object",
        "required": [
            "task",
            *extra,
            "representation",
            "baseline",
            "baseline_representation",
            "metric",
            "mean",
            "lo",
            "hi",
            "n_rows",
            "n_folds",
        ],
        "properties": {
            "task": {"type": "string"},
            **extra,
            "representation": {"type": "string"},
            "baseline": {"enum": ["raw", "pca"]},
            "baseline_representation": {"type": "string"},
            "metric": {"type": "string"},
            "mean": _NUM,
            "lo": _NUM,
            "hi": _NUM,
            "candidate_score": _NUM,
            "baseline_score": _NUM,
            "n_rows": {"type": "integer"},
            "n_folds": {"type": "integer"},
        },
    }


REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "adapt score report",
    "type": "object",
    "required": [
        "schema_version",
        "run_id",
        "created_at",
        "config",
        "inputs",
        "protocol",
        "tasks",
        "results",
        "validation",
        "gains",
        "recommendation",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "run_id": {"type": "string"},
        "created_at": {"type": "string", "description": "ISO 8601, UTC"},
        "adapt_version": {"type": "string"},
        "config": {"type": "object", "description": "the whole job configuration, as run"},
        "inputs": {
            "type": "object",
            "description": "fingerprints of the embeddings scored (from their manifest)",
            "required": ["rows", "encoders"],
            "properties": {
                "embeddings_manifest": {"type": "string"},
                "manifest_sha256": {"type": "string"},
                "ids_sha256": {"type": "string"},
                "rows": {"type": "integer"},
                "encoders": {"type": "object"},
            },
        },
        "protocol": {
            "type": "object",
            "required": [
                "n_folds",
                "scheme",
                "seed",
                "metric",
                "alpha",
                "n_boot",
                "classifiers",
                "representations",
            ],
            "properties": {
                "n_folds": {"type": "integer"},
                "scheme": {"enum": ["kfold", "repeated"]},
                "only_folds": {"type": ["array", "null"], "items": {"type": "integer"}},
                "seed": {"type": "integer"},
                "metric": {"enum": ["macro_f1", "micro_f1", "accuracy"]},
                "alpha": {"type": "number"},
                "n_boot": {"type": "integer"},
                "validation_folds": {"type": "integer"},
                "val_fraction": {"type": "number"},
                "validation_rows": {"type": "integer"},
                "validation_splits": {"type": "object",
                                      "additionalProperties": {"type": "integer"}},
                "classifier_seeds": {"type": "integer", "minimum": 1},
                "seed_dependent": {"type": "array", "items": {"type": "string"}},
                "pca_k": {"type": "integer"},
                "classifiers": {"type": "array", "items": {"type": "string"}},
                "representations": {"type": "array", "items": {"type": "string"}},
            },
        },
        "tasks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "label_column",
                    "type",
                    "n_rows",
                    "n_classes",
                    "class_counts",
                    "dropped",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "label_column": {"type": "string"},
                    "type": {"enum": ["binary", "multiclass", "multilabel"]},
                    "positive": {"type": ["string", "null"]},
                    "n_rows": {"type": "integer"},
                    "n_classes": {"type": "integer"},
                    "class_counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "dropped": {"type": "object"},
                },
            },
        },
        "heads": {
            "type": "array",
            "description": "heads given by URI; each may have seen rows that are test rows here",
            "items": {"type": "object", "required": ["representation", "uri", "note"]},
        },
        "results": {
            **_rows({"type": "integer", "minimum": 0}),
            "description": "test scores: one row per cell (fold = outer fold number) "
            "and one per (task, representation, classifier) with "
            "fold = 'mean' (mean over folds, bootstrap interval lo/hi)",
        },
        "validation": {
            **_rows({"type": "string", "pattern": "^val[0-9]+([.][0-9]+)?$"}),
            "description": "validation scores (inner split of training rows), the "
            "only input of the recommendation",
        },
        "gains": {
            "type": "array",
            "description": "paired bootstrap interval of metric(representation) - "
            "metric(baseline_representation) on pooled out-of-fold predictions",
            "items": _gain_row({"classifier": {"type": "string"}}),
        },
        "mean_gains": {
            "type": "array",
            "description": "per task: paired bootstrap interval of the metric averaged over all "
            "classifiers, representation minus the baseline family's best (same row draws for "
            "every classifier)",
            "items": _gain_row({"classifiers": {"type": "array", "items": {"type": "string"}}}),
        },
        "recommendation": {
            "type": "object",
            "description": "task name -> the representation chosen on validation scores only",
            "additionalProperties": {
                "type": "object",
                "required": ["representation", "metric", "score", "basis", "by_classifier"],
                "properties": {
                    "representation": {"type": ["string", "null"]},
                    "metric": {"type": "string"},
                    "score": _NUM,
                    "basis": {"type": "string"},
                    "by_classifier": {"type": "object"},
                    "scores": {"type": "object", "additionalProperties": _NUM},
                },
            },
        },
        "folds": {
            "type": "array",
            "description": "per (task, fold): how each representation "
            "was built (PCA k, head epochs, the head's hyper-parameter search, timings)",
        },
        "failures": {"type": "array"},
        "timings": {"type": "object", "additionalProperties": _NUM},
    },
}


def validate_report(report: dict) -> None:
    """Raise ValueError listing every place where `report` departs from REPORT_SCHEMA."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(REPORT_SCHEMA)
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  - {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
            for e in errors[:20]
        ]
        raise ValueError(
            f"report does not match REPORT_SCHEMA ({len(errors)} problems):\n" + "\n".join(lines)
        )


# -- tables ----------------------------------------------------------------------------------


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _means(report: dict, task: str) -> dict[tuple[str, str], dict]:
    return {
        (r["representation"], r["classifier"]): r
        for r in report["results"]
        if r["task"] == task and r["fold"] == "mean"
    }


def _gains(report: dict, task: str) -> dict[tuple[str, str, str], dict]:
    return {
        (g["classifier"], g["representation"], g["baseline"]): g
        for g in report["gains"]
        if g["task"] == task
    }


def _gain_text(g: dict | None) -> str:
    if not g or g.get("mean") is None:
        return "-"
    return f"{_fmt(g['mean'], True)} [{_fmt(g['lo'], True)}, {_fmt(g['hi'], True)}]"


def _baseline_text(g: dict | None) -> str:
    return f"`{g['baseline_representation']}`" if g else "-"


def _task_line(t: dict, protocol: dict) -> str:
    what = f"'{t['positive']}' vs rest" if t.get("positive") else f"{t['n_classes']} classes"
    return (
        f"task {t['name']} ({t['type']}, {what}, {t['n_rows']} rows): "
        f"{protocol['metric']}, mean of {protocol['n_folds']} {protocol['scheme']} folds"
    )


def _learned(reps: list[str]) -> list[str]:
    return [r for r in reps if r.partition(":")[0] in ("projected", "head")]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def headline(report: dict) -> str:
    """The plain-text tables `adapt score` prints: per task, the metric by classifier and
    representation (* marks each classifier's best), the gain of each learned representation over
    the best raw one with its interval, and the recommendation."""
    protocol = report["protocol"]
    metric = protocol["metric"]
    reps, clfs = protocol["representations"], protocol["classifiers"]
    level = f"{1 - protocol['alpha']:.0%}"
    out = []
    for t in report["tasks"]:
        means, gains = _means(report, t["name"]), _gains(report, t["name"])
        out.append(_task_line(t, protocol))
        rows = []
        for clf in clfs:
            vals = {r: (means.get((r, clf)) or {}).get(metric) for r in reps}
            best = max((v for v in vals.values() if v is not None), default=None)
            rows.append(
                [
                    clf,
                    *(
                        _fmt(vals[r]) + ("*" if vals[r] is not None and vals[r] == best else " ")
                        for r in reps
                    ),
                ]
            )
        out.extend("  " + line for line in _table(["classifier", *reps], rows))
        learned = _learned(reps)
        if learned:
            out.append(
                f"  gain over the best raw representation, {level} interval "
                "(paired bootstrap, pooled out-of-fold):"
            )
            rows = [
                [clf, *(_gain_text(gains.get((clf, r, "raw"))) for r in learned)] for clf in clfs
            ]
            out.extend("  " + line for line in _table(["classifier", *learned], rows))
        rec = report["recommendation"].get(t["name"])
        if rec and rec.get("representation"):
            out.append(
                f"  recommended: {rec['representation']} (validation {metric} "
                f"{_fmt(rec['score'])}, mean over classifiers; chosen on validation rows "
                "only, never test)"
            )
        out.append("")
    return "\n".join(out).rstrip()


def _splits_note(protocol: dict) -> str:
    """How many inner splits each task's validation folds got, when any got more than one."""
    splits = protocol.get("validation_splits") or {}
    if not any(n > 1 for n in splits.values()):
        return ""
    each = ", ".join(f"{task} {n}" for task, n in splits.items())
    return (f"; inner splits per fold, until {protocol.get('validation_rows')} validation rows: "
            f"{each}")


def _search_lines(report: dict) -> list[str]:
    """One line on what the in-fold heads' hyper-parameter searches chose, fold by fold."""
    chosen: dict[str, Counter] = {}
    for fold in report.get("folds", []):
        for rep, info in fold.get("representations", {}).items():
            selection = info.get("search") or {}
            if selection.get("trials"):
                key = ", ".join(f"{k}={v}" for k, v in selection["overrides"].items())
                chosen.setdefault(rep, Counter())[key] += 1
    if not chosen:
        return []
    parts = []
    for rep, counts in chosen.items():
        total = sum(counts.values())
        parts.append(
            f"`{rep}`: " + "; ".join(f"{k} ({n} of {total})" for k, n in counts.most_common())
        )
    return [
        "- The heads of `projected:*` chose their settings by a search on a hold-out of each "
        "fold's training rows (adapt.search); chosen per fold, over test and validation folds: "
        + " | ".join(parts)
        + "."
    ]


def _pick_note(pick: dict) -> str:
    """Why a classifier's recommendation is not its best representation on validation."""
    best = pick.get("best_on_validation")
    if pick.get("kept_raw"):
        return f" (kept: `{best}` scored higher, without a clear gain)"
    return ""


def _fits_lines(protocol: dict) -> list[str]:
    """Which classifiers were fitted several times per cell, with different seeds."""
    seeded, n = protocol.get("seed_dependent") or [], protocol.get("classifier_seeds", 1)
    if not seeded or n < 2:
        return []
    names = ", ".join(f"`{c}`" for c in seeded)
    return [
        f"- {names}: fitted {n} times per cell with different seeds (their fits draw random "
        "numbers); a cell's scores, and its side of every paired gain, are the mean over the fits."
    ]


def render_markdown(report: dict, plots: list[str] = ()) -> str:
    """report.md: what a person reads to decide which representation to use."""
    protocol, inputs = report["protocol"], report.get("inputs", {})
    metric = protocol["metric"]
    reps, clfs = protocol["representations"], protocol["classifiers"]
    level = f"{1 - protocol['alpha']:.0%}"
    lines = [
        f"# Score report {report['run_id']}",
        "",
        f"Created {report['created_at']} by adapt {report.get('adapt_version', '?')}. "
        f"Corpus `{inputs.get('corpus', report['config'].get('corpus'))}`, "
        f"{inputs.get('rows')} embedded rows"
        + (
            f", embeddings manifest sha256 `{inputs['manifest_sha256'][:16]}`"
            if inputs.get("manifest_sha256")
            else ""
        )
        + ".",
        "",
        "## How to read it",
        "",
        f"- Protocol: stratified {protocol['scheme']} with {protocol['n_folds']} folds "
        f"(seed {protocol['seed']}); every representation is scored on the same folds. "
        f"Numbers are `{metric}` means over folds with a {level} bootstrap interval over folds."
        + (
            f" Only folds {protocol['only_folds']} were scored."
            if protocol.get("only_folds") is not None
            else ""
        ),
        *_fits_lines(protocol),
        "- PCA (k = "
        f"{protocol.get('pca_k')}), the per-modality scaling of `raw:concat` and the heads of "
        "`projected:*` are fitted on each fold's training rows only.",
        f"- Gains: {metric}(representation) - {metric}(baseline), {level} paired bootstrap "
        "interval on the pooled out-of-fold predictions. The baseline is the best raw (or PCA) "
        "representation for that task and classifier, picked on the same test rows: this favours "
        "the baseline, so gains are if anything understated.",
        "- Recommendation: chosen from validation cells only (inner splits of the training rows "
        f"of {protocol.get('validation_folds', 0)} outer fold(s), each holding out "
        f"{protocol.get('val_fraction', 0):.0%}{_splits_note(protocol)}), never from test rows.",
    ]
    lines += _search_lines(report)
    for h in report.get("heads", []):
        lines.append(
            f"- `{h['representation']}` is a head given by URI (`{h['uri']}`): {h['note']}."
        )
    for t in report["tasks"]:
        name = t["name"]
        means, gains = _means(report, name), _gains(report, name)
        lines += ["", f"## Task `{name}`", "", _task_line(t, protocol) + "."]
        dropped = t.get("dropped", {})
        if dropped.get("classes") or dropped.get("unlabelled"):
            lines.append(
                f"Dropped: {dropped.get('unlabelled', 0)} unlabelled rows; classes "
                f"under min_class_count: {dropped.get('classes') or 'none'}."
            )
        rec = report["recommendation"].get(name)
        if rec and rec.get("representation"):
            lines += [
                "",
                f"**Recommended: `{rec['representation']}`** (validation {metric} "
                f"{_fmt(rec['score'])}, mean over classifiers). {rec['basis']}.",
            ]
            per = ", ".join(
                f"{c}: `{v['representation']}`{_pick_note(v)}"
                for c, v in rec.get("by_classifier", {}).items()
            )
            if per:
                lines.append(f"Recommended per classifier: {per}.")
        lines += [
            "",
            f"### {metric} by representation and classifier",
            "",
            "| classifier | " + " | ".join(f"`{r}`" for r in reps) + " |",
            "|---|" + "---|" * len(reps),
        ]
        for clf in clfs:
            cells, vals = [], {r: (means.get((r, clf)) or {}).get(metric) for r in reps}
            best = max((v for v in vals.values() if v is not None), default=None)
            for r in reps:
                m = means.get((r, clf)) or {}
                v = m.get(metric)
                text = _fmt(v)
                if metric in ("macro_f1", "micro_f1") and v is not None:
                    text += f" [{_fmt(m.get(f'{metric}_lo'))}, {_fmt(m.get(f'{metric}_hi'))}]"
                cells.append(f"**{text}**" if v is not None and v == best else text)
            lines.append(f"| {clf} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "### Best representation per classifier (test)",
            "",
            "| classifier | best | " + metric + " | runner-up |",
            "|---|---|---|---|",
        ]
        for clf in clfs:
            ranked = sorted(
                (
                    (m.get(metric), r)
                    for (r, c), m in means.items()
                    if c == clf and m.get(metric) is not None
                ),
                reverse=True,
            )
            if ranked:
                second = f"`{ranked[1][1]}` {_fmt(ranked[1][0])}" if len(ranked) > 1 else "-"
                lines.append(f"| {clf} | `{ranked[0][1]}` | {_fmt(ranked[0][0])} | {second} |")
        averaged = [g for g in report.get("mean_gains", []) if g["task"] == name]
        if averaged:
            lines += [
                "",
                f"### Averaged over all {len(clfs)} classifiers ({level} paired interval)",
                "",
                f"| representation | mean {metric} | over raw | raw baseline | over PCA "
                "| PCA baseline |",
                "|---|---|---|---|---|---|",
            ]
            by_rep: dict[str, dict] = {}
            for g in averaged:
                by_rep.setdefault(g["representation"], {})[g["baseline"]] = g
            for r, pair in by_rep.items():
                g_raw, g_pca = pair.get("raw"), pair.get("pca")
                score = (g_raw or g_pca)["candidate_score"]
                lines.append(
                    f"| `{r}` | {_fmt(score)} | {_gain_text(g_raw)} | "
                    f"{_baseline_text(g_raw)} | "
                    f"{_gain_text(g_pca)} | "
                    f"{_baseline_text(g_pca)} |"
                )
        cands = [r for r in reps if r.partition(":")[0] != "raw"]
        if cands:
            lines += [
                "",
                f"### Gains over raw and over PCA ({level} paired interval)",
                "",
                "| classifier | representation | over raw | raw baseline | over PCA "
                "| PCA baseline |",
                "|---|---|---|---|---|---|",
            ]
            for clf in clfs:
                for r in cands:
                    g_raw, g_pca = gains.get((clf, r, "raw")), gains.get((clf, r, "pca"))
                    if not g_raw and not g_pca:
                        continue
                    mark = (
                        " (> 0)"
                        if g_raw and g_raw.get("lo") is not None and g_raw["lo"] > 0
                        else ""
                    )
                    lines.append(
                        f"| {clf} | `{r}` | {_gain_text(g_raw)}{mark} | "
                        f"{_baseline_text(g_raw)} | "
                        f"{_gain_text(g_pca)} | "
                        f"{_baseline_text(g_pca)} |"
                    )
    failures = report.get("failures", [])
    if failures:
        lines += ["", f"## Failed cells ({len(failures)})", ""]
        for f in failures[:50]:
            lines.append(
                f"- {f['task']} / {f['representation']} / {f['classifier']} / fold "
                f"{f['fold']}: {f['error']}"
            )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_scores(report: dict) -> bytes:
    """Grouped bars: the metric by classifier, one bar per representation, interval whiskers;
    one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocol = report["protocol"]
    metric, reps, clfs = protocol["metric"], protocol["representations"], protocol["classifiers"]
    tasks = report["tasks"]
    fig, axes = plt.subplots(
        len(tasks),
        1,
        figsize=(max(8, 1.3 * len(clfs) * max(1, len(reps) / 4)), 3.6 * len(tasks)),
        squeeze=False,
    )
    width = 0.8 / len(reps)
    colors = plt.get_cmap("tab10" if len(reps) <= 10 else "tab20")
    for ax, t in zip(axes[:, 0], tasks, strict=True):
        means = _means(report, t["name"])
        for j, r in enumerate(reps):
            vals, lo, hi = [], [], []
            for clf in clfs:
                m = means.get((r, clf)) or {}
                v = m.get(metric)
                vals.append(np.nan if v is None else v)
                lo_v, hi_v = m.get(f"{metric}_lo"), m.get(f"{metric}_hi")
                lo.append(0 if v is None or lo_v is None else max(0.0, v - lo_v))
                hi.append(0 if v is None or hi_v is None else max(0.0, hi_v - v))
            x = np.arange(len(clfs)) + (j - (len(reps) - 1) / 2) * width
            ax.bar(x, vals, width, yerr=[lo, hi], label=r, color=colors(j % colors.N), capsize=2)
        ax.set_xticks(np.arange(len(clfs)), clfs)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.05)
        ax.set_title(_task_line(t, protocol), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(reps)), loc="lower left")
    return _figure_bytes(fig)


def plot_embedding_2d(samples: dict[str, tuple[np.ndarray, np.ndarray]], task: dict) -> bytes:
    """Side by side, each representation's rows in the plane of its two leading principal
    components, coloured by label (the ten largest classes; the rest grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    classes = list(task["class_counts"])
    fig, axes = plt.subplots(1, len(samples), figsize=(5.2 * len(samples), 4.6), squeeze=False)
    for ax, (name, (x, y)) in zip(axes[0], samples.items(), strict=True):
        y = np.asarray(y)
        if y.ndim == 2:  # multilabel: colour by the first label a row carries (-1: none)
            y = np.where(y.any(axis=1), y.argmax(axis=1), -1)
        z = PCA(n_components=2, random_state=0).fit_transform(np.asarray(x, dtype=np.float64))
        ids, counts = np.unique(y[y >= 0], return_counts=True)
        top = ids[np.argsort(-counts)][:10]
        rest = ~np.isin(y, top)
        ax.scatter(
            z[rest, 0], z[rest, 1], s=6, c="lightgrey", label="other" if rest.any() else None
        )
        cmap = plt.get_cmap("tab10")
        for j, c in enumerate(top):
            sel = y == c
            ax.scatter(z[sel, 0], z[sel, 1], s=6, color=cmap(j), label=classes[c][:24])
        ax.set_title(f"{name} ({x.shape[1]}-d), {len(x)} test rows of one fold", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"task {task['name']}: PCA to 2-D", fontsize=10)
    return _figure_bytes(fig)


# -- storage ---------------------------------------------------------------------------------


def write_report(
    store: Storage,
    report_dir: str,
    report: dict,
    samples: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    plots: bool = True,
) -> list[str]:
    """Validate, then write plots, report.md and, last, report.json; return the URIs written."""
    validate_report(report)
    written, names = [], []
    if plots:
        figures = {"f1_by_representation.png": plot_scores(report)}
        if samples:
            figures["embedding_2d.png"] = plot_embedding_2d(samples, report["tasks"][0])
        for name, data in figures.items():
            uri = join(report_dir, name)
            store.write_bytes(uri, data)
            written.append(uri)
            names.append(name)
    uri = join(report_dir, "report.md")
    store.write_bytes(uri, render_markdown(report, names).encode())
    written.append(uri)
    uri = join(report_dir, "report.json")
    store.write_json(uri, report)  # last: the completion marker
    written.append(uri)
    return written
