"""The representations a classifier is scored on, built per fold from that fold's training rows.

raw embeddings (each modality, and all side by side, each scaled to the same total variance),
PCA of the same size as a head, projections by a head trained inside the fold (its search too),
and heads given by URI. PCA, the scaling and in-fold heads never see a test row.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from adapt.config import PROJECTED_MODES, SCORE_FAMILIES, TrainConfig
from adapt.score.cells import apply_pca, fit_pca

if TYPE_CHECKING:  # the plan module builds its grid from this one
    from adapt.score.plan import Fold

log = logging.getLogger("adapt.score")

# Representation families: "family:variant" names, e.g. raw:text, pca:concat, projected:single.
# The families a config may ask for are listed once, in adapt.config; "head" names a head given by
# URI (score.heads).
RAW, PCA, PROJECTED = SCORE_FAMILIES
HEAD = "head"
# Every modality side by side, each scaled to unit total variance first.
CONCAT = "concat"


def expand_representations(
    names: list[str], modalities: list[str], head_names: list[str] = ()
) -> list[str]:
    """Family names to concrete representations, in a fixed order, without duplicates.

    raw / pca: each modality, plus `concat` when there are two or more; projected: single, plus
    per_modality when there are two or more modalities (with one they are the same head).
    """
    out: list[str] = []
    multi = len(modalities) > 1
    for name in names:
        family, _, variant = name.partition(":")
        if family in (RAW, PCA):
            variants = [variant] if variant else [*modalities, *([CONCAT] if multi else [])]
        elif family == PROJECTED:
            # With one modality the two head layouts are the same head.
            variants = (
                [variant] if variant else list(PROJECTED_MODES if multi else PROJECTED_MODES[:1])
            )
        else:
            raise ValueError(f"unknown representation {name!r}")
        for v in variants:
            if family in (RAW, PCA) and v not in (*modalities, CONCAT):
                raise ValueError(
                    f"representation {name!r}: the embeddings have no modality {v!r}; "
                    f"they have {modalities}"
                )
            if f"{family}:{v}" not in out:
                out.append(f"{family}:{v}")
    out.extend(f"{HEAD}:{h}" for h in head_names)
    return out


def family(representation: str) -> str:
    return representation.partition(":")[0]


@dataclass
class RepData:
    """One representation on one fold, as a cell reads it.

    Either `train` / `test` matrices built for the fold (PCA, in-fold heads), or `parts`: arrays
    over every embedding row (raw embeddings, a given head's projections; object refs in Ray) that
    the cell slices and puts side by side, each multiplied by its scale. `error` says why the
    representation could not be built (its cells then fail with that reason).
    """

    name: str
    dims: int = 0
    train: np.ndarray | None = None
    test: np.ndarray | None = None
    parts: list = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    error: str | None = None

    def matrices(
        self, fold: Fold, resolve: Callable[[Any], np.ndarray] = lambda x: x
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.error:
            raise RuntimeError(f"representation {self.name} was not built: {self.error}")
        if self.train is not None:
            return self.train, self.test
        arrays = [resolve(p) for p in self.parts]

        def take(rows: np.ndarray) -> np.ndarray:
            blocks = [
                a[rows] if s == 1.0 else a[rows] * np.float32(s)
                for a, s in zip(arrays, self.scales, strict=True)
            ]
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)

        return take(fold.rows_train), take(fold.rows_test)


def modality_scales(features: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    """1 / sqrt(total variance) of each modality on `rows` (training rows).

    Multiplying by it gives every modality a total variance of 1, so that a concatenation (and a
    PCA fitted on it) weighs modalities alike: unscaled, image features with 228x the variance of
    the text ones all but hid the text (seen on the demo corpus).
    """
    out = {}
    for m, x in sorted(features.items()):
        total = float(np.var(x[rows], axis=0, dtype=np.float64).sum())
        out[m] = 1.0 / math.sqrt(total) if total > 0 else 1.0
    return out


def _scaled_concat(features: dict[str, np.ndarray], rows: np.ndarray, scales: dict) -> np.ndarray:
    return np.concatenate(
        [features[m][rows] * np.float32(scales[m]) for m in sorted(features)], axis=1
    )


def _in_fold_config(train_cfg: TrainConfig, mode: str) -> TrainConfig:
    """The head settings of one projected representation: the representation fixes the mode, so
    a search over `mode` drops that key (and searches nothing if it was the only one)."""
    update: dict[str, Any] = {"mode": mode}
    sc = train_cfg.search
    if sc is not None and "mode" in sc.grid:
        grid = {k: v for k, v in sc.grid.items() if k != "mode"}
        update["search"] = sc.model_copy(update={"grid": grid})
    return train_cfg.model_copy(update=update)


def build_representations(
    features: dict[str, np.ndarray],
    handles: dict[str, Any],
    fold: Fold,
    representations: list[str],
    train_cfg: TrainConfig,
    pca_k: int,
    seed: int,
    ids: np.ndarray | None = None,
) -> tuple[list[RepData], dict]:
    """Every representation of one fold, fitted on the fold's training rows only.

    `features` are the raw embeddings of every row; `handles` is what a RepData should hold to
    reach an all-rows array (modality name or "head:NAME" -> the array, or its object ref).
    Returns the RepData in `representations` order and an info dict (timings, PCA and head notes).
    A representation that fails to build carries its error instead of raising.
    """
    modalities = sorted(features)
    info: dict[str, Any] = {
        "task": fold.task,
        "fold": fold.label,
        "n_train": len(fold.train),
        "n_test": len(fold.test),
        "representations": {},
    }
    scales: dict[str, float] | None = None
    out = []
    for rep in representations:
        fam, _, variant = rep.partition(":")
        start = time.perf_counter()
        try:
            if fam in (RAW, PCA) and variant == CONCAT and scales is None:
                scales = modality_scales(features, fold.rows_train)
                info["modality_scales"] = scales
            if fam == RAW and variant == CONCAT:
                data = RepData(
                    rep,
                    sum(features[m].shape[1] for m in modalities),
                    parts=[handles[m] for m in modalities],
                    scales=[scales[m] for m in modalities],
                )
            elif fam == RAW:
                data = RepData(
                    rep, features[variant].shape[1], parts=[handles[variant]], scales=[1.0]
                )
            elif fam == HEAD:
                data = RepData(
                    rep, int(handles[f"{HEAD}:dims"][variant]), parts=[handles[rep]], scales=[1.0]
                )
            elif fam == PCA:
                data = _pca(rep, variant, features, fold, scales, pca_k, seed)
            elif fam == PROJECTED:
                data = _projected(rep, variant, features, fold, train_cfg, ids)
            else:
                raise ValueError(f"unknown representation {rep!r}")
        except Exception as e:  # one failed representation must not sink the other cells
            log.warning("score: %s fold %s: %s failed: %s", fold.task, fold.name, rep, e)
            data = RepData(rep, error=f"{type(e).__name__}: {e}"[:500])
        data.info["build_s"] = time.perf_counter() - start
        info["representations"][rep] = {**data.info, "dims": data.dims, "error": data.error}
        out.append(data)
    return out, info


def _pca(
    rep: str,
    variant: str,
    features: dict[str, np.ndarray],
    fold: Fold,
    scales: dict[str, float] | None,
    pca_k: int,
    seed: int,
) -> RepData:
    """A PCA of one modality, or of the scaled concatenation, fitted on the training rows."""
    if variant == CONCAT:
        x_train = _scaled_concat(features, fold.rows_train, scales)
        x_test = _scaled_concat(features, fold.rows_test, scales)
    else:
        x_train, x_test = features[variant][fold.rows_train], features[variant][fold.rows_test]
    pca, pinfo = fit_pca(x_train, pca_k, seed)
    z_train = apply_pca(pca, x_train).astype(np.float32)
    z_test = apply_pca(pca, x_test).astype(np.float32)
    explained = float(pca.explained_variance_ratio_.sum())
    return RepData(
        rep, z_train.shape[1], z_train, z_test, info={**pinfo, "explained_variance": explained}
    )


def _projected(
    rep: str,
    variant: str,
    features: dict[str, np.ndarray],
    fold: Fold,
    train_cfg: TrainConfig,
    ids: np.ndarray | None,
) -> RepData:
    """A head of layout `variant` trained (its search included) on the fold's training rows."""
    # torch only here: the cell workers, which never build a head, stay without it.
    from adapt.train import search
    from adapt.train.fit import project

    modalities = sorted(features)
    cfg = _in_fold_config(train_cfg, variant)
    inputs = {m: features[m][fold.rows_train] for m in modalities}
    fit, selection = search.fit_selected(
        inputs,
        fold.labels_train,
        cfg,
        seed=train_cfg.seed + fold.index,
        ids=None if ids is None else ids[fold.rows_train],
    )
    z_train = project(fit.head, inputs)
    z_test = project(fit.head, {m: features[m][fold.rows_test] for m in modalities})
    return RepData(
        rep,
        z_train.shape[1],
        z_train,
        z_test,
        info={
            "best_epoch": fit.best_epoch,
            "epochs_run": len(fit.history),
            "n_fit": fit.n_train,
            "n_early_stopping": fit.n_val,
            "out_dim": int(fit.head.out_dim),
            "search": selection.to_json(),
        },
    )
