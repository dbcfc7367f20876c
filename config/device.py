"""What every bus and device has, whatever its driver. Drivers subclass these.

Also the field types of serial lines and TCP endpoints, so the drivers and the simulator
(``config.sim``) validate a baudrate or a port the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from config.base import Ident, StrictModel
from wire.topics import UNIT_PATTERN


class BusBase(StrictModel):
    """A line or endpoint owned by one task of the agent; devices on it take turns."""

    name: Ident = Field(description="Unique bus name, referenced by devices[].bus.")
    driver: str = Field(description="Driver that speaks on this bus, e.g. `modbus`.")
    request_gap: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description=(
            "Seconds of quiet between the end of one request and the next on this bus (slow "
            "gateways, RS-485 turnaround)."
        ),
    )
    connect_delay: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Seconds to wait after (re)connecting before the first request.",
    )


class PointBase(StrictModel):
    name: Ident = Field(description="Point name, unique within its device; the `point` tag.")
    unit: Annotated[str, Field(pattern=UNIT_PATTERN)] | None = Field(
        default=None,
        description=(
            "Engineering unit stored with every reading, e.g. `V`, `degC`, `m3/h`: 1 to 32 "
            "characters, no backslash or control characters (an InfluxDB tag cannot carry them)."
        ),
    )


class DeviceBase(StrictModel):
    name: Ident = Field(description="Unique device name within the agent; the `device` tag.")
    bus: Ident = Field(description="Name of the bus (buses[].name) this device is reached on.")
    asset: Ident | None = Field(
        default=None,
        description="Asset the device measures (the `asset` tag); defaults to the device name.",
    )
    interval: float = Field(
        default=1.0, gt=0, le=86_400, description="Seconds between polls, measured without drift."
    )
    enabled: bool = Field(default=True, description="A disabled device is validated, not polled.")

    @property
    def asset_name(self) -> str:
        return self.asset or self.name


# -- serial lines ----------------------------------------------------------------------------
# The constraints of line settings, shared by every model that describes a serial line (the
# drivers' buses, the simulator's devices and instruments). Defaults and descriptions stay with
# each model: they differ on purpose (Modbus RTU defaults to even parity, a plain instrument
# line to 8N1).

#: Line speed in bit/s, from the slowest teleprinter line to fast USB adapters.
Baudrate = Annotated[int, Field(ge=50, le=4_000_000)]
#: Stop bits after each character.
StopBits = Literal[1, 2]
#: Parity a Modbus serial line may use (the spec allows no mark or space parity).
ModbusParity = Literal["N", "E", "O"]
#: Any parity a UART offers: none, even, odd, mark, space.
SerialParity = Literal["N", "E", "O", "M", "S"]
#: Data bits of a Modbus serial line: 8 for RTU, 7 or 8 for ASCII; None takes the default.
ModbusDataBits = Literal[7, 8] | None
#: Data bits a UART offers.
SerialDataBits = Literal[5, 6, 7, 8]


def _uart_stop_bits(value: float) -> float:
    if value not in (1, 1.5, 2):
        raise ValueError("stop bits are 1, 1.5 or 2")
    return value


#: Stop bits a UART offers; 1.5 (with 5 data bits) counts as one and a half bit times.
UartStopBits = Annotated[
    float,
    AfterValidator(_uart_stop_bits),
    WithJsonSchema({"type": "number", "enum": [1, 1.5, 2]}),
]


def character_bits(data_bits: int, parity: str, stopbits: float) -> float:
    """Bit times one character takes on a serial line: the start bit, the data bits, a
    parity bit unless the parity is ``N``, and the stop bits (8N1: 10, 8E2: 12, 5N1.5: 7.5)."""
    return 1 + data_bits + (0 if parity == "N" else 1) + stopbits


#: The RTU inter-frame silence is 3.5 character times, fixed at 1.75 ms above this speed.
_RTU_FIXED_GAP_ABOVE: Final = 19200
_RTU_FIXED_GAP: Final = 0.00175


class ModbusLineTiming:
    """Timing of a Modbus serial line (rtu or ascii), for any model with the fields
    ``transport``, ``baudrate``, ``parity``, ``stopbits`` and ``bytesize``: the agent's
    Modbus bus and the simulator's Modbus device time the same line the same way."""

    if TYPE_CHECKING:
        transport: str
        baudrate: int
        parity: str
        stopbits: int
        bytesize: int | None

    def _check_rtu_data_bits(self) -> None:
        if self.transport == "rtu" and self.bytesize == 7:
            raise ValueError("@bytesize: RTU needs 8 data bits (7 is for ASCII)")

    @property
    def data_bits(self) -> int:
        """Data bits per character: ``bytesize``, or its transport's default (7 for ASCII,
        8 for RTU)."""
        if self.bytesize is not None:
            return self.bytesize
        return 7 if self.transport == "ascii" else 8

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the serial line (start, data, parity, stop bits)."""
        return character_bits(self.data_bits, self.parity, self.stopbits) / self.baudrate

    @property
    def frame_gap(self) -> float:
        """Silence the Modbus RTU spec requires between frames: 3.5 character times, fixed at
        1.75 ms above 19200 bit/s. Zero for every other transport."""
        if self.transport != "rtu":
            return 0.0
        return _RTU_FIXED_GAP if self.baudrate > _RTU_FIXED_GAP_ABOVE else 3.5 * self.char_time


# -- TCP endpoints -----------------------------------------------------------------------------

#: A TCP port an agent connects to (0 is not a port one can connect to).
TcpPort = Annotated[int, Field(ge=1, le=65535)]
#: Seconds to wait for a TCP connection to a device or gateway to open.
ConnectTimeout = Annotated[float, Field(gt=0, le=60)]


def host_port(host: str, port: int | None) -> str:
    """``host:port`` for messages, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
