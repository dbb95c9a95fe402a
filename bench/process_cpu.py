"""CPU time and CPU placement of processes, from /proc: what a bench charges the proxy.

`tracer serve --workers N` is a parent and N workers, so a proxy's CPU is its tree's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _ticks(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included)."""
    return _ticks(pid) / CLK_TCK


def family(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat(int(name))[1]), []).append(int(name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its live descendants (the workers)."""
    total = 0
    for member in family(pid):
        with contextlib.suppress(OSError):
            total += _ticks(member)
    return total / CLK_TCK


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move every thread of `pid` (sched_setaffinity alone moves one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def placed(placement: str, pids: Sequence[int]) -> Iterator[None]:
    """Run the block with this process and `pids` (and their trees) where `placement` says:
    `spread` leaves them where the scheduler puts them, `one-core` pins every thread to the
    first allowed CPU."""
    if placement == "spread":
        yield
        return
    if placement != "one-core":
        raise ValueError(f"unknown placement {placement!r}")
    everywhere = os.sched_getaffinity(0)
    everyone = [os.getpid(), *(member for pid in pids for member in family(pid))]
    for pid in everyone:
        set_affinity(pid, {min(everywhere)})
    try:
        yield
    finally:
        for pid in everyone:
            set_affinity(pid, everywhere)
