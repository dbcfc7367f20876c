"""When does a reading become queryable? A probe that polls InfluxDB for new sample times.

It watches a *sample* of the series: for every device, the first point of each Modbus read
(each read gets its own sample time in fieldlink's agent, so the sample covers every request
of every poll; for 100 points that is 2 of 100 series per device). Every ``interval`` it runs

    SELECT value FROM readings WHERE (point = 'p000' OR point = 'p074') AND time > LOWER
    GROUP BY device, point

and records, for each (series, sample time) it has not seen before, the wall-clock time the
answer arrived. Latency = that time − the sample time in the point (the agent's
``time.time_ns()``, same host, same clock). ``LOWER`` is the oldest of the newest sample
times of all watched series (so each poll returns about one new row per series), but never
further back than ``lookback`` seconds, so a series that stopped cannot make polls heavy.

Resolution: a point is counted when the first answer that contains it arrives, so a latency
is over-estimated by at most one poll interval plus one query's duration (both reported);
never under-estimated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.ingest_stack import MEASUREMENT, InfluxReader
from bench.measure import percentile


@dataclass
class LatencyProbe:
    reader: InfluxReader
    #: (device, point) pairs watched.
    series: set[tuple[str, str]]
    lookback_s: float = 10.0
    field_name: str = "value"
    last: dict[tuple[str, str], int] = field(default_factory=dict)
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    #: (device, sample time ns, answer arrival ns) of every newly seen reading.
    arrivals: list[tuple[str, int, int]] = field(default_factory=list)
    query_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        points = sorted({p for _, p in self.series})
        self._points = " OR ".join(f"point = '{p}'" for p in points)

    def lower_bound(self, now_ns: int) -> int:
        floor = now_ns - int(self.lookback_s * 1e9)
        if self.last and len(self.last) == len(self.series):
            return max(floor, min(self.last.values()))
        return floor

    def poll(self) -> int:
        """One query; returns how many readings were seen for the first time."""
        sent = time.time_ns()
        q = (
            f"SELECT {self.field_name} FROM {MEASUREMENT} WHERE ({self._points}) "
            f"AND time > {self.lower_bound(sent)} GROUP BY device, point"
        )
        answer = self.reader.query(q)
        arrived = time.time_ns()
        self.query_s.append((arrived - sent) / 1e9)
        new = 0
        for series in answer:
            tags = series.get("tags", {})
            key = (tags.get("device", ""), tags.get("point", ""))
            if key not in self.series:
                continue
            for ts, _value in series["values"]:
                stamp = (key[0], key[1], int(ts))
                if stamp in self.seen:
                    continue
                self.seen.add(stamp)
                self.arrivals.append((key[0], int(ts), arrived))
                if ts > self.last.get(key, 0):
                    self.last[key] = int(ts)
                new += 1
        return new

    def caught_up(self, t_ns: int) -> bool:
        """Every watched series has a reading sampled at or after ``t_ns``."""
        return len(self.last) == len(self.series) and min(self.last.values()) >= t_ns

    def latencies_ms(self, start_ns: int, end_ns: int) -> list[float]:
        """Latencies of the readings sampled in [start_ns, end_ns)."""
        return [(seen - ts) / 1e6 for _, ts, seen in self.arrivals if start_ns <= ts < end_ns]

    def split_ms(
        self, at_broker: dict[tuple[str, int], int], start_ns: int, end_ns: int
    ) -> tuple[list[float], list[float]]:
        """Latencies cut in two at the broker: (sample → broker, broker → queryable), for the
        readings sampled in [start_ns, end_ns) whose (device, sample time) the broker-side
        subscriber saw arrive (``at_broker``: arrival ns)."""
        first: list[float] = []
        second: list[float] = []
        for device, ts, seen in self.arrivals:
            arrived = at_broker.get((device, ts))
            if arrived is not None and start_ns <= ts < end_ns:
                first.append((arrived - ts) / 1e6)
                second.append((seen - arrived) / 1e6)
        return first, second

    def seen_in(self, start_ns: int, end_ns: int) -> int:
        return sum(1 for _d, _p, ts in self.seen if start_ns <= ts < end_ns)

    def stored_in(self, start_ns: int, end_ns: int) -> int:
        """How many readings of the watched series InfluxDB holds for [start_ns, end_ns)."""
        series = self.reader.query(
            f"SELECT count({self.field_name}) FROM {MEASUREMENT} WHERE ({self._points}) "
            f"AND time >= {start_ns} AND time < {end_ns} GROUP BY device, point"
        )
        return sum(
            int(s["values"][0][1])
            for s in series
            if (s.get("tags", {}).get("device"), s.get("tags", {}).get("point")) in self.series
        )


def summary(latencies: list[float], prefix: str = "") -> dict[str, float | int | None]:
    """``samples``, ``p50_ms``, ``p99_ms`` and ``max_ms`` (keys after ``prefix``)."""
    if not latencies:
        return {f"{prefix}{k}": None for k in ("p50_ms", "p99_ms", "max_ms")} | {
            f"{prefix}samples": 0
        }
    return {
        f"{prefix}samples": len(latencies),
        f"{prefix}p50_ms": round(percentile(latencies, 50), 1),
        f"{prefix}p99_ms": round(percentile(latencies, 99), 1),
        f"{prefix}max_ms": round(max(latencies), 1),
    }
