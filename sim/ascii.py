"""Modbus ASCII framing: ``:`` + hex(unit id, PDU, LRC) + CR LF.

Each byte travels as two upper-case hex digits; the LRC is the two's complement of the sum
of the unit id and PDU bytes. Frames are found by their start and end markers, so silence
plays no part.
"""

from __future__ import annotations

from typing import Final

START: Final = b":"
END: Final = b"\r\n"


def lrc(data: bytes) -> int:
    """Longitudinal redundancy check of ``data`` (unit id and PDU)."""
    return -sum(data) & 0xFF


def encode(unit: int, pdu: bytes, *, corrupt: bool = False) -> bytes:
    """An ASCII frame; with ``corrupt`` its LRC is wrong."""
    body = bytes((unit,)) + pdu
    check = lrc(body) ^ (0xFF if corrupt else 0)
    return START + (body + bytes((check,))).hex().upper().encode("ascii") + END


class BadFrame(ValueError):
    """A delimited frame that is not valid ASCII Modbus (bad hex, too short, bad LRC)."""


def decode(frame: bytes) -> tuple[int, bytes]:
    """(unit id, PDU) of a frame between its ``:`` and CR LF (markers excluded)."""
    try:
        raw = bytes.fromhex(frame.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadFrame("not hexadecimal") from exc
    if len(raw) < 3:
        raise BadFrame("too short")
    if lrc(raw[:-1]) != raw[-1]:
        raise BadFrame("bad LRC")
    return raw[0], raw[1:-1]


def split(buffer: bytes) -> tuple[list[bytes], bytes, int]:
    """Complete frames in ``buffer`` (without markers), the unfinished rest, and how many
    bytes outside any frame were skipped (line noise)."""
    frames: list[bytes] = []
    skipped = 0
    while True:
        start = buffer.find(START)
        if start < 0:
            return frames, b"", skipped + len(buffer)
        skipped += start
        end = buffer.find(END, start)
        if end < 0:
            return frames, buffer[start:], skipped
        restart = buffer.rfind(START, start + 1, end)
        if restart >= 0:
            # A new ':' before the end: the frame before it was cut off; devices start over.
            skipped += restart - start
            start = restart
        frames.append(buffer[start + 1 : end])
        buffer = buffer[end + len(END) :]
