"""Train stage storage: checkpoints, and the rows the search reads.

A checkpoint and a head artifact are both one safetensors blob (`to_safetensors` /
`from_safetensors`: tensors plus string metadata, no pickle). A checkpoint is written whole, then
the pointer to it (`layout.checkpoint_pointer`), so a reader never picks up half of one.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapt import layout, schema
from adapt.config import TrainConfig
from adapt.embeddings import fixed_size_to_numpy
from adapt.storage import Storage
from adapt.train import search
from adapt.train.fit import InputNorm, TrainState
from adapt.train.plan import TrainPlan

# -- the safetensors codec -------------------------------------------------------------------------


def to_safetensors(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """Tensors (detached, on the CPU, contiguous) and string metadata as one safetensors blob."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob: its header is an 8-byte little-endian length
    followed by that many bytes of JSON."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def from_safetensors(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """Inverse of `to_safetensors`: (tensors, metadata)."""
    from safetensors.torch import load

    return load(data), safetensors_metadata(data)


def prefixed(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The tensors whose names start with `prefix`, with the prefix taken off."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# -- checkpoints ----------------------------------------------------------------------------------


def checkpoint_bytes(head, optimizer, state: TrainState, norm: InputNorm, extra: dict) -> bytes:
    """One checkpoint as one safetensors blob: weights, best weights, optimiser moments, input
    statistics as tensors; the loop state and optimiser settings as JSON metadata."""
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    for k, v in (state.best_state or {}).items():
        tensors[f"best.{k}"] = v
    opt = optimizer.state_dict()
    for pid, moments in opt["state"].items():
        for name, value in moments.items():
            tensors[f"opt.{pid}.{name}"] = torch_tensor(value)
    tensors.update(norm.to_tensors())
    meta = {
        "state": json.dumps(state.to_json()),
        "param_groups": json.dumps(opt["param_groups"]),
        "input_norm": norm.kind,
        "extra": json.dumps(extra),
    }
    return to_safetensors(tensors, meta)


def torch_tensor(value: Any):
    import torch

    return value if isinstance(value, torch.Tensor) else torch.tensor(value)


def load_checkpoint_bytes(data: bytes, head, optimizer) -> tuple[TrainState, InputNorm, dict]:
    tensors, meta = from_safetensors(data)
    head.load_state_dict(prefixed(tensors, "head."))
    best = prefixed(tensors, "best.") or None
    state = TrainState.from_json(json.loads(meta["state"]), best)
    if optimizer is not None:
        opt_state: dict[int, dict] = {}
        for k, v in prefixed(tensors, "opt.").items():
            pid, name = k.split(".", 1)
            opt_state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict(
            {"state": opt_state, "param_groups": json.loads(meta["param_groups"])}
        )
    norm = InputNorm.from_tensors(meta.get("input_norm", "none"), tensors)
    return state, norm, json.loads(meta.get("extra", "{}"))


def save_checkpoint(store: Storage, root: str, epoch: int, data: bytes, keep: int) -> str:
    """Write the checkpoint, then the pointer to it; drop the oldest beyond `keep`."""
    uri = layout.checkpoint_file(root, epoch)
    store.write_bytes(uri, data)
    store.write_json(
        layout.checkpoint_pointer(root),
        {"epoch": epoch, "checkpoint": uri, "written_at": datetime.now(UTC).isoformat()},
    )
    old = sorted(
        u
        for u in store.list_files(root, (".safetensors",), recursive=False)
        if re.search(r"epoch-\d+\.safetensors$", u)
    )
    for u in old[:-keep]:
        if u != uri:  # never the one the pointer now names, whatever the names sort like
            store.delete(u)
    return uri


def pointed_epoch(store: Storage, root: str) -> int | None:
    """The epoch of the checkpoint the pointer names, or None before the first checkpoint."""
    pointer = store.read_json_or_none(layout.checkpoint_pointer(root))
    return int(pointer["epoch"]) if pointer else None


def checkpoint_at(store: Storage, root: str, epoch: int) -> bytes:
    return store.read_bytes(layout.checkpoint_file(root, epoch))


def latest_checkpoint(store: Storage, root: str) -> bytes | None:
    epoch = pointed_epoch(store, root)
    return None if epoch is None else checkpoint_at(store, root, epoch)


# -- the search's rows ------------------------------------------------------------------------------


def search_rows(
    store: Storage, plan: TrainPlan, cfg: TrainConfig
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
