"""The simulator's config file (``kind: sim``): which devices to serve and what they hold.

A register holds either a constant or a waveform evaluated at request time. Validation
catches what would otherwise surface as a confusing answer on the wire: overlapping
registers, values that run past address 65535, two devices answering the same unit id
on one port, and values that cannot be encoded in their register type.

A device is served over Modbus TCP, RTU over TCP, or RTU/ASCII on a pseudo-terminal (a real
tty the agent opens like a serial port); devices naming the same ``gateway`` share one
listener or one serial line. ``faults`` inject latency, silence, exception codes, dropped
connections and corrupted checksums, per device or per address range, from a seeded RNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag, model_validator

from config.base import Ident, StrictModel
from config.device import (
    Baudrate,
    ModbusDataBits,
    ModbusLineTiming,
    ModbusParity,
    SerialDataBits,
    SerialParity,
    StopBits,
    UartStopBits,
    character_bits,
)
from config.errors import ConfigError, Problem
from config.loader import read_document, substitute_env, validate
from drivers.modbus.codec import CodecError, RegisterType, WordOrder, encode, register_count

#: Register types whose raw value is an integer (rounded and clamped, or wrapped by a counter).
INTEGER_TYPES = frozenset(
    {
        RegisterType.INT16,
        RegisterType.UINT16,
        RegisterType.INT32,
        RegisterType.UINT32,
        RegisterType.INT64,
        RegisterType.UINT64,
    }
)


def _finite(value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


#: A number as written in the file. ``int`` is kept as ``int`` so 64-bit values stay exact.
Number = Annotated[int | float, AfterValidator(_finite)]
#: A finite float parameter of a waveform.
Real = Annotated[float, Field(allow_inf_nan=False)]


class ConstantWave(StrictModel):
    """A fixed value, the long form of ``value: 42``."""

    wave: Literal["constant"] = Field(description="`constant`: the value never changes.")
    value: Number | str = Field(description="The value: a number, or text for a string register.")


class SineWave(StrictModel):
    """``offset + amplitude · sin(2π · t / period + phase)``."""

    wave: Literal["sine"] = Field(description="`sine`: a sine around `offset`.")
    amplitude: Real = Field(description="Peak deviation from `offset`.")
    period: Real = Field(gt=0, description="Seconds for one full cycle.")
    offset: Real = Field(default=0.0, description="Centre value of the sine.")
    phase: Real = Field(
        default=0.0,
        description="Phase shift in degrees, so several devices need not peak together.",
    )


class RampWave(StrictModel):
    """``start + slope · t``, optionally restarting at ``start`` whenever it reaches ``max``."""

    wave: Literal["ramp"] = Field(description="`ramp`: a value rising (or falling) linearly.")
    start: Real = Field(default=0.0, description="Value at time 0.")
    slope: Real = Field(description="Change per second; negative for a falling ramp.")
    max: Real | None = Field(
        default=None,
        description=(
            "If set, the ramp restarts at `start` on reaching this value (a saw-tooth); "
            "needs a positive slope and max > start."
        ),
    )

    @model_validator(mode="after")
    def _wrap_reachable(self) -> RampWave:
        if self.max is not None:
            if self.slope <= 0:
                raise ValueError("@slope: a ramp with `max` needs a positive slope to reach it")
            if self.max <= self.start:
                raise ValueError(f"@max: must be greater than start ({self.start})")
        return self


class CounterWave(StrictModel):
    """An integer adding ``step`` every ``interval`` seconds; wraps past the type's maximum."""

    wave: Literal["counter"] = Field(description="`counter`: a monotonic integer counter.")
    start: int = Field(default=0, description="Value at time 0.")
    step: int = Field(default=1, ge=1, description="Added every `interval` seconds.")
    interval: Real = Field(default=1.0, gt=0, description="Seconds between two steps.")


class RandomWalkWave(StrictModel):
    """A bounded random walk, the same sequence for the same seed."""

    wave: Literal["random_walk"] = Field(description="`random_walk`: a bounded random walk.")
    start: Real = Field(description="Value at time 0.")
    step: Real = Field(gt=0, description="Largest change per move (uniform in ±step).")
    min: Real = Field(description="Lower bound; the walk never goes below it.")
    max: Real = Field(description="Upper bound; the walk never goes above it.")
    seed: int = Field(default=0, description="Seed of the generator, for reproducible runs.")
    interval: Real = Field(default=1.0, gt=0, description="Seconds between two moves.")

    @model_validator(mode="after")
    def _bounds(self) -> RandomWalkWave:
        if self.min > self.max:
            raise ValueError(f"@min: must not exceed max ({self.max})")
        if not self.min <= self.start <= self.max:
            raise ValueError(f"@start: must lie within min..max ({self.min}..{self.max})")
        return self


Wave = ConstantWave | SineWave | RampWave | CounterWave | RandomWalkWave

