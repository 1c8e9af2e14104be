"""Hyper-parameter selection for the projection head, on training rows the head never fits.

Which temperature, dropout or output width suits a task is not known in advance: the paper fixes
them, and what helps one corpus hurts another (a temperature of 0.2 against 0.1 gained two points
of macro-F1 on clinical text and lost two on emoji subcategories). `train.search` settles it per
task, from the training rows alone:

1. the training rows (a stratified sample of at most `search.max_rows`, chosen by id hash) are
   split into fit and held-out rows: one stratified hold-out of `search.holdout_fraction` (by id
   hash,
   independent of the early-stopping hold-out), or `search.folds` stratified folds; by default
   3 folds when one hold-out would hold fewer than `search.min_held` (1,000) rows, since a
   macro-F1 over a few hundred rows is too noisy to rank trials that differ by a point or two;
2. every combination of `search.grid` is a trial: a head fitted on the fit rows with those
   settings (its own early stopping inside them), then the fit and held-out rows projected, and
   each probe classifier (`search.probes`, kNN and logistic regression by default) fitted on the
   projected fit rows and scored on the held-out ones; a trial's score is the probes' mean
   macro-F1 (over the folds too);
3. the best trial (the first in grid order on a tie) wins, and its settings fit the head on all
   the training rows.

Probes rather than the contrastive validation loss: losses at different temperatures are not on
one scale, and what the head is for is the classifiers fitted on its output. Test rows of the score
stage are never seen: the score stage searches inside each fold's training rows.

Trials are independent, so how they run is the caller's choice: `run_local` runs them one after
the other in this process (the score stage, tests); `adapt.train.workers.run_tune` runs them as
Ray Tune trials across the cluster (the train job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from adapt.config import SearchConfig, TrainConfig
from adapt.labels import encode_labels, infer_task_type
from adapt.score.cells import score_cell
from adapt.splits import holdout_mask, row_keys, splits
from adapt.train.fit import fit_head

log = logging.getLogger("adapt.train")

METRIC = "macro_f1"
# Salts of the id hashes that pick the search sample and hold-out, so that neither coincides
# with the early-stopping hold-out (seeded by the config's seed alone).
SAMPLE_SALT, HOLDOUT_SALT = 7001, 7002


@dataclass
class Trial:
    """One combination of the grid and how it scored on the held-out rows."""

    index: int
    overrides: dict[str, Any]
    score: float | None = None  # mean over probes and folds of the held-out macro-F1
    probes: dict[str, float] = field(default_factory=dict)  # probe -> mean over folds
    best_epochs: list[int] = field(default_factory=list)  # per fold
    fit_s: float = 0.0
    error: str | None = None


@dataclass
class Selection:
    """What the search chose, and why: the report and the head card carry it."""

    overrides: dict[str, Any]  # the chosen trial's settings ({} when no search ran)
    trials: list[Trial] = field(default_factory=list)
    n_rows: int = 0  # training rows the search used (after sampling)
    n_held: int = 0  # held-out rows per fold
    folds: int = 1
    probes: list[str] = field(default_factory=list)
    metric: str = METRIC
    wall_s: float = 0.0
    skipped: str | None = None  # why no search ran, if none did

    @property
    def best(self) -> Trial | None:
        return next((t for t in self.trials if t.overrides == self.overrides), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # every field is a plain Python value by construction

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        trials = [Trial(**t) for t in data.get("trials", [])]
        return cls(**{**data, "trials": trials})

    def describe(self) -> str:
        if self.skipped:
            return f"search: none ({self.skipped})"
        best = self.best
        lines = [
            f"search: {len(self.trials)} trials on {self.n_rows} training rows "
            f"({self.folds} fold(s), {self.n_held} held out each), probes {self.probes}, "
            f"{self.wall_s:.1f} s; chose {self.overrides}"
            + (f" ({best.score:.3f})" if best and best.score is not None else "")
        ]
        for t in self.trials:
            score = f"{t.score:.3f}" if t.score is not None else f"failed: {t.error}"
            lines.append(f"  {t.overrides}: {score}")
        return "\n".join(lines)


# -- the rows ----------------------------------------------------------------------------------


def sample_rows(
    y: np.ndarray, task_type: str, sc: SearchConfig, seed: int, ids: Sequence[Any] | None = None
) -> np.ndarray:
    """Indices (sorted) of the rows the search uses: all of them up to `sc.max_rows`, else a
    sample of that many, stratified by class and chosen by id hash. A sample of a sample is
    itself, so a caller may read only these rows and search on them."""

    n = len(y)
    if n <= sc.max_rows:
        return np.arange(n)
    keep = np.flatnonzero(holdout_mask(y, task_type, sc.max_rows / n, seed + SAMPLE_SALT, ids))
    if len(keep) > sc.max_rows:  # per-class rounding can overshoot by a few rows
        keys = row_keys(keep if ids is None else [ids[i] for i in keep], seed + SAMPLE_SALT)
        keep = np.sort(keep[np.argsort(keys, kind="stable")[: sc.max_rows]])
    return keep


def search_splits(
    y: np.ndarray, task_type: str, sc: SearchConfig, seed: int, ids: Sequence[Any] | None = None
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The rows the search uses (indices into y, sorted) and its (fit, held-out) splits, as
    positions into those rows. Decided by id hash (row position without ids), so the same rows,
    labels and seed give the same splits on any machine and in any order."""

    rows = sample_rows(y, task_type, sc, seed, ids)
    y_s = y[rows]
    ids_s = None if ids is None else [ids[i] for i in rows]
    folds = sc.n_folds(len(rows))
    if folds == 1:
        held = holdout_mask(y_s, task_type, sc.holdout_fraction, seed + HOLDOUT_SALT, ids_s)
        if not held.any() or held.all():
            raise ValueError(f"{len(rows)} rows leave nothing to hold out for the search")
        return rows, [(np.flatnonzero(~held), np.flatnonzero(held))]
    return rows, splits(y_s, task_type, folds, seed + HOLDOUT_SALT)


