"""The report's plots as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io

import numpy as np

from adapt.score.report.markdown import _gains, _learned, _means, _task_line


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _recommended(report: dict, task: str) -> tuple[str, str] | None:
    pair = (report["recommendation"].get(task) or {}).get("pair")
    return (pair["representation"], pair["classifier"]) if pair else None


def plot_scores(report: dict) -> bytes:
    """Grouped bars: the metric by classifier, one bar per representation, interval whiskers,
    the recommended pair outlined and starred; one panel per task, the legend beside them."""
    plt = _pyplot()

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
        chosen = _recommended(report, t["name"])
        low = 1.0
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
            low = min([low, *(v for v in vals if not np.isnan(v))])
            if chosen and chosen[0] == r and chosen[1] in clfs:
                k = clfs.index(chosen[1])
                ax.bar(x[k], vals[k], width, fill=False, edgecolor="black", linewidth=1.6)
                ax.annotate(
                    "recommended",
                    (x[k], vals[k] + hi[k]),
                    xytext=(0, 4),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                )
        ax.set_xticks(np.arange(len(clfs)), clfs)
        ax.set_ylabel(metric)
        # Zoomed to the scores: differences of a few points are the story, not the 0-1 range.
        ax.set_ylim(max(0.0, low - 0.1), 1.02)
        ax.set_title(_task_line(t, protocol), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _figure_bytes(fig)


def plot_gains(report: dict) -> bytes:
    """Each learned representation's gain over the best raw one with its paired interval, per
    classifier and averaged over them, and the recommended pair's gap to the best raw pair on
    the test rows: one panel per task, zero marked."""
    plt = _pyplot()
    protocol = report["protocol"]
    reps, clfs = _learned(protocol["representations"]), protocol["classifiers"]
    tasks = report["tasks"]
    level = f"{1 - protocol['alpha']:.0%}"
    n_rows = len(reps) * (len(clfs) + 1) + 1
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 0.32 * n_rows + 1.4), squeeze=False)
    for ax, t in zip(axes[:, 0], tasks, strict=True):
        gains = _gains(report, t["name"])
        mean_gains = {
            g["representation"]: g
            for g in report.get("mean_gains", [])
            if g["task"] == t["name"] and g["baseline"] == "raw"
        }
        rows: list[tuple[str, dict | None, str]] = []
        verdict = report.get("pair_verdict", {}).get(t["name"])
        chosen = _recommended(report, t["name"])
        if (
            verdict
            and verdict.get("mean") is not None
            and chosen
            and verdict["baseline_pair"] != list(chosen)  # else it is its own baseline
        ):
            base = verdict["baseline_pair"]
            rows.append(
                (
                    f"recommended {chosen[0]} + {chosen[1]}\nvs best raw {base[0]} + {base[1]}",
                    verdict,
                    "black",
                )
            )
        for r in reps:
            rows.append((f"{r}, mean over classifiers", mean_gains.get(r), "tab:blue"))
            rows += [(f"{r}, {c}", gains.get((c, r, "raw")), "tab:gray") for c in clfs]
        rows = [row for row in rows if row[1] and row[1].get("mean") is not None]
        for i, (_, g, color) in enumerate(rows):
            y = len(rows) - 1 - i
            ax.errorbar(
                g["mean"],
                y,
                xerr=[[g["mean"] - g["lo"]], [g["hi"] - g["mean"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0, color="red", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [label for label, _, _ in reversed(rows)], fontsize=7)
        ax.set_xlabel(f"gain in {protocol['metric']} over the best raw ({level} paired interval)")
        ax.set_title(_task_line(t, protocol), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    return _figure_bytes(fig)


def plot_confusion(report: dict) -> bytes | None:
    """The recommended pair's confusion matrix per single-label task, each row as shares of its
    true class; None when no task has one."""
    plt = _pyplot()
    tasks = [t for t in report["tasks"] if t["name"] in report.get("confusion", {})]
    if not tasks:
        return None
    sizes = [len(t["class_counts"]) for t in tasks]
    side = min(12.0, max(4.5, 0.35 * max(sizes) + 2.5))
    fig, axes = plt.subplots(1, len(tasks), figsize=(side * len(tasks), side), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        conf = report["confusion"][t["name"]]
        m = np.asarray(conf["matrix"], dtype=float)
        shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        classes = [c[:20] for c in t["class_counts"]]
        if len(classes) <= 40:
            ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
            if len(classes) <= 15:
                for i in range(len(classes)):
                    for j in range(len(classes)):
                        if m[i, j]:
                            ax.text(
                                j,
                                i,
                                f"{m[i, j]:.0f}",
                                ha="center",
                                va="center",
                                fontsize=6,
                                color="white" if shares[i, j] > 0.5 else "black",
                            )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true class")
        ax.set_title(
            f"task {t['name']}: {conf['representation']} + {conf['classifier']}, "
            f"{conf['n_rows']} pooled test rows",
            fontsize=9,
        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _figure_bytes(fig)


def plot_embedding_2d(samples: dict[str, tuple[np.ndarray, np.ndarray]], task: dict) -> bytes:
    """Side by side, each representation's rows in the plane of its two leading principal
    components, coloured by label (the ten largest classes; the rest grey)."""
    plt = _pyplot()
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
