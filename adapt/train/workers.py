"""Train stage Ray adapter: the Ray Train worker loop and the trainer that runs it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapt import layout, schema
from adapt.config import Config, TrainConfig
from adapt.embeddings import fixed_size_to_numpy
from adapt.labels import encode_with_classes
from adapt.progress import Meter, follow, post
from adapt.rayutil import init_ray
from adapt.splits import row_keys, val_order
from adapt.storage import Storage
from adapt.train.fit import (
    FitResult,
    InputNorm,
    LocalCollective,
    PartsModel,
    Side,
    Split,
    TorchCollective,
    TrainState,
    init_skip,
    make_head,
    make_optimizer,
    make_split,
    skip_moments,
    train_epochs,
)
from adapt.train.io import (
    checkpoint_at,
    checkpoint_bytes,
    latest_checkpoint,
    load_checkpoint_bytes,
    pointed_epoch,
    save_checkpoint,
)
from adapt.train.plan import TrainPlan
from adapt.train.search import Runner, Trial, TrialData, run_trial
from adapt.train.spill import (
    KEY_SALT,
    PENDING_FILL,
    RowSpill,
    SpilledSplit,
    bucket_count,
    remove_worker_folder,
    worker_folder,
)

log = logging.getLogger("adapt.train")


def _chosen_blocks(shard, plan: TrainPlan) -> Iterator[pa.Table]:
    """The worker's rows, block by block as Ray Data delivers them, less the rows the plan does
    not train on.

    Which rows train and which validate is decided here from each row's id, label and split by
    the plan's rule (`RowRule`): the same rows the driver planned, without a list of ids shipped
    to every worker. Rows missing a modality are dropped too.
    """
    rule = plan.rule
    for t in shard.iter_batches(batch_size=None, batch_format="pyarrow"):
        keep = t.column(plan.label_column).is_valid()
        for m in plan.modalities:
            keep = pc.and_(keep, pc.is_valid(t.column(schema.embedding_column(m))))
        t = t.filter(keep)
        if not t.num_rows:
            continue
        ids = t.column(schema.ID).to_numpy(zero_copy_only=False).astype(str)
        splits = t.column(schema.SPLIT).to_pylist() if schema.SPLIT in t.column_names else None
        t = t.filter(pa.array(rule.selected(ids, splits)))
        if t.num_rows:
            yield t


def _materialize(shard, plan: TrainPlan) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A worker's share of the rows as arrays, sorted by id (the order then does not depend on how
    Ray Data delivered the blocks): features, labels, and which rows are validation rows."""
    tables = list(_chosen_blocks(shard, plan))
    if not tables:
        x = {m: np.zeros((0, d), dtype=np.float32) for m, d in plan.in_dims.items()}
        return x, encode_with_classes([], plan.task_type, plan.classes), np.zeros(0, dtype=bool)
    ids, x, y = _arrays(pa.concat_tables(tables, promote_options="permissive"), plan)
    order = np.argsort(ids, kind="stable")
    y = y[order]
    return {m: v[order] for m, v in x.items()}, y, plan.rule.validation(ids[order], y)


def _arrays(t: pa.Table, plan: TrainPlan) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """A table of chosen rows as ids, inputs per modality and encoded labels."""
    ids = t.column(schema.ID).to_numpy(zero_copy_only=False).astype(str)
    x = {m: fixed_size_to_numpy(t.column(schema.embedding_column(m))) for m in plan.modalities}
    y = encode_with_classes(t.column(plan.label_column).to_pylist(), plan.task_type, plan.classes)
    return ids, x, y


