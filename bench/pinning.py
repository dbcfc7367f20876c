"""CPU pinning for the benchmarks: give InfluxDB cores of its own on a small host.

On a 2-core machine InfluxDB alone uses both cores at its limit, so any client on the same
host takes CPU from it and "InfluxDB's own limit" can never be reached by anyone. Pinning
influxd to some cores and every other process of the run to the rest stands in for InfluxDB
on a host of its own: its limit (measured with pre-built lines on the same pinned cores) and
the ingesters' rate are then both bound by the same CPU, and an ingester that is not the
bottleneck reaches it.

Linux only (``os.sched_setaffinity``). A child process inherits the CPU affinity of the
thread that starts it, so :func:`on_cpus` around a ``Popen`` pins the child and every thread
it will ever have, from its first instruction.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def parse_cpus(text: str) -> frozenset[int]:
    """``"0"``, ``"0,2"``, ``"0-1"`` → CPU numbers; ``ValueError`` naming what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or range (e.g. 0 or 0-1)") from None
        cpus.update(range(first, last + 1))
    usable = os.sched_getaffinity(0)
    if not cpus:
        raise ValueError("no CPU given (e.g. 0)")
    if not cpus < usable:
        raise ValueError(
            f"CPUs {sorted(cpus)} must be a proper subset of the usable ones {sorted(usable)}, "
            "so the other processes keep at least one"
        )
    return frozenset(cpus)


def rest_of(cpus: frozenset[int]) -> frozenset[int]:
    """The usable CPUs that are not in ``cpus``."""
    return frozenset(os.sched_getaffinity(0) - cpus)


@contextlib.contextmanager
def on_cpus(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block (and the processes it starts) on ``cpus``; ``None``: unchanged."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def label(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))