_WAVE_TAGS = {
    "constant": "Constant",
    "sine": "Sine",
    "ramp": "Ramp",
    "counter": "Counter",
    "random_walk": "RandomWalk",
}


def _value_kind(value: Any) -> str | None:
    """Pick the one member of the value union to validate against.

    Without this pydantic tries every member and reports each failure, so one typo in a
    waveform would produce five errors at paths nobody wrote. Tags are capitalised because
    the loader drops capitalised union tags from error paths.
    """
    if isinstance(value, dict):
        wave = value.get("wave")
        return _WAVE_TAGS.get(wave) if isinstance(wave, str) else None
    if isinstance(value, BaseModel):
        wave = getattr(value, "wave", None)
        return _WAVE_TAGS.get(wave) if isinstance(wave, str) else None
    if isinstance(value, bool):
        return "Bool"  # only a bool register takes it; for the others it is an error
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "Text"
    return None


#: The waveforms, tagged as :func:`_value_kind` names them; registers and instrument
#: placeholders take the same ones.
_TaggedWave = (
    Annotated[ConstantWave, Tag("Constant")]
    | Annotated[SineWave, Tag("Sine")]
    | Annotated[RampWave, Tag("Ramp")]
    | Annotated[CounterWave, Tag("Counter")]
    | Annotated[RandomWalkWave, Tag("RandomWalk")]
)
_VALUE_EXPECTED = (
    f"expected a number, a text, or a waveform with `wave:` one of {', '.join(_WAVE_TAGS)}"
)

RegisterValue = Annotated[
    Annotated[Number, Tag("Number")]
    | Annotated[bool, Tag("Bool")]
    | Annotated[str, Tag("Text")]
    | _TaggedWave,
    Discriminator(_value_kind, custom_error_type="sim_value", custom_error_message=_VALUE_EXPECTED),
]


SimTable = Literal["holding", "input", "coil", "discrete"]
_BIT_TABLES = ("coil", "discrete")


class SimRegister(StrictModel):
    """One value in a device's register map, occupying one or more consecutive registers
    (or, in the coil and discrete tables, one bit)."""

    table: SimTable = Field(
        default="holding",
        description=(
            "Table: `holding` (read by FC3, written by FC6/FC16), `input` (FC4), `coil` (FC1, "
            "written by FC5/FC15) or `discrete` (FC2). Coils and discrete inputs are `bool`."
        ),
    )
    address: int = Field(
        ge=0, le=65535, description="Protocol address (0-based) of the first register."
    )
    type: RegisterType = Field(description="How the value is encoded into registers.")
    order: WordOrder = Field(default=WordOrder.ABCD, description="Word/byte order of the value.")
    length: int | None = Field(
        default=None, ge=1, le=125, description="Registers a `string` occupies (strings only)."
    )
    scale: Real = Field(
        default=1.0,
        description=(
            "The register holds round((value - offset) / scale), so an agent configured with "
            "the same scale and offset reads back `value`."
        ),
    )
    offset: Real = Field(default=0.0, description="See `scale`.")
    value: RegisterValue = Field(
        description=(
            "A constant (number, true/false for a bool, or text for a string) or a waveform "
            "`{wave: ...}`; a bool follows a waveform as `value > 0` (a counter: its lowest bit)."
        )
    )

    @property
    def count(self) -> int:
        """Registers the value occupies."""
        return register_count(self.type, self.length)

    @property
    def end(self) -> int:
        """Last address occupied (inclusive)."""
        return self.address + self.count - 1

    def span(self) -> str:
        return f"{self.table} {self.address}..{self.end}"

    @model_validator(mode="after")
    def _consistent(self) -> SimRegister:
        kind = self.type
        value = self.value
        constant = value.value if isinstance(value, ConstantWave) else value
        if kind is RegisterType.BOOL or self.table in _BIT_TABLES:
            self._check_bool()
            return self
        if isinstance(constant, bool):
            article = "an" if kind.value.startswith(("int", "uint")) else "a"
            raise ValueError(
                f"@value: true/false is for bool registers (table coil or discrete); "
                f"{article} {kind.value} register needs a number (got {constant})"
            )
        if kind is RegisterType.STRING:
            if self.length is None:
                raise ValueError(
                    "@length: a string register needs `length` (registers it occupies)"
                )
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("@scale: a string register cannot have scale or offset")
        elif self.length is not None:
            raise ValueError(
                f"@length: only string registers have a length; {kind.value} has a fixed size"
            )
        if self.scale == 0:
            raise ValueError("@scale: must not be 0")
        if self.address + self.count > 65536:
            raise ValueError(
                f"@address: {kind.value} at {self.address} needs {self.count} registers and "
                "runs past the last address (65535)"
            )
        if kind is RegisterType.STRING:
            if not isinstance(constant, str):
                raise ValueError("@value: a string register needs a constant text value")
            try:
                encode(kind, self.order, constant, self.length)
            except (CodecError, UnicodeEncodeError) as exc:
                raise ValueError(f"@value: {_codec_reason(exc)}") from exc
        elif isinstance(constant, str):
            article = "an" if kind.value.startswith("int") else "a"
            raise ValueError(f"@value: {article} {kind.value} register needs a number, not text")
        elif isinstance(value, CounterWave) and kind not in INTEGER_TYPES:
            raise ValueError(f"@value: a counter needs an integer register type, not {kind.value}")
        return self

    def _check_bool(self) -> None:
        if self.table not in _BIT_TABLES:
            raise ValueError(
                f"@type: bool registers are coils or discrete inputs; use table coil or "
                f"discrete (a {self.table} register holds 16 bits: use uint16)"
            )
        if self.type is not RegisterType.BOOL:
            raise ValueError(
                f"@type: a {self.table} holds one bit: type bool, not {self.type.value}"
            )
        if self.length is not None:
            raise ValueError("@length: only string registers have a length; bool is one bit")
        if self.scale != 1.0 or self.offset != 0.0:
            raise ValueError("@scale: a bool register cannot have scale or offset")
        value = self.value
        constant = value.value if isinstance(value, ConstantWave) else value
        if isinstance(constant, str):
            raise ValueError("@value: a bool register needs true or false, not text")
        if isinstance(constant, int | float) and constant not in (0, 1):
            raise ValueError(
                f"@value: a bool register needs true or false (or 1/0), not {constant}"
            )