def _spill(
    shard, plan: TrainPlan, folder: str, max_rows: int, shares: tuple[float, float]
) -> tuple[RowSpill, RowSpill, dict[str, np.ndarray]]:
    """A worker's share written to local disk as it streams in (`adapt.train.spill`): the
    training and the validation rows, each in buckets of at most about `max_rows` rows for the
    expected `shares` (rows per worker), and the training rows' input moments."""
    flush = int(PENDING_FILL * max_rows)
    train = RowSpill(os.path.join(folder, "train"), bucket_count(shares[0], max_rows), flush)
    val = RowSpill(os.path.join(folder, "val"), bucket_count(shares[1], max_rows), flush)
    moments = {m: np.zeros((3, d)) for m, d in plan.in_dims.items()}
    for t in _chosen_blocks(shard, plan):
        ids, x, y = _arrays(t, plan)
        is_val = plan.rule.validation(ids, y)
        keys = row_keys(ids, plan.rule.seed + KEY_SALT)
        for side, rows in ((train, ~is_val), (val, is_val)):
            side.add(keys[rows], {m: v[rows] for m, v in x.items()}, y[rows])
        for m, part in InputNorm.moments({m: v[~is_val] for m, v in x.items()}).items():
            moments[m] += part
    train.finish()
    val.finish()
    return train, val, moments


def _shared_norm(kind: str, local: dict[str, np.ndarray], collective) -> InputNorm:
    """Input statistics over all workers' training rows from each worker's moments
    (`InputNorm.moments`): their sums add up across shards."""
    if kind != "standardize":
        return InputNorm.from_moments(kind, {})
    names = sorted(local)
    flat = collective.sum(np.concatenate([local[m].ravel() for m in names]))
    moments, at = {}, 0
    for m in names:
        size = local[m].size
        moments[m] = flat[at : at + size].reshape(local[m].shape)
        at += size
    return InputNorm.from_moments(kind, moments)


def _skip_moments(side: Split | SpilledSplit, modalities: list[str]) -> np.ndarray:
    if isinstance(side, SpilledSplit):
        return sum(skip_moments(side.bucket(b).x, modalities) for b in side.buckets())
    return skip_moments(side.x, modalities)


def _load_share(
    shard, plan: TrainPlan, cfg: TrainConfig, shares: tuple[float, float], folder: str
) -> tuple[Callable[[InputNorm], tuple[Split | SpilledSplit, Split | SpilledSplit]], list, dict]:
    """Read the worker's share: in memory, or spilled to `folder` when the expected training
    share exceeds `train.max_rows_in_memory`. Returns a function that builds the two sides
    once the normalisation is known, the local (train, validation) row counts and the local
    input moments of the training rows."""
    if cfg.max_rows_in_memory is not None and shares[0] > cfg.max_rows_in_memory:
        train, val, moments = _spill(shard, plan, folder, cfg.max_rows_in_memory, shares)
        log.info(
            "train: worker share spilled to local disk: %d training rows in %d buckets, "
            "%d validation rows in %d, %.1f MB",
            len(train),
            train.n_buckets,
            len(val),
            val.n_buckets,
            (train.bytes_written + val.bytes_written) / 1e6,
        )
        return (
            lambda norm: (SpilledSplit(train, norm), SpilledSplit(val, norm)),
            [len(train), len(val)],
            moments,
        )
    # One dataset holds both sides: the validation rows are picked out here, by the plan's rule.
    x, y, is_val = _materialize(shard, plan)
    train_x, train_y = {m: v[~is_val] for m, v in x.items()}, y[~is_val]
    order = val_order(int(is_val.sum()), cfg.seed)
    val_x, val_y = {m: v[is_val][order] for m, v in x.items()}, y[is_val][order]
    del x
    moments = InputNorm.moments(train_x) if cfg.input_norm == "standardize" else {}
    return (
        lambda norm: (make_split(train_x, train_y, norm), make_split(val_x, val_y, norm)),
        [len(train_y), len(val_y)],
        moments,
    )


