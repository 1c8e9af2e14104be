"""Tiny random-weight models of the real architectures (BERT, ViT, CLIP, EfficientNet).

They run the real model code in milliseconds; their outputs mean nothing, which is the point:
tests check plumbing, shapes, determinism and failure handling, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "b",
    "c",
    "cat",
    "dog",
    "red",
    "blue",
    "the",
    "face",
    "smile",
    "flag",
    "car",
    "tree",
    "sun",
    "moon",
]


def make_bert(root: Path) -> str:
    from transformers import BertConfig, BertModel, BertTokenizer

    path = root / "tiny-bert"
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return str(path)


def make_sentence_transformer(root: Path, bert: str, pooling: str, dense: int | None) -> str:
    """A sentence-transformers folder over the tiny BERT: its pooling, a dense layer to `dense`
    outputs when given, and a normalisation, with a max_seq_length of 24."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    path = root / (f"tiny-st-{pooling}" + (f"-dense{dense}" if dense else ""))
    first = Transformer(bert, max_seq_length=24)
    modules = [first, Pooling(first.get_embedding_dimension(), pooling)]
    if dense:
        modules.append(Dense(first.get_embedding_dimension(), dense))
    SentenceTransformer(modules=[*modules, Normalize()], device="cpu").save(str(path))
    return str(path)


def make_vit(root: Path) -> str:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = root / "tiny-vit"
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def make_clip_config(root: Path) -> str:
    """An open_clip model config small enough to build in milliseconds."""
    path = root / "adapt-tiny-clip.json"
    path.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {
                    "image_size": 32,
                    "layers": 1,
                    "width": 32,
                    "patch_size": 8,
                    "head_width": 16,
                },
                "text_cfg": {
                    "context_length": 16,
                    "vocab_size": 49408,
                    "width": 32,
                    "heads": 2,
                    "layers": 1,
                },
            }
        )
    )
    return str(path)


def make_all(root: Path) -> dict[str, str]:
    bert = make_bert(root)
    return {
        "bert": bert,
        "st-cls": make_sentence_transformer(root, bert, "cls", None),
        "st-dense": make_sentence_transformer(root, bert, "mean", 8),
        "vit": make_vit(root),
        "clip": make_clip_config(root),
    }
