"""report.md, and the few lines the stage prints, from a report dict."""

from __future__ import annotations

import math
from collections import Counter


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
    sample = t.get("sample")
    rows = f"{t['n_rows']} rows" + (f" sampled of {sample['of']}" if sample else "")
    return (
        f"task {t['name']} ({t['type']}, {what}, {rows}): "
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
        pair = (rec or {}).get("pair")
        if pair:
            verdict = report.get("pair_verdict", {}).get(t["name"])
            text = _pair_text(pair, verdict, metric).replace("`", "")  # plain text here
            out.append(f"  recommended pair: {text}")
        out.append("")
    return "\n".join(out).rstrip()


def _pair_text(pair: dict, test: dict | None, metric: str) -> str:
    """The pair to deploy, how it was picked, and how it did on test rows against the best
    raw pair."""
    text = (
        f"`{pair['representation']}` + `{pair['classifier']}` (validation {metric} "
        f"{_fmt(pair['score'])}"
    )
    if pair.get("kept_raw"):
        best = pair["best_on_validation"]
        text += f"; kept raw: `{best[0]}` + `{best[1]}` scored higher without a clear gain"
    text += ")"
    if (
        test
        and test.get("mean") is not None
        and test["baseline_pair"]
        == [
            pair["representation"],
            pair["classifier"],
        ]
    ):
        text += (
            f"; it is also the best raw pair on the test rows ({metric} "
            f"{_fmt(test['candidate_score'])})"
        )
    elif test and test.get("mean") is not None:
        base = test["baseline_pair"]
        text += (
            f"; on test rows {_fmt(test['candidate_score'])} against "
            f"{_fmt(test['baseline_score'])} for the best raw pair `{base[0]}` + `{base[1]}` "
            f"({test['baseline_kind']}, picked on the test rows, which favours it): gap "
            f"{test['mean']:+.3f} [{test['lo']:+.3f}, {test['hi']:+.3f}], paired interval over "
            f"{test['n_rows']} pooled rows"
        )
    return text


def _splits_note(protocol: dict) -> str:
    """How many inner splits each task's validation folds got, when any got more than one."""
    splits = protocol.get("validation_splits") or {}
    if not any(n > 1 for n in splits.values()):
        return ""
    each = ", ".join(f"{task} {n}" for task, n in splits.items())
    return (
        f"; inner splits per fold, until {protocol.get('validation_rows')} validation rows: {each}"
    )


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
        "fold's training rows (adapt.train.search); chosen per fold, over test and validation folds: "
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


def _tuned_lines(protocol: dict) -> list[str]:
    """What the tuned probes are, where the protocol has any."""
    from adapt.classifiers import TUNED_C, TUNED_FOLDS, TUNED_PROBES

    tuned = [c for c in protocol["classifiers"] if c in TUNED_PROBES]
    if not tuned:
        return []
    names = ", ".join(f"`{c}`" for c in tuned)
    grid = ", ".join(f"{c:g}" for c in TUNED_C)
    return [
        f"- {names}: tuned probes. Each cell chooses C from {{{grid}}} by an inner stratified "
        f"{TUNED_FOLDS}-fold CV over its own training rows (macro-F1), then refits with it; "
        "the test rows play no part. `logreg` and `svc` keep scikit-learn's C = 1."
    ]


def _sureness(test: dict | None, level: str) -> str:
    if not test or test.get("mean") is None:
        return "not compared on the test rows"
    if test["lo"] > 0:
        return f"better than the best raw pair: the {level} interval is above zero"
    if test["hi"] < 0:
        return f"worse than the best raw pair on the test rows: the {level} interval is below zero"
    return f"no clear difference from the best raw pair: the {level} interval spans zero"


def _verdict_line(report: dict, t: dict) -> list[str]:
    """One task's verdict: the pair to use, by how much and how sure on the test rows, why it
    was chosen, and how to deploy it."""
    protocol, name = report["protocol"], t["name"]
    metric, level = protocol["metric"], f"{1 - protocol['alpha']:.0%}"
    rec = report["recommendation"].get(name) or {}
    pair = rec.get("pair")
    if not pair:
        basis = rec.get("basis", "no validation cells")
        return [f"- Task `{name}`: no recommendation ({basis})."]
    rep, clf = pair["representation"], pair["classifier"]
    test = report.get("pair_verdict", {}).get(name)
    line = f"- Task `{name}`: **use `{rep}` + `{clf}`**."
    if test and test.get("mean") is not None:
        base = test["baseline_pair"]
        if base == [rep, clf]:
            line += (
                f" It is also the best raw pair on the test rows ({metric} "
                f"{_fmt(test['candidate_score'])})."
            )
        else:
            line += (
                f" Test {metric} {_fmt(test['candidate_score'])} against "
                f"{_fmt(test['baseline_score'])} for the best raw pair `{base[0]}` + `{base[1]}` "
                f"({test['baseline_kind']}): {test['mean']:+.3f} "
                f"[{test['lo']:+.3f}, {test['hi']:+.3f}] over {test['n_rows']} pooled rows, "
                f"{_sureness(test, level)}."
            )
    why = "Chosen on validation rows only, never test rows"
    if pair.get("kept_raw"):
        best = pair["best_on_validation"]
        why += (
            f"; `{best[0]}` + `{best[1]}` scored higher on validation, but without a gain over "
            "raw whose interval is above zero, so raw stays"
        )
    lines = [line + f" {why}."]
    if rec.get("representation"):
        per = rec.get("by_classifier") or {}
        lines.append(
            f"  With a classifier of your own: `{rec['representation']}` has the best validation "
            f"{metric} averaged over the {len(protocol['classifiers'])} classifiers "
            f"({_fmt(rec.get('score'))})"
            + (
                "; per classifier: "
                + ", ".join(f"{c} `{v['representation']}`" for c, v in per.items())
                if per
                else ""
            )
            + "."
        )
    dep = report.get("deploy", {}).get(name)
    if dep:
        deploy = f"  Deploy: {dep['note']}."
        if dep.get("commands"):
            deploy += " Run " + ", then ".join(f"`{c}`" for c in dep["commands"]) + "."
        lines.append(deploy)
    return lines


def _verdict(report: dict) -> list[str]:
    lines = ["", "## Verdict", ""]
    for t in report["tasks"]:
        lines += _verdict_line(report, t)
    return lines


def _time_lines(report: dict) -> list[str]:
    """Where the score stage spent its time, and each classifier's fit time per cell."""
    timings = report.get("timings") or {}
    # On Ray, folds and cells are submitted at once and the folds' PCA and heads are fitted
    # while cells run: only the local executor prepares the folds first.
    ray = "submit_s" in timings
    keys = (
        ("cells_s", "summary_s", "before_write_s")
        if ray
        else ("build_s", "cells_s", "summary_s", "before_write_s")
    )
    parts = [(k, timings.get(k)) for k in keys]
    names = {
        "build_s": "folds prepared (PCA, in-fold heads)",
        "cells_s": "cells, with the folds' PCA and in-fold heads" if ray else "cells",
        "summary_s": "summary",
        "before_write_s": "in all, before writing the report",
    }
    text = ", ".join(f"{names[k]} {v:.1f} s" for k, v in parts if v is not None)
    fits: dict[str, list[float]] = {}
    for r in report["results"]:
        if r["fold"] != "mean" and r.get("fit_s") is not None:
            fits.setdefault(r["classifier"], []).append(r["fit_s"])
    per = ", ".join(f"{c} {sum(v) / len(v):.2f} s ({sum(v):.0f} s in all)" for c, v in fits.items())
    lines = ["", "## Time", ""]
    if text:
        lines.append(f"- Score stage: {text}.")
    if per:
        lines.append(f"- Fit time per test cell, mean over cells: {per}.")
    return lines if len(lines) > 3 else []


def _per_class(report: dict, t: dict) -> list[str]:
    """Per-class F1 of the recommended pair beside the best raw pair's, with the class each
    class is most often mistaken for (confusion matrix on the pooled test rows)."""
    name = t["name"]
    pair = ((report["recommendation"].get(name) or {}).get("pair")) or {}
    if not pair:
        return []
    means = _means(report, name)
    mine = (means.get((pair["representation"], pair["classifier"])) or {}).get("per_class_f1")
    if not mine:
        return []
    base = (report.get("pair_verdict", {}).get(name) or {}).get("baseline_pair")
    if base == [pair["representation"], pair["classifier"]]:
        base = None  # the pair is the best raw pair: one column says it
    theirs = ((means.get(tuple(base)) or {}).get("per_class_f1") or {}) if base else {}
    conf = report.get("confusion", {}).get(name)
    classes = list(t["class_counts"])
    limit = 30
    order = sorted(classes, key=lambda c: (mine.get(c) is None, mine.get(c) or 0.0))
    shown = classes if len(classes) <= limit else order[:limit]
    base_col = f"F1 of `{base[0]}` + `{base[1]}` | " if base else ""
    lines = [
        "",
        f"### Per class: `{pair['representation']}` + `{pair['classifier']}` (test, mean F1 "
        "over folds)",
        "",
    ]
    if len(classes) > limit:
        lines += [f"The {limit} classes with the lowest F1 of {len(classes)}.", ""]
    lines += [
        f"| class | rows | F1 | {base_col}most often mistaken for |",
        "|---|---|---|" + ("---|" if base else "") + "---|",
    ]
    for c in shown:
        mistaken = "-"
        if conf:
            i = classes.index(c)
            row = list(conf["matrix"][i])
            total = sum(row)
            row[i] = -1.0
            j = max(range(len(row)), key=lambda k: row[k])
            if total and row[j] > 0:
                mistaken = f"{classes[j]} ({row[j] / total:.0%} of its rows)"
        other = f"{_fmt(theirs.get(c))} | " if base else ""
        lines.append(f"| {c} | {t['class_counts'][c]} | {_fmt(mine.get(c))} | {other}{mistaken} |")
    return lines


def render_markdown(report: dict, plots: list[str] = ()) -> str:
    """report.md: what a person reads to decide which representation to use: the verdict
    first, then the evidence."""
    lines = _title(report) + _verdict(report) + _time_lines(report) + _intro(report)
    for t in report["tasks"]:
        lines += _task_section(report, t)
    notes = report.get("notes", [])
    if notes:
        lines += ["", "## Settings changed to fit the data", ""]
        lines += [f"- {n['classifier']} ({n['cells']} cells): {n['note']}" for n in notes[:30]]
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


def _sample_lines(report: dict) -> list[str]:
    """What the row sample of `score.max_rows` means for the numbers, where a task has one."""
    lines = []
    for t in report.get("tasks", []):
        sample = t.get("sample")
        if not sample:
            continue
        narrower = (sample["rows"] / sample["of"]) ** 0.5
        lines.append(
            f"- Task {t['name']}: a stratified sample of {sample['rows']} of its {sample['of']} "
            f"rows (score.max_rows = {sample['max_rows']}, by id hash with seed {sample['seed']}) "
            "is scored: classifier cells and in-fold heads use only these rows. Every interval is "
            f"that of {sample['rows']} rows; on all rows it would be about {narrower:.2g} times "
            "as wide (intervals shrink as 1/sqrt(rows)). A head trained by the train stage uses "
            "every row."
        )
    return lines


def _title(report: dict) -> list[str]:
    """The title and the inputs."""
    inputs = report.get("inputs", {})
    return [
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
    ]


def _intro(report: dict) -> list[str]:
    """How to read the numbers."""
    protocol = report["protocol"]
    metric = protocol["metric"]
    level = f"{1 - protocol['alpha']:.0%}"
    lines = [
        "",
        "## How to read it",
        "",
        f"- Protocol: stratified {protocol['scheme']} with {protocol['n_folds']} folds "
        f"(seed {protocol['seed']}); every representation is scored on the same folds. "
        f"Numbers are `{metric}` means over folds; in brackets, a {level} interval of that mean "
        "(Student t over the folds, widened by Nadeau and Bengio's correction because folds "
        "share training rows; with few folds it is wide)."
        + (
            f" Only folds {protocol['only_folds']} were scored."
            if protocol.get("only_folds") is not None
            else ""
        ),
        *_fits_lines(protocol),
        *_tuned_lines(protocol),
        "- PCA (k = "
        f"{protocol.get('pca_k')}), the per-modality scaling of `raw:concat` and the heads of "
        "`projected:*` are fitted on each fold's training rows only.",
        f"- Gains: {metric}(representation) - {metric}(baseline), {level} paired bootstrap "
        "interval on the pooled out-of-fold predictions. The baseline is the best raw (or PCA) "
        "representation for that task and classifier, picked on the same test rows: this favours "
        "the baseline, so gains are if anything understated.",
        "- Recommendation: chosen from validation cells only (inner splits of the training rows "
        f"of {protocol.get('validation_folds', 0)} outer fold(s), each holding out "
        f"{protocol.get('validation_fraction', 0):.0%}{_splits_note(protocol)}), never from test "
        "rows.",
    ]
    lines += _sample_lines(report)
    lines += _search_lines(report)
    for h in report.get("heads", []):
        lines.append(
            f"- `{h['representation']}` is a head given by URI (`{h['uri']}`): {h['note']}."
        )
    return lines


def _task_section(report: dict, t: dict) -> list[str]:
    """One task: what was kept, the recommendation, then the tables that back it."""
    protocol = report["protocol"]
    name = t["name"]
    lines = ["", f"## Task `{name}`", "", _task_line(t, protocol) + "."]
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
            f"**Recommended: `{rec['representation']}`** (validation {protocol['metric']} "
            f"{_fmt(rec['score'])}, mean over classifiers). {rec['basis']}.",
        ]
        per = ", ".join(
            f"{c}: `{v['representation']}`{_pick_note(v)}"
            for c, v in rec.get("by_classifier", {}).items()
        )
        if per:
            lines.append(f"Recommended per classifier: {per}.")
        if rec.get("pair"):
            verdict = report.get("pair_verdict", {}).get(name)
            text = _pair_text(rec["pair"], verdict, protocol["metric"])
            lines.append(f"**Recommended pair** to deploy: {text}.")
    lines += _per_class(report, t)
    means = _means(report, name)
    lines += _score_table(protocol, means)
    lines += _best_table(protocol, means)
    lines += _averaged_table(report, name)
    lines += _gains_table(protocol, _gains(report, name))
    return lines


