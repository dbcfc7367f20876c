"""Config models of the serial driver: a bus is one serial port (or a TCP serial server), a
device one instrument on it. ``drivers/serial/README.md`` explains every field with examples.

Text fields that stand for bytes on the wire (delimiters, markers, commands) are written as
YAML double-quoted strings, so ``"\\r\\n"`` and ``"\\x02"`` are the control characters; they are
turned into bytes with the device's ``encoding`` (latin-1 for markers: one character = one
byte, whatever the encoding).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from config.base import StrictModel
from config.device import (
    Baudrate,
    BusBase,
    ConnectTimeout,
    DeviceBase,
    PointBase,
    SerialDataBits,
    SerialParity,
    StopBits,
    TcpPort,
    host_port,
)
from drivers.serial.checksum import ChecksumFormat, ChecksumName

_SERIAL_FIELDS: Final[tuple[str, ...]] = (
    "serial_port",
    "baudrate",
    "parity",
    "stopbits",
    "bytesize",
    "rtscts",
    "xonxoff",
)
_TCP_FIELDS: Final[tuple[str, ...]] = ("host", "port", "connect_timeout")


class SerialBus(BusBase):
    driver: Literal["serial"] = Field(description="`serial` for this driver.")
    transport: Literal["serial", "tcp"] = Field(
        default="serial",
        description=(
            "`serial`: a local port (`serial_port`); `tcp`: a serial device server that passes "
            "the line through a raw TCP socket (`host`, `port`)."
        ),
    )
    serial_port: str | None = Field(
        default=None,
        description=(
            "Serial device path, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link; "
            "opened again by this path after every loss, so a re-pointed symlink is followed."
        ),
    )
    baudrate: Baudrate = Field(default=9600, description="Line speed in bit/s.")
    parity: SerialParity = Field(
        default="N", description="Parity: `N` none, `E` even, `O` odd, `M` mark, `S` space."
    )
    stopbits: StopBits = Field(default=1, description="Stop bits: 1 or 2.")
    bytesize: SerialDataBits = Field(default=8, description="Data bits per character.")
    rtscts: bool = Field(default=False, description="Hardware flow control (RTS/CTS).")
    xonxoff: bool = Field(default=False, description="Software flow control (XON/XOFF).")
    host: str | None = Field(
        default=None, description="Host name or address of the serial device server (tcp)."
    )
    port: TcpPort | None = Field(
        default=None, description="TCP port of the serial device server (tcp)."
    )
    connect_timeout: ConnectTimeout = Field(
        default=3.0, description="Seconds to wait for the TCP connection (tcp)."
    )
    timeout: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description=(
            "Polled devices: seconds to wait for the reply to one command (a device may set "
            "its own), including its time on the wire."
        ),
    )

    @model_validator(mode="after")
    def _fields_fit_transport(self) -> SerialBus:
        given = self.model_fields_set
        if self.transport == "serial":
            if self.serial_port is None or not self.serial_port.strip():
                raise ValueError(
                    "@serial_port: a serial bus needs the device, e.g. serial_port: /dev/ttyUSB0 "
                    "(or transport: tcp with host and port for a serial device server)"
                )
            wrong = [name for name in _TCP_FIELDS if name in given]
            if wrong:
                raise ValueError(
                    f"@{wrong[0]}: a serial bus has no {wrong[0]}; for a serial device server "
                    "use transport: tcp"
                )
        else:
            if self.host is None or self.port is None:
                missing = "host" if self.host is None else "port"
                raise ValueError(
                    f"@{missing}: transport tcp needs the serial device server's host and port"
                )
            wrong = [name for name in _SERIAL_FIELDS if name in given]
            if wrong:
                raise ValueError(
                    f"@{wrong[0]}: a tcp bus has no {wrong[0]}; line settings are made on "
                    "the serial device server itself"
                )
        return self

    @property
    def endpoint(self) -> str:
        if self.transport == "serial":
            return str(self.serial_port)
        return host_port(str(self.host), self.port)


# -- framing ---------------------------------------------------------------------------------


class LineFraming(StrictModel):
    type: Literal["line"] = Field(description="Frames are lines ended by `delimiter`.")
    delimiter: str = Field(
        default="\n",
        min_length=1,
        description=(
            'What ends a frame, default `"\\n"`; CR and LF around a line are stripped, so '
            '`\\n` fits devices ending lines with CR LF too. `"\\r"` for CR-only devices.'
        ),
    )
    start: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Optional start marker, e.g. `$` for NMEA: a line counts from its last start marker; "
            "bytes before it and lines without one are noise, not frames."
        ),
    )
    max_length: int = Field(
        default=4096, ge=1, le=1 << 20, description="Longest frame in bytes; longer is noise."
    )


class FixedFraming(StrictModel):
    type: Literal["fixed"] = Field(description="Frames of a fixed number of bytes.")
    length: int = Field(ge=1, le=1 << 16, description="Bytes per frame, start marker included.")
    start: str | None = Field(
        default=None,
        min_length=1,
        description="Optional start marker the frame begins with, to find frames after noise.",
    )

    @model_validator(mode="after")
    def _longer_than_start(self) -> FixedFraming:
        if self.start is not None and self.length <= len(self.start):
            raise ValueError("@length: must be longer than the start marker")
        return self


class MarkerFraming(StrictModel):
    type: Literal["markers"] = Field(description="Frames between a start and an end marker.")
    start: str = Field(min_length=1, description='Start marker, e.g. `"\\x02"` (STX).')
    end: str = Field(min_length=1, description='End marker, e.g. `"\\x03"` (ETX).')
    max_length: int = Field(
        default=4096, ge=1, le=1 << 20, description="Longest frame in bytes; longer is noise."
    )


class RegexFraming(StrictModel):
    type: Literal["regex"] = Field(description="Frames are matches of a regular expression.")
    pattern: str = Field(
        description=(
            "Python regular expression over the received bytes (latin-1: one character per "
            "byte). The frame is its group `frame` if it has one, else the whole match. It must "
            "end with something that ends a frame, or a frame arrived in part matches."
        )
    )
    max_length: int = Field(
        default=4096, ge=1, le=1 << 20, description="Bytes kept while no match is found."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _compile(value)
        return value


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


def _tag_by_type(tags: dict[str, str]) -> Any:
    def tag(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return tags.get(kind) if isinstance(kind, str) else None

    return tag


# Tags are capitalised so the loader leaves them out of error paths.
Framing = Annotated[
    Annotated[LineFraming, Tag("Line")]
    | Annotated[FixedFraming, Tag("Fixed")]
    | Annotated[MarkerFraming, Tag("Markers")]
    | Annotated[RegexFraming, Tag("Regex")],
    Discriminator(
        _tag_by_type({"line": "Line", "fixed": "Fixed", "markers": "Markers", "regex": "Regex"}),
        custom_error_type="framing_type",
        custom_error_message="`type` must be one of: line, fixed, markers, regex",
    ),
]

# -- parsing ---------------------------------------------------------------------------------


class RegexParse(StrictModel):
    type: Literal["regex"] = Field(description="Points are named groups of a regular expression.")
    pattern: str = Field(
        description=(
            "Python regular expression searched in the frame's text; each point reads the "
            "named group `(?P<name>...)` given by its `group` (default: the point's name)."
        )
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if not _compile(value).groupindex:
            raise ValueError("the pattern has no named group (?P<name>...) for points to read")
        return value


class FieldsParse(StrictModel):
    type: Literal["fields"] = Field(description="Points are fields of a separated list.")
    separator: str = Field(
        default=",", min_length=1, description="What separates the fields, default `,`."
    )
    strip: bool = Field(default=True, description="Strip spaces around every field.")


class KeyValueParse(StrictModel):
    type: Literal["keyvalue"] = Field(description="Points are values of `key=value` pairs.")
    pair_separator: str | None = Field(
        default=None,
        min_length=1,
        description="What separates the pairs, e.g. `;`; default: any whitespace.",
    )
    separator: str = Field(
        default="=", min_length=1, description="What separates a key from its value, default `=`."
    )


Parse = Annotated[
    Annotated[RegexParse, Tag("Regex")]
    | Annotated[FieldsParse, Tag("Fields")]
    | Annotated[KeyValueParse, Tag("Keyvalue")],
    Discriminator(
        _tag_by_type({"regex": "Regex", "fields": "Fields", "keyvalue": "Keyvalue"}),
        custom_error_type="parse_type",
        custom_error_message="`type` must be one of: regex, fields, keyvalue",
    ),
]

PointType = Literal["float", "int", "bool", "string"]


class BoolWords(StrictModel):
    """The words a device prints for a bool point's two states, e.g. NMEA status A / V."""

    true: list[str] = Field(
        min_length=1, description='Words read as true, e.g. `[A, "ON"]`; any case.'
    )
    false: list[str] = Field(
        min_length=1, description='Words read as false, e.g. `[V, "OFF"]`; any case.'
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # YAML reads the unquoted keys `true:` / `false:` as booleans: take them as the names.
        named = {_STATE_KEYS.get(k, k) if isinstance(k, bool) else k: v for k, v in data.items()}
        for state, words in named.items():
            if words == [] and state in ("true", "false"):
                example = "[A]" if state == "true" else "[V]"
                raise ValueError(f"@{state}: give at least one word, e.g. {state}: {example}")
            for i, word in enumerate(words if isinstance(words, list) else []):
                if isinstance(word, bool):
                    raise ValueError(
                        f"@{state}[{i}]: YAML reads an unquoted ON, OFF, YES, NO, TRUE or "
                        f'FALSE as a boolean, not as the word; quote it, e.g. "ON"'
                    )
        return named

    @model_validator(mode="after")
    def _distinct(self) -> BoolWords:
        true = {w.strip().casefold() for w in self.true}
        for i, word in enumerate(self.false):
            if word.strip().casefold() in true:
                raise ValueError(f"@false[{i}]: {word!r} is also a word for true")
        for state, words in (("true", self.true), ("false", self.false)):
            for i, word in enumerate(words):
                if not word.strip():
                    raise ValueError(f"@{state}[{i}]: a word cannot be empty")
        return self


_STATE_KEYS: Final = {True: "true", False: "false"}


class SerialPoint(PointBase):
    type: PointType = Field(
        default="float",
        description=(
            "`float`, `int`, `bool` (1/0, true/false, on/off, yes/no, t/f, y/n, any case, or "
            "the point's `words`) or `string`."
        ),
    )
    field: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Parse `fields`: index of the field, 0 = the first (for NMEA, the talker and "
            "sentence id, e.g. `GPGGA`)."
        ),
    )
    group: str | None = Field(
        default=None, description="Parse `regex`: the named group to read; default the name."
    )
    key: str | None = Field(
        default=None, description="Parse `keyvalue`: the key to read; default the point's name."
    )
    scale: float = Field(default=1.0, description="value = raw × scale + offset (numbers only).")
    offset: float = Field(default=0.0, description="value = raw × scale + offset (numbers only).")
    words: BoolWords | None = Field(
        default=None,
        description=(
            "Bool points: the device's own words for the two states, e.g. "
            "`{true: [A], false: [V]}` (NMEA status), matched in any case; any other word "
            "is a bad reading (`parse error`). Without it: 1/0, true/false, on/off, yes/no, t/f, "
            "y/n."
        ),
    )

    @model_validator(mode="after")
    def _scaled_numbers_only(self) -> SerialPoint:
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"@scale: a {self.type} point cannot have scale or offset")
        if self.words is not None and self.type != "bool":
            raise ValueError(
                f"@words: only bool points have words; this one is {self.type} (set type: bool)"
            )
        return self


