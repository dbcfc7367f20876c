"""Injected faults: what a simulated device does instead of (or besides) answering normally.

A device with ``faults`` answers through :class:`FaultyUnit`, which returns a :class:`Reply`
instead of plain answer bytes; the framing layers (``tcp.py``, ``line.py``) act on it. A
device without faults answers with bytes through the plain, fast path.

Per request, the faults whose ``table``/``addresses`` match it are applied in this order:
``drop_connection`` (close the connection, no answer), ``no_answer``, ``exception`` (answer
with that code instead of the data), then ``latency`` (added up) and ``corrupt_crc`` on
whatever is sent. Probabilities are drawn from the device's own ``random.Random(fault_seed)``,
only for faults that match and are not ``always``, so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from config.sim import EveryN, SimDevice, SimFault
from sim.pdu import exception_response, request_span


class Reply(NamedTuple):
    """What a unit does with one request when faults are configured."""

    #: The answer PDU, or None: no answer at all.
    pdu: bytes | None
    #: Seconds to wait before sending the answer.
    delay: float = 0.0
    #: Close the connection instead of answering (TCP transports).
    drop: bool = False
    #: Send the answer with a wrong CRC/LRC.
    corrupt: bool = False


def strikes(seen: int, how: object, rng: random.Random) -> bool:
    """Whether a fault rule fires on the ``seen``-th thing it matched (1-based): ``always``,
    every N-th (``EveryN``), or with a probability drawn from ``rng`` (drawn only then, so
    seeded runs stay reproducible when other rules change)."""
    if how == "always":
        return True
    if isinstance(how, EveryN):
        return seen % how.every == 0
    assert isinstance(how, float | int)
    return how > 0 and rng.random() < how


class _Rule:
    __slots__ = ("count", "fault", "first", "last", "table")

    def __init__(self, fault: SimFault) -> None:
        self.fault = fault
        self.table = fault.table
        self.first, self.last = fault.addresses or (0, 65535)
        self.count = 0  # matching requests so far, for `every`

    def matches(self, span: tuple[str, int, int] | None) -> bool:
        if span is None:
            # A request naming no range (an unknown function) matches only unrestricted rules.
            return self.table is None and self.fault.addresses is None
        table, address, count = span
        if self.table is not None and table != self.table:
            return False
        return address <= self.last and address + count - 1 >= self.first


class FaultyUnit:
    """Wraps a unit's PDU handler with its device's faults; counts what it injected."""

    __slots__ = (
        "_handler",
        "_rng",
        "_rules",
        "corrupted",
        "delayed",
        "dropped",
        "exceptions",
        "requests",
        "unanswered",
    )

    def __init__(self, device: SimDevice, handler: Callable[[bytes], bytes]) -> None:
        self._handler = handler
        self._rng = random.Random(device.fault_seed)
        self._rules = [_Rule(f) for f in device.faults]
        self.requests = 0
        self.exceptions = 0
        self.unanswered = 0
        self.dropped = 0
        self.corrupted = 0
        self.delayed = 0

    def _strikes(self, rule: _Rule, how: object) -> bool:
        rule.count += 1
        return strikes(rule.count, how, self._rng)

    def __call__(self, pdu: bytes) -> Reply:
        self.requests += 1
        span = request_span(pdu)
        matching = [r for r in self._rules if r.matches(span)]
        for rule in matching:
            drop = rule.fault.drop_connection
            if drop is not None and self._strikes(rule, drop):
                self.dropped += 1
                return Reply(None, drop=True)
        for rule in matching:
            silent = rule.fault.no_answer
            if silent is not None and self._strikes(rule, silent):
                self.unanswered += 1
                return Reply(None)
        answer: bytes | None = None
        for rule in matching:
            code = rule.fault.exception
            if code is not None:
                answer = exception_response(pdu[0] if pdu else 0, code)
                break
        if answer is None:
            answer = self._handler(pdu)
        if answer[0] & 0x80:
            self.exceptions += 1
        delay = sum(r.fault.latency or 0.0 for r in matching)
        if delay > 0:
            self.delayed += 1
        corrupt = False
        for rule in matching:
            chance = rule.fault.corrupt_crc
            if chance is not None and self._strikes(rule, chance):
                corrupt = True
        if corrupt:
            self.corrupted += 1
        return Reply(answer, delay=delay, corrupt=corrupt)
