"""Embedding health, checked every night: non-finite values, norms, and determinism.

For rows whose content did not change since the previous night, the new embeddings should equal
the old ones (same encoder, same input): their cosine similarity is a determinism check, and a
drop flags a changed model, library or preprocessing that the fingerprint did not catch.

A night checks the rows of the shards it embedded (the others were checked on the night that wrote
them), one file at a time (`Health.add`), so its cost and memory follow the new rows, not the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class _Modality:
    """One modality's running counts: non-finite values, norms, cosine of unchanged rows."""

    nan: int = 0
    inf: int = 0
    rows: int = 0
    norm_sum: float = 0.0
    norm_sq: float = 0.0
    norm_min: float = np.inf
    norm_max: float = -np.inf
    unchanged: int = 0
    cos_sum: float = 0.0
    cos_min: float = np.inf
    drifted: int = 0

    def add(self, x: np.ndarray, cos: np.ndarray | None) -> None:
        self.nan += int(np.isnan(x).sum())
        self.inf += int(np.isinf(x).sum())
        if len(x):
            norms = np.linalg.norm(np.where(np.isfinite(x), x, 0.0), axis=1).astype(np.float64)
            self.rows += len(norms)
            self.norm_sum += float(norms.sum())
            self.norm_sq += float((norms**2).sum())
            self.norm_min = min(self.norm_min, float(norms.min()))
            self.norm_max = max(self.norm_max, float(norms.max()))
        if cos is not None and len(cos):
            self.unchanged += len(cos)
            self.cos_sum += float(cos.sum())
            self.cos_min = min(self.cos_min, float(cos.min()))
            self.drifted += int((cos < DRIFT_COSINE).sum())

    def entry(self) -> dict:
        out: dict = {"nan": self.nan, "inf": self.inf, "norms": {}}
        if self.rows:
            mean = self.norm_sum / self.rows
            out["norms"] = {
                "mean": mean,
                "std": float(np.sqrt(max(self.norm_sq / self.rows - mean**2, 0.0))),
                "min": self.norm_min,
                "max": self.norm_max,
            }
        if self.unchanged:
            out["unchanged_rows"] = self.unchanged
            out["cosine_to_previous"] = {
                "min": self.cos_min,
                "mean": self.cos_sum / self.unchanged,
                "drifted": self.drifted,
                "threshold": DRIFT_COSINE,
            }
        return out


@dataclass
class Health:
    """The health of embeddings seen part by part, against `previous` (last night's rows of the
    same shards, or None): `add` each part, then `report`."""

    previous: Embeddings | None = None
    rows: int = 0
    parts: int = 0
    modalities: dict[str, _Modality] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._old: dict | None = None
        if self.previous is not None and schema.CONTENT_HASH in self.previous.columns:
            self._old = {
                (i, h): k
                for k, (i, h) in enumerate(
                    zip(self.previous.ids, self.previous.columns[schema.CONTENT_HASH], strict=True)
                )
            }

    def add(self, current: Embeddings) -> None:
        self.rows += len(current)
        self.parts += 1
        same = None
        if self._old and schema.CONTENT_HASH in current.columns:
            pairs = [
                (k, self._old[(i, h)])
                for k, (i, h) in enumerate(
                    zip(current.ids, current.columns[schema.CONTENT_HASH], strict=True)
                )
                if (i, h) in self._old
            ]
            if pairs:
                same = (np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
        for modality, x in current.features.items():
            cos = None
            if same is not None and modality in self.previous.features:
                cos = row_cosine(x[same[0]], self.previous.features[modality][same[1]])
            self.modalities.setdefault(modality, _Modality()).add(x, cos)

    def report(self) -> dict:
        """Per modality: NaN/inf counts, norm statistics, and cosine similarity of unchanged rows;
        `flags` says what is wrong, `healthy` whether anything is."""
        report: dict = {"rows": self.rows, "files": self.parts, "modalities": {}, "flags": []}
        for modality, tally in sorted(self.modalities.items()):
            entry = tally.entry()
            if entry["nan"] or entry["inf"]:
                report["flags"].append(
                    f"{modality}: {entry['nan']} NaN and {entry['inf']} inf values"
                )
            if tally.drifted:
                report["flags"].append(
                    f"{modality}: {tally.drifted} of {tally.unchanged} unchanged rows moved "
                    f"(cosine < {DRIFT_COSINE}); the encoder is not deterministic or changed "
                    "unnoticed"
                )
            report["modalities"][modality] = entry
        report["healthy"] = not report["flags"]
        return report


def embedding_health(current: Embeddings, previous: Embeddings | None = None) -> dict:
    """The health of `current` in one part (see `Health`)."""
    health = Health(previous)
    health.add(current)
    return health.report()
