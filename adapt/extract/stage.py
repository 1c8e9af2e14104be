"""The extract stage: frozen encoders over a corpus, embeddings to Parquet, every row accounted for.

List the shards, skip those committed with the same source and encoders, then run one streaming
Ray Data pipeline over the rest (read -> decode -> encode -> write pieces; `adapt.extract.workers`)
and commit each shard as soon as its last row is written (`adapt.extract.io`), while the encoders
go on with later shards; the manifest comes last. Embedded + rejected = input, for every shard.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

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
    read_records,
    record_intact,
    remove_orphans,
    write_manifest,
    write_pieces,
)
from adapt.extract.validate import Limits
from adapt.extract.workers import CALLS_AT_ONCE, EncodeWorker, decode_rows, read_shards
from adapt.lease import Lease
from adapt.progress import Meter
from adapt.rayutil import init_ray
from adapt.storage import Storage

log = logging.getLogger("adapt.extract")


# Forward batches (extract.batch_size rows each) per call of an encoder actor.
FORWARDS_PER_CALL = 4

# Rows committed by a run before its reject budget is checked while it runs (it is checked at the
# end of every stream regardless): fewer make the share too noisy to stop a run on.
EARLY_BUDGET_ROWS = 10_000


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
    encoders: dict = field(default_factory=dict)  # busy_s, span_s, busy_fraction of the encoders

    def _busy_line(self) -> str:
        fraction = self.encoders.get("busy_fraction")
        if fraction is None:
            return ""
        n = self.encoders["slots"]
        return (
            f"  encoders in forward {fraction:.0%} of the time from the first forward to the "
            f"last ({n} actor{'s' if n != 1 else ''})\n"
        )

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
            + self._busy_line()
            + f"  embeddings: {self.output}  [{dims}]\n"
            f"  manifest:   {self.manifest}"
        )


def main(config: Config) -> ExtractResult:
    """The stage as the CLI and jobs/extract.py run it."""
    return run_extract(config)


def run_extract(
    config: Config, store: Storage | None = None, shards: list[readers.Shard] | None = None
) -> ExtractResult:
    """Run the extract stage on the Ray cluster this process is connected to (or a local one).

    `shards`: the corpus as a caller listed it moments ago (the nightly job's survey), instead of
    listing it again. The commit records are read again here in any case, under the lease: what
    was committed before the lease was taken may have changed by then.
    """
    t0 = time.perf_counter()
    store = store or Storage(config.storage)
    ext = config.extract
    store.check_writable(config.output)
    if shards is None:
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


@dataclass
class Survey:
    """What an extract run has to do, found from listings and the commit records alone."""

    shards: list[readers.Shard]
    signatures: dict[str, dict]  # shard key -> its source's signature now
    records: dict[str, dict | None]  # shard key -> its commit record
    committed: set[str]  # shards done: whole outputs of these encoders, of the same source
    pending: list[readers.Shard]
    previous: dict[str, str]  # pending shard key -> its previous output, rows to reuse
    broken: list[str]  # shards whose committed output files are gone or changed


def survey(
    config: Config,
    store: Storage,
    shards: list[readers.Shard] | None = None,
    encoders_id: str | None = None,
) -> Survey:
    """Which shards are committed and which are to do: one listing of the corpus (the source
    signatures come with it), one of the commit records, one read of the manifest, and the
    records written since it; no model, no Ray."""
    if shards is None:
        shards = readers.list_shards(
            store, config.corpus, config.extract.format, config.extract.manifest
        )
    encoders_id = encoders_id or encoders_fingerprint_id(config)
    signatures = {s.key: readers.source_signature(store, s) for s in shards}
    records = read_records(store, config.output, shards)
    sizes = output_sizes(store, config.output)
    intact = {k: bool(r) and record_intact(store, r, sizes) for k, r in records.items()}
    broken = sorted(k for k, r in records.items() if r and not intact[k])
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
    return Survey(shards, signatures, records, committed, pending, previous, broken)


def _extract_holding(
    config: Config,
    store: Storage,
    shards: list[readers.Shard],
    encoders_id: str,
    lease: Lease,
    t0: float,
) -> ExtractResult:
    ext = config.extract
    todo = survey(config, store, shards, encoders_id)
    signatures, records, committed = todo.signatures, todo.records, todo.committed
    pending, previous = todo.pending, todo.previous
    if todo.broken:
        log.warning(
            "extract: %d committed shard(s) lost or changed an output file since their commit "
            "(e.g. %s): embedding them again",
            len(todo.broken),
            todo.broken[0],
        )
    log.info(
        "extract: %d shards, %d already committed, %d to do (%d changed, %d broken)",
        len(shards),
        len(committed),
        len(pending),
        len(previous),
        len(todo.broken),
    )
    clean_uncommitted(store, config.output, [s for s in pending if s.key not in previous])
    init_ray(config.ray)
    lineage = {
        "corpus": config.corpus,
        "config": config.model_dump(mode="json"),
        "adapt_version": adapt_version,
        "encoders_id": encoders_id,
    }
    timings: dict = defaultdict(float)
    # The reject budget runs on totals over committed shards, kept up to date wave by wave.
    seen = sum(records[k]["input_rows"] for k in committed)
    rejected = sum(records[k]["rejected"] for k in committed)
    budget = {"seen": seen, "rejected": rejected, "embedded_now": 0, "shards": 0}
    meter = Meter("extract", len(pending), "shards", logger=log)

    known = {k: records[k] for k in committed}

    def on_commit(record: dict) -> None:
        known[record["shard"]] = record
        budget["seen"] += record["input_rows"]
        budget["rejected"] += record["rejected"]
        budget["embedded_now"] += record["newly_embedded"]
        budget["shards"] += 1
        if budget["seen"] - seen >= EARLY_BUDGET_ROWS:  # enough rows to judge before the end
            _check_budget(config, budget["seen"], budget["rejected"])
        meter.update(budget["shards"], f"{budget['seen'] - seen} rows")

    busy = BusyLog(slots=ext.num_workers)
    step = ext.shards_per_wave or max(1, len(pending))
    try:
        for w in range(0, len(pending), step):
            _run_stream(
                config,
                store,
                pending[w : w + step],
                previous,
                signatures,
                lineage,
                timings,
                lease,
                on_commit,
                busy,
            )
            _check_budget(config, budget["seen"], budget["rejected"])
    finally:
        meter.close()
    embedded_now = budget["embedded_now"]
    lease.check()
    if pending:
        dups = quarantine_duplicates(store, config.output, shards, known)
        if dups:
            log.warning(
                "extract: %d row(s) repeat an id of an earlier shard; they are in %s as "
                "duplicate_id",
                dups,
                layout.rejects_dir(config.output),
            )
    manifest_uri, totals = write_manifest(store, config, shards, lineage, known)
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
        encoders=busy.summary(),
    )


def _run_stream(
    config: Config,
    store: Storage,
    stream_shards: list[readers.Shard],
    previous: dict[str, str],
    signatures: dict[str, dict],
    lineage: dict,
    timings: dict[str, float],
    lease: Lease,
    on_commit,
    busy: BusyLog,
) -> list[dict]:
    """One streaming dataset over `stream_shards` (read -> decode -> encode -> write pieces); each
    shard is committed by a task of its own as soon as all its rows are written, while the
    encoders go on with the next shards. Returns the shards' commit records; `on_commit(record)`
    runs as each one lands (the reject budget); `timings` accumulates and `busy` logs the
    encoders' forwards."""
    import ray

    ext = config.extract
    wave = f"wave-{uuid.uuid4().hex[:12]}"
    t_stream, cpu_stream = time.perf_counter(), time.process_time()
    commit_task = ray.remote(num_cpus=ext.num_cpus_per_task)(commit_shard)
    count_task = ray.remote(num_cpus=ext.num_cpus_per_task)(readers.count_rows)
    by_key = {s.key: s for s in stream_shards}
    # Row counts that prove embedded + rejected = input. Parquet and manifest shards count
    # from metadata, independently of the read; a WebDataset tar has no index, so its read
    # task counts the rows it yields (one read of each tar, not two).
    count_refs = {
        s.key: count_task.remote(store, s, config.corpus, ext.max_rows_per_shard)
        for s in stream_shards
        if s.format != "webdataset"
    }
    ds = _pipeline(config, store, stream_shards, previous, wave)
    expected: dict[str, int] = {}
    written: dict[str, int] = defaultdict(int)
    pieces: dict[str, list[str]] = defaultdict(list)
    fingerprints: dict = {}
    committing: dict = {}  # commit task ref -> shard key
    done: list[dict] = []

    def expected_rows(key: str) -> int | None:
        if key not in expected and key in count_refs:
            ready, _ = ray.wait([count_refs[key]], timeout=0)
            if ready:
                expected[key] = ray.get(ready[0])
        return expected.get(key)

    def commit(keys: list[str]) -> None:
        lease.check()  # a run that lost its lease commits nothing more
        for key in keys:
            ref = commit_task.remote(
                store,
                config.output,
                by_key[key],
                pieces.pop(key, []),
                expected[key],
                fingerprints,
                lineage,
                signatures[key],
            )
            committing[ref] = key

    def collect(block: bool) -> None:
        if not committing:
            return
        ready, _ = ray.wait(list(committing), num_returns=len(committing), timeout=0)
        if block:
            ready = list(committing)
        for ref in ready:
            record = ray.get(ref)
            committing.pop(ref)
            done.append(record)
            on_commit(record)

    waiting = set(by_key)  # shards not yet handed to a commit task
    uncounted: set[str] = set()  # shards with rows written whose count has not come back yet
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            touched = set(uncounted)
            for row in batch.to_pylist():
                key = row["shard"]
                written[key] += row["rows"]
                pieces[key].append(row["piece"])
                if row["shard_rows"] is not None and by_key[key].format == "webdataset":
                    expected[key] = row["shard_rows"]
                if row["meta"]:
                    meta = json.loads(row["meta"])
                    _add_meta(meta, timings, busy)
                    fingerprints = meta["fingerprints"] or fingerprints
                touched.add(key)
            complete = []
            for key in sorted(touched):
                want = expected_rows(key)
                if want is None:
                    uncounted.add(key)
                    continue
                uncounted.discard(key)
                if written[key] > want:
                    raise RuntimeError(
                        f"shard {key}: {written[key]} rows came through the pipeline but the "
                        f"input has {want}; nothing was committed for it, re-run to redo it"
                    )
                if written[key] == want and key in waiting:
                    complete.append(key)
            if complete:
                waiting.difference_update(complete)
                commit(complete)
            collect(block=False)
        timings["pipeline_s"] += time.perf_counter() - t_stream
        t_commit = time.perf_counter()
        # The stream is drained: shards that were not complete in it (no rows at all, or a count
        # that arrived after their last piece) are committed now, with their final counts.
        for key in sorted(waiting):
            if key in count_refs:
                expected[key] = ray.get(count_refs[key])
            elif key not in expected:
                expected[key] = store.read_json(layout.wave_count(config.output, wave, key))["rows"]
        if waiting:
            commit(sorted(waiting))
        collect(block=True)
    except BaseException:
        # Commits already handed out finish (or fail) before the run gives its lease back, so
        # that no commit of this run lands while another run holds the output.
        if committing:
            ray.wait(list(committing), num_returns=len(committing), timeout=ext.lease_ttl_s)
        raise
    store.delete(layout.wave_dir(config.output, wave), recursive=True)
    timings["commit_tail_s"] += time.perf_counter() - t_commit
    # The driver's own CPU (this loop, and Ray Data's executor threads in this process).
    timings["driver_cpu_s"] += time.process_time() - cpu_stream
    return done


def _add_meta(meta: dict, timings: dict[str, float], busy: BusyLog) -> None:
    """Sum a batch's worker seconds into `timings`, and log its encoder busy intervals."""
    for k, v in meta.get("timings", {}).items():
        timings[k] += v
    for actor, start, end, rows in meta.get("busy", []):
        busy.add(actor, start, end, rows)
    for start, end, rows in meta.get("decoded", []):
        busy.add_decode(start, end, rows)


class BusyLog:
    """The forwards of the encoder actors, as wall-clock (start, end) intervals: how busy the
    accelerators were. The span runs from the first forward of any actor to the last one's end,
    times the `slots` (extract.num_workers) that could have been busy: time between streams, when
    no actor exists, counts as idle. The steady state leaves out the first and last tenth of the
    forwards (start-up and drain); its rows/s are the rows of those forwards over their span.
    The decode tasks' batches are logged too, for the decode stage's steady rows/s: where
    decode is the bottleneck, the pipeline's own rate, free of the rows decoded ahead while the
    encoders start.

    Its size is bounded, whatever the corpus: past `MAX_RECORDS` records, neighbours in time are
    merged pairwise (a record then stands for several forwards: their first start, last end, busy
    seconds, rows and count), so a long run's figures are those of a coarser log."""

    STEADY_TRIM = 0.1
    MAX_RECORDS = 4096

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        # (start, end, busy seconds, rows, forwards)
        self.intervals: list[tuple[float, float, float, int, int]] = []
        self.decodes: list[tuple[float, float, float, int, int]] = []
        self.actors: set[str] = set()
        self.last_start: float | None = None

    def add(self, actor: str, start: float, end: float, rows: int = 0) -> None:
        self.actors.add(actor)
        self.last_start = start if self.last_start is None else max(self.last_start, start)
        self.intervals.append((start, end, end - start, rows, 1))
        if len(self.intervals) > 2 * self.MAX_RECORDS:
            self.intervals = self._coarsen(self.intervals)

    def add_decode(self, start: float, end: float, rows: int) -> None:
        """A decode task's batch: its wall-clock interval and rows (the decode stage's rate)."""
        self.decodes.append((start, end, end - start, rows, 1))
        if len(self.decodes) > 2 * self.MAX_RECORDS:
            self.decodes = self._coarsen(self.decodes)

    @staticmethod
    def _coarsen(records: list) -> list:
        """Half as many records: each pair of neighbours in start order merged into one."""
        records = sorted(records)
        merged = []
        for i in range(0, len(records) - 1, 2):
            a, b = records[i], records[i + 1]
            merged.append((a[0], max(a[1], b[1]), a[2] + b[2], a[3] + b[3], a[4] + b[4]))
        if len(records) % 2:
            merged.append(records[-1])
        return merged

    def _fraction(self, runs: list) -> tuple[float, float]:
        busy = sum(r[2] for r in runs)
        span = (max(r[1] for r in runs) - runs[0][0]) * self.slots
        return busy, span

    def _steady(self, runs: list) -> list:
        """`runs` (sorted) without their first and last `STEADY_TRIM` of forwards (all of them
        if fewer)."""
        cut = int(sum(r[4] for r in runs) * self.STEADY_TRIM)
        lo, dropped = 0, 0
        while lo < len(runs) and dropped + runs[lo][4] <= cut:
            dropped += runs[lo][4]
            lo += 1
        hi, dropped = len(runs), 0
        while hi > lo and dropped + runs[hi - 1][4] <= cut:
            dropped += runs[hi - 1][4]
            hi -= 1
        return runs[lo:hi] or runs

    def _rate(self, runs: list) -> float | None:
        """Rows/s of the steady-state intervals of `runs` (sorted), over their wall-clock span."""
        if not runs:
            return None
        steady = self._steady(runs)
        wall = max(r[1] for r in steady) - steady[0][0]
        return sum(r[3] for r in steady) / wall if wall > 0 else None

    def summary(self) -> dict:
        runs = sorted(self.intervals)
        if not runs:
            return {"encoders": 0, "forwards": 0, "busy_s": 0.0, "span_s": 0.0}
        busy, span = self._fraction(runs)
        steady_busy, steady_span = self._fraction(self._steady(runs))
        return {
            "encoders": len(self.actors),
            "slots": self.slots,
            "forwards": sum(r[4] for r in runs),
            "busy_s": busy,
            "span_s": span,
            "busy_fraction": busy / span if span > 0 else None,
            "steady_busy_fraction": steady_busy / steady_span if steady_span > 0 else None,
            "steady_rows_per_s": self._rate(runs),
            # Decode from the encoders' first forward on: before it, the decode tasks share the
            # CPUs with the encoders' start-up, and the rows they decode wait.
            "decode_steady_rows_per_s": self._rate(
                sorted(d for d in self.decodes if d[0] >= runs[0][0])
            ),
            "last_forward_start": self.last_start,  # wall clock
        }


def _pipeline(
    config: Config,
    store: Storage,
    stream_shards: list[readers.Shard],
    previous: dict[str, str],
    wave: str,
):
    """The Ray Data plan: read -> decode -> encode -> write, each operator with its own
    resources (config.extract), so Ray Data schedules and backpressures them apart."""
    import ray

    ext = config.extract
    ds = ray.data.from_items(
        [{"i": i} for i in range(len(stream_shards))], override_num_blocks=len(stream_shards)
    )
    # Ray Data polls each map worker's USS every second by default; in an encoder actor that
    # holds a model, reading its memory map took 25-70 ms with the GIL held, once a second: an
    # idle accelerator for 3-7% of the time. This plan's own copy of the context turns it off.
    ds.context.memory_usage_poll_interval_s = None
    ds = ds.map_batches(
        read_shards,
        fn_kwargs={
            "store": store,
            "shards": stream_shards,
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
        decode_rows,
        fn_kwargs={"config": config},
        batch_size=ext.decode_batch_size,
        batch_format="pyarrow",
        num_cpus=ext.decode_cpus,
        concurrency=ext.decode_concurrency,
    )
    ds = ds.map_batches(
        EncodeWorker,
        fn_constructor_kwargs={
            "config": config,
            "threads": ext.torch_threads or max(1, int(ext.num_cpus_per_worker)),
        },
        # Several forwards per call: inside one, the next batch is collated during a forward.
        batch_size=ext.batch_size * FORWARDS_PER_CALL,
        batch_format="pyarrow",
        # Two calls at once per actor, their forwards in order on its one forward thread: the
        # hand-over between calls (the next call's first collate, this one's output) is off the
        # device's path.
        compute=ray.data.ActorPoolStrategy(size=ext.num_workers, enable_true_multi_threading=True),
        max_concurrency=CALLS_AT_ONCE,
        num_cpus=ext.num_cpus_per_worker,
        num_gpus=ext.num_gpus_per_worker or None,
    )
    return ds.map_batches(
        write_pieces,
        fn_kwargs={"store": store, "output": config.output, "wave": wave},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=ext.num_cpus_per_task,
    )


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
