"""Modbus PDU handling, independent of the framing (MBAP in tcp.py, RTU and ASCII in line.py).

A PDU is the function code and its data, without MBAP header, unit id or CRC. The
handler maps one request PDU to one response PDU; it never fails, every bad request gets
the exception response a real device would give. Checks follow the order of the Modbus
Application Protocol spec (function → quantity → address), so an agent sees the same
exception codes as from real hardware.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

from drivers.modbus.codec import unpack_bits

READ_COILS: Final = 0x01
READ_DISCRETE_INPUTS: Final = 0x02
READ_HOLDING_REGISTERS: Final = 0x03
READ_INPUT_REGISTERS: Final = 0x04
WRITE_SINGLE_COIL: Final = 0x05
WRITE_SINGLE_REGISTER: Final = 0x06
WRITE_MULTIPLE_COILS: Final = 0x0F
WRITE_MULTIPLE_REGISTERS: Final = 0x10
#: Encapsulated interface transport; with MEI type 0x0E: read device identification.
ENCAPSULATED_INTERFACE: Final = 0x2B
MEI_READ_DEVICE_ID: Final = 0x0E

ILLEGAL_FUNCTION: Final = 0x01
ILLEGAL_DATA_ADDRESS: Final = 0x02
ILLEGAL_DATA_VALUE: Final = 0x03

#: FC43 conformity level: basic identification, stream and individual access.
BASIC_CONFORMITY: Final = 0x81

#: Most registers one read may ask for (the answer must fit a 253-byte PDU).
MAX_READ: Final = 125
#: Most registers one FC16 write may carry (spec: 0x7B).
MAX_WRITE: Final = 123
#: Most coils or discrete inputs one read may ask for (spec: 0x7D0), and one FC15 write
#: may carry (spec: 0x7B0).
MAX_READ_BITS: Final = 2000
MAX_WRITE_BITS: Final = 1968

_ADDR_COUNT = struct.Struct(">HH")
_ADDR_COUNT_BYTES = struct.Struct(">HHB")

# The two header bytes of every possible read answer (function code, byte count), built
# once so an answer costs one concatenation.
_READ_HEADS: Final[dict[int, list[bytes]]] = {
    fc: [bytes((fc, 2 * n)) for n in range(MAX_READ + 1)]
    for fc in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS)
}


class RegisterSpace(Protocol):
    """The registers of one unit. Data is big-endian, two bytes per register; bits are packed
    as the protocol sends them (eight per byte, first bit least significant).

    A read or write touching any undefined address must return None / False and change
    nothing; the handler turns that into exception 2 (illegal data address).
    """

    def read_holding(self, address: int, count: int) -> bytes | None: ...

    def read_input(self, address: int, count: int) -> bytes | None: ...

    def write_holding(self, address: int, data: bytes) -> bool: ...

    def read_coils(self, address: int, count: int) -> bytes | None: ...

    def read_discrete(self, address: int, count: int) -> bytes | None: ...

    def write_coils(self, address: int, bits: list[bool]) -> bool: ...

    def has_table(self, table: str) -> bool:
        """Whether the unit has any ``coil`` / ``discrete`` at all: a device without them
        answers their function codes with exception 1 (illegal function)."""
        ...

    def device_identity(self) -> dict[int, bytes] | None:
        """FC43 identification objects (object id → value), or None: the unit answers FC43
        with exception 1 (illegal function)."""
        ...


#: The table each function code reads or writes (for fault matching and statistics).
TABLE_OF: Final = {
    READ_COILS: "coil",
    READ_DISCRETE_INPUTS: "discrete",
    READ_HOLDING_REGISTERS: "holding",
    READ_INPUT_REGISTERS: "input",
    WRITE_SINGLE_COIL: "coil",
    WRITE_SINGLE_REGISTER: "holding",
    WRITE_MULTIPLE_COILS: "coil",
    WRITE_MULTIPLE_REGISTERS: "holding",
}


def request_span(pdu: bytes) -> tuple[str, int, int] | None:
    """(table, first address, count) a request touches, or None if it names no range."""
    if len(pdu) < 5:
        return None
    table = TABLE_OF.get(pdu[0])
    if table is None:
        return None
    address, count = _ADDR_COUNT.unpack_from(pdu, 1)
    if pdu[0] in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER):
        count = 1
    return table, address, count


def exception_response(function: int, code: int) -> bytes:
    return bytes(((function | 0x80) & 0xFF, code))


def handle_pdu(space: RegisterSpace, pdu: bytes) -> bytes:
    """Answer one request PDU from ``space``."""
    if not pdu:
        return exception_response(0, ILLEGAL_FUNCTION)
    function = pdu[0]
    if function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        if len(pdu) != 5:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        address: int
        count: int
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_READ:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        if function == READ_HOLDING_REGISTERS:
            data = space.read_holding(address, count)
        else:
            data = space.read_input(address, count)
        if data is None:
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        return _READ_HEADS[function][count] + data
    if function in (READ_COILS, READ_DISCRETE_INPUTS):
        if not space.has_table("coil" if function == READ_COILS else "discrete"):
            return exception_response(function, ILLEGAL_FUNCTION)
        if len(pdu) != 5:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        address, count = _ADDR_COUNT.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_READ_BITS:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        if function == READ_COILS:
            data = space.read_coils(address, count)
        else:
            data = space.read_discrete(address, count)
        if data is None:
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        return bytes((function, len(data))) + data
    if function in (WRITE_SINGLE_COIL, WRITE_MULTIPLE_COILS) and not space.has_table("coil"):
        return exception_response(function, ILLEGAL_FUNCTION)
    if function == WRITE_SINGLE_COIL:
        if len(pdu) != 5:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        address, value = _ADDR_COUNT.unpack_from(pdu, 1)
        if value not in (0xFF00, 0x0000):
            return exception_response(function, ILLEGAL_DATA_VALUE)
        if not space.write_coils(address, [value == 0xFF00]):
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        return pdu  # the answer echoes the request
    if function == WRITE_MULTIPLE_COILS:
        if len(pdu) < 6:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        address, count, size = _ADDR_COUNT_BYTES.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_WRITE_BITS or size != (count + 7) // 8 or len(pdu) != 6 + size:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        if address + count > 0x10000 or not space.write_coils(address, unpack_bits(pdu[6:], count)):
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        return pdu[:5]  # function, address, count
    if function == WRITE_SINGLE_REGISTER:
        if len(pdu) != 5:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        address = (pdu[1] << 8) | pdu[2]
        if not space.write_holding(address, pdu[3:5]):
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        return pdu  # the answer echoes the request
    if function == WRITE_MULTIPLE_REGISTERS:
        if len(pdu) < 6:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        address, count, size = _ADDR_COUNT_BYTES.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_WRITE or size != 2 * count or len(pdu) != 6 + size:
            return exception_response(function, ILLEGAL_DATA_VALUE)
        if address + count > 0x10000 or not space.write_holding(address, pdu[6:]):
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        return pdu[:5]  # function, address, count
    if function == ENCAPSULATED_INTERFACE:
        objects = space.device_identity()
        if objects:
            return _device_identification(objects, pdu)
    return exception_response(function, ILLEGAL_FUNCTION)


def _device_identification(objects: dict[int, bytes], pdu: bytes) -> bytes:
    """FC43 / MEI 0x0E for a device of the basic conformity level (objects 0x00..0x02).

    Read codes 1-3 (basic, regular, extended: stream access) answer every object from the
    requested one on (from 0 when the device has no such object, as the spec says); a device
    asked for a higher category than it has answers at its own level. Read code 4 (individual
    access) answers the one object, exception 2 if the device has none of that id. All
    objects fit one answer (config/sim.py limits their size), so "more follows" is never set.
    """
    function = ENCAPSULATED_INTERFACE
    if len(pdu) < 2 or pdu[1] != MEI_READ_DEVICE_ID:
        return exception_response(function, ILLEGAL_FUNCTION)
    if len(pdu) != 4 or pdu[2] not in (1, 2, 3, 4):
        return exception_response(function, ILLEGAL_DATA_VALUE)
    code, first = pdu[2], pdu[3]
    if code == 4:
        if first not in objects:
            return exception_response(function, ILLEGAL_DATA_ADDRESS)
        chosen = [first]
    else:
        start = first if first in objects else 0
        chosen = [oid for oid in sorted(objects) if oid >= start]
    body = b"".join(bytes((oid, len(objects[oid]))) + objects[oid] for oid in chosen)
    header = (function, MEI_READ_DEVICE_ID, code, BASIC_CONFORMITY, 0x00, 0x00, len(chosen))
    return bytes(header) + body
