"""Uncertainty: intervals of a mean over folds and paired bootstrap intervals of gains over test
rows.

A gain between two representations is judged on the same test rows for both sides: each
resample draws the rows once and scores both predictions on that draw (`paired_gain_ci`,
`paired_mean_gain_ci` for a gain averaged over classifiers). `aggregate` turns per-fold result
rows into one row per (task, representation, classifier).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from adapt.metrics import FAST_GAIN_METRICS, _check_ids, _count_metric

# Bootstrap resamples are drawn in blocks of about this many row draws (8 bytes each as float
# weights, so ~16 MiB per block) to keep memory flat however many rows or resamples are asked for.
_BOOT_BLOCK_DRAWS = 2_000_000


def _check_bootstrap(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha!r}")


def _interval(point: float, stats: np.ndarray, alpha: float) -> dict[str, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi)}


def folds_mean_ci(
    values: Sequence[float], test_train_ratio: float | None = None, alpha: float = 0.05
) -> dict[str, float]:
    """Interval of the mean of a metric over a few folds (3 to 10): Student t with n - 1 degrees
    of freedom, its variance widened by Nadeau and Bengio's correction (1/n + n_test/n_train)
    because folds share training rows and their scores are not independent.

    `test_train_ratio` is n_test / n_train of the folds (1 / (k - 1) for k-fold); None gives the
    plain t interval. The bounds are clipped to [0, 1], the range of every metric it is used for.
    One value gives lo = hi = the value: no spread is measured.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05 for a 95% interval; got {alpha!r}")
    v = np.asarray(values, dtype=float).ravel()
    if len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"need one or more finite values, got {v.tolist()}")
    mean = float(v.mean())
    if len(v) == 1:
        return {"mean": mean, "lo": mean, "hi": mean}
    from scipy.stats import t

    n = len(v)
    factor = 1 / n + (test_train_ratio or 0.0)
    half = float(t.ppf(1 - alpha / 2, n - 1) * math.sqrt(factor * v.var(ddof=1)))
    return {"mean": mean, "lo": max(0.0, mean - half), "hi": min(1.0, mean + half)}


