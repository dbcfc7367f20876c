"""The request planner: no request over the device's or the protocol's limits, every point
covered exactly once (register, bit-of-register, coil and discrete points alike), and the
splits learned from refusals keep both properties. Plus write planning (FC5/6/15/16)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DeviceException, DeviceTimeout
from drivers.modbus.codec import RegisterType, WordOrder, decode
from drivers.modbus.config import ModbusDevice
from drivers.modbus.planner import (
    FUNCTION_CODES,
    MAX_WRITE_COILS,
    ReadRequest,
    WriteError,
    plan_coil_writes,
    plan_requests,
    plan_write,
)
from drivers.modbus.program import ModbusProgram

PROTOCOL_LIMIT = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}
REGISTER_KINDS = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@st.composite
def points(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 60))
    out: list[dict[str, Any]] = []
    for index in range(count):
        table = draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
        # Addresses cluster so that merging, gaps and the limits all come into play.
        base = draw(st.sampled_from([0, 100, 3000, 65000]))
        address = base + draw(st.integers(0, 400))
        point: dict[str, Any] = {"name": f"p{index}", "table": table}
        if table in ("coil", "discrete"):
            point.update(address=min(address, 65535), type="bool")
        else:
            shape = draw(st.sampled_from(["number", "bit", "string"]))
            if shape == "bit":
                point.update(type="uint16", bit=draw(st.integers(0, 15)))
            elif shape == "string":
                point.update(type="string", length=draw(st.integers(1, 125)))
            else:
                point.update(type=draw(st.sampled_from(REGISTER_KINDS)))
            point["address"] = min(address, 65536 - size_of(point))
        out.append(point)
    return out


SIZES = {"int64": 4, "uint64": 4, "float64": 4, "int32": 2, "uint32": 2, "float32": 2}


def size_of(point: dict[str, Any]) -> int:
    if point["table"] in ("coil", "discrete"):
        return 1
    return int(point.get("length") or SIZES.get(point["type"], 1))


@st.composite
def devices(draw: st.DrawFn) -> ModbusDevice:
    drawn = draw(points())
    # The device must be able to read its largest point in one request (config checks it).
    largest = max(size_of(p) for p in drawn)
    return ModbusDevice.model_validate(
        {
            "name": "d",
            "bus": "b",
            "unit_id": draw(st.integers(1, 247)),
            "max_registers": draw(st.integers(largest, 125)),
            "max_bits": draw(st.integers(1, 2000)),
            "max_gap": draw(st.integers(0, 124)),
            "points": drawn,
        }
    )


def limit_of(device: ModbusDevice, table: str) -> int:
    own = device.max_bits if table in ("coil", "discrete") else device.max_registers
    return min(own, PROTOCOL_LIMIT[table])


def check_plan(device: ModbusDevice, requests: list[ReadRequest]) -> None:
    seen: dict[int, int] = {}
    for request in requests:
        assert request.unit_id == device.unit_id
        assert request.function_code == FUNCTION_CODES[request.table]
        assert request.points, "a request without points"
        for point in request.points:
            seen[id(point)] = seen.get(id(point), 0) + 1
            assert point.protocol_table == request.table
            start, end = point.protocol_address, point.protocol_address + point.count
            assert request.address <= start and end <= request.address + request.count
        starts = [p.protocol_address for p in request.points]
        ends = [p.protocol_address + p.count for p in request.points]
        # The request spans exactly its points: no wasted registers at either end.
        assert request.address == min(starts)
        assert request.address + request.count == max(ends)
        assert request.count <= limit_of(device, request.table), request
        assert request.address + request.count <= 65536
    assert sorted(seen) == sorted(id(p) for p in device.points)
    assert set(seen.values()) == {1}, "a point in more than one request"


@settings(max_examples=400, deadline=None)
@given(devices())
def test_plan_respects_limits_and_covers_every_point_once(device: ModbusDevice) -> None:
    check_plan(device, plan_requests(device))


@settings(max_examples=200, deadline=None)
@given(devices(), st.data())
def test_splits_learned_from_refusals_keep_the_plan_sound(
    device: ModbusDevice, data: st.DataObject
) -> None:
    program = ModbusProgram(device)
    for _ in range(data.draw(st.integers(1, 6))):
        requests = list(program.requests)
        victim = data.draw(st.sampled_from(requests))
        halves = program.refine(victim, DeviceException(2, "illegal data address"))
        if len(victim.points) == 1:
            assert halves is None
        else:
            assert halves is not None and len(halves) == 2
            assert sorted(id(p) for h in halves for p in h.points) == sorted(
                id(p) for p in victim.points
            )
        check_plan(device, list(program.requests))
    # Only exception 2 splits; a timeout or another exception is reported as it is.
    some = program.requests[0]
    assert program.refine(some, DeviceTimeout()) is None
    assert program.refine(some, DeviceException(4)) is None


def test_a_point_larger_than_one_request_is_a_config_error() -> None:
    base = {"name": "d", "bus": "b", "max_registers": 8}
    with pytest.raises(ValueError, match=r"string needs 10 registers, more than one request"):
        ModbusDevice.model_validate(
            {**base, "points": [{"name": "s", "address": 0, "type": "string", "length": 10}]}
        )
    with pytest.raises(ValueError, match=r"float64 needs 4 registers, more than one request"):
        ModbusDevice.model_validate(
            {**base, "max_registers": 3, "points": [{"name": "f", "address": 0, "type": "float64"}]}
        )


def test_bit_points_of_one_register_share_its_read() -> None:
    device = ModbusDevice.model_validate(
        {
            "name": "d",
            "bus": "b",
            "points": [
                {"name": "status", "address": 7, "type": "uint16"},
                *({"name": f"b{n}", "address": 7, "type": "uint16", "bit": n} for n in range(16)),
                {"name": "alarm", "address": 8, "type": "int16", "bit": 15},
                # Coils 100 apart (within max_gap) up to 1999: one 2000-bit read, the limit.
                *(
                    {"name": f"c{a}", "table": "coil", "address": a, "type": "bool"}
                    for a in [*range(0, 2000, 100), 1999]
                ),
                {"name": "far", "table": "coil", "address": 2000, "type": "bool"},
                {"name": "door", "table": "discrete", "address": 4, "type": "bool"},
            ],
            "max_gap": 124,
        }
    )
    spans = [(r.table, r.address, r.count, len(r.points)) for r in plan_requests(device)]
    assert spans == [
        ("coil", 0, 2000, 21),
        ("coil", 2000, 1, 1),
        ("discrete", 4, 1, 1),
        ("holding", 7, 2, 18),  # one read for the word and its 17 bits
    ]
    program = ModbusProgram(device)
    word = 0b1000_0000_0010_0101
    holding = program.requests[3]
    got = {e["p"]: e["v"] for e in program.decode(holding, [word, 0x8000], 0).points}
    assert got["status"] == word
    assert [got[f"b{n}"] for n in range(16)] == [bool(word >> n & 1) for n in range(16)]
    assert got["alarm"] is True
    coils = program.requests[0]
    answer = [False] * 2000
    answer[1999] = True
    got = {e["p"]: e["v"] for e in program.decode(coils, answer, 0).points}
    assert got == {**{f"c{a}": False for a in range(0, 2000, 100)}, "c1999": True}
    short = program.decode(coils, answer[:8], 0).points
    assert {e["r"] for e in short} == {"frame error: 8 bits in answer, 2000 asked"}


def test_bit_of_a_byte_swapped_register() -> None:
    device = ModbusDevice.model_validate(
        {
            "name": "d",
            "bus": "b",
            "byte_order": "BADC",
            "points": [
                {"name": "v", "address": 0, "type": "uint16"},
                {"name": "b0", "address": 0, "type": "uint16", "bit": 0},
                {"name": "b8", "address": 0, "type": "uint16", "bit": 8},
            ],
        }
    )
    program = ModbusProgram(device)
    (request,) = program.requests
    # The device sends its value 0x0001 with the bytes swapped: 0x0100 on the wire.
    got = {e["p"]: e["v"] for e in program.decode(request, [0x0100], 0).points}
    assert got == {"v": 1, "b0": True, "b8": False}
    assert decode(RegisterType.UINT16, WordOrder.BADC, [0x0100]) == 1


def writer() -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": "d",
            "bus": "b",
            "unit_id": 7,
            "byte_order": "CDAB",
            "points": [
                {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1},
                {"name": "limit", "address": 11, "type": "float32"},
                {"name": "total", "address": 13, "type": "uint32", "order": "ABCD"},
                {"name": "label", "address": 20, "type": "string", "length": 2},
                {"name": "pump", "table": "coil", "address": 5, "type": "bool"},
                {"name": "door", "table": "discrete", "address": 0, "type": "bool"},
                {"name": "temp", "table": "input", "address": 0, "type": "int16"},
                {"name": "flag", "address": 30, "type": "uint16", "bit": 3},
            ],
        }
    )


def test_write_planning_picks_the_function_and_encodes_like_the_reader() -> None:
    device = writer()
    point = {p.name: p for p in device.points}
    one = plan_write(device, point["setpoint"], -12.3)
    assert (one.function_code, one.address, one.values, one.unit_id) == (6, 10, (0xFF85,), 7)
    limit = plan_write(device, point["limit"], 1.5)  # 0x3FC00000, words swapped (CDAB)
    assert (limit.function_code, limit.address, limit.values) == (16, 11, (0x0000, 0x3FC0))
    total = plan_write(device, point["total"], 70000)
    assert total.values == (0x0001, 0x1170)
    label = plan_write(device, point["label"], "AB")
    assert label.values == (0x0000, 0x4142)  # CDAB applies to strings too
    coil = plan_write(device, point["pump"], True)
    assert (coil.function_code, coil.address, coil.values) == (5, 5, (True,))
    many = plan_coil_writes(device, 0, [True] * (MAX_WRITE_COILS + 1))
    assert [(w.function_code, w.address, len(w.values)) for w in many] == [
        (15, 0, MAX_WRITE_COILS),
        (15, MAX_WRITE_COILS, 1),
    ]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("door", True, "door: discrete points are read-only"),
        ("temp", 1, "temp: input points are read-only"),
        ("flag", True, "flag: writing one bit of a register needs a read-modify-write"),
        ("pump", 2, "pump: a coil takes true or false, not 2"),
        ("setpoint", 4000, "setpoint: 4000 is raw 40000, outside int16 (-32768..32767)"),
        ("setpoint", True, "setpoint: a int16 point takes a number, not True"),
        ("limit", float("nan"), "limit: nan is not a finite number"),
        ("label", "ABCDE", "label: 'ABCDE' does not fit in 2 registers"),
    ],
)
def test_write_planning_refuses_what_cannot_be_written(name: str, value: Any, message: str) -> None:
    device = writer()
    point = next(p for p in device.points if p.name == name)
    with pytest.raises(WriteError) as caught:
        plan_write(device, point, value)
    assert str(caught.value).startswith(message)
