"""A Train worker's rows on its local disk, read back one bucket at a time.

A worker whose share of the rows is larger than `train.max_rows_in_memory` does not hold them:
while Ray Data streams its share, each row goes to one of a few buckets by a hash of its id
(`RowSpill`), written to a local folder in parts as rows arrive. An epoch then visits the buckets
in a random order, loads one bucket (at most about `max_rows_in_memory` rows, sorted by key so
that the order does not depend on how the blocks arrived), normalises it and draws its batches
from it with the same sampler as an in-memory epoch (`SpilledSplit`). A batch thus mixes rows of
one bucket, a hash-random sample of the share, instead of the whole share; the bucket order and
every draw follow from the epoch's seed, so a resumed run draws the same batches.

The vectors in memory are bounded by the setting, not by the corpus; the id keys and labels of a
bucket travel with it, so nothing grows with the share but the files on disk. Each worker's
folder is removed when it ends; one a killed worker left is removed by the next worker of the
same run to start on that node (`worker_folder`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
from torch import Tensor

from adapt.train.heads import InputNorm

# Salt of the id hash (`splits.row_keys`) that buckets rows, so that the buckets do not follow
# the keys that pick the early-stopping rows.
KEY_SALT = 104_729
# Buckets are sized to this share of the bound: rows spread over them by hash, and Ray Data
# may give a worker somewhat more than an even share.
BUCKET_FILL = 0.75
# Rows held before they are written out, as a share of the bound (all buckets together).
PENDING_FILL = 0.25


def worker_folder(run_id: str, rank: int) -> str:
    """A fresh local folder for one Train worker's rows, under TMPDIR. Folders of this run that
    workers killed on this node left behind (their process is gone) are removed first."""
    root = os.path.join(tempfile.gettempdir(), "adapt-train-rows", run_id)
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    path = os.path.join(root, f"rank-{rank}-{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def remove_worker_folder(path: str) -> None:
    """Remove a worker's folder, and its run's folder once no worker's is left in it."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # another worker of the run on this node still holds its rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def bucket_count(rows: int, max_rows_in_memory: int) -> int:
    """Buckets for about `rows` rows so that one bucket stays within the bound."""
    return max(1, math.ceil(rows / max(1.0, BUCKET_FILL * max_rows_in_memory)))