def _codec_reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeEncodeError):
        return "text must be Latin-1 (one byte per character)"
    return str(exc)


SimTransport = Literal["tcp", "rtu-over-tcp", "rtu", "ascii"]
SERIAL_TRANSPORTS = frozenset({"rtu", "ascii"})
#: Transports whose frames carry a checksum (CRC for RTU, LRC for ASCII).
CHECKSUM_TRANSPORTS = frozenset({"rtu", "rtu-over-tcp", "ascii"})
_SERIAL_FIELDS = ("baudrate", "parity", "stopbits", "bytesize", "emulate_timing", "serial_link")
_TCP_FIELDS = ("host", "port", "max_connections")
_FAULT_KINDS = ("latency", "no_answer", "exception", "drop_connection", "corrupt_crc")


def _chance_kind(value: Any) -> str:
    return "Always" if isinstance(value, str) else "Probability"


#: How often a fault strikes a matching request: a probability, or `always`.
Chance = Annotated[
    Annotated[float, Field(ge=0, le=1), Tag("Probability")]
    | Annotated[Literal["always"], Tag("Always")],
    Discriminator(_chance_kind),
]


class EveryN(StrictModel):
    """A fault striking every N-th matching request (N, 2N, 3N, ...)."""

    every: int = Field(ge=1, description="Strike at every N-th matching request.")


def _drop_kind(value: Any) -> str:
    if isinstance(value, dict | EveryN):
        return "Every"
    return _chance_kind(value)


DropRule = Annotated[
    Annotated[float, Field(ge=0, le=1), Tag("Probability")]
    | Annotated[Literal["always"], Tag("Always")]
    | Annotated[EveryN, Tag("Every")],
    Discriminator(_drop_kind),
]


class _OneKindFault(StrictModel):
    """A fault model whose fields ``fault_kinds`` are alternatives: exactly one is given."""

    fault_kinds: ClassVar[tuple[str, ...]]

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        given = [k for k in self.fault_kinds if getattr(self, k) is not None]
        if not given:
            raise ValueError(f"a fault needs one of: {', '.join(self.fault_kinds)}")
        if len(given) > 1:
            raise ValueError(
                f"@{given[1]}: one kind per fault; this one already has `{given[0]}`, "
                "give the other as its own list entry"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in self.fault_kinds if getattr(self, k) is not None)


class SimFault(_OneKindFault):
    """One injected fault: exactly one of its kinds, optionally limited to an address range."""

    fault_kinds = _FAULT_KINDS

    latency: float | None = Field(
        default=None, ge=0, le=60, description="Seconds added before every matching answer."
    )
    no_answer: Chance | None = Field(
        default=None,
        description="Leave a matching request unanswered: a probability 0..1, or `always`.",
    )
    exception: int | None = Field(
        default=None,
        ge=1,
        le=127,
        description="Answer matching requests with this exception code (e.g. 2, 4, 6, 11).",
    )
    drop_connection: DropRule | None = Field(
        default=None,
        description=(
            "Close the TCP connection instead of answering: a probability, `always`, or "
            "`{every: N}` for every N-th matching request (tcp and rtu-over-tcp only)."
        ),
    )
    corrupt_crc: Chance | None = Field(
        default=None,
        description=(
            "Send the answer with a wrong CRC (RTU) or LRC (ASCII): a probability or `always`."
        ),
    )
    table: SimTable | None = Field(
        default=None, description="Only requests to this table match; default any table."
    )
    addresses: tuple[int, int] | None = Field(
        default=None,
        description=(
            "Only requests touching this inclusive range of 0-based addresses [first, last] "
            "match; default every address."
        ),
    )

    @model_validator(mode="after")
    def _address_range(self) -> SimFault:
        if self.addresses is not None:
            first, last = self.addresses
            if not 0 <= first <= last <= 65535:
                raise ValueError(
                    f"@addresses: need 0 <= first <= last <= 65535, got [{first}, {last}]"
                )
        return self