class MessageBase(StrictModel):
    parse: Parse = Field(description="How the frame's text becomes the points' raw values.")
    points: list[SerialPoint] = Field(min_length=1, description="Points read from the frame.")

    @model_validator(mode="after")
    def _points_fit_parse(self) -> Any:
        parse = self.parse
        for i, point in enumerate(self.points):
            given = {"field": point.field, "group": point.group, "key": point.key}
            own = {"fields": "field", "regex": "group", "keyvalue": "key"}[parse.type]
            for name, value in given.items():
                if name != own and value is not None:
                    raise ValueError(
                        f"@points[{i}].{name}: parse type {parse.type} reads points by `{own}`, "
                        f"not `{name}`"
                    )
            if isinstance(parse, FieldsParse) and point.field is None:
                raise ValueError(
                    f"@points[{i}].field: parse type fields needs the field index of each point"
                )
            if isinstance(parse, RegexParse):
                group = point.group or point.name
                groups = _compile(parse.pattern).groupindex
                if group not in groups:
                    raise ValueError(
                        f"@points[{i}].{'group' if point.group else 'name'}: the pattern has no "
                        f"group named {group!r}; its groups: {', '.join(groups)}"
                    )
        return self


class Command(MessageBase):
    send: str = Field(
        min_length=1,
        description=(
            "The command sent each cycle, without its terminator (see `command_terminator`), "
            "e.g. `MEAS?`."
        ),
    )
    reply_match: str | None = Field(
        default=None,
        description=(
            "Regular expression the reply's text must contain, e.g. `^T=`; frames that do not "
            "(an adapter echoing the command, a late reply to another device) are skipped "
            "while waiting. Default: the first frame after the command is its reply."
        ),
    )

    @field_validator("reply_match")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value


