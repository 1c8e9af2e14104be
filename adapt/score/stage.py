"""The score stage: does the adapted embedding beat what I had, for my tasks and my classifiers?

Every task from `score.tasks` is scored on the same stratified folds for every representation. The
unit of work is a *cell*, one (task, representation, classifier, fold). The stage reads top-down:
plan (`adapt.score.plan`), run the cells (`adapt.score.workers` over `adapt.score.cells`),
summarise (`adapt.score.summary`), write the report (`adapt.score.io`, `adapt.score.report`).

Leakage rules: PCA, the per-modality scaling of the concatenation, and in-fold heads are fitted
on the fold's training rows; the recommendation reads only validation cells, never a test row. A
head given by URI was trained elsewhere and may have seen rows that are test rows here; the report
says so next to its numbers.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

from adapt import __version__ as adapt_version
from adapt import layout
from adapt.classifiers import make_classifier, seed_dependent
from adapt.config import Config, ScoreConfig
from adapt.embeddings import Embeddings, load_embeddings
from adapt.progress import Meter
from adapt.score.deploy import deployment
from adapt.score.io import (
    input_fingerprint,
    json_default,
    load_heads,
    write_predictions,
    write_report,
)
from adapt.score.plan import (
    ScorePlan,
    make_plan,
    sampled_tasks,
    validation_folds,
    validation_layout,
)
from adapt.score.report.markdown import headline
from adapt.score.report.schema import SCHEMA_VERSION
from adapt.score.summary import summarise
from adapt.score.workers import LocalExecutor, Outcome, RayExecutor, run_cells
from adapt.storage import Storage

log = logging.getLogger("adapt.score")


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
                headline(self.report),
                f"  report: {layout.report_file(self.report_dir, layout.REPORT_MD)}",
            ]
        )


def main(config: Config) -> ScoreResult:
    """The stage as the CLI and jobs/score.py run it."""
    return run_score(config)


def _check_classifier_params(sc: ScoreConfig) -> None:
    problems = []
    for name, params in sc.classifier_params.items():
        try:
            make_classifier(name, "multiclass", 0, params)
        except ValueError as e:
            problems.append(f"score.classifier_params.{name}: {e}")
    if problems:
        raise ValueError("\n".join(problems))


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _progress() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress callback for the cells (a bar with rate and ETA, `adapt.progress`), and the
    function that closes it."""
    meters: list[Meter] = []

    def progress(done: int, total: int) -> None:
        if not meters:
            meters.append(Meter("score", total, "cells", every_s=60.0, logger=log))
        # Until the first cells finish, the folds' PCA and in-fold heads are being fitted.
        meters[0].update(done, "" if done else "fitting the folds' PCA and heads first")

    return progress, lambda: [m.close() for m in meters]


def _read_sampled(config: Config, store: Storage) -> tuple[Embeddings, list, dict]:
    """The rows the tasks' samples use, read from the output; and those tasks over them.

    Ids and labels of every row come first (no embeddings), the samples are drawn from them, and
    only the sampled rows' embeddings are then read: at a million rows and a 1,000-row cap the
    driver holds the labels of every row and the vectors of a thousand.
    """
    index = load_embeddings(store, config.output, features=False)
    inputs = input_fingerprint(store, config.output, index, from_output=True)
    tasks = sampled_tasks(config, index)
    used = np.unique(np.concatenate([t.rows for t in tasks]))
    if len(used) == len(index):
        return load_embeddings(store, config.output), tasks, inputs
    emb = load_embeddings(store, config.output, ids=index.ids[used])
    if not np.array_equal(emb.ids, index.ids[used]):
        raise RuntimeError("the embeddings changed while the score stage read them")
    emb.manifest = index.manifest
    at = np.full(len(index), -1, dtype=np.int64)
    at[used] = np.arange(len(used))
    return emb, [replace(t, rows=at[t.rows]) for t in tasks], inputs


