"""The reading: one sampled value of one point of one device, with its quality and sample time."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
