"""The extract stage: frozen encoders over a corpus, embeddings to Parquet.

Three layers, as in every stage:
- pure core: `decode_image` and `embed_batch` (Arrow table in, Arrow table out; no Ray, no storage);
- Ray adapter: `EmbedWorker`, an actor that builds the encoders once and calls the core;
- storage: `write_pieces` and `commit_shard`, the only code here that writes bytes.

Output layout under `{output}/embeddings/`:
    <shard>.parquet           embedded rows of one input shard (one file per input shard)
    _commits/<shard>.json     written after the shard's files: the shard's completion record
    _manifest.json            written last: counts, fingerprints, config; the run's completion marker
    _staging/                 pieces of the wave in flight; hidden from pyarrow/DuckDB readers
and `{output}/rejects/<shard>.parquet` (id, reason). Every input row lands in exactly one of the two.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapt import __version__ as adapt_version
from adapt import readers, schema
from adapt.config import Config
from adapt.storage import Storage, join

log = logging.getLogger("adapt.extract")

META = "_meta"
LINEAGE_KEY = b"adapt.lineage"
# Largest decoded image we accept, in pixels: a guard against decompression bombs (about 16k x 16k).
MAX_IMAGE_PIXELS = 268_435_456


class RejectBudgetExceeded(RuntimeError):
    """More rows were rejected than extract.max_reject_fraction allows."""


# -- pure core -----------------------------------------------------------------------------------

def decode_image(data: bytes):
    """Encoded bytes -> RGB PIL image; transparent pixels composited on white. Raises on bad data."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with Image.open(io.BytesIO(data)) as probe:
        probe.verify()  # catches truncated and corrupt files before a full decode
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def _prepare(modality: str, value):
    """Validate and decode one cell; return (item, None) or (None, reason)."""
    if value is None:
        return None, f"missing {modality}"
    if modality == "text":
        if not value.strip():
            return None, "empty text"
        return value, None
    try:
        return decode_image(value), None
    except Exception as e:  # PIL raises many types for bad data; the row's reason records which
        return None, f"corrupt image: {type(e).__name__}: {e}"[:300]


def embed_batch(encoders: dict, table: pa.Table, required: list[str],
                timings: dict | None = None) -> pa.Table:
    """Embed one batch. Returns every input row: embeddings where possible, `_error` otherwise.

    A row is rejected when it already carries a read error, when a required modality is missing,
    empty or corrupt. An optional modality that is missing leaves its embedding null. Rows marked
    reusable (unchanged since the last run) are passed through unembedded; the commit copies theirs.
    `timings`, when given, accumulates seconds for decode, preprocess and forward.
    """
    t_decode = time.perf_counter()
    n = table.num_rows
    errors = table.column(readers.ERROR).to_pylist() if readers.ERROR in table.column_names else [None] * n
    reuse = (table.column(readers.REUSE).to_pylist() if readers.REUSE in table.column_names
             else [False] * n)
    items: dict[str, list] = {}
    for modality in sorted(encoders):
        column = table.column(modality).to_pylist() if modality in table.column_names else [None] * n
        prepared = []
        for i, value in enumerate(column):
            if errors[i] is not None or reuse[i]:
                prepared.append(None)
                continue
            item, reason = _prepare(modality, value)
            if reason is not None and (modality in required or value is not None):
                errors[i] = reason  # a present-but-bad value is an error even when optional
            prepared.append(item)
        items[modality] = prepared
    if timings is not None:
        timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - t_decode
    keep = (schema.ID, schema.SPLIT, schema.CONTENT_HASH, readers.SHARD, readers.REUSE)
    out = {c: table.column(c) for c in table.column_names if c.startswith(schema.LABEL) or c in keep}
    for modality, encoder in sorted(encoders.items()):
        rows = [i for i in range(n) if errors[i] is None and items[modality][i] is not None]
        vectors = encoder.embed([items[modality][i] for i in rows], timings)
        if not np.all(np.isfinite(vectors)):
            bad = {rows[j] for j in np.where(~np.isfinite(vectors).all(axis=1))[0]}
            for i in bad:
                errors[i] = f"non-finite {modality} embedding"
        full = np.zeros((n, encoder.dim), dtype=np.float32)
        full[rows] = vectors
        valid = np.zeros(n, dtype=bool)
        valid[rows] = True
        flat = pa.array(full.reshape(-1), pa.float32())
        out[schema.embedding_column(modality)] = pa.FixedSizeListArray.from_arrays(
            flat, encoder.dim, mask=pa.array(~valid))
    out[readers.ERROR] = pa.array(errors, pa.string())
    return pa.table(out)


