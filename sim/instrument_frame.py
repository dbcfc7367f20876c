"""Text frames of simulated serial instruments: templates, checksums and the bytes on the wire.

A template is a Python format string whose fields name a value (``{alt:.1f}``) or the emission
time (``{utc:%H%M%S.%2f}``, read from the rack's wall clock: :func:`epoch_ns`).
:func:`compile_template` checks it once, at config load time, and gives a :class:`Template`
that renders quickly. :func:`encode_frame` frames a rendered body with its checksum and
terminator exactly as ``sim/README.md`` ("Checksum framing") states.

Pure functions with no config import, so the config validator can use them (it renders every
template once with sample values) and the driver tests can rebuild expected frames.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from sim.rtu import crc16 as crc16_modbus

Checksum = Literal["none", "nmea", "sum8", "crc16-modbus", "crc16-ccitt"]
#: A placeholder's value: numbers from constants and waves, or a text constant.
Value = int | float | str

#: The placeholder for the emission time; no value may take this name.
UTC_FIELD: Final = "utc"
#: ``{utc}`` without a format: ISO 8601 with microseconds.
ISO_UTC: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

_FRACTION = re.compile(r"%(%|[1-6]?f)")


class TemplateError(ValueError):
    """A template that cannot be rendered; the message says why, for the config error."""


@dataclass(frozen=True, slots=True)
class _Part:
    literal: str
    #: The placeholder after the literal, or None (end of template).
    field: str | None
    spec: str


class Template:
    """A checked template; :meth:`render` fills in values and the time."""

    __slots__ = ("_parts", "names", "text")

    def __init__(self, text: str, parts: list[_Part]) -> None:
        self.text = text
        self._parts = parts
        #: The value names the template uses, in order of first use (``utc`` excluded).
        names = [p.field for p in parts if p.field is not None and p.field != UTC_FIELD]
        self.names: tuple[str, ...] = tuple(dict.fromkeys(names))

    def check(self, samples: Mapping[str, Value]) -> str:
        """Render once with ``samples`` (every name present), naming the placeholder whose
        format spec does not fit its value; returns the rendered text."""
        for part in self._parts:
            if part.field is None or part.field == UTC_FIELD:
                continue
            try:
                format(samples[part.field], part.spec)
            except (ValueError, TypeError) as exc:
                raise TemplateError(
                    f"placeholder {{{part.field}:{part.spec}}}: the format spec does not fit "
                    f"its value {samples[part.field]!r}: {exc}"
                ) from None
        try:
            return self.render(samples, 0)
        except ValueError as exc:  # a strftime format the platform refuses
            raise TemplateError(f"placeholder {{utc}}: {exc}") from None

    def render(self, values: Mapping[str, Value], time_ns: int) -> str:
        out: list[str] = []
        for part in self._parts:
            out.append(part.literal)
            if part.field is None:
                continue
            if part.field == UTC_FIELD:
                out.append(format_utc(time_ns, part.spec))
            else:
                out.append(format(values[part.field], part.spec))
        return "".join(out)


def compile_template(text: str) -> Template:
    """Parse ``text``; raises :class:`TemplateError` for what a template may not contain."""
    parts: list[_Part] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a single '{' or '}'
        raise TemplateError(f"{exc}; write a literal brace as {{{{ or }}}}") from exc
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append(_Part(literal, None, ""))
            continue
        if field == "" or field.isdigit():
            raise TemplateError(
                "placeholders need a value name, e.g. {temp:.1f}; {} is not allowed"
            )
        if not field.isidentifier():
            raise TemplateError(
                f"placeholder {{{field}}}: only a plain value name, without . or [ ], is allowed"
            )
        if conversion is not None:
            raise TemplateError(
                f"placeholder {{{field}!{conversion}}}: conversions are not supported; "
                "use a format spec after ':'"
            )
        spec = spec or ""
        if "{" in spec:
            raise TemplateError(f"placeholder {{{field}}}: nested placeholders are not supported")
        parts.append(_Part(literal, field, spec))
    return Template(text, parts)


#: What a wall clock may return: seconds since the epoch, or a timezone-aware datetime.
WallTime = float | datetime

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ns(moment: WallTime) -> int:
    """``moment`` as nanoseconds since the epoch, to the microsecond (what ``{utc}`` shows at
    most). A datetime is converted exactly; a naive one is refused: its zone is unknown."""
    if isinstance(moment, datetime):
        if moment.utcoffset() is None:
            raise ValueError(
                f"the wall clock returned a naive datetime ({moment.isoformat()}); return an "
                "aware one, e.g. datetime.now(UTC), or seconds since the epoch"
            )
        delta = moment - _EPOCH
        return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000
    # Whole microseconds: a float of today's epoch seconds carries no finer digits reliably.
    return round(moment * 1_000_000) * 1000


def format_utc(time_ns: int, spec: str) -> str:
    """``time_ns`` (ns since the epoch) in UTC through ``strftime(spec)``: ``%f`` is the 6
    microsecond digits, ``%1f``..``%6f`` its first 1..6 digits; an empty spec is ISO 8601."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    micro = f"{rest // 1000:06d}"

    def fraction(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "%":
            return "%%"
        return micro[: int(token[0])] if len(token) == 2 else micro

    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime(_FRACTION.sub(fraction, spec or ISO_UTC))


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final XOR."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def checksum_text(kind: Checksum, body: bytes, *, corrupt: bool = False) -> str:
    """The checksum of ``body`` as upper-case hex (2 digits, 4 for the CRCs); "" for none.

    A corrupt checksum is the right one with every bit inverted: never right by chance.
    """
    if kind == "none":
        return ""
    if kind in ("nmea", "sum8"):
        value = 0
        if kind == "nmea":
            for byte in body:
                value ^= byte
        else:
            value = sum(body) & 0xFF
        return f"{value ^ (0xFF if corrupt else 0):02X}"
    value = crc16_modbus(body) if kind == "crc16-modbus" else crc16_ccitt(body)
    return f"{value ^ (0xFFFF if corrupt else 0):04X}"


def encode_frame(kind: Checksum, body: bytes, terminator: bytes, *, corrupt: bool = False) -> bytes:
    """The bytes on the wire for a rendered and encoded ``body``."""
    if kind == "none":
        return body + terminator
    check = checksum_text(kind, body, corrupt=corrupt).encode("ascii")
    start = b"$" if kind == "nmea" else b""
    return start + body + b"*" + check + terminator
