"""Corpus readers: list a corpus as input shards, and read one shard into normalised batches.

A shard is the unit of parallel reading, of output naming and of resume: Parquet file, WebDataset
tar, or a fixed row range of a folder's manifest. Its `key` derives from its path under the corpus
root, never from Ray's block layout, so a re-run maps every row to the same output file.

Every row read comes out, valid or not: a row that cannot be read whole (an image file that is
missing) carries its reason in `_error` and ends up in the rejects, never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from adapt import schema
from adapt.labels import label_value
from adapt.storage import Storage, is_remote, join

FORMATS = ("parquet", "webdataset", "folder")
MANIFEST_SUFFIXES = (".jsonl", ".csv")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption")
READ_BATCH_ROWS = 256  # rows per block out of a read task: small blocks keep the pipeline streaming
MANIFEST_ROWS_PER_SHARD = 2048

SHARD = "_shard"  # carried through the pipeline: which input shard a row came from
ERROR = "_error"  # a reason when the row could not be read whole
REUSE = "_reuse"  # true when the row's embeddings can be copied from the previous output


class CorpusError(ValueError):
    """The corpus cannot be read as asked; the message says what to fix."""


@dataclass(frozen=True)
class Shard:
    uri: str
    format: str
    key: str
    start: int = 0  # row range, for manifest shards
    stop: int | None = None


def shard_key(root: str, uri: str, suffix: str = "") -> str:
    """A file-name-safe key from a path relative to the corpus root."""
    rel = (
        uri[len(root.rstrip("/")) + 1 :]
        if uri.startswith(root.rstrip("/") + "/")
        else posixpath.basename(uri)
    )
    stem = re.sub(r"\.(parquet|tar|jsonl|csv)$", "", rel)
    return re.sub(r"[^A-Za-z0-9._-]+", "__", stem) + suffix


def detect_format(store: Storage, corpus: str) -> str:
    files = store.list_files(corpus)
    if any(f.endswith(".parquet") for f in files):
        return "parquet"
    if any(f.endswith(".tar") for f in files):
        return "webdataset"
    if any(f.endswith(MANIFEST_SUFFIXES) for f in files):
        return "folder"
    raise CorpusError(
        f"no corpus found at {corpus!r}: expected .parquet files, WebDataset .tar shards, or a "
        "folder with a manifest.jsonl/.csv; check `corpus` (and storage.endpoint_url for s3://)"
    )


def _manifest_rows(store: Storage, uri: str) -> list[dict]:
    text = store.read_bytes(uri).decode("utf-8")
    if uri.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CorpusError(f"{uri} line {n} is not JSON: {e.msg}") from e
    return rows


def list_shards(
    store: Storage, corpus: str, fmt: str = "auto", manifest: str | None = None
) -> list[Shard]:
    """The corpus as a sorted list of shards."""
    fmt = detect_format(store, corpus) if fmt == "auto" else fmt
    if fmt == "parquet":
        files = store.list_files(corpus, (".parquet",))
        shards = [Shard(f, fmt, shard_key(corpus, f)) for f in files]
    elif fmt == "webdataset":
        files = store.list_files(corpus, (".tar",))
        shards = [Shard(f, fmt, shard_key(corpus, f)) for f in files]
    elif fmt == "folder":
        if manifest:
            mfile = (
                manifest
                if is_remote(manifest) or manifest.startswith("/")
                else join(corpus, manifest)
            )
            manifests = [mfile]
        else:
            manifests = store.list_files(corpus, MANIFEST_SUFFIXES, recursive=False)
        if not manifests:
            raise CorpusError(
                f"format folder: no manifest .jsonl/.csv in {corpus!r}; set extract.manifest"
            )
        shards = []
        for mfile in manifests:
            if not store.exists(mfile):
                raise CorpusError(f"manifest {mfile!r} not found")
            n = len(_manifest_rows(store, mfile))
            for start in range(0, n, MANIFEST_ROWS_PER_SHARD):
                stop = min(n, start + MANIFEST_ROWS_PER_SHARD)
                key = shard_key(corpus, mfile, f"-{start:09d}")
                shards.append(Shard(mfile, fmt, key, start, stop))
    else:
        raise CorpusError(f"unknown corpus format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    if not shards:
        raise CorpusError(f"no {fmt} shards under {corpus!r}")
    keys = [s.key for s in shards]
    if len(set(keys)) != len(keys):
        raise CorpusError("two input files map to the same shard key; rename one of them")
    return shards


# -- reading one shard ---------------------------------------------------------------------------


def _rows_to_table(rows: list[dict], shard: Shard) -> pa.Table:
    """Normalise dict rows to the pipeline's columns, keeping label columns and split as given."""
    cols: dict[str, list] = {schema.ID: [], schema.TEXT: [], schema.IMAGE: [], ERROR: []}
    extra = sorted({k for r in rows for k in r if k.startswith(schema.LABEL) or k == schema.SPLIT})
    for k in extra:
        cols[k] = []
    for r in rows:
        for k in cols:
            cols[k].append(r.get(k))
    cols[SHARD] = [shard.key] * len(rows)
    cols[schema.CONTENT_HASH] = [content_hash(r) for r in rows]
    types = {
        schema.ID: pa.string(),
        schema.TEXT: pa.string(),
        schema.IMAGE: pa.binary(),
        ERROR: pa.string(),
        SHARD: pa.string(),
        schema.SPLIT: pa.string(),
    }
    arrays = {}
    for k, v in cols.items():
        if k.startswith(schema.LABEL):
            v = [label_value(x) for x in v]
            arrays[k] = pa.array(
                v, pa.list_(pa.string()) if any(isinstance(x, list) for x in v) else pa.string()
            )
        else:
            arrays[k] = pa.array(v, types.get(k, pa.string()))
    return pa.table(arrays)


