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
(`adapt.train.stage`), compare (`Holdout`), promote (`adapt.nightly.champion`).
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
from adapt.nightly.health import DRIFT_COSINE, Health, row_cosine
from adapt.rayutil import init_ray
from adapt.score.cells import score_cell
from adapt.score.stage import run_score
from adapt.splits import fixed_holdout_mask, sample_mask
from adapt.storage import Storage
from adapt.train.artifact import load_head
from adapt.train.stage import run_train

log = logging.getLogger("adapt.nightly")


@dataclass
class Side:
    """One side of a task's comparison: the ids of its rows and their labels."""

    ids: np.ndarray
    y: np.ndarray


@dataclass
class Holdout:
    """The rows a night compares heads on, chosen from ids and labels alone. Per task: the rows a
    classifier is fitted on and the held-out rows it is scored on; `ids`, every row used, so that
    only these rows' vectors are read."""

    tasks: list[tuple[str, str, list, Side, Side]]  # name, task type, classes, train, test
    ids: np.ndarray
    held_rows: int  # rows of the version held out from every head, sampled or not

    @classmethod
    def choose(
        cls,
        meta: Embeddings,
        tasks: list[ScoreTask],
        fraction: float,
        max_rows: int | None = None,
        seed: int = 0,
    ) -> Holdout:
        """Held-out rows are a fixed share of ids (`fixed_holdout_mask`); with `max_rows`, each
        side is a stratified sample of at most that many rows, by id hash."""
        held = fixed_holdout_mask(meta.ids, fraction)
        ids = np.asarray(meta.ids, dtype=object)
        chosen = []
        for spec in tasks:
            task = build_task(spec, meta.columns, 2)
            rows = task.rows
            sides = []
            for pos in (np.where(~held[rows])[0], np.where(held[rows])[0]):
                if max_rows is not None:
                    pos = pos[
                        sample_mask(task.y[pos], task.task_type, max_rows, seed, ids[rows[pos]], 2)
                    ]
                sides.append(Side(ids[rows[pos]], task.y[pos]))
            if not all(len(side.ids) for side in sides):
                raise ValueError(f"task {spec.task_name}: no held-out or no training rows")
            chosen.append((spec.task_name, task.task_type, task.classes, *sides))
        used = np.unique(np.concatenate([side.ids for *_, a, b in chosen for side in (a, b)]))
        return cls(chosen, used, int(held.sum()))

    def load(self, store: Storage, root: str) -> Embeddings:
        """The vectors of the rows used, read file by file and cut down as they come."""
        return load_embeddings(store, root, ids=self.ids)

    def score(
        self, emb: Embeddings, head, classifiers: list[str], metric: str, seed: int = 0
    ) -> dict:
        """Per task: the metric averaged over classifiers, fitted on the projected training rows
        and scored on the held-out rows. `emb`: `load`'s rows; `head(features) -> [rows, d]`."""
        x = head(emb.features)
        at = {i: k for k, i in enumerate(emb.ids)}
        out = {}
        for name, task_type, classes, train, test in self.tasks:
            a = np.array([at[i] for i in train.ids])
            b = np.array([at[i] for i in test.ids])
            values = [
                score_cell(x[a], train.y, x[b], test.y, clf, task_type, classes, seed)[metric]
                for clf in classifiers
            ]
            out[name] = float(np.mean(values))
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


def _probe(config: Config, store: Storage, root: str, shard: readers.Shard, file: str) -> dict:
    """A few rows of `shard` embedded again in a task of their own and compared with their stored
    vectors in `file`: outputs that do not reproduce are flagged."""
    n = config.nightly.probe_rows
    table = next(readers.read_shard(store, shard, config.corpus, n))
    import ray

    @ray.remote(
        num_cpus=min(1.0, config.extract.num_cpus_per_worker),
        num_gpus=config.extract.num_gpus_per_worker or None,
    )
    def probe(cfg, t):
        return embed_in_process(cfg, t)

    fresh = ray.get(probe.remote(config, table))
    stored = load_embeddings(store, root, files=[file], ids=fresh.column("id").to_pylist())
    position = {i: k for k, i in enumerate(stored.ids)}
    sims, flags = {}, []
    for modality in stored.features:
        column = fresh.column(f"{modality}_embedding").to_pylist()
        pairs = [
            (np.asarray(v, np.float32), stored.features[modality][position[i]])
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
                flags.append(
                    f"{modality}: re-embedding {len(pairs)} stored rows gave cosine "
                    f"{cos.min():.5f} < {DRIFT_COSINE}: outputs are not reproducible"
                )
    return {"probe": sims, "flags": flags}


def check_health(
    config: Config,
    store: Storage,
    root: str,
    todo,
    committed: dict[str, dict],
    previous: Embeddings | None,
) -> dict:
    """Health of the rows tonight embedded (the shards it redid, one file at a time, against last
    night's rows of the same shards), plus a re-embedding of a few stored rows of the first shard
    to check determinism. The other shards' rows were checked on the night that wrote them."""
    files = {k: r.get("embeddings_file") for k, r in committed.items() if r}
    health = Health(previous)
    for shard in todo.pending:
        if files.get(shard.key):
            health.add(load_embeddings(store, root, files=[files[shard.key]]))
    report = health.report()
    report["scope"] = "rows of the shards embedded tonight"
    first = next((s for s in todo.shards if files.get(s.key)), None)
    if config.nightly.probe_rows > 0 and first is not None:
        probe = _probe(config, store, root, first, files[first.key])
        report["probe"] = probe["probe"]
        report["flags"] += probe["flags"]
        report["healthy"] = not report["flags"]
    return report


def _compare(
    config: Config, store: Storage, heads: dict[str, tuple[str, str]]
) -> tuple[dict[str, dict], dict[str, Holdout]]:
    """Each head's scores per task on its version's held-out rows: `heads` maps a name to (head
    uri, version root). A version's rows are chosen (`Holdout`, returned per root) and read once
    for all its heads."""
    nc = config.nightly
    rows: dict[str, tuple[Holdout, Embeddings]] = {}
    out = {}
    for name, (head_uri, root) in heads.items():
        if root not in rows:
            meta = load_embeddings(store, root, features=False)
            holdout = Holdout.choose(
                meta, config.score.tasks, nc.holdout_fraction, nc.compare_max_rows
            )
            del meta
            rows[root] = (holdout, holdout.load(store, root))
        holdout, emb = rows[root]
        head = load_head(head_uri, store, emb.manifest.get("fingerprints"), root)
        out[name] = holdout.score(emb, head, nc.classifiers, nc.metric)
    return out, {root: holdout for root, (holdout, _) in rows.items()}


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
        health = check_health(vconfig, store, root, todo, committed, previous)
        del previous
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
        heads = {"challenger": (trained.head, root)}
        if champion:
            champion_root = layout.version_root(config.output, champion["encoders_id"])
            heads["champion"] = (champion["head"], champion_root)
        scores, holdouts = _compare(config, store, heads)
        challenger, champion_scores = scores["challenger"], scores.get("champion")
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
                "holdout": holdouts[root].held_rows,
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
