"""Synthetic embeddings in the extract stage's layout, for train-stage tests.

`buried_signal` makes a task where the classes are separable only after a projection: each class
has a centroid in a few "signal" dimensions, and many more dimensions carry noise of much larger
variance, so nearest neighbours on the raw vectors mostly see noise. `write_embeddings` writes
such rows as `{output}/embeddings/part-XXXXX.parquet` plus `_manifest.json` (written last), exactly
the columns and manifest keys that `adapt.embeddings` and the train stage read.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from adapt import schema
from adapt.storage import Storage, join


def buried_signal(
    n: int,
    dims: dict[str, int],
    n_classes: int = 4,
    signal_dims: int = 4,
    noise_std: float = 3.0,
    within_std: float = 0.3,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Features per modality (float32 [n, d]) and string labels "c0".."c{k-1}", balanced."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    features = {}
    for m, d in sorted(dims.items()):
        k = min(signal_dims, d)
        centroids = rng.normal(0.0, 1.0, size=(n_classes, k))
        x = rng.normal(0.0, noise_std, size=(n, d))
        x[:, :k] = centroids[y] + rng.normal(0.0, within_std, size=(n, k))
        features[m] = x[:, rng.permutation(d)].astype(np.float32)  # signal dims not first
    return features, [f"c{c}" for c in y]


def _fixed_size(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])


def write_embeddings(
    store: Storage,
    output: str,
    features: dict[str, np.ndarray],
    labels: list,
    n_shards: int = 3,
    splits: list[str | None] | None = None,
    ids: list[str] | None = None,
) -> dict:
    """Write rows in the extract layout; labels are strings or lists of strings. Returns the
    manifest."""
    n = len(labels)
    ids = ids or [f"row-{i:06d}" for i in range(n)]
    multilabel = bool(n) and isinstance(labels[0], list)
    label_type = pa.list_(pa.string()) if multilabel else pa.string()
    fingerprints = {
        m: {
            "dim": int(x.shape[1]),
            "dtype": "float32",
            "encoder": f"synthetic:{m}",
            "modality": m,
            "normalize": False,
        }
        for m, x in features.items()
    }
    records = []
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    for s in range(n_shards):
        lo, hi = bounds[s], bounds[s + 1]
        columns = {
            schema.ID: pa.array(ids[lo:hi], pa.string()),
            schema.LABEL: pa.array(labels[lo:hi], label_type),
            schema.SPLIT: pa.array((splits or [None] * n)[lo:hi], pa.string()),
        }
        for m in sorted(features):
            columns[schema.embedding_column(m)] = _fixed_size(features[m][lo:hi])
        key = f"part-{s:05d}"
        uri = join(output, "embeddings", f"{key}.parquet")
        store.write_parquet(uri, pa.table(columns))
        records.append(
            {
                "shard": key,
                "source": f"synthetic/{key}",
                "input_rows": int(hi - lo),
                "embedded": int(hi - lo),
                "rejected": 0,
                "fingerprints": fingerprints,
                "committed_at": datetime.now(UTC).isoformat(),
                "embeddings_file": uri,
            }
        )
    manifest = {
        "corpus": "synthetic",
        "adapt_version": "test",
        "complete": True,
        "shards": records,
        "input_rows": n,
        "embedded": n,
        "rejected": 0,
        "fingerprints": fingerprints,
        "schema": {m: schema.embedding_column(m) for m in sorted(features)},
        "written_at": datetime.now(UTC).isoformat(),
    }
    store.write_json(join(output, "embeddings", "_manifest.json"), manifest)
    return manifest


def knn_accuracy(
    train_x: np.ndarray, train_y: list, test_x: np.ndarray, test_y: list, k: int = 5
) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(k).fit(train_x, train_y).score(test_x, test_y))
