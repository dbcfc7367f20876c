"""The PDU layer and the register image, without any network."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from config.sim import SimDevice
from drivers.modbus.codec import RegisterType, WordOrder, decode
from sim.image import RegisterImage
from sim.pdu import handle_pdu


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def image(registers: list[dict[str, Any]], clock: FakeClock | None = None) -> RegisterImage:
    device = SimDevice.model_validate({"name": "d", "registers": registers})
    return RegisterImage(device, clock or FakeClock())


def read(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


def registers_of(answer: bytes) -> list[int]:
    assert answer[1] == len(answer) - 2
    return list(struct.unpack(f">{answer[1] // 2}H", answer[2:]))


MAP = [
    {"address": 0, "type": "uint16", "value": 7},
    {"address": 1, "type": "float32", "value": 1.5},
    {"address": 3, "type": "int16", "value": -2},
    # 4 and 5 are a hole
    {"address": 6, "type": "uint16", "value": 9},
    {"table": "input", "address": 0, "type": "uint16", "value": 11},
]


def test_read_holding_across_registers() -> None:
    answer = handle_pdu(image(MAP), read(3, 0, 4))
    regs = registers_of(answer)
    assert answer[0] == 3
    assert regs[0] == 7
    assert decode(RegisterType.FLOAT32, WordOrder.ABCD, regs[1:3]) == 1.5
    assert regs[3] == 0xFFFE


def test_read_middle_of_a_value() -> None:
    # Reading the second word of a float alone is allowed (many devices allow it too).
    space = image([{"address": 0, "type": "float32", "value": 1.1}])
    assert registers_of(handle_pdu(space, read(3, 1, 1))) == [0xCCCD]  # 1.1 = 0x3F8CCCCD


def test_read_input_table_is_separate() -> None:
    space = image(MAP)
    assert registers_of(handle_pdu(space, read(4, 0, 1))) == [11]
    assert handle_pdu(space, read(4, 1, 1)) == b"\x84\x02"


@pytest.mark.parametrize(
    ("address", "count"),
    [(4, 1), (3, 2), (5, 2), (0, 7), (7, 1), (65535, 1), (65535, 2), (100, 125)],
)
def test_hole_is_illegal_data_address(address: int, count: int) -> None:
    assert handle_pdu(image(MAP), read(3, address, count)) == b"\x83\x02"


@pytest.mark.parametrize("count", [0, 126, 0xFFFF])
def test_bad_count_is_illegal_data_value(count: int) -> None:
    assert handle_pdu(image(MAP), read(3, 0, count)) == b"\x83\x03"
    assert handle_pdu(image(MAP), read(4, 0, count)) == b"\x84\x03"


@pytest.mark.parametrize("function", [1, 2, 5, 7, 15, 17, 22, 23, 43, 0x7F])
def test_other_functions_are_illegal(function: int) -> None:
    assert handle_pdu(image(MAP), bytes((function, 0, 0, 0, 1))) == bytes((function | 0x80, 1))


def test_truncated_request_is_illegal_data_value() -> None:
    assert handle_pdu(image(MAP), b"\x03\x00\x00\x00") == b"\x83\x03"
    assert handle_pdu(image(MAP), b"\x10\x00\x00") == b"\x90\x03"


def test_write_single_register() -> None:
    space = image(MAP)
    request = b"\x06\x00\x06\x12\x34"
    assert handle_pdu(space, request) == request
    assert registers_of(handle_pdu(space, read(3, 6, 1))) == [0x1234]


def test_write_single_register_to_hole_or_input() -> None:
    space = image(MAP)
    assert handle_pdu(space, b"\x06\x00\x04\x00\x01") == b"\x86\x02"
    # Input register 0 exists, but FC6 writes holding registers, where 0 is a uint16
    # that is written; the input register must keep its value.
    handle_pdu(space, b"\x06\x00\x00\x00\x01")
    assert registers_of(handle_pdu(space, read(4, 0, 1))) == [11]


def test_write_multiple_registers() -> None:
    space = image(MAP)
    words = struct.unpack(">2H", struct.pack(">f", -7.25))
    request = struct.pack(">BHHB4H", 16, 0, 4, 8, 1, *words, 5)
    assert handle_pdu(space, request) == request[:5]
    regs = registers_of(handle_pdu(space, read(3, 0, 4)))
    assert regs[0] == 1
    assert decode(RegisterType.FLOAT32, WordOrder.ABCD, regs[1:3]) == -7.25
    assert regs[3] == 5


def test_write_multiple_into_hole_changes_nothing() -> None:
    space = image(MAP)
    request = struct.pack(">BHHB3H", 16, 3, 3, 6, 1, 2, 3)  # 3 exists, 4 and 5 do not
    assert handle_pdu(space, request) == b"\x90\x02"
    assert registers_of(handle_pdu(space, read(3, 3, 1))) == [0xFFFE]


@pytest.mark.parametrize(
    "request_pdu",
    [
        struct.pack(">BHHB", 16, 0, 0, 0),  # count 0
        struct.pack(">BHHB2H", 16, 0, 2, 2, 1, 2),  # byte count does not match count
        struct.pack(">BHHB2H", 16, 0, 2, 4, 1, 2) + b"\x00",  # trailing byte
        struct.pack(">BHHB", 16, 0, 124, 248) + bytes(248),  # more than 123 registers
    ],
)
def test_write_multiple_bad_value(request_pdu: bytes) -> None:
    assert handle_pdu(image(MAP), request_pdu) == b"\x90\x03"


def test_write_freezes_a_waveform() -> None:
    clock = FakeClock()
    space = image(
        [{"address": 0, "type": "uint32", "value": {"wave": "counter", "start": 0, "step": 1}}],
        clock,
    )
    clock.now = 5
    assert registers_of(handle_pdu(space, read(3, 0, 2))) == [0, 5]
    # Writing only the high word keeps the low word as it was at the time of the write.
    handle_pdu(space, b"\x06\x00\x00\x00\x01")
    clock.now = 50
    assert registers_of(handle_pdu(space, read(3, 0, 2))) == [1, 5]


def test_cached_answers_follow_writes() -> None:
    space = image(MAP)
    assert registers_of(handle_pdu(space, read(3, 0, 1))) == [7]
    handle_pdu(space, b"\x06\x00\x00\x00\x08")
    assert registers_of(handle_pdu(space, read(3, 0, 1))) == [8]


def test_waveform_is_evaluated_at_request_time() -> None:
    clock = FakeClock()
    space = image(
        [
            {"address": 0, "type": "uint16", "value": 1},
            {"address": 1, "type": "uint16", "value": {"wave": "ramp", "start": 0, "slope": 2}},
        ],
        clock,
    )
    assert registers_of(handle_pdu(space, read(3, 0, 2))) == [1, 0]
    clock.now = 21
    assert registers_of(handle_pdu(space, read(3, 0, 2))) == [1, 42]
