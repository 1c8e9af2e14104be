"""A trained head on storage: save, load, and apply it to a whole embeddings folder.

Layout under `{output}/heads/`:
    <run-id>/head.safetensors   weights and input-normalisation statistics (no pickle); the
                                safetensors metadata holds the head's architecture as JSON
    <run-id>/card.json          written last, the completion marker: train config, head config,
                                input fingerprints, classes, task type, metrics per epoch, counts,
                                library versions, created_at, the weights' sha256
    latest.json                 pointer to the newest completed run
    _checkpoints/<run-id>/      the train stage's checkpoints (see adapt.train)

`load_head(uri)` returns an `AppliedHead`, a callable from embeddings to projections that needs
nothing of the training code. `apply_head` writes `{dest}/<shard>.parquet` (one file per
embeddings file: id, labels, split and `projected_embedding`) through Ray Data, manifest last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from adapt import __version__ as adapt_version
from adapt import schema
from adapt.embeddings import embedding_files, fixed_size_to_numpy, read_manifest
from adapt.heads import MultiHead
from adapt.storage import Storage, basename, join
from adapt.trainer import FitResult, InputNorm, project

log = logging.getLogger("adapt.artifact")

FORMAT = "adapt.head/1"
HEAD_FILE = "head.safetensors"
CARD_FILE = "card.json"
LATEST_FILE = "latest.json"
PROJECTED = "projected_embedding"
MANIFEST = "_manifest.json"


class HeadNotFoundError(FileNotFoundError):
    """No completed head where asked; the message says what to run."""


def heads_root(output: str) -> str:
    return join(output, "heads")


def head_dir(output: str, run_id: str) -> str:
    return join(heads_root(output), run_id)


def library_versions() -> dict[str, str]:
    import pyarrow
    import safetensors

    versions = {
        "adapt": adapt_version,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }
    try:
        import ray

        versions["ray"] = ray.__version__
    except ImportError:  # loading a head needs no Ray
        pass
    return versions


# -- save / load ---------------------------------------------------------------------------------


def head_bytes(head: MultiHead, norm: InputNorm) -> bytes:
    """The head's weights and input statistics as one safetensors blob."""
    from safetensors.torch import save

    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors.update(norm.to_tensors())
    metadata = {
        "format": FORMAT,
        "head_config": json.dumps(head.to_config(), sort_keys=True),
        "input_norm": norm.kind,
    }
    return save(tensors, metadata=metadata)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob: its header is an 8-byte little-endian length
    followed by that many bytes of JSON."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def head_from_bytes(data: bytes) -> tuple[MultiHead, InputNorm, dict]:
    """Inverse of `head_bytes`: the head (eval mode, `input_norm` attached), its norm, metadata."""
    from safetensors.torch import load

    tensors = load(data)
    metadata = safetensors_metadata(data)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not an adapt head (format {metadata.get('format')!r}, want {FORMAT})")
    head = MultiHead.from_config(json.loads(metadata["head_config"]))
    state = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    head.load_state_dict(state)
    head.eval()
    norm = InputNorm.from_tensors(metadata.get("input_norm", "none"), tensors)
    head.input_norm = norm
    return head, norm, metadata


