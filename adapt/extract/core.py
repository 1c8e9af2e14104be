"""Extract stage core: decode and check one batch of rows, embed it. No Ray, no storage."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa

from adapt import schema
from adapt.extract import readers
from adapt.extract.validate import reject

# Largest image decoded, in pixels (extract.max_image_pixels): the decompression-bomb guard.
MAX_IMAGE_PIXELS = 100_000_000


class TooLarge(ValueError):
    """The image's header gives more pixels than the limit; it was not decoded."""


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
    """Encoded bytes -> RGB PIL image; transparent pixels composited on white. Raises on bad data,
    and TooLarge, before decoding anything, for an image over `max_pixels`."""
    from PIL import Image

    # PIL refuses only above twice its own limit, at open: the check below, from the header,
    # refuses at `max_pixels` itself, so PIL's is off.
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size  # from the header: nothing is decoded yet
        if width * height > max_pixels:
            raise TooLarge(f"{width}x{height} is over {max_pixels} pixels")
        probe.verify()  # catches truncated and corrupt files before a full decode
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def _prepare(modality: str, value, max_pixels: int = MAX_IMAGE_PIXELS):
    """Decode one checked cell; return (item, None) or (None, reason)."""
    if value is None:
        return None, reject("missing_value", modality)
    if modality == "text":
        if not value.strip():
            return None, reject("empty_text")
        return value, None
    try:
        return decode_image(value, max_pixels), None
    except TooLarge as e:
        return None, reject("too_large", str(e))
    except Exception as e:  # PIL raises many types for bad data; the row's reason records which
        return None, reject("corrupt_image", f"{type(e).__name__}: {e}")


def embed_batch(
    encoders: dict,
    table: pa.Table,
    required: list[str],
    timings: dict | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> pa.Table:
    """Embed one batch. Returns every input row: embeddings where possible, `_error` otherwise.

    A row is rejected when it already carries a read error, when a required modality is missing,
    empty or corrupt. An optional modality that is missing leaves its embedding null. Rows marked
    reusable (unchanged since the last run) are passed through unembedded; the commit copies theirs.
    `timings`, when given, accumulates seconds for decode, preprocess and forward.
    """
    t_decode = time.perf_counter()
    n = table.num_rows
    errors = (
        table.column(readers.ERROR).to_pylist()
        if readers.ERROR in table.column_names
        else [None] * n
    )
    reuse = (
        table.column(readers.REUSE).to_pylist()
        if readers.REUSE in table.column_names
        else [False] * n
    )
    items: dict[str, list] = {}
    for modality in sorted(encoders):
        column = (
            table.column(modality).to_pylist() if modality in table.column_names else [None] * n
        )
        prepared = []
        for i, value in enumerate(column):
            if errors[i] is not None or reuse[i]:
                prepared.append(None)
                continue
            item, reason = _prepare(modality, value, max_pixels)
            if reason is not None and (modality in required or value is not None):
                errors[i] = reason  # a present-but-bad value is an error even when optional
            prepared.append(item)
        items[modality] = prepared
    if timings is not None:
        timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - t_decode
    keep = (schema.ID, schema.SPLIT, schema.CONTENT_HASH, readers.SHARD, readers.REUSE)
    out = {
        c: table.column(c) for c in table.column_names if c.startswith(schema.LABEL) or c in keep
    }
    for modality, encoder in sorted(encoders.items()):
        rows = [i for i in range(n) if errors[i] is None and items[modality][i] is not None]
        vectors = encoder.embed([items[modality][i] for i in rows], timings)
        if not np.all(np.isfinite(vectors)):
            bad = {rows[j] for j in np.where(~np.isfinite(vectors).all(axis=1))[0]}
            for i in bad:
                errors[i] = reject("non_finite", modality)
        full = np.zeros((n, encoder.dim), dtype=np.float32)
        full[rows] = vectors
        valid = np.zeros(n, dtype=bool)
        valid[rows] = True
        flat = pa.array(full.reshape(-1), pa.float32())
        out[schema.embedding_column(modality)] = pa.FixedSizeListArray.from_arrays(
            flat, encoder.dim, mask=pa.array(~valid)
        )
    out[readers.ERROR] = pa.array(errors, pa.string())
    return pa.table(out)