def paired_gain_ci(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric_fn: str | Callable[[np.ndarray, np.ndarray], float] = "macro_f1",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap CI of metric(b) - metric(a) over the same test rows.

    Each resample draws test rows with replacement and scores both predictions on the same draw,
    so the interval reflects the gain's own noise, not each side's. Returns {"mean": the gain on
    all rows, "lo", "hi"}; identical predictions give exactly 0, 0, 0.
    `metric_fn`: "macro_f1", "micro_f1" or "accuracy" (computed for all resamples at once from
    per-class counts, matching `metrics`), or any f(y_true, y_pred) -> float (one call per resample,
    slower). Labels are class ids (vector) or a 0/1 matrix (multilabel). With a named metric, a
    side may be a stack of several fits (seeds) of one classifier, see `paired_mean_gain_ci`.
    """
    _check_bootstrap(n_boot, alpha)
    y_true, pred_a, pred_b = (np.asarray(x) for x in (y_true, pred_a, pred_b))
    if callable(metric_fn):
        if not (y_true.shape == pred_a.shape == pred_b.shape) or len(y_true) == 0:
            raise ValueError(
                f"y_true {y_true.shape}, pred_a {pred_a.shape} and pred_b {pred_b.shape} must be"
                " non-empty and the same shape: predictions of both sides on the same test rows"
            )
        n = len(y_true)
        rng = np.random.default_rng(seed)
        point = metric_fn(y_true, pred_b) - metric_fn(y_true, pred_a)
        stats = np.empty(n_boot)
        for i in range(n_boot):
            idx = rng.integers(0, n, size=n)
            stats[i] = metric_fn(y_true[idx], pred_b[idx]) - metric_fn(y_true[idx], pred_a[idx])
        return _interval(point, stats, alpha)

    if metric_fn not in FAST_GAIN_METRICS:
        raise ValueError(
            f"unknown metric {metric_fn!r}: use one of {list(FAST_GAIN_METRICS)} or a function"
            " f(y_true, y_pred) -> float"
        )
    # The count-based bootstrap, shared with the classifier-averaged gain: one pair is its k = 1.
    return paired_mean_gain_ci(y_true, [pred_a], [pred_b], metric_fn, n_boot, alpha, seed)


def paired_mean_gain_ci(
    y_true: np.ndarray,
    preds_a: Sequence[np.ndarray],
    preds_b: Sequence[np.ndarray],
    metric: str = "macro_f1",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap CI of mean_k metric(preds_b[k]) - mean_k metric(preds_a[k]).

    The k pairs are several classifiers' predictions on the same test rows (e.g. each classifier
    on a learned representation vs on the baseline); every resample draws the rows once and scores
    all 2k predictions on that draw, so the interval is that of the gain averaged over classifiers.
    A prediction may also be a stack of several fits of one classifier (seeds), shaped
    (fits, *y_true.shape): its metric is then the mean over the fits, scored on the same draw.
    `metric`: "macro_f1", "micro_f1" or "accuracy".
    """
    _check_bootstrap(n_boot, alpha)
    if metric not in FAST_GAIN_METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {list(FAST_GAIN_METRICS)}")
    y_true = np.asarray(y_true)
    if not preds_a or len(preds_a) != len(preds_b) or len(y_true) == 0:
        raise ValueError("need one or more (baseline, candidate) prediction pairs on >= 1 row")

    def stack(p: Any) -> np.ndarray:
        p = np.asarray(p)
        if p.shape == y_true.shape:
            return p[None]
        if p.ndim == y_true.ndim + 1 and p.shape[1:] == y_true.shape and len(p):
            return p
        raise ValueError(
            f"a prediction of shape {p.shape} fits neither y_true {y_true.shape} nor a stack of"
            f" fits (fits, *{y_true.shape})"
        )

    stacks_a, stacks_b = [stack(p) for p in preds_a], [stack(p) for p in preds_b]
    if y_true.ndim == 2:
        task_type, n_classes = "multilabel", y_true.shape[1]
    else:
        task_type = "multiclass"
        n_classes = int(max(y_true.max(), *(p.max() for p in (*stacks_a, *stacks_b)))) + 1
    y_true = _check_ids(y_true, task_type, n_classes, "y_true")

    def name(side: str, k: int) -> str:
        return f"pred_{side}" if len(stacks_a) == 1 else f"preds_{side}[{k}]"

    def checked(stacks: list[np.ndarray], side: str) -> list[list[np.ndarray]]:
        return [
            [_check_ids(fit, task_type, n_classes, name(side, k)) for fit in s]
            for k, s in enumerate(stacks)
        ]

    fits_a, fits_b = checked(stacks_a, "a"), checked(stacks_b, "b")

    def mean_metric(fits: list[np.ndarray], w: np.ndarray) -> np.ndarray:
        return sum(_count_metric(metric, y_true, p, task_type, n_classes, w) for p in fits) / len(
            fits
        )

    def gain(w: np.ndarray) -> np.ndarray:
        total = np.zeros(len(w))
        for a, b in zip(fits_a, fits_b, strict=True):
            total += mean_metric(b, w) - mean_metric(a, w)
        return total / len(fits_a)

    n = len(y_true)
    rng = np.random.default_rng(seed)
    point = float(gain(np.ones((1, n)))[0])
    block = max(1, _BOOT_BLOCK_DRAWS // n)
    stats = []
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        flat = (np.arange(m)[:, None] * n + idx).ravel()
        w = np.bincount(flat, minlength=m * n).reshape(m, n).astype(float)
        stats.append(gain(w))
    return _interval(point, np.concatenate(stats), alpha)


GROUP_KEYS = ("task", "representation", "classifier")


CI_METRICS = ("macro_f1", "micro_f1")


MEAN_METRICS = ("accuracy", "auroc", "fit_s", "predict_s")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool) and math.isfinite(x)


def _test_train_ratio(rows: Sequence[dict[str, Any]]) -> float | None:
    sizes = [(r["n_test"], r["n_train"]) for r in rows if r.get("n_test") and r.get("n_train")]
    if not sizes:
        return None
    return float(np.mean([a for a, _ in sizes]) / np.mean([b for _, b in sizes]))


def aggregate(
    rows: Sequence[dict[str, Any]],
    group_keys: Sequence[str] = GROUP_KEYS,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """One row per group (fold="mean") from per-fold result rows, in first-seen order.

    For macro_f1 and micro_f1: the mean, `{m}_std` (sample std over folds, None for one fold), and
    `{m}_lo` / `{m}_hi` (`folds_mean_ci`: corrected t interval over folds, its ratio from the
    rows' n_test / n_train where they have them). accuracy, auroc, fit_s and
    predict_s: plain means. Folds whose metric is missing, None or NaN (failed cells) are left out
    of that metric; n_folds counts the folds with a macro_f1. Rows with fold="mean" are skipped,
    so aggregating already aggregated rows adds nothing. Add keys to `group_keys` when rows differ
    in more than task, representation and classifier (e.g. a seed or a split scheme).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in (*group_keys, "fold") if k not in row]
        if missing:
            raise ValueError(f"result row {i} lacks {missing}: every row needs {list(group_keys)}")
        if row["fold"] == "mean":
            continue
        groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)

    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(group_keys, key, strict=True))
        agg["fold"] = "mean"
        agg["n_folds"] = sum(_finite(r.get("macro_f1")) for r in members)
        for m in CI_METRICS:
            values = [float(r[m]) for r in members if _finite(r.get(m))]
            if not values:
                agg.update({m: None, f"{m}_std": None, f"{m}_lo": None, f"{m}_hi": None})
                continue
            ci = folds_mean_ci(values, _test_train_ratio(members), alpha)
            agg[m] = ci["mean"]
            agg[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
            agg[f"{m}_lo"] = ci["lo"]
            agg[f"{m}_hi"] = ci["hi"]
        for m in MEAN_METRICS:
            values = [float(r[m]) for r in members if _finite(r.get(m))]
            agg[m] = float(np.mean(values)) if values else None
        out.append(agg)
    return out
