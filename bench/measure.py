"""Measuring a running process from outside: CPU seconds, RSS and latency percentiles.

Everything reads /proc, so the process under test carries no instrumentation and the
figures are the ones an operator's `top` would show. CPU is user+system time of the process
(and, optionally, its children); RSS is the resident set in MiB.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15 (1-based) → 11, 12 here.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class ProcessSample:
    """CPU and memory of one process over a measured window."""

    pid: int
    started_wall: float = field(default_factory=time.monotonic)
    started_cpu: float = 0.0
    peak_rss: float = 0.0
    rss_samples: list[float] = field(default_factory=list)

    @classmethod
    def begin(cls, pid: int) -> ProcessSample:
        sample = cls(pid)
        sample.started_cpu = cpu_seconds(pid)
        sample.started_wall = time.monotonic()
        return sample

    def poll_rss(self) -> float:
        rss = rss_mib(self.pid)
        self.rss_samples.append(rss)
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def end(self) -> WindowFigures:
        self.poll_rss()
        wall = time.monotonic() - self.started_wall
        cpu = cpu_seconds(self.pid) - self.started_cpu
        return WindowFigures(
            wall_s=wall, cpu_s=cpu, rss_mib=self.rss_samples[-1], peak_rss_mib=self.peak_rss
        )


@dataclass(frozen=True)
class WindowFigures:
    wall_s: float
    cpu_s: float
    rss_mib: float
    peak_rss_mib: float

    @property
    def cpu_percent(self) -> float:
        """Percent of one core over the window."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def host_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host so far, summed over all CPUs (/proc/stat).

    Busy is everything but idle and iowait. Two readings bracket a window; the difference
    tells how much of the machine was in use, including by processes nobody measured.
    """
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user, so only the first eight are summed.
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


def group_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds used so far by several processes together; a process gone counts 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total
