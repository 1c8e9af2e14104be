"""What a score run will do, decided before any cell runs: tasks, folds and the grid.

Outer folds are numbered 0..n-1; the inner validation splits of outer fold i (an inner split of
its training rows, never its test rows) are named "val<i>", "val<i>.1", ... A `ScorePlan` is all an
executor needs; `make_plan` builds it from a configuration and loaded embeddings (no Ray, no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adapt.classifiers import seed_dependent
from adapt.config import Config, ScoreConfig, TrainConfig
from adapt.embeddings import Embeddings
from adapt.labels import Task, build_task
from adapt.score.representations import (
    CONCAT,
    HEAD,
    PCA,
    PROJECTED,
    RAW,
    expand_representations,
    family,
)
from adapt.splits import sample_mask, splits

# A cell's i-th fit is seeded seed + fold + SEED_STRIDE * i, apart from every other cell's seeds.
SEED_STRIDE = 1000


# Outer folds are numbered 0..n-1; the inner validation splits of outer fold i are named "val<i>",
# "val<i>.1", "val<i>.2", ...
VALIDATION_PREFIX = "val"


@dataclass
class Fold:
    """A train/test split of one task's rows, and what a cell needs of it.

    `train` / `test` index the task's rows (`Task.y`); `rows_train` / `rows_test` index the
    embeddings. kind "test" is an outer fold; kind "validation" splits an outer fold's training
    rows again (its `test` rows are training rows of that outer fold, never test rows).
    """

    task: str
    name: str  # "0".."n-1" for outer folds, "val<i>[.<j>]" for inner splits of outer fold i
    kind: str  # "test" or "validation"
    index: int  # the outer fold
    train: np.ndarray
    test: np.ndarray
    rows_train: np.ndarray
    rows_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    labels_train: list  # class names of the training rows, for heads

    @property
    def label(self) -> int | str:
        """The fold as report rows name it: an int for outer folds, "val<i>" otherwise."""
        return self.index if self.kind == "test" else self.name


def plan_folds(task: Task, sc: ScoreConfig) -> list[Fold]:
    """The outer folds (`splits`; only `sc.only_folds` when set), then inner validation
    splits of the first `sc.validation_folds` outer folds' training rows (stratified k-fold with
    `sc.validation_fraction` held out per split): as many splits as `validation_splits` asks."""
    outer = splits(task.y, task.task_type, sc.n_folds, sc.seed, sc.scheme)

    def make(name: str, kind: str, index: int, train: np.ndarray, test: np.ndarray) -> Fold:
        return Fold(
            task.name,
            name,
            kind,
            index,
            train,
            test,
            task.rows[train],
            task.rows[test],
            task.y[train],
            task.y[test],
            [task.labels[i] for i in train],
        )

    folds = [
        make(str(i), "test", i, tr, te)
        for i, (tr, te) in enumerate(outer)
        if sc.only_folds is None or i in sc.only_folds
    ]
    inner_folds = max(2, round(1 / sc.validation_fraction))
    inner = {
        i: splits(
            task.y[outer[i][0]], task.task_type, inner_folds, seed=sc.seed + 1 + i, scheme="kfold"
        )
        for i in range(sc.validation_folds)
    }
    n_splits = validation_splits([len(s[0][1]) for s in inner.values()], inner_folds, sc)
    for i, fold_splits in inner.items():
        train = outer[i][0]
        for j, (fit, held) in enumerate(fold_splits[:n_splits]):
            name = f"{VALIDATION_PREFIX}{i}" + (f".{j}" if j else "")
            folds.append(make(name, "validation", i, train[fit], train[held]))
    return folds


def validation_splits(held_rows: list[int], inner_folds: int, sc: ScoreConfig) -> int:
    """Inner splits per validation fold: enough for the rows they hold out, pooled over the
    validation folds (`held_rows`: one split's rows of each), to reach `sc.validation_rows`;
    at most `inner_folds`, where every training row of a fold is held out once."""
    one = sum(held_rows)
    if not one or sc.validation_rows <= one:
        return 1
    return min(inner_folds, -(-sc.validation_rows // one))


@dataclass
class ScorePlan:
    """Everything the executors need: tasks, their folds, the grid, and the raw inputs."""

    tasks: list[Task]
    folds: dict[str, list[Fold]]
    representations: list[str]
    classifiers: list[str]
    classifier_params: dict[str, dict]
    features: dict[str, np.ndarray]
    head_arrays: dict[str, np.ndarray]  # "head:NAME" -> projections of every row
    ids: np.ndarray
    train_cfg: TrainConfig
    pca_k: int
    seed: int
    classifier_seeds: int = 1

    @property
    def n_cells(self) -> int:
        n_folds = sum(len(f) for f in self.folds.values())
        return n_folds * len(self.representations) * len(self.classifiers)

    def cell_seeds(self, fold: Fold, classifier: str) -> list[int]:
        """The seeds of a cell's fits: one, unless the classifier's fit draws random numbers."""
        base = self.seed + fold.index
        params = self.classifier_params.get(classifier)
        n = self.classifier_seeds if seed_dependent(classifier, params) else 1
        return [base + SEED_STRIDE * i for i in range(n)]


def _handles_dims(plan: ScorePlan) -> dict[str, int]:
    return {k.partition(":")[2]: v.shape[1] for k, v in plan.head_arrays.items()}


def _sample_reps(plan: ScorePlan) -> list[str]:
    """The representations drawn in the 2-D view: the first raw one and the first learned one."""
    raw = [r for r in plan.representations if family(r) == RAW]
    raw = [r for r in raw if r.endswith(CONCAT)] or raw
    learned = [r for r in plan.representations if family(r) in (PROJECTED, HEAD)]
    learned = learned or [r for r in plan.representations if family(r) == PCA]
    return [*raw[:1], *learned[:1]]


def _sample_fold(plan: ScorePlan) -> Fold:
    """The fold whose test rows the 2-D view draws: the first task's first outer fold."""
    return next(f for f in plan.folds[plan.tasks[0].name] if f.kind == "test")


def sampled_tasks(config: Config, emb: Embeddings) -> list[Task]:
    """The configured tasks over these rows, each on its sample (`sample_task`)."""
    sc = config.score
    return [
        sample_task(build_task(spec, emb.columns, sc.n_folds), sc, emb.ids, spec.min_class_count)
        for spec in sc.tasks
    ]


def make_plan(
    config: Config,
    emb: Embeddings,
    head_arrays: dict | None = None,
    tasks: list[Task] | None = None,
) -> ScorePlan:
    """Tasks, folds and the grid for a configuration and loaded embeddings (no Ray, no I/O).
    `tasks`: already decided (`sampled_tasks`), with rows indexing `emb`."""
    sc = config.score
    head_arrays = head_arrays or {}
    reps = expand_representations(
        sc.representations, emb.modalities, [k.partition(":")[2] for k in head_arrays]
    )
    tasks = tasks if tasks is not None else sampled_tasks(config, emb)
    folds = {t.name: plan_folds(t, sc) for t in tasks}
    return ScorePlan(
        tasks,
        folds,
        reps,
        list(sc.classifiers),
        dict(sc.classifier_params),
        emb.features,
        head_arrays,
        np.asarray(emb.ids),
        config.train,
        sc.pca_k or config.train.out_dim,
        sc.seed,
        sc.classifier_seeds,
    )


def sample_task(task: Task, sc: ScoreConfig, ids, min_class_count: int | None = None) -> Task:
    """The task on a stratified sample of `sc.max_rows` of its rows (`sample_mask`), or as it is
    when it has no more; every class keeps at least enough rows for every fold."""
    n = len(task.rows)
    if sc.max_rows is None or n <= sc.max_rows:
        return task
    row_ids = np.asarray(ids, dtype=object)[task.rows]
    floor = max(min_class_count or sc.n_folds, sc.n_folds)
    keep = sample_mask(task.y, task.task_type, sc.max_rows, sc.seed, row_ids, floor)
    return task.subset(
        keep, {"rows": int(keep.sum()), "of": n, "max_rows": sc.max_rows, "seed": sc.seed}
    )


def validation_layout(labels: list) -> tuple[int, int]:
    """(outer folds with validation splits, inner splits per such fold), read from the labels of
    a task's validation folds: "val<i>" and "val<i>.<j>" are splits of outer fold i."""
    outer = len({str(label).split(".")[0] for label in labels})
    return outer, (len(labels) // outer if outer else 1)


def validation_folds(plan: ScorePlan, task: str) -> list[Fold]:
    """A task's inner validation splits, in plan order."""
    return [f for f in plan.folds[task] if f.kind == "validation"]