def train_loop_per_worker(loop: dict) -> None:
    """One Ray Train worker: read its shard, fit with the shared core, checkpoint through Storage."""
    import ray.train
    import ray.train.torch
    import torch

    started_at = time.time()
    cfg: TrainConfig = loop["cfg"]
    plan: TrainPlan = loop["plan"]
    torch.set_num_threads(loop["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    collective = (
        TorchCollective(device if cfg.use_gpu else "cpu") if world > 1 else LocalCollective()
    )

    folder = worker_folder(plan.run_id, rank)
    try:
        shares = (loop["n_train"] / world, loop["n_val"] / world)
        sides, local, moments = _load_share(
            ray.train.get_dataset_shard("train"), plan, cfg, shares, folder
        )
        data_ready_at = time.time()
        counts = collective.sum(local)
        # Every worker must take part in every collective: decide together, fail together.
        if -collective.max(-local[0]) == 0:
            raise ValueError(
                f"a Train worker received no training rows ({int(counts[0])} rows over {world} "
                "workers): use fewer train.num_workers for this little data, or train.local: true"
            )
        norm = _shared_norm(cfg.input_norm, moments, collective)
        train, val = sides(norm)
        extra = {
            "n_train": int(counts[0]),
            "n_val": int(counts[1]),
            "worker_started_at": started_at,
            "data_ready_at": data_ready_at,
            "spilled": isinstance(train, SpilledSplit),
        }
        _fit_worker(loop, rank, collective, train, val if loop["n_val"] else None, norm, extra)
    finally:
        remove_worker_folder(folder)


def _fit_worker(
    loop: dict,
    rank: int,
    collective: TorchCollective | LocalCollective,
    train: Side,
    val: Side | None,
    norm: InputNorm,
    extra: dict,
) -> None:
    """The epochs of one Ray Train worker on its rows, from the last checkpoint if any."""
    import ray.train
    import ray.train.torch
    import torch

    cfg: TrainConfig = loop["cfg"]
    plan: TrainPlan = loop["plan"]
    store: Storage = loop["store"]
    torch.manual_seed(cfg.seed)
    head = make_head(cfg, plan.in_dims)
    if head.skip_dim:  # the skip branch's principal components, over all workers' training rows
        init_skip(head, collective.sum(_skip_moments(train, head.modalities)))
    root = layout.checkpoints_dir(plan.output, plan.run_id)
    # Rank 0 reads the pointer and every rank resumes from the epoch it names: ranks that each
    # read it could see two different checkpoints.
    pointed = pointed_epoch(store, root) if rank == 0 else None
    agreed = collective.max(-1 if pointed is None else pointed)
    data = checkpoint_at(store, root, agreed) if agreed >= 0 else None
    state = TrainState()
    model = ray.train.torch.prepare_model(PartsModel(head))
    optimizer = make_optimizer(head, cfg)
    if data is not None:
        state, _, _ = load_checkpoint_bytes(data, head, optimizer)
        state.resumed_from.append(state.epoch)
        state.first_step_at = None  # start-up is measured per attempt

    def on_epoch_end(s: TrainState) -> None:
        # No ray.train.report here: each report waits for the controller to collect the previous
        # one, which it does every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), so a report per epoch
        # costs up to 2 s an epoch. Checkpoints go through Storage; progress goes to the log.
        if rank != 0:
            return
        figures = epoch_text(s.history[-1])
        log.info("train: epoch %d: %s", s.epoch, figures)
        if loop.get("progress_key"):  # the driver's bar polls it
            post(loop["progress_key"], s.epoch, figures)
        if s.epoch % cfg.checkpoint_every_epochs == 0 and not s.done(cfg):
            save_checkpoint(
                store,
                root,
                s.epoch,
                checkpoint_bytes(head, optimizer, s, norm, extra),
                cfg.checkpoints_to_keep,
            )

    state = train_epochs(
        model, head, optimizer, train, val, cfg, state, cfg.seed, collective, on_epoch_end
    )
    if rank == 0:
        # The final checkpoint holds the weights to ship (the best epoch's under early stopping).
        extra = {**extra, "final": True, "loop_done_at": time.time()}
        save_checkpoint(
            store,
            root,
            state.epoch,
            checkpoint_bytes(head, optimizer, state, norm, extra),
            cfg.checkpoints_to_keep,
        )
    ray.train.report({"final": 1, "epoch": state.epoch, "best_epoch": state.best_epoch})


# An epoch's figures a person follows; the card's history has them all.
EPOCH_FIGURES = ("train_loss", "val_loss", "val_pair_auc")


def epoch_text(record: dict) -> str:
    """An epoch's figures for a person: `train_loss 4.847, val_loss 4.912, val_pair_auc 0.95`."""
    return ", ".join(
        f"{k} {record[k]:.4g}" for k in EPOCH_FIGURES if isinstance(record.get(k), int | float)
    )


def _fit_ray(config: Config, store: Storage, plan: TrainPlan) -> tuple[FitResult, dict]:
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = config.train
    if len(plan.train_ids) < 2 * cfg.num_workers:
        raise ValueError(
            f"{len(plan.train_ids)} training rows cannot feed {cfg.num_workers} Train workers "
            "(each needs a pair at least): lower train.num_workers, or set train.local: true"
        )
    t0 = time.perf_counter()
    init_ray(config.ray)
    t_ray = time.perf_counter()
    # Storage credentials reach Ray Data tasks and Train workers through the job's runtime
    # environment (adapt.rayutil.init_ray passes AWS_* when it starts or joins Ray), or through
    # the cluster's own (instance roles).
    paths, fs = store.parquet_source(plan.files)
    # Read tasks of one CPU each read about twice as fast as quarter-CPU ones (fewer worker
    # processes to start), but a read task that cannot be scheduled hangs the run: unless
    # train.num_cpus_per_read says, take a whole CPU only where the Train workers leave one free.
    free = ray.cluster_resources().get("CPU", 0.0) - cfg.num_workers * cfg.num_cpus_per_worker
    read_cpus = cfg.num_cpus_per_read or (1.0 if free >= 1.0 else 0.25)
    if free < read_cpus:
        log.warning(
            "train: the Train workers reserve all but %.2f of the cluster's CPUs; the "
            "Ray Data read needs %.2f and waits until some are free (autoscaling?) or "
            "hangs: lower train.num_cpus_per_worker",
            max(free, 0.0),
            read_cpus,
        )
    columns = [schema.ID, plan.label_column, *(schema.embedding_column(m) for m in plan.modalities)]
    if plan.read_split and plan.rule.ids is None and plan.rule.exclude_splits:
        columns.append(schema.SPLIT)
    # Train and validation rows travel together (one read, one split coordinator: each Ray Data
    # pipeline costs worker start-ups); each worker keeps its planned rows and tells them apart
    # by id.
    datasets = {
        "train": ray.data.read_parquet(paths, filesystem=fs, columns=columns, num_cpus=read_cpus)
    }
    threads = cfg.torch_threads or max(1, int(cfg.num_cpus_per_worker))
    resources = {"CPU": cfg.num_cpus_per_worker}
    # Ray's own run folder holds no checkpoints (ours go through Storage), only its bookkeeping:
    # a fresh local folder per attempt, removed afterwards.
    ray_dir = tempfile.mkdtemp(prefix="adapt-train-")
    meter = Meter("train", cfg.epochs, "epochs")
    progress_key = f"train/{plan.run_id}-{uuid.uuid4().hex[:8]}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "plan": plan.for_workers(),
            "n_train": len(plan.train_ids),
            "n_val": len(plan.val_ids),
            "store": store,
            "threads": threads,
            "progress_key": progress_key,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"{plan.run_id}-{uuid.uuid4().hex[:8]}",
            storage_path=ray_dir,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets=datasets,
    )
    t_fit = time.perf_counter()
    fit_wall = time.time()
    try:
        with follow(progress_key, meter):  # polls only when the meter draws
            trainer.fit()
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    t_done = time.perf_counter()

    fit, extra = _final_fit(cfg, store, plan)
    state = fit.state
    # Start-up of the Ray Train run, in phases: worker processes up, rows read, first step taken.
    timings = {
        "ray_init_s": t_ray - t0,
        "setup_s": t_fit - t_ray,
        "trainer_fit_s": t_done - t_fit,
        "worker_start_s": extra["worker_started_at"] - fit_wall,
        "data_ready_s": extra["data_ready_at"] - fit_wall,
    }
    timings["rows_on_disk"] = bool(extra.get("spilled"))
    if state.first_step_at:
        timings["first_step_s"] = state.first_step_at - fit_wall
        timings["loop_s"] = extra["loop_done_at"] - state.first_step_at
    return fit, timings


