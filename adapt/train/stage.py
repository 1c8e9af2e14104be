"""The train stage: a contrastive projection head over the extracted embeddings.

Three layers, as in every stage:
- pure core: `adapt.train.fit` (normalisation, batches, the epoch loop), `adapt.train.losses`,
  `adapt.train.heads`, and `adapt.train.plan` (which rows train);
- Ray adapter: `adapt.train.workers`, a Ray Train `TorchTrainer` on `train.num_workers` workers
  (DDP), fed by Ray Data from the committed embeddings files; or, with `train.local` (or
  `num_workers: 0`), `fit_head` in this process with no Ray at all;
- storage: checkpoints (`adapt.train.io`) and the head artifact (`adapt.train.artifact`).

Layout under `{output}/heads/`:
    _checkpoints/<run-id>/epoch-00004.safetensors  weights, optimiser and loop state of one epoch
    _checkpoints/<run-id>/latest.json               written after each checkpoint: which is newest
    <run-id>/head.safetensors, card.json            the result (adapt.train.artifact), card last
    latest.json                                     the newest completed run

The run id is derived from the training settings and the embeddings manifest (or set with
`train.run_id`), so a job submitted again resumes from its last checkpoint, and one whose card
exists returns at once. Inside a run, Ray Train's FailureConfig restarts failed workers, which
resume from the same checkpoints. A checkpoint is one object written whole; the pointer written
after it makes it visible, so a reader never picks up half a checkpoint.

Which rows train: every embedded row whose `split` is not in `train.exclude_splits` (or those in
`train.ids_uri`, or the ids a caller passes); of those, `train.early_stopping_fraction` of each
class is held out for early stopping by a hash of the row id (`adapt.splits.holdout_mask`), decided
once on the driver so that every worker, a resumed run and the score stage agree. Workers get the
decision as a rule (`plan.RowRule`: excluded splits and a key threshold per class), not as lists
of ids, and apply it to the rows they read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from adapt import layout
from adapt.config import Config
from adapt.embeddings import (
    load_embeddings,
)
from adapt.rayutil import init_ray
from adapt.storage import Storage
from adapt.train import search
from adapt.train.artifact import save_head, write_latest
from adapt.train.fit import (
    FitResult,
    TrainState,
    fit_head,
)
from adapt.train.io import search_rows
from adapt.train.plan import TrainPlan, plan_run
from adapt.train.workers import _fit_ray, run_tune

log = logging.getLogger("adapt.train")


def _search(config: Config, store: Storage, plan: TrainPlan) -> search.Selection:
    """Select the head's settings on the planned training rows (`adapt.train.search`), as Ray Tune
    trials on the cluster, or in this process for a local run. The choice is saved next to the
    run's checkpoints, so that a resumed run fits the same settings without searching again."""
    cfg = config.train
    uri = layout.search_choice(plan.output, plan.run_id)
    saved = store.read_json_or_none(uri)
    if saved is not None:
        log.info("train: search already done for run %s: %s", plan.run_id, saved["overrides"])
        return search.Selection.from_json(saved)
    inputs, labels, ids = search_rows(store, plan, cfg)
    if cfg.is_local:
        runner = search.run_local
    else:
        init_ray(config.ray)
        runner = run_tune(cfg.search.cpus_per_trial)
    selection = search.select(inputs, labels, cfg, ids=ids, runner=runner)
    log.debug("train: %s", selection.describe())  # the stage's summary prints it
    store.write_json(uri, selection.to_json())
    return selection


def _fit_local(config: Config, store: Storage, plan: TrainPlan) -> tuple[FitResult, dict]:
    cfg = config.train
    emb = load_embeddings(store, config.output, require_all=True)
    position = {str(i): k for k, i in enumerate(emb.ids)}
    labels = emb.labels(plan.label_column)

    def take(ids: np.ndarray) -> tuple[dict[str, np.ndarray], list, list[str]]:
        rows = np.array([position[i] for i in ids if i in position], dtype=np.int64)
        return (
            {m: x[rows] for m, x in emb.features.items()},
            [labels[r] for r in rows],
            [str(emb.ids[r]) for r in rows],
        )

    train_x, train_labels, train_ids = take(plan.train_ids)
    val_x = val_labels = None
    if len(plan.val_ids):
        val_x, val_labels, _ = take(plan.val_ids)
    t0 = time.perf_counter()
    fit = fit_head(train_x, train_labels, cfg, val_x, val_labels, ids=train_ids)
    if fit.classes != plan.classes:
        # Rows dropped for a missing modality can take a class with them; keep the plan's list.
        log.warning(
            "classes of the training rows %s differ from the task's %s", fit.classes, plan.classes
        )
    return fit, {"fit_s": time.perf_counter() - t0}