# -- Ray adapter -----------------------------------------------------------------------------------

class EmbedWorker:
    """Ray Data actor: loads the encoders once, then embeds batch after batch."""

    def __init__(self, config: Config, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        from adapt.encoders import build_encoder

        ext = config.extract
        self.required = config.required_modalities
        self.encoders = {
            modality: build_encoder(spec, modality, device=ext.device, dtype=ext.dtype)
            for modality, spec in sorted(config.encoders.items())
        }
        self.fingerprints = json.dumps({m: e.fingerprint() for m, e in self.encoders.items()},
                                       sort_keys=True)

    def __call__(self, table: pa.Table) -> pa.Table:
        timings: dict[str, float] = {}
        out = embed_batch(self.encoders, table, self.required, timings)
        # One JSON cell per batch (the first row) carries fingerprints and timings to the writer.
        meta = json.dumps({"fingerprints": self.fingerprints, "timings": timings})
        return out.append_column(META, pa.array([meta] + [None] * (out.num_rows - 1), pa.string()))


# -- storage -------------------------------------------------------------------------------------

def staging_dir(output: str) -> str:
    return join(output, "embeddings", "_staging")


def write_pieces(table: pa.Table, store: Storage, output: str, wave: str) -> pa.Table:
    """Write one embedded batch to staging, split by input shard; return a summary row per piece."""
    summary = defaultdict(list)
    t0 = time.perf_counter()
    metas = [json.loads(m) for m in table.column(META).to_pylist() if m]
    fingerprints = json.dumps(json.loads(metas[0]["fingerprints"]) if metas else {})
    timings: dict[str, float] = defaultdict(float)
    for m in metas:
        for k, v in m["timings"].items():
            timings[k] += v
    table = table.drop_columns([META])
    for key in sorted(set(table.column(readers.SHARD).to_pylist())):
        part = table.filter(pc.equal(table.column(readers.SHARD), key))
        uri = join(staging_dir(output), wave, key, f"{uuid.uuid4().hex}.parquet")
        store.write_parquet(uri, schema.storable(part.drop_columns([readers.SHARD])))
        summary["shard"].append(key)
        summary["piece"].append(uri)
        summary["rows"].append(part.num_rows)
        summary["fingerprints"].append(fingerprints)
    timings["write_s"] += time.perf_counter() - t0
    # Batch timings ride on the first piece's row only, so they add up once.
    summary["timings"] = [json.dumps(timings)] + [None] * (len(summary["shard"]) - 1)
    return pa.table(dict(summary), schema=pa.schema([
        ("shard", pa.string()), ("piece", pa.string()), ("rows", pa.int64()),
        ("fingerprints", pa.string()), ("timings", pa.string())]))


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


def _copy_reused(rows: pa.Table, previous: pa.Table | None, modalities: list[str]) -> pa.Table:
    """Fill the embeddings of unchanged rows from the shard's previous output (matched by id)."""
    if previous is None or rows.num_rows == 0:
        raise RuntimeError("rows were marked reusable but the previous output is gone; re-run")
    position = {i: k for k, i in enumerate(previous.column(schema.ID).to_pylist())}
    take = pa.array([position[i] for i in rows.column(schema.ID).to_pylist()], pa.int64())
    for modality in modalities:
        name = schema.embedding_column(modality)
        if name in rows.column_names:
            rows = rows.set_column(rows.column_names.index(name), name,
                                   previous.column(name).take(take))
    return rows


def commit_path(output: str, key: str) -> str:
    return join(output, "embeddings", "_commits", f"{key}.json")


def commit_shard(store: Storage, output: str, shard: readers.Shard, pieces: list[str],
                 expected_rows: int, fingerprints: dict, lineage: dict, signature: dict) -> dict:
    """Merge a shard's staged pieces into its output files, then write its commit record."""
    emb_uri = join(output, "embeddings", f"{shard.key}.parquet")
    rej_uri = join(output, "rejects", f"{shard.key}.parquet")
    tables = [_variable_lists(store.read_parquet(p)) for p in sorted(pieces)]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    total = table.num_rows if table is not None else 0
    if total != expected_rows:
        raise RuntimeError(
            f"shard {shard.key}: {total} rows came through the pipeline but the input has "
            f"{expected_rows}; nothing was committed for it, re-run to redo it"
        )
    record = {
        "shard": shard.key, "source": shard.uri, "source_signature": signature,
        "encoders_id": lineage["encoders_id"], "input_rows": expected_rows, "embedded": 0,
        "newly_embedded": 0, "reused": 0, "rejected": 0, "fingerprints": fingerprints,
    }
    if table is not None and total:
        failed = table.column(readers.ERROR).is_valid()
        reused = pc.and_(pc.invert(failed), pc.fill_null(table.column(readers.REUSE), False)) \
            if readers.REUSE in table.column_names else pa.array([False] * total)
        fresh = table.filter(pc.and_(pc.invert(failed), pc.invert(reused)))
        again = table.filter(reused)
        if again.num_rows:
            previous = _variable_lists(store.read_parquet(emb_uri)) if store.exists(emb_uri) else None
            again = _copy_reused(again, previous, sorted(fingerprints))
        drop = [c for c in (readers.ERROR, readers.REUSE) if c in table.column_names]
        ok = pa.concat_tables([fresh.drop_columns(drop), again.drop_columns(drop)])
        bad = table.filter(failed)
        record.update(embedded=ok.num_rows, newly_embedded=fresh.num_rows, reused=again.num_rows,
                      rejected=bad.num_rows)
        meta = {LINEAGE_KEY: json.dumps({**lineage, **record}, sort_keys=True, default=str).encode()}
        if ok.num_rows:
            ok = schema.storable(_fixed_lists(ok, fingerprints))
            store.write_parquet(emb_uri, ok.replace_schema_metadata(meta))
            record["embeddings_file"] = emb_uri
        else:
            store.delete(emb_uri)
        if bad.num_rows:
            rejects = pa.table({
                schema.ID: bad.column(schema.ID),
                schema.REASON: bad.column(readers.ERROR),
                schema.STAGE: pa.array(["extract"] * bad.num_rows, pa.string()),
                "source": pa.array([shard.uri] * bad.num_rows, pa.string()),
            }, schema=schema.REJECTS_SCHEMA)
            store.write_parquet(rej_uri, rejects.replace_schema_metadata(meta))
            record["rejects_file"] = rej_uri
        else:
            store.delete(rej_uri)
    record["committed_at"] = datetime.now(UTC).isoformat()
    store.write_json(commit_path(output, shard.key), record)  # last: the shard is now done
    return record


# -- the stage -------------------------------------------------------------------------------------

@dataclass
class ExtractResult:
    output: str
    shards: int
    skipped_shards: int
    input_rows: int
    embedded: int
    rejected: int
    wall_s: float
    manifest: str
    embedded_now: int = 0  # rows run through the encoders by this run (not copied, not skipped)
    encoders_id: str = ""
    fingerprints: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def describe(self) -> str:
        dims = ", ".join(f"{m} {fp.get('dim')}-d ({fp.get('encoder')})"
                         for m, fp in sorted(self.fingerprints.items()))
        return (
            f"extract: {self.input_rows} rows from {self.shards} shards "
            f"({self.skipped_shards} already done) in {self.wall_s:.1f} s\n"
            f"  embedded {self.embedded} ({self.embedded_now} by this run), rejected {self.rejected}\n"
            f"  embeddings: {self.output}  [{dims}]\n"
            f"  manifest:   {self.manifest}"
        )


def main(config: Config) -> ExtractResult:
    """The stage as the CLI and jobs/extract.py run it."""
    return run_extract(config)


def _clean_uncommitted(store: Storage, output: str, pending: list[readers.Shard]) -> None:
    """Remove what a killed run may have left: staging pieces and files of uncommitted shards."""
    store.delete(staging_dir(output), recursive=True)
    for shard in pending:
        store.delete(join(output, "embeddings", f"{shard.key}.parquet"))
        store.delete(join(output, "rejects", f"{shard.key}.parquet"))


def run_extract(config: Config, store: Storage | None = None) -> ExtractResult:
    """Run the extract stage on the Ray cluster this process is connected to (or a local one)."""
    import ray

    from adapt.rayutil import init_ray

    t0 = time.perf_counter()
    store = store or Storage(config.storage)
    ext = config.extract
    store.check_writable(config.output)
    shards = readers.list_shards(store, config.corpus, ext.format, ext.manifest)
    encoders_id = encoders_fingerprint_id(config)
    check_same_encoders(store, config.output, encoders_id)
    signatures = {s.key: readers.source_signature(store, s) for s in shards}
    records = {s.key: store.read_json_or_none(commit_path(config.output, s.key)) for s in shards}
    committed = {k for k, r in records.items()
                 if r and r.get("source_signature") == signatures[k] and r.get("encoders_id") == encoders_id}
    pending = [s for s in shards if s.key not in committed]
    # A shard whose source changed keeps its previous output until the new one replaces it: the
    # rows whose id and content hash are unchanged are copied from it, not embedded again.
    previous = {s.key: join(config.output, "embeddings", f"{s.key}.parquet")
                for s in pending if records[s.key] and records[s.key].get("embeddings_file")}
    log.info("extract: %d shards, %d already committed, %d to do (%d changed)", len(shards),
             len(committed), len(pending), len(previous))
    _clean_uncommitted(store, config.output, [s for s in pending if s.key not in previous])
    init_ray(config.ray)
    lineage = {"corpus": config.corpus, "config": config.model_dump(mode="json"),
               "adapt_version": adapt_version, "encoders_id": encoders_id}
    threads = ext.torch_threads or max(1, int(ext.num_cpus_per_worker))
    timings = defaultdict(float)
    embedded_now = 0
    commit_task = ray.remote(num_cpus=0.25)(commit_shard)
    count_task = ray.remote(num_cpus=0.25)(readers.count_rows)
    # The reject budget runs on totals over committed shards, kept up to date wave by wave.
    seen = sum(records[k]["input_rows"] for k in committed)
    rejected = sum(records[k]["rejected"] for k in committed)
    for w in range(0, len(pending), ext.shards_per_wave):
        wave_shards = pending[w: w + ext.shards_per_wave]
        wave = f"wave-{uuid.uuid4().hex[:12]}"
        t_wave = time.perf_counter()
        # Row counts that prove embedded + rejected = input. Parquet and manifest shards count
        # from metadata, independently of the read; a WebDataset tar has no index, so its read
        # task counts the rows it yields (one read of each tar, not two).
        counts_dir = join(staging_dir(config.output), wave, "_counts")
        expected_refs = {s.key: count_task.remote(store, s, config.corpus, ext.max_rows_per_shard)
                         for s in wave_shards if s.format != "webdataset"}
        ds = ray.data.from_items([{"i": i} for i in range(len(wave_shards))],
                                 override_num_blocks=len(wave_shards))
        ds = ds.map_batches(
            _read_shards_fn, fn_kwargs={"store": store, "shards": wave_shards, "previous": previous,
                                        "corpus": config.corpus, "max_rows": ext.max_rows_per_shard,
                                        "counts_dir": counts_dir},
            batch_size=1, batch_format="pyarrow", num_cpus=0.25,
        )
        ds = ds.map_batches(
            EmbedWorker, fn_constructor_kwargs={"config": config, "threads": threads},
            batch_size=ext.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=ext.num_workers),
            num_cpus=ext.num_cpus_per_worker, num_gpus=ext.num_gpus_per_worker or None,
        )
        ds = ds.map_batches(
            write_pieces, fn_kwargs={"store": store, "output": config.output, "wave": wave},
            batch_size=None, batch_format="pyarrow", num_cpus=0.25,
        )
        summary = ds.to_arrow_refs()
        pieces = pa.concat_tables(ray.get(summary)) if summary else pa.table({})
        timings["pipeline_s"] += time.perf_counter() - t_wave
        t_commit = time.perf_counter()
        by_shard = defaultdict(list)
        fingerprints = {}
        for row in pieces.to_pylist():
            by_shard[row["shard"]].append(row["piece"])
            fingerprints = json.loads(row["fingerprints"]) or fingerprints
            for k, v in json.loads(row["timings"] or "{}").items():
                timings[k] += v
        counted = dict(zip(expected_refs, ray.get(list(expected_refs.values())), strict=True))
        for sh in wave_shards:
            if sh.key not in counted:
                counted[sh.key] = store.read_json(join(counts_dir, f"{sh.key}.json"))["rows"]
        done = ray.get([
            commit_task.remote(store, config.output, s, by_shard.get(s.key, []), counted[s.key],
                               fingerprints, lineage, signatures[s.key])
            for s in wave_shards
        ])
        embedded_now += sum(r["newly_embedded"] for r in done)
        store.delete(join(staging_dir(config.output), wave), recursive=True)
        timings["commit_s"] += time.perf_counter() - t_commit
        seen += sum(r["input_rows"] for r in done)
        rejected += sum(r["rejected"] for r in done)
        _check_budget(config, seen, rejected)
        log.info("extract: wave of %d shards done (%d rows)", len(done),
                 sum(r["input_rows"] for r in done))
    manifest_uri, totals = write_manifest(store, config, shards, lineage)
    return ExtractResult(
        output=join(config.output, "embeddings"), shards=len(shards), skipped_shards=len(committed),
        input_rows=totals["input_rows"], embedded=totals["embedded"], rejected=totals["rejected"],
        wall_s=time.perf_counter() - t0, manifest=manifest_uri, embedded_now=embedded_now,
        encoders_id=encoders_id, fingerprints=totals["fingerprints"], timings=dict(timings),
    )