def _final_fit(cfg: TrainConfig, store: Storage, plan: TrainPlan) -> tuple[FitResult, dict]:
    """The finished run's head, read back from its final checkpoint, and that checkpoint's extra
    record (row counts, worker timings)."""
    data = latest_checkpoint(store, layout.checkpoints_dir(plan.output, plan.run_id))
    if data is None:
        raise RuntimeError(
            f"training finished without a checkpoint under "
            f"{layout.checkpoints_dir(plan.output, plan.run_id)}"
        )
    head = make_head(cfg, plan.in_dims)
    state, norm, extra = load_checkpoint_bytes(data, head, None)
    if not extra.get("final"):
        raise RuntimeError("the last checkpoint is not the final one: training did not finish")
    head.eval()
    head.input_norm = norm
    fit = FitResult(
        head,
        state.history,
        plan.classes,
        plan.task_type,
        state.best_epoch,
        extra["n_train"],
        extra["n_val"],
        norm,
        state,
    )
    return fit, extra


# -- the search's trials as Ray Tune trials ------------------------------------------------------

TUNE_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


def _tune_trainable(config: dict[str, Any], data: TrialData, threads: int) -> None:
    from ray import tune

    trial = run_trial(data, int(config["trial"]), torch_threads=threads)
    tune.report(
        {
            "score": trial.score if trial.score is not None else float("-inf"),
            "trial_json": json.dumps(asdict(trial)),
        }
    )


