"""The train stage: a contrastive projection head over the extracted embeddings.

Three layers, as in every stage:
- pure core: `adapt.trainer` (split, normalisation, batches, losses, the epoch loop);
- Ray adapter: `train_loop_per_worker`, run by a Ray Train `TorchTrainer` on `train.num_workers`
  workers (DDP), fed by Ray Data from the committed embeddings files; or, with `train.local`
  (or `num_workers: 0`), `fit_head` in this process with no Ray at all;
- storage: checkpoints and the head artifact, all through `Storage`.

Layout under `{output}/heads/`:
    _checkpoints/<run-id>/epoch-00004.safetensors  weights, optimiser and loop state of one epoch
    _checkpoints/<run-id>/latest.json               written after each checkpoint: which is newest
    <run-id>/head.safetensors, card.json            the result (adapt.artifact), card last
    latest.json                                     the newest completed run

The run id is derived from the training settings and the embeddings manifest (or set with
`train.run_id`), so a job submitted again resumes from its last checkpoint, and one whose card
exists returns at once. Inside a run, Ray Train's FailureConfig restarts failed workers, which
resume from the same checkpoints. A checkpoint is one object written whole; the pointer written
after it makes it visible, so a reader never picks up half a checkpoint.

Which rows train: every embedded row whose `split` is not in `train.exclude_splits` (or those in
`train.ids_uri`, or the ids a caller passes); of those, `train.val_fraction` of each class is held
out for early stopping by a hash of the row id (`trainer.holdout_mask`), decided once on the
driver so that every worker, a resumed run and the score stage agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adapt import schema, search
from adapt.artifact import (
    CARD_FILE,
    head_dir,
    heads_root,
    save_head,
    write_latest,
)
from adapt.config import Config, TrainConfig
from adapt.embeddings import (
    EmbeddingsError,
    embedding_files,
    fixed_size_to_numpy,
    load_embeddings,
    read_manifest,
)
from adapt.storage import Storage, is_remote, join
from adapt.trainer import (
    FitResult,
    InputNorm,
    LocalCollective,
    PartsModel,
    TorchCollective,
    TrainState,
    encode_with_classes,
    fit_head,
    holdout_mask,
    init_skip,
    make_head,
    make_optimizer,
    make_split,
    skip_moments,
    train_epochs,
    val_order,
)

log = logging.getLogger("adapt.train")

CHECKPOINTS = "_checkpoints"
CHECKPOINT_POINTER = "latest.json"
SEARCH_FILE = "search.json"
# Training settings that do not change the head a run produces: resources, fault tolerance and
# bookkeeping. They are left out of the derived run id, so that a run resumes on other hardware.
RUNTIME_KEYS = (
    "local",
    "num_workers",
    "use_gpu",
    "num_cpus_per_worker",
    "torch_threads",
    "checkpoint_every_epochs",
    "checkpoints_to_keep",
    "max_failures",
    "run_id",
)


# -- rows: which train, which validate -------------------------------------------------------------


@dataclass
class Plan:
    """What the driver decided before training; small and picklable, sent to every worker."""

    run_id: str
    output: str
    files: list[str]
    modalities: list[str]
    in_dims: dict[str, int]
    label_column: str
    task_type: str
    classes: list[str]
    train_ids: np.ndarray  # sorted str ids
    val_ids: np.ndarray  # sorted str ids
    fingerprints: dict = field(default_factory=dict)
    manifest_uri: str = ""
    excluded: int = 0
    y_train: np.ndarray | None = None  # encoded labels of train_ids, in their order


def read_ids(store: Storage, uri: str) -> list[str]:
    """Row ids from a JSON list or a text file with one id per line."""
    text = store.read_bytes(uri).decode()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return [str(x) for x in json.loads(stripped)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_index(store: Storage, files: list[str], label_column: str) -> pa.Table:
    """id, label and split (null where absent) of every embedded row; no embeddings are read."""
    tables = []
    for f in files:
        names = pq.read_schema(Storage.strip(f), filesystem=store.arrow_fs(f)).names
        if label_column not in names:
            have = [n for n in names if n.startswith(schema.LABEL)]
            raise ValueError(
                f"{f} has no label column {label_column!r}; it has {have}: set train.label_column"
            )
        cols = [schema.ID, label_column] + ([schema.SPLIT] if schema.SPLIT in names else [])
        t = store.read_parquet(f, columns=cols)
        if schema.SPLIT not in names:
            t = t.append_column(schema.SPLIT, pa.nulls(t.num_rows, pa.string()))
        tables.append(
            t.select([schema.ID, label_column, schema.SPLIT]).rename_columns(
                [schema.ID, "label", schema.SPLIT]
            )
        )
    return pa.concat_tables(tables, promote_options="permissive")


def derive_run_id(config: Config, manifest: dict, train_ids: np.ndarray) -> str:
    """A stable name from what decides the head: settings, embeddings and the training rows."""
    settings = config.train.model_dump(mode="json", exclude=set(RUNTIME_KEYS))
    shards = [
        (r.get("shard"), r.get("embeddings_file"), r.get("embedded"), r.get("committed_at"))
        for r in manifest.get("shards", [])
    ]
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"train": settings, "shards": shards, "fingerprints": manifest.get("fingerprints")},
            sort_keys=True,
            default=str,
        ).encode()
    )
    digest.update("\0".join(train_ids.tolist()).encode())
    name = config.train.preset or config.train.loss
    return f"{name}-{digest.hexdigest()[:12]}"


def plan_run(
    config: Config, store: Storage, train_ids: list[str] | None = None, run_id: str | None = None
) -> Plan:
    """Decide the rows, classes and run id from the manifest and the id/label/split columns."""
    cfg = config.train
    manifest = read_manifest(store, config.output)
    files = embedding_files(manifest)
    if not files:
        raise EmbeddingsError(f"the manifest under {config.output} names no embedded rows")
    modalities = sorted(manifest["schema"])
    first = pq.read_schema(Storage.strip(files[0]), filesystem=store.arrow_fs(files[0]))
    in_dims = {m: first.field(schema.embedding_column(m)).type.list_size for m in modalities}
    index = read_index(store, files, cfg.label_column)
    ids = np.array(index.column(schema.ID).to_pylist(), dtype=object)
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("row ids repeat in the embeddings: ids must be unique to split by id")
    split = index.column(schema.SPLIT).to_pylist()
    keep = np.array([s not in cfg.exclude_splits for s in split], dtype=bool)
    wanted = (
        train_ids
        if train_ids is not None
        else (read_ids(store, cfg.ids_uri) if cfg.ids_uri else None)
    )
    if wanted is not None:
        missing = set(wanted) - set(ids.tolist())
        if missing:
            raise ValueError(
                f"{len(missing)} requested training ids are not in the embeddings, "
                f"e.g. {sorted(missing)[:5]}"
            )
        keep = np.isin(ids, np.array(list(wanted), dtype=object))
    labels_all = index.column("label").to_pylist()
    keep &= np.array([x is not None for x in labels_all], dtype=bool)
    rows = np.flatnonzero(keep)
    if len(rows) < 4:
        raise ValueError(f"only {len(rows)} labelled training rows; a head needs more")
    order = rows[np.argsort(ids[rows].astype(str), kind="stable")]
    labels = [labels_all[i] for i in order]
    from adapt.scoring import encode_labels, infer_task_type  # scikit-learn: the driver only

    task_type = infer_task_type(labels)
    y, classes = encode_labels(labels, task_type)
    row_ids = ids[order].astype(str)
    is_val = holdout_mask(y, task_type, cfg.val_fraction, cfg.seed, row_ids)
    train = row_ids[~is_val]  # sorted, as row_ids are
    run_id = run_id or cfg.run_id or derive_run_id(config, manifest, train)
    return Plan(
        run_id=run_id,
        output=config.output,
        files=files,
        modalities=modalities,
        in_dims=in_dims,
        label_column=cfg.label_column,
        task_type=task_type,
        classes=list(classes),
        train_ids=train,
        val_ids=np.sort(row_ids[is_val]),
        fingerprints=manifest.get("fingerprints", {}),
        manifest_uri=join(config.output, "embeddings", "_manifest.json"),
        excluded=int(len(ids) - len(rows)),
        y_train=y[~is_val],
    )


# -- checkpoints (through Storage) -------------------------------------------------------------------


def checkpoint_root(output: str, run_id: str) -> str:
    return join(heads_root(output), CHECKPOINTS, run_id)


def checkpoint_bytes(head, optimizer, state: TrainState, norm: InputNorm, extra: dict) -> bytes:
    """One checkpoint as one safetensors blob: weights, best weights, optimiser moments, input
    statistics as tensors; the loop state and optimiser settings as JSON metadata."""
    from safetensors.torch import save

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    for k, v in (state.best_state or {}).items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for pid, moments in opt["state"].items():
        for name, value in moments.items():
            tensors[f"opt.{pid}.{name}"] = torch_tensor(value).detach().cpu().contiguous()
    tensors.update(norm.to_tensors())
    meta = {
        "state": json.dumps(state.to_json()),
        "param_groups": json.dumps(opt["param_groups"]),
        "input_norm": norm.kind,
        "extra": json.dumps(extra),
    }
    return save(tensors, metadata=meta)


def torch_tensor(value: Any):
    import torch

    return value if isinstance(value, torch.Tensor) else torch.tensor(value)


def load_checkpoint_bytes(data: bytes, head, optimizer) -> tuple[TrainState, InputNorm, dict]:
    from safetensors.torch import load

    from adapt.artifact import safetensors_metadata

    tensors = load(data)
    meta = safetensors_metadata(data)
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state = TrainState.from_json(json.loads(meta["state"]), best)
    if optimizer is not None:
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict(
            {"state": opt_state, "param_groups": json.loads(meta["param_groups"])}
        )
    norm = InputNorm.from_tensors(meta.get("input_norm", "none"), tensors)
    return state, norm, json.loads(meta.get("extra", "{}"))


def save_checkpoint(store: Storage, root: str, epoch: int, data: bytes, keep: int) -> str:
    """Write the checkpoint, then the pointer to it; drop the oldest beyond `keep`."""
    uri = join(root, f"epoch-{epoch:05d}.safetensors")
    store.write_bytes(uri, data)
    store.write_json(
        join(root, CHECKPOINT_POINTER),
        {"epoch": epoch, "checkpoint": uri, "written_at": datetime.now(UTC).isoformat()},
    )
    old = sorted(
        u
        for u in store.list_files(root, (".safetensors",), recursive=False)
        if re.search(r"epoch-\d+\.safetensors$", u)
    )
    for u in old[:-keep]:
        store.delete(u)
    return uri


def latest_checkpoint(store: Storage, root: str) -> bytes | None:
    pointer = store.read_json_or_none(join(root, CHECKPOINT_POINTER))
    if not pointer:
        return None
    return store.read_bytes(pointer["checkpoint"])


# -- Ray adapter ------------------------------------------------------------------------------------


def _materialize(shard, plan: Plan) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A worker's share of the rows as arrays, sorted by id (the order then does not depend on how
    Ray Data delivered the blocks): features, labels, and which rows are validation rows.

    Rows outside the plan (an excluded split, ids not asked for) and rows missing a modality are
    dropped here rather than by a filter in the read: an `is_in` over every training id, evaluated
    for every block, doubled the read time.
    """
    from adapt.embeddings import fixed_size_to_numpy

    wanted = pa.array(np.concatenate([plan.train_ids, plan.val_ids]), pa.string())
    tables = []
    for t in shard.iter_batches(batch_size=None, batch_format="pyarrow"):
        keep = pc.is_in(t.column(schema.ID), value_set=wanted)
        for m in plan.modalities:
            keep = pc.and_(keep, pc.is_valid(t.column(schema.embedding_column(m))))
        t = t.filter(keep)
        if t.num_rows:
            tables.append(t)
    if not tables:
        x = {m: np.zeros((0, d), dtype=np.float32) for m, d in plan.in_dims.items()}
        return x, encode_with_classes([], plan.task_type, plan.classes), np.zeros(0, dtype=bool)
    table = pa.concat_tables(tables, promote_options="permissive")
    ids = np.array(table.column(schema.ID).to_pylist(), dtype=str)
    order = np.argsort(ids, kind="stable")
    x = {
        m: fixed_size_to_numpy(table.column(schema.embedding_column(m)))[order]
        for m in plan.modalities
    }
    labels = table.column(plan.label_column).to_pylist()
    y = encode_with_classes([labels[i] for i in order], plan.task_type, plan.classes)
    return x, y, np.isin(ids[order], plan.val_ids)