def run_score(
    config: Config, store: Storage | None = None, embeddings: Embeddings | None = None
) -> ScoreResult:
    """Run the score stage: plan, run every cell, summarise, write the report."""
    t0 = time.perf_counter()
    store = store or Storage(config.storage)
    sc = config.score
    _check_classifier_params(sc)
    store.check_writable(config.output)
    if embeddings is not None:
        emb, tasks = embeddings, None
        inputs = input_fingerprint(store, config.output, emb, from_output=False)
    else:
        emb, tasks, inputs = _read_sampled(config, store)
    head_arrays, heads_meta = (
        load_heads(store, sc.heads, emb.features, emb.manifest.get("fingerprints"))
        if sc.heads
        else ({}, [])
    )
    plan = make_plan(config, emb, head_arrays, tasks)
    run_id = sc.run_id or new_run_id()
    folds = [f for fs in plan.folds.values() for f in fs]
    n_test = sum(f.kind == "test" for f in folds)
    log.info(
        "score: %d task(s) x %d representations x %d classifiers over %d test folds and %d inner "
        "validation splits: %d cells",
        len(plan.tasks),
        len(plan.representations),
        len(plan.classifiers),
        n_test,
        len(folds) - n_test,
        plan.n_cells,
    )
    executor = LocalExecutor(plan) if sc.executor == "local" else RayExecutor(plan, sc, config.ray)
    progress, close = _progress()
    try:
        outcome = run_cells(plan, executor, progress)
    finally:
        close()

    t_sum = time.perf_counter()
    summary = summarise(plan, outcome.rows, outcome.preds, sc)
    timings = {**outcome.timings, "summary_s": time.perf_counter() - t_sum}
    timings["before_write_s"] = time.perf_counter() - t0
    report = _report(config, store, run_id, inputs, heads_meta, plan, outcome, summary, timings)
    report_dir = layout.report_dir(config.output, run_id)
    t_write = time.perf_counter()
    files = []
    if sc.predictions:
        files.append(write_predictions(store, report_dir, plan, outcome.preds))
    files += write_report(
        store, report_dir, report, outcome.samples if sc.plots else None, plots=sc.plots
    )
    report["timings"]["write_s"] = time.perf_counter() - t_write
    return ScoreResult(
        run_id,
        report_dir,
        report,
        plan.n_cells,
        sum(r["status"] != "ok" for r in outcome.rows),
        time.perf_counter() - t0,
        files,
    )


def cell_notes(rows: list[dict]) -> list[dict]:
    """Each distinct setting a cell changed to fit its data (an approximated kernel, a smaller
    k), per classifier, with how many cells changed it."""
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        for note in filter(None, (r.get("notes") or "").split("; ")):
            # The row counts in a note differ from fold to fold; the rest is the setting.
            key = (r["classifier"], note)
            counts[key] = counts.get(key, 0) + 1
    return [{"classifier": c, "note": n, "cells": k} for (c, n), k in sorted(counts.items())]


def _report(
    config: Config,
    store: Storage,
    run_id: str,
    inputs: dict,
    heads_meta: list[dict],
    plan: ScorePlan,
    outcome: Outcome,
    summary: dict,
    timings: dict,
) -> dict:
    """The report.json document (its schema: adapt.score.report.schema), as plain JSON values."""
    sc = config.score
    report = {
        "schema_version": SCHEMA_VERSION,
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
            "validation_fraction": sc.validation_fraction,
            "validation_rows": sc.validation_rows,
            "validation_splits": {
                t.name: validation_layout([f.label for f in validation_folds(plan, t.name)])[1]
                for t in plan.tasks
            },
            "classifier_seeds": sc.classifier_seeds,
            "seed_dependent": [
                c for c in plan.classifiers if seed_dependent(c, plan.classifier_params.get(c))
            ],
            "pca_k": plan.pca_k,
            "classifiers": plan.classifiers,
            "representations": plan.representations,
        },
        "tasks": [t.meta() for t in plan.tasks],
        "heads": heads_meta,
        "results": [*summary["test_rows"], *summary["means"]],
        "validation": [*summary["validation_rows"], *summary["validation_means"]],
        "gains": summary["gains"],
        "mean_gains": summary["mean_gains"],
        "recommendation": summary["recommendation"],
        # The recommended pair against the best raw pair, on the test rows.
        "pair_verdict": summary["pair_verdict"],
        "confusion": summary["confusion"],
        "deploy": deployment(
            config,
            store,
            [t.meta() for t in plan.tasks],
            summary["recommendation"],
            heads_meta,
            plan.pca_k,
        ),
        "folds": outcome.fold_info,
        "notes": cell_notes(outcome.rows),
        "failures": [
            {k: r[k] for k in ("task", "representation", "classifier", "fold", "error")}
            for r in outcome.rows
            if r["status"] != "ok"
        ],
        "timings": timings,
    }
    return json.loads(json.dumps(report, default=json_default))
