"""Extract stage core: decode, check and preprocess one batch of rows; embed it. No Ray, no storage."""

from __future__ import annotations

import functools
import io
import time

import numpy as np
import pyarrow as pa

from adapt import schema
from adapt.encoders.prep import from_bytes, pack_rows
from adapt.extract import readers
from adapt.extract.validate import reject

# Raw cells the decode stage replaces with prepared rows: they do not travel to the encoders.
RAW_COLUMNS = (schema.TEXT, schema.IMAGE, schema.IMAGE_PATH)

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
    return img if img.mode == "RGB" else img.convert("RGB")  # convert copies even to its own mode


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


def input_column(modality: str) -> str:
    """The column of a modality's prepared rows (`.npy` bytes) between decode and encode."""
    return f"_in_{modality}"


def prepare_batch(
    preps: dict,
    table: pa.Table,
    required: list[str],
    timings: dict | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> pa.Table:
    """The decode stage: decode, check and preprocess one batch, on a CPU worker.

    Returns every input row, its raw text and image replaced by one column of prepared rows per
    modality (`input_column`): null where the row is rejected, reused, or its optional modality
    is missing. A row is rejected when it already carries a read error, or when a required
    modality is missing, empty or corrupt (a present-but-bad optional value too): its reason is
    in `_error`. Rows marked reusable (unchanged since the last run) are passed through, not
    decoded. `timings`, when given, accumulates `decode_s` and `preprocess_s`.
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
    for modality in sorted(preps):
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
    t_prep = time.perf_counter()
    out = {c: table.column(c) for c in table.column_names if c not in RAW_COLUMNS}
    for modality, prep in sorted(preps.items()):
        rows = [i for i in range(n) if errors[i] is None and items[modality][i] is not None]
        arrays = prep.prepare([items[modality][i] for i in rows]) if rows else []
        cells: list[np.ndarray | None] = [None] * n
        for i, array in zip(rows, arrays, strict=True):
            cells[i] = array
        out[input_column(modality)] = pack_rows(cells)
    out[readers.ERROR] = pa.array(errors, pa.string())
    if timings is not None:
        timings["decode_s"] = timings.get("decode_s", 0.0) + t_prep - t_decode
        timings["preprocess_s"] = timings.get("preprocess_s", 0.0) + time.perf_counter() - t_prep
    return pa.table(out)


def encode_batch(
    encoders: dict,
    table: pa.Table,
    timings: dict | None = None,
    busy: list | None = None,
    forward_rows: int | None = None,
    device=None,
) -> pa.Table:
    """The encode stage: prepared rows (`prepare_batch`'s output) -> embeddings, forwards of up
    to `forward_rows` rows per modality (None: one), run on `device` (the actor's one forward
    thread, see `Encoder.embed_batches`) while this thread collates the next. Returns every
    row; a non-finite vector rejects its row. `timings` accumulates `collate_s` and
    `forward_s`; `busy` gets each forward's (start, end) wall-clock seconds and its rows."""
    n = table.num_rows
    errors = table.column(readers.ERROR).to_pylist()
    keep = (
        schema.ID,
        schema.SPLIT,
        schema.CONTENT_HASH,
        readers.SHARD,
        readers.REUSE,
        readers.SHARD_ROWS,
    )
    out = {
        c: table.column(c) for c in table.column_names if c.startswith(schema.LABEL) or c in keep
    }
    for modality, encoder in sorted(encoders.items()):
        name = input_column(modality)
        column = table.column(name) if name in table.column_names else pa.nulls(n, pa.binary())
        cells = binary_views(column)
        rows = [i for i in range(n) if errors[i] is None and cells[i] is not None]
        step = forward_rows or max(1, len(rows))
        loaders = [
            functools.partial(_load_rows, cells, rows[k : k + step])
            for k in range(0, len(rows), step)
        ]
        vectors = encoder.embed_batches(loaders, device, timings, busy)
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


def binary_views(column: pa.ChunkedArray | pa.Array) -> list[memoryview | None]:
    """Every cell of a binary column as a view of the column's own buffers (None where null):
    the prepared rows reach the collate without a copy of their own."""
    out: list[memoryview | None] = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
            raise TypeError(f"expected a binary column of prepared rows, got {chunk.type}")
        if len(chunk) == 0:
            continue
        _, offsets, data = chunk.buffers()
        width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        bounds = np.frombuffer(
            offsets, width, count=len(chunk) + 1, offset=chunk.offset * width().itemsize
        )
        whole = memoryview(data) if data is not None else memoryview(b"")
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        ends = bounds.tolist()
        out.extend(whole[ends[i] : ends[i + 1]] if valid[i] else None for i in range(len(chunk)))
    return out


def _load_rows(cells: list, rows: list[int]) -> list[np.ndarray]:
    return [from_bytes(cells[i]) for i in rows]


def embed_batch(
    encoders: dict,
    table: pa.Table,
    required: list[str],
    timings: dict | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> pa.Table:
    """Decode, check and embed one batch in one process: `prepare_batch` then `encode_batch`.
    Returns every input row: embeddings where possible, `_error` otherwise; an optional modality
    that is missing leaves its embedding null."""
    preps = {m: e.prep for m, e in encoders.items()}
    prepared = prepare_batch(preps, table, required, timings, max_pixels)
    return encode_batch(encoders, prepared, timings)