def _read_shards_fn(batch: pa.Table, store: Storage, shards: list, previous: dict, corpus: str,
                    max_rows, counts_dir: str):
    for i in batch.column("i").to_pylist():
        shard = shards[i]
        known: dict[str, str] = {}
        if shard.key in previous and store.exists(previous[shard.key]):
            old = store.read_parquet(previous[shard.key])
            if schema.CONTENT_HASH in old.column_names:
                known = dict(zip(old.column(schema.ID).to_pylist(),
                                 old.column(schema.CONTENT_HASH).to_pylist(), strict=True))
        rows = 0
        for table in readers.read_shard(store, shard, corpus, max_rows):
            rows += table.num_rows
            yield readers.mark_reusable(table, known)
        if shard.format == "webdataset":  # every row has been handed on: record the count
            store.write_json(join(counts_dir, f"{shard.key}.json"), {"rows": rows})


def encoders_fingerprint_id(config: Config) -> str:
    """Identity of the configured encoders, known before any model loads."""
    from adapt.encoders import static_fingerprint
    from adapt.encoders.base import fingerprint_id

    return fingerprint_id({m: static_fingerprint(spec, m) for m, spec in sorted(config.encoders.items())})


def check_same_encoders(store: Storage, output: str, encoders_id: str) -> None:
    """Refuse to mix embeddings of different encoders (or encoder settings) in one folder."""
    manifest = store.read_json_or_none(join(output, "embeddings", "_manifest.json"))
    if manifest and manifest.get("encoders_id") not in (None, encoders_id):
        raise ValueError(
            f"{join(output, 'embeddings')} holds embeddings of other encoders or settings "
            f"(id {manifest['encoders_id']}, now {encoders_id}); write to a new `output`, or use "
            "`adapt nightly`, which keeps one folder per encoder version"
        )


