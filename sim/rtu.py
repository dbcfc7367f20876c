"""Modbus RTU framing: unit id + PDU + CRC-16/Modbus, low byte first.

An RTU frame has no length field and no start marker; a device finds frames by the silence
between them (3.5 character times) and by what the function code implies about the length.
On a pseudo-terminal or a TCP stream silence is not reliable, so :func:`request_size` works
out the length of a request from its first bytes, and the line server falls back to
silence only for function codes it does not know.
"""

from __future__ import annotations

from typing import Final


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/Modbus (poly 0xA001 reflected, init 0xFFFF) of ``data``, as a number; on the
    wire it travels low byte first."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def encode(unit: int, pdu: bytes, *, corrupt: bool = False) -> bytes:
    """An RTU frame; with ``corrupt`` its CRC is wrong (both bytes inverted)."""
    body = bytes((unit,)) + pdu
    crc = crc16(body) ^ (0xFFFF if corrupt else 0)
    return body + crc.to_bytes(2, "little")


def check(frame: bytes) -> bool:
    """Whether ``frame`` (unit id, PDU, CRC) carries a correct CRC."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


#: A request whose length cannot be told from its bytes (unknown function code).
UNKNOWN: Final = 0

_FIXED_REQUESTS: Final = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06})
_COUNTED_REQUESTS: Final = frozenset({0x0F, 0x10})  # byte count at offset 6


def request_size(buffer: bytes) -> int | None:
    """Length of the request frame at the start of ``buffer``: None while too few bytes are
    there to tell, :data:`UNKNOWN` for a function code whose length is not known."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function in _FIXED_REQUESTS:
        return 8  # unit, function, address, count/value, CRC
    if function in _COUNTED_REQUESTS:
        if len(buffer) < 7:
            return None
        return 9 + buffer[6]  # unit, function, address, count, byte count, data, CRC
    return UNKNOWN
