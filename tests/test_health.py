"""The nightly embedding health check."""

from __future__ import annotations

import numpy as np

from adapt.embeddings import Embeddings
from adapt.nightly.health import Health, embedding_health


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


def test_parts_add_up_to_the_whole():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 4))
    y = x + rng.normal(scale=0.05, size=x.shape)  # every unchanged row moved a little
    ids, hashes = "abcdefghi", "123456789"
    whole = embedding_health(make(ids, hashes, y), make(ids[:6], hashes[:6], x))
    health = Health(make(ids[:6], hashes[:6], x))
    for part in (slice(0, 4), slice(4, 9)):
        health.add(make(ids[part], hashes[part], y[part]))
    parts = health.report()
    assert parts["rows"] == 9 and parts["files"] == 2 and parts["flags"] == whole["flags"]
    a, b = whole["modalities"]["text"], parts["modalities"]["text"]
    assert a["unchanged_rows"] == b["unchanged_rows"] == 6 and b["cosine_to_previous"]["drifted"]
    for key in ("mean", "std", "min", "max"):
        assert np.isclose(a["norms"][key], b["norms"][key])
    for key in ("mean", "min"):
        assert np.isclose(a["cosine_to_previous"][key], b["cosine_to_previous"][key])
