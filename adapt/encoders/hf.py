"""Hugging Face transformers encoders: text (CLS / mean / last-token pooling) and vision.

A text model's pooling and truncation length, unless the config sets them, are the model's own: read
from its sentence-transformers files where it has them (`adapt.encoders.st`), else mean pooling and
the tokenizer's maximum length.

Loads only from a local folder or the local Hugging Face cache when HF_HUB_OFFLINE=1; on a cluster a
model id downloads from the hub on first use, once per worker.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from adapt.encoders.base import Encoder, sha256_weights_dir, token_batch
from adapt.encoders.prep import ProcessorPrep, TokenPrep
from adapt.encoders.st import st_settings, token_prep

logger = logging.getLogger(__name__)


def _weights_id(model_ref: str, model) -> str:
    if os.path.isdir(model_ref):
        return "sha256:" + sha256_weights_dir(model_ref)
    commit = getattr(model.config, "_commit_hash", None)
    return f"hf-hub:{model_ref}@{commit or 'unknown'}"


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool [B, T, D] token states to [B, D]; `mask` is [B, T] with 1 for real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if pooling == "last":
        # Index of the last real token of each row (works for right padding).
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; choose cls, mean or last")


def text_pooling(model_ref: str) -> str:
    """The pooling a text model was trained with, from its sentence-transformers config; mean
    (the sentence-embedding convention) where it has none. A model whose embedding is more than a
    pooled hidden state (a dense layer, or a pooling hf: does not have) is sent to the st: scheme."""
    settings = st_settings(model_ref)
    if settings is None:
        logger.info("hf:%s declares no pooling (no sentence-transformers config): mean", model_ref)
        return "mean"
    pooling = settings["pooling"]
    extra = [m for m in settings["modules"] if m not in ("Transformer", "Pooling", "Normalize")]
    if pooling not in ("cls", "mean", "last") or extra:
        what = f"pooling {pooling}" if pooling not in ("cls", "mean", "last") else ", ".join(extra)
        raise ValueError(
            f"encoder hf:{model_ref} is a sentence-transformers model with {what}, which the hf:"
            f" scheme does not run: use st:{model_ref}"
        )
    return pooling


class HFTextEncoder(Encoder):
    modality = "text"

    @classmethod
    def make_prep(cls, name, spec, modality: str = "text") -> TokenPrep:
        return token_prep(spec, name.model)

    def __init__(self, name, spec, device="cpu", dtype="float32"):
        super().__init__(name, spec, device, dtype)
        from transformers import AutoModel

        self.prep = self.make_prep(name, spec)
        self.tokenizer = self.prep.tokenizer
        self.model = AutoModel.from_pretrained(name.model, dtype=self.torch_dtype)
        self.model.eval().to(self.device)
        self.pooling = spec.pooling or text_pooling(name.model)
        if self.pooling == "pooled":
            raise ValueError(
                "pooling 'pooled' is for vision models; for text use cls, mean or last"
            )
        self.dim = int(self.model.config.hidden_size)
        self._weights = _weights_id(name.model, self.model)

    def weights_id(self) -> str:
        return self._weights

    def collate(self, rows: list[np.ndarray]) -> dict:
        return token_batch(rows, self.prep.pad_id, self.device)

    def forward(self, inputs) -> np.ndarray:
        out = self.model(**inputs)
        return self._finish(
            pool_tokens(out.last_hidden_state, inputs["attention_mask"], self.pooling)
        )


class HFVisionEncoder(Encoder):
    modality = "image"

    @classmethod
    def make_prep(cls, name, spec, modality: str = "image") -> ProcessorPrep:
        from transformers import AutoImageProcessor

        return ProcessorPrep(AutoImageProcessor.from_pretrained(name.model))

    def __init__(self, name, spec, device="cpu", dtype="float32"):
        super().__init__(name, spec, device, dtype)
        from transformers import AutoModel

        self.prep = self.make_prep(name, spec)
        self.processor = self.prep.processor
        self.model = AutoModel.from_pretrained(name.model, dtype=self.torch_dtype)
        self.model.eval().to(self.device)
        self.pooling = spec.pooling or "cls"
        if self.pooling not in ("cls", "pooled"):
            raise ValueError(f"vision pooling must be cls or pooled, not {self.pooling!r}")
        config = getattr(self.model.config, "vision_config", self.model.config)
        self.dim = int(getattr(config, "hidden_size", 0) or config.hidden_sizes[-1])
        self._weights = _weights_id(name.model, self.model)

    def weights_id(self) -> str:
        return self._weights

    def collate(self, rows: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(rows)).to(self.device, self.torch_dtype)

    def forward(self, pixel_values) -> np.ndarray:
        out = self.model(pixel_values=pixel_values)
        if self.pooling == "pooled" and getattr(out, "pooler_output", None) is not None:
            feats = out.pooler_output
        else:
            feats = out.last_hidden_state[:, 0]
        return self._finish(feats.reshape(feats.shape[0], -1))
