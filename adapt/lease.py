"""A lease on object storage: one writer at a time for an output, with no lock server.

The lease is a folder of numbered generations, `<folder>/000000000007.json`, and its state is
the highest one. Every change (take, renew, release, take over an expired or dead holder) is the
creation of the next number with a conditional PUT (S3 If-None-Match, link(2) on disk), so of
two runs that try the same change exactly one succeeds; nothing is ever read, then overwritten.

A reply lost after the store applied the PUT reads, on the retry, as "already exists"; each body
carries a random token, so the run reads that generation back and knows it is its own. A store
that ignores If-None-Match would let two runs win: `check_exclusive` probes for it first.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from adapt.storage import Storage, basename, join

log = logging.getLogger("adapt.lease")

KEEP_GENERATIONS = 4  # older generations are deleted once a newer one exists
_checked: set[str] = set()  # stores whose conditional create has been probed, per process


class LeaseHeld(RuntimeError):
    """Another run holds the lease; the message says who and until when."""


def _now() -> float:
    return time.time()


def check_exclusive(store: Storage, folder: str) -> None:
    """Refuse a store that ignores conditional creates: create one probe key twice, the second
    must fail. Done once per folder root and process."""
    if folder in _checked:
        return
    probe = join(folder, f"_probe-{uuid.uuid4().hex[:12]}")
    store.create_exclusive(probe, b"1")
    try:
        store.create_exclusive(probe, b"2")
    except FileExistsError:
        _checked.add(folder)
        return
    finally:
        store.delete(probe)
    raise RuntimeError(
        f"the store under {folder} ignores conditional writes (If-None-Match: *): a lease there "
        "cannot keep two runs apart. Use a store that honours them (AWS S3, recent MinIO, moto) "
        "or run one job at a time on this output."
    )


def _alive_here(holder: dict) -> bool:
    """False only when the holder ran on this host and its process is gone."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@dataclass
class Lease:
    store: Storage
    folder: str
    ttl_s: float = 6 * 3600.0
    what: str = "this output"  # named in the messages: "another run holds <what>"
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    generation: int | None = None  # the generation this run wrote last, while it holds the lease
    _token: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)
    _lost: str | None = field(default=None, repr=False)
    _stop: threading.Event | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def held(self) -> bool:
        return self.generation is not None

    # -- reading the state ---------------------------------------------------------------------
    def _uri(self, generation: int) -> str:
        return join(self.folder, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        names = (basename(u) for u in self.store.list_files(self.folder, (".json",)))
        return sorted(int(n[:-5]) for n in names if n[:-5].isdigit())

    def _read(self, generation: int) -> dict | None:
        """A generation's body; {} when it is unreadable (cut short by a crash), None when gone."""
        try:
            return json.loads(self.store.read_bytes(self._uri(generation)))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning(
                "lease %s: generation %d is unreadable; taken as free", self.folder, generation
            )
            return {}

    def state(self) -> tuple[int, dict]:
        """(highest generation, its body): (0, {}) when the lease was never taken."""
        while True:
            generations = self._generations()
            if not generations:
                return 0, {}
            body = self._read(generations[-1])
            if body is not None:
                return generations[-1], body
            # Pruned between the listing and the read: a newer one exists, list again.

    @staticmethod
    def _free(body: dict) -> bool:
        return (
            not body.get("token")
            or body.get("released", False)
            or body.get("expires_at", 0) < _now()
            or not _alive_here(body)
        )

    # -- changing it ---------------------------------------------------------------------------
    def _body(self, released: bool = False) -> bytes:
        now = _now()
        return json.dumps(
            {
                "owner": self.owner,
                "token": self._token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "released": released,
                "written_at": now,
                "expires_at": now + self.ttl_s,
                "expires_at_utc": datetime.fromtimestamp(now + self.ttl_s, UTC).isoformat(),
            }
        ).encode()

    def _create(self, generation: int, released: bool = False) -> bool:
        """Create a generation; True if it is ours (including a retry whose first reply was lost)."""
        try:
            self.store.create_exclusive(self._uri(generation), self._body(released))
            return True
        except FileExistsError:
            body = self._read(generation)
            return bool(body) and body.get("token") == self._token

    def _prune(self, below: int) -> None:
        for g in self._generations():
            if g < below - KEEP_GENERATIONS + 1:
                self.store.delete(self._uri(g))

    def acquire(self, wait_s: float = 0.0, poll_s: float = 2.0) -> Lease:
        """Take the lease, waiting up to `wait_s` for a live holder; raise LeaseHeld otherwise."""
        check_exclusive(self.store, self.folder)
        deadline = _now() + wait_s
        while True:
            top, body = self.state()
            if self._free(body):
                if body.get("token") and not body.get("released"):
                    log.warning(
                        "lease %s: taking over from %s (%s)",
                        self.folder,
                        body.get("owner"),
                        "expired" if body.get("expires_at", 0) < _now() else "its process is gone",
                    )
                if self._create(top + 1):
                    self.generation = top + 1
                    self._prune(top + 1)
                    return self
                continue  # another run took it first: read who
            if _now() >= deadline:
                raise LeaseHeld(
                    f"another run holds {self.what} (owner {body.get('owner')}, until "
                    f"{body.get('expires_at_utc')}); it will finish or expire, then re-run. "
                    "Nothing was changed."
                )
            time.sleep(min(poll_s, max(0.05, deadline - _now())))

    def _check_ours(self) -> int:
        if self._lost:
            raise LeaseHeld(self._lost)
        top, body = self.state()
        if self.generation is None or top != self.generation or body.get("token") != self._token:
            self._lost = (
                f"lost the lease on {self.what} (now held by {body.get('owner')}); this run "
                "stops before writing anything more. Re-run once the other run is done."
            )
            raise LeaseHeld(self._lost)
        return top

    def check(self) -> None:
        """Raise LeaseHeld unless this run still holds the lease: call before each commit."""
        with self._lock:
            self._check_ours()

    def renew(self) -> None:
        """Extend the lease by `ttl_s` from now; raise LeaseHeld if it is no longer ours."""
        with self._lock:
            top = self._check_ours()
            if not self._create(top + 1):
                self._lost = f"lost the lease on {self.what} to another run while renewing it"
                raise LeaseHeld(self._lost)
            self.generation = top + 1
            self._prune(top + 1)

    def release(self) -> None:
        self.stop_renewing()
        with self._lock:
            if self.generation is None:
                return
            try:
                top, body = self.state()
                if top == self.generation and body.get("token") == self._token:
                    if self._create(top + 1, released=True):
                        self._prune(top + 1)
            finally:
                self.generation = None

    # -- renewing in the background ------------------------------------------------------------
    def keep_renewed(self, every_s: float | None = None) -> None:
        """Renew from a daemon thread every `every_s` (a third of the TTL by default) while this
        process lives; a failed renewal is remembered and raised by the next `check`."""
        self._stop = threading.Event()
        every = every_s or self.ttl_s / 3
        stop = self._stop

        def loop() -> None:
            while not stop.wait(every):
                try:
                    self.renew()
                except LeaseHeld:
                    return
                except Exception as e:  # a store error: keep trying until the lease expires
                    log.warning("lease %s: renewal failed (%s); retrying", self.folder, e)

        threading.Thread(target=loop, name="lease-renew", daemon=True).start()

    def stop_renewing(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
