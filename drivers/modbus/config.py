"""Config models of the Modbus driver: a bus is one endpoint or serial line, a device one
unit id on it. See ``drivers/modbus/README.md`` for every field with examples."""

from __future__ import annotations

import contextvars
import sys
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from config.device import (
    Baudrate,
    BusBase,
    ConnectTimeout,
    DeviceBase,
    ModbusDataBits,
    ModbusLineTiming,
    ModbusParity,
    PointBase,
    StopBits,
    TcpPort,
    host_port,
)
from drivers.modbus.address import (
    BIT_TABLES,
    AddressBase,
    AddressError,
    Table,
    resolve,
)
from drivers.modbus.codec import RegisterType, WordOrder, register_count

Transport = Literal["tcp", "rtu-over-tcp", "rtu", "ascii"]
SERIAL_TRANSPORTS: Final = frozenset({"rtu", "ascii"})
#: Fields only a serial bus has, and only a TCP bus has.
_SERIAL_FIELDS: Final = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")
_TCP_FIELDS: Final = ("host", "port", "connect_timeout")


class ModbusBus(ModbusLineTiming, BusBase):
    driver: Literal["modbus"] = Field(description="`modbus` for this driver.")
    transport: Transport = Field(
        default="tcp",
        description=(
            "How the bus is reached: `tcp` (Modbus TCP, MBAP framing), `rtu-over-tcp` (RTU "
            "frames through a TCP serial server), `rtu` or `ascii` (a serial port)."
        ),
    )
    host: str | None = Field(
        default=None,
        description="Host name or address of the device or gateway (tcp and rtu-over-tcp only).",
    )
    port: TcpPort = Field(default=502, description="TCP port (tcp and rtu-over-tcp only).")
    serial_port: str | None = Field(
        default=None,
        description="Serial device path, e.g. `/dev/ttyUSB0` (rtu and ascii only).",
    )
    baudrate: Baudrate = Field(
        default=19200,
        description="Serial line speed in bit/s (rtu and ascii only); sets the RTU frame gap.",
    )
    parity: ModbusParity = Field(
        default="E",
        description="Serial parity: `N` none, `E` even (the Modbus default), `O` odd.",
    )
    stopbits: StopBits = Field(default=1, description="Serial stop bits, 1 or 2.")
    bytesize: ModbusDataBits = Field(
        default=None,
        description="Serial data bits: 8 for RTU (required), 7 or 8 for ASCII (default 7).",
    )
    timeout: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description=(
            "Seconds to wait for an answer to one request; on a slow serial line this includes "
            "the time the answer takes on the wire."
        ),
    )
    connect_timeout: ConnectTimeout = Field(
        default=3.0, description="Seconds to wait for the TCP connection to open."
    )

    @model_validator(mode="after")
    def _fields_fit_transport(self) -> ModbusBus:
        given = self.model_fields_set
        if self.transport in SERIAL_TRANSPORTS:
            if self.serial_port is None:
                raise ValueError(
                    f"@serial_port: transport {self.transport} needs the serial device, "
                    "e.g. serial_port: /dev/ttyUSB0"
                )
            if not self.serial_port.strip():
                raise ValueError("@serial_port: must not be empty")
            for name in _TCP_FIELDS:
                if name in given:
                    raise ValueError(
                        f"@{name}: a {self.transport} bus is a serial line and has no {name}; "
                        "the device goes in `serial_port` (for a TCP serial server use "
                        "transport rtu-over-tcp)"
                    )
            self._check_rtu_data_bits()
        else:
            if self.host is None:
                raise ValueError(
                    f"@host: transport {self.transport} needs the host name or address of the "
                    "device or gateway"
                )
            for name in _SERIAL_FIELDS:
                if name in given:
                    raise ValueError(
                        f"@{name}: only serial buses (transport rtu or ascii) have a {name}; "
                        f"this bus is {self.transport}"
                    )
        return self

    @property
    def endpoint(self) -> str:
        """Where the bus is, for messages: ``host:port`` or the serial device."""
        if self.transport in SERIAL_TRANSPORTS:
            return str(self.serial_port)
        return host_port(str(self.host), self.port)


#: The address base of the device whose points are being validated (see ModbusDevice).
#: ``None`` when the device's own address_base is invalid: then points skip base checks.
_ADDRESS_BASE: contextvars.ContextVar[AddressBase | None] = contextvars.ContextVar(
    "modbus_address_base", default=0
)


def _address_text(value: str) -> str:
    if not value.strip().isdigit():
        raise ValueError("a quoted address must be digits only, e.g. '40001'")
    return value


def _address_kind(value: Any) -> str:
    # Tags are capitalised so the loader leaves them out of error paths.
    return "Text" if isinstance(value, str) else "Number"


Address = Annotated[
    Annotated[int, Field(ge=0), Tag("Number")]
    | Annotated[str, AfterValidator(_address_text), Tag("Text")],
    Discriminator(_address_kind),
]


