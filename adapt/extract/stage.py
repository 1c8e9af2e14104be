"""The extract stage: frozen encoders over a corpus, embeddings to Parquet, every row accounted for.

Wave by wave: list the shards, skip those committed with the same source and encoders, run the
Ray Data pipeline (read -> embed -> write pieces) over a wave's shards, then commit each shard
(`adapt.extract.io`); the manifest comes last. Embedded + rejected = input, for every shard.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from adapt import __version__ as adapt_version
from adapt import layout
from adapt.config import Config
from adapt.extract import readers
from adapt.extract.io import (
    check_same_encoders,
    clean_uncommitted,
    commit_shard,
    output_sizes,
    quarantine_duplicates,
    record_intact,
    remove_orphans,
    write_manifest,
    write_pieces,
)
from adapt.extract.validate import Limits
from adapt.extract.workers import EmbedWorker, read_shards
from adapt.lease import Lease
from adapt.rayutil import init_ray
from adapt.storage import Storage

log = logging.getLogger("adapt.extract")


class RejectBudgetExceeded(RuntimeError):
    """More rows were rejected than extract.max_reject_fraction allows."""


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
    rejected_by_reason: dict = field(default_factory=dict)  # reason code -> rows
    encoders_id: str = ""
    fingerprints: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def describe(self) -> str:
        dims = ", ".join(
            f"{m} {fp.get('dim')}-d ({fp.get('encoder')})"
            for m, fp in sorted(self.fingerprints.items())
        )
        return (
            f"extract: {self.input_rows} rows from {self.shards} shards "
            f"({self.skipped_shards} already done) in {self.wall_s:.1f} s\n"
            f"  embedded {self.embedded} ({self.embedded_now} by this run), rejected {self.rejected}"
            + "".join(f"\n    {n} {code}" for code, n in self.rejected_by_reason.items())
            + "\n"
            f"  embeddings: {self.output}  [{dims}]\n"
            f"  manifest:   {self.manifest}"
        )


def main(config: Config) -> ExtractResult:
    """The stage as the CLI and jobs/extract.py run it."""
    return run_extract(config)


def run_extract(config: Config, store: Storage | None = None) -> ExtractResult:
    """Run the extract stage on the Ray cluster this process is connected to (or a local one)."""
    t0 = time.perf_counter()
    store = store or Storage(config.storage)
    ext = config.extract
    store.check_writable(config.output)
    shards = readers.list_shards(store, config.corpus, ext.format, ext.manifest)
    encoders_id = encoders_fingerprint_id(config)
    check_same_encoders(store, config.output, encoders_id)
    # One writer per output: a second run (a manual one over a nightly, say) stops here and
    # changes nothing, instead of cleaning up the first one's staging and fresh commits.
    lease = Lease(
        store,
        layout.extract_lease(config.output),
        ttl_s=ext.lease_ttl_s,
        what=f"the output {layout.embeddings_dir(config.output)}",
    ).acquire(wait_s=ext.wait_for_lease_s)
    lease.keep_renewed()
    try:
        return _extract_holding(config, store, shards, encoders_id, lease, t0)
    finally:
        lease.release()


def _extract_holding(
    config: Config,
    store: Storage,
    shards: list[readers.Shard],
    encoders_id: str,
    lease: Lease,
    t0: float,
) -> ExtractResult:
    ext = config.extract
    signatures = {s.key: readers.source_signature(store, s) for s in shards}
    records = {
        s.key: store.read_json_or_none(layout.commit_record(config.output, s.key)) for s in shards
    }
    sizes = output_sizes(store, config.output)
    intact = {k: bool(r) and record_intact(store, r, sizes) for k, r in records.items()}
    broken = sorted(k for k, r in records.items() if r and not intact[k])
    if broken:
        log.warning(
            "extract: %d committed shard(s) lost or changed an output file since their commit "
            "(e.g. %s): embedding them again",
            len(broken),
            broken[0],
        )
    # A record of other encoders (a run killed before its manifest, then the config changed)
    # neither counts as done nor gives rows back: its vectors are another encoder's.
    same = {k for k, r in records.items() if intact[k] and r.get("encoders_id") == encoders_id}
    committed = {k for k in same if records[k].get("source_signature") == signatures[k]}
    pending = [s for s in shards if s.key not in committed]
    # A shard whose source changed keeps its previous output until the new one replaces it: the
    # rows whose id and content hash are unchanged are copied from it, not embedded again. Only
    # an output that is whole, of these encoders, can give rows back.
    previous = {
        s.key: layout.embeddings_file(config.output, s.key)
        for s in pending
        if s.key in same and records[s.key].get("embeddings_file")
    }
    log.info(
        "extract: %d shards, %d already committed, %d to do (%d changed, %d broken)",
        len(shards),
        len(committed),
        len(pending),
        len(previous),
        len(broken),
    )
    clean_uncommitted(store, config.output, [s for s in pending if s.key not in previous])
    init_ray(config.ray)
    lineage = {
        "corpus": config.corpus,
        "config": config.model_dump(mode="json"),
        "adapt_version": adapt_version,
        "encoders_id": encoders_id,
    }
    timings: dict[str, float] = defaultdict(float)
    embedded_now = 0
    # The reject budget runs on totals over committed shards, kept up to date wave by wave.
    seen = sum(records[k]["input_rows"] for k in committed)
    rejected = sum(records[k]["rejected"] for k in committed)
    for w in range(0, len(pending), ext.shards_per_wave):
        wave_shards = pending[w : w + ext.shards_per_wave]
        done = _run_wave(config, store, wave_shards, previous, signatures, lineage, timings, lease)
        embedded_now += sum(r["newly_embedded"] for r in done)
        seen += sum(r["input_rows"] for r in done)
        rejected += sum(r["rejected"] for r in done)
        _check_budget(config, seen, rejected)
        log.info(
            "extract: wave of %d shards done (%d rows)",
            len(done),
            sum(r["input_rows"] for r in done),
        )
    lease.check()
    if pending:
        dups = quarantine_duplicates(store, config.output, shards)
        if dups:
            log.warning(
                "extract: %d row(s) repeat an id of an earlier shard; they are in %s as "
                "duplicate_id",
                dups,
                layout.rejects_dir(config.output),
            )
    manifest_uri, totals = write_manifest(store, config, shards, lineage)
    removed = remove_orphans(store, config.output, shards)
    if removed:
        log.info(
            "extract: removed %d output file(s) of shards no longer in the corpus", len(removed)
        )
    return ExtractResult(
        output=layout.embeddings_dir(config.output),
        shards=len(shards),
        skipped_shards=len(committed),
        input_rows=totals["input_rows"],
        embedded=totals["embedded"],
        rejected=totals["rejected"],
        rejected_by_reason=totals["rejected_by_reason"],
        wall_s=time.perf_counter() - t0,
        manifest=manifest_uri,
        embedded_now=embedded_now,
        encoders_id=encoders_id,
        fingerprints=totals["fingerprints"],
        timings=dict(timings),
    )


def _run_wave(
    config: Config,
    store: Storage,
    wave_shards: list[readers.Shard],
    previous: dict[str, str],
    signatures: dict[str, dict],
    lineage: dict,
    timings: dict[str, float],
    lease: Lease,
) -> list[dict]:
    """One wave: the Ray Data pipeline (read -> embed -> write pieces) over its shards, then a
    commit task per shard; returns the shards' commit records. `timings` accumulates."""
    import ray

    ext = config.extract
    wave = f"wave-{uuid.uuid4().hex[:12]}"
    t_wave = time.perf_counter()
    commit_task = ray.remote(num_cpus=ext.num_cpus_per_task)(commit_shard)
    count_task = ray.remote(num_cpus=ext.num_cpus_per_task)(readers.count_rows)
    # Row counts that prove embedded + rejected = input. Parquet and manifest shards count
    # from metadata, independently of the read; a WebDataset tar has no index, so its read
    # task counts the rows it yields (one read of each tar, not two).
    expected_refs = {
        s.key: count_task.remote(store, s, config.corpus, ext.max_rows_per_shard)
        for s in wave_shards
        if s.format != "webdataset"
    }
    ds = ray.data.from_items(
        [{"i": i} for i in range(len(wave_shards))], override_num_blocks=len(wave_shards)
    )
    ds = ds.map_batches(
        read_shards,
        fn_kwargs={
            "store": store,
            "shards": wave_shards,
            "previous": previous,
            "corpus": config.corpus,
            "max_rows": ext.max_rows_per_shard,
            "output": config.output,
            "wave": wave,
            "limits": Limits(
                corpus=config.corpus,
                max_image_bytes=ext.max_image_bytes,
                image_roots=tuple(ext.image_roots),
            ),
        },
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=ext.num_cpus_per_task,
    )
    ds = ds.map_batches(
        EmbedWorker,
        fn_constructor_kwargs={
            "config": config,
            "threads": ext.torch_threads or max(1, int(ext.num_cpus_per_worker)),
        },
        batch_size=ext.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ext.num_workers),
        num_cpus=ext.num_cpus_per_worker,
        num_gpus=ext.num_gpus_per_worker or None,
    )
    ds = ds.map_batches(
        write_pieces,
        fn_kwargs={"store": store, "output": config.output, "wave": wave},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=ext.num_cpus_per_task,
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
            counted[sh.key] = store.read_json(layout.wave_count(config.output, wave, sh.key))[
                "rows"
            ]
    lease.check()  # a run that lost its lease commits nothing more
    done = ray.get(
        [
            commit_task.remote(
                store,
                config.output,
                s,
                by_shard.get(s.key, []),
                counted[s.key],
                fingerprints,
                lineage,
                signatures[s.key],
            )
            for s in wave_shards
        ]
    )
    store.delete(layout.wave_dir(config.output, wave), recursive=True)
    timings["commit_s"] += time.perf_counter() - t_commit
    return done


def encoders_fingerprint_id(config: Config) -> str:
    """Identity of the configured encoders, known before any model loads."""
    # Imported here: adapt.encoders.base imports torch, which the extract driver does without.
    from adapt.encoders import static_fingerprint
    from adapt.encoders.base import fingerprint_id

    return fingerprint_id(
        {m: static_fingerprint(spec, m) for m, spec in sorted(config.encoders.items())}
    )


def _check_budget(config: Config, seen: int, rejected: int) -> None:
    if seen and rejected / seen > config.extract.max_reject_fraction:
        raise RejectBudgetExceeded(
            f"{rejected} of {seen} rows rejected ({rejected / seen:.1%}), over "
            f"extract.max_reject_fraction={config.extract.max_reject_fraction}; reasons are in "
            f"{layout.rejects_dir(config.output)}. Fix the corpus or raise the budget, then re-run: "
            "committed shards are kept."
        )
