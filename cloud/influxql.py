"""InfluxQL quoting and duration helpers shared by the v1 writer and the query tool."""

from __future__ import annotations

import re

#: An InfluxQL duration literal such as ``10s``, ``5m`` or ``1h`` (single unit, as in GROUP BY).
DURATION_RE = re.compile(r"^[1-9][0-9]*(ns|u|µ|ms|s|m|h|d|w)$")

_NS_PER_UNIT = {
    "ns": 1,
    "u": 1_000,
    "µ": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
    "w": 7 * 86_400 * 1_000_000_000,
}


def quote_ident(name: str) -> str:
    """A double-quoted identifier: safe for any database, measurement, tag or field name."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(text: str) -> str:
    """A single-quoted string literal, e.g. a tag value in a WHERE clause."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def duration_ns(text: str) -> int:
    """Nanoseconds of a duration literal; raise ValueError naming the accepted form."""
    match = DURATION_RE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number and one unit, e.g. 10s, 5m, 1h, 1d"
        )
    unit = match.group(1)
    return int(text[: -len(unit)]) * _NS_PER_UNIT[unit]
