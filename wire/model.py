"""The reading: one sampled value of one point of one device, with its quality and sample time."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

#: A point's value. Numbers are sent as JSON numbers, booleans as JSON booleans, text as strings.
Value = float | int | bool | str


class Quality(enum.StrEnum):
    """OPC-style quality, reduced to the three states operators act on."""

    GOOD = "good"
    #: No usable value this cycle; ``reason`` says why (``timeout``, ``exception 2``...).
    BAD = "bad"
    #: A value exists but should not be trusted blindly (e.g. out of the configured range).
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample. ``site`` and ``agent`` travel once per batch, not per reading.

    Invariants (checked by :func:`wire.codec.decode_batch`, guaranteed by the agent):
    a ``good`` reading has a value; a ``bad`` reading has no value and a non-empty reason.
    """

    asset: str
    device: str
    point: str
    #: Sample time: nanoseconds since the Unix epoch, UTC, taken when the device answered.
    ts_ns: int
    value: Value | None
    unit: str | None = None
    quality: Quality = Quality.GOOD
    reason: str | None = None

    @classmethod
    def bad(
        cls, *, asset: str, device: str, point: str, ts_ns: int, reason: str, unit: str | None
    ) -> Reading:
        return cls(asset, device, point, ts_ns, None, unit, Quality.BAD, reason)


#: One point's entry inside a :class:`Group`, in wire form: ``{"p": name, "v": value,
#: "u": unit, "q": quality, "r": reason}`` with absent keys omitted (see docs/wire.md).
PointEntry = dict[str, Any]


@dataclass(slots=True)
class Group:
    """Readings of one device sampled at one time — what one Modbus request yields.

    This is the agent's hot-path form of readings: the point entries are already the
    dictionaries the batch payload carries, so a poll of 100 registers becomes one object and
    100 small dicts, and encoding is a single ``orjson.dumps``. The field names are the
    payload's keys (orjson serialises the dataclass directly), hence the terse ``t``.
    """

    asset: str
    device: str
    #: Sample time in nanoseconds since the Unix epoch, UTC.
    t: int
    points: list[PointEntry]

    def readings(self) -> list[Reading]:
        """The same readings as :class:`Reading` objects (tools, tests; not the hot path)."""
        out = []
        for e in self.points:
            quality = Quality(e.get("q", "good"))
            out.append(
                Reading(
                    self.asset,
                    self.device,
                    e["p"],
                    self.t,
                    e.get("v"),
                    e.get("u"),
                    quality,
                    e.get("r"),
                )
            )
        return out


def point_entry(
    point: str,
    value: Value | None,
    unit: str | None = None,
    quality: Quality = Quality.GOOD,
    reason: str | None = None,
) -> PointEntry:
    """A wire point entry; absent parts are omitted, as the payload format wants."""
    entry: PointEntry = {"p": point}
    if value is not None:
        entry["v"] = value
    if unit is not None:
        entry["u"] = unit
    if quality is not Quality.GOOD:
        entry["q"] = quality.value
    if reason is not None:
        entry["r"] = reason
    return entry
