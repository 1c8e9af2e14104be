"""The apply stage: a trained head over every committed embeddings file, manifest last.

    adapt apply --config FILE        (jobs/apply.py for `ray job submit`)

One output Parquet file per embeddings file (id, labels, split and `projected_embedding`), written
whole by an actor that loads the head once (`adapt.apply.workers`), so an existing file is
complete and a re-run skips it; `{output}/projected/<run-id>/_manifest.json` comes last.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from adapt import layout, schema
from adapt.apply.workers import ApplyWorker
from adapt.config import Config
from adapt.embeddings import read_manifest
from adapt.rayutil import init_ray
from adapt.storage import Storage, basename, join
from adapt.train.artifact import hub_folder_name, is_hub_uri, load_head, resolve_head_uri


@dataclass
class ApplyResult:
    dest: str
    manifest: str
    run_id: str
    files: int
    skipped_files: int
    rows: int
    out_dim: int
    wall_s: float

    def describe(self) -> str:
        return (
            f"apply: head {self.run_id} over {self.files} embeddings files "
            f"({self.skipped_files} already done), {self.rows} rows, {self.out_dim}-d, "
            f"in {self.wall_s:.1f} s\n"
            f"  projected: {self.dest}\n"
            f"  manifest:  {self.manifest}"
        )


def apply_head(
    store: Storage,
    head_uri: str,
    embeddings_output: str,
    dest: str,
    num_cpus: float = 1.0,
    num_workers: int = 1,
) -> ApplyResult:
    """Project every committed embeddings file under `embeddings_output` into `dest`.

    One output Parquet file per input file, written whole (so an existing one is complete and is
    skipped on re-run), then `{dest}/_manifest.json` last.
    """
    import ray

    t0 = time.perf_counter()
    run = resolve_head_uri(store, head_uri)
    # A hub head is downloaded by each worker (into its node's cache); a stored one is read.
    source = head_uri if is_hub_uri(head_uri) else run
    manifest = read_manifest(store, embeddings_output)
    applied = load_head(
        run, store, manifest.get("fingerprints"), layout.embeddings_dir(embeddings_output)
    )
    sources = {r["embeddings_file"]: r for r in manifest["shards"] if r.get("embeddings_file")}
    done = _done(store, dest, sources)
    todo = [f for f in sources if f not in done]
    if todo:
        items = [{"file": f, "source": json.dumps(_source(sources[f]))} for f in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(todo))
        ds = ds.map_batches(
            ApplyWorker,
            fn_constructor_kwargs={"store": store, "head_uri": source, "dest": dest},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=num_cpus,
        )
        for row in ds.iter_rows():
            record = json.loads(row["record"])
            done[record["file"]] = record
    records = [done[f] for f in sources]
    uri = layout.projected_manifest(dest)
    store.write_json(
        uri,
        {
            "complete": True,
            "head": source,
            "run_id": applied.card.get("run_id"),
            "out_dim": applied.out_dim,
            "column": schema.PROJECTED_EMBEDDING,
            "files": records,
            "rows": sum(r["rows"] for r in records),
            "embeddings": layout.embeddings_dir(embeddings_output),
            "written_at": datetime.now(UTC).isoformat(),
        },
    )
    return ApplyResult(
        dest,
        uri,
        applied.card.get("run_id", basename(run)),
        len(sources),
        len(sources) - len(todo),
        sum(r["rows"] for r in records),
        applied.out_dim,
        time.perf_counter() - t0,
    )


def _source(record: dict) -> dict:
    """What identifies an embeddings file's content: its commit (time and bytes)."""
    return {
        "committed_at": record.get("committed_at"),
        "bytes": record.get("embeddings_bytes"),
        "rows": record.get("embedded"),
    }


def _done(store: Storage, dest: str, sources: dict[str, dict]) -> dict[str, dict]:
    """Embeddings file -> the record of its projection, for the files whose projection is whole
    and made from the embeddings as they are now: one listing of the projected files, one of the
    commit records, one read of the previous manifest, and a read of each record it lacks. An
    embeddings file that extract has written again since (a changed shard) is projected again."""
    sizes = store.file_sizes(dest, (".parquet",))
    listed = store.file_infos(join(dest, "_commits"), (".json",), recursive=False)
    previous = store.read_json_or_none(layout.projected_manifest(dest)) or {}
    known = {r["file"]: r for r in previous.get("files", []) if "source" in r}

    def whole(record: dict | None, rec: dict) -> bool:
        return bool(record) and (
            record.get("source") == _source(rec)
            and sizes.get(record["projected_file"]) == record.get("bytes")
        )

    done = {}
    for f, rec in sources.items():
        uri = layout.projected_commit(dest, f)
        if uri not in listed:
            continue
        record = known.get(f)
        if not whole(record, rec):  # the manifest's copy is older than the record: read it
            record = store.read_json_or_none(uri)
        if whole(record, rec):
            done[f] = record
    # Projections of embeddings files that are gone (a shard removed from the corpus) go too.
    current = {layout.projected_file(dest, f) for f in sources}
    for stale in sorted(set(sizes) - current):
        store.delete(stale)
        store.delete(layout.projected_commit(dest, stale))
    return done


def main(config: Config) -> ApplyResult:
    """The stage as the CLI and jobs/apply.py run it: `apply.head` (default: train.run_id's head,
    else the latest) over the run's embeddings."""
    store = Storage(config.storage)
    ac = config.apply
    run_id = config.train.run_id
    head_uri = ac.head or (layout.head_dir(config.output, run_id) if run_id else config.output)
    # A stored head is resolved to its run folder once; a hub head is downloaded by apply_head.
    if is_hub_uri(head_uri):
        run, name = head_uri, hub_folder_name(head_uri)
    else:
        run = resolve_head_uri(store, head_uri)
        name = basename(run)
    dest = layout.projected_dir(config.output, name)
    init_ray(config.ray)
    return apply_head(store, run, config.output, dest, ac.num_cpus_per_worker, ac.num_workers)
