"""A simulated accelerator, for benchmarks and tests (not for users): `sim:MS[xDIM]`.

Its forward takes MS milliseconds per batch without using a CPU (the thread sleeps, releasing
the GIL), as a GPU forward looks from the host; its preprocessing is real CPU work of a vision
model's shape (resize to 224 x 224, scale, normalise) or a text one's (bytes to a fixed-length
array). With it, the overlap of decode and forward can be measured on a machine with no GPU: the
embeddings are a deterministic function of the input, nothing more.
"""

from __future__ import annotations

import time

import numpy as np

from adapt.encoders.base import Encoder

SIZE = 224
TEXT_BYTES = 256
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def parse(model: str) -> tuple[float, int]:
    """`MS[xDIM]` -> (seconds per batch, output width)."""
    ms, _, dim = model.partition("x")
    try:
        seconds, width = float(ms) / 1000.0, int(dim or 64)
    except ValueError:
        raise ValueError(f"sim:{model}: expected sim:MS or sim:MSxDIM, e.g. sim:20x64") from None
    if seconds < 0 or width < 1:
        raise ValueError(f"sim:{model}: the time must be >= 0 and the width >= 1")
    return seconds, width


class SimulatedEncoder(Encoder):
    def __init__(self, name, spec, modality: str, device: str = "cpu", dtype: str = "float32"):
        super().__init__(name, spec, device="cpu", dtype="float32")
        self.modality = modality
        self.batch_s, self.dim = parse(name.model)
        features = 3 * 16 if modality == "image" else TEXT_BYTES
        self._w = np.random.default_rng(0).standard_normal((features, self.dim)).astype(np.float32)
        self.forward_calls = 0

    def preprocess(self, items: list) -> np.ndarray:
        if self.modality == "text":
            out = np.zeros((len(items), TEXT_BYTES), np.float32)
            for i, text in enumerate(items):
                data = np.frombuffer(text.encode("utf-8")[:TEXT_BYTES], np.uint8)
                out[i, : len(data)] = data / 255.0
            return out
        from PIL import Image

        out = np.empty((len(items), 3, SIZE, SIZE), np.float32)
        for i, img in enumerate(items):
            pixels = np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0
            out[i] = (pixels.transpose(2, 0, 1) - MEAN) / STD
        return out

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        time.sleep(self.batch_s)  # the accelerator's time: no CPU is used
        self.forward_calls += 1
        if self.modality == "image":  # 4 x 4 block means per channel: a cheap, stable summary
            b = inputs.shape[0]
            x = inputs.reshape(b, 3, 4, SIZE // 4, 4, SIZE // 4).mean(axis=(3, 5)).reshape(b, -1)
        else:
            x = inputs
        return self._finish_numpy(x @ self._w)

    def _finish_numpy(self, x: np.ndarray) -> np.ndarray:
        from adapt.encoders.base import l2_normalize

        return l2_normalize(x) if self.spec.normalize else x

    def weights_id(self) -> str:
        return "simulated"

    def preprocess_description(self) -> str:
        if self.modality == "text":
            return f"utf-8 bytes, first {TEXT_BYTES}, /255"
        return f"bilinear {SIZE}x{SIZE}, /255, ImageNet mean/std"