def save_head(store: Storage, uri: str, fit: FitResult, card: dict) -> dict:
    """Write `head.safetensors` then `card.json` (last: the completion marker) under `uri`.

    `card` holds what only the caller knows (config, data, timings); what the fit knows is added.
    Returns the card as written.
    """
    data = head_bytes(fit.head, fit.input_norm)
    weights = join(uri, HEAD_FILE)
    store.write_bytes(weights, data)
    card = {
        **card,
        "format": FORMAT,
        "head": fit.head.to_config(),
        "out_dim": fit.head.out_dim,
        "modalities": list(fit.head.modalities),
        "input_norm": fit.input_norm.kind,
        "classes": list(fit.classes),
        "task_type": fit.task_type,
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "history": fit.history,
        "n_train": fit.n_train,
        "n_val": fit.n_val,
        "weights": {"uri": weights, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(),
    }
    store.write_json(join(uri, CARD_FILE), card)
    return card


def write_latest(store: Storage, output: str, run_id: str, card: dict) -> str:
    uri = join(heads_root(output), LATEST_FILE)
    store.write_json(
        uri,
        {"run_id": run_id, "head": head_dir(output, run_id), "created_at": card.get("created_at")},
    )
    return uri


def resolve_head_uri(store: Storage, uri: str) -> str:
    """A run folder from: a run folder, its head.safetensors, or an output root (latest run)."""
    uri = uri.rstrip("/")
    if uri.endswith(HEAD_FILE) or uri.endswith(CARD_FILE):
        return uri.rsplit("/", 1)[0]
    if store.exists(join(uri, CARD_FILE)):
        return uri
    for pointer in (join(uri, "heads", LATEST_FILE), join(uri, LATEST_FILE)):
        latest = store.read_json_or_none(pointer)
        if latest:
            return latest["head"]
    raise HeadNotFoundError(
        f"no completed head at {uri!r} (no {CARD_FILE} there, no heads/{LATEST_FILE} under it): "
        "run `adapt train` first, or pass a heads/<run-id> folder"
    )


@dataclass
class AppliedHead:
    """A loaded head: `head(inputs) -> float32 [rows, out_dim]` from raw embeddings.

    `inputs` is a dict modality -> [rows, dim] array, or a pyarrow Table / pandas DataFrame with
    `<modality>_embedding` columns (as the extract stage writes them).
    """

    head: MultiHead
    input_norm: InputNorm
    card: dict = field(default_factory=dict)
    uri: str | None = None

    @property
    def out_dim(self) -> int:
        return self.head.out_dim

    @property
    def modalities(self) -> list[str]:
        return list(self.head.modalities)

    def __call__(self, inputs: Any, batch_size: int = 4096) -> np.ndarray:
        return project(self.head, self._arrays(inputs), batch_size)

    def _arrays(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            return inputs
        columns = {m: schema.embedding_column(m) for m in self.modalities}
        if isinstance(inputs, pa.Table):
            missing = [c for c in columns.values() if c not in inputs.column_names]
            if missing:
                raise ValueError(f"table lacks {missing}; it has {inputs.column_names}")
            nulls = {c: inputs.column(c).null_count for c in columns.values()}
            if any(nulls.values()):
                raise ValueError(
                    f"rows without an embedding {nulls}: a head needs every modality; drop them "
                    "first (apply_head writes a null projection for them)"
                )
            return {m: fixed_size_to_numpy(inputs.column(c)) for m, c in columns.items()}
        if hasattr(inputs, "columns") and hasattr(inputs, "__getitem__"):  # pandas DataFrame
            missing = [c for c in columns.values() if c not in inputs.columns]
            if missing:
                raise ValueError(f"data frame lacks {missing}; it has {list(inputs.columns)}")
            return {
                m: np.stack(inputs[c].to_numpy()).astype(np.float32) for m, c in columns.items()
            }
        raise TypeError(
            f"inputs must be a dict of arrays, a pyarrow Table or a pandas DataFrame, got "
            f"{type(inputs).__name__}"
        )


def load_head(uri: str, store: Storage | None = None) -> AppliedHead:
    """Load a completed head: a heads/<run-id> folder, its head.safetensors, or an output root."""
    store = store or Storage()
    run = resolve_head_uri(store, uri)
    card = store.read_json_or_none(join(run, CARD_FILE)) or {}
    if not card:
        raise HeadNotFoundError(f"{join(run, CARD_FILE)} is missing: the run did not complete")
    data = store.read_bytes(join(run, HEAD_FILE))
    expected = card.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{join(run, HEAD_FILE)} does not match the sha256 in its card")
    head, norm, _ = head_from_bytes(data)
    return AppliedHead(head, norm, card, run)


# -- apply: project a whole embeddings folder -----------------------------------------------------


def project_table(applied: AppliedHead, table: pa.Table) -> pa.Table:
    """id, label*, split and `projected_embedding` (null where a modality is missing)."""
    keep = [
        c
        for c in table.column_names
        if c == schema.ID or c == schema.SPLIT or c.startswith(schema.LABEL)
    ]
    out = table.select(keep)
    valid = np.ones(table.num_rows, dtype=bool)
    for m in applied.modalities:
        valid &= table.column(schema.embedding_column(m)).is_valid().to_numpy(zero_copy_only=False)
    z = np.zeros((table.num_rows, applied.out_dim), dtype=np.float32)
    if valid.any():
        z[valid] = applied(table.filter(pa.array(valid)))
    fsl = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float32()), applied.out_dim)
    column = pc.if_else(pa.array(~valid), pa.nulls(table.num_rows, fsl.type), fsl)
    return out.append_column(PROJECTED, column)


