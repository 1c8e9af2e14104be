"""Contrastive losses against naive per-pair / per-anchor references, and the batch sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapt.train.losses import (
    LOSSES,
    NoPositivePairError,
    class_balanced_indices,
    contrastive_loss,
    count_positive_pairs,
    cross_modal_loss,
    pairwise_bce_loss,
    positive_matrix,
    supcon_loss,
    triplet_loss,
)

ATOL = 1e-5


# --- fixtures ---------------------------------------------------------------------------------


def embeddings(rows: int, dim: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=gen, dtype=torch.float64)


def int_labels(rows: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (rows,), generator=gen)
    labels[:2] = 7  # at least one positive pair whatever the draw
    return labels


def multi_hot(rows: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(rows, 4, generator=gen) < 0.4).float()
    labels[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    labels[1] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    labels[2] = 0.0  # a row without labels
    return labels


# Each case: (z, labels, multilabel_rule); B between 6 and 10.
CASES = [
    pytest.param(6, "int", "overlap", id="int-B6"),
    pytest.param(10, "int", "overlap", id="int-B10"),
    pytest.param(8, "multi", "overlap", id="multi-overlap-B8"),
    pytest.param(9, "multi", "jaccard", id="multi-jaccard-B9"),
]


def make_case(rows: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    labels = int_labels(rows, seed) if kind == "int" else multi_hot(rows, seed)
    return embeddings(rows, seed=seed), labels


# --- naive references -------------------------------------------------------------------------


def ref_target(labels: torch.Tensor, i: int, j: int, rule: str) -> float:
    if labels.dim() == 1:
        return float(labels[i] == labels[j])
    a = {k for k in range(labels.shape[1]) if labels[i, k] > 0}
    b = {k for k in range(labels.shape[1]) if labels[j, k] > 0}
    if rule == "overlap":
        return float(bool(a & b))
    return len(a & b) / len(a | b) if a | b else 0.0


def dot(z: torch.Tensor, i: int, j: int) -> float:
    return sum(float(z[i, k]) * float(z[j, k]) for k in range(z.shape[1]))


def unit(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=1, keepdim=True)


def ref_pairwise_bce(z, labels, temperature, normalize, rule) -> float:
    z = unit(z) if normalize else z
    total, pairs = 0.0, 0
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            x = dot(z, i, j) / temperature
            t = ref_target(labels, i, j, rule)
            # -(t log s(x) + (1 - t) log(1 - s(x))) = softplus(x) - t x, written to not overflow
            softplus = max(x, 0.0) + math.log1p(math.exp(-abs(x)))
            total += softplus - t * x
            pairs += 1
    return total / pairs


def ref_supcon(z, labels, temperature, rule) -> float:
    z = unit(z)
    n = len(z)
    per_anchor = []
    for i in range(n):
        others = [k for k in range(n) if k != i]
        denominator = sum(math.exp(dot(z, i, k) / temperature) for k in others)
        weights = {p: ref_target(labels, i, p, rule) for p in others}
        if sum(weights.values()) == 0:
            continue
        loss = 0.0
        for p, w in weights.items():
            if w > 0:
                loss += -w * math.log(math.exp(dot(z, i, p) / temperature) / denominator)
        per_anchor.append(loss / sum(weights.values()))
    return sum(per_anchor) / len(per_anchor)


def ref_triplet(z, labels, margin, normalize) -> float:
    z = unit(z) if normalize else z
    n = len(z)

    def dist(i: int, j: int) -> float:
        return math.sqrt(sum((float(z[i, k]) - float(z[j, k])) ** 2 for k in range(z.shape[1])))

    active = []
    for a in range(n):
        for p in range(n):
            for q in range(n):
                if len({a, p, q}) < 3:
                    continue
                if (
                    ref_target(labels, a, p, "overlap") > 0
                    and ref_target(labels, a, q, "overlap") == 0
                ):
                    loss = max(0.0, dist(a, p) - dist(a, q) + margin)
                    if loss > 0:
                        active.append(loss)
    return sum(active) / len(active) if active else 0.0


def ref_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> float:
    a, b = unit(a), unit(b)
    n = len(a)
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            logits = [
                sum(float(x[i, k]) * float(y[j, k]) for k in range(x.shape[1])) / temperature
                for j in range(n)
            ]
            total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / (2 * n)


# --- positive matrix --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["overlap", "jaccard"])
def test_positive_matrix_matches_set_definition(rule: str) -> None:
    for labels in (int_labels(9), multi_hot(9)):
        pos = positive_matrix(labels, rule)
        assert pos.shape == (9, 9) and pos.dtype == torch.float32
        for i in range(9):
            for j in range(9):
                assert pos[i, j].item() == pytest.approx(ref_target(labels, i, j, rule), abs=1e-7)


def test_jaccard_of_two_empty_label_sets_is_zero() -> None:
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    pos = positive_matrix(labels, "jaccard")
    assert pos[0, 1] == 0.0 and pos[0, 0] == 0.0
    assert pos[2, 3].item() == pytest.approx(1 / 3)


def test_positive_matrix_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="integer class ids"):
        positive_matrix(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        positive_matrix(torch.tensor([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="valid rules are \\['overlap', 'jaccard'\\]"):
        positive_matrix(torch.tensor([0, 1]), "cosine")
    with pytest.raises(ValueError, match="multi-hot"):
        positive_matrix(torch.zeros(2, 2, 2))


def test_count_positive_pairs() -> None:
    assert count_positive_pairs(torch.tensor([0, 0, 1, 1, 1, 2])) == 1 + 3
    assert count_positive_pairs(torch.tensor([0, 1, 2])) == 0
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    assert count_positive_pairs(labels, "overlap") == count_positive_pairs(labels, "jaccard") == 2


# --- losses against the references ------------------------------------------------------------


@pytest.mark.parametrize("rows, kind, rule", CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_pairwise_bce_matches_reference(rows: int, kind: str, rule: str, normalize: bool) -> None:
    z, labels = make_case(rows, kind)
    loss = pairwise_bce_loss(z, labels, temperature=0.5, normalize=normalize, multilabel_rule=rule)
    expected = ref_pairwise_bce(z, labels, 0.5, normalize, rule)
    assert loss.item() == pytest.approx(expected, abs=ATOL)


@pytest.mark.parametrize("rows, kind, rule", CASES)
@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_supcon_matches_reference(rows: int, kind: str, rule: str, temperature: float) -> None:
    z, labels = make_case(rows, kind)
    loss = supcon_loss(z, labels, temperature=temperature, multilabel_rule=rule)
    assert loss.item() == pytest.approx(ref_supcon(z, labels, temperature, rule), abs=ATOL)


@pytest.mark.parametrize("rows, kind, rule", CASES)
@pytest.mark.parametrize("normalize", [True, False])
def test_triplet_matches_reference(rows: int, kind: str, rule: str, normalize: bool) -> None:
    z, labels = make_case(rows, kind)
    loss = triplet_loss(z, labels, margin=0.3, normalize=normalize)
    assert loss.item() == pytest.approx(ref_triplet(z, labels, 0.3, normalize), abs=ATOL)


def test_triplet_is_exactly_zero_only_when_every_margin_is_met() -> None:
    # Two tight, far-apart clusters: every triplet meets a small margin.
    z = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [0.01, 0.99]], requires_grad=True)
    loss = triplet_loss(z, torch.tensor([0, 0, 1, 1]), margin=0.1)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert torch.isfinite(z.grad).all()


def test_triplet_uses_chunks_for_large_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    z, labels = make_case(10, "int")
    whole = triplet_loss(z, labels)
    monkeypatch.setattr(
        "adapt.train.losses._TRIPLET_CHUNK_ENTRIES", 3 * 10 * 10
    )  # 3 anchors a chunk
    assert triplet_loss(z, labels).item() == pytest.approx(whole.item(), abs=1e-12)


@pytest.mark.parametrize("rows", [6, 9])
def test_cross_modal_matches_reference(rows: int) -> None:
    parts = {"text": embeddings(rows, seed=1), "image": embeddings(rows, seed=2)}
    loss = cross_modal_loss(parts, temperature=0.2)
    expected = ref_info_nce(parts["image"], parts["text"], 0.2)
    assert loss.item() == pytest.approx(expected, abs=ATOL)


def test_cross_modal_averages_over_pairs_of_modalities() -> None:
    parts = {name: embeddings(7, seed=seed) for seed, name in enumerate(["a", "b", "c"])}
    expected = np.mean(
        [
            ref_info_nce(parts["a"], parts["b"], 0.1),
            ref_info_nce(parts["a"], parts["c"], 0.1),
            ref_info_nce(parts["b"], parts["c"], 0.1),
        ]
    )
    assert cross_modal_loss(parts).item() == pytest.approx(expected, abs=ATOL)


def test_cross_modal_rejects_bad_parts() -> None:
    with pytest.raises(ValueError, match="per_modality"):
        cross_modal_loss({"all": embeddings(4)})
    with pytest.raises(ValueError, match="same out_dim"):
        cross_modal_loss({"text": embeddings(4, dim=3), "image": embeddings(4, dim=5)})
    with pytest.raises(ValueError, match="same shape"):
        cross_modal_loss({"text": embeddings(4), "image": embeddings(5)})
    with pytest.raises(NoPositivePairError, match="at least 2 rows"):
        cross_modal_loss({"text": embeddings(1), "image": embeddings(1)})


# --- gradients and stability ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("kind, rule", [("int", "overlap"), ("multi", "jaccard")])
def test_gradients_flow(name: str, kind: str, rule: str) -> None:
    z, labels = make_case(8, kind)
    z = z.float().requires_grad_(True)
    kwargs = {} if name == "triplet" else {"multilabel_rule": rule}
    loss = contrastive_loss(name, z, labels, **kwargs)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_cross_modal_gradients_flow() -> None:
    a = embeddings(6, seed=1).requires_grad_(True)
    b = embeddings(6, seed=2).requires_grad_(True)
    cross_modal_loss({"text": a, "image": b}).backward()
    for t in (a, b):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_stay_finite_on_extreme_inputs(name: str) -> None:
    # Huge, duplicated rows and a tiny temperature: logits of about 1e6.
    z = torch.cat([torch.full((3, 4), 100.0), -torch.full((3, 4), 100.0)]).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    kwargs = {} if name == "triplet" else {"temperature": 0.01}
    loss = contrastive_loss(name, z, labels, **kwargs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_supcon_float16_masking_does_not_overflow() -> None:
    z = embeddings(6).half()
    loss = supcon_loss(z, int_labels(6), temperature=0.05)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(
        supcon_loss(z.double(), int_labels(6), 0.05).item(), rel=0.02
    )


# --- no-positive guard ------------------------------------------------------------------------


def test_supcon_and_triplet_raise_without_positive_pairs() -> None:
    z, labels = embeddings(5), torch.arange(5)
    for name in ("supcon", "triplet"):
        with pytest.raises(NoPositivePairError, match="class-balanced sampler"):
            contrastive_loss(name, z, labels)
    disjoint = torch.eye(4)
    for rule in ("overlap", "jaccard"):
        with pytest.raises(NoPositivePairError):
            supcon_loss(embeddings(4), disjoint, multilabel_rule=rule)
    with pytest.raises(NoPositivePairError):
        triplet_loss(embeddings(4), disjoint)
    assert issubclass(NoPositivePairError, ValueError)


def test_pairwise_bce_on_all_negative_batch_is_a_nonzero_loss() -> None:
    z = embeddings(5).requires_grad_(True)
    loss = pairwise_bce_loss(z, torch.arange(5))
    assert loss.item() > 0 and loss.item() == pytest.approx(
        ref_pairwise_bce(z.detach(), torch.arange(5), 0.1, False, "overlap"), abs=ATOL
    )
    loss.backward()
    assert z.grad.abs().sum() > 0


def test_triplet_raises_without_negatives() -> None:
    with pytest.raises(NoPositivePairError, match="both a positive and a negative"):
        triplet_loss(embeddings(4), torch.zeros(4, dtype=torch.long))


def test_supcon_on_single_class_batch_is_nonzero() -> None:
    loss = supcon_loss(embeddings(4), torch.zeros(4, dtype=torch.long))
    assert loss.item() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_single_row_batch_raises(name: str) -> None:
    with pytest.raises(NoPositivePairError, match="at least 2 rows"):
        contrastive_loss(name, embeddings(1), torch.tensor([0]))


def test_anchors_without_positives_are_left_out_of_supcon() -> None:
    z, labels = embeddings(6), torch.tensor([0, 0, 1, 2, 3, 4])
    assert supcon_loss(z, labels).item() == pytest.approx(ref_supcon(z, labels, 0.1, "overlap"))


# --- dispatch and validation ------------------------------------------------------------------


def test_contrastive_loss_dispatch() -> None:
    z, labels = make_case(8, "int")
    assert contrastive_loss("supcon", z, labels, temperature=0.3).item() == pytest.approx(
        supcon_loss(z, labels, 0.3).item()
    )
    with pytest.raises(
        ValueError, match="valid losses are \\['pairwise_bce', 'supcon', 'triplet'\\]"
    ):
        contrastive_loss("infonce", z, labels)
    with pytest.raises(ValueError, match="does not take \\['margin'\\]"):
        contrastive_loss("supcon", z, labels, margin=0.2)


def test_losses_validate_arguments() -> None:
    z, labels = make_case(6, "int")
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        supcon_loss(z, labels, temperature=0.0)
    with pytest.raises(ValueError, match="margin"):
        triplet_loss(z, labels, margin=-1.0)
    with pytest.raises(ValueError, match="one label"):
        pairwise_bce_loss(z, labels[:5])
    with pytest.raises(ValueError, match="shape \\[B, D\\]"):
        supcon_loss(z[0], labels)
    with pytest.raises(ValueError, match="integer class ids"):
        supcon_loss(z, labels.float())


# --- class-balanced sampler -------------------------------------------------------------------


def check_batches(labels: np.ndarray, batches: list[np.ndarray]) -> None:
    """Every batch: no repeated row, and every class in it (that has 2+ rows overall) twice."""
    sizes = np.bincount(labels)
    for batch in batches:
        assert batch.dtype == np.int64
        assert len(np.unique(batch)) == len(batch)
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert (counts[sizes[classes] >= 2] >= 2).all()


def test_sampler_batches_hold_pairs_and_cover_every_row() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=500, p=[0.6, 0.2, 0.1, 0.07, 0.03])
    batches = class_balanced_indices(labels, batch_size=32, seed=3)
    check_batches(labels, batches)
    drawn = np.concatenate(batches)
    assert set(drawn) == set(range(500))
    assert len(drawn) <= 1.1 * 500  # about once per epoch
    assert all(len(b) == 32 for b in batches[:-1])
    assert all(len(np.unique(labels[b])) >= 2 for b in batches)


def test_sampler_is_deterministic_given_seed() -> None:
    labels = np.repeat(np.arange(6), 20)
    first = class_balanced_indices(labels, 16, seed=7)
    again = class_balanced_indices(labels, 16, seed=7)
    other = class_balanced_indices(labels, 16, seed=8)
    assert len(first) == len(again) and all(
        np.array_equal(a, b) for a, b in zip(first, again, strict=True)
    )
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_sampler_respects_classes_per_batch() -> None:
    labels = np.repeat(np.arange(10), 12)
    batches = class_balanced_indices(labels, 24, classes_per_batch=3, seed=0)
    check_batches(labels, batches)
    assert all(2 <= len(np.unique(labels[b])) <= 3 for b in batches)
    assert set(np.concatenate(batches)) == set(range(120))


def test_sampler_keeps_singleton_classes_as_extra_rows() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2, 3, 4])  # classes 2, 3 and 4 have one row each
    batches = class_balanced_indices(labels, 8, seed=1)
    check_batches(labels, batches)
    assert set(np.concatenate(batches)) == set(range(23))


@pytest.mark.parametrize("batch_size", [2, 3, 4])
def test_sampler_small_batches_terminate(batch_size: int) -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])  # row 5 is the only row of class 2
    batches = class_balanced_indices(labels, batch_size, seed=0)
    check_batches(labels, batches)
    covered = set(np.concatenate(batches))
    # With 2-row batches a lone row has no slot to go in.
    assert covered == (set(range(5)) if batch_size == 2 else set(range(6)))


def test_sampler_fixed_epoch_length_with_num_rows() -> None:
    labels = np.repeat(np.arange(4), 10)
    batches = class_balanced_indices(labels, 8, seed=0, num_rows=100)
    assert len(batches) == math.ceil(100 / 8)
    check_batches(labels, batches)
    counts = np.bincount(np.concatenate(batches), minlength=40)
    assert counts.min() >= 2  # 100 rows from 40: a second pass began


def test_sampler_multi_hot_rows_have_a_partner() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((120, 4)) < 0.35).astype(np.int64)
    labels[:5] = 0  # rows without labels join as extra rows
    batches = class_balanced_indices(labels, 16, seed=2)
    assert set(np.concatenate(batches)) == set(range(120))
    for batch in batches:
        assert len(np.unique(batch)) == len(batch)
        y = torch.as_tensor(labels[batch])
        pos = positive_matrix(y, "overlap").fill_diagonal_(0)
        labelled = y.sum(dim=1) > 0
        assert (pos.sum(dim=1)[labelled] > 0).all()
    # And the losses accept the batches without a no-positive error.
    z = embeddings(len(batches[0]))
    assert torch.isfinite(supcon_loss(z, torch.as_tensor(labels[batches[0]])))


def test_sampler_rejects_bad_arguments() -> None:
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="batch_size"):
        class_balanced_indices(labels, 1)
    with pytest.raises(ValueError, match="classes_per_batch"):
        class_balanced_indices(labels, 4, classes_per_batch=3)
    with pytest.raises(ValueError, match="num_rows"):
        class_balanced_indices(labels, 4, num_rows=0)
    with pytest.raises(ValueError, match="integer class ids"):
        class_balanced_indices(labels.astype(float), 4)
    with pytest.raises(ValueError, match="no class has two rows"):
        class_balanced_indices(np.array([0, 1, 2]), 4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        class_balanced_indices(np.array([[0, 2], [1, 0]]), 4)
