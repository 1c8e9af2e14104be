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

import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from adapt import layout
from adapt.config import Config, ScoreTask
from adapt.embeddings import Embeddings, load_embeddings
from adapt.extract import readers
from adapt.extract.stage import encoders_fingerprint_id, run_extract
from adapt.extract.workers import embed_in_process
from adapt.labels import build_task
from adapt.nightly.champion import Registry, decide
from adapt.nightly.health import DRIFT_COSINE, embedding_health, row_cosine
from adapt.rayutil import init_ray
from adapt.score.cells import score_cell
from adapt.score.stage import run_score
from adapt.splits import fixed_holdout_mask
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
) -> dict:
    """Per task: the metric averaged over classifiers, fitted on projected non-held-out rows and
    scored on held-out rows. `project(emb) -> [rows, d]` applies a head to these embeddings."""
    x = project(emb)
    held = fixed_holdout_mask(emb.ids, fraction)
    out = {}
    for spec in tasks:
        task = build_task(spec, emb.columns, 2)
        rows = task.rows
        train, test = rows[~held[rows]], rows[held[rows]]
        pos_train = np.where(~held[rows])[0]
        pos_test = np.where(held[rows])[0]
        if len(test) == 0 or len(train) == 0:
            raise ValueError(f"task {spec.task_name}: no held-out or no training rows")
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
        init_ray(config.ray)

        t = time.perf_counter()
        previous = None
        try:
            previous = load_embeddings(store, root)
        except FileNotFoundError as e:  # EmbeddingsError included
            # No manifest: the first night of this encoder version, nothing to compare with.
            # A manifest whose files are gone or changed: tonight's extract restores them, and
            # the health check runs without last night's version to compare with.
            if store.exists(layout.manifest(root)):
                log.warning(
                    "nightly: last night's embeddings are incomplete (%s); drift not checked", e
                )
        extracted = run_extract(vconfig, store)
        stage_s["extract"] = time.perf_counter() - t
        lease.renew()

        stage = "health"
        emb = load_embeddings(store, root)
        health = _probe_health(vconfig, store, emb, previous)

        stage = "train"
        t = time.perf_counter()
        train_ids = [
            str(i)
            for i, h in zip(emb.ids, fixed_holdout_mask(emb.ids, nc.holdout_fraction), strict=True)
            if not h
        ]
        trained = run_train(vconfig, store, train_ids=train_ids)
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
