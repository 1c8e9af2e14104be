"""The nightly job: extract what is new, retrain, score, and promote the new head only if better.

    adapt nightly --config FILE        (jobs/nightly.py for `ray job submit` or a cron schedule)

Layout under `{output}`:
    versions/<encoders-id>/embeddings/   one folder per encoder version; a new encoder (a new
    versions/<encoders-id>/heads/        fingerprint) starts a new folder and leaves the old one be
    registry/champion.json               the head in use (see adapt.nightly.champion)
    registry/history/*.json              every night's decision, with its numbers and health
    registry/lease/                      held while a night runs

Champion and challenger are compared on the same held-out rows: a fixed share of ids (by hash, so
stable as the corpus grows) that no head ever trains on. For each task and classifier, the
classifier is fitted on each head's projection of the other rows and scored on the held-out rows.
The stage reads top-down: extract (`adapt.extract.stage`), health (`adapt.nightly.health`), train
(`adapt.train.stage`), compare (`compare_on_holdout`), promote (`adapt.nightly.champion`).
A failed night records the failure, leaves the champion as it was, and keeps every committed
output (embedded shards, finished heads, checkpoints) for the next run to reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from adapt import layout
from adapt.config import Config, ScoreTask
from adapt.embeddings import Embeddings, load_embeddings, read_manifest
from adapt.extract import readers
from adapt.extract.stage import encoders_fingerprint_id, run_extract, survey
from adapt.extract.workers import embed_in_process
from adapt.labels import build_task
from adapt.nightly.champion import Registry, decide
from adapt.nightly.health import DRIFT_COSINE, embedding_health, row_cosine
from adapt.rayutil import init_ray
from adapt.score.cells import score_cell
from adapt.score.stage import run_score
from adapt.splits import fixed_holdout_mask, sample_mask
from adapt.storage import Storage
from adapt.train.artifact import load_head
from adapt.train.stage import run_train

log = logging.getLogger("adapt.nightly")


def compare_on_holdout(
    emb: Embeddings,
    project,
    tasks: list[ScoreTask],
    classifiers: list[str],
    fraction: float,
    metric: str,
    seed: int = 0,
    max_rows: int | None = None,
) -> dict:
    """Per task: the metric averaged over classifiers, fitted on projected non-held-out rows and
    scored on held-out rows. `project(emb) -> [rows, d]` applies a head to these embeddings.
    With `max_rows`, each side is a stratified sample of at most that many rows, by id hash."""
    held = fixed_holdout_mask(emb.ids, fraction)
    ids = np.asarray(emb.ids, dtype=object)
    chosen = []
    for spec in tasks:
        task = build_task(spec, emb.columns, 2)
        rows = task.rows
        pos_train = np.where(~held[rows])[0]
        pos_test = np.where(held[rows])[0]
        if max_rows is not None:
            pos_train, pos_test = (
                p[sample_mask(task.y[p], task.task_type, max_rows, seed, ids[rows[p]], 2)]
                for p in (pos_train, pos_test)
            )
        if len(pos_test) == 0 or len(pos_train) == 0:
            raise ValueError(f"task {spec.task_name}: no held-out or no training rows")
        chosen.append((spec, task, pos_train, pos_test))
    # Only the sampled rows are projected: at a million rows the whole projection would be the
    # largest array the driver holds.
    used = np.unique(np.concatenate([t.rows[p] for _, t, a, b in chosen for p in (a, b)]))
    x = project(emb.subset(used))
    at = np.full(len(emb), -1, dtype=np.int64)  # row of emb -> row of x
    at[used] = np.arange(len(used))
    out = {}
    for spec, task, pos_train, pos_test in chosen:
        train, test = at[task.rows[pos_train]], at[task.rows[pos_test]]
        values = []
        for clf in classifiers:
            cell = score_cell(
                x[train],
                task.y[pos_train],
                x[test],
                task.y[pos_test],
                clf,
                task.task_type,
                task.classes,
                seed,
            )
            values.append(cell[metric])
        out[spec.task_name] = float(np.mean(values))
    return out


@dataclass
class NightlyResult:
    run_id: str
    promoted: bool
    decision: dict
    version: str
    embedded_now: int
    input_rows: int
    health: dict
    wall_s: float
    stage_s: dict = field(default_factory=dict)
    history_uri: str = ""

    def describe(self) -> str:
        verdict = "promoted" if self.promoted else "kept the champion"
        lines = [
            f"nightly {self.run_id}: {verdict} ({self.decision.get('reason')})",
            f"  embedded {self.embedded_now} new or changed of {self.input_rows} rows; "
            f"version {self.version}",
            f"  health: {'ok' if self.health.get('healthy') else '; '.join(self.health.get('flags', []))}",
            "  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_s.items()),
            f"  {self.wall_s:.1f} s in all; decision: {self.history_uri}",
        ]
        for task, value in sorted(self.decision.get("challenger", {}).items()):
            old = self.decision.get("champion", {}) or {}
            was = f" (champion {old[task]:.4f})" if task in old else ""
            lines.append(f"  {task}: challenger {value:.4f}{was}")
        return "\n".join(lines)


def _probe_health(
    config: Config, store: Storage, emb: Embeddings, previous: Embeddings | None
) -> dict:
    """Health of tonight's embeddings, plus a re-embedding of a few rows to check determinism."""
    report = embedding_health(emb, previous)
    n = config.nightly.probe_rows
    if n <= 0:
        return report
    import ray

    shard = readers.list_shards(
        store, config.corpus, config.extract.format, config.extract.manifest
    )[0]
    table = next(readers.read_shard(store, shard, config.corpus, n))

    @ray.remote(
        num_cpus=min(1.0, config.extract.num_cpus_per_worker),
        num_gpus=config.extract.num_gpus_per_worker or None,
    )
    def probe(cfg, t):
        return embed_in_process(cfg, t)

    fresh = ray.get(probe.remote(config, table))
    position = {i: k for k, i in enumerate(emb.ids)}
    sims = {}
    for modality in emb.features:
        column = fresh.column(f"{modality}_embedding").to_pylist()
        pairs = [
            (np.asarray(v, np.float32), emb.features[modality][position[i]])
            for i, v in zip(fresh.column("id").to_pylist(), column, strict=True)
            if v is not None and i in position
        ]
        if pairs:
            a, b = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
            cos = row_cosine(a, b)
            sims[modality] = {
                "rows": len(pairs),
                "min": float(cos.min()),
                "mean": float(cos.mean()),
            }
            if cos.min() < DRIFT_COSINE:
                report["flags"].append(
                    f"{modality}: re-embedding {len(pairs)} stored rows gave cosine "
                    f"{cos.min():.5f} < {DRIFT_COSINE}: outputs are not reproducible"
                )
    report["probe"] = sims
    report["healthy"] = not report["flags"]
    return report


