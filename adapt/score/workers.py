"""Running the cells of a plan: in this process, or as Ray tasks over a cluster.

One loop (`run_cells`) walks the plan: build each (task, fold)'s representations, then score every
cell on them, slowest classifiers first. What differs is who does the work, a `LocalExecutor`
(one after another in this process: tiny runs and tests) or a `RayExecutor` (a task per fold's
build, a task per cell); only the Ray one imports Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapt.classifiers import slow_first
from adapt.config import RayConfig, ScoreConfig
from adapt.rayutil import init_ray
from adapt.score.cells import run_cell
from adapt.score.plan import Fold, ScorePlan, _handles_dims, _sample_fold, _sample_reps
from adapt.score.representations import HEAD, RepData, build_representations

Progress = Callable[[int, int], None]


@dataclass
class Outcome:
    rows: list[dict]
    preds: dict[tuple, np.ndarray]  # (task, representation, classifier, fold label) -> y_pred
    fold_info: list[dict]
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # representation -> (X, y) for the 2-D view
    timings: dict[str, float]


@dataclass
class Cell:
    """One cell to score: a representation (or a reference to it) on one fold of one task."""

    rep: Any
    fold: Any  # the Fold, or a reference to it
    task_type: str
    classes: list[str]
    classifier: str
    params: dict | None
    seeds: list[int]


def run_cells(
    plan: ScorePlan, executor: LocalExecutor | RayExecutor, progress: Progress | None = None
) -> Outcome:
    """Every cell of the plan, through `executor`; rows come back in submission order."""
    built, infos, samples = [], [], {}
    start = time.perf_counter()
    for task in plan.tasks:
        for fold in plan.folds[task.name]:
            fold_ref, reps, info = executor.prepare(fold)
            built.append((task, fold, fold_ref, reps))
            infos.append(info)
    build_s = time.perf_counter() - start
    cells, keys = [], []
    for clf in executor.order(plan.classifiers):
        for task, fold, fold_ref, reps in built:
            for rep_name, rep in reps.items():
                params = executor.cell_params(clf, plan.classifier_params.get(clf))
                seeds = plan.cell_seeds(fold, clf)
                cells.append(Cell(rep, fold_ref, task.task_type, task.classes, clf, params, seeds))
                keys.append((task.name, rep_name, clf, fold.label))
    results, timings = executor.run(cells, progress)
    rows, preds = [], {}
    for key, (row, y_pred) in zip(keys, results, strict=True):
        rows.append(row)
        if y_pred is not None:
            preds[key] = y_pred
    sample_fold = _sample_fold(plan)
    for _, fold, _, reps in built:
        if fold is sample_fold:
            for name in _sample_reps(plan):
                rep = executor.fetch(reps[name])
                if not rep.error:
                    samples[name] = _take_sample(rep, fold, executor.fetch)
    return Outcome(rows, preds, executor.fetch(infos), samples, {"build_s": build_s, **timings})


def _take_sample(rep: RepData, fold: Fold, resolve: Callable) -> tuple[np.ndarray, np.ndarray]:
    _, x_test = rep.matrices(fold, resolve)
    return x_test, fold.y_test


class LocalExecutor:
    """Every build and cell in this process, one after another, in plan order."""

    def __init__(self, plan: ScorePlan) -> None:
        self.plan = plan
        self.handles: dict[str, Any] = {
            **plan.features,
            **plan.head_arrays,
            f"{HEAD}:dims": _handles_dims(plan),
        }

    def prepare(self, fold: Fold) -> tuple[Fold, dict[str, RepData], dict]:
        p = self.plan
        reps, info = build_representations(
            p.features, self.handles, fold, p.representations, p.train_cfg, p.pca_k, p.seed, p.ids
        )
        return fold, {r.name: r for r in reps}, info

    def order(self, classifiers: list[str]) -> list[str]:
        return list(classifiers)

    @staticmethod
    def cell_params(classifier: str, params: dict | None) -> dict | None:
        return params

    def run(self, cells: list[Cell], progress: Progress | None) -> tuple[list, dict]:
        start = time.perf_counter()
        results = []
        for i, c in enumerate(cells):
            results.append(
                run_cell(c.rep, c.fold, c.task_type, c.classes, c.classifier, c.params, c.seeds)
            )
            if progress:
                progress(i + 1, len(cells))
        return results, {"cells_s": time.perf_counter() - start}

    @staticmethod
    def fetch(value: Any) -> Any:
        return value


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


class RayExecutor:
    """Every build and cell as a Ray task.

    The raw arrays go to the object store once; one task per (task, fold) builds that fold's
    representations, each returned as its own object, so that a cell fetches only the one it
    scores and no cell recomputes one. Cells are submitted at once, slowest classifiers first (so
    that the last cells to finish are short ones and the workers stay busy to the end instead of
    waiting on a few long stragglers), and wait on their fold's build; with fractional
    `num_cpus_per_cell`, several run on each CPU's share of workers.
    """

    def __init__(self, plan: ScorePlan, sc: ScoreConfig, ray_config: RayConfig) -> None:
        import ray

        init_ray(ray_config)
        self.plan = plan
        self.handles: dict[str, Any] = {m: ray.put(x) for m, x in plan.features.items()}
        self.handles.update({k: ray.put(v) for k, v in plan.head_arrays.items()})
        self.handles[f"{HEAD}:dims"] = _handles_dims(plan)
        self.ids_ref = ray.put(plan.ids)
        self.threads = plan.train_cfg.torch_threads or max(1, int(sc.num_cpus_per_fold))
        self.prepare_task = ray.remote(_prepare_task).options(
            num_cpus=sc.num_cpus_per_fold, num_returns=len(plan.representations) + 1
        )
        self.cell_task = ray.remote(_cell_task).options(num_cpus=sc.num_cpus_per_cell)
        # xgboost fits on the CPUs (threads) or the GPU its cell reserves; the others on one core.
        self.gpu_cell_task = (
            self.cell_task.options(num_gpus=sc.num_gpus_per_cell)
            if sc.num_gpus_per_cell
            else self.cell_task
        )
        self.xgboost_threads = max(1, int(sc.num_cpus_per_cell))
        self.gpus_per_cell = sc.num_gpus_per_cell

    def prepare(self, fold: Fold) -> tuple[Any, dict[str, Any], Any]:
        import ray

        p = self.plan
        fold_ref = ray.put(fold)
        # A dict of refs travels as refs (only top-level ref arguments are fetched), so the
        # representations it returns can point at the shared raw arrays instead of copying.
        refs = self.prepare_task.remote(
            self.handles,
            fold_ref,
            p.representations,
            p.train_cfg,
            p.pca_k,
            p.seed,
            self.ids_ref,
            self.threads,
        )
        return fold_ref, dict(zip(p.representations, refs[:-1], strict=True)), refs[-1]

    def order(self, classifiers: list[str]) -> list[str]:
        return slow_first(classifiers)

    def cell_params(self, classifier: str, params: dict | None) -> dict | None:
        """xgboost's threads and device follow the resources of its cell; the user's own
        classifier_params win."""
        if classifier != "xgboost":
            return params
        own = {"n_jobs": self.xgboost_threads}
        if self.gpus_per_cell:
            own["device"] = "cuda"
        return {**own, **(params or {})}

    def run(self, cells: list[Cell], progress: Progress | None) -> tuple[list, dict]:
        import ray

        start = time.perf_counter()
        refs = [
            (self.gpu_cell_task if c.classifier == "xgboost" else self.cell_task).remote(
                c.rep, c.fold, c.task_type, c.classes, c.classifier, c.params, c.seeds
            )
            for c in cells
        ]
        submit_s = time.perf_counter() - start
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=30)
            for ref, value in zip(done, ray.get(done), strict=True):
                results[index[ref]] = value
            if progress:
                progress(len(refs) - len(pending), len(refs))
        return results, {"submit_s": submit_s, "cells_s": time.perf_counter() - start - submit_s}

    @staticmethod
    def fetch(value: Any) -> Any:
        import ray

        return ray.get(value)
