"""Projection heads: shapes, the paper preset's size, validation and the JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from adapt.train.heads import (
    HeadSpec,
    MultiHead,
    ProjectionHead,
    build_head,
    paper_spec,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def inputs(rows: int = 5, dims: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    dims = dims or {"text": 12, "image": 20}
    return {m: torch.randn(rows, d, generator=gen) for m, d in dims.items()}


# --- HeadSpec ---------------------------------------------------------------------------------


def test_head_spec_accepts_list_hidden_dims_as_tuple() -> None:
    spec = HeadSpec(in_dim=8, hidden_dims=[4, 3], out_dim=2)
    assert spec.hidden_dims == (4, 3)
    assert hash(spec) == hash(HeadSpec(in_dim=8, hidden_dims=(4, 3), out_dim=2))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"in_dim": 0}, "in_dim"),
        ({"in_dim": True}, "in_dim"),
        ({"hidden_dims": ()}, "hidden_dims"),
        ({"hidden_dims": (4, -1)}, "hidden_dims"),
        ({"out_dim": 2.5}, "out_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"normalize": "yes"}, "normalize"),
        ({"activation": "tanh"}, "['gelu', 'relu']"),
    ],
)
def test_head_spec_rejects_bad_fields(kwargs: dict, fragment: str) -> None:
    fields = {"in_dim": 8, "hidden_dims": (4,), "out_dim": 2} | kwargs
    with pytest.raises(ValueError, match="invalid HeadSpec") as err:
        HeadSpec(**fields)
    assert fragment in str(err.value)


def test_head_spec_reports_all_problems_at_once() -> None:
    with pytest.raises(ValueError) as err:
        HeadSpec(in_dim=-1, hidden_dims=(), out_dim=0)
    message = str(err.value)
    assert "in_dim" in message and "hidden_dims" in message and "out_dim" in message


def test_head_spec_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ValueError, match="unknown HeadSpec keys \\['width'\\]"):
        HeadSpec.from_dict({"in_dim": 8, "hidden_dims": [4], "out_dim": 2, "width": 3})
    with pytest.raises(ValueError, match="missing keys \\['out_dim'\\]"):
        HeadSpec.from_dict({"in_dim": 8, "hidden_dims": [4]})


# --- paper preset -----------------------------------------------------------------------------


def test_paper_spec_matches_reference_head() -> None:
    spec = paper_spec(768)
    assert spec == HeadSpec(in_dim=768, hidden_dims=(16,), out_dim=128)
    assert not spec.normalize and spec.dropout == 0.0 and spec.activation == "relu"
    head = ProjectionHead(spec)
    # Linear(768 -> 16) + Linear(16 -> 128), weights and biases.
    assert n_params(head) == 768 * 16 + 16 + 16 * 128 + 128 == 14_480
    kinds = [type(layer) for layer in head.net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear]


def test_paper_spec_hidden_width_is_half_the_input_below_32() -> None:
    assert paper_spec(20).hidden_dims == (10,)
    with pytest.raises(ValueError, match="at least 2"):
        paper_spec(1)


def test_build_head_paper_preset_per_modality() -> None:
    head = build_head(
        "per_modality", {"text": 768, "image": 768}, hidden_dims=(512,), out_dim=7, preset="paper"
    )
    assert head.out_dim == 256
    assert set(head.specs) == {"image", "text"}
    for key in ("image", "text"):
        assert head.specs[key] == paper_spec(768)
        assert n_params(head.heads[key]) == 14_480


def test_build_head_paper_preset_single() -> None:
    head = build_head("single", {"text": 768, "image": 768}, preset="paper")
    assert head.specs == {"all": paper_spec(1536)}
    assert head.out_dim == 128
    assert n_params(head) == 1536 * 16 + 16 + 16 * 128 + 128


def test_build_head_rejects_unknown_mode_and_preset() -> None:
    with pytest.raises(ValueError, match="valid presets are \\['paper'\\]"):
        build_head("single", {"text": 4}, preset="clip")
    with pytest.raises(ValueError, match="valid modes are \\['single', 'per_modality'\\]"):
        build_head("none", {"text": 4})
    with pytest.raises(ValueError, match="in_dims is empty"):
        build_head("single", {})


# --- ProjectionHead ---------------------------------------------------------------------------


def test_projection_head_layers_dropout_and_normalisation() -> None:
    spec = HeadSpec(
        in_dim=6, hidden_dims=(5, 4), out_dim=3, dropout=0.1, normalize=True, activation="gelu"
    )
    head = ProjectionHead(spec)
    kinds = [type(layer) for layer in head.net]
    assert kinds == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    z = head.eval()(torch.randn(7, 6))
    assert z.shape == (7, 3)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(7))


def test_projection_head_rejects_wrong_width() -> None:
    head = ProjectionHead(HeadSpec(in_dim=6, hidden_dims=(4,), out_dim=3))
    with pytest.raises(ValueError, match="width 6"):
        head(torch.randn(2, 5))


# --- MultiHead --------------------------------------------------------------------------------


def test_per_modality_output_is_sorted_concatenation_of_parts() -> None:
    head = build_head("per_modality", {"text": 12, "image": 20}, hidden_dims=(8,), out_dim=4)
    x = inputs()
    assert head.modalities == ("image", "text")
    z = head(x)
    parts = head.forward_parts(x)
    assert set(parts) == {"image", "text"}
    assert z.shape == (5, head.out_dim) and head.out_dim == 8
    torch.testing.assert_close(z, torch.cat([parts["image"], parts["text"]], dim=1))
    torch.testing.assert_close(parts["text"], head.heads["text"](x["text"]))


def test_per_modality_out_dim_is_sum_of_heads() -> None:
    specs = {
        "image": HeadSpec(in_dim=20, hidden_dims=(8,), out_dim=5),
        "text": HeadSpec(in_dim=12, hidden_dims=(8, 6), out_dim=3),
    }
    head = MultiHead("per_modality", {"text": 12, "image": 20}, specs)
    assert head.out_dim == 8
    assert head(inputs()).shape == (5, 8)


def test_single_mode_concatenates_inputs_in_sorted_order() -> None:
    head = build_head("single", {"text": 12, "image": 20}, hidden_dims=(8,), out_dim=4)
    x = inputs()
    parts = head.forward_parts(x)
    assert list(parts) == ["all"]
    expected = head.heads["all"](torch.cat([x["image"], x["text"]], dim=1))
    torch.testing.assert_close(parts["all"], expected)
    torch.testing.assert_close(head(x), expected)
    assert head.out_dim == 4


def test_multi_head_ignores_extra_inputs_and_casts_dtype() -> None:
    head = build_head("per_modality", {"text": 12, "image": 20}, hidden_dims=(8,), out_dim=4)
    x = inputs()
    half = {m: t.half() for m, t in x.items()} | {"label": torch.zeros(5)}
    z = head(half)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, head({m: t.half().float() for m, t in x.items()}))


def test_multi_head_rejects_bad_inputs() -> None:
    head = build_head("per_modality", {"text": 12, "image": 20}, hidden_dims=(8,), out_dim=4)
    x = inputs()
    with pytest.raises(ValueError, match="lack modalities \\['text'\\]"):
        head({"image": x["image"]})
    with pytest.raises(ValueError, match="text embeddings must have shape \\[rows, 12\\]"):
        head({"image": x["image"], "text": torch.randn(5, 11)})
    with pytest.raises(ValueError, match="different row counts"):
        head({"image": x["image"], "text": torch.randn(4, 12)})


def test_multi_head_rejects_inconsistent_specs() -> None:
    spec = HeadSpec(in_dim=12, hidden_dims=(4,), out_dim=2)
    with pytest.raises(ValueError, match="one spec per modality"):
        MultiHead("per_modality", {"text": 12, "image": 20}, {"text": spec})
    with pytest.raises(ValueError, match="in_dim 12 but its embeddings are 20 wide"):
        MultiHead("per_modality", {"text": 12, "image": 20}, {"text": spec, "image": spec})
    with pytest.raises(ValueError, match='keyed "all"'):
        MultiHead("single", {"text": 12}, {"text": spec})
    with pytest.raises(ValueError, match="concatenate to 32"):
        MultiHead("single", {"text": 12, "image": 20}, {"all": spec})
    with pytest.raises(ValueError, match="without '.'"):
        build_head("per_modality", {"text.v2": 12})


@pytest.mark.parametrize("mode", ["single", "per_modality"])
def test_config_round_trip_through_json(mode: str) -> None:
    head = build_head(
        mode,
        {"text": 12, "image": 20},
        hidden_dims=(8, 6),
        out_dim=4,
        dropout=0.2,
        normalize=True,
        activation="gelu",
    )
    config = json.loads(json.dumps(head.to_config()))
    rebuilt = MultiHead.from_config(config)
    assert rebuilt.to_config() == head.to_config()
    assert rebuilt.specs == head.specs
    assert rebuilt.modalities == head.modalities and rebuilt.out_dim == head.out_dim
    rebuilt.load_state_dict(head.state_dict())
    x = inputs()
    torch.testing.assert_close(rebuilt.eval()(x), head.eval()(x))


def test_from_config_rejects_unknown_keys() -> None:
    config = build_head("single", {"text": 4}, hidden_dims=(2,), out_dim=2).to_config()
    with pytest.raises(ValueError, match="exactly the keys"):
        MultiHead.from_config(config | {"weights": "x"})


def test_gradients_reach_every_parameter() -> None:
    head = build_head("per_modality", {"text": 12, "image": 20}, hidden_dims=(8,), out_dim=4)
    head(inputs()).pow(2).sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
