"""Readings → InfluxDB line protocol, following the schema in ``docs/influx-schema.md``.

One line per reading::

    readings,agent=gw-01,asset=pump-1,device=meter-1,point=voltage,site=plant-a,unit=V \
quality="good",value=231.4 1732900000123456789

Tag keys and field keys are written sorted (InfluxDB's preferred order: it sorts them
anyway, and presorted keys skip that work). Numbers always become the float field ``value``
so that the field's type never changes between an integer and a float sample.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from wire.codec import group_readings
from wire.model import Group, PointEntry, Reading

#: A unit that line protocol cannot carry faithfully. InfluxDB 1.x keeps a backslash in a tag
#: value literally except before `,`, `=` or space, and a trailing one breaks the line; control
#: characters (a newline above all) end the line. Refusing such units is better than storing
#: something the agent did not send.
_BAD_UNIT = re.compile(r"[\\\x00-\x1f\x7f]")
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
#: Escapes of a string field value (reason, text).
STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


#: Where the message's ``seq`` is stored: only on the first reading of each group — one poll
#: of one device, one timestamp — (False), or on every reading (True). Once per group proves
#: the same (every poll, and so every message, is findable by its seq: tests/delivery_helpers.py)
#: at a fraction of the cost: an integer field on every reading cost InfluxDB 1.x 30–45 % more
#: CPU per point, and the ingester ~30 % of its points/s (bench/README.md).
SEQ_ON_EVERY_READING = False


class LineProtocolError(ValueError):
    """A reading that cannot be written as line protocol; the text says which and why."""


def group_lines(
    measurement: str, site: str, agent: str, groups: Iterable[Group], seq: int | None = None
) -> list[str]:
    """One line per reading of the groups (the ingester's hot path), as text: the caller
    joins a whole batch and encodes it once.

    ``measurement``, ``site``, ``agent`` and every id match ``wire.topics.ID_PATTERN``, and
    units ``wire.topics.UNIT_PATTERN`` (checked by the config and by the decoder), so only
    spaces, commas and ``=`` in units need escaping. Raises :class:`LineProtocolError` on the
    first unwritable reading, so a message is written whole or not at all.

    ``seq``, the message's sequence number, is stored as the integer field ``seq`` (see
    :data:`SEQ_ON_EVERY_READING`), so an operator (or a test) can tell which message a reading
    came from and prove that none is missing.
    """
    lines: list[str] = []
    append = lines.append
    site_tag = f",site={site}"
    for group in groups:
        head = f"{measurement},agent={agent},asset={group.asset},device={group.device},point="
        stamp = group.t
        seq_field = "" if seq is None else f",seq={seq}i"
        seq_rest = seq_field if SEQ_ON_EVERY_READING else ""
        for entry in group.points:
            unit = entry.get("u")
            unit_tag = "" if unit is None else _unit_tag(unit, group, entry)
            quality = entry.get("q")
            value: Any = entry.get("v")
            if quality is None and value.__class__ is float:
                # The common case in one step: a good numeric reading.
                append(
                    f'{head}{entry["p"]}{site_tag}{unit_tag} quality="good"{seq_field},'
                    f"value={value!r} {stamp}"
                )
                seq_field = seq_rest
                continue
            # Field keys in sorted order: quality, reason, seq, state, text, value.
            fields = f' quality="{quality or "good"}"'
            reason = entry.get("r")
            if reason is not None:
                fields += f',reason="{reason.translate(STRING_ESCAPES)}"'
            fields += seq_field
            seq_field = seq_rest
            kind = value.__class__
            if kind is float:
                fields += f",value={value!r}"
            elif kind is int:
                fields += f",value={_float_literal(value, group, entry)}"
            elif kind is bool:
                fields += ",state=true" if value else ",state=false"
            elif kind is str:
                fields += f',text="{value.translate(STRING_ESCAPES)}"'
            elif quality != "bad":  # the decoder guarantees this never happens
                raise LineProtocolError(f"{_where(group, entry)}: a {quality} reading has no value")
            append(f"{head}{entry['p']}{site_tag}{unit_tag}{fields} {stamp}")
    return lines


def _unit_tag(unit: str, group: Group, entry: PointEntry) -> str:
    try:
        return unit_tag(unit)
    except LineProtocolError as exc:
        raise LineProtocolError(f"{_where(group, entry)}: {exc}") from None


def reading_line(measurement: str, site: str, agent: str, reading: Reading) -> bytes:
    """One line (without the trailing newline) for one reading."""
    return group_lines(measurement, site, agent, group_readings([reading]))[0].encode()


def batch_lines(
    measurement: str, site: str, agent: str, readings: Iterable[Reading]
) -> list[bytes]:
    """Lines for every reading, in order (see :func:`group_lines`)."""
    lines = group_lines(measurement, site, agent, group_readings(readings))
    return [line.encode() for line in lines]


@functools.lru_cache(maxsize=4096)
def unit_tag(unit: str) -> str:
    """``,unit=<escaped unit>``; raises :class:`LineProtocolError` for a unit a tag cannot
    carry."""
    if _BAD_UNIT.search(unit):
        raise LineProtocolError(
            f"unit {unit!r} contains a backslash or a control character, which InfluxDB tags "
            "cannot carry"
        )
    return ",unit=" + unit.translate(_TAG_ESCAPES)


def _float_literal(value: int, group: Group, entry: PointEntry) -> str:
    # Always a float literal, never the `i` suffix: the field `value` must keep one type for
    # ever. Integers beyond 2**53 are rounded to the nearest float (documented).
    try:
        return repr(float(value))  # shortest text that round-trips, e.g. 5.0, 1e+16
    except OverflowError:
        raise LineProtocolError(
            f"{_where(group, entry)}: integer {value} is too large for a float field"
        ) from None


def _where(group: Group, entry: PointEntry) -> str:
    return f"{group.asset}/{group.device}/{entry.get('p')}"
