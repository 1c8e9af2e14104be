"""From cell rows to answers: means over folds, gains with paired intervals, the recommendation.

Gains are paired: both sides are scored on the same pooled out-of-fold rows. The recommendation
reads only validation cells (inner splits of training rows), never a test row, and changes what a
user feeds a classifier only on evidence: a gain over the best raw representation whose interval
is above zero. Beside the representation, it names one (representation, classifier) pair to
deploy, chosen the same way, and compares that pair on the test rows with the best raw pair (a
tuned probe where the protocol has one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adapt.classifiers import TUNED_PROBES
from adapt.config import ScoreConfig
from adapt.labels import Task
from adapt.metrics import metrics
from adapt.score.plan import Fold, ScorePlan, validation_folds, validation_layout
from adapt.score.representations import HEAD, PCA, PROJECTED, RAW, family
from adapt.stats import CI_METRICS, aggregate, paired_mean_gain_ci

# Families whose gains are reported, and against which baselines.
GAIN_BASELINES = {RAW: (PCA, PROJECTED, HEAD), PCA: (PROJECTED, HEAD)}


def _mean_per_class(members: list[dict]) -> dict[str, float | None]:
    out: dict[str, list[float]] = {}
    for r in members:
        for c, v in (r.get("per_class_f1") or {}).items():
            out.setdefault(c, [])
            if v is not None:
                out[c].append(v)
    return {c: (float(np.mean(v)) if v else None) for c, v in out.items()}


def mean_rows(rows: list[dict], alpha: float) -> list[dict]:
    """One fold="mean" row per (task, representation, classifier): `aggregate` (mean,
    std and corrected t interval over folds) plus the mean per-class F1 and the dims."""
    ok = [r for r in rows if r.get("status") == "ok"]
    means = aggregate(ok, alpha=alpha) if ok else []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["representation"], r["classifier"]), []).append(r)
    by_key = {(m["task"], m["representation"], m["classifier"]): m for m in means}
    out = []
    for key, members in groups.items():
        m = by_key.get(key) or {
            "task": key[0],
            "representation": key[1],
            "classifier": key[2],
            "fold": "mean",
            "n_folds": 0,
            **{k: None for k in ("accuracy", "auroc", "fit_s", "predict_s")},
            **{f"{k}{s}": None for k in CI_METRICS for s in ("", "_std", "_lo", "_hi")},
        }
        good = [r for r in members if r.get("status") == "ok"]
        m.update(
            status="ok" if good else "error",
            n_failed=len(members) - len(good),
            dims=members[0].get("dims"),
            per_class_f1=_mean_per_class(good),
        )
        out.append(m)
    return out


@dataclass(frozen=True)
class Pool:
    """One task's predictions as gains pool them: rows of several folds joined end to end.

    `y_true` maps each fold (as report rows name it) to its scored rows' true labels, in the
    order its predictions hold them; `preds` maps (task, representation, classifier, fold) to a
    stack of fits (fits x rows). `task_type` and `classes` are needed only to report each side's
    pooled score. Built from a plan's folds (`from_folds`) or from a saved report's
    predictions.npz (`from_saved`), so that a finished run is judged by the same code.
    """

    task: str
    y_true: dict
    preds: dict
    task_type: str | None = None
    classes: list[str] | None = None

    @classmethod
    def from_folds(cls, task: Task, folds: list[Fold], preds: dict) -> Pool:
        return cls(
            task.name, {f.label: f.y_test for f in folds}, preds, task.task_type, task.classes
        )

    @classmethod
    def from_saved(cls, saved: dict, task: str, kind: str) -> Pool:
        """From `adapt.score.io.read_predictions`: the outer folds (kind "test") or the inner
        validation splits (kind "validation") of one task."""
        outer = kind == "test"
        y_true = {
            f: y
            for (name, f), y in saved["y"].items()
            if name == task and isinstance(f, int) == outer
        }
        return cls(task, y_true, saved["pred"])

    def pooled(self, rep: str, clf: str, folds: list) -> np.ndarray:
        # Predictions are stacks of fits (seeds); pooling joins rows, on axis 1.
        return np.concatenate([self.preds[(self.task, rep, clf, f)] for f in folds], axis=1)

    def score(self, y_true: np.ndarray, fits: np.ndarray, metric: str) -> float:
        """The metric of pooled predictions, averaged over a stack of fits."""
        return float(
            np.mean([metrics(y_true, p, None, self.task_type, self.classes)[metric] for p in fits])
        )

    def gain(
        self, base: str, rep: str, classifiers: list[str], sc: ScoreConfig, scores: bool = False
    ) -> dict | None:
        """Paired interval of rep - base in the metric averaged over `classifiers`, on the rows
        pooled over the folds where every classifier has both sides; None when no fold has.
        scores=True adds each side's pooled metric (averaged likewise) as candidate_score and
        baseline_score."""
        out = self._paired(
            [(base, c) for c in classifiers], [(rep, c) for c in classifiers], sc, scores
        )
        return None if out is None else {**out, "baseline_representation": base}

    def pair_gain(
        self, base: tuple[str, str], pair: tuple[str, str], sc: ScoreConfig, scores: bool = False
    ) -> dict | None:
        """Paired interval of `pair` - `base`, each a (representation, classifier), on the rows
        pooled over the folds where both have predictions; scores=True adds each side's pooled
        score."""
        return self._paired([base], [pair], sc, scores)

    def _paired(
        self,
        base: list[tuple[str, str]],
        candidate: list[tuple[str, str]],
        sc: ScoreConfig,
        scores: bool,
    ) -> dict | None:
        """Paired interval of the candidate pairs' metric averaged over them minus the base
        pairs' (matched in order, the same row draws for all), on the rows pooled over the folds
        where every pair has predictions."""
        common = [
            f
            for f in self.y_true
            if all((self.task, *p, f) in self.preds for p in (*base, *candidate))
        ]
        if not common:
            return None
        y_true = np.concatenate([self.y_true[f] for f in common])
        pred_a = [self.pooled(*p, common) for p in base]
        pred_b = [self.pooled(*p, common) for p in candidate]
        ci = paired_mean_gain_ci(y_true, pred_a, pred_b, sc.metric, sc.n_boot, sc.alpha, sc.seed)
        out = {**ci, "n_rows": len(y_true), "n_folds": len(common)}
        if scores:
            out["candidate_score"] = float(
                np.mean([self.score(y_true, p, sc.metric) for p in pred_b])
            )
            out["baseline_score"] = float(
                np.mean([self.score(y_true, p, sc.metric) for p in pred_a])
            )
        return out


def _best(means: dict[str, float | None], fam: str) -> str | None:
    scored = {r: v for r, v in means.items() if family(r) == fam and v is not None}
    return max(scored, key=lambda r: (scored[r], r)) if scored else None


def _averaged(
    table: dict[tuple[str, str], float | None], representations: list[str], classifiers: list[str]
) -> dict[str, float]:
    """representation -> its score averaged over `classifiers`, from a (representation,
    classifier) -> score table; representations missing a classifier's score are left out."""
    out = {}
    for rep in representations:
        values = [table.get((rep, c)) for c in classifiers]
        if all(v is not None for v in values):
            out[rep] = float(np.mean(values))
    return out


