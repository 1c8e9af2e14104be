"""Extract stage storage: staged pieces, per-shard commits, the manifest.

A wave's batches are written to staging as pieces, split by input shard. A shard commits by
merging its pieces into its output files and then writing its commit record (the shard is done
once the record exists); the manifest, written last over every record, completes the run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from adapt import layout, schema
from adapt.config import Config
from adapt.extract import readers
from adapt.extract.validate import split_error
from adapt.extract.workers import META, batch_metas
from adapt.storage import Storage, basename

LINEAGE_KEY = b"adapt.lineage"


def write_pieces(table: pa.Table, store: Storage, output: str, wave: str) -> pa.Table:
    """Write one embedded batch to staging, split by input shard; return a summary row per piece:
    its shard, file and rows, the shard's row count when this batch holds the shard's last block
    (`shard_rows`), and, on the first row, the batch's fingerprints, timings, encoder busy
    intervals and decode intervals (JSON)."""
    summary = defaultdict(list)
    t0, cpu = time.perf_counter(), time.process_time()
    metas = batch_metas(table)
    fingerprints = next((m["fingerprints"] for m in metas if m.get("fingerprints")), {})
    timings: dict[str, float] = defaultdict(float)
    busy, decoded = [], []
    for m in metas:
        for k, v in m.get("timings", {}).items():
            timings[k] += v
        busy.extend(m.get("busy", []))
        decoded.extend(m.get("decoded", []))
    table = table.drop_columns([c for c in (META,) if c in table.column_names])
    counts = table.column(readers.SHARD_ROWS) if readers.SHARD_ROWS in table.column_names else None
    for key in sorted(set(table.column(readers.SHARD).to_pylist())):
        mask = pc.equal(table.column(readers.SHARD), key)
        part = table.filter(mask)
        uri = layout.staged_piece(output, wave, key, uuid.uuid4().hex)
        drop = [c for c in (readers.SHARD, readers.SHARD_ROWS) if c in part.column_names]
        store.write_parquet(uri, schema.storable(part.drop_columns(drop)))
        summary["shard"].append(key)
        summary["piece"].append(uri)
        summary["rows"].append(part.num_rows)
        summary["shard_rows"].append(
            pc.max(counts.filter(mask)).as_py() if counts is not None else None
        )
    timings["write_s"] += time.perf_counter() - t0
    timings["write_cpu_s"] += time.process_time() - cpu
    n = len(summary["shard"])
    # Batch bookkeeping rides on the first piece's row only, so it adds up once.
    extra = json.dumps(
        {"fingerprints": fingerprints, "timings": timings, "busy": busy, "decoded": decoded}
    )
    summary["meta"] = [extra] + [None] * (n - 1)
    return pa.table(dict(summary), schema=PIECES_SCHEMA) if n else PIECES_SCHEMA.empty_table()


PIECES_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("piece", pa.string()),
        ("rows", pa.int64()),
        ("shard_rows", pa.int64()),
        ("meta", pa.string()),
    ]
)


def _variable_lists(table: pa.Table) -> pa.Table:
    """Embedding columns as variable-size lists, so pieces stored either way concatenate."""
    for i, f in enumerate(table.schema):
        if f.name.endswith("_embedding") and pa.types.is_fixed_size_list(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.float32())))
    return table


def _fixed_lists(table: pa.Table, fingerprints: dict) -> pa.Table:
    """Embedding columns back to fixed-size lists of each modality's dimension."""
    for modality, fp in fingerprints.items():
        name = schema.embedding_column(modality)
        if name in table.column_names:
            dim = int(fp["dim"])
            column = table.column(name).combine_chunks()
            if column.null_count:
                # A null entry holds no values: give it zeros, then mask it null again.
                zeros = pa.scalar([0.0] * dim, pa.list_(pa.float32()))
                values = pc.fill_null(column, zeros).flatten()
                fsl = pa.FixedSizeListArray.from_arrays(values, dim, mask=column.is_null())
            else:
                fsl = column.cast(pa.list_(pa.float32(), dim))
            table = table.set_column(table.column_names.index(name), name, fsl)
    return table


