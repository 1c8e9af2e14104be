"""Projection heads: the small trainable networks that sit on top of frozen embeddings.

The train stage learns one of these per task. It is pure torch (no Ray, no storage) so that the
same module runs in a unit test, in a Ray worker and at inference time. A head is described by
plain data (`HeadSpec`, and `MultiHead.to_config()`) so that it can be saved as JSON next to its
weights and rebuilt without the training code.

Two layouts from the paper are supported:
- "single": one head over the concatenation of all modalities' embeddings;
- "per_modality": one head per modality, outputs concatenated (the layout that gave the largest
  gains in the paper and in our multi-class runs).
The paper's exact head is available as the "paper" preset; it is meant for reproduction, not as the
default (its 16-wide hidden layer lost to raw embeddings on a multi-class task here).

What is fitted on the training rows and travels with the weights lives here too: `InputNorm`
(per-modality input scaling) and the skip branch's principal components (`fit_skip`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
MODES = ("single", "per_modality")
PRESETS = ("paper",)

# Key of the only head (and of the only part from `forward_parts`) in single mode.
SINGLE_KEY = "all"

# The reference code's head: hidden width min(d // 2, 16), 128 outputs.
PAPER_MAX_HIDDEN = 16
PAPER_OUT_DIM = 128


def _is_positive_int(value: Any) -> bool:
    # bool is an int subclass; True as a layer width is a bug, not a width of 1.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class HeadSpec:
    """Shape of one projection head: in_dim -> hidden_dims... -> out_dim.

    `hidden_dims` holds one width per hidden layer (at least one); `dropout` is applied after each
    hidden activation; `normalize` L2-normalises the output rows.
    """

    in_dim: int
    hidden_dims: tuple[int, ...]
    out_dim: int
    dropout: float = 0.0
    normalize: bool = False
    activation: str = "relu"

    def __post_init__(self) -> None:
        # Lists come back from JSON; store a tuple so the spec stays hashable and comparable.
        if isinstance(self.hidden_dims, list):
            object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        problems = []
        if not _is_positive_int(self.in_dim):
            problems.append(f"in_dim must be a positive int, got {self.in_dim!r}")
        if (
            not isinstance(self.hidden_dims, tuple)
            or not self.hidden_dims
            or not all(_is_positive_int(h) for h in self.hidden_dims)
        ):
            problems.append(
                "hidden_dims must be a non-empty tuple of positive ints (one width per hidden "
                f"layer, e.g. (256,)), got {self.hidden_dims!r}"
            )
        if not _is_positive_int(self.out_dim):
            problems.append(f"out_dim must be a positive int, got {self.out_dim!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            problems.append(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not isinstance(self.normalize, bool):
            problems.append(f"normalize must be true or false, got {self.normalize!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if problems:
            raise ValueError("invalid HeadSpec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (hidden_dims as a list)."""
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadSpec:
        """Inverse of `to_dict`; unknown keys are rejected with the list of valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown HeadSpec keys {unknown}; valid keys are {valid}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and _required(f)]
        if missing:
            raise ValueError(f"HeadSpec is missing keys {missing}")
        return cls(**d)


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def paper_spec(in_dim: int) -> HeadSpec:
    """The authors' head: Linear(d -> h) -> ReLU -> Linear(h -> 128), h = min(d // 2, 16).

    No dropout, no normalisation. For d = 768 that is 768*16+16 + 16*128+128 = 14,480 parameters.
    """
    if not _is_positive_int(in_dim) or in_dim < 2:
        raise ValueError(f"paper_spec needs an input width of at least 2, got {in_dim!r}")
    hidden = min(in_dim // 2, PAPER_MAX_HIDDEN)
    return HeadSpec(in_dim=in_dim, hidden_dims=(hidden,), out_dim=PAPER_OUT_DIM)


class ProjectionHead(nn.Module):
    """Linear -> activation -> [dropout] -> ... -> Linear, optionally L2-normalised."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        if not isinstance(spec, HeadSpec):
            raise ValueError(f"ProjectionHead needs a HeadSpec, got {type(spec).__name__}")
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.in_dim
        for hidden in spec.hidden_dims:
            layers.append(nn.Linear(width, hidden))
            layers.append(ACTIVATIONS[spec.activation]())
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(nn.Linear(width, spec.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.spec.in_dim:
            raise ValueError(
                f"head expects inputs of width {self.spec.in_dim}, got shape {tuple(x.shape)}: "
                "was the head built for another encoder?"
            )
        z = self.net(x)
        if self.spec.normalize:
            z = F.normalize(z, dim=-1)
        return z


def _check_modality_names(names: Any) -> None:
    for name in names:
        # nn.ModuleDict rejects "." in keys; empty names would make unreadable configs.
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"modality names must be non-empty strings without '.', got {name!r}")


class MultiHead(nn.Module):
    """The trainable part of the train stage: maps each row's embeddings to one projection.

    `in_dims` maps modality name -> embedding width. Modalities are always handled in sorted name
    order, both when concatenating inputs (single mode) and outputs (per_modality mode), so that
    the output layout does not depend on dict order.

    mode="single": `specs` is {"all": spec} with spec.in_dim == sum(in_dims.values()).
    mode="per_modality": `specs` has one spec per modality with spec.in_dim == in_dims[modality];
    the output is the concatenation of the heads' outputs, width sum of their out_dims.
    """

    def __init__(
        self, mode: str, in_dims: dict[str, int], specs: dict[str, HeadSpec], skip_dim: int = 0
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(
                f"unknown head mode {mode!r}; valid modes are {list(MODES)} "
                "(the raw-embedding baseline needs no head)"
            )
        if not in_dims:
            raise ValueError("in_dims is empty: give the embedding width of each modality")
        _check_modality_names(in_dims)
        for name, dim in in_dims.items():
            if not _is_positive_int(dim):
                raise ValueError(f"in_dims[{name!r}] must be a positive int, got {dim!r}")
        for key, spec in specs.items():
            if not isinstance(spec, HeadSpec):
                raise ValueError(f"specs[{key!r}] must be a HeadSpec, got {type(spec).__name__}")

        modalities = tuple(sorted(in_dims))
        if mode == "single":
            if set(specs) != {SINGLE_KEY}:
                raise ValueError(
                    f'single mode takes exactly one spec keyed "{SINGLE_KEY}", got {sorted(specs)}'
                )
            total = sum(in_dims.values())
            if specs[SINGLE_KEY].in_dim != total:
                raise ValueError(
                    f"single head in_dim is {specs[SINGLE_KEY].in_dim} but the modalities "
                    f"{dict(sorted(in_dims.items()))} concatenate to {total}"
                )
        else:
            if set(specs) != set(modalities):
                raise ValueError(
                    f"per_modality mode needs one spec per modality {list(modalities)}, "
                    f"got specs for {sorted(specs)}"
                )
            for name in modalities:
                if specs[name].in_dim != in_dims[name]:
                    raise ValueError(
                        f"spec for {name!r} has in_dim {specs[name].in_dim} but its embeddings "
                        f"are {in_dims[name]} wide"
                    )

        total = sum(in_dims.values())
        if (
            isinstance(skip_dim, bool)
            or not isinstance(skip_dim, int)
            or not 0 <= skip_dim <= total
        ):
            raise ValueError(
                f"skip_dim must be an int from 0 to the input width {total}, got {skip_dim!r}"
            )

        self.mode = mode
        self._in_dims = {name: in_dims[name] for name in modalities}
        self.heads = nn.ModuleDict({key: ProjectionHead(specs[key]) for key in sorted(specs)})
        # The skip branch: a fixed linear map of the (normalised, concatenated) inputs appended to
        # the output, (x - skip_mean) @ skip_weight. It is not trained by the loss; `set_skip`
        # fills it (adapt.train.fit.fit_skip: principal components of the training rows). Buffers,
        # so that they travel in the state dict with the weights.
        self.skip_dim = skip_dim
        if skip_dim:
            self.register_buffer("skip_mean", torch.zeros(total))
            self.register_buffer("skip_weight", torch.zeros(total, skip_dim))

    @property
    def modalities(self) -> tuple[str, ...]:
        """Input modality names, in the (sorted) order used for concatenation."""
        return tuple(self._in_dims)

    @property
    def in_dims(self) -> dict[str, int]:
        return dict(self._in_dims)

    @property
    def specs(self) -> dict[str, HeadSpec]:
        return {key: head.spec for key, head in self.heads.items()}

    @property
    def out_dim(self) -> int:
        """Width of `forward`'s output: the sum of the heads' out_dims, plus the skip branch."""
        return sum(head.spec.out_dim for head in self.heads.values()) + self.skip_dim

    def set_skip(self, mean: Any, weight: Any) -> None:
        """Fill the skip branch: `mean` [input width], `weight` [input width, skip_dim]."""
        if not self.skip_dim:
            raise ValueError("this head has no skip branch (skip_dim is 0)")
        mean = torch.as_tensor(mean, dtype=self.skip_mean.dtype)
        weight = torch.as_tensor(weight, dtype=self.skip_weight.dtype)
        if mean.shape != self.skip_mean.shape or weight.shape != self.skip_weight.shape:
            raise ValueError(
                f"skip mean {tuple(mean.shape)} and weight {tuple(weight.shape)} must have shapes "
                f"{tuple(self.skip_mean.shape)} and {tuple(self.skip_weight.shape)}"
            )
        with torch.no_grad():
            self.skip_mean.copy_(mean)
            self.skip_weight.copy_(weight)

    def _inputs_in_order(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(
                f"inputs lack modalities {missing}; this head takes {list(self.modalities)} "
                f"and got {sorted(inputs)}"
            )
        xs = [inputs[m] for m in self.modalities]
        for m, x in zip(self.modalities, xs, strict=True):
            if x.dim() != 2 or x.shape[1] != self._in_dims[m]:
                raise ValueError(
                    f"{m} embeddings must have shape [rows, {self._in_dims[m]}], "
                    f"got {tuple(x.shape)}"
                )
        rows = {m: x.shape[0] for m, x in zip(self.modalities, xs, strict=True)}
        if len(set(rows.values())) > 1:
            raise ValueError(f"modalities have different row counts: {rows}")
        # Embeddings are often stored as float16 and loaded on the CPU; the head computes in its
        # own dtype, on its own device.
        param = next(self.parameters())
        return [x.to(device=param.device, dtype=param.dtype) for x in xs]

    def forward_parts(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Projections before the final concatenation: {modality: z_m}, or {"all": z} in single
        mode. Keys of `inputs` beyond the head's modalities are ignored; inputs are moved to the
        head's device and dtype."""
        return self._parts(self._inputs_in_order(inputs))

    def _parts(self, xs: list[Tensor]) -> dict[str, Tensor]:
        if self.mode == "single":
            return {SINGLE_KEY: self.heads[SINGLE_KEY](torch.cat(xs, dim=1))}
        return {m: self.heads[m](x) for m, x in zip(self.modalities, xs, strict=True)}

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        """[rows, out_dim] projections; per_modality outputs are concatenated in sorted order."""
        xs = self._inputs_in_order(inputs)
        parts = self._parts(xs)
        out = [parts[key] for key in sorted(parts)]
        if self.skip_dim:
            out.append((torch.cat(xs, dim=1) - self.skip_mean) @ self.skip_weight)
        return torch.cat(out, dim=1)

    def to_config(self) -> dict[str, Any]:
        """JSON-ready description of the architecture (weights go in the state dict)."""
        config = {
            "mode": self.mode,
            "in_dims": dict(self._in_dims),
            "specs": {key: spec.to_dict() for key, spec in self.specs.items()},
        }
        if self.skip_dim:
            config["skip_dim"] = self.skip_dim
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MultiHead:
        """Rebuild a head (with fresh weights) from `to_config()`'s output."""
        valid = ["in_dims", "mode", "specs"]
        keys = sorted(k for k in config if k != "skip_dim") if isinstance(config, dict) else None
        if keys != valid:
            got = sorted(config) if isinstance(config, dict) else type(config).__name__
            raise ValueError(
                f"head config must have exactly the keys {valid} (and optionally skip_dim), "
                f"got {got}"
            )
        specs = {key: HeadSpec.from_dict(spec) for key, spec in config["specs"].items()}
        return cls(config["mode"], dict(config["in_dims"]), specs, config.get("skip_dim", 0))


def build_head(
    mode: str,
    in_dims: dict[str, int],
    hidden_dims: tuple[int, ...] = (256,),
    out_dim: int = 128,
    dropout: float = 0.0,
    normalize: bool = True,
    activation: str = "relu",
    preset: str | None = None,
    skip_dim: int = 0,
) -> MultiHead:
    """Build a MultiHead from flat settings.

    per_modality: each modality gets its own head of `out_dim` outputs (total width
    out_dim * modalities). single: one head over the concatenated embeddings.
    preset="paper" replaces the shape settings with `paper_spec` for every head (128 outputs
    each; hidden_dims, out_dim, dropout, normalize and activation are then ignored).

    The defaults (hidden 256, L2-normalised outputs) are the setting that beat raw embeddings on
    a multi-class task (the demo corpus), where the paper's preset lost to them.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(
            f"unknown head preset {preset!r}; valid presets are {list(PRESETS)} or None"
        )
    if mode not in MODES:
        raise ValueError(f"unknown head mode {mode!r}; valid modes are {list(MODES)}")
    if not in_dims:
        raise ValueError("in_dims is empty: give the embedding width of each modality")

    def make(in_dim: int) -> HeadSpec:
        if preset == "paper":
            return paper_spec(in_dim)
        return HeadSpec(
            in_dim=in_dim,
            hidden_dims=tuple(hidden_dims),
            out_dim=out_dim,
            dropout=dropout,
            normalize=normalize,
            activation=activation,
        )

    for name, dim in in_dims.items():
        if not _is_positive_int(dim):
            raise ValueError(f"in_dims[{name!r}] must be a positive int, got {dim!r}")
    if mode == "single":
        specs = {SINGLE_KEY: make(sum(in_dims.values()))}
    else:
        specs = {name: make(dim) for name, dim in in_dims.items()}
    return MultiHead(mode, in_dims, specs, 0 if preset == "paper" else skip_dim)


# -- input normalisation and the skip branch: fitted on the training rows, stored with the head --


# Floor under a dimension's standard deviation: a constant dimension (std 0) is centred to 0
# instead of divided by 0. Extracted embeddings have per-dimension std around 1e-2 to 1e1.
MIN_STD = 1e-6


@dataclass(frozen=True)
class InputNorm:
    """Per-modality input scaling: x -> (x - shift) * scale ("standardize"), x / |x| ("l2"), or x.

    Fitted on the training rows only and stored with the head, so that inference scales inputs
    exactly as training did.
    """

    kind: str = "none"
    shift: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32 [d]
    scale: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> float32 [d]

    KINDS = ("none", "l2", "standardize")

    @staticmethod
    def moments(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per modality [3, d] float64: row count, sum and sum of squares (summable over shards)."""
        out = {}
        for m, x in inputs.items():
            x64 = np.asarray(x, dtype=np.float64)
            count = np.full(x64.shape[1], len(x64), dtype=np.float64)
            out[m] = np.stack([count, x64.sum(axis=0), (x64 * x64).sum(axis=0)])
        return out

    @classmethod
    def from_moments(cls, kind: str, moments: dict[str, np.ndarray]) -> InputNorm:
        if kind not in cls.KINDS:
            raise ValueError(f"unknown input_norm {kind!r}; valid kinds are {list(cls.KINDS)}")
        if kind != "standardize":
            return cls(kind)
        shift, scale = {}, {}
        for m, (count, total, squares) in moments.items():
            n = max(float(count[0]), 1.0)
            mean = total / n
            var = np.maximum(squares / n - mean * mean, 0.0)
            shift[m] = mean.astype(np.float32)
            scale[m] = (1.0 / np.maximum(np.sqrt(var), MIN_STD)).astype(np.float32)
        return cls(kind, shift, scale)

    @classmethod
    def fit(cls, kind: str, inputs: dict[str, np.ndarray]) -> InputNorm:
        return cls.from_moments(kind, cls.moments(inputs) if kind == "standardize" else {})

    def apply(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.kind == "none":
            return inputs
        if self.kind == "l2":
            return {m: F.normalize(x, dim=1) for m, x in inputs.items()}
        out = {}
        for m, x in inputs.items():
            if m not in self.shift:
                raise ValueError(f"input normalisation has no statistics for modality {m!r}")
            shift = torch.as_tensor(self.shift[m], device=x.device, dtype=x.dtype)
            scale = torch.as_tensor(self.scale[m], device=x.device, dtype=x.dtype)
            out[m] = (x - shift) * scale
        return out

    def to_tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor dict for safetensors."""
        out = {}
        for m in sorted(self.shift):
            out[f"input_norm.{m}.shift"] = torch.from_numpy(np.ascontiguousarray(self.shift[m]))
            out[f"input_norm.{m}.scale"] = torch.from_numpy(np.ascontiguousarray(self.scale[m]))
        return out

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict[str, Tensor]) -> InputNorm:
        shift, scale = {}, {}
        for name, t in tensors.items():
            if not name.startswith("input_norm."):
                continue
            _, m, part = name.split(".")
            (shift if part == "shift" else scale)[m] = t.detach().cpu().numpy().astype(np.float32)
        if kind == "standardize" and (not shift or sorted(shift) != sorted(scale)):
            raise ValueError("standardize input normalisation without its shift/scale tensors")
        return cls(kind, shift, scale)


def skip_moments(x: dict[str, Tensor], modalities: Sequence[str]) -> np.ndarray:
    """Row count, column sums and cross products of the concatenated inputs, flat float64
    [1 + D + D*D]: summable over shards, and all `fit_skip` needs."""
    cat = torch.cat([x[m] for m in modalities], dim=1).to(torch.float64)
    return np.concatenate(
        [[float(cat.shape[0])], cat.sum(dim=0).numpy(), (cat.T @ cat).numpy().ravel()]
    )


def fit_skip(
    moments: np.ndarray, in_dims: dict[str, int], k: int, n_heads: int
) -> tuple[np.ndarray, np.ndarray]:
    """The skip branch of a head: (mean [D], weight [D, k]) from `skip_moments` of the training
    rows' normalised inputs.

    Each modality's block is weighted to a total variance of 1 (so a wide image embedding does not
    drown a narrow text one), then the top-k principal components are taken, signed so that each
    one's largest entry is positive, and scaled so that the branch's mean squared norm equals
    `n_heads`: the squared norm of the L2-normalised head outputs it sits beside.
    """
    dims = [in_dims[m] for m in sorted(in_dims)]
    d = sum(dims)
    n = max(float(moments[0]), 1.0)
    mean = moments[1 : 1 + d] / n
    cov = moments[1 + d :].reshape(d, d) / n - np.outer(mean, mean)
    w = np.empty(d)
    at = 0
    for width in dims:
        total = float(np.trace(cov[at : at + width, at : at + width]))
        w[at : at + width] = 1.0 / math.sqrt(total) if total > 0 else 1.0
        at += width
    values, vectors = np.linalg.eigh(cov * w[:, None] * w[None, :])
    top = np.argsort(values)[::-1][:k]
    values, vectors = np.clip(values[top], 0.0, None), vectors[:, top]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(len(top))])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    total = float(values.sum())
    scale = math.sqrt(n_heads / total) if total > 0 else 1.0
    return mean.astype(np.float32), (w[:, None] * vectors * scale).astype(np.float32)


def init_skip(head: MultiHead, moments: np.ndarray) -> None:
    """Fill `head`'s skip branch (if it has one) from `skip_moments` of its training rows."""
    if head.skip_dim:
        head.set_skip(*fit_skip(moments, head.in_dims, head.skip_dim, len(head.heads)))