def content_hash(row: dict) -> str:
    """A row's identity for incremental runs: its id, text and image bytes (not its labels)."""
    digest = hashlib.sha256()
    for part in (row.get(schema.ID), row.get(schema.TEXT)):
        data = b"\x00" if part is None else b"\x01" + str(part).encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    image = row.get(schema.IMAGE)
    data = b"\x00" if image is None else b"\x01" + bytes(image)
    digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:32]


def source_signature(store: Storage, shard: Shard) -> dict:
    """What changes when a shard's source changes: size plus ETag or modification time."""
    info = store.info(shard.uri)
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    sig = {"size": int(info.get("size") or 0), "stamp": str(stamp)}
    if shard.format == "folder":
        sig["rows"] = [shard.start, shard.stop]
    return sig


def mark_reusable(table: pa.Table, previous: dict[str, str]) -> pa.Table:
    """Flag rows whose (id, content hash) equals a row of the shard's previous output."""
    ids = table.column(schema.ID).to_pylist()
    hashes = table.column(schema.CONTENT_HASH).to_pylist()
    flags = [previous.get(i) == h for i, h in zip(ids, hashes, strict=True)]
    return table.append_column(REUSE, pa.array(flags, pa.bool_()))


def _resolve_image_path(base: str, path: str) -> str:
    if is_remote(path) or path.startswith("/"):
        return path
    return join(base, path)


def _attach_images(store: Storage, rows: list[dict], base: str) -> None:
    """Load `image_path` files into `image` bytes; a missing file becomes the row's `_error`.

    Only a file that is not there is the row's fault. Any other error reading it (throttling, a
    5xx, a reset connection, an expired token: s3fs raises them all as OSError) is the store's,
    retried by Storage and then raised: the shard does not commit, and a re-run reads the row
    again, where a reject would have lost it for good.
    """
    for r in rows:
        path = r.pop(schema.IMAGE_PATH, None)
        if r.get(schema.IMAGE) is None and path:
            uri = _resolve_image_path(base, str(path))
            try:
                r[schema.IMAGE] = store.read_bytes(uri)
            except (FileNotFoundError, IsADirectoryError):
                r[ERROR] = f"missing image file: {path}"
            except OSError as e:
                raise OSError(
                    f"reading image {uri} of row {r.get(schema.ID)!r} failed ({e}); the shard is "
                    "not committed and a re-run reads it again. Check the store and its "
                    "credentials, or raise storage.max_attempts"
                ) from e


def _check_ids(rows: list[dict], shard: Shard) -> None:
    for r in rows:
        if r.get(schema.ID) in (None, ""):
            raise CorpusError(f"{shard.uri}: a row has no `id`; every row needs a unique string id")
        r[schema.ID] = str(r[schema.ID])


