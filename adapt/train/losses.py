"""Contrastive losses for training projection heads, and the sampler that feeds them.

Pure torch (and numpy for the sampler): no Ray, no storage. The fit loop calls `batch_loss` on
each mini-batch of projections, which looks the configured loss up in `LOSSES`.

Labels come in two forms, the same for every loss:
- `[B]` int class ids (binary and multi-class tasks): two rows are positives when their ids match;
- `[B, C]` multi-hot {0, 1} (multi-label tasks): see `positive_matrix` for the two rules.

A contrastive loss learns nothing from a batch without positive pairs, and some losses would then
quietly return 0 and train on nothing. Here a loss never returns an exact 0.0 just because
positives are absent: `supcon_loss` and `triplet_loss` raise `NoPositivePairError`, whose message
points at the fix (the class-balanced sampler below, or a larger batch). `pairwise_bce_loss` is the
exception: on an all-negative batch it still pushes every pair apart, a real nonzero signal, so it
returns its value as is.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MULTILABEL_RULES = ("overlap", "jaccard")

# Largest triplet tensor built at once: [anchors, B, B] entries. 2**24 float32 entries is 64 MiB;
# a batch of 256 rows (256**3 = 2**24) fits in one chunk.
_TRIPLET_CHUNK_ENTRIES = 2**24

# Floor under squared distances before the square root: sqrt'(0) is infinite, and the gradient of
# a distance between identical rows must stay finite. A squared distance of 1e-12 is a distance of
# 1e-6, far below any margin in use.
_MIN_SQUARED_DISTANCE = 1e-12

_SAMPLER_HINT = (
    "use the class-balanced sampler (class_balanced_indices) or a larger batch so that every "
    "batch holds at least two rows of a class"
)


class NoPositivePairError(ValueError):
    """A batch holds nothing the loss can contrast (no positive pair, or for the triplet loss no
    valid triplet), so the loss would be 0 or undefined and train on nothing."""


# --- labels -----------------------------------------------------------------------------------


def _check_rule(multilabel_rule: str) -> None:
    if multilabel_rule not in MULTILABEL_RULES:
        raise ValueError(
            f"unknown multilabel_rule {multilabel_rule!r}; valid rules are {list(MULTILABEL_RULES)}"
        )


def positive_matrix(
    labels: Tensor, multilabel_rule: str = "overlap", *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """[B, B] target in [0, 1]: how much rows i and j count as a positive pair.

    Int labels `[B]`: 1 where the class ids match, else 0.
    Multi-hot labels `[B, C]`:
    - "overlap": 1 when the two label sets intersect (share any label), else 0. Simple and the
      natural extension of "same class"; rows with many labels get many positives.
    - "jaccard": |intersection| / |union| of the two label sets, a soft target in [0, 1] that
      grows with how much the label sets agree. Two empty label sets give 0: having no label at
      all is not a shared label.
    The diagonal is filled like any other entry (1 for int labels); callers exclude it.
    """
    _check_rule(multilabel_rule)
    labels = torch.as_tensor(labels)
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"1-D labels must be integer class ids, got dtype {labels.dtype}: "
                "cast with labels.long(), or pass [B, C] multi-hot labels for multi-label tasks"
            )
        return (labels[:, None] == labels[None, :]).to(dtype)
    if labels.dim() == 2:
        # float64 counts are exact, so jaccard ratios are rounded once, at the end.
        y = labels.to(torch.float64)
        if ((y != 0) & (y != 1)).any():
            raise ValueError("multi-hot labels must hold only 0 and 1 (or False and True)")
        inter = y @ y.T
        if multilabel_rule == "overlap":
            return (inter > 0).to(dtype)
        sizes = y.sum(dim=1)
        union = sizes[:, None] + sizes[None, :] - inter
        return torch.where(union > 0, inter / union.clamp_min(1.0), 0.0).to(dtype)
    raise ValueError(
        f"labels must be [B] class ids or [B, C] multi-hot, got shape {tuple(labels.shape)}"
    )


def count_positive_pairs(labels: Tensor, multilabel_rule: str = "overlap") -> int:
    """Number of unordered pairs i < j with a nonzero positive target."""
    pos = positive_matrix(labels, multilabel_rule)
    return int(torch.triu(pos > 0, diagonal=1).sum().item())


def _check_inputs(z: Tensor, labels: Tensor) -> Tensor:
    """Validate z [B, D]; return labels as a tensor on z's device."""
    if not isinstance(z, Tensor) or z.dim() != 2 or not z.is_floating_point():
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"z must be a float tensor of shape [B, D], got {shape}")
    labels = torch.as_tensor(labels, device=z.device)
    if labels.dim() == 0 or labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"labels have shape {tuple(labels.shape)} but z has {z.shape[0]} rows; "
            "give one label (or one multi-hot row) per row"
        )
    return labels


