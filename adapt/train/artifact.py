"""A trained head on storage: save it, find it, load it as a callable.

    heads/<run-id>/head.safetensors   weights and input-normalisation statistics (no pickle); the
                                      safetensors metadata holds the head's architecture as JSON
    heads/<run-id>/card.json          written last, the completion marker: train config, head
                                      config, input fingerprints, classes, task type, metrics per
                                      epoch, counts, library versions, created_at, weights' sha256
    heads/latest.json                 pointer to the newest completed run

`load_head(uri)` returns an `AppliedHead`, a callable from embeddings to projections that needs
nothing of the training code. A head also travels through the Hugging Face Hub: `save_pretrained`
writes the same two files (and a model card) to a folder, `push_to_hub` uploads them, and
`AppliedHead.from_pretrained` or `load_head("hf://ORG/NAME[@REVISION]")` loads them back.
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
from huggingface_hub import ModelHubMixin

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


def weights_record(uri: str, data: bytes) -> dict:
    """The card's record of the head's weights file: where, how many bytes, their sha256."""
    return {"uri": uri, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


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
        "weights": weights_record(weights, data),
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
    """A run folder from: a run folder, its head.safetensors, an output root (latest run), or a
    hub repository (hf://ORG/NAME[@REVISION], its local download)."""
    uri = local_head_uri(uri).rstrip("/")
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


HUB_SCHEME = "hf://"
HUB_FILES = [layout.HEAD_FILE, layout.CARD_FILE, "config.json", "README.md"]
MODEL_CARD = """---
{{ card_data }}
---

# {{ title }}

A projection head trained by adapt on frozen embeddings (arXiv 2502.02048: a small nonlinear
projection trained with a contrastive objective over labels). It maps the embeddings of the
encoders below to {{ out_dim }}-d vectors in which rows of the same class lie together; fit any
classifier on them.

| modality | encoder | weights | dim |
| --- | --- | --- | --- |
{% for m in encoders -%}
| {{ m.modality }} | `{{ m.encoder }}` | `{{ m.weights }}` | {{ m.dim }} |
{% endfor %}
Classes ({{ classes | length }}): {{ classes[:20] | join(", ") }}{% if classes | length > 20 %}, ...{% endif %}.
Trained on {{ n_train }} rows ({{ n_val }} for validation), best epoch {{ best_epoch }}.

## Use

```python
import adapt

head = adapt.load_head("hf://{{ repo_id }}")
z = head({ {%- for m in modalities %}"{{ m }}": {{ m }}_embeddings{% if not loop.last %}, {% endif %}{% endfor -%} })  # [rows, {{ out_dim }}]
```

The embeddings must come from the encoders above (`load_head` with an embeddings manifest's
fingerprints checks it). `card.json` holds the training configuration, the per-epoch metrics and
the fingerprints in full.
"""


@dataclass
class AppliedHead(
    ModelHubMixin,
    library_name="adapt",
    tags=["adapt", "embedding-projection", "contrastive"],
    model_card_template=MODEL_CARD,
):
    """A loaded head: `head(inputs) -> float32 [rows, out_dim]` from raw embeddings.

    `inputs` is a dict modality -> [rows, dim] array, or a pyarrow Table / pandas DataFrame with
    `<modality>_embedding` columns (as the extract stage writes them).

    Through `huggingface_hub.ModelHubMixin` it saves to a folder (`save_pretrained`), uploads
    (`push_to_hub`, with a token) and loads from a folder or hub repository (`from_pretrained`);
    the folder holds what a heads/<run-id> folder holds, plus a model card.
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

    # -- the Hugging Face Hub --------------------------------------------------------------------

    def _save_pretrained(self, save_directory) -> None:
        folder = str(save_directory)
        data = head_bytes(self.head, self.input_norm)
        store = Storage()
        store.write_bytes(layout.head_weights(folder), data)
        card = {**self.card}
        # The file beside the card, wherever the folder goes.
        card["weights"] = {**card.get("weights", {}), **weights_record(layout.HEAD_FILE, data)}
        store.write_json(layout.head_card(folder), card)
        # The hub's config.json: a summary, so the hub's widgets and search can read the head.
        store.write_json(
            join(folder, "config.json"),
            {
                "format": FORMAT,
                "run_id": card.get("run_id"),
                "out_dim": self.out_dim,
                "head_modalities": self.modalities,
                "n_classes": len(card.get("classes") or []),
                "head_encoders": {m: fp.get("encoder") for m, fp in self._fingerprints().items()},
            },
        )

    def _fingerprints(self) -> dict:
        return (self.card.get("embeddings") or {}).get("fingerprints") or {}

    def generate_model_card(self, *args, **kwargs):
        encoders = [
            {
                "modality": m,
                "encoder": fp.get("encoder"),
                "weights": fp.get("weights"),
                "dim": fp.get("dim"),
            }
            for m, fp in sorted(self._fingerprints().items())
        ]
        fields = {
            "title": f"adapt head {self.card.get('run_id') or ''}".strip(),
            "out_dim": self.out_dim,
            "encoders": encoders,
            "classes": [str(c) for c in self.card.get("classes") or []],
            "n_train": self.card.get("n_train"),
            "n_val": self.card.get("n_val"),
            "best_epoch": self.card.get("best_epoch"),
            "modalities": self.modalities,
            "repo_id": kwargs.pop("repo_id", None) or "ORG/NAME",
        }
        return super().generate_model_card(*args, **{**fields, **kwargs})

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the head to the hub repository `repo_id` (needs a token with write access);
        its model card names the repository in its loading example."""
        kwargs["model_card_kwargs"] = {
            "repo_id": repo_id,
            **(kwargs.get("model_card_kwargs") or {}),
        }
        return super().push_to_hub(repo_id, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir,
        force_download: bool,
        local_files_only: bool,
        token,
        **model_kwargs,
    ) -> AppliedHead:
        folder = hub_folder(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        return load_head(folder, fingerprints=model_kwargs.get("fingerprints"))

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


def hub_folder(model_id: str, revision: str | None = None, **download) -> str:
    """A local folder holding the head of a folder path or a hub repository id (downloaded into
    the Hugging Face cache once; offline, HF_HUB_OFFLINE=1, from the cache only)."""
    import os

    if os.path.isdir(model_id):
        return model_id
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id=model_id, revision=revision, allow_patterns=HUB_FILES, **download
        )
    except Exception as e:
        raise HeadNotFoundError(
            f"no head at hub repository {model_id!r}"
            + (f" revision {revision!r}" if revision else "")
            + f": {type(e).__name__}: {e}"
        ) from e


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """hf://ORG/NAME[@REVISION] -> (ORG/NAME, REVISION)."""
    rest = uri[len(HUB_SCHEME) :].strip("/")
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{uri!r}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return repo, revision or None


def is_hub_uri(uri) -> bool:
    return isinstance(uri, str) and uri.startswith(HUB_SCHEME)


def hub_folder_name(uri: str) -> str:
    """A folder name for what is made from a hub head: hf--ORG--NAME[@REVISION]."""
    repo, revision = parse_hub_uri(uri)
    return "hf--" + repo.replace("/", "--") + (f"@{revision}" if revision else "")


def local_head_uri(uri: str) -> str:
    """`uri` itself, or for hf://ORG/NAME[@REVISION] the local folder it downloads to."""
    if is_hub_uri(uri):
        repo, revision = parse_hub_uri(uri)
        return hub_folder(repo, revision=revision)
    return uri


def load_head(
    uri: str,
    store: Storage | None = None,
    fingerprints: dict | None = None,
    where: str = "the embeddings",
) -> AppliedHead:
    """Load a completed head: a heads/<run-id> folder, its head.safetensors, an output root, a
    `save_pretrained` folder or a hub repository (`hf://ORG/NAME[@REVISION]`).
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
