"""The head registry on object storage: the champion pointer, the decision history, and a lease.

    {output}/registry/champion.json         the head in use: replaced whole by one PUT (atomic)
    {output}/registry/history/<time>-<run>.json   one immutable record per decision, never edited
    {output}/registry/lease.json            held by the one nightly run allowed to write

The lease is created with a conditional PUT (S3 If-None-Match, link(2) on disk), so of two runs
started together exactly one gets it; it expires after `ttl_s`, so a run that died does not block
the next night forever, and the holder renews it between stages.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from adapt import layout
from adapt.storage import Storage


class LeaseHeld(RuntimeError):
    """Another run holds the lease; the message says who and until when."""


def _now() -> float:
    return time.time()


@dataclass
class Lease:
    store: Storage
    uri: str
    ttl_s: float = 6 * 3600.0
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    held: bool = False

    def _body(self) -> bytes:
        now = _now()
        return json.dumps(
            {
                "owner": self.owner,
                "acquired_at": now,
                "expires_at": now + self.ttl_s,
                "expires_at_utc": datetime.fromtimestamp(now + self.ttl_s, UTC).isoformat(),
            }
        ).encode()

    def acquire(self, wait_s: float = 0.0, poll_s: float = 2.0) -> Lease:
        """Take the lease, waiting up to `wait_s` for a live holder; raise LeaseHeld otherwise."""
        deadline = _now() + wait_s
        while True:
            try:
                self.store.create_exclusive(self.uri, self._body())
                self.held = True
                return self
            except FileExistsError:
                holder = self.store.read_json_or_none(self.uri)
                if holder is None:
                    continue  # released between our two calls: try again at once
                if holder.get("expires_at", 0) < _now():
                    # Expired: remove it, then race for it like everyone else.
                    self.store.delete(self.uri)
                    continue
                if _now() >= deadline:
                    raise LeaseHeld(
                        f"another run holds {self.uri} (owner {holder.get('owner')}, until "
                        f"{holder.get('expires_at_utc')}); it will finish or expire, then re-run. "
                        "Nothing was changed."
                    ) from None
                time.sleep(poll_s)

    def renew(self) -> None:
        holder = self.store.read_json_or_none(self.uri)
        if not holder or holder.get("owner") != self.owner:
            raise LeaseHeld(
                f"lost the lease {self.uri} (now held by {holder and holder.get('owner')})"
            )
        self.store.write_bytes(self.uri, self._body())

    def release(self) -> None:
        if not self.held:
            return
        holder = self.store.read_json_or_none(self.uri)
        if holder and holder.get("owner") == self.owner:
            self.store.delete(self.uri)
        self.held = False

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class Registry:
    store: Storage
    output: str

    def lease(self, ttl_s: float) -> Lease:
        return Lease(self.store, layout.lease(self.output), ttl_s=ttl_s)

    def champion(self) -> dict | None:
        return self.store.read_json_or_none(layout.champion(self.output))

    def promote(self, record: dict) -> None:
        """Point the registry at a new champion: one whole-object write, atomic for readers."""
        self.store.write_json(layout.champion(self.output), record)

    def record(self, decision: dict) -> str:
        """Append a decision to the history (a new immutable object); return its URI."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        uri = layout.history_record(self.output, stamp, decision.get("run_id", "run"))
        self.store.write_json(uri, {**decision, "recorded_at": datetime.now(UTC).isoformat()})
        return uri

    def history(self) -> list[dict]:
        files = self.store.list_files(layout.history_dir(self.output), (".json",))
        return [self.store.read_json(f) for f in files]


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
