"""The score stage: does the adapted embedding beat what I had, for my tasks and my classifiers?

Every task from `score.tasks` is scored on the same stratified folds for every representation:
raw embeddings (each modality, and all side by side), PCA, projections by a head trained inside
each fold on that fold's training rows only, and heads given by URI. The unit of work is a *cell*,
one (task, representation, classifier, fold); a representation is built once per (task, fold).

Three layers, as in every stage:
- pure core (no Ray, no storage): `build_task`, `plan_folds`, `expand_representations`,
  `build_representations` (one fold's representations), `run_cell`, then `mean_rows` (means
  with intervals), `paired_gains`, `mean_gains` (averaged over classifiers) and `recommend`;
- Ray adapter: `run_cells_ray` runs one task per (task, fold) that builds the representations
  into the object store, and one task per cell that reads them (`run_cells_local` is the same
  without Ray, for tiny runs and tests);
- storage: embeddings come from `adapt.embeddings`; the report goes out through `adapt.report`.

Leakage rules: PCA, the per-modality scaling of the concatenation, and in-fold heads are fitted
on the fold's training rows; the recommendation reads only validation cells (an inner split of an
outer fold's training rows), never a test row. A head given by URI was trained elsewhere and may
have seen rows that are test rows here; the report says so next to its numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from adapt import __version__ as adapt_version
from adapt import report as report_io
from adapt import scoring
from adapt.config import Config, ScoreConfig, ScoreTask, TrainConfig
from adapt.embeddings import Embeddings, load_embeddings, manifest_path
from adapt.storage import Storage, join

log = logging.getLogger("adapt.score")

RAW, PCA, PROJECTED, HEAD = "raw", "pca", "projected", "head"
CONCAT = "concat"
# Families whose gains are reported, and against which baselines.
GAIN_BASELINES = {RAW: (PCA, PROJECTED, HEAD), PCA: (PROJECTED, HEAD)}
# Classifiers from slowest to fastest per cell, as measured on the demo corpus (1,270 training
# rows, 1,664-d, 9 classes, one core): xgboost ~50 s, random_forest ~8 s, svc ~2 s, mlp ~1.5 s,
# cart ~1 s, logreg and knn ~0.1 s. Ray cells are submitted in this order.
SLOW_FIRST = {
    c: i for i, c in enumerate(["xgboost", "random_forest", "svc", "mlp", "cart", "logreg", "knn"])
}
# A cell's i-th fit is seeded seed + fold + SEED_STRIDE * i, apart from every other cell's seeds.
SEED_STRIDE = 1000
# Outer folds are numbered 0..n-1; the inner validation splits of outer fold i are named "val<i>",
# "val<i>.1", "val<i>.2", ...
VALIDATION_PREFIX = "val"


# -- tasks -----------------------------------------------------------------------------------


@dataclass
class Task:
    """One task's labels over the rows it keeps (rows with no label, or of a dropped class, go)."""

    name: str
    label_column: str
    task_type: str
    classes: list[str]
    y: np.ndarray  # class ids [n], or a 0/1 matrix [n, classes] for multilabel
    rows: np.ndarray  # index of each kept row in the embeddings
    labels: list  # the kept rows' labels as class names (lists for multilabel): what heads fit on
    positive: str | None = None
    dropped: dict = field(default_factory=dict)  # {"unlabelled": n, "classes": {name: rows}}

    def meta(self) -> dict[str, Any]:
        counts = (
            self.y.sum(axis=0)
            if self.y.ndim == 2
            else np.bincount(self.y, minlength=len(self.classes))
        )
        return {
            "name": self.name,
            "label_column": self.label_column,
            "type": self.task_type,
            "positive": self.positive,
            "n_rows": len(self.rows),
            "n_classes": len(self.classes),
            "class_counts": {c: int(n) for c, n in zip(self.classes, counts, strict=True)},
            "dropped": self.dropped,
        }


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def build_task(spec: ScoreTask, columns: dict[str, list], default_min_count: int) -> Task:
    """Turn a label column into a task: type, kept rows, class ids; rare classes dropped.

    min_class_count (default `default_min_count`, the number of folds) drops classes with fewer
    rows: for single-label tasks their rows go, for multilabel tasks only the label is removed from
    the rows that carry it (the rows stay, possibly with no label).
    """
    name = spec.task_name
    if spec.label_column not in columns:
        have = sorted(c for c in columns if c != "split")
        raise ValueError(
            f"task {name!r}: no label column {spec.label_column!r} in the embeddings; they have "
            f"{have}. Fix score.tasks[].label_column, or re-run extract on a corpus with it"
        )
    values = columns[spec.label_column]
    keep = [i for i, v in enumerate(values) if not _missing(v)]
    unlabelled = len(values) - len(keep)
    values = [values[i] for i in keep]
    if not values:
        raise ValueError(f"task {name!r}: column {spec.label_column!r} has no labelled row")
    min_count = spec.min_class_count or default_min_count

    if spec.positive is not None:

        def hit(v: Any) -> bool:
            if isinstance(v, list | tuple | np.ndarray):
                return spec.positive in [str(x) for x in v]
            return str(v) == spec.positive

        hits = np.array([hit(v) for v in values])
        if not hits.any():
            seen = sorted({str(x) for v in values for x in (v if isinstance(v, list) else [v])})
            raise ValueError(
                f"task {name!r}: positive class {spec.positive!r} is in no row of "
                f"{spec.label_column!r}; classes there include {seen[:20]}"
            )
        negative = f"not {spec.positive}"
        classes = [negative, spec.positive]  # id 1 is the positive class, as for binary AUROC
        counts = {negative: int((~hits).sum()), spec.positive: int(hits.sum())}
        small = {c: n for c, n in counts.items() if n < min_count}
        if small:
            raise ValueError(
                f"task {name!r}: one-vs-rest needs {min_count} rows on each side "
                f"(min_class_count), got {counts}"
            )
        return Task(
            name,
            spec.label_column,
            "binary",
            classes,
            hits.astype(np.int64),
            np.array(keep, dtype=np.int64),
            [classes[int(h)] for h in hits],
            spec.positive,
            {"unlabelled": unlabelled, "classes": {}},
        )

    task_type = scoring.infer_task_type(values) if spec.type == "auto" else spec.type
    if task_type == "multilabel":
        if not all(isinstance(v, list | tuple | np.ndarray) for v in values):
            raise ValueError(
                f"task {name!r}: type multilabel needs a list of labels per row in "
                f"{spec.label_column!r}; its rows hold single labels: use type auto or multiclass"
            )
        counts: dict[str, int] = {}
        for v in values:
            for c in {str(x) for x in v}:
                counts[c] = counts.get(c, 0) + 1
        small = {c: n for c, n in counts.items() if n < min_count}
        labels = [sorted({str(x) for x in v} - set(small)) for v in values]
        if len(counts) - len(small) < 1:
            raise ValueError(
                f"task {name!r}: no label has {min_count} rows (min_class_count); counts {counts}"
            )
        y, classes = scoring.encode_labels(labels, "multilabel")
        rows = np.array(keep, dtype=np.int64)
    else:
        names = []
        for i, v in enumerate(values):
            if isinstance(v, list | tuple | np.ndarray):
                raise ValueError(
                    f"task {name!r}: row {keep[i]} of {spec.label_column!r} holds a list of labels "
                    f"but the task type is {task_type}: use type multilabel (or auto)"
                )
            names.append(str(v))
        counts = {}
        for c in names:
            counts[c] = counts.get(c, 0) + 1
        small = {c: n for c, n in counts.items() if n < min_count}
        kept = [i for i, c in enumerate(names) if c not in small]
        if len(counts) - len(small) < 2:
            raise ValueError(
                f"task {name!r}: fewer than 2 classes have {min_count} rows (min_class_count); "
                f"counts {dict(sorted(counts.items()))}"
            )
        labels = [names[i] for i in kept]
        if spec.type == "auto":  # decided on the classes that stay
            task_type = "binary" if len(counts) - len(small) == 2 else "multiclass"
        y, classes = scoring.encode_labels(labels, task_type)
        rows = np.array([keep[i] for i in kept], dtype=np.int64)
    return Task(
        name,
        spec.label_column,
        task_type,
        classes,
        y,
        rows,
        labels,
        None,
        {"unlabelled": unlabelled, "classes": dict(sorted(small.items()))},
    )


