"""A simulated accelerator, for benchmarks and tests (not for users): `sim:MS[xDIM][@SIZE]`.

Its forward takes MS milliseconds per batch without using a CPU (the thread sleeps, releasing
the GIL), as a GPU forward looks from the host; its preprocessing is real CPU work of a vision
model's shape (decode, resize to SIZE x SIZE uint8, 224 unless given; the scaling is the device's) or a text one's
(UTF-8 bytes). With it, the overlap of decode and forward can be measured on a machine with no GPU: the
embeddings are a deterministic function of the input, nothing more.
"""

from __future__ import annotations

import time

import numpy as np

from adapt.encoders.base import Encoder
from adapt.encoders.prep import PixelPrep

SIZE = 224
TEXT_BYTES = 256
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def parse(model: str) -> tuple[float, int, int]:
    """`MS[xDIM][@SIZE]` -> (seconds per batch, output width, image side in pixels)."""
    rest, _, size = model.partition("@")
    ms, _, dim = rest.partition("x")
    try:
        seconds, width, side = float(ms) / 1000.0, int(dim or 64), int(size or SIZE)
    except ValueError:
        raise ValueError(
            f"sim:{model}: expected sim:MS, sim:MSxDIM or sim:MSxDIM@SIZE, e.g. sim:20x64@224"
        ) from None
    if seconds < 0 or width < 1:
        raise ValueError(f"sim:{model}: the time must be >= 0 and the width >= 1")
    if side < 32 or side % 32:
        raise ValueError(f"sim:{model}: the image side must be a multiple of 32, got {side}")
    return seconds, width, side


class TextBytesPrep:
    """The first TEXT_BYTES bytes of the UTF-8 text, as uint8."""

    def prepare(self, items: list) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8")[:TEXT_BYTES], np.uint8).copy() for t in items]

    def describe(self) -> str:
        return f"utf-8 bytes, first {TEXT_BYTES}"


class SimulatedEncoder(Encoder):
    @classmethod
    def make_prep(cls, name, spec, modality: str):
        if modality == "text":
            return TextBytesPrep()
        return PixelPrep(parse(name.model)[2], 1.0, "bilinear", squash=True)

    def __init__(self, name, spec, modality: str, device: str = "cpu", dtype: str = "float32"):
        super().__init__(name, spec, device="cpu", dtype="float32")
        self.modality = modality
        self.batch_s, self.dim, self.size = parse(name.model)
        self.prep = self.make_prep(name, spec, modality)
        features = 3 * 16 if modality == "image" else TEXT_BYTES
        self._w = np.random.default_rng(0).standard_normal((features, self.dim)).astype(np.float32)
        self.forward_calls = 0

    def collate(self, rows: list[np.ndarray]) -> np.ndarray:
        if self.modality == "image":
            return np.stack(rows)  # uint8 [B, 3, size, size], as a GPU encoder receives it
        out = np.zeros((len(rows), TEXT_BYTES), np.float32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r / 255.0
        return out

    def collate_description(self) -> str:
        return "/255" + (", ImageNet mean/std" if self.modality == "image" else "")

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        time.sleep(self.batch_s)  # the accelerator's time: no CPU is used
        self.forward_calls += 1
        if self.modality == "image":
            # 4 x 4 block means per channel of a strided sample, normalised: a cheap, stable
            # summary whose host cost stays small next to any real forward.
            b, step = inputs.shape[0], self.size // 32
            sample = (inputs[:, :, ::step, ::step].astype(np.float32) / 255.0 - MEAN) / STD
            x = sample.reshape(b, 3, 4, 8, 4, 8).mean(axis=(3, 5)).reshape(b, -1)
        else:
            x = inputs
        return self._finish_numpy(x @ self._w)

    def _finish_numpy(self, x: np.ndarray) -> np.ndarray:
        from adapt.encoders.base import l2_normalize

        return l2_normalize(x) if self.spec.normalize else x

    def weights_id(self) -> str:
        return "simulated"