def _identity_text(value: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise ValueError("must be printable ASCII (FC43 objects are ASCII strings)")
    return value


#: One FC43 identification object: printable ASCII, short enough that the three basic
#: objects always fit one answer (7 + 3 × (2 + 80) = 253 bytes, the largest PDU).
IdentityText = Annotated[str, Field(min_length=1, max_length=80), AfterValidator(_identity_text)]


class SimIdentity(StrictModel):
    """What the device tells about itself through FC43 / MEI type 14 (read device
    identification): the three objects of the basic category."""

    vendor: IdentityText = Field(description="VendorName, object 0x00, e.g. `ACME`.")
    product_code: IdentityText = Field(description="ProductCode, object 0x01, e.g. `EM-340`.")
    revision: IdentityText = Field(description="MajorMinorRevision, object 0x02, e.g. `1.04`.")

    def objects(self) -> dict[int, bytes]:
        """Object id → value, as FC43 sends them."""
        return {
            0x00: self.vendor.encode("ascii"),
            0x01: self.product_code.encode("ascii"),
            0x02: self.revision.encode("ascii"),
        }


class SimDevice(ModbusLineTiming, StrictModel):
    """One simulated device: a unit id on a TCP listener or a serial line, with its own
    register map."""

    name: Ident = Field(
        description="Unique device name; the key of `endpoints()` and of the ports file."
    )
    transport: SimTransport = Field(
        default="tcp",
        description=(
            "`tcp` (Modbus TCP), `rtu-over-tcp` (RTU frames on a TCP port, like a serial "
            "server), `rtu` or `ascii` (on a pseudo-terminal: a real tty the agent opens)."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on (TCP only).")
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "TCP port; 0 picks a free one. Devices with the same host and non-zero port share "
            "one listener (several unit ids on one port)."
        ),
    )
    gateway: Ident | None = Field(
        default=None,
        description=(
            "Devices naming the same gateway share one listener (TCP) or one serial line "
            "(rtu, ascii), like devices behind one gateway or on one RS-485 bus. They must "
            "agree on transport and on host and port or line settings."
        ),
    )
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit id the device answers.")
    baudrate: Baudrate = Field(
        default=19200,
        description="Serial line speed (rtu, ascii); only sets timing (see emulate_timing).",
    )
    parity: ModbusParity = Field(
        default="E", description="Serial parity (rtu, ascii); counts in the character time."
    )
    stopbits: StopBits = Field(default=1, description="Serial stop bits (rtu, ascii).")
    bytesize: ModbusDataBits = Field(
        default=None, description="Serial data bits (rtu, ascii): default 8 for RTU, 7 for ASCII."
    )
    emulate_timing: bool = Field(
        default=True,
        description=(
            "Delay each serial answer by the time its bytes take at `baudrate`, as a real "
            "line does (rtu, ascii)."
        ),
    )
    serial_link: str | None = Field(
        default=None,
        description=(
            "Path of a symlink to create to the pseudo-terminal (rtu, ascii), so an agent "
            "config can name a fixed path; replaced if it is a symlink, removed on exit."
        ),
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            "Most TCP connections accepted at once; more are closed at once, like devices "
            "that accept only one client (tcp, rtu-over-tcp). Default: no limit."
        ),
    )
    faults: list[SimFault] = Field(
        default_factory=list,
        description="Faults injected into this device's answers (see sim/README.md).",
    )
    fault_seed: int = Field(
        default=0, description="Seed of the device's fault generator, for reproducible runs."
    )
    identity: SimIdentity | None = Field(
        default=None,
        description=(
            "Device identification served through FC43 (read device identification, basic "
            "objects 0x00-0x02). Without it the device answers FC43 with exception 1 (illegal "
            "function), as many real devices do."
        ),
    )
    registers: list[SimRegister] = Field(min_length=1, description="The device's register map.")

    @model_validator(mode="after")
    def _no_overlaps(self) -> SimDevice:
        # Sweep each table in address order, remembering the register reaching furthest so
        # far: a register starting before that end overlaps it. O(n log n), so maps with
        # thousands of registers (benchmarks) validate quickly.
        ordered = sorted(
            range(len(self.registers)),
            key=lambda i: (self.registers[i].table, self.registers[i].address, i),
        )
        reach: int | None = None  # index of the register reaching furthest in this table
        for index in ordered:
            reg = self.registers[index]
            if reach is not None:
                prev = self.registers[reach]
                if prev.table == reg.table and reg.address <= prev.end:
                    later, earlier = max(index, reach), min(index, reach)
                    raise ValueError(
                        f"@registers[{later}]: overlaps registers[{earlier}] "
                        f"({self.registers[earlier].span()})"
                    )
                if prev.table != reg.table or reg.end > prev.end:
                    reach = index
            else:
                reach = index
        return self

    @model_validator(mode="after")
    def _fields_fit_transport(self) -> SimDevice:
        given = self.model_fields_set
        serial = self.is_serial
        for name in _TCP_FIELDS if serial else _SERIAL_FIELDS:
            if name in given:
                where = (
                    "a serial device is served on a pseudo-terminal"
                    if serial
                    else "only serial devices (transport rtu or ascii) have it"
                )
                raise ValueError(f"@{name}: not for transport {self.transport}: {where}")
        self._check_rtu_data_bits()
        if serial and self.unit_id == 0:
            raise ValueError("@unit_id: 0 is the broadcast address on a serial line; use 1..247")
        for index, fault in enumerate(self.faults):
            if fault.corrupt_crc is not None and self.transport not in CHECKSUM_TRANSPORTS:
                raise ValueError(
                    f"@faults[{index}].corrupt_crc: Modbus TCP frames have no CRC; "
                    "needs transport rtu, rtu-over-tcp or ascii"
                )
            if fault.drop_connection is not None and serial:
                raise ValueError(
                    f"@faults[{index}].drop_connection: a serial line has no connection to "
                    "drop; needs transport tcp or rtu-over-tcp"
                )
        return self

    @property
    def is_serial(self) -> bool:
        return self.transport in SERIAL_TRANSPORTS

    def line_settings(self) -> tuple[Any, ...]:
        """What devices sharing one listener or line must agree on."""
        if self.is_serial:
            return (
                self.transport,
                self.baudrate,
                self.parity,
                self.stopbits,
                self.data_bits,
                self.emulate_timing,
                self.serial_link,
            )
        return (self.transport, self.host, self.port, self.max_connections)

    def listener_key(self) -> tuple[str, int, str]:
        """Devices with equal keys are served by one TCP listener or one serial line."""
        if self.is_serial:
            owner = f"gateway:{self.gateway}" if self.gateway is not None else f"device:{self.name}"
            return ("", 0, f"{self.transport}:{owner}")
        if self.port != 0:
            return (self.host, self.port, "")
        if self.gateway is not None:
            return (self.host, 0, "gateway:" + self.gateway)
        return (self.host, 0, "device:" + self.name)