# -- folds -----------------------------------------------------------------------------------


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
    """The outer folds (`scoring.splits`; only `sc.only_folds` when set), then inner validation
    splits of the first `sc.validation_folds` outer folds' training rows (stratified k-fold with
    `sc.val_fraction` held out per split): as many splits as `validation_splits` asks."""
    outer = scoring.splits(task.y, task.task_type, sc.n_folds, sc.seed, sc.scheme)

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
    inner_folds = max(2, round(1 / sc.val_fraction))
    inner = {
        i: scoring.splits(
            task.y[outer[i][0]], task.task_type, inner_folds, seed=sc.seed + 1 + i, scheme="kfold"
        )
        for i in range(sc.validation_folds)
    }
    n_splits = validation_splits([len(s[0][1]) for s in inner.values()], inner_folds, sc)
    for i, splits in inner.items():
        train = outer[i][0]
        for j, (fit, held) in enumerate(splits[:n_splits]):
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


# -- representations -------------------------------------------------------------------------


def expand_representations(
    names: list[str], modalities: list[str], head_names: list[str] = ()
) -> list[str]:
    """Family names to concrete representations, in a fixed order, without duplicates.

    raw / pca: each modality, plus `concat` when there are two or more; projected: single, plus
    per_modality when there are two or more modalities (with one they are the same head).
    """
    out: list[str] = []
    multi = len(modalities) > 1
    for name in names:
        family, _, variant = name.partition(":")
        if family in (RAW, PCA):
            variants = [variant] if variant else [*modalities, *([CONCAT] if multi else [])]
        elif family == PROJECTED:
            variants = [variant] if variant else ["single", *(["per_modality"] if multi else [])]
        else:
            raise ValueError(f"unknown representation {name!r}")
        for v in variants:
            if family in (RAW, PCA) and v not in (*modalities, CONCAT):
                raise ValueError(
                    f"representation {name!r}: the embeddings have no modality {v!r}; "
                    f"they have {modalities}"
                )
            if f"{family}:{v}" not in out:
                out.append(f"{family}:{v}")
    out.extend(f"{HEAD}:{h}" for h in head_names)
    return out


def family(representation: str) -> str:
    return representation.partition(":")[0]


@dataclass
class RepData:
    """One representation on one fold, as a cell reads it.

    Either `train` / `test` matrices built for the fold (PCA, in-fold heads), or `parts`: arrays
    over every embedding row (raw embeddings, a given head's projections; object refs in Ray) that
    the cell slices and puts side by side, each multiplied by its scale. `error` says why the
    representation could not be built (its cells then fail with that reason).
    """

    name: str
    dims: int = 0
    train: np.ndarray | None = None
    test: np.ndarray | None = None
    parts: list = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    error: str | None = None

    def matrices(
        self, fold: Fold, resolve: Callable[[Any], np.ndarray] = lambda x: x
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.error:
            raise RuntimeError(f"representation {self.name} was not built: {self.error}")
        if self.train is not None:
            return self.train, self.test
        arrays = [resolve(p) for p in self.parts]

        def take(rows: np.ndarray) -> np.ndarray:
            blocks = [
                a[rows] if s == 1.0 else a[rows] * np.float32(s)
                for a, s in zip(arrays, self.scales, strict=True)
            ]
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)

        return take(fold.rows_train), take(fold.rows_test)


