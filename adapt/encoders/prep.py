"""Host-side preprocessing: decoded items -> one ready array per row, without the model.

Extract runs these in its decode stage, on CPU workers, ahead of the encoders: a preprocessor is
built from the encoder's name and options alone (a tokenizer, a resize size, a processor config),
never from its weights, so a decode worker costs megabytes, not a model copy. What crosses to the
encoder is the cheapest form of each row: images as uint8 pixels (a quarter of float32's bytes;
the encoder scales and normalises them on its device), texts as unpadded token ids (the encoder
pads each batch to its longest row).

Every preprocessor has `prepare(items) -> list[np.ndarray]` and `describe() -> str` (part of the
encoder's fingerprint). The rows travel between stages as `.npy` bytes (`to_bytes`, `from_bytes`),
which carry their own shape and dtype.
"""

from __future__ import annotations

import ast
import functools
import io

import numpy as np

# glibc hands every allocation over its mmap threshold (128 KiB to 32 MiB, adaptive) straight to
# the kernel and gives it back when freed; a batch of images (tens of MiB as uint8, four times that
# as float) then costs a page fault per 4 KiB each time. Measured on a 2-core VM: converting a
# batch of 64 uint8 images to float, 330 us a row before, 48 after.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """In this process, serve allocations up to `limit` bytes from the heap and keep freed memory
    for the next one, instead of mapping and unmapping it batch after batch: the setting of a
    process that encodes batch after batch. Returns False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # Older glibc refuses a threshold over 32 MiB: then 32 MiB.
    for mmap_limit in (limit, 32 << 20):
        if mallopt(_M_MMAP_THRESHOLD, mmap_limit):
            return bool(mallopt(_M_TRIM_THRESHOLD, 2 * mmap_limit))
    return False


def to_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple) -> bytes:
    """The `.npy` header `to_bytes` writes before a C-ordered array of this dtype and shape."""
    whole = to_bytes(np.zeros(shape, np.dtype(dtype)))
    return whole[: len(whole) - int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize]


def pack_rows(arrays: list):
    """`to_bytes` of every array (None: a null) as one Arrow binary array, each written once,
    straight into the array's buffer: no bytes object per row, no second copy into Arrow."""
    import pyarrow as pa

    n = len(arrays)
    parts: list = [None] * n
    sizes = np.zeros(n, np.int64)
    for i, a in enumerate(arrays):
        if a is None:
            continue
        if a.dtype.hasobject:
            raise ValueError("an array of Python objects cannot cross as .npy bytes")
        head = _npy_header(a.dtype.str, a.shape)
        parts[i] = (head, a)
        sizes[i] = len(head) + a.nbytes
    total = int(sizes.sum())
    if total > np.iinfo(np.int32).max:  # over a binary array's offsets: one bytes object a row
        return pa.array([None if a is None else to_bytes(a) for a in arrays], pa.binary())
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(total, np.uint8)
    for start, part in zip(offsets[:-1].tolist(), parts, strict=True):
        if part is None:
            continue
        head, a = part
        data[start : start + len(head)] = np.frombuffer(head, np.uint8)
        body = data[start + len(head) : start + len(head) + a.nbytes]
        body.view(a.dtype).reshape(a.shape)[...] = a  # C order, as to_bytes writes it
    valid = np.array([p is not None for p in parts], bool)
    nulls = int(n - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(
        pa.binary(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls
    )


def from_bytes(data: bytes | memoryview) -> np.ndarray:
    """A read-only view of the array in `data` (`to_bytes`'s output, as bytes or as a view of a
    buffer, e.g. an Arrow column's): its header is parsed once per distinct header (all the rows
    of one image preprocessor share theirs), not per row."""
    if not isinstance(data, bytes):
        data = memoryview(data).cast("B")  # Arrow's buffers are signed chars: compare as bytes
    if data[:6] == b"\x93NUMPY" and data[6:7] in (b"\x01", b"\x02"):
        size = 2 if data[6:7] == b"\x01" else 4
        start = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
        dtype, shape, fortran = _header(bytes(data[8 + size : start]))
        if not fortran and not dtype.hasobject:
            view = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=start)
            view.flags.writeable = False  # a view of a mutable buffer too: the cell stays as it was
            return view.reshape(shape)
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


@functools.lru_cache(maxsize=256)
def _header(text: bytes) -> tuple[np.dtype, tuple, bool]:
    header = ast.literal_eval(text.decode("latin1"))
    return np.dtype(header["descr"]), tuple(header["shape"]), bool(header["fortran_order"])


def pad_rows(rows: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-d token arrays to the longest: (ids [B, T], mask [B, T], 1 for real tokens)."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


class PixelPrep:
    """Resize the shorter side to size / crop_pct and center-crop `size`, in one resampling pass
    over the kept region (PIL's `box`; equal to resize-then-crop up to edge rounding, and cheaper):
    uint8 [3, size, size]. `crop_pct` 1.0 with `squash` resizes the whole picture instead."""

    def __init__(self, size: int, crop_pct: float = 0.875, resample: str = "bicubic", squash=False):
        self.size, self.crop_pct, self.resample, self.squash = size, crop_pct, resample, squash

    def crop_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        if self.squash:
            return (0.0, 0.0, float(w), float(h))
        side = self.size * min(w, h) / (self.size / self.crop_pct)  # the crop, in source pixels
        left, top = (w - side) / 2, (h - side) / 2
        return (left, top, left + side, top + side)

    def prepare(self, items: list) -> list[np.ndarray]:
        from PIL import Image

        resample = getattr(Image.Resampling, self.resample.upper())
        out = []
        for img in items:
            img = img.convert("RGB")
            resized = img.resize((self.size, self.size), resample, box=self.crop_box(*img.size))
            # Channels-first while still uint8: transposing floats costs four times the bytes.
            out.append(np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1)))
        return out

    def describe(self) -> str:
        if self.squash:
            return f"rgb; resize to {self.size}x{self.size} {self.resample}; uint8"
        resize = int(round(self.size / self.crop_pct))
        return (
            f"rgb; resize shorter side {resize} {self.resample} and center crop {self.size} "
            "in one pass; uint8"
        )


