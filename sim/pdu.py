"""Modbus PDU handling, independent of the framing (TCP here; RTU reuses it later).

A PDU is the function code and its data, without MBAP header, unit id or CRC. The
handler maps one request PDU to one response PDU; it never fails, every bad request gets
the exception response a real device would give. Checks follow the order of the Modbus
Application Protocol spec (function → quantity → address), so an agent sees the same
exception codes as from real hardware.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

READ_HOLDING_REGISTERS: Final = 0x03
READ_INPUT_REGISTERS: Final = 0x04
WRITE_SINGLE_REGISTER: Final = 0x06
WRITE_MULTIPLE_REGISTERS: Final = 0x10

ILLEGAL_FUNCTION: Final = 0x01
ILLEGAL_DATA_ADDRESS: Final = 0x02
ILLEGAL_DATA_VALUE: Final = 0x03

#: Most registers one read may ask for (the answer must fit a 253-byte PDU).
MAX_READ: Final = 125
#: Most registers one FC16 write may carry (spec: 0x7B).
MAX_WRITE: Final = 123

_ADDR_COUNT = struct.Struct(">HH")
_ADDR_COUNT_BYTES = struct.Struct(">HHB")

# The two header bytes of every possible read answer (function code, byte count), built
# once so an answer costs one concatenation.
_READ_HEADS: Final[dict[int, list[bytes]]] = {
    fc: [bytes((fc, 2 * n)) for n in range(MAX_READ + 1)]
    for fc in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS)
}


class RegisterSpace(Protocol):
    """The registers of one unit. Data is big-endian, two bytes per register.

    A read or write touching any undefined address must return None / False and change
    nothing; the handler turns that into exception 2 (illegal data address).
    """

    def read_holding(self, address: int, count: int) -> bytes | None: ...

    def read_input(self, address: int, count: int) -> bytes | None: ...

    def write_holding(self, address: int, data: bytes) -> bool: ...


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
    return exception_response(function, ILLEGAL_FUNCTION)