def _score_table(protocol: dict, means: dict) -> list[str]:
    metric, reps = protocol["metric"], protocol["representations"]
    lines = [
        "",
        f"### {metric} by representation and classifier",
        "",
        "| classifier | " + " | ".join(f"`{r}`" for r in reps) + " |",
        "|---|" + "---|" * len(reps),
    ]
    for clf in protocol["classifiers"]:
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
    return lines


def _best_table(protocol: dict, means: dict) -> list[str]:
    metric = protocol["metric"]
    lines = [
        "",
        "### Best representation per classifier (test)",
        "",
        "| classifier | best | " + metric + " | runner-up |",
        "|---|---|---|---|",
    ]
    for clf in protocol["classifiers"]:
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
    return lines


def _averaged_table(report: dict, name: str) -> list[str]:
    protocol = report["protocol"]
    averaged = [g for g in report.get("mean_gains", []) if g["task"] == name]
    if not averaged:
        return []
    level = f"{1 - protocol['alpha']:.0%}"
    lines = [
        "",
        f"### Averaged over all {len(protocol['classifiers'])} classifiers ({level} paired "
        "interval)",
        "",
        f"| representation | mean {protocol['metric']} | over raw | raw baseline | over PCA "
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
            f"| `{r}` | {_fmt(score)} | {_gain_text(g_raw)} | {_baseline_text(g_raw)} | "
            f"{_gain_text(g_pca)} | {_baseline_text(g_pca)} |"
        )
    return lines


def _gains_table(protocol: dict, gains: dict) -> list[str]:
    cands = [r for r in protocol["representations"] if r.partition(":")[0] != "raw"]
    if not cands:
        return []
    lines = [
        "",
        f"### Gains over raw and over PCA ({1 - protocol['alpha']:.0%} paired interval)",
        "",
        "| classifier | representation | over raw | raw baseline | over PCA | PCA baseline |",
        "|---|---|---|---|---|---|",
    ]
    for clf in protocol["classifiers"]:
        for r in cands:
            g_raw, g_pca = gains.get((clf, r, "raw")), gains.get((clf, r, "pca"))
            if not g_raw and not g_pca:
                continue
            mark = " (> 0)" if g_raw and g_raw.get("lo") is not None and g_raw["lo"] > 0 else ""
            lines.append(
                f"| {clf} | `{r}` | {_gain_text(g_raw)}{mark} | {_baseline_text(g_raw)} | "
                f"{_gain_text(g_pca)} | {_baseline_text(g_pca)} |"
            )
    return lines