def _scores(config: Config, store: Storage, head_uri: str, emb: Embeddings) -> dict:
    """A head's scores per task on the night's held-out rows of `emb` (`compare_on_holdout`)."""
    nc = config.nightly
    head = load_head(head_uri, store)
    return compare_on_holdout(
        emb,
        lambda e: head(e.features),
        config.score.tasks,
        nc.classifiers,
        nc.holdout_fraction,
        nc.metric,
        max_rows=nc.compare_max_rows,
    )


# Settings that change what a night decides (its training, comparison and tasks); resources and
# fault-tolerance settings do not.
_NIGHT_SETTINGS = ("train", "nightly", "encoders")


def night_inputs_key(config: Config, encoders_id: str, records: dict) -> str:
    """A digest of what a night reads: every shard's commit (its time and bytes) and the settings
    that decide the head and the comparison. Two nights with the same key decide the same."""
    from adapt.train.plan import RUNTIME_KEYS

    settings = config.model_dump(mode="json", include=set(_NIGHT_SETTINGS))
    for key in RUNTIME_KEYS:
        settings["train"].pop(key, None)
    for key in ("lease_ttl_s", "wait_for_lease_s"):
        settings["nightly"].pop(key, None)
    commits = sorted(
        (k, r.get("committed_at"), r.get("embeddings_bytes"), r.get("embedded"))
        for k, r in records.items()
        if r
    )
    payload = {
        "encoders_id": encoders_id,
        "tasks": [t.model_dump(mode="json") for t in config.score.tasks],
        "settings": settings,
        "commits": commits,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _nothing_new(
    registry: Registry,
    run_id: str,
    last: dict,
    todo,
    encoders_id: str,
    inputs_key: str,
    t0: float,
) -> NightlyResult:
    """A night with nothing to do: recorded as such, the champion left as it is."""
    rows = sum(r["input_rows"] for r in todo.records.values() if r)
    decision = {
        "run_id": run_id,
        "status": "ok",
        "promote": False,
        "reason": f"nothing new since {last.get('run_id')}: no shard changed, same settings",
        "nothing_new": True,
        "encoders_id": encoders_id,
        "inputs_key": inputs_key,
        "rows": {"input": rows, "embedded_now": 0},
        "champion": last.get("champion"),
        "challenger": last.get("challenger", {}),
        "health": last.get("health", {}),
        "stage_s": {"survey": time.perf_counter() - t0},
    }
    history_uri = registry.record(decision)
    log.info("nightly %s: nothing new since %s; nothing ran", run_id, last.get("run_id"))
    return NightlyResult(
        run_id,
        False,
        decision,
        encoders_id,
        0,
        rows,
        decision["health"],
        time.perf_counter() - t0,
        decision["stage_s"],
        history_uri,
    )


def run_nightly(config: Config, store: Storage | None = None) -> NightlyResult:
    """One night: extract what is new, check its health, retrain, compare the challenger with the
    champion on the same held-out rows, promote only if it wins; every decision is recorded."""
    t0 = time.perf_counter()
    store = store or Storage(config.storage)
    nc = config.nightly
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    registry = Registry(store, config.output)
    lease = registry.lease(nc.lease_ttl_s).acquire(wait_s=nc.wait_for_lease_s)
    lease.keep_renewed()
    stage_s: dict[str, float] = {}
    stage = "extract"
    champion = None
    try:
        champion = registry.recover(lease)
        encoders_id = encoders_fingerprint_id(config)
        root = layout.version_root(config.output, encoders_id)
        vconfig = config.model_copy(update={"output": root})

        # Nothing new since the last completed night, under the same settings: no Ray, no model.
        todo = survey(vconfig, store, encoders_id=encoders_id)
        inputs_key = night_inputs_key(config, encoders_id, todo.records)
        if not todo.pending and store.exists(layout.manifest(root)):
            last = registry.last_completed()
            if last and last.get("inputs_key") == inputs_key:
                return _nothing_new(registry, run_id, last, todo, encoders_id, inputs_key, t0)
        init_ray(config.ray)

        t = time.perf_counter()
        previous = None
        try:
            # Last night's rows of the shards tonight redoes: the only rows that can move (the
            # other shards' files stay as they are). At a million rows, reading every row here
            # doubled the driver's memory and took 10 s of a 1%-new night.
            redo = sorted(todo.previous.values())
            if redo:
                previous = load_embeddings(store, root, files=redo)
        except FileNotFoundError as e:  # EmbeddingsError included
            # No manifest: the first night of this encoder version, nothing to compare with.
            # A manifest whose files are gone or changed: tonight's extract restores them, and
            # the health check runs without last night's version to compare with.
            if store.exists(layout.manifest(root)):
                log.warning(
                    "nightly: last night's embeddings are incomplete (%s); drift not checked", e
                )
        extracted = run_extract(vconfig, store, shards=todo.shards)
        stage_s["extract"] = time.perf_counter() - t
        # What tonight decides on: the commits as the extract left them.
        committed = {r["shard"]: r for r in read_manifest(store, root).get("shards", [])}
        inputs_key = night_inputs_key(config, encoders_id, committed)
        lease.renew()

        stage = "health"
        t = time.perf_counter()
        emb = load_embeddings(store, root)
        health = _probe_health(vconfig, store, emb, previous)
        stage_s["health"] = time.perf_counter() - t

        stage = "train"
        t = time.perf_counter()
        # The night's rows: every row the train settings allow (train.exclude_splits), less
        # those held out for the comparison; workers find them from each row's id and split.
        trained = run_train(vconfig, store, fixed_holdout=nc.holdout_fraction)
        stage_s["train"] = time.perf_counter() - t
        lease.renew()

        stage = "compare"
        t = time.perf_counter()
        challenger = _scores(config, store, trained.head, emb)
        champion_scores = None
        if champion:
            champ_emb = (
                emb
                if champion.get("encoders_id") == encoders_id
                else load_embeddings(
                    store, layout.version_root(config.output, champion["encoders_id"])
                )
            )
            champion_scores = _scores(config, store, champion["head"], champ_emb)
        if nc.score_report:
            run_score(vconfig, store)
        stage_s["compare"] = time.perf_counter() - t

        stage = "promote"
        decision = decide(champion_scores, challenger, nc.margin, nc.tolerance)
        decision.update(
            run_id=run_id,
            status="ok",
            head=trained.head,
            encoders_id=encoders_id,
            metric=nc.metric,
            classifiers=nc.classifiers,
            health=health,
            rows={
                "input": extracted.input_rows,
                "embedded_now": extracted.embedded_now,
                "holdout": int(fixed_holdout_mask(emb.ids, nc.holdout_fraction).sum()),
            },
            previous_champion=champion and champion.get("head"),
            stage_s=stage_s,
            inputs_key=inputs_key,
        )
        if decision["promote"]:
            # Recorded first, then pointed to: a night killed in between is completed by the next.
            decision["champion_record"] = {
                "head": trained.head,
                "run_id": run_id,
                "encoders_id": encoders_id,
                "scores": challenger,
                "metric": nc.metric,
                "promoted_at": datetime.now(UTC).isoformat(),
            }
        lease.check()
        history_uri = registry.record(decision)
        if decision["promote"]:
            registry.promote(decision["champion_record"], lease, history_uri, expected=champion)
        return NightlyResult(
            run_id,
            decision["promote"],
            decision,
            encoders_id,
            extracted.embedded_now,
            extracted.input_rows,
            health,
            time.perf_counter() - t0,
            stage_s,
            history_uri,
        )
    except Exception as e:
        registry.record(
            {
                "run_id": run_id,
                "status": "failed",
                "stage": stage,
                "promote": False,
                "reason": f"{type(e).__name__}: {e}",
                "stage_s": stage_s,
                "traceback": traceback.format_exc(limit=8),
                "champion": champion and champion.get("head"),
            }
        )
        log.error("nightly %s failed in %s; the champion is unchanged", run_id, stage)
        raise
    finally:
        lease.release()


def main(config: Config) -> NightlyResult:
    """The stage as the CLI and jobs/nightly.py run it."""
    return run_nightly(config)