def _records(store: Storage, output: str, shards: list[readers.Shard]) -> list[dict]:
    return [r for s in shards if (r := store.read_json_or_none(commit_path(output, s.key)))]


def _check_budget(config: Config, seen: int, rejected: int) -> None:
    if seen and rejected / seen > config.extract.max_reject_fraction:
        raise RejectBudgetExceeded(
            f"{rejected} of {seen} rows rejected ({rejected / seen:.1%}), over "
            f"extract.max_reject_fraction={config.extract.max_reject_fraction}; reasons are in "
            f"{join(config.output, 'rejects')}. Fix the corpus or raise the budget, then re-run: "
            "committed shards are kept."
        )


def write_manifest(store: Storage, config: Config, shards: list[readers.Shard], lineage: dict):
    records = _records(store, config.output, shards)
    if len(records) != len(shards):
        raise RuntimeError(f"{len(shards) - len(records)} shards are not committed; re-run extract")
    fingerprints = next((r["fingerprints"] for r in records if r["fingerprints"]), {})
    totals = {
        "input_rows": sum(r["input_rows"] for r in records),
        "embedded": sum(r["embedded"] for r in records),
        "rejected": sum(r["rejected"] for r in records),
        "fingerprints": fingerprints,
        "encoders_id": lineage["encoders_id"],
    }
    manifest = {
        **lineage, **totals, "complete": True, "shards": records,
        "schema": {m: schema.embedding_column(m) for m in sorted(config.encoders)},
        "written_at": datetime.now(UTC).isoformat(),
    }
    uri = join(config.output, "embeddings", "_manifest.json")
    store.write_json(uri, manifest)
    return uri, totals
