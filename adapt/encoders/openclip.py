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


class OpenClipEncoder(Encoder):
    def __init__(self, name, spec, modality: str, device="cpu", dtype="float32"):
        super().__init__(name, spec, device, dtype)
        import open_clip

        self.modality = modality
        self.pooling = "clip"
        pretrained = name.pretrained
        arch = name.model
        if arch.endswith(".json"):
            # A model config file of the user's own: register it, then build it by its stem.
            open_clip.add_model_config(arch)
            arch = os.path.splitext(os.path.basename(arch))[0]
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
        self.dim = self._probe()

    def _probe(self) -> int:
        with torch.inference_mode():
            return int(self.model.encode_text(self.tokenizer(["probe"]).to(self.device)).shape[1])

    def weights_id(self) -> str:
        return self._weights

    def preprocess_description(self) -> str:
        if self.modality == "image":
            return repr(self.transform)
        return f"{type(self.tokenizer).__name__}(context_length={self.tokenizer.context_length})"

    def preprocess(self, items):
        if self.modality == "image":
            x = torch.stack([self.transform(img) for img in items])
            return x.to(self.device, self.torch_dtype)
        return self.tokenizer(items).to(self.device)

    def forward(self, inputs) -> np.ndarray:
        if self.modality == "image":
            return self._finish(self.model.encode_image(inputs))
        return self._finish(self.model.encode_text(inputs))