def _instrument_value_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None  # true/false is not a value a template can print sensibly
    return _value_kind(value)


#: What a placeholder of an instrument template shows: a constant or a waveform.
InstrumentValue = Annotated[
    Annotated[Number, Tag("Number")] | Annotated[str, Tag("Text")] | _TaggedWave,
    Discriminator(
        _instrument_value_kind,
        custom_error_type="instrument_value",
        custom_error_message=_VALUE_EXPECTED,
    ),
]

InstrumentMode = Literal["stream", "command"]
InstrumentChecksum = Literal["none", "nmea", "sum8", "crc16-modbus", "crc16-ccitt"]
_INSTRUMENT_FAULT_KINDS = ("garbage", "bad_checksum", "silence", "close_port")
#: Fields only a stream / only a command instrument has.
_STREAM_FIELDS = ("interval", "frames")
_COMMAND_FIELDS = ("commands", "unknown_reply", "reply_delay", "line")
#: What instruments sharing one `line` (one pty) must agree on.
_LINE_FIELDS = (
    "serial_link",
    "baudrate",
    "bytesize",
    "parity",
    "stopbits",
    "emulate_timing",
    "terminator",
    "encoding",
)


class ClosePort(StrictModel):
    """Close the instrument's port at every N-th frame or reply, for a while."""

    every: int = Field(
        ge=1, description="Close at every N-th frame (stream) or reply (command) of the instrument."
    )
    down_for: Real = Field(
        gt=0, le=3600, description="Seconds until a new pseudo-terminal appears."
    )


class InstrumentFault(_OneKindFault):
    """One injected fault of a serial instrument: exactly one of its kinds."""

    fault_kinds = _INSTRUMENT_FAULT_KINDS

    garbage: Chance | None = Field(
        default=None,
        description=(
            "Write a line of noise (random bytes, then the terminator) before a frame or "
            "reply: a probability per frame, or `always`."
        ),
    )
    bad_checksum: DropRule | None = Field(
        default=None,
        description=(
            "Send a frame or reply with a wrong checksum: a probability, `always`, or "
            "`{every: N}`. Needs a `checksum` other than none."
        ),
    )
    silence: Chance | None = Field(
        default=None,
        description=(
            "Do not send a frame, or leave a request unanswered: a probability, or `always`."
        ),
    )
    close_port: ClosePort | None = Field(
        default=None,
        description=(
            "`{every: N, down_for: s}`: at every N-th frame or reply the pseudo-terminal "
            "vanishes (and the symlink); a new one appears after s seconds."
        ),
    )


