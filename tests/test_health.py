"""The nightly embedding health check."""

from __future__ import annotations

import numpy as np

from adapt.embeddings import Embeddings
from adapt.nightly.health import embedding_health


def make(ids, hashes, x):
    return Embeddings(
        np.array(list(ids), dtype=object),
        {"text": np.asarray(x, dtype=np.float32)},
        {"content_hash": list(hashes)},
        {},
    )


def test_healthy_when_unchanged_rows_match():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    report = embedding_health(make("abcde", "12345", x), make("abcdf", "12346", x))
    text = report["modalities"]["text"]
    assert report["healthy"] and text["unchanged_rows"] == 4
    assert text["cosine_to_previous"]["min"] > 0.9999 and text["nan"] == 0


def test_flags_nan_and_drift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 4))
    y = x.copy()
    y[0] = -y[0]  # an unchanged row whose embedding flipped
    y[3, 2] = np.nan
    report = embedding_health(make("abcd", "1234", y), make("abcd", "1234", x))
    assert not report["healthy"]
    flags = " ".join(report["flags"])
    assert "1 NaN" in flags and "unchanged rows moved" in flags
    assert report["modalities"]["text"]["cosine_to_previous"]["drifted"] >= 1
