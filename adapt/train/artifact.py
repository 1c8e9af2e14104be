"""A trained head on storage: save it, find it, load it as a callable.

    heads/<run-id>/head.safetensors   weights and input-normalisation statistics (no pickle); the
                                      safetensors metadata holds the head's architecture as JSON
    heads/<run-id>/card.json          written last, the completion marker: train config, head
                                      config, input fingerprints, classes, task type, metrics per
                                      epoch, counts, library versions, created_at, weights' sha256
    heads/latest.json                 pointer to the newest completed run

`load_head(uri)` returns an `AppliedHead`, a callable from embeddings to projections that needs
nothing of the training code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from adapt import __version__ as adapt_version
from adapt import layout, schema
from adapt.embeddings import fixed_size_to_numpy
from adapt.storage import Storage, join
from adapt.train.fit import FitResult, InputNorm, project
from adapt.train.heads import MultiHead
from adapt.train.io import from_safetensors, prefixed, to_safetensors

log = logging.getLogger("adapt.train")


FORMAT = "adapt.head/1"


class HeadNotFoundError(FileNotFoundError):
    """No completed head where asked; the message says what to run."""


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
    try:  # read from the installed package, without importing Ray: a head needs none
        versions["ray"] = metadata.version("ray")
    except metadata.PackageNotFoundError:
        pass
    return versions


def head_bytes(head: MultiHead, norm: InputNorm) -> bytes:
    """The head's weights and input statistics as one safetensors blob."""
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    tensors.update(norm.to_tensors())
    metadata = {
        "format": FORMAT,
        "head_config": json.dumps(head.to_config(), sort_keys=True),
        "input_norm": norm.kind,
    }
    return to_safetensors(tensors, metadata)


def head_from_bytes(data: bytes) -> tuple[MultiHead, InputNorm, dict]:
    """Inverse of `head_bytes`: the head (eval mode, `input_norm` attached), its norm, metadata."""
    tensors, metadata = from_safetensors(data)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not an adapt head (format {metadata.get('format')!r}, want {FORMAT})")
    head = MultiHead.from_config(json.loads(metadata["head_config"]))
    head.load_state_dict(prefixed(tensors, "head."))
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
    weights = layout.head_weights(uri)
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
    store.write_json(layout.head_card(uri), card)  # last: the head is complete
    return card


def write_latest(store: Storage, output: str, run_id: str, card: dict) -> str:
    """Point heads/latest.json at the run: by its folder name, relative to heads/, so that a copied
    or moved heads/ folder points at its own copy of the run."""
    uri = layout.latest_head(output)
    store.write_json(
        uri,
        {"run_id": run_id, "path": run_id, "created_at": card.get("created_at")},
    )
    return uri


def _pointed(store: Storage, pointer: str, latest: dict) -> str:
    """The run folder a latest.json names: its `path`, relative to the pointer's folder. A pointer
    written before the path was relative names an absolute `head`: a run folder of that name
    beside the pointer wins over it (the folder was copied), then the absolute one."""
    here = pointer.rsplit("/", 1)[0]
    name = latest.get("path") or latest.get("run_id")
    if name and store.exists(layout.head_card(join(here, name))):
        return join(here, name)
    if latest.get("head") and store.exists(layout.head_card(latest["head"])):
        return latest["head"]
    raise HeadNotFoundError(
        f"{pointer} names run {name!r}, but {join(here, str(name))} holds no completed head "
        f"({layout.CARD_FILE} missing): the heads folder was copied in part, or the run removed"
    )


def resolve_head_uri(store: Storage, uri: str) -> str:
    """A run folder from: a run folder, its head.safetensors, or an output root (latest run)."""
    uri = uri.rstrip("/")
    if uri.endswith(layout.HEAD_FILE) or uri.endswith(layout.CARD_FILE):
        return uri.rsplit("/", 1)[0]
    if store.exists(layout.head_card(uri)):
        return uri
    for pointer in (layout.latest_head(uri), layout.latest_pointer(uri)):
        latest = store.read_json_or_none(pointer)
        if latest:
            return _pointed(store, pointer, latest)
    raise HeadNotFoundError(
        f"no completed head at {uri!r} (no {layout.CARD_FILE} there, no "
        f"heads/{layout.LATEST_FILE} under it): "
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


# What makes two encoders' embeddings the same space: the fingerprint less the encoder's name (a
# model folder may move), its dtype and the library versions (float32 round-off apart, the same
# vectors).
SAME_SPACE = ("modality", "weights", "preprocess", "pooling", "normalize", "dim")


class EncoderMismatchError(ValueError):
    """The embeddings come from other encoders than the head was trained on."""


def check_encoders(card: dict, fingerprints: dict | None, where: str) -> None:
    """Raise EncoderMismatchError unless each modality of the head's training embeddings came from
    the same encoder (`SAME_SPACE`) as the embeddings in `where` (its manifest's `fingerprints`).
    A head or manifest without fingerprints is not checked."""
    trained = (card.get("embeddings") or {}).get("fingerprints") or {}
    for modality in sorted(set(trained) & set(fingerprints or {})):
        a, b = trained[modality], fingerprints[modality]
        differ = [k for k in SAME_SPACE if a.get(k) != b.get(k)]
        if differ:
            raise EncoderMismatchError(
                f"head {card.get('run_id')!r} was trained on {modality} embeddings of "
                f"{a.get('encoder')!r} (weights {a.get('weights')}), but {where} holds {modality} "
                f"embeddings of {b.get('encoder')!r} (weights {b.get('weights')}); they differ in "
                f"{', '.join(differ)}. Its projections of them would be meaningless: extract with "
                "the head's encoders, or train a head on these embeddings"
            )


def load_head(
    uri: str,
    store: Storage | None = None,
    fingerprints: dict | None = None,
    where: str = "the embeddings",
) -> AppliedHead:
    """Load a completed head: a heads/<run-id> folder, its head.safetensors, or an output root.
    With `fingerprints` (an embeddings manifest's), check that they are the head's encoders'
    (`check_encoders`; `where` names those embeddings in the error)."""
    store = store or Storage()
    run = resolve_head_uri(store, uri)
    card = store.read_json_or_none(layout.head_card(run)) or {}
    if not card:
        raise HeadNotFoundError(f"{layout.head_card(run)} is missing: the run did not complete")
    check_encoders(card, fingerprints, where)
    data = store.read_bytes(layout.head_weights(run))
    expected = card.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{layout.head_weights(run)} does not match the sha256 in its card")
    head, norm, _ = head_from_bytes(data)
    return AppliedHead(head, norm, card, run)
