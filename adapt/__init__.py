"""adapt: adapt frozen multimodal embeddings to your task with small contrastive projection heads.

Stages, each a Ray job: extract (frozen encoders -> Parquet embeddings), train (projection heads),
score (downstream classifiers on raw vs PCA vs projected), nightly (all three, plus promotion).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_head"]


def __getattr__(name: str):
    # `adapt.load_head` without importing torch on `import adapt`.
    if name == "load_head":
        from adapt.train.artifact import load_head

        return load_head
    raise AttributeError(f"module 'adapt' has no attribute {name!r}")
