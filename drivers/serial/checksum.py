"""Checksums of serial frames: NMEA XOR, sum8, CRC-16/MODBUS and CRC-16/CCITT-FALSE.

A frame with a checksum is ``body + separator + checksum``. By default (what most ASCII
instruments and the simulator send) the separator is ``*`` and the checksum is written as
upper-case hex digits: 2 for the 8-bit sums, 4 for the CRCs, the number's high digit first.
``format: binary-be`` / ``binary-le`` take the checksum as raw bytes instead (1 or 2, high or
low byte first: Modbus RTU sends its CRC low byte first). NMEA sentences start with ``$`` (or
``!`` for AIS), which the XOR does not cover; a leading ``$``/``!`` is skipped for ``nmea``.

Only the frame body is covered, never the separator, the checksum itself or the terminator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

ChecksumName = Literal["none", "nmea", "sum8", "crc16-modbus", "crc16-ccitt"]
ChecksumFormat = Literal["hex", "binary-be", "binary-le"]

#: Reasons a bad frame's readings carry (the counter of each is kept by the program).
MISMATCH: Final = "checksum mismatch"
MISSING: Final = "checksum missing"


def xor8(data: bytes) -> int:
    """NMEA 0183: XOR of every byte between ``$`` and ``*``."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def sum8(data: bytes) -> int:
    """Sum of the bytes modulo 256."""
    return sum(data) & 0xFF


def _table(poly: int, reflected: bool) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        if reflected:
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        else:
            crc = byte << 8
            for _ in range(8):
                crc = ((crc << 1) ^ poly) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_MODBUS_TABLE: Final = _table(0xA001, reflected=True)  # 0x8005 reflected
_CCITT_TABLE: Final = _table(0x1021, reflected=False)


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: poly 0x8005 reflected, init 0xFFFF, no final XOR ("123456789" → 0x4B37)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _MODBUS_TABLE[(crc ^ byte) & 0xFF]
    return crc


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected ("123456789" → 0x29B1)."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CCITT_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


#: name → (function, size of the checksum in bytes)
ALGORITHMS: Final[dict[str, tuple[Callable[[bytes], int], int]]] = {
    "nmea": (xor8, 1),
    "sum8": (sum8, 1),
    "crc16-modbus": (crc16_modbus, 2),
    "crc16-ccitt": (crc16_ccitt_false, 2),
}

_NMEA_STARTS: Final = (b"$", b"!")
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")


class ChecksumError(Exception):
    """The frame's checksum is wrong or absent; ``reason`` is what its readings carry."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, slots=True)
class Checksum:
    """How one device's frames carry their checksum; ``name`` ``none`` checks nothing."""

    name: ChecksumName = "none"
    separator: bytes = b"*"
    format: ChecksumFormat = "hex"

    @property
    def _size(self) -> int:
        """Characters (hex) or bytes (binary) the checksum occupies on the wire."""
        width = ALGORITHMS[self.name][1]
        return width * 2 if self.format == "hex" else width

    def compute(self, body: bytes) -> int:
        return ALGORITHMS[self.name][0](body)

    def render(self, value: int) -> bytes:
        width = ALGORITHMS[self.name][1]
        if self.format == "hex":
            return f"{value:0{width * 2}X}".encode("ascii")
        order: Literal["big", "little"] = "big" if self.format == "binary-be" else "little"
        return value.to_bytes(width, order)

    def append(self, body: bytes) -> bytes:
        """The frame as a device sends it, without the terminator (``nmea``: with its ``$``)."""
        if self.name == "none":
            return body
        start = b"$" if self.name == "nmea" else b""
        return start + body + self.separator + self.render(self.compute(body))

    def verify(self, frame: bytes) -> bytes:
        """The body of a frame whose checksum is right; raise :class:`ChecksumError` if not."""
        if self.name == "none":
            return frame
        if self.name == "nmea" and frame[:1] in _NMEA_STARTS:
            frame = frame[1:]
        size = self._size
        cut = len(frame) - size - len(self.separator)
        if cut < 0 or frame[cut : cut + len(self.separator)] != self.separator:
            raise ChecksumError(
                MISSING,
                f"expected {self.separator.decode('latin-1')!r} and {size} "
                f"{'hex digits' if self.format == 'hex' else 'bytes'} at the end of the frame",
            )
        body, given = frame[:cut], frame[cut + len(self.separator) :]
        expected = self.compute(body)
        if self.format == "hex":
            if not all(c in _HEX_DIGITS for c in given):
                raise ChecksumError(MISMATCH, f"{given!r} is not {size} hex digits")
            value = int(given, 16)
        else:
            order: Literal["big", "little"] = "big" if self.format == "binary-be" else "little"
            value = int.from_bytes(given, order)
        if value != expected:
            raise ChecksumError(
                MISMATCH,
                f"frame says {given.decode('latin-1')!r}, computed "
                f"{self.render(expected).decode('latin-1')!r}",
            )
        return body
