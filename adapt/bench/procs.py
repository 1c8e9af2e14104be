"""Process trees from /proc, for benchmarks and tests that measure a driver and the Ray it starts.

Linux only: every figure is read from /proc/<pid>/stat and /proc/<pid>/status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmd: str  # the command line, arguments joined by spaces
    rss_mb: float  # resident size now


def processes() -> dict[int, Proc]:
    """Every process readable now, by pid; processes that exit while being read are left out."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            pid = int(entry)
            out[pid] = Proc(pid, int(stat[1]), cmd, int(stat[21]) * page / 2**20)
        except (OSError, IndexError, ValueError):
            continue
    return out


def descendants(root: int, procs: dict[int, Proc] | None = None) -> set[int]:
    """The pids under `root` (children, their children, ...), `root` itself not included."""
    procs = processes() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found and child != root:
                found.add(child)
                frontier.append(child)
    return found


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants now, in MiB."""
    procs = processes()
    return sum(procs[p].rss_mb for p in descendants(root, procs) | {root} if p in procs)


def hwm_mb(pid: int) -> float:
    """The largest resident size the process has reached (VmHWM), in MiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
