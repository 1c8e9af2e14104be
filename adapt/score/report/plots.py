"""The report's plots as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io

import numpy as np

from adapt.score.report.markdown import _means, _task_line


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