class TransformPrep:
    """A torchvision transform (open_clip's): its geometric part runs here, to uint8 pixels; a
    trailing ToTensor + Normalize is left to the encoder's device (`mean`, `std`). A transform of
    another shape runs whole and hands over float32."""

    def __init__(self, transform):
        from torchvision import transforms as T

        steps = list(getattr(transform, "transforms", [transform]))
        self.mean = self.std = None
        if (
            len(steps) >= 2
            and isinstance(steps[-2], T.ToTensor)
            and isinstance(steps[-1], T.Normalize)
        ):
            self.mean = tuple(float(v) for v in steps[-1].mean)
            self.std = tuple(float(v) for v in steps[-1].std)
            steps = steps[:-2]
        self.geometry = T.Compose(steps) if self.mean is not None else transform
        self.full = transform

    def prepare(self, items: list) -> list[np.ndarray]:
        if self.mean is None:
            return [self.full(img).numpy().astype(np.float32, copy=False) for img in items]
        out = []
        for img in items:
            arr = np.asarray(self.geometry(img).convert("RGB"))
            out.append(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return out

    def describe(self) -> str:
        return repr(self.full)


class ProcessorPrep:
    """A Hugging Face image processor: float32 pixel values per row, as the processor makes them."""

    def __init__(self, processor):
        self.processor = processor

    def prepare(self, items: list) -> list[np.ndarray]:
        px = self.processor(images=items, return_tensors="np")["pixel_values"]
        return [np.ascontiguousarray(p, dtype=np.float32) for p in px]

    def describe(self) -> str:
        return repr(self.processor.to_dict())


class TokenPrep:
    """A Hugging Face tokenizer, truncating at `max_length`, unpadded: int32 ids per row."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def prepare(self, items: list) -> list[np.ndarray]:
        ids = self.tokenizer(list(items), truncation=True, max_length=self.max_length)["input_ids"]
        return [np.asarray(r, dtype=np.int32) for r in ids]

    def describe(self) -> str:
        return f"{type(self.tokenizer).__name__}(max_length={self.max_length}, truncation=True)"


class ClipTokenPrep:
    """open_clip's tokenizer: a fixed context of token ids per row."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def prepare(self, items: list) -> list[np.ndarray]:
        return [np.asarray(r, dtype=np.int32) for r in self.tokenizer(list(items)).numpy()]

    def describe(self) -> str:
        return f"{type(self.tokenizer).__name__}(context_length={self.tokenizer.context_length})"
