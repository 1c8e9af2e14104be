"""Progress of long work on the driver: extract shards, train epochs, score cells.

On a terminal, a tqdm bar with its rate and ETA; elsewhere (a log file, `ray job logs`), one log
line with the same figures at most every `every_s` seconds and at the end, so that a captured log
holds no redraws. Quiet (`-q`, a logger above INFO) draws nothing.

Train epochs run in Ray Train workers: they `post` each epoch to the cluster's key-value store,
and the driver polls it into its bar (`follow`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("adapt")


class Meter:
    """Progress towards `total` units of work: `update(done)` with the running count."""

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str,
        every_s: float = 30.0,
        logger: logging.Logger = log,
        tty: bool | None = None,
    ):
        self.desc, self.total, self.unit, self.every_s, self.log = (
            desc,
            total,
            unit,
            every_s,
            logger,
        )
        self.done, self.postfix = 0, ""
        self.start = self._last = time.perf_counter()
        self.enabled = logger.isEnabledFor(logging.INFO) and total > 0
        tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        if self.enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", leave=False, file=sys.stderr)

    def text(self) -> str:
        """The count, rate and ETA, e.g. `score: 3/12 cells, 00:10, 0.30 cells/s, ETA 00:30`."""
        from tqdm import tqdm

        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = tqdm.format_interval((self.total - self.done) / rate) if rate > 0 else "?"
        per = (
            f"{rate:.2f} {self.unit}/s"
            if rate >= 0.1 or rate == 0
            else (f"{1 / rate:.0f} s per {self.unit.rstrip('s')}")
        )
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit}, "
            f"{tqdm.format_interval(elapsed)}, {per}, ETA {eta}"
            + (f", {self.postfix}" if self.postfix else "")
        )

    def update(self, done: int, postfix: str = "") -> None:
        if not self.enabled:
            return
        step, self.done, self.postfix = done - self.done, done, postfix
        if self.bar is not None:
            self.bar.update(step)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s and done < self.total:
            self._last = now
            self.log.info(self.text())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# Where Ray workers post their progress: the cluster's own key-value store (held by the GCS), so
# that no extra process runs for it.
NAMESPACE = "adapt-progress"


def post(key: str, done: int, postfix: str = "") -> None:
    """From a Ray worker: the running count of the work `key` names (fire and forget)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_initialized, _internal_kv_put

        if _internal_kv_initialized():
            _internal_kv_put(key, json.dumps([done, postfix]), overwrite=True, namespace=NAMESPACE)
    except Exception as e:  # progress is a convenience: a lost post is no failure
        log.debug("progress: post of %s failed: %s", key, e)


def _read(key: str) -> tuple[int, str] | None:
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(key, namespace=NAMESPACE)
    return tuple(json.loads(value)) if value else None


@contextmanager
def follow(key: str, meter: Meter, every_s: float = 1.0) -> Iterator[None]:
    """While the body runs, poll what workers `post` under `key` into `meter`; then forget it."""
    from ray.experimental.internal_kv import _internal_kv_del

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                state = _read(key)
            except Exception as e:
                log.debug("progress: read of %s failed: %s", key, e)
                continue
            if state:
                meter.update(*state)

    thread = threading.Thread(target=poll, daemon=True, name="adapt-progress")
    if meter.enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=15)
        meter.close()
        try:
            _internal_kv_del(key, namespace=NAMESPACE)
        except Exception as e:
            log.debug("progress: could not forget %s: %s", key, e)