def _table(means: list[dict], task: str, metric: str) -> dict[tuple[str, str], float | None]:
    """(representation, classifier) -> a task's mean metric over folds."""
    return {
        (m["representation"], m["classifier"]): m.get(metric) for m in means if m["task"] == task
    }


def gains(
    tasks: list[Task],
    folds: dict[str, list[Fold]],
    preds: dict,
    means: list[dict],
    representations: list[str],
    classifiers: list[str],
    sc: ScoreConfig,
    per_classifier: bool = True,
) -> list[dict]:
    """Gain of each learned representation over the best raw one and the best PCA one, with a
    paired bootstrap interval on the pooled out-of-fold predictions of the outer folds.

    per_classifier=True: one row per (task, classifier, representation, baseline family), each
    side's pooled test score beside the gain. per_classifier=False: the gain in the metric
    averaged over every classifier (the same row draws for all of them,
    `stats.paired_mean_gain_ci`), one row per (task, representation, baseline family), with the
    classifier-averaged mean test scores beside it.

    The baseline of a family is its member with the highest mean test score (for that
    classifier, or averaged over them): picked on test rows, so it favours the baseline and the
    gain is, if anything, understated.
    """
    metric = sc.metric
    out = []
    for task in tasks:
        pool = Pool.from_folds(task, [f for f in folds[task.name] if f.kind == "test"], preds)
        table = _table(means, task.name, metric)
        groups = [[c] for c in classifiers] if per_classifier else [list(classifiers)]
        for group in groups:
            scores = _averaged(table, representations, group)
            for base_family, candidates in GAIN_BASELINES.items():
                base = _best(scores, base_family)
                if base is None:
                    continue
                for rep in representations:
                    if family(rep) not in candidates:
                        continue
                    if not per_classifier and rep not in scores:
                        continue
                    gain = pool.gain(base, rep, group, sc, scores=per_classifier)
                    if per_classifier:
                        row = {
                            "task": task.name,
                            "classifier": group[0],
                            "representation": rep,
                            "baseline": base_family,
                            "metric": metric,
                        }
                        empty = {
                            "baseline_representation": base,
                            "n_folds": 0,
                            "mean": None,
                            "lo": None,
                            "hi": None,
                            "n_rows": 0,
                            "candidate_score": None,
                            "baseline_score": None,
                        }
                    else:
                        row = {
                            "task": task.name,
                            "representation": rep,
                            "baseline": base_family,
                            "baseline_representation": base,
                            "metric": metric,
                            "classifiers": list(group),
                            "candidate_score": scores[rep],
                            "baseline_score": scores[base],
                        }
                        empty = {"mean": None, "lo": None, "hi": None, "n_rows": 0, "n_folds": 0}
                    out.append({**row, **(gain or empty)})
    return out