class ApplyWorker:
    """Ray Data actor: loads the head once, then projects and writes one embeddings file a call."""

    def __init__(self, store: Storage, head_uri: str, dest: str) -> None:
        self.store, self.dest = store, dest
        self.applied = load_head(head_uri, store)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for src in batch.column("file").to_pylist():
            dst = join(self.dest, basename(src))
            table = project_table(self.applied, self.store.read_parquet(src))
            self.store.write_parquet(dst, table)
            rows.append({"file": src, "projected_file": dst, "rows": table.num_rows})
        return pa.Table.from_pylist(rows)


@dataclass
class ApplyResult:
    dest: str
    manifest: str
    run_id: str
    files: int
    skipped_files: int
    rows: int
    out_dim: int
    wall_s: float

    def describe(self) -> str:
        return (
            f"apply: head {self.run_id} over {self.files} embeddings files "
            f"({self.skipped_files} already done), {self.rows} rows, {self.out_dim}-d, "
            f"in {self.wall_s:.1f} s\n"
            f"  projected: {self.dest}\n"
            f"  manifest:  {self.manifest}"
        )


def apply_head(
    store: Storage, head_uri: str, embeddings_output: str, dest: str, num_cpus: float = 1.0
) -> ApplyResult:
    """Project every committed embeddings file under `embeddings_output` into `dest`.

    One output Parquet file per input file, written whole (so an existing one is complete and is
    skipped on re-run), then `{dest}/_manifest.json` last.
    """
    import ray

    t0 = time.perf_counter()
    run = resolve_head_uri(store, head_uri)
    applied = load_head(run, store)
    manifest = read_manifest(store, embeddings_output)
    files = embedding_files(manifest)
    todo = [f for f in files if not store.exists(join(dest, basename(f)))]
    if todo:
        ds = ray.data.from_items([{"file": f} for f in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ApplyWorker,
            fn_constructor_kwargs={"store": store, "head_uri": run, "dest": dest},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=num_cpus,
        )
        ds.materialize()
    records = []
    for f in files:
        dst = join(dest, basename(f))
        meta = store.read_parquet(dst, columns=[schema.ID])
        records.append({"file": f, "projected_file": dst, "rows": meta.num_rows})
    uri = join(dest, MANIFEST)
    store.write_json(
        uri,
        {
            "complete": True,
            "head": run,
            "run_id": applied.card.get("run_id"),
            "out_dim": applied.out_dim,
            "column": PROJECTED,
            "files": records,
            "rows": sum(r["rows"] for r in records),
            "embeddings": join(embeddings_output, "embeddings"),
            "written_at": datetime.now(UTC).isoformat(),
        },
    )
    return ApplyResult(
        dest,
        uri,
        applied.card.get("run_id", basename(run)),
        len(files),
        len(files) - len(todo),
        sum(r["rows"] for r in records),
        applied.out_dim,
        time.perf_counter() - t0,
    )


def main(config) -> ApplyResult:
    """The `adapt apply` stage: the latest head (or train.run_id) over the run's embeddings."""
    from adapt.rayutil import init_ray

    store = Storage(config.storage)
    run_id = config.train.run_id
    head_uri = head_dir(config.output, run_id) if run_id else config.output
    run = resolve_head_uri(store, head_uri)
    dest = join(config.output, "projected", basename(run))
    init_ray(config.ray)
    return apply_head(store, run, config.output, dest)
