"""Corpus readers: list a corpus as input shards, and read one shard into normalised batches.

A shard is the unit of parallel reading, of output naming and of resume: Parquet file, WebDataset
tar, or a fixed row range of a folder's manifest. Its `key` derives from its path under the corpus
root, never from Ray's block layout, so a re-run maps every row to the same output file.

Every row read comes out, valid or not: a row that cannot be read whole (an image file that is
missing, text that is not UTF-8, a CSV line with an extra field) carries its reason in `_error`
(`adapt.extract.validate` checks every row) and ends up in the rejects, never silently dropped.
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
from dataclasses import dataclass, field

import pyarrow as pa

from adapt import schema
from adapt.extract.validate import ERROR, Limits, Validator, attach_images, decode, reject
from adapt.storage import Storage, is_remote, join

FORMATS = ("parquet", "webdataset", "folder")
MANIFEST_SUFFIXES = (".jsonl", ".csv")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption")
# Rows per block out of a read task. Small blocks keep the pipeline streaming, and once decoded
# (64 x 150 KB of 224 x 224 pixels: 9.6 MB) they let Ray Data run many decode tasks inside its
# object-store budget: with 256-row blocks a 768 MB store fed one decode task at a time.
READ_BATCH_ROWS = 64
MANIFEST_ROWS_PER_SHARD = 2048

SHARD = "_shard"  # carried through the pipeline: which input shard a row came from
REUSE = "_reuse"  # true when the row's embeddings can be copied from the previous output
# On the rows of a shard's last block only: how many rows the read of the shard yielded, so the
# driver knows the shard is complete once that many have been written.
SHARD_ROWS = "_shard_rows"


class CorpusError(ValueError):
    """The corpus cannot be read as asked; the message says what to fix."""


@dataclass(frozen=True)
class Shard:
    uri: str
    format: str
    key: str
    start: int = 0  # row range, for manifest shards
    stop: int | None = None
    # The listing's description of `uri` (size, ETag or mtime), kept so that the source
    # signature needs no request of its own.
    info: dict | None = field(default=None, compare=False, hash=False, repr=False)


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
    """A manifest's rows, one per CSV record or non-blank JSONL line; a line that does not parse
    is a row of its own with its reason, so the count is the same however bad the file is."""
    text = decode(store.read_bytes(uri))
    if uri.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text, newline="")))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                row = {ERROR: reject("bad_row", f"line {n} is not JSON: {e.msg}")}
            if not isinstance(row, dict):
                row = {ERROR: reject("bad_row", f"line {n} is not a JSON object")}
            rows.append(row)
    return rows


def list_shards(
    store: Storage, corpus: str, fmt: str = "auto", manifest: str | None = None
) -> list[Shard]:
    """The corpus as a sorted list of shards."""
    fmt = detect_format(store, corpus) if fmt == "auto" else fmt
    if fmt in ("parquet", "webdataset"):
        infos = store.file_infos(corpus, (".parquet",) if fmt == "parquet" else (".tar",))
        shards = [Shard(f, fmt, shard_key(corpus, f), info=infos[f]) for f in sorted(infos)]
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
            info = store.info(mfile)
            n = len(_manifest_rows(store, mfile))
            for start in range(0, n, MANIFEST_ROWS_PER_SHARD):
                stop = min(n, start + MANIFEST_ROWS_PER_SHARD)
                key = shard_key(corpus, mfile, f"-{start:09d}")
                shards.append(Shard(mfile, fmt, key, start, stop, info=info))
    else:
        raise CorpusError(f"unknown corpus format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    if not shards:
        raise CorpusError(f"no {fmt} shards under {corpus!r}")
    keys = [s.key for s in shards]
    if len(set(keys)) != len(keys):
        raise CorpusError("two input files map to the same shard key; rename one of them")
    return shards


# -- reading one shard ---------------------------------------------------------------------------


def _rows_to_table(rows: list[dict], shard: Shard, multi: dict[str, bool]) -> pa.Table:
    """Checked dict rows -> the pipeline's columns, keeping label columns and split as given.

    A label column is a list of strings where the shard's labels are lists (`multi`), a string
    where they are single values, and of null type while no row of the shard has one yet (so
    batches of one shard always concatenate).
    """
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
            kind = multi.get(k)
            arrays[k] = pa.array(
                v, pa.null() if kind is None else pa.list_(pa.string()) if kind else pa.string()
            )
        else:
            arrays[k] = pa.array(v, types.get(k, pa.string()))
    return pa.table(arrays)


def content_hash(row: dict) -> str:
    """A row's identity for incremental runs: its id, text and image bytes (not its labels)."""
    digest = hashlib.sha256()
    texts = (row.get(schema.ID), row.get(schema.TEXT))
    for part in (*(None if t is None else str(t).encode() for t in texts), row.get(schema.IMAGE)):
        if part is None:
            digest.update((1).to_bytes(8, "little") + b"\x00")
            continue
        view = memoryview(part)  # framed as b"\x01" + the bytes, fed in parts: no copy
        digest.update((view.nbytes + 1).to_bytes(8, "little") + b"\x01")
        digest.update(view)
    return digest.hexdigest()[:32]