def train_loop_per_worker(loop: dict) -> None:
    """One Ray Train worker: read its shard, fit with the shared core, checkpoint through Storage."""
    import ray.train
    import ray.train.torch
    import torch

    started_at = time.time()
    cfg: TrainConfig = loop["cfg"]
    plan: Plan = loop["plan"]
    store: Storage = loop["store"]
    torch.set_num_threads(loop["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    collective = (
        TorchCollective(device if cfg.use_gpu else "cpu") if world > 1 else LocalCollective()
    )

    # One dataset holds both sides: the validation rows are picked out here by id.
    x, y, is_val = _materialize(ray.train.get_dataset_shard("train"), plan)
    train_x, train_y = {m: v[~is_val] for m, v in x.items()}, y[~is_val]
    order = val_order(int(is_val.sum()), cfg.seed)
    val_x, val_y = {m: v[is_val][order] for m, v in x.items()}, y[is_val][order]
    del x
    data_ready_at = time.time()
    counts = collective.sum([len(train_y), len(val_y)])
    # Every worker must take part in every collective: decide together, fail together.
    if -collective.max(-len(train_y)) == 0:
        raise ValueError(
            f"a Train worker received no training rows ({int(counts[0])} rows over {world} "
            "workers): use fewer train.num_workers for this little data, or train.local: true"
        )

    # Input statistics over all workers' training rows: sums add up across shards.
    names = sorted(train_x)
    if cfg.input_norm == "standardize":
        local = InputNorm.moments(train_x)
        flat = collective.sum(np.concatenate([local[m].ravel() for m in names]))
        moments, at = {}, 0
        for m in names:
            size = local[m].size
            moments[m] = flat[at : at + size].reshape(local[m].shape)
            at += size
        norm = InputNorm.from_moments(cfg.input_norm, moments)
    else:
        norm = InputNorm.from_moments(cfg.input_norm, {})
    train = make_split(train_x, train_y, norm)
    val = make_split(val_x, val_y, norm) if len(plan.val_ids) else None

    torch.manual_seed(cfg.seed)
    head = make_head(cfg, plan.in_dims)
    if head.skip_dim:  # the skip branch's principal components, over all workers' training rows
        init_skip(head, collective.sum(skip_moments(train.x, head.modalities)))
    root = checkpoint_root(plan.output, plan.run_id)
    data = latest_checkpoint(store, root)
    state = TrainState()
    model = ray.train.torch.prepare_model(PartsModel(head))
    optimizer = make_optimizer(head, cfg)
    if data is not None:
        state, _, _ = load_checkpoint_bytes(data, head, optimizer)
        state.resumed_from.append(state.epoch)
        state.first_step_at = None  # start-up is measured per attempt
    extra = {
        "n_train": int(counts[0]),
        "n_val": int(counts[1]),
        "worker_started_at": started_at,
        "data_ready_at": data_ready_at,
    }

    def on_epoch_end(s: TrainState) -> None:
        # No ray.train.report here: each report waits for the controller to collect the previous
        # one, which it does every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), so a report per epoch
        # costs up to 2 s an epoch. Checkpoints go through Storage; progress goes to the log.
        if rank != 0:
            return
        log.info(
            "train: epoch %d %s",
            s.epoch,
            {k: v for k, v in s.history[-1].items() if k != "epoch" and v is not None},
        )
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


def _fit_ray(config: Config, store: Storage, plan: Plan) -> tuple[FitResult, dict]:
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from adapt.rayutil import init_ray

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
    # the cluster's own (instance roles). Local paths are read by Arrow's own filesystem, s3://
    # ones through Storage's (same endpoint and options).
    fs = store.arrow_fs(plan.files[0]) if is_remote(plan.files[0]) else None
    paths = [Storage.strip(f) for f in plan.files]
    # Read tasks of one CPU each read about twice as fast as quarter-CPU ones (fewer worker
    # processes to start), but a read task that cannot be scheduled hangs the run: take a whole
    # CPU only where the Train workers leave one free.
    free = ray.cluster_resources().get("CPU", 0.0) - cfg.num_workers * cfg.num_cpus_per_worker
    read_cpus = 1.0 if free >= 1.0 else 0.25
    if free < read_cpus:
        log.warning(
            "train: the Train workers reserve all but %.2f of the cluster's CPUs; the "
            "Ray Data read needs %.2f and waits until some are free (autoscaling?) or "
            "hangs: lower train.num_cpus_per_worker",
            max(free, 0.0),
            read_cpus,
        )
    columns = [schema.ID, plan.label_column, *(schema.embedding_column(m) for m in plan.modalities)]
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
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "plan": plan, "store": store, "threads": threads},
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
        trainer.fit()
    finally:
        import shutil

        shutil.rmtree(ray_dir, ignore_errors=True)
    t_done = time.perf_counter()

    data = latest_checkpoint(store, checkpoint_root(plan.output, plan.run_id))
    if data is None:
        raise RuntimeError(
            f"training finished without a checkpoint under "
            f"{checkpoint_root(plan.output, plan.run_id)}"
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
    # Start-up of the Ray Train run, in phases: worker processes up, rows read, first step taken.
    timings = {
        "ray_init_s": t_ray - t0,
        "setup_s": t_fit - t_ray,
        "trainer_fit_s": t_done - t_fit,
        "worker_start_s": extra["worker_started_at"] - fit_wall,
        "data_ready_s": extra["data_ready_at"] - fit_wall,
    }
    if state.first_step_at:
        timings["first_step_s"] = state.first_step_at - fit_wall
        timings["loop_s"] = extra["loop_done_at"] - state.first_step_at
    return fit, timings


def _search_rows(
    store: Storage, plan: Plan, cfg: TrainConfig
) -> tuple[dict[str, np.ndarray], list, list[str]]:
    """The training rows the search uses (at most `search.max_rows`, `search.sample_rows`), read
    file by file and filtered by id, so that the driver never holds more than one file beyond
    them: the whole corpus's embeddings need not fit in its memory."""
    train_ids = plan.train_ids.tolist()
    rows = search.sample_rows(plan.y_train, plan.task_type, cfg.search, cfg.seed, train_ids)
    wanted = pa.array([train_ids[i] for i in rows], pa.string())
    columns = [schema.ID, plan.label_column, *(schema.embedding_column(m) for m in plan.modalities)]
    parts = []
    for f in plan.files:
        table = store.read_parquet(f, columns=columns)
        parts.append(table.filter(pc.is_in(table.column(schema.ID), value_set=wanted)))
    table = pa.concat_tables(parts, promote_options="permissive")
    for m in plan.modalities:  # rows missing a modality cannot train a head
        table = table.filter(table.column(schema.embedding_column(m)).is_valid())
    table = table.take(pc.sort_indices(table, sort_keys=[(schema.ID, "ascending")]))
    inputs = {
        m: fixed_size_to_numpy(table.column(schema.embedding_column(m))) for m in plan.modalities
    }
    return inputs, table.column(plan.label_column).to_pylist(), table.column(schema.ID).to_pylist()


def search_path(output: str, run_id: str) -> str:
    return join(checkpoint_root(output, run_id), SEARCH_FILE)


def _search(config: Config, store: Storage, plan: Plan) -> search.Selection:
    """Select the head's settings on the planned training rows (`adapt.search`), as Ray Tune
    trials on the cluster, or in this process for a local run. The choice is saved next to the
    run's checkpoints, so that a resumed run fits the same settings without searching again."""
    cfg = config.train
    uri = search_path(plan.output, plan.run_id)
    saved = store.read_json_or_none(uri)
    if saved is not None:
        log.info("train: search already done for run %s: %s", plan.run_id, saved["overrides"])
        return search.Selection.from_json(saved)
    inputs, labels, ids = _search_rows(store, plan, cfg)
    if cfg.is_local:
        runner = search.run_local
    else:
        from adapt.rayutil import init_ray

        init_ray(config.ray)
        runner = search.run_tune(cfg.search.cpus_per_trial)
    selection = search.select(inputs, labels, cfg, ids=ids, runner=runner)
    log.info("train: %s", selection.describe())
    store.write_json(uri, selection.to_json())
    return selection


def _fit_local(config: Config, store: Storage, plan: Plan) -> tuple[FitResult, dict]:
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


# -- the stage ----------------------------------------------------------------------------------------


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
        card=join(run, CARD_FILE),
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
) -> TrainResult:
    """Train (or resume, or find complete) the head the config describes; return where it went.

    `train_ids` fits on exactly those rows (the score stage passes its own training rows); the
    validation share is then held out of them. `run_id` names the run (default: derived).
    """
    t0 = time.perf_counter()
    wall0 = time.time()
    store = store or Storage(config.storage)
    cfg = config.train
    plan = plan_run(config, store, train_ids, run_id)
    run = head_dir(config.output, plan.run_id)
    done = store.read_json_or_none(join(run, CARD_FILE))
    if done:
        log.info("train: %s is complete, skipping", run)
        return _result_from_card(done, run, True, time.perf_counter() - t0)
    store.check_writable(config.output)
    log.info(
        "train: run %s, %d train / %d validation rows, %s",
        plan.run_id,
        len(plan.train_ids),
        len(plan.val_ids),
        "local" if cfg.is_local else f"{cfg.num_workers} Ray workers",
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
        },
        "mode": mode,
        "resumed_from": state.resumed_from,
        "stopped_early": state.stopped_early,
        "checkpoints": checkpoint_root(config.output, plan.run_id) if not cfg.is_local else None,
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