@dataclass
class TrainResult:
    run_id: str
    head: str  # the run folder
    card: str
    task_type: str
    classes: list[str]
    n_train: int
    n_val: int
    best_epoch: int
    epochs_run: int
    metrics: dict  # the best epoch's history record
    resumed_from: list[int]
    mode: str  # "local" or "ray (N workers)"
    skipped: bool  # the run was already complete
    startup_s: float | None  # from the stage's start to the first optimiser step
    wall_s: float
    timings: dict = field(default_factory=dict)
    search: dict | None = None  # what the hyper-parameter search tried and chose

    def describe(self) -> str:
        if self.skipped:
            return (
                f"train: head {self.run_id} already complete, nothing to do\n"
                f"  head: {self.head}\n  card: {self.card}"
            )
        m = self.metrics
        val = (
            f", val loss {m['val_loss']:.4f}, val pair AUC {m['val_pair_auc']:.3f}"
            if m.get("val_loss") is not None and m.get("val_pair_auc") is not None
            else ""
        )
        resumed = f", resumed after epoch {self.resumed_from}" if self.resumed_from else ""
        startup = f", first step after {self.startup_s:.1f} s" if self.startup_s is not None else ""
        chosen = ""
        if self.search:
            lines = search.Selection.from_json(self.search).describe().splitlines()
            chosen = "".join(f"  {line}\n" for line in lines)
        return (
            f"train: {self.task_type} head over {len(self.classes)} classes, {self.n_train} train "
            f"/ {self.n_val} validation rows, {self.mode}\n"
            f"  {self.epochs_run} epochs, best {self.best_epoch}{val}{resumed}\n"
            f"  {self.wall_s:.1f} s in all{startup}\n"
            f"{chosen}"
            f"  head: {self.head}\n"
            f"  card: {self.card}"
        )


def _result_from_card(card: dict, run: str, skipped: bool, wall_s: float) -> TrainResult:
    history = card.get("history", [])
    best = next((h for h in history if h["epoch"] == card.get("best_epoch")), {})
    return TrainResult(
        run_id=card["run_id"],
        head=run,
        card=layout.head_card(run),
        task_type=card["task_type"],
        classes=card["classes"],
        n_train=card["n_train"],
        n_val=card["n_val"],
        best_epoch=card["best_epoch"],
        epochs_run=card["epochs_run"],
        metrics=best,
        resumed_from=card.get("resumed_from", []),
        mode=card.get("mode", ""),
        skipped=skipped,
        startup_s=card.get("timings", {}).get("startup_s"),
        wall_s=wall_s,
        timings=card.get("timings", {}),
        search=card.get("search"),
    )


def run_train(
    config: Config,
    store: Storage | None = None,
    train_ids: list[str] | None = None,
    run_id: str | None = None,
    fixed_holdout: float | None = None,
) -> TrainResult:
    """Train (or resume, or find complete) the head the config describes; return where it went.

    `train_ids` fits on exactly those rows; the validation share is then held out of them.
    `fixed_holdout` leaves out the rows the nightly comparison holds out (`splits.in_fixed_holdout`
    with that fraction). `run_id` names the run (default: derived).
    """
    t0 = time.perf_counter()
    wall0 = time.time()
    store = store or Storage(config.storage)
    cfg = config.train
    plan = plan_run(config, store, train_ids, run_id, fixed_holdout)
    run = layout.head_dir(config.output, plan.run_id)
    done = store.read_json_or_none(layout.head_card(run))
    if done:
        log.info("train: %s is complete, skipping", run)
        return _result_from_card(done, run, True, time.perf_counter() - t0)
    store.check_writable(config.output)
    log.info(
        "train: run %s, %d train / %d validation rows, %s",
        plan.run_id,
        len(plan.train_ids),
        len(plan.val_ids),
        "local"
        if cfg.is_local
        else f"{cfg.num_workers} Ray worker{'s' if cfg.num_workers > 1 else ''}",
    )
    selection = None
    if cfg.search is not None and cfg.search.grid:
        t_search = time.perf_counter()
        selection = _search(config, store, plan)
        search_s = time.perf_counter() - t_search
        cfg = search.chosen_config(cfg, selection)
        config = config.model_copy(update={"train": cfg})
    if cfg.is_local:
        fit, timings = _fit_local(config, store, plan)
        mode = "local"
    else:
        fit, timings = _fit_ray(config, store, plan)
        mode = f"ray ({cfg.num_workers} worker{'s' if cfg.num_workers > 1 else ''})"
    rows_on_disk = timings.pop("rows_on_disk", False)
    state = fit.state or TrainState()
    startup = state.first_step_at - wall0 if state.first_step_at else None
    timings = {**timings, "startup_s": startup, "wall_s": time.perf_counter() - t0}
    if selection is not None:
        timings["search_s"] = search_s
    card = {
        "run_id": plan.run_id,
        "train": cfg.model_dump(mode="json"),
        "label_column": plan.label_column,
        "embeddings": {
            "manifest": plan.manifest_uri,
            "files": plan.files,
            "fingerprints": plan.fingerprints,
            "in_dims": plan.in_dims,
        },
        "data": {
            "train_rows": len(plan.train_ids),
            "val_rows": len(plan.val_ids),
            "excluded_rows": plan.excluded,
            "exclude_splits": cfg.exclude_splits,
            "ids_uri": cfg.ids_uri,
            "given_ids": train_ids is not None,
            "fixed_holdout": fixed_holdout,
            # Whether the Train workers' rows were read back from their local disks
            # (train.max_rows_in_memory) instead of held in memory.
            "rows_on_disk": rows_on_disk,
        },
        "mode": mode,
        "resumed_from": state.resumed_from,
        "stopped_early": state.stopped_early,
        "checkpoints": layout.checkpoints_dir(config.output, plan.run_id)
        if not cfg.is_local
        else None,
        "timings": timings,
        # The settings above are the ones the head was fitted with: the search's choice when a
        # search ran (its grid, trials and scores here).
        "search": selection.to_json() if selection is not None else None,
    }
    card = save_head(store, run, fit, card)
    write_latest(store, config.output, plan.run_id, card)
    return _result_from_card(card, run, False, time.perf_counter() - t0)


def main(config: Config) -> TrainResult:
    """The stage as the CLI and jobs/train.py run it."""
    return run_train(config)