# -- one trial -----------------------------------------------------------------------------------


@dataclass
class TrialData:
    """Everything a trial needs, picklable: it travels to Ray Tune trials once, by reference."""

    inputs: dict[str, np.ndarray]  # the search rows
    labels: list  # their labels, as fit_head takes them
    y: np.ndarray  # class ids (or a 0/1 matrix)
    classes: list[str]
    task_type: str
    ids: list | None
    splits: list[tuple[np.ndarray, np.ndarray]]
    cfg: TrainConfig
    trials: list[dict[str, Any]]
    probes: list[str]
    seed: int


def run_trial(data: TrialData, index: int, torch_threads: int | None = None) -> Trial:
    """Fit trial `index` on every split's fit rows and score its projections with the probes."""

    overrides = data.trials[index]
    cfg = data.cfg.with_overrides(overrides)
    if torch_threads:
        cfg = cfg.model_copy(update={"torch_threads": torch_threads})
    trial = Trial(index, overrides)
    start = time.perf_counter()
    per_probe: dict[str, list[float]] = {p: [] for p in data.probes}
    try:
        for fit_rows, held_rows in data.splits:
            fit_in = {m: x[fit_rows] for m, x in data.inputs.items()}
            held_in = {m: x[held_rows] for m, x in data.inputs.items()}
            fit = fit_head(
                fit_in,
                [data.labels[i] for i in fit_rows],
                cfg,
                seed=data.seed,
                ids=None if data.ids is None else [data.ids[i] for i in fit_rows],
            )
            trial.best_epochs.append(int(fit.best_epoch))
            z_fit, z_held = fit.project(fit_in), fit.project(held_in)
            for probe in data.probes:
                cell = score_cell(
                    z_fit,
                    data.y[fit_rows],
                    z_held,
                    data.y[held_rows],
                    probe,
                    data.task_type,
                    data.classes,
                    data.seed,
                )
                per_probe[probe].append(float(cell[METRIC]))
        trial.probes = {p: float(np.mean(v)) for p, v in per_probe.items()}
        trial.score = float(np.mean(list(trial.probes.values())))
    except Exception as e:  # one bad combination must not sink the search
        log.warning("search: trial %s failed: %s", overrides, e)
        trial.error = f"{type(e).__name__}: {e}"[:500]
    trial.fit_s = time.perf_counter() - start
    return trial


