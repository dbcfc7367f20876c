"""Client-side Modbus PDUs: the requests the agent sends and the parsing of their answers.

A PDU is the function code and its data, without MBAP header, unit id or CRC; the framing
lives in :mod:`drivers.modbus.mbap`. Parsing raises the driver's own errors
(:class:`~drivers.errors.DeviceException` for an exception answer,
:class:`~drivers.errors.FrameError` for an answer that does not fit the request), so a
transport only has to hand over the PDU it received.

Read answers are built for the hot path: one ``struct`` call per request, the header bytes
of each request packed once (:func:`read_pdu` results are cached by the caller).
"""

from __future__ import annotations

import struct
from typing import Final

from drivers.errors import DeviceException, FrameError
from drivers.modbus.codec import COIL_OFF, COIL_ON, pack_bits, unpack_bits

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: FC43 (encapsulated interface transport) with MEI type 14: read device identification.
READ_DEVICE_ID: Final = 0x2B
MEI_READ_DEVICE_ID: Final = 0x0E

_ADDR_COUNT = struct.Struct(">BHH")
_ADDR_COUNT_BYTES = struct.Struct(">BHHB")
#: ``>nH`` unpackers by register count (1..125), built once.
_WORDS: Final = [struct.Struct(f">{n}H") for n in range(126)]


def frame_error(detail: str) -> FrameError:
    """A FrameError whose reason carries the detail: ``frame error: bad CRC``."""
    error = FrameError(detail)
    error.reason = f"frame error: {detail}"
    return error


def read_pdu(function: int, address: int, count: int) -> bytes:
    """FC1–FC4: read ``count`` bits or registers from ``address``."""
    return _ADDR_COUNT.pack(function, address, count)


def write_pdu(function: int, address: int, values: tuple[int, ...]) -> bytes:
    """FC5, FC6, FC15 or FC16 carrying ``values`` (coil states or register words)."""
    if function == 5:
        return _ADDR_COUNT.pack(5, address, COIL_ON if values[0] else COIL_OFF)
    if function == 6:
        return _ADDR_COUNT.pack(6, address, values[0])
    if function == 15:
        data = pack_bits([bool(v) for v in values])
        return _ADDR_COUNT_BYTES.pack(15, address, len(values), len(data)) + data
    data = struct.pack(f">{len(values)}H", *values)
    return _ADDR_COUNT_BYTES.pack(16, address, len(values), len(data)) + data


def identification_pdu(object_id: int, read_code: int = 1) -> bytes:
    """FC43 / MEI 14: read device identification from ``object_id`` (stream access)."""
    return bytes((READ_DEVICE_ID, MEI_READ_DEVICE_ID, read_code, object_id))


def check_function(answer: bytes, function: int) -> None:
    """Raise for an exception answer or an answer to another function."""
    if not answer:
        raise frame_error("empty answer")
    fc = answer[0]
    if fc == function:
        return
    if fc == function | 0x80 and len(answer) >= 2:
        code = answer[1]
        raise DeviceException(code, EXCEPTION_NAMES.get(code, ""))
    raise frame_error(f"answer to function {fc & 0x7F}, asked {function}")


def parse_registers(answer: bytes, function: int) -> list[int]:
    """The register words of an FC3/FC4 answer (as many as it carries: the program reports
    a short answer as a frame error that names both counts)."""
    check_function(answer, function)
    size = len(answer)
    if size < 2 or answer[1] != size - 2 or size & 1:
        raise frame_error(f"malformed answer to function {function} ({size} bytes)")
    return list(_WORDS[(size - 2) >> 1].unpack_from(answer, 2))


def parse_bits(answer: bytes, function: int, count: int) -> list[bool]:
    """The first ``count`` bits of an FC1/FC2 answer (fewer if it carries fewer)."""
    check_function(answer, function)
    size = len(answer)
    if size < 2 or answer[1] != size - 2:
        raise frame_error(f"malformed answer to function {function} ({size} bytes)")
    data = answer[2:]
    return unpack_bits(data, min(count, len(data) * 8))


def check_write_echo(answer: bytes, function: int, address: int) -> None:
    """A write answer repeats the function code and the address."""
    check_function(answer, function)
    if len(answer) != 5 or int.from_bytes(answer[1:3], "big") != address:
        raise frame_error(f"malformed answer to function {function} ({len(answer)} bytes)")


def parse_identification(answer: bytes) -> tuple[dict[int, bytes], bool, int]:
    """``({object id: value}, more follows, next object id)`` of an FC43 / MEI 14 answer."""
    check_function(answer, READ_DEVICE_ID)
    if len(answer) < 7 or answer[1] != MEI_READ_DEVICE_ID:
        raise frame_error(f"malformed device identification answer ({len(answer)} bytes)")
    more, following, count = answer[4] == 0xFF, answer[5], answer[6]
    objects: dict[int, bytes] = {}
    at = 7
    for _ in range(count):
        if at + 2 > len(answer) or at + 2 + answer[at + 1] > len(answer):
            raise frame_error("device identification answer cut short")
        object_id, length = answer[at], answer[at + 1]
        objects[object_id] = objects.get(object_id, b"") + answer[at + 2 : at + 2 + length]
        at += 2 + length
    return objects, more, following
