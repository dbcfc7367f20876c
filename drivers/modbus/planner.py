"""Request planning: group a device's points into the fewest reads the device accepts, and
turn a value to write into the write request that carries it.

Reads: points of one table are merged while the span stays within the device's limit
(``max_registers`` for holding/input, ``max_bits`` for coil/discrete) and the hole between
neighbours within ``max_gap``. Several bit points of one register share that register's read.

Writes (FC5, FC6, FC15, FC16) are planned here too, so the command path of a later issue only
has to hand a :class:`WriteRequest` to the link; nothing in the agent writes yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from drivers.modbus.address import BIT_TABLES
from drivers.modbus.codec import CodecError, RegisterType, encode
from drivers.modbus.config import ModbusDevice, ModbusPoint

#: Modbus function code of each readable table.
FUNCTION_CODES: Final = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: Most registers one FC16 request may carry, and coils one FC15 request (spec limits).
MAX_WRITE_REGISTERS: Final = 123
MAX_WRITE_COILS: Final = 1968


@dataclass(frozen=True, slots=True)
class ReadRequest:
    unit_id: int
    table: str
    #: 0-based protocol address of the first register (or bit).
    address: int
    #: Registers (or bits) asked for.
    count: int
    #: The points this request covers, in address order.
    points: tuple[ModbusPoint, ...]

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.table]

    @property
    def is_bits(self) -> bool:
        """A coil/discrete read: the answer is a list of bools, one per address."""
        return self.table in BIT_TABLES


def plan_requests(device: ModbusDevice) -> list[ReadRequest]:
    """Every point lands in exactly one request; no request exceeds the device's limits."""
    requests: list[ReadRequest] = []
    for table in ("coil", "discrete", "holding", "input"):
        limit = device.max_bits if table in BIT_TABLES else device.max_registers
        points = sorted(
            (p for p in device.points if p.protocol_table == table),
            key=lambda p: p.protocol_address,
        )
        group: list[ModbusPoint] = []
        start = end = 0
        for point in points:
            p_start = point.protocol_address
            p_end = p_start + point.count
            fits = group and p_start - end <= device.max_gap and max(end, p_end) - start <= limit
            if fits:
                group.append(point)
                end = max(end, p_end)
                continue
            if group:
                requests.append(
                    ReadRequest(device.unit_id, table, start, end - start, tuple(group))
                )
            group, start, end = [point], p_start, p_end
        if group:
            requests.append(ReadRequest(device.unit_id, table, start, end - start, tuple(group)))
    return requests


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write: FC5 (one coil), FC15 (coils), FC6 (one register) or FC16 (registers)."""

    unit_id: int
    table: str  # "coil" or "holding"
    address: int
    #: Coil states (bools) or register words (0..65535), in address order.
    values: tuple[int, ...]
    #: Use the single-item function (FC5/FC6); only with exactly one value.
    single: bool

    @property
    def function_code(self) -> int:
        if self.table == "coil":
            return 5 if self.single else 15
        return 6 if self.single else 16


class WriteError(ValueError):
    """A value that cannot be written to a point (read-only table, out of range, ...)."""


def plan_write(
    device: ModbusDevice, point: ModbusPoint, value: bool | int | float | str
) -> WriteRequest:
    """The request that writes ``value`` (in engineering units) to ``point``.

    The inverse of decoding: ``raw = (value - offset) / scale``, rounded for integer types,
    then encoded in the point's order. One register or one coil uses FC6/FC5 (what most
    devices accept for setpoints and switches); more use FC16/FC15.
    """
    table = point.protocol_table
    if table in ("discrete", "input"):
        raise WriteError(f"{point.name}: {table} points are read-only")
    if point.bit is not None:
        raise WriteError(
            f"{point.name}: writing one bit of a register needs a read-modify-write, "
            "which this driver does not do"
        )
    address = point.protocol_address
    if table == "coil":
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise WriteError(f"{point.name}: a coil takes true or false, not {value!r}")
        return WriteRequest(device.unit_id, "coil", address, (bool(value),), single=True)
    raw = _raw(point, value)
    order = point.order or device.byte_order
    try:
        words = encode(point.type, order, raw, point.length)
    except (CodecError, UnicodeEncodeError) as exc:
        raise WriteError(f"{point.name}: {exc}") from exc
    if len(words) > MAX_WRITE_REGISTERS:
        raise WriteError(
            f"{point.name}: {len(words)} registers do not fit one write "
            f"({MAX_WRITE_REGISTERS} at most)"
        )
    return WriteRequest(device.unit_id, "holding", address, tuple(words), single=len(words) == 1)


def plan_coil_writes(device: ModbusDevice, address: int, values: list[bool]) -> list[WriteRequest]:
    """Consecutive coils from protocol ``address``, as few FC15 requests as the limit allows."""
    out = []
    for first in range(0, len(values), MAX_WRITE_COILS):
        chunk = tuple(bool(v) for v in values[first : first + MAX_WRITE_COILS])
        out.append(WriteRequest(device.unit_id, "coil", address + first, chunk, single=False))
    return out


_INTEGER_RANGE: Final = {
    RegisterType.INT16: (-(1 << 15), (1 << 15) - 1),
    RegisterType.UINT16: (0, (1 << 16) - 1),
    RegisterType.INT32: (-(1 << 31), (1 << 31) - 1),
    RegisterType.UINT32: (0, (1 << 32) - 1),
    RegisterType.INT64: (-(1 << 63), (1 << 63) - 1),
    RegisterType.UINT64: (0, (1 << 64) - 1),
}


def _raw(point: ModbusPoint, value: bool | int | float | str) -> int | float | str:
    if point.type is RegisterType.STRING:
        if not isinstance(value, str):
            raise WriteError(f"{point.name}: a string point takes text, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteError(f"{point.name}: a {point.type.value} point takes a number, not {value!r}")
    if not math.isfinite(value):
        raise WriteError(f"{point.name}: {value} is not a finite number")
    identity = point.scale == 1.0 and point.offset == 0.0
    raw: int | float = value if identity else (value - point.offset) / point.scale
    limits = _INTEGER_RANGE.get(point.type)
    if limits is None:
        return float(raw)
    raw = raw if isinstance(raw, int) else round(raw)
    lo, hi = limits
    if not lo <= raw <= hi:
        raise WriteError(
            f"{point.name}: {value} is raw {raw}, outside {point.type.value} ({lo}..{hi})"
        )
    return raw