def _check_temperature(temperature: float) -> None:
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a positive number (e.g. 0.1), got {temperature!r}")


def _check_rows(z: Tensor, loss: str) -> None:
    if z.shape[0] < 2:
        raise NoPositivePairError(
            f"{loss} needs at least 2 rows to form a pair, got {z.shape[0]}; {_SAMPLER_HINT}"
        )


def _mask_value(dtype: torch.dtype) -> float:
    # A very negative but finite logit: exp() of it is 0 in softmax, and unlike -inf it cannot
    # turn 0 * logit or (-inf) - (-inf) into NaN. Half of the dtype's minimum leaves room to
    # subtract a logsumexp without overflowing.
    return torch.finfo(dtype).min / 2


# --- losses -----------------------------------------------------------------------------------


def pairwise_bce_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    normalize: bool = False,
    multilabel_rule: str = "overlap",
) -> Tensor:
    """The paper's loss: binary cross-entropy on every unordered pair i < j of the batch.

    logit_ij = (z_i . z_j) / temperature (cosine similarity if `normalize`), target = the positive
    matrix (soft with the jaccard rule); mean over the B(B-1)/2 pairs. The reference code uses
    unnormalised dot products and temperature 0.1.

    A batch without positive pairs is not an error here: pushing all pairs apart is still a
    nonzero loss with a useful gradient.
    """
    labels = _check_inputs(z, labels)
    _check_temperature(temperature)
    _check_rows(z, "pairwise_bce_loss")
    if normalize:
        z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    target = positive_matrix(labels, multilabel_rule, dtype=z.dtype)
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    return F.binary_cross_entropy_with_logits(logits[i, j], target[i, j])