def _typed_labels(table: pa.Table) -> pa.Table:
    """A label column no row of the shard filled (null type in every piece) stored as strings."""
    for i, f in enumerate(table.schema):
        if f.name.startswith(schema.LABEL) and pa.types.is_null(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


def _copy_reused(rows: pa.Table, previous: pa.Table | None, modalities: list[str]) -> pa.Table:
    """Fill the embeddings of unchanged rows from the shard's previous output (matched by id)."""
    if previous is None or rows.num_rows == 0:
        raise RuntimeError("rows were marked reusable but the previous output is gone; re-run")
    position = {i: k for k, i in enumerate(previous.column(schema.ID).to_pylist())}
    take = pa.array([position[i] for i in rows.column(schema.ID).to_pylist()], pa.int64())
    for modality in modalities:
        name = schema.embedding_column(modality)
        if name in rows.column_names:
            rows = rows.set_column(
                rows.column_names.index(name), name, previous.column(name).take(take)
            )
    return rows


def _rejects_table(
    ids: list[str], codes: list[str], details: list[str | None], shard: readers.Shard
) -> pa.Table:
    """Rows of `rejects/` for one shard: id, reason code, detail, stage, source."""
    n = len(ids)
    return pa.table(
        {
            schema.ID: pa.array(ids, pa.string()),
            schema.REASON: pa.array(codes, pa.string()),
            schema.DETAIL: pa.array(details, pa.string()),
            schema.STAGE: pa.array(["extract"] * n, pa.string()),
            "source": pa.array([shard.uri] * n, pa.string()),
        },
        schema=schema.REJECTS_SCHEMA,
    )


def commit_shard(
    store: Storage,
    output: str,
    shard: readers.Shard,
    pieces: list[str],
    expected_rows: int,
    fingerprints: dict,
    lineage: dict,
    signature: dict,
) -> dict:
    """Merge a shard's staged pieces into its output files, then write its commit record."""
    emb_uri = layout.embeddings_file(output, shard.key)
    rej_uri = layout.rejects_file(output, shard.key)
    tables = [_variable_lists(store.read_parquet(p)) for p in sorted(pieces)]
    table = (
        _typed_labels(pa.concat_tables(tables, promote_options="permissive")) if tables else None
    )
    total = table.num_rows if table is not None else 0
    if total != expected_rows:
        raise RuntimeError(
            f"shard {shard.key}: {total} rows came through the pipeline but the input has "
            f"{expected_rows}; nothing was committed for it, re-run to redo it"
        )
    record = {
        "shard": shard.key,
        "source": shard.uri,
        "source_signature": signature,
        "encoders_id": lineage["encoders_id"],
        "input_rows": expected_rows,
        "embedded": 0,
        "newly_embedded": 0,
        "reused": 0,
        "rejected": 0,
        "rejected_by_reason": {},
        "fingerprints": fingerprints,
    }
    if table is not None and total:
        failed = table.column(readers.ERROR).is_valid()
        reused = (
            pc.and_(pc.invert(failed), pc.fill_null(table.column(readers.REUSE), False))
            if readers.REUSE in table.column_names
            else pa.array([False] * total)
        )
        fresh = table.filter(pc.and_(pc.invert(failed), pc.invert(reused)))
        again = table.filter(reused)
        if again.num_rows:
            previous = (
                _variable_lists(store.read_parquet(emb_uri)) if store.exists(emb_uri) else None
            )
            again = _copy_reused(again, previous, sorted(fingerprints))
        drop = [c for c in (readers.ERROR, readers.REUSE) if c in table.column_names]
        ok = pa.concat_tables([fresh.drop_columns(drop), again.drop_columns(drop)])
        bad = table.filter(failed)
        pairs = [split_error(e) for e in bad.column(readers.ERROR).to_pylist()]
        codes, details = [c for c, _ in pairs], [d for _, d in pairs]
        record.update(
            embedded=ok.num_rows,
            newly_embedded=fresh.num_rows,
            reused=again.num_rows,
            rejected=bad.num_rows,
            rejected_by_reason=dict(sorted(Counter(codes).items())),
        )
        meta = {
            LINEAGE_KEY: json.dumps({**lineage, **record}, sort_keys=True, default=str).encode()
        }
        if ok.num_rows:
            ok = schema.storable(_fixed_lists(ok, fingerprints))
            size = store.write_parquet(emb_uri, ok.replace_schema_metadata(meta))
            record.update(embeddings_file=emb_uri, embeddings_bytes=size)
        else:
            store.delete(emb_uri)
        if bad.num_rows:
            rejects = _rejects_table(bad.column(schema.ID).to_pylist(), codes, details, shard)
            size = store.write_parquet(rej_uri, rejects.replace_schema_metadata(meta))
            record.update(rejects_file=rej_uri, rejects_bytes=size)
        else:
            store.delete(rej_uri)
    record["committed_at"] = datetime.now(UTC).isoformat()
    store.write_json(layout.commit_record(output, shard.key), record)  # last: the shard is now done
    return record


def quarantine_duplicates(
    store: Storage, output: str, shards: list[readers.Shard], records: dict | None = None
) -> int:
    """Move rows whose id an earlier shard (in key order) already embedded to `rejects/` as
    duplicate_id; return how many. Within a shard the reader keeps ids unique; this is the
    check across shards, from the id column of every output file. A shard it changes gets its
    files rewritten, then its commit record, last as always. `records` (shard key -> commit
    record) saves reading the records; those it rewrites are updated in it."""
    first: dict[str, str] = {}
    moved = 0
    records = records if records is not None else {}
    for shard in shards:
        record = records.get(shard.key) or store.read_json(layout.commit_record(output, shard.key))
        uri = record.get("embeddings_file")
        if not uri:
            continue
        ids = store.read_parquet(uri, columns=[schema.ID]).column(schema.ID).to_pylist()
        dup = {}
        for i in ids:
            if first.setdefault(i, shard.key) != shard.key:
                dup[i] = first[i]
        if dup:
            records[shard.key] = _move_to_rejects(store, output, shard, record, dup)
            moved += len(dup)
    return moved


def _move_to_rejects(
    store: Storage, output: str, shard: readers.Shard, record: dict, dup: dict[str, str]
) -> None:
    emb_uri, rej_uri = record["embeddings_file"], layout.rejects_file(output, shard.key)
    table = store.read_parquet(emb_uri)
    meta = table.schema.metadata
    mask = pa.array([i in dup for i in table.column(schema.ID).to_pylist()], pa.bool_())
    ok, bad = table.filter(pc.invert(mask)), table.filter(mask)
    ids = bad.column(schema.ID).to_pylist()
    moved = _rejects_table(
        ids, ["duplicate_id"] * len(ids), [f"also in shard {dup[i]}" for i in ids], shard
    )
    if record.get("rejects_file"):
        moved = pa.concat_tables([store.read_parquet(rej_uri).cast(schema.REJECTS_SCHEMA), moved])
    by_reason = Counter(record.get("rejected_by_reason", {}))
    by_reason["duplicate_id"] += len(ids)
    record = {
        **record,
        "embedded": ok.num_rows,
        "rejected": record["rejected"] + len(ids),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "rejects_file": rej_uri,
        "rejects_bytes": store.write_parquet(rej_uri, moved.replace_schema_metadata(meta)),
    }
    if ok.num_rows:
        record["embeddings_bytes"] = store.write_parquet(emb_uri, ok.replace_schema_metadata(meta))
    else:
        store.delete(emb_uri)
        record.pop("embeddings_file")
        record.pop("embeddings_bytes", None)
    store.write_json(layout.commit_record(output, shard.key), record)
    return record


def file_rows(store: Storage, uri: str) -> int | None:
    """Rows of a Parquet output file from its footer, or None when it is gone or unreadable."""
    try:
        return store.parquet_file(uri).metadata.num_rows
    except (FileNotFoundError, OSError, ValueError):
        return None


def output_sizes(store: Storage, output: str) -> dict[str, int]:
    """Bytes of every committed-looking output file, from one listing of `embeddings/` and one of
    `rejects/` (bookkeeping names starting with `_` are skipped)."""
    return {
        **store.file_sizes(layout.embeddings_dir(output), (".parquet",)),
        **store.file_sizes(layout.rejects_dir(output), (".parquet",)),
    }


def record_intact(store: Storage, record: dict, sizes: dict[str, int]) -> bool:
    """Whether the files a commit record names are there as it wrote them.

    A record is trusted only with its files: an embeddings or rejects file deleted or replaced
    after the commit makes the shard pending again, so a re-run restores its rows instead of
    writing a manifest that names a file no reader can open. `sizes` (`output_sizes`) is checked
    against the bytes the record wrote; a record from before it kept them is checked by the rows
    in the file's footer instead.
    """
    for key, count in (("embeddings", "embedded"), ("rejects", "rejected")):
        uri = record.get(f"{key}_file")
        if uri is None:
            if record.get(count, 0):
                return False
        elif uri not in sizes:
            return False
        elif f"{key}_bytes" in record:
            if sizes[uri] != record[f"{key}_bytes"]:
                return False
        elif file_rows(store, uri) != record.get(count, 0):
            return False
    return True


def clean_uncommitted(store: Storage, output: str, pending: list[readers.Shard]) -> None:
    """Remove what a killed run may have left: staging pieces and files of uncommitted shards."""
    store.delete(layout.staging_dir(output), recursive=True)
    for shard in pending:
        store.delete(layout.embeddings_file(output, shard.key))
        store.delete(layout.rejects_file(output, shard.key))


def remove_orphans(store: Storage, output: str, shards: list[readers.Shard]) -> list[str]:
    """Delete the output files and commit records of shards no longer in the corpus (an input
    file removed or renamed), so that reading the folder gives no rows twice; return them.
    Run after the manifest, which already leaves them out."""
    keys = {s.key for s in shards}
    stale = [
        uri
        for uri in output_sizes(store, output)
        if basename(uri).removesuffix(".parquet") not in keys
    ] + [
        uri
        for uri in store.list_files(layout.commits_dir(output), (".json",))
        if basename(uri).removesuffix(".json") not in keys
    ]
    for uri in stale:
        store.delete(uri)
    return stale


def check_same_encoders(store: Storage, output: str, encoders_id: str) -> None:
    """Refuse to mix embeddings of different encoders (or encoder settings) in one folder."""
    manifest = store.read_json_or_none(layout.manifest(output))
    if manifest and manifest.get("encoders_id") not in (None, encoders_id):
        raise ValueError(
            f"{layout.embeddings_dir(output)} holds embeddings of other encoders or settings "
            f"(id {manifest['encoders_id']}, now {encoders_id}); write to a new `output`, or use "
            "`adapt nightly`, which keeps one folder per encoder version"
        )


def _modified(info: dict) -> float | None:
    """A listing's modification time in seconds (local mtime, or S3's LastModified)."""
    stamp = info.get("mtime", info.get("LastModified"))
    if stamp is None:
        return None
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    try:
        return float(stamp)
    except (TypeError, ValueError):
        return None


def read_records(store: Storage, output: str, shards: list[readers.Shard]) -> dict:
    """Shard key -> its commit record (None where there is none), from one listing of the
    records, one read of the manifest and one read per record written since the manifest.

    The manifest holds a copy of every record as it was when the manifest was written, under the
    extract lease, after the run's last commit; a record file listed as older than the manifest
    is therefore the manifest's copy. A record of a run that ended without a manifest is newer
    and read from its file, and so is one written in the manifest's second (S3 times are whole
    seconds).
    """
    listed = store.file_infos(layout.commits_dir(output), (".json",), recursive=False)
    copies: dict[str, dict] = {}
    manifest_at = None
    minfo = store.file_infos(layout.manifest(output))
    if minfo:
        manifest = store.read_json_or_none(layout.manifest(output))
        manifest_at = _modified(next(iter(minfo.values())))
        if manifest and manifest_at is not None:
            copies = {r["shard"]: r for r in manifest.get("shards", []) if r.get("shard")}
    out: dict[str, dict | None] = {}
    for s in shards:
        uri = layout.commit_record(output, s.key)
        info = listed.get(uri)
        if info is None:
            out[s.key] = None
            continue
        at = _modified(info)
        copy = copies.get(s.key)
        if copy is not None and at is not None and manifest_at is not None and at < manifest_at - 1:
            out[s.key] = copy
        else:
            out[s.key] = store.read_json_or_none(uri)
    return out


def write_manifest(
    store: Storage,
    config: Config,
    shards: list[readers.Shard],
    lineage: dict,
    known: dict[str, dict] | None = None,
):
    """The manifest over every shard's commit record: `known` (shard key -> record, as this run
    read or wrote them) saves reading them again; the others are read."""
    known = known or {}
    missing = [s for s in shards if s.key not in known]
    read = read_records(store, config.output, missing) if missing else {}
    records = [r for s in shards if (r := known.get(s.key) or read.get(s.key))]
    if len(records) != len(shards):
        raise RuntimeError(f"{len(shards) - len(records)} shards are not committed; re-run extract")
    fingerprints = next((r["fingerprints"] for r in records if r["fingerprints"]), {})
    totals = {
        "input_rows": sum(r["input_rows"] for r in records),
        "embedded": sum(r["embedded"] for r in records),
        "rejected": sum(r["rejected"] for r in records),
        "rejected_by_reason": dict(
            sorted(
                sum((Counter(r.get("rejected_by_reason", {})) for r in records), Counter()).items()
            )
        ),
        "fingerprints": fingerprints,
        "encoders_id": lineage["encoders_id"],
    }
    manifest = {
        **lineage,
        **totals,
        "complete": True,
        "shards": records,
        "schema": {m: schema.embedding_column(m) for m in sorted(config.encoders)},
        "written_at": datetime.now(UTC).isoformat(),
    }
    uri = layout.manifest(config.output)
    store.write_json(uri, manifest)
    return uri, totals
