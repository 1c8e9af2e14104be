"""Which rows train a head and which stop it early, decided once on the driver."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapt import layout, schema
from adapt.config import Config
from adapt.embeddings import (
    EmbeddingsError,
    embedding_files,
    read_manifest,
)
from adapt.labels import encode_labels, infer_task_type
from adapt.splits import holdout_mask
from adapt.storage import Storage

# Training settings that do not change the head a run produces: resources, fault tolerance and
# bookkeeping. They are left out of the derived run id, so that a run resumes on other hardware.
RUNTIME_KEYS = (
    "local",
    "num_workers",
    "use_gpu",
    "num_cpus_per_worker",
    "torch_threads",
    "num_cpus_per_read",
    "checkpoint_every_epochs",
    "checkpoints_to_keep",
    "max_failures",
    "run_id",
)


@dataclass
class TrainPlan:
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
        names = store.read_schema(f).names
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
) -> TrainPlan:
    """Decide the rows, classes and run id from the manifest and the id/label/split columns."""
    cfg = config.train
    manifest = read_manifest(store, config.output)
    files = embedding_files(manifest)
    if not files:
        raise EmbeddingsError(f"the manifest under {config.output} names no embedded rows")
    modalities = sorted(manifest["schema"])
    first = store.read_schema(files[0])
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
        wanted = pa.array(list(wanted), pa.string())
        found = pc.is_in(wanted, value_set=index.column(schema.ID))
        if not pc.all(found).as_py():
            missing = wanted.filter(pc.invert(found)).to_pylist()
            raise ValueError(
                f"{len(missing)} requested training ids are not in the embeddings, "
                f"e.g. {sorted(missing)[:5]}"
            )
        # A hash lookup: numpy's isin compares object arrays element by element against every
        # wanted id (n x m), which took four minutes for 100,000 rows.
        keep = pc.is_in(index.column(schema.ID), value_set=wanted).to_numpy(zero_copy_only=False)
    labels_all = index.column("label").to_pylist()
    keep &= np.array([x is not None for x in labels_all], dtype=bool)
    rows = np.flatnonzero(keep)
    if len(rows) < 4:
        raise ValueError(f"only {len(rows)} labelled training rows; a head needs more")
    order = rows[np.argsort(ids[rows].astype(str), kind="stable")]
    labels = [labels_all[i] for i in order]
    task_type = infer_task_type(labels)
    y, classes = encode_labels(labels, task_type)
    row_ids = ids[order].astype(str)
    is_val = holdout_mask(y, task_type, cfg.early_stopping_fraction, cfg.seed, row_ids)
    train = row_ids[~is_val]  # sorted, as row_ids are
    run_id = run_id or cfg.run_id or derive_run_id(config, manifest, train)
    return TrainPlan(
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
        manifest_uri=layout.manifest(config.output),
        excluded=int(len(ids) - len(rows)),
        y_train=y[~is_val],
    )