# -- runners ---------------------------------------------------------------------------------------

Runner = Callable[[TrialData], list[Trial]]


def run_local(data: TrialData) -> list[Trial]:
    """Every trial, one after the other, in this process."""
    out = []
    for i in range(len(data.trials)):
        out.append(run_trial(data, i))
        log.info(
            "search: trial %d/%d %s: %s", i + 1, len(data.trials), data.trials[i], out[-1].score
        )
    return out


# -- the entry points ------------------------------------------------------------------------------


def select(
    inputs: dict[str, np.ndarray],
    labels: list,
    cfg: TrainConfig,
    seed: int | None = None,
    ids: Sequence[Any] | None = None,
    runner: Runner = run_local,
) -> Selection:
    """Run the search `cfg.search` describes on these training rows; say what it chose.

    No search runs (and the config's own settings stand) without `cfg.search`, with an empty
    grid, or with fewer than `search.min_rows` rows; the Selection says which.
    """
    sc = cfg.search
    seed = cfg.seed if seed is None else seed
    if sc is None or not sc.grid:
        return Selection({}, skipped="no search configured")
    if len(labels) < sc.min_rows:
        return Selection(
            {}, skipped=f"{len(labels)} training rows, fewer than search.min_rows={sc.min_rows}"
        )
    start = time.perf_counter()
    task_type = infer_task_type(labels)
    y, classes = encode_labels(labels, task_type)
    ids = None if ids is None else list(ids)
    rows, splits = search_splits(y, task_type, sc, seed, ids)
    data = TrialData(
        inputs={m: np.asarray(x)[rows] for m, x in inputs.items()},
        labels=[labels[i] for i in rows],
        y=y[rows],
        classes=list(classes),
        task_type=task_type,
        ids=None if ids is None else [ids[i] for i in rows],
        splits=splits,
        cfg=cfg,
        trials=cfg.trial_overrides(),
        probes=list(sc.probes),
        seed=seed,
    )
    trials = runner(data)
    scored = [t for t in trials if t.score is not None]
    if not scored:
        reasons = "; ".join(f"{t.overrides}: {t.error}" for t in trials[:3])
        raise RuntimeError(f"every search trial failed: {reasons}")
    best = max(scored, key=lambda t: (t.score, -t.index))
    return Selection(
        best.overrides,
        trials,
        n_rows=len(rows),
        n_held=int(np.mean([len(h) for _, h in splits])),
        folds=len(splits),
        probes=list(sc.probes),
        wall_s=time.perf_counter() - start,
    )


def chosen_config(cfg: TrainConfig, selection: Selection) -> TrainConfig:
    """The config to fit with: the chosen trial's settings, and no search of its own."""
    return cfg.with_overrides(selection.overrides)


def fit_selected(
    inputs: dict[str, np.ndarray],
    labels: list,
    cfg: TrainConfig,
    seed: int | None = None,
    ids: Sequence[Any] | None = None,
    runner: Runner = run_local,
):
    """`select`, then `fit_head` on all the rows with what it chose.

    Returns (FitResult, Selection). Without a search this is `fit_head` with `cfg`.
    """

    selection = select(inputs, labels, cfg, seed, ids, runner)
    fit = fit_head(inputs, labels, chosen_config(cfg, selection), seed=seed, ids=ids)
    return fit, selection
