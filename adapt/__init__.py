"""adapt: adapt frozen multimodal embeddings to your task with small contrastive projection heads.

Stages, each a Ray job: extract (frozen encoders -> Parquet embeddings), train (projection heads),
score (downstream classifiers on raw vs PCA vs projected), nightly (all three, plus promotion).
"""

__version__ = "0.1.0"