def _read_parquet(
    store: Storage, shard: Shard, corpus: str, max_rows: int | None
) -> Iterator[list[dict]]:
    pf = store.parquet_file(shard.uri)
    names = set(pf.schema_arrow.names)
    if schema.ID not in names:
        raise CorpusError(f"{shard.uri} has no `{schema.ID}` column; columns: {sorted(names)}")
    if not names & {schema.TEXT, schema.IMAGE, schema.IMAGE_PATH}:
        raise CorpusError(
            f"{shard.uri} has none of text, image, image_path; columns: {sorted(names)}"
        )
    wanted = [
        n
        for n in pf.schema_arrow.names
        if n in (schema.ID, schema.TEXT, schema.IMAGE, schema.IMAGE_PATH, schema.SPLIT)
        or n.startswith(schema.LABEL)
    ]
    seen = 0
    for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=wanted):
        rows = batch.to_pylist()
        if max_rows is not None:
            rows = rows[: max(0, max_rows - seen)]
        if not rows:
            break
        seen += len(rows)
        yield rows


def _read_webdataset(
    store: Storage, shard: Shard, corpus: str, max_rows: int | None
) -> Iterator[list[dict]]:
    """img2dataset layout: members KEY.jpg / KEY.txt / KEY.json grouped by KEY."""
    samples: dict[str, dict] = {}
    order: list[str] = []
    with store.open(shard.uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            key, _, ext = base.partition(".")
            if key not in samples:
                samples[key] = {}
                order.append(key)
            samples[key][ext.lower()] = tar.extractfile(member).read()
    rows = []
    for key in order[:max_rows] if max_rows is not None else order:
        parts = samples[key]
        meta = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"])
            except json.JSONDecodeError:
                meta = {ERROR: "corrupt json sidecar"}
        row = {
            k: v
            for k, v in meta.items()
            if k.startswith(schema.LABEL) or k in (schema.SPLIT, ERROR)
        }
        row[schema.ID] = str(meta.get("id") or meta.get("key") or key)
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        text = next((parts[e] for e in TEXT_EXTS if e in parts), None)
        row[schema.IMAGE] = image
        row[schema.TEXT] = (
            text.decode("utf-8", errors="replace") if text is not None else meta.get("caption")
        )
        rows.append(row)
    for i in range(0, len(rows), READ_BATCH_ROWS):
        yield rows[i : i + READ_BATCH_ROWS]


def _read_manifest(
    store: Storage, shard: Shard, corpus: str, max_rows: int | None
) -> Iterator[list[dict]]:
    rows = _manifest_rows(store, shard.uri)[shard.start : shard.stop]
    if max_rows is not None:
        rows = rows[:max_rows]
    base = posixpath.dirname(shard.uri) if is_remote(shard.uri) else shard.uri.rsplit("/", 1)[0]
    for i in range(0, len(rows), READ_BATCH_ROWS):
        chunk = [dict(r) for r in rows[i : i + READ_BATCH_ROWS]]
        for r in chunk:
            for k, v in list(r.items()):
                if k.startswith(schema.LABEL) and isinstance(v, str) and v.startswith("["):
                    try:
                        r[k] = json.loads(v)  # CSV manifests write multi-labels as JSON lists
                    except json.JSONDecodeError:
                        pass
        _attach_images(store, chunk, base)
        yield chunk


READERS = {"parquet": _read_parquet, "webdataset": _read_webdataset, "folder": _read_manifest}


def read_shard(
    store: Storage, shard: Shard, corpus: str, max_rows: int | None = None
) -> Iterator[pa.Table]:
    """Yield the shard's rows as normalised Arrow tables of up to READ_BATCH_ROWS rows."""
    for rows in READERS[shard.format](store, shard, corpus, max_rows):
        _check_ids(rows, shard)
        if shard.format == "parquet":
            _attach_images(store, rows, corpus)
        yield _rows_to_table(rows, shard)


def count_rows(store: Storage, shard: Shard, corpus: str, max_rows: int | None = None) -> int:
    """Rows in a shard, as read_shard yields them (used to prove embedded + rejected = input)."""
    if shard.format == "parquet":
        n = store.parquet_file(shard.uri).metadata.num_rows
    elif shard.format == "folder":
        n = (shard.stop or 0) - shard.start
    else:
        n = sum(t.num_rows for t in read_shard(store, shard, corpus))
    return n if max_rows is None else min(n, max_rows)