class ModbusPoint(PointBase):
    table: Table | None = Field(
        default=None,
        description=(
            "`holding` (FC3, the default), `input` (FC4), `coil` (FC1) or `discrete` (FC2). "
            "With the device's address_base `modicon` it follows from the address."
        ),
    )
    address: Address = Field(
        description=(
            "Address of the first register (or coil) in the device's notation (address_base): "
            "0-based protocol address by default. Modicon addresses with a leading 0 are "
            "written quoted, e.g. '00010'."
        )
    )
    type: RegisterType = Field(
        description="How the registers are interpreted; `bool` for coil and discrete points."
    )
    bit: int | None = Field(
        default=None,
        ge=0,
        le=15,
        description=(
            "Read one bit (0 = least significant) of a uint16/int16 register as true/false; "
            "several points may name bits of the same register."
        ),
    )
    order: WordOrder | None = Field(
        default=None, description="Word/byte order for this point; defaults to the device's."
    )
    length: int | None = Field(
        default=None, ge=1, le=125, description="Registers a `string` occupies (strings only)."
    )
    scale: float = Field(default=1.0, description="value = raw × scale + offset.")
    offset: float = Field(default=0.0, description="value = raw × scale + offset.")

    _table: Table = PrivateAttr(default="holding")
    _address: int = PrivateAttr(default=0)

    @field_validator("name", "unit", mode="after")
    @classmethod
    def _shared_text(cls, value: str | None) -> str | None:
        """One string object per distinct name and unit: devices of one model repeat the same
        point names and units, and a 10,000-point agent keeps ~1 MiB less (issue 7)."""
        return None if value is None else sys.intern(value)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        kind = self.type
        if kind is RegisterType.STRING:
            if self.length is None:
                raise ValueError("@length: a string point needs `length` (registers it occupies)")
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("@scale: a string point cannot have scale or offset")
        elif self.length is not None:
            raise ValueError(
                f"@length: only string points have a length; {kind.value} has a fixed size"
            )
        base = _ADDRESS_BASE.get()
        if base is None:
            return self  # the device's address_base is wrong; reported there
        try:
            table, address = resolve(base, self.address, self.table, self.count, kind.value)
        except AddressError as exc:
            raise ValueError(f"@{exc.field}: {exc}") from None
        self._check_bits(table)
        self._table, self._address = table, address
        return self

    def _check_bits(self, table: Table) -> None:
        kind = self.type
        if table in BIT_TABLES:
            if kind is not RegisterType.BOOL:
                raise ValueError(f"@type: a {table} point is one bit: type bool, not {kind.value}")
            if self.bit is not None:
                raise ValueError(f"@bit: a {table} point is already a single bit")
        elif kind is RegisterType.BOOL:
            raise ValueError(
                f"@type: bool is for coil and discrete points; for one bit of a {table} "
                "register use type uint16 with `bit: 0..15`"
            )
        elif self.bit is not None and kind not in (RegisterType.UINT16, RegisterType.INT16):
            raise ValueError(f"@bit: only a uint16 or int16 point can name a bit, not {kind.value}")
        if self.is_bool:
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("@scale: a true/false point cannot have scale or offset")
            if self.order is not None and table in BIT_TABLES:
                raise ValueError(f"@order: a {table} point is one bit and has no byte order")

    @property
    def protocol_table(self) -> Table:
        """The table the point is read from, whatever the notation it was written in."""
        return self._table

    @property
    def protocol_address(self) -> int:
        """The 0-based address that travels in the request (resolved at validation)."""
        return self._address

    @property
    def count(self) -> int:
        """Registers (or, in coil/discrete tables, bits) the point occupies."""
        return register_count(self.type, self.length)

    @property
    def is_bool(self) -> bool:
        """The point reads as true/false: a coil, a discrete input or a bit of a register."""
        return self.type is RegisterType.BOOL or self.bit is not None


class ModbusDevice(DeviceBase):
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    byte_order: WordOrder = Field(
        default=WordOrder.ABCD, description="Default word/byte order of the device's points."
    )
    address_base: AddressBase = Field(
        default=0,
        description=(
            "How the points' addresses are written: `0` protocol address (0-based), `1` "
            "register number (1-based), `modicon` datasheet notation (40001 = holding 0)."
        ),
    )
    max_registers: int = Field(
        default=125, ge=1, le=125, description="Most registers the device returns in one request."
    )
    max_bits: int = Field(
        default=2000,
        ge=1,
        le=2000,
        description="Most coils or discrete inputs the device returns in one request.",
    )
    max_gap: int = Field(
        default=10,
        ge=0,
        le=124,
        description=("Unused registers (or coils) a merged request may span between two points."),
    )
    points: list[ModbusPoint] = Field(min_length=1, description="Points read from the device.")

    @model_validator(mode="after")
    def _points_fit_one_request(self) -> ModbusDevice:
        """A point larger than one request can never be read; say so now, not every poll."""
        for index, point in enumerate(self.points):
            if point.protocol_table in BIT_TABLES or point.count <= self.max_registers:
                continue
            field = "length" if point.type is RegisterType.STRING else "type"
            raise ValueError(
                f"@points[{index}].{field}: {point.type.value} needs {point.count} registers, "
                f"more than one request may carry (max_registers: {self.max_registers})"
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _points_in_notation(
        cls, data: Any, handler: ModelWrapValidatorHandler[ModbusDevice]
    ) -> ModbusDevice:
        """Points are validated knowing the device's address_base, so each address error is
        reported on its point, together with every other problem."""
        base: AddressBase | None = 0
        if isinstance(data, dict):
            given = data.get("address_base", 0)
            valid = given == "modicon" or (type(given) is int and given in (0, 1))
            base = given if valid else None
        elif isinstance(data, ModbusDevice):
            base = data.address_base
        token = _ADDRESS_BASE.set(base)
        try:
            return handler(data)
        finally:
            _ADDRESS_BASE.reset(token)
