"""The head registry on object storage: the champion pointer, the decision history, and a lease.

    {output}/registry/champion.json         the head in use: replaced whole by one PUT (atomic)
    {output}/registry/history/<time>-<run>.json   one immutable record per decision, never edited
    {output}/registry/lease/                held by the one nightly run allowed to write

A decision is recorded before the champion pointer moves, and the pointer names its record: a
night killed between the two leaves a promotion that the next night's `recover` completes, and
a pointer cut short by a crash is rebuilt from the newest promotion in the history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from adapt import layout
from adapt.lease import Lease
from adapt.storage import Storage, basename

log = logging.getLogger("adapt.nightly")


@dataclass
class Registry:
    store: Storage
    output: str

    def lease(self, ttl_s: float) -> Lease:
        return Lease(
            self.store, layout.lease(self.output), ttl_s=ttl_s, what=f"the registry {self.output}"
        )

    def champion(self) -> dict | None:
        """The champion record; one cut short by a crash is rebuilt from the history."""
        try:
            return self.store.read_json_or_none(layout.champion(self.output))
        except (json.JSONDecodeError, UnicodeDecodeError):
            promoted = self.last_promotion()
            log.warning(
                "registry: %s is unreadable; the champion is taken from the history (%s)",
                layout.champion(self.output),
                promoted and promoted["history"],
            )
            return promoted

    def promote(self, record: dict, lease: Lease, history_uri: str, expected: dict | None) -> None:
        """Point the registry at a new champion: one whole-object write, atomic for readers.

        Only the lease holder writes it, so the lease is checked (and extended) just before, and
        the champion must still be `expected`, the one the run compared against (None: there
        was none); the record names the history record that decided it, written before it.
        """
        lease.renew()
        current = self.champion()
        if current != expected:
            raise RuntimeError(
                f"the champion changed while this run held the lease (now "
                f"{current and current.get('head')}, read as {expected and expected.get('head')}):"
                " another writer is at work on this registry; nothing was promoted"
            )
        self.store.write_json(layout.champion(self.output), {**record, "history": history_uri})

    def record(self, decision: dict) -> str:
        """Append a decision to the history (a new immutable object); return its URI."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        uri = layout.history_record(self.output, stamp, decision.get("run_id", "run"))
        self.store.write_json(uri, {**decision, "recorded_at": datetime.now(UTC).isoformat()})
        return uri

    def history(self) -> list[dict]:
        """Every readable decision, oldest first (an unreadable record is skipped with a warning)."""
        return list(reversed(list(self._newest_first())))

    def _newest_first(self) -> Iterator[dict]:
        """Readable decisions from the newest back, read one at a time as they are asked for."""
        for f in reversed(self.store.list_files(layout.history_dir(self.output), (".json",))):
            try:
                yield {**self.store.read_json(f), "history": f}
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("registry: history record %s is unreadable; skipped", basename(f))

    def last_promotion(self) -> dict | None:
        """The champion record the newest promoting decision in the history wrote, or None."""
        for h in self._newest_first():
            if h.get("promote") and h.get("champion_record"):
                return {**h["champion_record"], "history": h["history"]}
        return None

    def last_completed(self) -> dict | None:
        """The newest decision of a night that ran to its end (status "ok"), or None."""
        return next((h for h in self._newest_first() if h.get("status") == "ok"), None)

    def recover(self, lease: Lease) -> dict | None:
        """Complete a promotion that a killed night recorded but did not point to; return the
        champion. Call holding the lease, before reading the champion for a new night."""
        champion = self.champion()
        promoted = self.last_promotion()
        if promoted and (champion or {}).get("history") != promoted["history"]:
            newer = champion is None or str(champion.get("promoted_at", "")) < str(
                promoted.get("promoted_at", "")
            )
            if newer:
                log.warning(
                    "registry: the promotion in %s was recorded but not applied; applying it",
                    basename(promoted["history"]),
                )
                record = {k: v for k, v in promoted.items() if k != "history"}
                self.promote(record, lease, promoted["history"], expected=champion)
                return self.champion()
        return champion


def decide(
    champion: dict[str, float] | None, challenger: dict[str, float], margin: float, tolerance: float
) -> dict:
    """Champion/challenger rule over per-task scores (higher is better), on the same held-out rows.

    Promote when there is no champion, or when the challenger's mean over tasks beats the
    champion's by at least `margin` and no task drops by more than `tolerance`.
    """
    if not challenger:
        return {"promote": False, "reason": "the challenger has no scores"}
    if not champion:
        return {"promote": True, "reason": "no champion yet", "challenger": challenger}
    tasks = sorted(set(champion) & set(challenger))
    if not tasks:
        return {
            "promote": True,
            "reason": "no task in common with the champion; the challenger "
            "scores the current tasks",
            "challenger": challenger,
            "champion": champion,
        }
    deltas = {t: challenger[t] - champion[t] for t in tasks}
    mean_gain = sum(deltas.values()) / len(tasks)
    worst = min(deltas, key=deltas.get)
    numbers = {
        "champion": champion,
        "challenger": challenger,
        "deltas": deltas,
        "mean_gain": mean_gain,
        "margin": margin,
        "tolerance": tolerance,
    }
    if deltas[worst] < -tolerance:
        return {
            "promote": False,
            **numbers,
            "reason": f"task {worst} drops by {-deltas[worst]:.4f} > tolerance {tolerance}",
        }
    if mean_gain < margin:
        return {
            "promote": False,
            **numbers,
            "reason": f"mean gain {mean_gain:+.4f} is below the margin {margin}",
        }
    return {"promote": True, **numbers, "reason": f"mean gain {mean_gain:+.4f} >= margin {margin}"}
