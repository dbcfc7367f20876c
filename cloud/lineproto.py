"""Readings → InfluxDB line protocol, following the schema in ``docs/influx-schema.md``.

One line per reading::

    readings,agent=gw-01,asset=pump-1,device=meter-1,point=voltage,site=plant-a,unit=V \
quality="good",value=231.4 1732900000123456789

Tag keys and field keys are written sorted (InfluxDB's preferred order: it sorts them
anyway, and presorted keys skip that work). Numbers always become the float field ``value``
so that the field's type never changes between an integer and a float sample.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from wire.model import Quality, Reading

#: A unit that line protocol cannot carry faithfully. InfluxDB 1.x keeps a backslash in a tag
#: value literally except before `,`, `=` or space, and a trailing one breaks the line; control
#: characters (a newline above all) end the line. Refusing such units is better than storing
#: something the agent did not send.
_BAD_UNIT = re.compile(r"[\\\x00-\x1f\x7f]")
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


class LineProtocolError(ValueError):
    """A reading that cannot be written as line protocol; the text says which and why."""


def reading_line(measurement: str, site: str, agent: str, reading: Reading) -> bytes:
    """One line (without the trailing newline) for one reading.

    ``measurement``, ``site``, ``agent`` and the reading's ids match ``wire.topics.ID_PATTERN``
    (checked by the config and the decoder), so only the unit needs escaping.
    """
    tags = (
        f"agent={agent},asset={reading.asset},device={reading.device},"
        f"point={reading.point},site={site}"
    )
    if reading.unit is not None:
        if _BAD_UNIT.search(reading.unit):
            raise LineProtocolError(
                f"{_where(reading)}: unit {reading.unit!r} contains a backslash or a control "
                "character, which InfluxDB tags cannot carry"
            )
        tags += f",unit={reading.unit.translate(_TAG_ESCAPES)}"
    # Field keys in sorted order: quality, reason, state, text, value.
    fields = f'quality="{reading.quality.value}"'
    if reading.reason is not None:
        fields += f',reason="{reading.reason.translate(_STRING_ESCAPES)}"'
    value = reading.value
    if isinstance(value, bool):  # before int: bool is a subclass of int
        fields += f",state={'true' if value else 'false'}"
    elif isinstance(value, str):
        fields += f',text="{value.translate(_STRING_ESCAPES)}"'
    elif isinstance(value, int | float):
        fields += f",value={_float_literal(value, reading)}"
    elif reading.quality is not Quality.BAD:  # the decoder guarantees this never happens
        raise LineProtocolError(f"{_where(reading)}: a {reading.quality} reading has no value")
    return f"{measurement},{tags} {fields} {reading.ts_ns}".encode()


def batch_lines(
    measurement: str, site: str, agent: str, readings: Iterable[Reading]
) -> list[bytes]:
    """Lines for every reading of one message; raises :class:`LineProtocolError` on the first
    unwritable one, so a message is written whole or not at all."""
    return [reading_line(measurement, site, agent, r) for r in readings]


def _float_literal(value: int | float, reading: Reading) -> str:
    # Always a float literal, never the `i` suffix: the field `value` must keep one type for
    # ever. Integers beyond 2**53 are rounded to the nearest float (documented).
    try:
        number = float(value)
    except OverflowError:
        raise LineProtocolError(
            f"{_where(reading)}: integer {value} is too large for a float field"
        ) from None
    if not math.isfinite(number):  # the decoder refuses these; a guard, not a path
        raise LineProtocolError(f"{_where(reading)}: {number} is not a finite number")
    text = repr(number)  # shortest text that round-trips, e.g. 231.4, 5.0, 1e+16
    return text


def _where(reading: Reading) -> str:
    return f"{reading.asset}/{reading.device}/{reading.point}"
