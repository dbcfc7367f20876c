"""From a frame's text to point entries: regex groups, separated fields, key=value pairs.

One :class:`MessageParser` per command (polled) or frame entry (stream), built once at start.
Every point yields exactly one entry: its value, or a bad entry whose reason says what was
wrong (``parse error: field 7 is missing``), so one unreadable field does not cost the others.
Numbers are converted through ``Decimal`` when scaled, so ``234`` with scale 0.1 is exactly
23.4 and never 23.400000000000002.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Final

from drivers.serial.config import (
    FieldsParse,
    KeyValueParse,
    MessageBase,
    RegexParse,
    SerialPoint,
)
from wire.model import PointEntry, Quality, Value, point_entry

_TRUE: Final = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE: Final = frozenset({"0", "false", "off", "no", "n", "f"})
#: Longest piece of a frame quoted in a reason (reasons are stored; keep them short).
_QUOTE: Final = 40


class ParseError(ValueError):
    """Why a raw text cannot become a point's value; the message goes into the reason."""


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE else text[:_QUOTE] + "…")


def _converter(point: SerialPoint) -> Callable[[str], Value]:
    kind = point.type
    if kind == "string":
        return lambda text: text
    if kind == "bool":
        words = point.words
        true = frozenset(w.strip().casefold() for w in words.true) if words else _TRUE
        false = frozenset(w.strip().casefold() for w in words.false) if words else _FALSE
        expected = (
            f"none of the words for true ({', '.join(words.true)}) or false "
            f"({', '.join(words.false)})"
            if words
            else "not true/false"
        )

        def to_bool(text: str) -> Value:
            word = text.strip().casefold()
            if word in true:
                return True
            if word in false:
                return False
            raise ParseError(f"{_quote(text)} is {expected}")

        return to_bool
    scaled = point.scale != 1.0 or point.offset != 0.0
    scale, offset = Decimal(repr(point.scale)), Decimal(repr(point.offset))

    def to_number(text: str) -> Value:
        word = text.strip()
        if not word:
            raise ParseError("empty")
        try:
            number = Decimal(word)
        except InvalidOperation:
            article = "an int" if kind == "int" else "a float"
            raise ParseError(f"{_quote(text)} is not {article}") from None
        if not number.is_finite():
            raise ParseError(f"{_quote(text)} is not a finite number")
        if kind == "int" and number != number.to_integral_value():
            raise ParseError(f"{_quote(text)} is not an int")
        if scaled:
            result = float(number * scale + offset)
            if not math.isfinite(result):
                raise ParseError(f"{_quote(text)} scaled is out of range")
            return result
        return int(number) if kind == "int" else float(number)

    return to_number


class MessageParser:
    """Turns one kind of frame's text into its points' entries."""

    def __init__(self, message: MessageBase) -> None:
        self.points = list(message.points)
        self._convert = [_converter(p) for p in self.points]
        parse = message.parse
        self._split: Callable[[str], Callable[[SerialPoint], str]]
        if isinstance(parse, RegexParse):
            pattern = re.compile(parse.pattern)
            self._split = lambda text: _regex(pattern, text)
        elif isinstance(parse, FieldsParse):
            sep, strip = parse.separator, parse.strip
            self._split = lambda text: _fields(text, sep, strip)
        else:
            assert isinstance(parse, KeyValueParse)
            pair_sep, kv_sep = parse.pair_separator, parse.separator
            self._split = lambda text: _pairs(text, pair_sep, kv_sep)

    def parse(self, text: str) -> tuple[list[PointEntry], int]:
        """Entries of every point, and how many of them could not be parsed."""
        try:
            lookup = self._split(text)
        except ParseError as exc:
            return self.fail(f"parse error: {exc}"), len(self.points)
        entries: list[PointEntry] = []
        errors = 0
        for point, convert in zip(self.points, self._convert, strict=True):
            try:
                value = convert(lookup(point))
            except ParseError as exc:
                errors += 1
                entries.append(
                    point_entry(
                        point.name, None, point.unit, Quality.BAD, f"parse error: {exc}"[:256]
                    )
                )
            else:
                entries.append(point_entry(point.name, value, point.unit))
        return entries, errors

    def fail(self, reason: str) -> list[PointEntry]:
        reason = reason[:256]
        return [point_entry(p.name, None, p.unit, Quality.BAD, reason) for p in self.points]


def _regex(pattern: re.Pattern[str], text: str) -> Callable[[SerialPoint], str]:
    match = pattern.search(text)
    if match is None:
        raise ParseError(f"the pattern does not match {_quote(text)}")

    def lookup(point: SerialPoint) -> str:
        value = match.group(point.group or point.name)
        if value is None:
            raise ParseError(f"group {point.group or point.name!r} did not take part in the match")
        return value

    return lookup


def _fields(text: str, separator: str, strip: bool) -> Callable[[SerialPoint], str]:
    fields = text.split(separator)
    if strip:
        fields = [f.strip() for f in fields]

    def lookup(point: SerialPoint) -> str:
        index = point.field
        assert index is not None  # the config requires it for parse type fields
        if index >= len(fields):
            raise ParseError(f"field {index} is missing (the frame has {len(fields)})")
        value = fields[index]
        if not value and point.type != "string":
            raise ParseError(f"field {index} is empty")
        return value

    return lookup


def _pairs(text: str, pair_separator: str | None, separator: str) -> Callable[[SerialPoint], str]:
    pairs: dict[str, str] = {}
    for item in text.split(pair_separator):
        key, sep, value = item.partition(separator)
        if sep:
            pairs[key.strip()] = value.strip()

    def lookup(point: SerialPoint) -> str:
        key = point.key or point.name
        if key not in pairs:
            raise ParseError(f"key {key!r} is missing")
        return pairs[key]

    return lookup