def _guarded(
    scores: dict[str, float], gain: Callable[[str, str], dict | None]
) -> tuple[str | None, dict]:
    """The best-scoring representation, unless it is not raw and its paired gain over the best
    raw one on validation rows has an interval reaching zero or below: then the best raw one."""
    if not scores:
        return None, {}
    best = max(scores, key=lambda r: (scores[r], r))
    base = _best(scores, RAW)
    if family(best) == RAW or base is None:
        return best, {"best_on_validation": best}
    g = gain(base, best)
    note = {"best_on_validation": best, "validation_gain_over_raw": g}
    if g is not None and g["lo"] <= 0:
        return base, {**note, "kept_raw": True}
    return best, note


def _pair(pairs: dict[tuple[str, str], float]) -> tuple[str, str] | None:
    return max(pairs, key=lambda k: (pairs[k], k)) if pairs else None


def recommend_pair(
    table: dict[tuple[str, str], float | None],
    representations: list[str],
    classifiers: list[str],
    sc: ScoreConfig,
    pool: Pool | None,
) -> dict | None:
    """The (representation, classifier) pair to deploy: the best on validation scores, unless
    it is not raw and its paired gain over the best raw pair on the pooled validation rows has
    an interval reaching zero or below; then that raw pair."""
    pairs = {
        (r, c): v
        for (r, c), v in table.items()
        if v is not None and r in representations and c in classifiers
    }
    best = _pair(pairs)
    if best is None:
        return None
    raw = _pair({k: v for k, v in pairs.items() if family(k[0]) == RAW})
    chosen, note = best, {}
    if family(best[0]) != RAW and raw is not None:
        g = pool.pair_gain(raw, best, sc) if pool is not None else None
        note = {"validation_gain_over_raw_pair": g, "raw_pair": list(raw)}
        if g is not None and g["lo"] <= 0:
            chosen, note = raw, {**note, "kept_raw": True}
    return {
        "representation": chosen[0],
        "classifier": chosen[1],
        "score": pairs[chosen],
        "best_on_validation": list(best),
        **note,
    }


def pair_verdict(
    pair: dict, test_table: dict[tuple[str, str], float | None], pool: Pool, sc: ScoreConfig
) -> dict | None:
    """The recommended pair against the best raw pair on the test rows: the baseline is a raw
    representation with a tuned probe where the protocol has one (else with any classifier),
    picked on the test rows' mean scores, which favours it."""
    raw = {(r, c): v for (r, c), v in test_table.items() if v is not None and family(r) == RAW}
    tuned = {k: v for k, v in raw.items() if k[1] in TUNED_PROBES}
    base = _pair(tuned or raw)
    if base is None:
        return None
    gap = pool.pair_gain(base, (pair["representation"], pair["classifier"]), sc, scores=True)
    return {
        "baseline_pair": list(base),
        "baseline_kind": "tuned probe" if tuned else "any classifier",
        **(gap or {"mean": None, "lo": None, "hi": None, "n_rows": 0, "n_folds": 0}),
    }