class RowSpill:
    """Rows written to `folder` in `n_buckets` buckets by key (`key % n_buckets`).

    `add` takes a block of rows: uint64 keys, inputs per modality, encoded labels (class ids or
    multi-hot). Rows wait in memory until `flush_rows` of them are pending, then every bucket's
    pending rows are written as one part file. `finish` writes the rest; `load(b)` reads bucket b
    back, rows sorted by key.
    """

    def __init__(self, folder: str, n_buckets: int, flush_rows: int) -> None:
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.n_buckets = n_buckets
        self.flush_rows = max(1, flush_rows)
        self.counts = np.zeros(n_buckets, dtype=np.int64)
        self.parts: list[list[str]] = [[] for _ in range(n_buckets)]
        self._pending: list[list[dict[str, np.ndarray]]] = [[] for _ in range(n_buckets)]
        self._pending_rows = 0
        self.bytes_written = 0

    def __len__(self) -> int:
        return int(self.counts.sum())

    def add(self, keys: np.ndarray, x: dict[str, np.ndarray], y: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if not len(keys):
            return
        bucket = (keys % np.uint64(self.n_buckets)).astype(np.int64)
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            block = {"keys": keys[rows], "y": np.asarray(y)[rows]}
            block.update({f"x_{m}": np.ascontiguousarray(v[rows]) for m, v in x.items()})
            self._pending[b].append(block)
            self.counts[b] += len(rows)
        self._pending_rows += len(keys)
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        for b, blocks in enumerate(self._pending):
            if not blocks:
                continue
            part = {k: np.concatenate([blk[k] for blk in blocks]) for k in blocks[0]}
            path = os.path.join(self.folder, f"bucket-{b:04d}-part-{len(self.parts[b]):05d}.npz")
            np.savez(path, **part)
            self.bytes_written += os.path.getsize(path)
            self.parts[b].append(path)
            self._pending[b] = []
        self._pending_rows = 0

    def finish(self) -> None:
        self._flush()

    def load(self, b: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Bucket b: keys, inputs per modality and labels, sorted by key. Arrays are read one
        name at a time, so that at most one array's parts and its sorted copy are held twice."""
        if not self.parts[b]:
            raise ValueError(f"bucket {b} holds no rows")

        def read(name: str) -> np.ndarray:
            chunks = []
            for path in self.parts[b]:
                with np.load(path) as data:
                    chunks.append(data[name])
            return np.concatenate(chunks)

        with np.load(self.parts[b][0]) as data:
            names = list(data.files)
        keys = read("keys")
        order = np.argsort(keys, kind="stable")
        x = {n[2:]: read(n)[order] for n in names if n.startswith("x_")}
        return keys[order], x, read("y")[order]


class SpilledSplit:
    """A side (train or validation) held in a `RowSpill`, with the interface of `fit.Split`
    that the epoch loop uses: `batches` (one epoch), `in_order` (fixed batches) and `first`."""

    def __init__(self, spill: RowSpill, norm: InputNorm) -> None:
        self.spill = spill
        self.norm = norm

    def __len__(self) -> int:
        return len(self.spill)

    def buckets(self) -> Iterator[int]:
        return (b for b in range(self.spill.n_buckets) if self.spill.counts[b])

    def bucket(self, b: int):
        """Bucket b as an in-memory `fit.Split`, normalised."""
        import torch

        from adapt.train.fit import Split

        _, x, y = self.spill.load(b)
        with torch.no_grad():
            for m in list(x):  # one modality at a time: its raw copy goes as its scaled one comes
                raw = torch.from_numpy(np.ascontiguousarray(x[m], dtype=np.float32))
                x[m] = self.norm.apply({m: raw})[m].contiguous()
        return Split(x, torch.from_numpy(y))

    def batches(
        self,
        batch_size: int,
        sampler: str,
        seed: int,
        n_steps: int | None = None,
        classes_per_batch: int | None = None,
    ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """One epoch: the buckets in an order drawn from `seed`, each loaded once and cut into
        batches by the sampler. With `n_steps` (workers that must step together), exactly that
        many batches: passes over the buckets repeat until it is reached."""
        from adapt.train.fit import epoch_batches

        rng = np.random.default_rng(seed)
        drawn = 0
        while True:
            drawn_before = drawn
            for b in rng.permutation(self.spill.n_buckets):
                if not self.spill.counts[b]:
                    continue
                part = None  # the previous bucket goes before the next one comes
                part = self.bucket(int(b))
                draws = epoch_batches(
                    part.y.numpy(),
                    batch_size,
                    sampler,
                    int(rng.integers(2**31 - 1)),
                    classes_per_batch=classes_per_batch,
                )
                for index in draws:
                    yield part.rows(index)
                    drawn += 1
                    if n_steps is not None and drawn >= n_steps:
                        return
            if n_steps is None or drawn == drawn_before:
                return

    def in_order(self, batch_size: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        for b in self.buckets():
            part = None
            part = self.bucket(b)
            yield from part.in_order(batch_size)

    def first(self, n: int) -> tuple[dict[str, Tensor], Tensor]:
        """The first n rows in bucket order (or all, when fewer)."""
        import torch

        xs, ys, held = [], [], 0
        for b in self.buckets():
            if held >= n:
                break
            part = self.bucket(b)
            x, y = part.first(n - held)
            xs.append(x)
            ys.append(y)
            held += len(y)
        if not xs:
            raise ValueError("no rows")
        return {m: torch.cat([x[m] for x in xs]) for m in xs[0]}, torch.cat(ys)