def _request_text(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(
            "a request is one line: leave out CR and LF (requests end at \\r, \\n or \\r\\n)"
        )
    return value


class InstrumentCommand(StrictModel):
    """A request a command-mode instrument answers, and its reply."""

    request: Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_request_text)] = (
        Field(
            description=(
                "The exact request text, without its terminator (requests end at \\r, \\n "
                "or \\r\\n), e.g. `MEAS?`."
            )
        )
    )
    reply: str = Field(
        description=(
            "Reply template: `{name:spec}` for values, `{utc:strftime}` for the time; the "
            "checksum and terminator are added."
        )
    )


class SimInstrument(StrictModel):
    """A serial-line instrument on a pseudo-terminal: it streams text frames or answers
    ASCII commands (see sim/README.md, "Serial instruments")."""

    name: Ident = Field(
        description=(
            "Unique name (also among `devices`); the key of the Python API and of the ports file."
        )
    )
    mode: InstrumentMode = Field(
        description=(
            "`stream`: sends its `frames` every `interval`; `command`: answers the requests "
            "in `commands`."
        )
    )
    serial_link: str | None = Field(
        default=None,
        description=(
            "Path of a symlink to the current pseudo-terminal; replaced if it is a symlink, "
            "removed while the port is closed and on exit, repointed when a new pty appears."
        ),
    )
    line: Ident | None = Field(
        default=None,
        description=(
            "Command instruments naming the same line share one pseudo-terminal, like "
            "devices on an RS-485 line; each answers only its own requests."
        ),
    )
    interval: Real = Field(
        default=1.0, gt=0, le=86400, description="Stream: seconds between two bursts of frames."
    )
    frames: list[str] = Field(
        default_factory=list,
        description=(
            "Stream: frame templates; every interval each is rendered and sent in order. "
            "`{name:spec}` for values, `{utc:strftime}` for the time (%f: 6 digits, "
            "%1f..%6f: that many)."
        ),
    )
    commands: list[InstrumentCommand] = Field(
        default_factory=list, description="Command: the requests answered and their replies."
    )
    unknown_reply: str | None = Field(
        default=None,
        description=(
            "Command: reply template for a request no command matches (e.g. `ERR`); default "
            "no answer. Not on a shared `line`."
        ),
    )
    reply_delay: Real = Field(
        default=0.0, ge=0, le=60, description="Command: seconds before a reply starts."
    )
    baudrate: Baudrate = Field(
        default=9600,
        description=(
            "Line speed; with `bytesize`, `parity` and `stopbits` it only sets timing (see "
            "emulate_timing)."
        ),
    )
    bytesize: SerialDataBits = Field(
        default=8, description="Data bits per character; timing only (a pty passes 8 bits)."
    )
    parity: SerialParity = Field(
        default="N",
        description=(
            "`N`, `E`, `O`, `M` or `S`: any but `N` adds a parity bit to every character; "
            "timing only."
        ),
    )
    stopbits: UartStopBits = Field(default=1, description="1, 1.5 or 2; timing only.")
    emulate_timing: bool = Field(
        default=True,
        description=(
            "Write each frame or reply when its last byte would arrive at `baudrate`: start "
            "bit, data bits, parity bit if any and stop bits a character (8N1: 10, 8E2: 12)."
        ),
    )
    terminator: str = Field(
        default="\r\n",
        min_length=1,
        max_length=4,
        description='Appended to every frame and reply, e.g. `"\\r\\n"`.',
    )
    checksum: InstrumentChecksum = Field(
        default="none",
        description=(
            "`none`, `nmea` ($body*XX), `sum8` (body*XX), `crc16-modbus` or `crc16-ccitt` "
            "(body*XXXX): see sim/README.md for the exact framing."
        ),
    )
    encoding: str = Field(
        default="ascii", description="Text encoding of frames and requests (a Python codec)."
    )
    values: dict[Ident, InstrumentValue] = Field(
        default_factory=dict,
        description=(
            "Placeholder name → a constant (number or text) or a waveform `{wave: ...}` as "
            "for registers; every placeholder of the templates needs one."
        ),
    )
    faults: list[InstrumentFault] = Field(
        default_factory=list, description="Injected faults (see sim/README.md)."
    )
    fault_seed: int = Field(
        default=0, description="Seed of the instrument's fault generator, for reproducible runs."
    )

    @model_validator(mode="after")
    def _fields_fit_mode(self) -> SimInstrument:
        given = self.model_fields_set
        other = _COMMAND_FIELDS if self.mode == "stream" else _STREAM_FIELDS
        for name in other:
            if name in given:
                owner = "command" if self.mode == "stream" else "stream"
                raise ValueError(
                    f"@{name}: not for mode {self.mode}: only {owner} instruments have it"
                )
        if self.mode == "stream" and not self.frames:
            raise ValueError("@frames: a stream instrument needs at least one frame template")
        if self.mode == "command" and not self.commands:
            raise ValueError("@commands: a command instrument needs at least one {request, reply}")
        seen: dict[str, int] = {}
        for index, command in enumerate(self.commands):
            first = seen.setdefault(command.request, index)
            if first != index:
                raise ValueError(
                    f"@commands[{index}].request: duplicate request {command.request!r} "
                    f"(first at commands[{first}])"
                )
        if self.line is not None and self.unknown_reply is not None:
            raise ValueError(
                "@unknown_reply: not on a shared line: every instrument there would answer "
                "the same unknown request at once"
            )
        for index, fault in enumerate(self.faults):
            if fault.bad_checksum is not None and self.checksum == "none":
                raise ValueError(
                    f"@faults[{index}].bad_checksum: this instrument sends no checksum "
                    "(checksum: none); set `checksum` or remove the fault"
                )
        return self

    @model_validator(mode="after")
    def _templates_render(self) -> SimInstrument:
        import codecs

        # Lazy: sim imports config.sim; by the time a document is validated both are loaded.
        from sim.instrument_frame import UTC_FIELD, TemplateError, compile_template

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(
                f"@encoding: unknown encoding {self.encoding!r}; e.g. ascii, latin-1, utf-8"
            ) from None
        if UTC_FIELD in self.values:
            raise ValueError(
                f"@values.{UTC_FIELD}: `utc` is the emission time; give the value another name"
            )
        samples = {name: _sample(value) for name, value in self.values.items()}
        used: set[str] = set()
        for where, text in self.templates():
            try:
                template = compile_template(text)
            except TemplateError as exc:
                raise ValueError(f"@{where}: {exc}") from None
            for name in template.names:
                if name not in samples:
                    known = ", ".join(sorted(samples)) or "none"
                    raise ValueError(
                        f"@{where}: placeholder {{{name}}} has no entry in values "
                        f"(values given: {known})"
                    )
            used.update(template.names)
            if self.checksum == "nmea" and ("$" in text or "*" in text):
                raise ValueError(
                    f"@{where}: leave out `$` and `*`: with checksum nmea the simulator "
                    "writes $ + body + * + checksum"
                )
            try:
                body = template.check(samples)
            except TemplateError as exc:
                raise ValueError(f"@{where}: {exc}") from None
            try:
                body.encode(self.encoding)
                self.terminator.encode(self.encoding)
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"@{where}: {body[exc.start : exc.end]!r} cannot be encoded as "
                    f"{self.encoding}; set `encoding`"
                ) from None
        for name in self.values:
            if name not in used:
                raise ValueError(
                    f"@values.{name}: not used by any frame or reply; remove it or write "
                    f"{{{name}}} into a template"
                )
        return self

    def templates(self) -> list[tuple[str, str]]:
        """(field path, template text) of every frame and reply."""
        out = [(f"frames[{i}]", text) for i, text in enumerate(self.frames)]
        out += [(f"commands[{i}].reply", c.reply) for i, c in enumerate(self.commands)]
        if self.unknown_reply is not None:
            out.append(("unknown_reply", self.unknown_reply))
        return out

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the line (8N1: 10 bits, 8E2: 12)."""
        return character_bits(self.bytesize, self.parity, self.stopbits) / self.baudrate

    def line_key(self) -> str:
        """Instruments with equal keys share one pseudo-terminal."""
        return f"line:{self.line}" if self.line is not None else f"instrument:{self.name}"


def _sample(value: Number | str | Wave) -> int | float | str:
    """A value of the type the placeholder will show, to try its format spec on."""
    if isinstance(value, ConstantWave):
        return value.value
    if isinstance(value, CounterWave):
        return value.start
    if isinstance(value, SineWave):
        return value.offset
    if isinstance(value, RampWave | RandomWalkWave):
        return value.start
    return value


class SimConfig(StrictModel):
    """A simulated plant: Modbus devices and serial instruments served by
    ``fieldlink sim run``; at least one of the two lists."""

    kind: Literal["sim"] = Field(description="Must be `sim` for a simulator config.")
    devices: list[SimDevice] = Field(
        default_factory=list, min_length=1, description="The simulated Modbus devices."
    )
    instruments: list[SimInstrument] = Field(
        default_factory=list,
        min_length=1,
        description=(
            "Simulated serial-line instruments (streaming or command/response) on "
            "pseudo-terminals; see sim/README.md."
        ),
    )

    @model_validator(mode="after")
    def _something_to_serve(self) -> SimConfig:
        if not self.devices and not self.instruments:
            raise ValueError(
                "nothing to serve: give `devices` (Modbus devices), `instruments` (serial "
                "instruments), or both"
            )
        return self

    @model_validator(mode="after")
    def _instruments_distinct(self) -> SimConfig:
        names = {d.name: f"devices[{i}]" for i, d in enumerate(self.devices)}
        links = {
            d.serial_link: f"devices[{i}]"
            for i, d in enumerate(self.devices)
            if d.serial_link is not None
        }
        lines: dict[str, int] = {}
        requests: dict[tuple[str, str], int] = {}
        for index, inst in enumerate(self.instruments):
            where = f"instruments[{index}]"
            first_name = names.setdefault(inst.name, where)
            if first_name != where:
                raise ValueError(
                    f"@{where}.name: duplicate name {inst.name!r} (first at {first_name}); "
                    "devices and instruments share one name space"
                )
            key = inst.line_key()
            first = lines.setdefault(key, index)
            if first != index:
                _same_instrument_line(index, inst, first, self.instruments[first])
            elif inst.serial_link is not None:
                owner = links.setdefault(inst.serial_link, where)
                if owner != where:
                    raise ValueError(
                        f"@{where}.serial_link: {inst.serial_link} is already the link of "
                        f"{owner}; each pseudo-terminal needs its own"
                    )
            for number, command in enumerate(inst.commands):
                other = requests.setdefault((key, command.request), index)
                if other != index:
                    raise ValueError(
                        f"@{where}.commands[{number}].request: {command.request!r} is already "
                        f"answered by instruments[{other}] ({self.instruments[other].name}) on "
                        f"line {inst.line!r}; both would reply at once"
                    )
        return self

    @model_validator(mode="after")
    def _devices_distinct(self) -> SimConfig:
        names: dict[str, int] = {}
        gateways: dict[str, int] = {}
        ports: dict[tuple[str, int], int] = {}
        units: dict[tuple[tuple[str, int, str], int], int] = {}
        for index, device in enumerate(self.devices):
            first = names.setdefault(device.name, index)
            if first != index:
                raise ValueError(
                    f"@devices[{index}].name: duplicate device name {device.name!r} "
                    f"(first at devices[{first}])"
                )
            if device.gateway is not None:
                first = gateways.setdefault(device.gateway, index)
                other = self.devices[first]
                if not device.is_serial and (other.host, other.port) != (device.host, device.port):
                    raise ValueError(
                        f"@devices[{index}].port: gateway {device.gateway!r} is at "
                        f"{other.host}:{other.port} (devices[{first}]); devices of one gateway "
                        "need the same host and port"
                    )
                _same_line(index, device, first, other)
            if not device.is_serial and device.port != 0:
                first = ports.setdefault((device.host, device.port), index)
                _same_line(index, device, first, self.devices[first])
            key = (device.listener_key(), device.unit_id)
            first = units.setdefault(key, index)
            if first != index:
                raise ValueError(
                    f"@devices[{index}].unit_id: unit {device.unit_id} on "
                    f"{_where(device)} is already served by devices[{first}] "
                    f"({self.devices[first].name})"
                )
        return self


def _same_line(index: int, device: SimDevice, first: int, other: SimDevice) -> None:
    """Devices sharing a listener or line must agree on how it is served."""
    if device.line_settings() == other.line_settings():
        return
    if device.transport != other.transport:
        field = "transport"
    else:
        fields = list(_SERIAL_FIELDS) if device.is_serial else ["max_connections"]
        field = next(f for f in fields if getattr(device, f) != getattr(other, f))
    shared = f"gateway {device.gateway!r}" if device.gateway else f"port {device.port}"
    raise ValueError(
        f"@devices[{index}].{field}: {shared} is shared with devices[{first}] "
        f"({other.name}), which has {field} {getattr(other, field)!r}; devices on one "
        "listener or line must agree"
    )


def _same_instrument_line(
    index: int, inst: SimInstrument, first: int, other: SimInstrument
) -> None:
    """Instruments sharing a line must agree on how the line is served."""
    for field in _LINE_FIELDS:
        if getattr(inst, field) != getattr(other, field):
            raise ValueError(
                f"@instruments[{index}].{field}: line {inst.line!r} is shared with "
                f"instruments[{first}] ({other.name}), which has {field} "
                f"{getattr(other, field)!r}; instruments on one line must agree"
            )


def _where(device: SimDevice) -> str:
    if device.is_serial:
        line = f"gateway {device.gateway}" if device.gateway is not None else device.name
        return f"the {device.transport} line of {line}"
    where = f"{device.host}:{device.port}"
    return f"{where} (gateway {device.gateway})" if device.gateway is not None else where


def load_sim_config(path: Path, env: Mapping[str, str] = os.environ) -> SimConfig:
    """Read, substitute ``${VAR}``s and validate a simulator config file.

    Raises :class:`ConfigError` listing every problem found, each with its field path.
    """
    problems: list[Problem] = []
    doc = substitute_env(read_document(path), env, "", problems)
    config = validate(SimConfig, doc, "", problems)
    if problems or config is None:
        raise ConfigError(str(path), problems)
    return config


def sim_json_schema() -> dict[str, Any]:
    """JSON Schema of the simulator config, for ``fieldlink schema sim``."""
    return SimConfig.model_json_schema()
