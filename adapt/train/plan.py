"""Which rows train a head and which stop it early, decided once on the driver."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
from adapt.splits import fixed_holdout_mask, holdout_thresholds, row_keys, under_thresholds
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
class RowRule:
    """Which rows train a run and which of them stop it early, decided from each row's own id,
    label and split: what Train workers get instead of lists of ids.

    A row trains when its label is set, its split is not in `exclude_splits` (or, with `ids`, it
    is one of them), and it is not in the nightly comparison's fixed hold-out (`fixed_holdout`).
    Of those, it is a validation row when its key (`splits.row_keys` with `seed`) is at most its
    class's threshold (`splits.holdout_thresholds`): the same rows `splits.holdout_mask` picks
    on the driver, found by each worker from its own rows alone.
    """

    exclude_splits: list[str]
    seed: int
    multilabel: bool
    val_thresholds: list[int | None]  # per class id (multi-label: one)
    fixed_holdout: float | None = None
    ids: np.ndarray | None = None  # sorted str; given ids, or where some files lack a split

    def selected(self, ids: np.ndarray, splits: Sequence[Any] | None) -> np.ndarray:
        """Rows chosen by ids, split and the fixed hold-out (labels are checked apart)."""
        if self.ids is not None:
            keep = pc.is_in(pa.array(ids, pa.string()), value_set=pa.array(self.ids, pa.string()))
            keep = keep.to_numpy(zero_copy_only=False)
        elif splits is None or not self.exclude_splits:
            keep = np.ones(len(ids), dtype=bool)
        else:
            keep = np.array([s not in self.exclude_splits for s in splits], dtype=bool)
        if self.fixed_holdout:
            keep &= ~fixed_holdout_mask(ids, self.fixed_holdout)
        return keep

    def validation(self, ids: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which of these chosen rows (class ids or multi-hot `y`) are validation rows."""
        return under_thresholds(y, row_keys(ids, self.seed), self.val_thresholds, self.multilabel)


@dataclass
class TrainPlan:
    """What the driver decided before training. Workers get `for_workers()`: the rule, not the
    id lists."""

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
    rule: RowRule
    fingerprints: dict = field(default_factory=dict)
    manifest_uri: str = ""
    excluded: int = 0
    y_train: np.ndarray | None = None  # encoded labels of train_ids, in their order
    read_split: bool = False  # workers read the split column (every file has one)

    def for_workers(self) -> TrainPlan:
        """This plan without the driver's id lists: a few hundred bytes, whatever the rows."""
        empty = np.zeros(0, dtype=str)
        return replace(self, train_ids=empty, val_ids=empty, y_train=None)


def read_ids(store: Storage, uri: str) -> list[str]:
    """Row ids from a JSON list or a text file with one id per line."""
    text = store.read_bytes(uri).decode()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return [str(x) for x in json.loads(stripped)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_index(store: Storage, files: list[str], label_column: str) -> tuple[pa.Table, bool]:
    """id, label and split (null where absent) of every embedded row; no embeddings are read.
    Also whether every file has a split column."""
    tables = []
    every_split = True
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
            every_split = False
            t = t.append_column(schema.SPLIT, pa.nulls(t.num_rows, pa.string()))
        tables.append(
            t.select([schema.ID, label_column, schema.SPLIT]).rename_columns(
                [schema.ID, "label", schema.SPLIT]
            )
        )
    return pa.concat_tables(tables, promote_options="permissive"), every_split


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
    config: Config,
    store: Storage,
    train_ids: list[str] | None = None,
    run_id: str | None = None,
    fixed_holdout: float | None = None,
) -> TrainPlan:
    """Decide the rows, classes and run id from the manifest and the id/label/split columns.

    `train_ids`: fit on exactly these rows (they replace `train.exclude_splits`). `fixed_holdout`:
    leave out the nightly comparison's held-out rows (`splits.fixed_holdout_mask`).
    """
    cfg = config.train
    manifest = read_manifest(store, config.output)
    files = embedding_files(manifest)
    if not files:
        raise EmbeddingsError(f"the manifest under {config.output} names no embedded rows")
    modalities = sorted(manifest["schema"])
    first = store.read_schema(files[0])
    in_dims = {m: first.field(schema.embedding_column(m)).type.list_size for m in modalities}
    index, every_split = read_index(store, files, cfg.label_column)
    id_column = index.column(schema.ID)
    if pc.count_distinct(id_column).as_py() != len(index):
        raise ValueError("row ids repeat in the embeddings: ids must be unique to split by id")
    ids = id_column.to_numpy(zero_copy_only=False).astype(str)
    wanted = (
        train_ids
        if train_ids is not None
        else (read_ids(store, cfg.ids_uri) if cfg.ids_uri else None)
    )
    given = None
    if wanted is not None:
        wanted = pa.array(list(wanted), pa.string())
        found = pc.is_in(wanted, value_set=id_column)
        if not pc.all(found).as_py():
            missing = wanted.filter(pc.invert(found)).to_pylist()
            raise ValueError(
                f"{len(missing)} requested training ids are not in the embeddings, "
                f"e.g. {sorted(missing)[:5]}"
            )
        given = np.sort(wanted.to_numpy(zero_copy_only=False).astype(str))
    elif cfg.exclude_splits and not every_split and pc.any(index.column(schema.SPLIT).is_valid()):
        # Some files say a split and some do not: workers could not read one column from all of
        # them, so this run's rows go to them by id (rare: one extract writes one schema).
        split = index.column(schema.SPLIT).to_pylist()
        given = np.sort(ids[[s not in cfg.exclude_splits for s in split]])
    rule = RowRule(list(cfg.exclude_splits), cfg.seed, False, [], fixed_holdout, given)
    keep = rule.selected(ids, index.column(schema.SPLIT).to_pylist())
    keep &= index.column("label").is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(keep)
    if len(rows) < 4:
        raise ValueError(f"only {len(rows)} labelled training rows; a head needs more")
    order = rows[np.argsort(ids[rows], kind="stable")]
    labels = index.column("label").take(pa.array(order)).to_pylist()
    task_type = infer_task_type(labels)
    y, classes = encode_labels(labels, task_type)
    row_ids = ids[order]
    keys = row_keys(row_ids, cfg.seed)
    is_val, thresholds = holdout_thresholds(y, task_type, cfg.early_stopping_fraction, keys)
    multilabel = task_type == "multilabel"
    if not multilabel:
        thresholds += [None] * (len(classes) - len(thresholds))
    rule = replace(rule, multilabel=multilabel, val_thresholds=thresholds)
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
        rule=rule,
        fingerprints=manifest.get("fingerprints", {}),
        manifest_uri=layout.manifest(config.output),
        excluded=int(len(ids) - len(rows)),
        y_train=y[~is_val],
        read_split=every_split,
    )