def _quietly(fit: Callable[[], Any]) -> Any:
    """Tune's default console output ignores `verbose=0` and points at the experiment folder,
    which is removed afterwards; its classic reporter honours it. The search logs its own summary.
    """
    previous = os.environ.get(TUNE_OUTPUT_ENV)
    os.environ[TUNE_OUTPUT_ENV] = "0"
    try:
        return fit()
    finally:
        if previous is None:
            os.environ.pop(TUNE_OUTPUT_ENV, None)
        else:
            os.environ[TUNE_OUTPUT_ENV] = previous


def run_tune(cpus_per_trial: float = 1.0) -> Runner:
    """A runner that starts every trial as a Ray Tune trial (Ray must be initialised): the data go
    to the object store once, and trials run as far in parallel as the cluster's CPUs allow.
    Trials fit on CPU: the heads are small, and a GPU per trial would sit idle."""

    def run(data: TrialData) -> list[Trial]:
        from ray import tune

        trainable = tune.with_resources(
            tune.with_parameters(_tune_trainable, data=data, threads=max(1, int(cpus_per_trial))),
            {"cpu": cpus_per_trial},
        )
        # Tune's experiment folder holds only its bookkeeping (the results come back here):
        # a fresh local folder, removed afterwards.
        with tempfile.TemporaryDirectory(prefix="adapt-search-") as tmp:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(list(range(len(data.trials))))},
                tune_config=tune.TuneConfig(metric="score", mode="max"),
                run_config=tune.RunConfig(name="search", storage_path=tmp, verbose=0),
            )
            grid = _quietly(tuner.fit)
            out: dict[int, Trial] = {}
            for result in grid:
                index = int(result.config["trial"])
                if result.error is not None or "trial_json" not in (result.metrics or {}):
                    out[index] = Trial(index, data.trials[index], error=str(result.error)[:500])
                else:
                    out[index] = Trial(**json.loads(result.metrics["trial_json"]))
        return [out[i] for i in range(len(data.trials))]

    return run
