"""Embedding health, checked every night: non-finite values, norms, and determinism.

For rows whose content did not change since the previous night, the new embeddings should equal
the old ones (same encoder, same input): their cosine similarity is a determinism check, and a
drop flags a changed model, library or preprocessing that the fingerprint did not catch.
"""

from __future__ import annotations

import numpy as np

from adapt import schema
from adapt.embeddings import Embeddings

# Cosine similarity below which an unchanged row counts as drifted. float32 round-off across
# machines stays above 0.9999; ONNX vs torch above 0.99999.
DRIFT_COSINE = 0.999


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    return np.sum(a * b, axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )


def norm_stats(x: np.ndarray) -> dict:
    norms = np.linalg.norm(x, axis=1)
    return (
        {
            "mean": float(norms.mean()),
            "std": float(norms.std()),
            "min": float(norms.min()),
            "max": float(norms.max()),
        }
        if len(norms)
        else {}
    )


def embedding_health(current: Embeddings, previous: Embeddings | None = None) -> dict:
    """Per modality: NaN/inf counts, norm statistics, and cosine similarity of unchanged rows."""
    report: dict = {"rows": len(current), "modalities": {}, "flags": []}
    same: tuple[np.ndarray, np.ndarray] | None = None
    if (
        previous is not None
        and schema.CONTENT_HASH in current.columns
        and schema.CONTENT_HASH in previous.columns
    ):
        old = {
            (i, h): k
            for k, (i, h) in enumerate(
                zip(previous.ids, previous.columns[schema.CONTENT_HASH], strict=True)
            )
        }
        pairs = [
            (k, old[(i, h)])
            for k, (i, h) in enumerate(
                zip(current.ids, current.columns[schema.CONTENT_HASH], strict=True)
            )
            if (i, h) in old
        ]
        if pairs:
            same = (np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
    for modality, x in sorted(current.features.items()):
        finite = np.isfinite(x)
        entry = {
            "nan": int(np.isnan(x).sum()),
            "inf": int(np.isinf(x).sum()),
            "norms": norm_stats(np.where(finite, x, 0.0)),
        }
        if entry["nan"] or entry["inf"]:
            report["flags"].append(f"{modality}: {entry['nan']} NaN and {entry['inf']} inf values")
        if same is not None and modality in previous.features:
            a, b = x[same[0]], previous.features[modality][same[1]]
            cos = row_cosine(a, b)
            drifted = int((cos < DRIFT_COSINE).sum())
            entry["unchanged_rows"] = int(len(cos))
            entry["cosine_to_previous"] = {
                "min": float(cos.min()),
                "mean": float(cos.mean()),
                "drifted": drifted,
                "threshold": DRIFT_COSINE,
            }
            if drifted:
                report["flags"].append(
                    f"{modality}: {drifted} of {len(cos)} unchanged rows moved (cosine < "
                    f"{DRIFT_COSINE}); the encoder is not deterministic or changed unnoticed"
                )
        report["modalities"][modality] = entry
    report["healthy"] = not report["flags"]
    return report
