"""sentence-transformers models: their own pooling, dense layers and truncation length.

A sentence-transformers folder (or hub repository) says how its embeddings are made: `modules.json`
lists the modules (a transformer, a pooling, sometimes dense layers and a normalisation),
`1_Pooling/config.json` the pooling (CLS for BGE and E5-style models, mean for MiniLM and MPNet,
last token for decoder models) and `sentence_bert_config.json` the length it was trained with.

`st_settings` reads those files without loading the model (the driver and the hf: text encoder use
it to pick pooling and length); `SentenceTransformerEncoder` (the `st:` scheme) runs the whole module
stack, so models whose embedding is not the pooled hidden state (a dense layer after pooling) come out
as their authors meant.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from adapt.encoders.base import Encoder, sha256_weights_dir, token_batch
from adapt.encoders.prep import TokenPrep

logger = logging.getLogger(__name__)

# sentence-transformers' pooling modes -> the hf: encoder's pooling names. Older configs set one
# boolean flag per mode (`pooling_mode_cls_token: true`), newer ones name it (`pooling_mode: cls`).
POOLING_MODES = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
# A tokenizer's model_max_length above this is a "no limit" sentinel (transformers writes 1e30).
SANE_MAX_LENGTH = 100_000
FALLBACK_MAX_LENGTH = 512


def _read_json(model_ref: str, filename: str) -> dict | list | None:
    """One JSON file of a model folder or hub repository; None where it has none."""
    if os.path.isdir(model_ref):
        path = os.path.join(model_ref, filename)
        if not os.path.isfile(path):
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model_ref, filename)
        except Exception:  # not on the hub, no such file, or offline without it in the cache
            return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def st_settings(model_ref: str) -> dict | None:
    """What a sentence-transformers model declares: `pooling` (cls, mean, last, or the mode's own
    name where the hf: encoder has no equivalent), `max_length` (or None), and `modules` (each
    module's type, in order). None when `model_ref` is not a sentence-transformers model."""
    modules = _read_json(model_ref, "modules.json")
    if not isinstance(modules, list) or not modules:
        return None
    kinds, pooling = [], None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        kinds.append(kind)
        if kind == "Pooling" and pooling is None:
            cfg = _read_json(model_ref, f"{module.get('path', '')}/config.json".lstrip("/")) or {}
            mode = cfg.get("pooling_mode")
            modes = [mode] if isinstance(mode, str) else list(mode or [])
            modes = modes or [m for flag, m in POOLING_FLAGS.items() if cfg.get(flag)]
            if modes:
                joined = "+".join(str(m) for m in modes)
                pooling = POOLING_MODES.get(joined, joined)
    config = _read_json(model_ref, "sentence_bert_config.json") or {}
    max_length = config.get("max_seq_length")
    return {
        "pooling": pooling,
        "max_length": int(max_length) if max_length else None,
        "modules": kinds,
    }


def tokenizer_max_length(tokenizer) -> int | None:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if n and n < SANE_MAX_LENGTH else None


def positions(model_ref: str) -> int | None:
    """The model's position table size (config.json), the hard limit on a row's tokens."""
    config = _read_json(model_ref, "config.json") or {}
    n = config.get("max_position_embeddings")
    return int(n) if isinstance(n, int) and n > 0 else None


def resolve_max_length(spec, model_ref: str, tokenizer) -> int:
    """The truncation length: the config's, else the model's own (sentence-transformers'
    max_seq_length, then the tokenizer's maximum, then the position table's size), else 512."""
    if spec.max_length is not None:
        return int(spec.max_length)
    declared = (st_settings(model_ref) or {}).get("max_length")
    return (
        declared or tokenizer_max_length(tokenizer) or positions(model_ref) or FALLBACK_MAX_LENGTH
    )


def token_prep(spec, model_ref: str) -> TokenPrep:
    """The model's tokenizer, truncating at `resolve_max_length`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    return TokenPrep(tokenizer, resolve_max_length(spec, model_ref, tokenizer))


class SentenceTransformerEncoder(Encoder):
    """The `st:` scheme: a sentence-transformers model run module by module on tokenised rows."""

    modality = "text"

    @classmethod
    def make_prep(cls, name, spec, modality: str = "text") -> TokenPrep:
        if st_settings(name.model) is None:
            raise ValueError(
                f"encoder st:{name.model}: no modules.json there, so it is not a"
                " sentence-transformers model; use hf: for a plain transformers model"
            )
        return token_prep(spec, name.model)

    def __init__(self, name, spec, device="cpu", dtype="float32"):
        super().__init__(name, spec, device, dtype)
        from sentence_transformers import SentenceTransformer

        if spec.pooling is not None:
            raise ValueError(
                f"encoder st:{name.model}: pooling is the model's own (its modules.json);"
                " leave `pooling` unset, or use hf: to choose one"
            )
        ref = name.model
        self.prep = self.make_prep(name, spec)
        self.model = SentenceTransformer(
            ref, device=self.device, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"
        )
        self.model.max_seq_length = self.prep.max_length
        self.model.eval().to(self.device, self.torch_dtype)
        settings = st_settings(ref) or {}
        # The module stack is the pooling, for the fingerprint: a changed stack is a new space.
        self.pooling = "st:" + ">".join(
            f"{k}({settings.get('pooling')})" if k == "Pooling" else k
            for k in settings.get("modules", [])
        )
        dim = self.model.get_embedding_dimension()
        if not dim:
            probe = self.forward(self.collate(self.prep.prepare(["a"])))
            dim = probe.shape[1]
        self.dim = int(dim)
        self._weights = (
            "sha256:" + sha256_weights_dir(ref) if os.path.isdir(ref) else f"hf-hub:{ref}"
        )

    def weights_id(self) -> str:
        return self._weights

    def collate(self, rows: list[np.ndarray]) -> dict:
        return token_batch(rows, self.prep.pad_id, self.device)

    def forward(self, inputs) -> np.ndarray:
        out = self.model(dict(inputs))["sentence_embedding"]
        return self._finish(out)
