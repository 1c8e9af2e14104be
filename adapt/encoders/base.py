"""What every encoder shares: device and dtype choice, output normalisation, fingerprints.

An encoder is a frozen model behind three pure calls: `prep.prepare(items)` (decoded PIL images or
strings -> one ready array per row, host-side, no model: `adapt.encoders.prep`), `collate(rows)`
(-> a batch of model inputs on the encoder's device) and `forward(inputs)` (-> float32 numpy
[B, dim]). Extract runs the first in its decode stage and the other two in its encoder actors. Its fingerprint says
exactly what produced an embedding: name, weights hash, preprocessing, pooling, dtype and library
versions. Two runs with equal fingerprints produce comparable embeddings; any change makes a new one.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import time
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np
import torch

from adapt.encoders.prep import pad_rows

# Forwards one call keeps queued on its encoder's device thread (see `Encoder.embed_batches`).
AHEAD = 2

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "extract.device is 'cuda' but this worker sees no GPU; use 'auto' or 'cpu'"
        )
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    # Half precision on CPU is slower and less exact than float32; it is a GPU option only.
    return DTYPES[dtype] if device == "cuda" else torch.float32


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    st = os.stat(path)
    return _sha256_cached(os.path.abspath(path), st.st_size, st.st_mtime_ns)


def sha256_weights_dir(
    path: str, suffixes=(".safetensors", ".bin", ".pth", ".pt", ".json", ".txt")
) -> str:
    """One hash over the weight and tokenizer files of a model folder (names and contents)."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(suffixes):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).encode())
                digest.update(sha256_file(full).encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "torchvision", "transformers", "open_clip_torch", "timm", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short stable id of a fingerprint, used to name versioned output folders."""
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def token_batch(rows: list[np.ndarray], pad_id: int, device: str) -> dict:
    """Token rows as a transformers batch on `device`: input_ids and attention_mask, padded to
    the longest row of the batch, not to max_length (most texts are short)."""
    ids, mask = pad_rows(rows, pad_id)
    return {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
    }


class Encoder:
    """Base class: subclasses set `modality`, `dim`, `self.model`, `self.prep` (from their
    `make_prep`, which the decode stage calls too) and implement `collate` and `forward`."""

    modality: str
    dim: int
    prep: Any

    def __init__(self, name, spec, device: str = "cpu", dtype: str = "float32"):
        self.name = name
        self.spec = spec
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype, self.device)

    @classmethod
    def make_prep(cls, name, spec, modality: str) -> Any:
        """The host-side preprocessor of this encoder, built without its weights."""
        raise NotImplementedError

    def collate(self, rows: list[np.ndarray]) -> Any:
        """Prepared rows -> one batch of model inputs on the device."""
        raise NotImplementedError

    def collate_description(self) -> str:
        """What `collate` does to the prepared rows beyond stacking them (part of the fingerprint)."""
        return ""

    def preprocess(self, items: list) -> Any:
        """Decoded items -> model inputs on the device: prepare and collate in one call."""
        return self.collate(self.prep.prepare(items))

    def forward(self, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    def weights_id(self) -> str:
        raise NotImplementedError

    def preprocess_description(self) -> str:
        extra = self.collate_description()
        return self.prep.describe() + (f"; {extra}" if extra else "")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": str(self.name),
            "modality": self.modality,
            "weights": self.weights_id(),
            "preprocess": self.preprocess_description(),
            "pooling": getattr(self, "pooling", None),
            "normalize": self.spec.normalize,
            "dim": self.dim,
            "dtype": str(self.torch_dtype).removeprefix("torch."),
            "versions": library_versions(),
        }

    def _finish(self, out: torch.Tensor) -> np.ndarray:
        x = out.float().cpu().numpy()
        return l2_normalize(x) if self.spec.normalize else x

    def embed(self, items: list, timings: dict | None = None) -> np.ndarray:
        """Embed a list of decoded items (PIL images or strings) in one forward pass.

        `timings`, when given, accumulates seconds spent in `preprocess_s` and `forward_s`.
        """
        t0 = time.perf_counter()
        rows = self.prep.prepare(items) if items else []
        if timings is not None:
            timings["preprocess_s"] = timings.get("preprocess_s", 0.0) + time.perf_counter() - t0
        return self.embed_prepared(rows, timings)

    def embed_batches(
        self,
        loaders: list,
        device=None,
        timings: dict | None = None,
        busy: list | None = None,
    ) -> np.ndarray:
        """Embed batch after batch: `loaders[k]()` returns batch k's prepared rows.

        With `device`, an executor of one thread through which every forward of this encoder
        runs in order (the accelerator's queue, shared by the calls an actor runs at once),
        this thread loads and collates batch k + 1 while batch k is in forward, and keeps up to
        `AHEAD` forwards queued there: the device goes from one batch to the next without
        waiting on a host thread to wake up, and, between calls, on the next call's first
        collate. Without it, collate and forward alternate in this thread. `timings`
        accumulates `collate_s` and `forward_s`; `busy`, when given, gets each forward's
        (start, end) wall-clock seconds and its rows: the accelerator's busy intervals."""
        if not loaders:
            return np.zeros((0, self.dim), dtype=np.float32)

        def load(k: int):
            t0 = time.perf_counter()
            rows = loaders[k]()
            inputs = self.collate(rows)
            if timings is not None:
                timings["collate_s"] = timings.get("collate_s", 0.0) + time.perf_counter() - t0
            return inputs, len(rows)

        def run(inputs, rows: int) -> np.ndarray:
            with torch.inference_mode():  # thread-local: entered on the thread that runs it
                t1, w1 = time.perf_counter(), time.time()
                out = self.forward(inputs).astype(np.float32, copy=False)
                t2, w2 = time.perf_counter(), time.time()
            if timings is not None:
                timings["forward_s"] = timings.get("forward_s", 0.0) + t2 - t1
            if busy is not None:
                busy.append((w1, w2, rows))
            return out

        if device is None:
            return np.concatenate([run(*load(k)) for k in range(len(loaders))])
        outs: list[np.ndarray] = []
        queued: collections.deque = collections.deque()
        try:
            for k in range(len(loaders)):
                inputs = load(k)
                while len(queued) >= AHEAD:
                    outs.append(queued.popleft().result())
                queued.append(device.submit(run, *inputs))
            while queued:
                outs.append(queued.popleft().result())
        finally:
            for future in queued:  # a load failed: what this call queued is not run
                future.cancel()
        return np.concatenate(outs)

    def embed_prepared(
        self, rows: list[np.ndarray], timings: dict | None = None, busy: list | None = None
    ) -> np.ndarray:
        """Embed prepared rows (`prep.prepare`'s output) in one forward pass; `timings` and
        `busy` as in `embed_batches`."""
        return self.embed_batches([lambda: rows] if rows else [], None, timings, busy)