def modality_scales(features: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    """1 / sqrt(total variance) of each modality on `rows` (training rows).

    Multiplying by it gives every modality a total variance of 1, so that a concatenation (and a
    PCA fitted on it) weighs modalities alike: unscaled, image features with 228x the variance of
    the text ones all but hid the text (PAPER.md).
    """
    out = {}
    for m, x in sorted(features.items()):
        total = float(np.var(x[rows], axis=0, dtype=np.float64).sum())
        out[m] = 1.0 / math.sqrt(total) if total > 0 else 1.0
    return out


def _scaled_concat(features: dict[str, np.ndarray], rows: np.ndarray, scales: dict) -> np.ndarray:
    return np.concatenate(
        [features[m][rows] * np.float32(scales[m]) for m in sorted(features)], axis=1
    )


def _in_fold_config(train_cfg: TrainConfig, mode: str) -> TrainConfig:
    """The head settings of one projected representation: the representation fixes the mode, so
    a search over `mode` drops that key (and searches nothing if it was the only one)."""
    update: dict[str, Any] = {"mode": mode}
    sc = train_cfg.search
    if sc is not None and "mode" in sc.grid:
        grid = {k: v for k, v in sc.grid.items() if k != "mode"}
        update["search"] = sc.model_copy(update={"grid": grid})
    return train_cfg.model_copy(update=update)


def build_representations(
    features: dict[str, np.ndarray],
    handles: dict[str, Any],
    fold: Fold,
    representations: list[str],
    train_cfg: TrainConfig,
    pca_k: int,
    seed: int,
    ids: np.ndarray | None = None,
) -> tuple[list[RepData], dict]:
    """Every representation of one fold, fitted on the fold's training rows only.

    `features` are the raw embeddings of every row; `handles` is what a RepData should hold to
    reach an all-rows array (modality name or "head:NAME" -> the array, or its object ref).
    Returns the RepData in `representations` order and an info dict (timings, PCA and head notes).
    A representation that fails to build carries its error instead of raising.
    """
    from adapt import search, trainer

    modalities = sorted(features)
    info: dict[str, Any] = {
        "task": fold.task,
        "fold": fold.label,
        "n_train": len(fold.train),
        "n_test": len(fold.test),
        "representations": {},
    }
    scales: dict[str, float] | None = None
    out = []
    for rep in representations:
        fam, _, variant = rep.partition(":")
        start = time.perf_counter()
        try:
            if fam in (RAW, PCA) and variant == CONCAT and scales is None:
                scales = modality_scales(features, fold.rows_train)
                info["modality_scales"] = scales
            if fam == RAW and variant == CONCAT:
                data = RepData(
                    rep,
                    sum(features[m].shape[1] for m in modalities),
                    parts=[handles[m] for m in modalities],
                    scales=[scales[m] for m in modalities],
                )
            elif fam == RAW:
                data = RepData(
                    rep, features[variant].shape[1], parts=[handles[variant]], scales=[1.0]
                )
            elif fam == HEAD:
                data = RepData(
                    rep, int(handles[f"{HEAD}:dims"][variant]), parts=[handles[rep]], scales=[1.0]
                )
            elif fam == PCA:
                if variant == CONCAT:
                    x_train = _scaled_concat(features, fold.rows_train, scales)
                    x_test = _scaled_concat(features, fold.rows_test, scales)
                else:
                    x_train, x_test = (
                        features[variant][fold.rows_train],
                        features[variant][fold.rows_test],
                    )
                pca, pinfo = scoring.fit_pca(x_train, pca_k, seed)
                z_train = scoring.apply_pca(pca, x_train).astype(np.float32)
                z_test = scoring.apply_pca(pca, x_test).astype(np.float32)
                explained = float(pca.explained_variance_ratio_.sum())
                data = RepData(
                    rep,
                    z_train.shape[1],
                    z_train,
                    z_test,
                    info={**pinfo, "explained_variance": explained},
                )
            elif fam == PROJECTED:
                cfg = _in_fold_config(train_cfg, variant)
                inputs = {m: features[m][fold.rows_train] for m in modalities}
                fit, selection = search.fit_selected(
                    inputs,
                    fold.labels_train,
                    cfg,
                    seed=train_cfg.seed + fold.index,
                    ids=None if ids is None else ids[fold.rows_train],
                )
                z_train = trainer.project(fit.head, inputs)
                z_test = trainer.project(
                    fit.head, {m: features[m][fold.rows_test] for m in modalities}
                )
                data = RepData(
                    rep,
                    z_train.shape[1],
                    z_train,
                    z_test,
                    info={
                        "best_epoch": fit.best_epoch,
                        "epochs_run": len(fit.history),
                        "n_fit": fit.n_train,
                        "n_early_stopping": fit.n_val,
                        "out_dim": int(fit.head.out_dim),
                        "search": selection.to_json(),
                    },
                )
            else:
                raise ValueError(f"unknown representation {rep!r}")
        except Exception as e:  # one failed representation must not sink the other cells
            log.warning("score: %s fold %s: %s failed: %s", fold.task, fold.name, rep, e)
            data = RepData(rep, error=f"{type(e).__name__}: {e}"[:500])
        data.info["build_s"] = time.perf_counter() - start
        info["representations"][rep] = {**data.info, "dims": data.dims, "error": data.error}
        out.append(data)
    return out, info


# -- one cell --------------------------------------------------------------------------------


# The metric whose value per fit a row of several fits lists, to show the spread between seeds.
FITS_METRIC = "macro_f1"


def run_cell(
    rep: RepData,
    fold: Fold,
    task_type: str,
    classes: list[str],
    classifier: str,
    params: dict | None,
    seeds: list[int],
    resolve: Callable[[Any], np.ndarray] = lambda x: x,
) -> tuple[dict, np.ndarray | None]:
    """Score one classifier on one representation of one fold, once per seed in `seeds`.

    Returns (row, y_pred): the report row (metrics averaged over the fits, timings per fit,
    status "ok" or "error" with the reason) and the test predictions stacked over the fits, shaped
    (fits, *y_test.shape) (None when the cell failed), for pooled paired gains.
    """
    row: dict[str, Any] = {
        "task": fold.task,
        "representation": rep.name,
        "classifier": classifier,
        "fold": fold.label,
        "dims": rep.dims,
        "worker": os.getpid(),
    }
    try:
        x_train, x_test = rep.matrices(fold, resolve)
        fits = [
            scoring.score_cell(
                x_train,
                fold.y_train,
                x_test,
                fold.y_test,
                classifier,
                task_type,
                classes,
                seed,
                params,
                keep_predictions=True,
            )
            for seed in seeds
        ]
    except Exception as e:  # a failed cell is a row with its reason, not a failed job
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
        for m in ("macro_f1", "micro_f1", "accuracy", "auroc"):
            row[m] = None
        return row, None
    y_pred = np.stack([f.pop("y_pred") for f in fits])
    row.update(status="ok", error=None, **_mean_of_fits(fits))
    if len(fits) > 1:
        row["seeds"] = list(seeds)
        row[f"{FITS_METRIC}_fits"] = [f[FITS_METRIC] for f in fits]
    return row, y_pred


def _mean_of_fits(fits: list[dict]) -> dict[str, Any]:
    """One result from several fits of a classifier on the same rows: metrics and timings averaged
    (None when a fit has none, e.g. an AUROC that needs every class), per-class F1 per class."""
    out = dict(fits[0])
    for key in ("macro_f1", "micro_f1", "accuracy", "auroc", "fit_s", "predict_s"):
        values = [f[key] for f in fits]
        out[key] = None if any(v is None for v in values) else float(np.mean(values))
    out["per_class_f1"] = {
        c: None if any(f["per_class_f1"][c] is None for f in fits)
        else float(np.mean([f["per_class_f1"][c] for f in fits]))
        for c in fits[0]["per_class_f1"]
    }
    return out


# -- executors -------------------------------------------------------------------------------


@dataclass
class Plan:
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
        n = self.classifier_seeds if scoring.seed_dependent(classifier, params) else 1
        return [base + SEED_STRIDE * i for i in range(n)]


@dataclass
class Outcome:
    rows: list[dict]
    preds: dict[tuple, np.ndarray]  # (task, representation, classifier, fold label) -> y_pred
    fold_info: list[dict]
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # representation -> (X, y) for the 2-D view
    timings: dict[str, float]


def _handles_dims(plan: Plan) -> dict[str, int]:
    return {k.partition(":")[2]: v.shape[1] for k, v in plan.head_arrays.items()}


def _sample_reps(plan: Plan) -> list[str]:
    """The representations drawn in the 2-D view: the first raw one and the first learned one."""
    raw = [r for r in plan.representations if family(r) == RAW]
    raw = [r for r in raw if r.endswith(CONCAT)] or raw
    learned = [r for r in plan.representations if family(r) in (PROJECTED, HEAD)]
    learned = learned or [r for r in plan.representations if family(r) == PCA]
    return [*raw[:1], *learned[:1]]


def _sample_fold(plan: Plan) -> Fold:
    """The fold whose test rows the 2-D view draws: the first task's first outer fold."""
    return next(f for f in plan.folds[plan.tasks[0].name] if f.kind == "test")


def _take_sample(rep: RepData, fold: Fold, resolve: Callable) -> tuple[np.ndarray, np.ndarray]:
    _, x_test = rep.matrices(fold, resolve)
    return x_test, fold.y_test


def run_cells_local(plan: Plan, progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Every cell in this process, one after another (tiny runs and tests)."""
    handles: dict[str, Any] = {
        **plan.features,
        **plan.head_arrays,
        f"{HEAD}:dims": _handles_dims(plan),
    }
    rows, preds, infos, samples = [], {}, [], {}
    t_prep = t_cells = 0.0
    done = 0
    for task in plan.tasks:
        for fold in plan.folds[task.name]:
            start = time.perf_counter()
            reps, info = build_representations(
                plan.features,
                handles,
                fold,
                plan.representations,
                plan.train_cfg,
                plan.pca_k,
                plan.seed,
                plan.ids,
            )
            t_prep += time.perf_counter() - start
            infos.append(info)
            if fold is _sample_fold(plan):
                for rep in reps:
                    if rep.name in _sample_reps(plan) and not rep.error:
                        samples[rep.name] = _take_sample(rep, fold, lambda x: x)
            start = time.perf_counter()
            for rep in reps:
                for clf in plan.classifiers:
                    row, y_pred = run_cell(
                        rep,
                        fold,
                        task.task_type,
                        task.classes,
                        clf,
                        plan.classifier_params.get(clf),
                        plan.cell_seeds(fold, clf),
                    )
                    rows.append(row)
                    if y_pred is not None:
                        preds[(task.name, rep.name, clf, fold.label)] = y_pred
                    done += 1
                    if progress:
                        progress(done, plan.n_cells)
            t_cells += time.perf_counter() - start
    return Outcome(rows, preds, infos, samples, {"build_s": t_prep, "cells_s": t_cells})


def _prepare_task(handles, fold, representations, train_cfg, pca_k, seed, ids, threads):
    """Ray task body: fetch the raw arrays, build one fold's representations."""
    import ray
    import torch

    torch.set_num_threads(threads)
    names = [k for k in handles if not k.startswith(f"{HEAD}:")]
    fetched = dict(zip(names, ray.get([handles[k] for k in names]), strict=True))
    reps, info = build_representations(
        fetched, handles, fold, representations, train_cfg, pca_k, seed, ids
    )
    return (*reps, info)


def _cell_task(rep, fold, task_type, classes, classifier, params, seed):
    """Ray task body: one cell; the raw arrays a RepData points at are read from the object store
    without a copy."""
    import ray

    return run_cell(rep, fold, task_type, classes, classifier, params, seed, resolve=ray.get)


def run_cells_ray(
    plan: Plan, sc: ScoreConfig, ray_config, progress: Callable[[int, int], None] | None = None
) -> Outcome:
    """Every cell as a Ray task.

    The raw arrays go to the object store once; one task per (task, fold) builds that fold's
    representations, each returned as its own object, so that a cell fetches only the one it
    scores and no cell recomputes one. Cells are submitted at once and wait on their fold's
    build; with fractional `num_cpus_per_cell`, several run on each CPU's share of workers.
    """
    import ray

    from adapt.rayutil import init_ray

    init_ray(ray_config)
    start = time.perf_counter()
    handles: dict[str, Any] = {m: ray.put(x) for m, x in plan.features.items()}
    handles.update({k: ray.put(v) for k, v in plan.head_arrays.items()})
    handles[f"{HEAD}:dims"] = _handles_dims(plan)
    ids_ref = ray.put(plan.ids)
    threads = plan.train_cfg.torch_threads or max(1, int(sc.num_cpus_per_fold))
    prepare = ray.remote(_prepare_task).options(
        num_cpus=sc.num_cpus_per_fold, num_returns=len(plan.representations) + 1
    )
    cell = ray.remote(_cell_task).options(num_cpus=sc.num_cpus_per_cell)
    info_refs, sample_refs, built = [], {}, []
    for task in plan.tasks:
        for fold in plan.folds[task.name]:
            fold_ref = ray.put(fold)
            # A dict of refs travels as refs (only top-level ref arguments are fetched), so the
            # representations it returns can point at the shared raw arrays instead of copying.
            refs = prepare.remote(
                handles,
                fold_ref,
                plan.representations,
                plan.train_cfg,
                plan.pca_k,
                plan.seed,
                ids_ref,
                threads,
            )
            info_refs.append(refs[-1])
            built.append(
                (task, fold, fold_ref, dict(zip(plan.representations, refs[:-1], strict=True)))
            )
            if fold is _sample_fold(plan):
                for rep_name in _sample_reps(plan):
                    sample_refs[rep_name] = (built[-1][3][rep_name], fold)
    # Slow classifiers first, so that the last cells to finish are short ones and the workers
    # stay busy to the end instead of waiting on a few long stragglers.
    cell_refs, keys = [], []
    for clf in sorted(plan.classifiers, key=lambda c: SLOW_FIRST.get(c, len(SLOW_FIRST))):
        for task, fold, fold_ref, reps in built:
            for rep_name, rep_ref in reps.items():
                cell_refs.append(
                    cell.remote(
                        rep_ref,
                        fold_ref,
                        task.task_type,
                        task.classes,
                        clf,
                        plan.classifier_params.get(clf),
                        plan.cell_seeds(fold, clf),
                    )
                )
                keys.append((task.name, rep_name, clf, fold.label))
    submit_s = time.perf_counter() - start
    index = {ref: i for i, ref in enumerate(cell_refs)}
    results: list[Any] = [None] * len(cell_refs)
    pending = list(cell_refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=30)
        for ref, value in zip(done, ray.get(done), strict=True):
            results[index[ref]] = value
        if progress:
            progress(len(cell_refs) - len(pending), len(cell_refs))
    rows, preds = [], {}
    for key, (row, y_pred) in zip(keys, results, strict=True):
        rows.append(row)
        if y_pred is not None:
            preds[key] = y_pred
    infos = ray.get(info_refs)
    samples = {}
    for name, (rep_ref, fold) in sample_refs.items():
        rep = ray.get(rep_ref)
        if not rep.error:
            samples[name] = _take_sample(rep, fold, ray.get)
    return Outcome(
        rows,
        preds,
        infos,
        samples,
        {"submit_s": submit_s, "cells_s": time.perf_counter() - start - submit_s},
    )


# -- summary: means, gains, recommendation ---------------------------------------------------


def _mean_per_class(members: list[dict]) -> dict[str, float | None]:
    out: dict[str, list[float]] = {}
    for r in members:
        for c, v in (r.get("per_class_f1") or {}).items():
            out.setdefault(c, [])
            if v is not None:
                out[c].append(v)
    return {c: (float(np.mean(v)) if v else None) for c, v in out.items()}


def mean_rows(rows: list[dict], n_boot: int, alpha: float, seed: int) -> list[dict]:
    """One fold="mean" row per (task, representation, classifier): `scoring.aggregate` (mean,
    std and bootstrap interval over folds) plus the mean per-class F1 and the dims."""
    ok = [r for r in rows if r.get("status") == "ok"]
    means = scoring.aggregate(ok, n_boot=n_boot, alpha=alpha, seed=seed) if ok else []
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
            **{f"{k}{s}": None for k in scoring.CI_METRICS for s in ("", "_std", "_lo", "_hi")},
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


def _pooled(
    task: Task, folds: list[Fold], preds: dict, rep: str, clf: str, labels: list
) -> tuple[np.ndarray, np.ndarray]:
    by_label = {f.label: f for f in folds}
    y_true = np.concatenate([by_label[f].y_test for f in labels])
    # Predictions are stacks of fits (seeds); pooling joins rows, on axis 1.
    y_pred = np.concatenate([preds[(task.name, rep, clf, f)] for f in labels], axis=1)
    return y_true, y_pred


def _fits_metric(task: Task, y_true: np.ndarray, fits: np.ndarray, metric: str) -> float:
    """The metric of pooled predictions, averaged over a stack of fits."""
    return float(
        np.mean([scoring.metrics(y_true, p, None, task.task_type, task.classes)[metric]
                 for p in fits])
    )


def _best(means: dict[str, float | None], fam: str) -> str | None:
    scored = {r: v for r, v in means.items() if family(r) == fam and v is not None}
    return max(scored, key=lambda r: (scored[r], r)) if scored else None


def paired_gains(
    tasks: list[Task],
    folds: dict[str, list[Fold]],
    preds: dict,
    means: list[dict],
    representations: list[str],
    classifiers: list[str],
    sc: ScoreConfig,
) -> list[dict]:
    """Gain of each learned representation over the best raw one and the best PCA one, per task
    and classifier, with a paired bootstrap interval on the pooled out-of-fold predictions.

    The baseline of a family is the member with the highest mean test score for that task and
    classifier: picked on test rows, so it favours the baseline and the gain is, if anything,
    understated. Pooling uses the outer folds where both sides have predictions.
    """
    metric = sc.metric
    mean_of = {(m["task"], m["representation"], m["classifier"]): m.get(metric) for m in means}
    out = []
    for task in tasks:
        outer = [f for f in folds[task.name] if f.kind == "test"]
        for clf in classifiers:
            scores = {r: mean_of.get((task.name, r, clf)) for r in representations}
            for base_family, candidates in GAIN_BASELINES.items():
                base = _best(scores, base_family)
                if base is None:
                    continue
                for rep in representations:
                    if family(rep) not in candidates:
                        continue
                    row = {
                        "task": task.name,
                        "classifier": clf,
                        "representation": rep,
                        "baseline": base_family,
                        "metric": metric,
                    }
                    gain = _pooled_gain(task, outer, preds, [clf], sc, base, rep, scores=True)
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
                    out.append({**row, **(gain or empty)})
    return out


def _pooled_gain(
    task: Task,
    folds: list[Fold],
    preds: dict,
    classifiers: list[str],
    sc: ScoreConfig,
    base: str,
    rep: str,
    scores: bool = False,
) -> dict | None:
    """Paired interval of rep - base in the metric averaged over `classifiers`, on the predictions
    pooled over those of `folds` (test or validation) where every classifier has both sides;
    None when no fold has. scores=True adds each side's pooled metric (averaged likewise) as
    candidate_score and baseline_score."""
    common = [
        f.label
        for f in folds
        if all((task.name, r, c, f.label) in preds for r in (rep, base) for c in classifiers)
    ]
    if not common:
        return None
    y_true = _pooled(task, folds, preds, rep, classifiers[0], common)[0]
    pred_a = [_pooled(task, folds, preds, base, c, common)[1] for c in classifiers]
    pred_b = [_pooled(task, folds, preds, rep, c, common)[1] for c in classifiers]
    ci = scoring.paired_mean_gain_ci(y_true, pred_a, pred_b, sc.metric, sc.n_boot, sc.alpha, sc.seed)
    out = {**ci, "baseline_representation": base, "n_rows": len(y_true), "n_folds": len(common)}
    if scores:
        out["candidate_score"] = float(
            np.mean([_fits_metric(task, y_true, p, sc.metric) for p in pred_b])
        )
        out["baseline_score"] = float(
            np.mean([_fits_metric(task, y_true, p, sc.metric) for p in pred_a])
        )
    return out


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


def mean_gains(
    tasks: list[Task],
    folds: dict[str, list[Fold]],
    preds: dict,
    means: list[dict],
    representations: list[str],
    classifiers: list[str],
    sc: ScoreConfig,
) -> list[dict]:
    """Gain of each learned representation over the best raw one and the best PCA one in the
    metric averaged over every classifier, with a paired bootstrap interval (the same row draws
    for all classifiers, `scoring.paired_mean_gain_ci`) on the pooled out-of-fold predictions.

    The baseline of a family is its member with the highest classifier-averaged mean test score
    (picked on test rows: it favours the baseline). Pooling uses the outer folds where every
    classifier has predictions on both sides.
    """
    metric = sc.metric
    out = []
    for task in tasks:
        outer = [f for f in folds[task.name] if f.kind == "test"]
        table = {(m["representation"], m["classifier"]): m.get(metric)
                 for m in means if m["task"] == task.name}
        averaged = _averaged(table, representations, classifiers)
        for base_family, candidates in GAIN_BASELINES.items():
            base = _best(averaged, base_family)
            if base is None:
                continue
            for rep in representations:
                if family(rep) not in candidates or rep not in averaged:
                    continue
                row = {
                    "task": task.name,
                    "representation": rep,
                    "baseline": base_family,
                    "baseline_representation": base,
                    "metric": metric,
                    "classifiers": list(classifiers),
                    "candidate_score": averaged[rep],
                    "baseline_score": averaged[base],
                }
                gain = _pooled_gain(task, outer, preds, classifiers, sc, base, rep)
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


def _validation_layout(val_folds: list) -> tuple[int, int]:
    """(outer folds with validation splits, inner splits per such fold) of a task's validation
    folds, read from their labels: "val<i>" and "val<i>.<j>" are splits of outer fold i."""
    outer = len({str(f.label).split(".")[0] for f in val_folds})
    return outer, (len(val_folds) // outer if outer else 1)


def recommend(
    tasks: list[Task],
    validation_means: list[dict],
    representations: list[str],
    classifiers: list[str],
    sc: ScoreConfig,
    folds: dict[str, list[Fold]] | None = None,
    preds: dict | None = None,
) -> dict[str, dict]:
    """Per task, the representation with the best validation score averaged over classifiers;
    also the best per classifier. Reads only validation cells (inner splits of training rows).

    A representation other than raw is recommended only when its paired gain over the best raw
    one on the pooled validation predictions (`folds`, `preds`) has an interval above zero;
    otherwise the best raw one is: changing what a user feeds a classifier needs evidence."""
    metric = sc.metric
    preds = preds or {}
    out = {}
    for task in tasks:
        val_folds = [f for f in (folds or {}).get(task.name, []) if f.kind == "validation"]
        n_val, per_fold = _validation_layout(val_folds)
        n_val = n_val or sc.validation_folds
        pooled = f" ({sum(len(f.y_test) for f in val_folds)} rows pooled)" if val_folds else ""
        basis = (
            f"Chosen on validation scores only: {per_fold} inner validation split(s), each "
            f"holding out {sc.val_fraction:.0%} of the training rows, of {n_val} outer "
            f"fold(s){pooled}; "
            "a representation other than raw only with a validation gain over the best raw one "
            f"whose {1 - sc.alpha:.0%} paired interval is above zero; no test row was used"
        )
        table = {
            (m["representation"], m["classifier"]): m.get(metric)
            for m in validation_means
            if m["task"] == task.name
        }
        if not table:
            out[task.name] = {
                "representation": None,
                "metric": metric,
                "score": None,
                "by_classifier": {},
                "scores": {},
                "basis": "no validation cells (score.validation_folds is 0)",
            }
            continue
        scores = _averaged(table, representations, classifiers)
        best, note = _guarded(
            scores, partial(_pooled_gain, task, val_folds, preds, classifiers, sc)
        )
        by_clf = {}
        for clf in classifiers:
            cands = {r: table.get((r, clf)) for r in representations}
            cands = {r: v for r, v in cands.items() if v is not None}
            if cands:
                r, clf_note = _guarded(
                    cands, partial(_pooled_gain, task, val_folds, preds, [clf], sc)
                )
                by_clf[clf] = {"representation": r, "score": cands[r], **clf_note}
        out[task.name] = {
            "representation": best,
            "metric": metric,
            "score": scores.get(best) if best else None,
            "by_classifier": by_clf,
            "scores": scores,
            "basis": basis,
            **note,
        }
    return out


# -- the stage -------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    run_id: str
    report_dir: str
    report: dict
    n_cells: int
    failed_cells: int
    wall_s: float
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        head = (
            f"score: {self.n_cells} cells ({self.failed_cells} failed) in {self.wall_s:.1f} s; "
            f"run {self.run_id}"
        )
        return "\n".join(
            [
                head,
                report_io.headline(self.report),
                f"  report: {join(self.report_dir, 'report.md')}",
            ]
        )


def main(config: Config) -> ScoreResult:
    """The stage as the CLI and jobs/score.py run it."""
    return run_score(config)


def _check_classifier_params(sc: ScoreConfig) -> None:
    problems = []
    for name, params in sc.classifier_params.items():
        try:
            scoring.make_classifier(name, "multiclass", 0, params)
        except ValueError as e:
            problems.append(f"score.classifier_params.{name}: {e}")
    if problems:
        raise ValueError("\n".join(problems))


def _fingerprint(store: Storage, output: str, emb: Embeddings) -> dict:
    manifest = emb.manifest
    raw = store.read_bytes(manifest_path(output))
    ids = hashlib.sha256("\n".join(map(str, emb.ids)).encode()).hexdigest()
    return {
        "embeddings_manifest": manifest_path(output),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "ids_sha256": ids,
        "corpus": manifest.get("corpus"),
        "encoders": manifest.get("fingerprints", {}),
        "rows": len(emb),
        "dropped_incomplete": manifest.get("dropped_incomplete", 0),
        "written_at": manifest.get("written_at"),
        "adapt_version": manifest.get("adapt_version"),
    }


def _load_heads(
    store: Storage, uris: list[str], features: dict[str, np.ndarray]
) -> tuple[dict, list[dict]]:
    """Apply each given head to every row once; names are unique and safe for report keys."""
    from adapt.artifact import load_head

    arrays, meta, used = {}, [], set()
    for uri in uris:
        head = load_head(uri, store)
        card = getattr(head, "card", None)
        if isinstance(card, dict):  # the per-epoch history and weights layout stay in the card
            card = {k: v for k, v in card.items() if k not in ("history", "head", "versions")}
        card = json.loads(json.dumps(card, default=str)) if card is not None else None
        name = (card or {}).get("run_id") if isinstance(card, dict) else None
        name = str(name or os.path.basename(uri.rstrip("/")) or "head").replace(":", "_")
        base, n = name, 2
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        arrays[f"{HEAD}:{name}"] = np.asarray(head(features), dtype=np.float32)
        meta.append(
            {
                "representation": f"{HEAD}:{name}",
                "uri": uri,
                "card": card,
                "note": "trained outside this run: it may have seen rows that are test rows here, "
                "so its scores can be optimistic",
            }
        )
    return arrays, meta


def make_plan(config: Config, emb: Embeddings, head_arrays: dict | None = None) -> Plan:
    """Tasks, folds and the grid for a configuration and loaded embeddings (no Ray, no I/O)."""
    sc = config.score
    head_arrays = head_arrays or {}
    reps = expand_representations(
        sc.representations, emb.modalities, [k.partition(":")[2] for k in head_arrays]
    )
    tasks = [build_task(spec, emb.columns, sc.n_folds) for spec in sc.tasks]
    folds = {t.name: plan_folds(t, sc) for t in tasks}
    return Plan(
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


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def run_score(
    config: Config, store: Storage | None = None, embeddings: Embeddings | None = None
) -> ScoreResult:
    """Run the score stage: plan, run every cell, summarise, write the report."""
    t0 = time.perf_counter()
    store = store or Storage(config.storage)
    sc = config.score
    _check_classifier_params(sc)
    store.check_writable(config.output)
    emb = embeddings if embeddings is not None else load_embeddings(store, config.output)
    inputs = (
        _fingerprint(store, config.output, emb)
        if embeddings is None
        else {
            "rows": len(emb),
            "encoders": emb.manifest.get("fingerprints", {}),
            "ids_sha256": hashlib.sha256("\n".join(map(str, emb.ids)).encode()).hexdigest(),
        }
    )
    head_arrays, heads_meta = _load_heads(store, sc.heads, emb.features) if sc.heads else ({}, [])
    plan = make_plan(config, emb, head_arrays)
    run_id = sc.run_id or new_run_id()
    log.info(
        "score: %d tasks x %d representations x %d classifiers, %d folds: %d cells",
        len(plan.tasks),
        len(plan.representations),
        len(plan.classifiers),
        sum(len(f) for f in plan.folds.values()),
        plan.n_cells,
    )

    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            log.info("score: %d / %d cells done", done, total)

    if sc.executor == "local":
        outcome = run_cells_local(plan, progress)
    else:
        outcome = run_cells_ray(plan, sc, config.ray, progress)

    t_sum = time.perf_counter()
    test_rows = [r for r in outcome.rows if isinstance(r["fold"], int)]
    val_rows = [r for r in outcome.rows if not isinstance(r["fold"], int)]
    means = mean_rows(test_rows, sc.n_boot, sc.alpha, sc.seed)
    val_means = mean_rows(val_rows, sc.n_boot, sc.alpha, sc.seed)
    gains = paired_gains(
        plan.tasks, plan.folds, outcome.preds, means, plan.representations, plan.classifiers, sc
    )
    averaged = mean_gains(
        plan.tasks, plan.folds, outcome.preds, means, plan.representations, plan.classifiers, sc
    )
    recommendation = (
        recommend(
            plan.tasks,
            val_means,
            plan.representations,
            plan.classifiers,
            sc,
            plan.folds,
            outcome.preds,
        )
        if sc.validation_folds
        else {}
    )
    timings = {**outcome.timings, "summary_s": time.perf_counter() - t_sum}
    failed = [r for r in outcome.rows if r["status"] != "ok"]
    report = {
        "schema_version": report_io.SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "adapt_version": adapt_version,
        "config": config.model_dump(mode="json"),
        "inputs": inputs,
        "protocol": {
            "n_folds": sc.n_folds,
            "only_folds": sc.only_folds,
            "scheme": sc.scheme,
            "seed": sc.seed,
            "metric": sc.metric,
            "alpha": sc.alpha,
            "n_boot": sc.n_boot,
            "validation_folds": sc.validation_folds,
            "val_fraction": sc.val_fraction,
            "validation_rows": sc.validation_rows,
            "validation_splits": {
                t.name: _validation_layout(
                    [f for f in plan.folds[t.name] if f.kind == "validation"]
                )[1]
                for t in plan.tasks
            },
            "classifier_seeds": sc.classifier_seeds,
            "seed_dependent": [
                c for c in plan.classifiers
                if scoring.seed_dependent(c, plan.classifier_params.get(c))
            ],
            "pca_k": plan.pca_k,
            "classifiers": plan.classifiers,
            "representations": plan.representations,
        },
        "tasks": [t.meta() for t in plan.tasks],
        "heads": heads_meta,
        "results": [*test_rows, *means],
        "validation": [*val_rows, *val_means],
        "gains": gains,
        "mean_gains": averaged,
        "recommendation": recommendation,
        "folds": outcome.fold_info,
        "failures": [
            {k: r[k] for k in ("task", "representation", "classifier", "fold", "error")}
            for r in failed
        ],
        "timings": timings,
    }
    report = json.loads(json.dumps(report, default=_json_default))
    report_dir = join(config.output, "reports", run_id)
    t_write = time.perf_counter()
    extra = []
    if sc.predictions:
        extra.append(join(report_dir, PREDICTIONS_FILE))
        store.write_bytes(extra[-1], predictions_npz(plan, outcome.preds))
    files = report_io.write_report(
        store, report_dir, report, outcome.samples if sc.plots else None, plots=sc.plots
    )
    report["timings"]["write_s"] = time.perf_counter() - t_write
    return ScoreResult(
        run_id,
        report_dir,
        report,
        plan.n_cells,
        len(failed),
        time.perf_counter() - t0,
        [*extra, *files],
    )


PREDICTIONS_FILE = "predictions.npz"
_SEP = "|"  # task names and representations never hold it (see ScoreTask.name)


def predictions_npz(plan: Plan, preds: dict[tuple, np.ndarray]) -> bytes:
    """Every cell's predictions and every fold's row ids and true labels, as one .npz file.

    Arrays: `pred|TASK|REPRESENTATION|CLASSIFIER|FOLD` (fits x rows, or fits x rows x labels
    for multilabel), `ids|TASK|FOLD` and `y|TASK|FOLD` for the fold's scored rows; FOLD is an
    outer fold's number or "val<i>[.<j>]". Class ids index the task's classes in report.json."""
    arrays: dict[str, np.ndarray] = {}
    for task in plan.tasks:
        for fold in plan.folds[task.name]:
            key = f"{task.name}{_SEP}{fold.label}"
            arrays[f"ids{_SEP}{key}"] = np.asarray(plan.ids[fold.rows_test]).astype(str)
            arrays[f"y{_SEP}{key}"] = fold.y_test
    for (task, rep, clf, fold), y_pred in preds.items():
        arrays[_SEP.join(["pred", task, rep, clf, str(fold)])] = y_pred.astype(np.int32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_predictions(store: Storage, report_dir: str) -> dict[str, dict]:
    """predictions.npz of a report as {"pred": {(task, rep, classifier, fold): fits x rows},
    "ids": {(task, fold): row ids}, "y": {(task, fold): true labels}}; folds as in report rows
    (int for outer folds, "val<i>[.<j>]" for validation splits)."""
    out: dict[str, dict] = {"pred": {}, "ids": {}, "y": {}}
    with np.load(io.BytesIO(store.read_bytes(join(report_dir, PREDICTIONS_FILE)))) as npz:
        for name in npz.files:
            kind, *key = name.split(_SEP)
            fold = key[-1]
            key[-1] = int(fold) if fold.isdigit() else fold
            out[kind][tuple(key)] = npz[name]
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