class StreamFrame(MessageBase):
    match: str | None = Field(
        default=None,
        description=(
            "Regular expression a frame's text must contain to be read by this entry, e.g. "
            "`^GPGGA,`; default: every frame. Frames no entry matches are counted and skipped."
        ),
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value


class SerialDevice(DeviceBase):
    interval: float = Field(
        default=1.0,
        gt=0,
        le=86_400,
        description=(
            "Polled: seconds between two cycles (all commands), measured without drift. "
            "Stream: seconds between two bad reports while the device is silent or its port "
            "is gone; 3 × interval is the default `stale_after`."
        ),
    )
    mode: Literal["stream", "polled"] = Field(
        description=(
            "`stream`: the device sends frames by itself (`frames`); `polled`: each cycle the "
            "agent sends `commands` and reads one reply frame to each."
        )
    )
    framing: Framing = Field(
        default_factory=lambda: LineFraming(type="line"),
        description="How frames are cut out of the byte stream; default lines ended by LF.",
    )
    encoding: str = Field(
        default="ascii",
        description="Text encoding of frames and commands, e.g. `ascii`, `latin-1`, `utf-8`.",
    )
    checksum: ChecksumName = Field(
        default="none",
        description=(
            "Checksum every frame carries and that is verified: `none`, `nmea` (XOR), `sum8`, "
            "`crc16-modbus`, `crc16-ccitt` (CCITT-FALSE)."
        ),
    )
    checksum_separator: str = Field(
        default="*",
        description="What stands between the body and its checksum, default `*`; may be empty.",
    )
    checksum_format: ChecksumFormat = Field(
        default="hex",
        description=(
            "`hex`: upper- or lower-case hex digits (default); `binary-be` / `binary-le`: raw "
            "bytes, high or low byte first."
        ),
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=600,
        description="Polled: seconds to wait for each reply; default the bus's timeout.",
    )
    command_terminator: str = Field(
        default="\r\n", description="Polled: appended to every command, default CR LF."
    )
    stale_after: float | None = Field(
        default=None,
        gt=0,
        le=86_400,
        description=(
            "Stream: seconds without a frame after which the points are reported bad with "
            "reason `timeout`, then once per `interval` while silence lasts; default "
            "3 × interval."
        ),
    )
    commands: list[Command] | None = Field(
        default=None, description="Polled: the commands of one cycle, in order."
    )
    frames: list[StreamFrame] | None = Field(
        default=None, description="Stream: the kinds of frame the device sends and their points."
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown text encoding; use e.g. ascii, latin-1 or utf-8") from None
        return value

    @model_validator(mode="after")
    def _fits_mode(self) -> SerialDevice:
        given = self.model_fields_set
        if self.mode == "polled":
            if not self.commands:
                raise ValueError(
                    "@commands: a polled device needs at least one command, e.g. "
                    "- {send: 'MEAS?', parse: {type: fields}, points: [...]}"
                )
            for name in ("frames", "stale_after"):
                if name in given:
                    raise ValueError(
                        f"@{name}: a polled device has no {name} (it is asked with `commands`); "
                        "for a device that sends by itself use mode: stream"
                    )
        else:
            if not self.frames:
                raise ValueError(
                    "@frames: a stream device needs at least one frame entry with its parse "
                    "and points"
                )
            for name in ("commands", "timeout", "command_terminator"):
                if name in given:
                    raise ValueError(
                        f"@{name}: a stream device sends by itself and has no {name}; "
                        "for request/reply use mode: polled"
                    )
        for name in ("checksum_separator", "checksum_format"):
            if self.checksum == "none" and name in given:
                raise ValueError(
                    f"@{name}: only used with a checksum; set `checksum` (nmea, sum8, "
                    "crc16-modbus, crc16-ccitt) or remove it"
                )
        self._unique_point_names()
        self._commands_encodable()
        return self

    def _commands_encodable(self) -> None:
        for i, command in enumerate(self.commands or []):
            try:
                (command.send + self.command_terminator).encode(self.encoding)
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"@commands[{i}].send: {command.send[exc.start : exc.end]!r} cannot be "
                    f"written in {self.encoding}; change the text or the device's encoding"
                ) from None

    def _unique_point_names(self) -> None:
        owner = "commands" if self.mode == "polled" else "frames"
        seen: dict[str, str] = {}
        for i, message in enumerate(self.messages):
            for j, point in enumerate(message.points):
                here = f"{owner}[{i}].points[{j}]"
                if point.name in seen:
                    raise ValueError(
                        f"@{here}.name: duplicate point name {point.name!r} (first at "
                        f"{seen[point.name]}); point names must be unique within a device"
                    )
                seen[point.name] = here

    @property
    def messages(self) -> Sequence[MessageBase]:
        """The commands (polled) or frame entries (stream), whichever the mode uses."""
        if self.mode == "polled":
            return self.commands or []
        return self.frames or []

    @property
    def effective_stale_after(self) -> float:
        return self.stale_after if self.stale_after is not None else 3 * self.interval
