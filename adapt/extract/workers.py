"""Extract stage Ray adapter: the read, decode and encode steps of the Ray Data pipeline.

read (`read_shards`, storage I/O) -> decode (`decode_rows`, CPU tasks: decode, check,
preprocess) -> encode (`EncodeWorker`, an actor pool holding the models, on GPUs where asked)
-> write (`adapt.extract.io.write_pieces`). Each step is its own Ray Data operator with its own
resources, so decoding runs on as many CPUs as the cluster gives it, ahead of the encoders.
"""

from __future__ import annotations

import gc
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import pyarrow as pa

from adapt import layout, schema
from adapt.config import Config
from adapt.encoders import build_encoder, build_preprocessor
from adapt.encoders.prep import keep_freed_memory
from adapt.extract import readers
from adapt.extract.core import encode_batch, prepare_batch
from adapt.storage import Storage

META = "_meta"

# Calls an encoder actor runs at once: one collates while the other's batches are in forward.
CALLS_AT_ONCE = 2


def read_shards(
    batch: pa.Table,
    store: Storage,
    shards: list,
    previous: dict,
    corpus: str,
    max_rows,
    output: str,
    wave: str,
    limits=None,
):
    """Read the shards named in `batch` (indices into `shards`), block by block. The last block
    of a shard carries the shard's row count (`SHARD_ROWS`), so the driver can commit the shard
    as soon as that many rows are written."""
    for i in batch.column("i").to_pylist():
        shard = shards[i]
        known: dict[str, str] = {}
        if shard.key in previous and store.exists(previous[shard.key]):
            old = store.read_parquet(previous[shard.key])
            if schema.CONTENT_HASH in old.column_names:
                known = dict(
                    zip(
                        old.column(schema.ID).to_pylist(),
                        old.column(schema.CONTENT_HASH).to_pylist(),
                        strict=True,
                    )
                )
        rows, held = 0, None
        cpu = time.process_time()
        for table in readers.read_shard(store, shard, corpus, max_rows, limits):
            rows += table.num_rows
            if held is not None:
                yield _with_count(held, None, time.process_time() - cpu)
                cpu = time.process_time()
            held = readers.mark_reusable(table, known)
        if held is not None:
            yield _with_count(held, rows, time.process_time() - cpu)
        if shard.format == "webdataset":  # every row has been handed on: record the count
            store.write_json(layout.wave_count(output, wave, shard.key), {"rows": rows})


def _with_count(table: pa.Table, rows: int | None, cpu_s: float) -> pa.Table:
    table = table.append_column(readers.SHARD_ROWS, pa.array([rows] * table.num_rows, pa.int64()))
    return _with_meta(table, [{"timings": {"read_cpu_s": cpu_s}}])


@lru_cache(maxsize=16)
def _preprocessor(spec_json: str, modality: str):
    from adapt.config import EncoderSpec

    keep_freed_memory()  # a decode worker, batch after batch of pixels
    return build_preprocessor(EncoderSpec.model_validate_json(spec_json), modality)


def decode_rows(table: pa.Table, config: Config) -> pa.Table:
    """Ray Data task: decode, check and preprocess a batch (`adapt.extract.core.prepare_batch`).
    A worker process builds each preprocessor once (a tokenizer, a transform) and keeps it."""
    preps = {
        modality: _preprocessor(spec.model_dump_json(), modality)
        for modality, spec in sorted(config.encoders.items())
    }
    incoming = batch_metas(table)
    timings: dict[str, float] = {}
    cpu, start = time.process_time(), time.time()
    out = prepare_batch(
        preps, table, config.required_modalities, timings, config.extract.max_image_pixels
    )
    timings["decode_cpu_s"] = time.process_time() - cpu
    meta = {
        "timings": timings,
        "prep": {m: p.describe() for m, p in preps.items()},
        "decoded": [[start, time.time(), table.num_rows]],  # wall clock: the decode rate
    }
    return _with_meta(out, [*incoming, meta])


def _with_meta(table: pa.Table, metas: list[dict]) -> pa.Table:
    """One JSON cell (the first row) carries the batch's bookkeeping to the writer."""
    if META in table.column_names:
        table = table.drop_columns([META])
    cells = [json.dumps(metas)] + [None] * (table.num_rows - 1)
    return table.append_column(META, pa.array(cells[: table.num_rows], pa.string()))


def batch_metas(table: pa.Table) -> list[dict]:
    """The bookkeeping records a batch carries (see `_with_meta`)."""
    if META not in table.column_names:
        return []
    return [m for cell in table.column(META).to_pylist() if cell for m in json.loads(cell)]


class EncodeWorker:
    """Ray Data actor: loads the encoders once, then embeds batch after batch of prepared rows.

    The actor runs `CALLS_AT_ONCE` calls at a time (Ray Data's `enable_true_multi_threading`),
    and every forward of every call goes through one thread of its own, in order: while the
    device works through one call's batches, the next call is already collating its first, and
    the last call's output is handed back. One forward at a time, as before; only the host work
    around it overlaps. It records the wall-clock interval of every forward (with an id of its
    own), from which the driver measures how busy the encoders were."""

    def __init__(self, config: Config, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()
        ext = config.extract
        self.encoders = {
            modality: build_encoder(spec, modality, device=ext.device, dtype=ext.dtype)
            for modality, spec in sorted(config.encoders.items())
        }
        self.fingerprints = {m: e.fingerprint() for m, e in self.encoders.items()}
        self.prep = {m: e.prep.describe() for m, e in self.encoders.items()}
        self.actor = uuid.uuid4().hex[:12]
        # Rows per forward; a call gets several forwards' worth, the next collated meanwhile.
        self.forward_rows = ext.batch_size
        self.device = ThreadPoolExecutor(1, thread_name_prefix="forward")
        # The models' and libraries' objects never die: out of the collector's sight, a full
        # collection scans only what the batches allocate, not all of torch (tens of ms).
        gc.collect()
        gc.freeze()

    def __call__(self, table: pa.Table) -> pa.Table:
        incoming = batch_metas(table)
        for meta in incoming:
            if meta.get("prep") and meta["prep"] != self.prep:
                raise RuntimeError(
                    "the decode stage prepared rows differently from the encoders' own "
                    f"preprocessing: {meta['prep']} vs {self.prep}"
                )
        timings: dict[str, float] = {}
        busy: list[tuple[float, float, int]] = []  # (start, end, rows) per forward
        t0, cpu = time.perf_counter(), time.thread_time()
        out = encode_batch(self.encoders, table, timings, busy, self.forward_rows, self.device)
        timings["encode_s"] = time.perf_counter() - t0
        timings["encode_cpu_s"] = time.thread_time() - cpu  # this thread's; forwards run aside
        mine = {
            "timings": timings,
            "fingerprints": self.fingerprints,
            "busy": [[self.actor, a, b, n] for a, b, n in busy],
        }
        passed = [{k: m[k] for k in ("timings", "decoded") if k in m} for m in incoming]
        return _with_meta(out, [*passed, mine])


def embed_in_process(config: Config, table: pa.Table) -> pa.Table:
    """Decode and embed a table of read rows in this process (nightly's determinism probe)."""
    worker = EncodeWorker(config)
    return worker(decode_rows(table, config))
