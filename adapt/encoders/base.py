"""What every encoder shares: device and dtype choice, output normalisation, fingerprints.

An encoder is a frozen model behind two pure calls: `preprocess(items)` (decoded PIL images or
strings -> model inputs) and `forward(inputs)` (-> float32 numpy [B, dim]). Its fingerprint says
exactly what produced an embedding: name, weights hash, preprocessing, pooling, dtype and library
versions. Two runs with equal fingerprints produce comparable embeddings; any change makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np
import torch

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


class Encoder:
    """Base class: subclasses set `modality`, `dim`, `self.model` and implement the two calls."""

    modality: str
    dim: int

    def __init__(self, name, spec, device: str = "cpu", dtype: str = "float32"):
        self.name = name
        self.spec = spec
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype, self.device)

    def preprocess(self, items: list) -> Any:
        raise NotImplementedError

    def forward(self, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    def weights_id(self) -> str:
        raise NotImplementedError

    def preprocess_description(self) -> str:
        raise NotImplementedError

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
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            t0 = time.perf_counter()
            inputs = self.preprocess(items)
            t1 = time.perf_counter()
            out = self.forward(inputs).astype(np.float32, copy=False)
        if timings is not None:
            timings["preprocess_s"] = timings.get("preprocess_s", 0.0) + t1 - t0
            timings["forward_s"] = timings.get("forward_s", 0.0) + time.perf_counter() - t1
        return out