def source_signature(store: Storage, shard: Shard) -> dict:
    """What changes when a shard's source changes: size plus ETag or modification time, from
    the listing that found the shard (`list_shards`), else from a request of its own."""
    info = shard.info or store.info(shard.uri)
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
        rows = _batch_rows(batch)
        if max_rows is not None:
            rows = rows[: max(0, max_rows - seen)]
        if not rows:
            break
        seen += len(rows)
        yield rows


def _text_values(column: pa.Array) -> list:
    """A column's values with strings decoded per value (invalid UTF-8 kept for the validator to
    name, where to_pylist would fail the whole batch)."""
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return [None if b is None else decode(b) for b in column.cast(pa.binary()).to_pylist()]
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_string(t.value_type):
        lists = column.cast(pa.list_(pa.binary())).to_pylist()
        return [None if v is None else [None if b is None else decode(b) for b in v] for v in lists]
    return column.to_pylist()


def _batch_rows(batch: pa.RecordBatch) -> list[dict]:
    columns = {name: _text_values(batch.column(i)) for i, name in enumerate(batch.schema.names)}
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def _read_webdataset(
    store: Storage, shard: Shard, corpus: str, max_rows: int | None
) -> Iterator[list[dict]]:
    """img2dataset layout: members KEY.jpg / KEY.txt / KEY.json grouped by KEY, the member's path
    up to the first dot of its file name (so `train/0001.jpg` and `val/0001.jpg` are two rows)."""
    samples: dict[str, dict] = {}
    order: list[str] = []
    with store.open(shard.uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, base = posixpath.split(member.name)
            stem, _, ext = base.partition(".")
            key = posixpath.join(folder, stem) if folder not in ("", ".") else stem
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
                meta = json.loads(decode(parts["json"]))
            except json.JSONDecodeError as e:
                meta = {ERROR: reject("bad_row", f"{key}.json is not JSON: {e.msg}")}
            if not isinstance(meta, dict):
                meta = {ERROR: reject("bad_row", f"{key}.json is not a JSON object")}
        row = {
            k: v
            for k, v in meta.items()
            if k.startswith(schema.LABEL) or k in (schema.SPLIT, ERROR)
        }
        row[schema.ID] = meta.get("id") or meta.get("key") or key
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        text = next((parts[e] for e in TEXT_EXTS if e in parts), None)
        row[schema.IMAGE] = image
        row[schema.TEXT] = decode(text) if text is not None else meta.get("caption")
        rows.append(row)
    for i in range(0, len(rows), READ_BATCH_ROWS):
        yield rows[i : i + READ_BATCH_ROWS]


def manifest_base(shard: Shard) -> str:
    """The folder a manifest shard's relative `image_path`s start from: the manifest's own."""
    return posixpath.dirname(shard.uri) if is_remote(shard.uri) else shard.uri.rsplit("/", 1)[0]


def _read_manifest(
    store: Storage, shard: Shard, corpus: str, max_rows: int | None
) -> Iterator[list[dict]]:
    rows = _manifest_rows(store, shard.uri)[shard.start : shard.stop]
    if max_rows is not None:
        rows = rows[:max_rows]
    for i in range(0, len(rows), READ_BATCH_ROWS):
        chunk = [dict(r) for r in rows[i : i + READ_BATCH_ROWS]]
        for r in chunk:
            for k, v in list(r.items()):
                if (
                    isinstance(k, str)
                    and k.startswith(schema.LABEL)
                    and isinstance(v, str)
                    and v.startswith("[")
                ):
                    try:
                        r[k] = json.loads(v)  # CSV manifests write multi-labels as JSON lists
                    except json.JSONDecodeError:
                        pass
        yield chunk


READERS = {"parquet": _read_parquet, "webdataset": _read_webdataset, "folder": _read_manifest}


def read_shard(
    store: Storage,
    shard: Shard,
    corpus: str,
    max_rows: int | None = None,
    limits: Limits | None = None,
) -> Iterator[pa.Table]:
    """Yield the shard's rows as normalised Arrow tables of up to READ_BATCH_ROWS rows, every
    row checked (`Validator`): a bad one carries its reason in `_error`."""
    limits = limits or Limits(corpus=corpus)
    validator = Validator(shard.key, limits)
    base = manifest_base(shard) if shard.format == "folder" else corpus
    for rows in READERS[shard.format](store, shard, corpus, max_rows):
        rows = validator.check(rows)
        attach_images(store, rows, base, limits)
        yield _rows_to_table(rows, shard, validator.label_kinds())


def count_rows(store: Storage, shard: Shard, corpus: str, max_rows: int | None = None) -> int:
    """Rows in a shard, as read_shard yields them (used to prove embedded + rejected = input)."""
    if shard.format == "parquet":
        n = store.parquet_file(shard.uri).metadata.num_rows
    elif shard.format == "folder":
        n = (shard.stop or 0) - shard.start
    else:
        n = sum(len(rows) for rows in _read_webdataset(store, shard, corpus, None))
    return n if max_rows is None else min(n, max_rows)
