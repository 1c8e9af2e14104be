"""open_clip image and text towers.

`open_clip:ARCH@PRETRAINED`: PRETRAINED is an open_clip tag, `hf-hub:ORG/REPO`, or a local
checkpoint file; without it the weights are random, which tests and speed runs use. ARCH may be a
path to a model config JSON of one's own (`open_clip:/models/my-clip.json@/models/my-clip.pt`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from adapt.encoders.base import Encoder, sha256_file
from adapt.encoders.prep import ClipTokenPrep, TransformPrep


def _arch(name) -> str:
    """open_clip's name of the architecture; a config file of the user's own is registered."""
    import open_clip

    arch = name.model
    if arch.endswith(".json"):
        open_clip.add_model_config(arch)
        arch = os.path.splitext(os.path.basename(arch))[0]
    return arch


class OpenClipEncoder(Encoder):
    @classmethod
    def make_prep(cls, name, spec, modality: str):
        """The image transform or tokenizer open_clip would build, from its configs alone. A
        hub model's config lives on the hub: there the model is built (on CPU) to get it."""
        from dataclasses import asdict

        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        arch = _arch(name)
        if modality == "text":
            return ClipTokenPrep(open_clip.get_tokenizer(arch))
        pretrained = name.pretrained
        model_cfg = open_clip.get_model_config(arch)
        if (pretrained and pretrained.startswith("hf-hub:")) or model_cfg is None:
            _, _, transform = open_clip.create_model_and_transforms(pretrained or arch)
            return TransformPrep(transform)
        cfg = asdict(PreprocessCfg())
        cfg = merge_preprocess_dict(cfg, model_cfg.get("preprocess_cfg", {}))
        if pretrained and not os.path.isfile(pretrained):
            cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(arch, pretrained) or {})
        cfg["size"] = model_cfg["vision_cfg"]["image_size"]
        return TransformPrep(image_transform_v2(PreprocessCfg(**cfg), is_train=False))

    def __init__(self, name, spec, modality: str, device="cpu", dtype="float32"):
        super().__init__(name, spec, device, dtype)
        import open_clip

        self.modality = modality
        self.pooling = "clip"
        pretrained = name.pretrained
        arch = _arch(name)  # a model config file of the user's own is built by its stem
        if pretrained and pretrained.startswith("hf-hub:"):
            model, _, preprocess = open_clip.create_model_and_transforms(pretrained)
            self._weights = pretrained
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained
            )
            if pretrained is None:
                self._weights = "random"
            elif os.path.isfile(pretrained):
                self._weights = "sha256:" + sha256_file(pretrained)
            else:
                self._weights = f"open_clip:{name.model}@{pretrained}"
        self.model = model.eval().to(self.device, self.torch_dtype)
        self.transform = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.prep = (
            TransformPrep(preprocess) if modality == "image" else ClipTokenPrep(self.tokenizer)
        )
        if modality == "image" and self.prep.mean is not None:
            mean = torch.tensor(self.prep.mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(self.prep.std, device=self.device).view(1, 3, 1, 1)
            self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        self.dim = self._probe()

    def _probe(self) -> int:
        with torch.inference_mode():
            return int(self.model.encode_text(self.tokenizer(["probe"]).to(self.device)).shape[1])

    def weights_id(self) -> str:
        return self._weights

    def collate(self, rows: list[np.ndarray]):
        x = torch.from_numpy(np.stack(rows)).to(self.device, non_blocking=True)
        if self.modality == "text":
            return x.long()
        if self.prep.mean is not None:  # uint8 pixels: ToTensor and Normalize, on the device
            x = x.float().mul_(self._scale).add_(self._shift)
        return x.to(self.torch_dtype)

    def forward(self, inputs) -> np.ndarray:
        if self.modality == "image":
            return self._finish(self.model.encode_image(inputs))
        return self._finish(self.model.encode_text(inputs))