def recommend(
    tasks: list[str],
    validation_means: list[dict],
    representations: list[str],
    classifiers: list[str],
    sc: ScoreConfig,
    pools: dict[str, Pool] | None = None,
) -> dict[str, dict]:
    """Per task (by name), the representation with the best validation score averaged over
    classifiers; also the best per classifier. Reads only validation cells (inner splits of
    training rows).

    A representation other than raw is recommended only when its paired gain over the best raw
    one on the pooled validation predictions (`pools`: each task's validation splits) has an
    interval above zero; otherwise the best raw one is: changing what a user feeds a classifier
    needs evidence."""
    metric = sc.metric
    out = {}
    for task in tasks:
        pool = (pools or {}).get(task)
        n_val, per_fold = validation_layout(list(pool.y_true) if pool else [])
        n_val = n_val or sc.validation_folds
        pooled = (
            f" ({sum(len(y) for y in pool.y_true.values())} rows pooled)"
            if pool and pool.y_true
            else ""
        )
        basis = (
            f"Chosen on validation scores only: {per_fold} inner validation split(s), each "
            f"holding out {sc.validation_fraction:.0%} of the training rows, of {n_val} outer "
            f"fold(s){pooled}; "
            "a representation other than raw only with a validation gain over the best raw one "
            f"whose {1 - sc.alpha:.0%} paired interval is above zero; no test row was used"
        )
        table = _table(validation_means, task, metric)
        if not table:
            out[task] = {
                "representation": None,
                "metric": metric,
                "score": None,
                "by_classifier": {},
                "scores": {},
                "basis": "no validation cells (score.validation_folds is 0)",
            }
            continue

        def gain(group: list[str], pool: Pool | None = pool) -> Callable[[str, str], dict | None]:
            if pool is None:
                return lambda base, rep: None
            return lambda base, rep: pool.gain(base, rep, group, sc)

        scores = _averaged(table, representations, classifiers)
        best, note = _guarded(scores, gain(classifiers))
        by_clf = {}
        for clf in classifiers:
            cands = {r: table.get((r, clf)) for r in representations}
            cands = {r: v for r, v in cands.items() if v is not None}
            if cands:
                r, clf_note = _guarded(cands, gain([clf]))
                by_clf[clf] = {"representation": r, "score": cands[r], **clf_note}
        out[task] = {
            "representation": best,
            "metric": metric,
            "score": scores.get(best) if best else None,
            "by_classifier": by_clf,
            "scores": scores,
            "basis": basis,
            "pair": recommend_pair(table, representations, classifiers, sc, pool),
            **note,
        }
    return out


def confusion(pool: Pool, pair: tuple[str, str], n_classes: int) -> dict | None:
    """The pair's confusion matrix on the pooled test rows (rows: true class, columns: predicted),
    counts averaged over its fits; None for multilabel tasks or when a fold lacks predictions."""
    if pool.task_type not in ("binary", "multiclass"):
        return None
    folds = list(pool.y_true)
    if not folds or not all((pool.task, *pair, f) in pool.preds for f in folds):
        return None
    y_true = np.concatenate([pool.y_true[f] for f in folds]).astype(np.int64)
    fits = pool.pooled(*pair, folds).astype(np.int64)
    matrix = np.zeros((n_classes, n_classes))
    for pred in fits:
        np.add.at(matrix, (y_true, pred), 1.0)
    return {
        "representation": pair[0],
        "classifier": pair[1],
        "matrix": (matrix / len(fits)).tolist(),
        "n_rows": len(y_true),
        "n_fits": len(fits),
    }


def summarise(plan: ScorePlan, rows: list[dict], preds: dict, sc: ScoreConfig) -> dict:
    """Every answer the report gives from a run's cell rows and predictions: the test and
    validation rows, their means over folds, the gains per classifier and averaged over
    classifiers, the recommendation (validation cells only), and the recommended pair against
    the best raw pair and its confusion matrix on the test rows."""
    test_rows = [r for r in rows if isinstance(r["fold"], int)]
    val_rows = [r for r in rows if not isinstance(r["fold"], int)]
    means = mean_rows(test_rows, sc.alpha)
    val_means = mean_rows(val_rows, sc.alpha)
    grid = (plan.tasks, plan.folds, preds, means, plan.representations, plan.classifiers)
    pools = {t.name: Pool.from_folds(t, validation_folds(plan, t.name), preds) for t in plan.tasks}
    recommendation = (
        recommend(
            [t.name for t in plan.tasks],
            val_means,
            plan.representations,
            plan.classifiers,
            sc,
            pools,
        )
        if sc.validation_folds
        else {}
    )
    verdicts, confusions = {}, {}
    for task in plan.tasks:
        pair = recommendation.get(task.name, {}).get("pair")
        if pair:
            test_pool = Pool.from_folds(
                task, [f for f in plan.folds[task.name] if f.kind == "test"], preds
            )
            verdicts[task.name] = pair_verdict(
                pair, _table(means, task.name, sc.metric), test_pool, sc
            )
            matrix = confusion(
                test_pool, (pair["representation"], pair["classifier"]), len(task.classes)
            )
            if matrix:
                confusions[task.name] = matrix
    return {
        "test_rows": test_rows,
        "validation_rows": val_rows,
        "means": means,
        "validation_means": val_means,
        "gains": gains(*grid, sc, per_classifier=True),
        "mean_gains": gains(*grid, sc, per_classifier=False),
        "recommendation": recommendation,
        "pair_verdict": verdicts,
        "confusion": confusions,
    }