def supcon_loss(
    z: Tensor, labels: Tensor, temperature: float = 0.1, multilabel_rule: str = "overlap"
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form) on L2-normalised z.

    For anchor i: -sum_p w_ip log softmax_i(p) / sum_p w_ip, where the softmax runs over all rows
    except i, and w_ip is the positive target (0/1, or the jaccard soft target, so partial label
    matches count partially). Anchors without any positive are left out of the mean.

    Raises NoPositivePairError when no anchor has a positive.
    """
    labels = _check_inputs(z, labels)
    _check_temperature(temperature)
    _check_rows(z, "supcon_loss")
    z = F.normalize(z, dim=1)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, _mask_value(z.dtype))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    weights = positive_matrix(labels, multilabel_rule, dtype=z.dtype).masked_fill(eye, 0.0)
    weight_sums = weights.sum(dim=1)
    anchors = weight_sums > 0
    if not bool(anchors.any()):
        raise NoPositivePairError(f"supcon_loss: the batch has no positive pair; {_SAMPLER_HINT}")
    per_anchor = -(weights * log_prob).sum(dim=1)[anchors] / weight_sums[anchors]
    return per_anchor.mean()


def triplet_loss(z: Tensor, labels: Tensor, margin: float = 0.2, normalize: bool = True) -> Tensor:
    """Batch-all triplet margin loss: mean of max(0, d(a, p) - d(a, n) + margin).

    Every valid triplet of the batch is used: a != p, (a, p) positive, (a, n) negative, with
    Euclidean distances (on L2-normalised z if `normalize`, so distances lie in [0, 2]). For
    multi-hot labels, positive means the label sets intersect and negative means they are
    disjoint. The mean runs over the triplets whose loss is positive: averaging over all valid
    triplets would let the many already-satisfied ones shrink the gradient as training goes on.
    The result is 0 only when every valid triplet already meets the margin.

    Raises NoPositivePairError when the batch has no positive pair, or no negative for any anchor
    that has a positive (then no triplet exists). Memory is B^3 entries, built in chunks of
    anchors.
    """
    labels = _check_inputs(z, labels)
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0 (e.g. 0.2), got {margin!r}")
    _check_rows(z, "triplet_loss")
    if normalize:
        z = F.normalize(z, dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    target = positive_matrix(labels, "overlap")
    positive = (target > 0) & ~eye
    negative = (target == 0) & ~eye
    if not bool(positive.any()):
        raise NoPositivePairError(f"triplet_loss: the batch has no positive pair; {_SAMPLER_HINT}")
    if not bool((positive.any(dim=1) & negative.any(dim=1)).any()):
        raise NoPositivePairError(
            "triplet_loss: no anchor has both a positive and a negative (all rows share a label?); "
            "sample at least two classes per batch"
        )
    squared_norms = (z * z).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (z @ z.T)
    dist = squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()

    total = z.new_zeros(())
    active = torch.zeros((), dtype=torch.long, device=z.device)
    chunk = max(1, _TRIPLET_CHUNK_ENTRIES // (n * n))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        # [anchors, positives, negatives]
        valid = positive[lo:hi, :, None] & negative[lo:hi, None, :]
        hinge = (dist[lo:hi, :, None] - dist[lo:hi, None, :] + margin).clamp_min(0.0)
        hinge = hinge * valid
        total = total + hinge.sum()
        active = active + (hinge > 0).sum()
    return total / active.clamp_min(1)


def cross_modal_loss(parts: dict[str, Tensor], temperature: float = 0.1) -> Tensor:
    """CLIP-style symmetric InfoNCE that aligns each row's projections across modalities.

    For two modalities a and b (L2-normalised, same width), row i of a and row i of b are the
    positive pair and every other row of the batch is a negative, in both directions:
    (CE(a b^T / T, i) + CE(b a^T / T, i)) / 2. With more than two modalities the loss is the mean
    over all unordered pairs of modalities. Labels are not used.
    """
    _check_temperature(temperature)
    if not isinstance(parts, dict) or len(parts) < 2:
        got = sorted(parts) if isinstance(parts, dict) else type(parts).__name__
        raise ValueError(
            f"cross_modal_loss needs projections of at least two modalities, got {got}: "
            'build the head with mode="per_modality"'
        )
    names = sorted(parts)
    shapes = {name: tuple(parts[name].shape) for name in names}
    if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(
            f"cross_modal_loss needs [B, D] projections of the same shape, got {shapes}: "
            "give every modality's head the same out_dim"
        )
    rows = shapes[names[0]][0]
    if rows < 2:
        raise NoPositivePairError(
            f"cross_modal_loss needs at least 2 rows so that each row has negatives, got {rows}"
        )
    normed = {name: F.normalize(parts[name], dim=1) for name in names}
    target = torch.arange(rows, device=normed[names[0]].device)
    losses = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            logits = normed[a] @ normed[b].T / temperature
            losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
    return torch.stack(losses).mean()


# The one loss registry: `train.loss` names an entry, and the fit loop calls it through
# `batch_loss`. A loss's keyword parameters are filled from the train settings of the same name
# (temperature, normalize, margin, multilabel_rule), so adding a loss is one function here and one
# line below (and its name in `TrainConfig.loss`, which a test pins to this registry).
LOSSES: dict[str, Callable[..., Tensor]] = {
    "pairwise_bce": pairwise_bce_loss,
    "supcon": supcon_loss,
    "triplet": triplet_loss,
}


def _parameters(name: str) -> list[str]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses are {sorted(LOSSES)}")
    return [p for p in inspect.signature(LOSSES[name]).parameters if p not in ("z", "labels")]


def contrastive_loss(name: str, z: Tensor, labels: Tensor, **kwargs: object) -> Tensor:
    """Compute the loss registered as `name` in LOSSES on projections z and their labels."""
    accepted = _parameters(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r} does not take {unknown}; it takes {accepted}")
    return LOSSES[name](z, labels, **kwargs)


def batch_loss(parts: dict[str, Tensor], labels: Tensor, cfg: Any) -> Tensor:
    """The configured loss (`cfg.loss`, settings from `cfg`, a TrainConfig) on one batch of
    projections, plus the cross-modal term when `cfg.cross_modal_weight` asks for it; raises
    NoPositivePairError."""
    z = torch.cat([parts[k] for k in sorted(parts)], dim=1)
    settings = {p: getattr(cfg, p) for p in _parameters(cfg.loss)}
    loss = LOSSES[cfg.loss](z, labels, **settings)
    if cfg.cross_modal_weight > 0 and len(parts) > 1:
        loss = loss + cfg.cross_modal_weight * cross_modal_loss(parts, cfg.temperature)
    return loss


# --- sampler ----------------------------------------------------------------------------------

# Rows that join batches only as extra rows (never as one of a batch's classes): rows whose
# sampling class has a single row in the whole data, and multi-label rows without any label.
_FILLER = -1


def _sampling_groups(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sampling class id per row (0..K-1), or _FILLER."""
    if labels.ndim == 1:
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise ValueError(
                f"1-D labels must be integer class ids, got dtype {labels.dtype}: "
                "map class names to ids first, or pass [N, C] multi-hot labels"
            )
        group = np.unique(labels, return_inverse=True)[1].reshape(-1)
    elif labels.ndim == 2:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("multi-hot labels must hold only 0 and 1 (or False and True)")
        # One of each row's labels, uniformly: the label with the largest random key.
        has = labels.astype(bool)
        keys = np.where(has, rng.random(labels.shape), -1.0)
        group = np.where(has.any(axis=1), keys.argmax(axis=1), _FILLER)
    else:
        raise ValueError(
            f"labels must be [N] class ids or [N, C] multi-hot, got shape {labels.shape}"
        )
    # A class with one row cannot give a positive pair; its row becomes filler.
    ids, counts = np.unique(group[group != _FILLER], return_counts=True)
    singletons = ids[counts < 2]
    group = np.where(np.isin(group, singletons), _FILLER, group)
    _, dense = np.unique(group[group != _FILLER], return_inverse=True)
    out = np.full(len(group), _FILLER, dtype=np.int64)
    out[group != _FILLER] = dense.reshape(-1)
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def class_balanced_indices(
    labels: np.ndarray,
    batch_size: int,
    classes_per_batch: int | None = None,
    seed: int = 0,
    num_rows: int | None = None,
) -> list[np.ndarray]:
    """One epoch of batches (int64 row-index arrays) in which every row has a positive partner.

    Each batch samples up to `classes_per_batch` classes and holds at least 2 rows of each of
    them, so supcon and triplet losses always see positive pairs, and (when the data has 2
    classes or more) rows of at least 2 classes, so they see negatives. Classes are sampled, and
    the rest of the batch is filled from their rows, in proportion to how many of their rows the
    epoch has not drawn yet. An epoch thus follows the data's class frequencies and draws every
    row about once; a rare class is drawn a little more often, as it never has fewer than 2 rows
    in a batch it is sampled for.

    labels: [N] int class ids, or [N, C] multi-hot. For multi-hot, each row is sampled under one
        of its labels, picked at random.
    classes_per_batch: the most classes a batch is sampled for. None picks max(2,
        batch_size // 4) (about 4 rows a class); larger values give more negatives, smaller more
        positives. Needs 2 * it <= batch_size. Near the end of an epoch, when fewer classes
        have undrawn rows, batches hold fewer classes (never fewer than 2 while the data has 2).
    seed: makes the epoch deterministic; pass a different seed per epoch (e.g. seed + epoch).
    num_rows: None runs until every row has been drawn at least once (about len(labels) rows, a
        few more for the rare classes' extra draws). An int fixes the epoch at
        ceil(num_rows / batch_size) batches, starting a new pass over the rows when all have been
        drawn: use it when several workers must take the same number of steps.

    Rows whose class has a single row (and multi-label rows without labels) have no possible
    positive; they are drawn as extra rows, never as one of a batch's classes. A batch never holds
    a row twice; it holds batch_size rows, except a row short when that would take a single row of
    one more class, and fewer when the data has fewer rows.
    """
    labels = np.asarray(labels)
    if not _is_int(batch_size) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 to hold a pair, got {batch_size!r}")
    if classes_per_batch is not None and (
        not _is_int(classes_per_batch)
        or classes_per_batch < 1
        or 2 * classes_per_batch > batch_size
    ):
        raise ValueError(
            f"classes_per_batch must be an int with 1 <= classes_per_batch <= batch_size / 2 "
            f"({batch_size // 2}), got {classes_per_batch!r}: each class needs 2 rows per batch"
        )
    if num_rows is not None and (not _is_int(num_rows) or num_rows < 1):
        raise ValueError(f"num_rows must be a positive int or None, got {num_rows!r}")
    if len(labels) == 0:
        raise ValueError("labels are empty: there is nothing to sample")

    rng = np.random.default_rng(seed)
    group = _sampling_groups(labels, rng)
    n_classes = int(group.max()) + 1 if (group != _FILLER).any() else 0
    if n_classes == 0:
        raise ValueError(
            "no class has two rows, so no batch can hold a positive pair; check the labels"
        )
    # Rows grouped by class in one sort (filler, id -1, sorts first).
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(_FILLER, n_classes + 1))
    filler = order[bounds[0] : bounds[1]]
    members = [order[bounds[c + 1] : bounds[c + 2]] for c in range(n_classes)]
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    if classes_per_batch is None:
        # About 4 rows a class, and at least 2 classes so that batches hold negatives.
        per_batch = min(max(2, batch_size // 4), batch_size // 2)
    else:
        per_batch = classes_per_batch
    per_batch = min(per_batch, n_classes)

    # Undrawn rows of this pass: each class's rows (and the filler) in a shuffled order, of which
    # queue[ptr:] are still undrawn.
    def new_pass() -> tuple[list[np.ndarray], np.ndarray]:
        return [rng.permutation(m) for m in members], rng.permutation(filler)

    queues, filler_queue = new_pass()
    ptr = np.zeros(n_classes, dtype=np.int64)
    filler_ptr = 0
    # Filler only ever fills free slots; with batch_size 2 there are none.
    filler_reachable = batch_size > 2
    n_batches = None if num_rows is None else math.ceil(num_rows / batch_size)

    batches: list[np.ndarray] = []
    while n_batches is None or len(batches) < n_batches:
        undrawn_filler = len(filler) - filler_ptr if filler_reachable else 0
        if (sizes - ptr).sum() + undrawn_filler == 0:
            if n_batches is None:
                break
            queues, filler_queue = new_pass()
            ptr[:] = 0
            filler_ptr = 0
            undrawn_filler = len(filler) if filler_reachable else 0
        undrawn = sizes - ptr

        k = per_batch
        if undrawn.sum() == 0 and k > 1 and batch_size == 4:
            k = 1  # only filler is left undrawn: leave two slots for it

        # Classes. A uniform sample of the undrawn rows would hold about
        # batch_size * undrawn[c] / all undrawn rows of class c; classes for which that is at
        # least 2 rows are always sampled (largest first), so that they drain at their share
        # and no large class is left over at the end of the epoch. The other slots go to the
        # open classes in proportion to their undrawn rows. Only when fewer than 2 classes are
        # open is a fully drawn class added (by size), so that the batch still holds negatives;
        # padding to k with drawn classes would fill the end of the epoch with redraws.
        expected = batch_size * undrawn / (undrawn.sum() + undrawn_filler)
        big = np.flatnonzero(expected >= 2)
        chosen = big[np.argsort(-expected[big], kind="stable")][:k]
        small = np.flatnonzero((undrawn > 0) & (expected < 2))
        n_small = min(k - len(chosen), len(small))
        if n_small > 0:
            weights = undrawn[small] / undrawn[small].sum()
            chosen = np.append(chosen, rng.choice(small, size=n_small, replace=False, p=weights))
        n_pad = min(k, 2) - len(chosen)
        if n_pad > 0:
            rest = np.setdiff1d(np.arange(n_classes), chosen)
            weights = sizes[rest] / sizes[rest].sum()
            chosen = np.append(chosen, rng.choice(rest, size=n_pad, replace=False, p=weights))

        parts: list[np.ndarray] = []
        # Two rows of each sampled class: undrawn ones first, then redraws of drawn ones.
        for c in chosen:
            take = min(2, sizes[c] - ptr[c])
            got = queues[c][ptr[c] : ptr[c] + take]
            ptr[c] += take
            parts.append(got)
            if take < 2:
                parts.append(
                    rng.choice(np.setdiff1d(members[c], got), size=2 - take, replace=False)
                )

        # The remaining slots: undrawn rows of the sampled classes and filler, drawn uniformly
        # (a multivariate hypergeometric count per queue, then the head of each shuffled queue).
        free = batch_size - sum(len(p) for p in parts)
        pools = np.append(sizes[chosen] - ptr[chosen], len(filler) - filler_ptr)
        n_new = int(min(free, pools.sum()))
        if n_new > 0:
            counts = rng.multivariate_hypergeometric(pools, n_new)
            for c, count in zip(chosen, counts[:-1], strict=True):
                parts.append(queues[c][ptr[c] : ptr[c] + count])
                ptr[c] += count
            parts.append(filler_queue[filler_ptr : filler_ptr + counts[-1]])
            filler_ptr += int(counts[-1])
            free -= n_new
        if free > 0:
            # All undrawn rows of these classes are in; redraw some of their other rows.
            taken = np.concatenate(parts)
            candidates = np.setdiff1d(np.concatenate([members[c] for c in chosen]), taken)
            n_redraw = min(free, len(candidates))
            parts.append(rng.choice(candidates, size=n_redraw, replace=False))
            free -= n_redraw
        # Still short (tiny classes at the end of an epoch): add rows of other classes, at
        # least 2 of each so that no class appears once.
        for c in rng.permutation(np.setdiff1d(np.arange(n_classes), chosen)):
            if free < 2:
                break
            n_add = min(free, sizes[c])
            parts.append(rng.choice(members[c], size=n_add, replace=False))
            free -= n_add

        batches.append(rng.permutation(np.concatenate(parts)).astype(np.int64))
    return batches
