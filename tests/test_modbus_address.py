"""Address notation (0-based, 1-based, Modicon) as an installer pastes it from a datasheet,
golden-style: what each address resolves to, and the exact message for each mistake. Then a
poll of coils, discrete inputs and register bits written in each notation, against the sim."""

from __future__ import annotations

from typing import Any

import pytest

from config.edge import validate_edge
from config.errors import ConfigError
from config.sim import SimConfig
from drivers.modbus.address import modicon, resolve
from drivers.modbus.config import ModbusDevice
from drivers.registry import DriverRegistry
from edge.scheduler import BusWorker, ScheduledDevice
from sim.server import SimPlant
from wire.model import Group, Quality


def edge_doc(points: list[dict[str, Any]], **device: Any) -> dict[str, Any]:
    return {
        "kind": "edge",
        "agent": {"id": "gw", "site": "lab"},
        "buses": [{"name": "line", "driver": "modbus", "host": "127.0.0.1"}],
        "devices": [{"name": "meter", "bus": "line", "points": points, **device}],
    }


def resolved(base: Any, point: dict[str, Any]) -> tuple[str, int]:
    config = validate_edge(edge_doc([{"name": "p", **point}], address_base=base), "t", env={})
    device = config.devices[0]
    assert isinstance(device, ModbusDevice)
    p = device.points[0]
    return p.protocol_table, p.protocol_address


def problems(base: Any, *points: dict[str, Any]) -> list[str]:
    named = [{"name": f"p{i}", **p} for i, p in enumerate(points)]
    with pytest.raises(ConfigError) as caught:
        validate_edge(edge_doc(named, address_base=base), "t", env={})
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


GOOD = [
    # (address_base, point, (table, protocol address))
    (0, {"address": 0, "type": "uint16"}, ("holding", 0)),
    (0, {"address": 65535, "type": "uint16"}, ("holding", 65535)),
    (0, {"address": 40001, "type": "uint16"}, ("holding", 40001)),  # 0-based: taken literally
    (0, {"table": "input", "address": 9, "type": "int16"}, ("input", 9)),
    (0, {"table": "coil", "address": 0, "type": "bool"}, ("coil", 0)),
    (1, {"address": 1, "type": "uint16"}, ("holding", 0)),
    (1, {"table": "input", "address": 10, "type": "int16"}, ("input", 9)),
    (1, {"address": 65536, "type": "uint16"}, ("holding", 65535)),
    (1, {"table": "discrete", "address": 1, "type": "bool"}, ("discrete", 0)),
    ("modicon", {"address": 40001, "type": "float32"}, ("holding", 0)),
    ("modicon", {"address": 30010, "type": "int16"}, ("input", 9)),
    ("modicon", {"address": 10001, "type": "bool"}, ("discrete", 0)),
    ("modicon", {"address": "00001", "type": "bool"}, ("coil", 0)),
    ("modicon", {"address": "09999", "type": "bool"}, ("coil", 9998)),
    ("modicon", {"address": 49999, "type": "uint16"}, ("holding", 9998)),
    ("modicon", {"address": 400001, "type": "uint16"}, ("holding", 0)),
    ("modicon", {"address": 465536, "type": "uint16"}, ("holding", 65535)),
    ("modicon", {"address": 300010, "type": "uint16", "bit": 3}, ("input", 9)),
    ("modicon", {"address": "065536", "type": "bool"}, ("coil", 65535)),
    ("modicon", {"address": "40001", "type": "uint16"}, ("holding", 0)),
    ("modicon", {"address": 40001, "table": "holding", "type": "uint16"}, ("holding", 0)),
]


@pytest.mark.parametrize(("base", "point", "expected"), GOOD)
def test_address_resolves(base: Any, point: dict[str, Any], expected: tuple[str, int]) -> None:
    assert resolved(base, point) == expected


BAD = [
    (
        "modicon",
        {"address": 40001, "table": "input", "type": "uint16"},
        "devices[0].points[0].table: address 40001 is a holding register in Modicon notation "
        "(4xxxx), but table is 'input'; leave `table` out or fix the address",
    ),
    (
        "modicon",
        {"address": "00010", "table": "holding", "type": "bool"},
        "devices[0].points[0].table: address 00010 is a coil in Modicon notation (0xxxx), but "
        "table is 'holding'; leave `table` out or fix the address",
    ),
    (
        "modicon",
        {"address": 20001, "type": "uint16"},
        "devices[0].points[0].address: 20001 is not a Modicon address: the first digit names the "
        "table (0 coil, 1 discrete input, 3 input register, 4 holding register)",
    ),
    (
        "modicon",
        {"address": 40000, "type": "uint16"},
        "devices[0].points[0].address: 40000: Modicon numbers start at 1 and reach 9999 in the "
        "5-digit form",
    ),
    (
        "modicon",
        {"address": 465537, "type": "uint16"},
        "devices[0].points[0].address: 465537: Modicon numbers start at 1 and reach 65536 in the "
        "6-digit form",
    ),
    (
        "modicon",
        {"address": 10, "type": "bool"},
        "devices[0].points[0].address: 10: write Modicon coil addresses as quoted text, e.g. "
        "'00010' (YAML reads 00010 as the octal number 8)",
    ),
    (
        "modicon",
        {"address": "4001", "type": "uint16"},
        "devices[0].points[0].address: '4001' is not a Modicon address: 5 or 6 digits, e.g. "
        "'40001' or '400001'",
    ),
    (
        "modicon",
        {"address": 465536, "type": "uint32"},
        "devices[0].points[0].address: uint32 at 465536 runs past the last register (465536)",
    ),
    (
        "modicon",
        {"address": 40001, "type": "bool"},
        "devices[0].points[0].type: bool is for coil and discrete points; for one bit of a "
        "holding register use type uint16 with `bit: 0..15`",
    ),
    (
        "modicon",
        {"address": 10001, "type": "uint16"},
        "devices[0].points[0].type: a discrete point is one bit: type bool, not uint16",
    ),
    (
        0,
        {"address": "40001", "type": "uint16"},
        "devices[0].points[0].address: '40001': a quoted address is read as Modicon notation, "
        "which needs `address_base: modicon` on the device; otherwise write a number",
    ),
    (
        0,
        {"address": "4x001", "type": "uint16"},
        "devices[0].points[0].address: a quoted address must be digits only, e.g. '40001' "
        "(got '4x001')",
    ),
    (
        0,
        {"address": 400001, "type": "uint16"},
        "devices[0].points[0].address: 400001 is past the last register (65535); datasheet "
        "numbers such as 40001 or 400001 need `address_base: modicon` on the device",
    ),
    (
        0,
        {"address": 65535, "type": "uint32"},
        "devices[0].points[0].address: uint32 at 65535 runs past the last register (65535)",
    ),
    (
        1,
        {"address": 0, "type": "uint16"},
        "devices[0].points[0].address: with address_base 1 addresses start at 1 (the first "
        "register), got 0",
    ),
    (
        1,
        {"address": 65536, "type": "float32"},
        "devices[0].points[0].address: float32 at 65536 runs past the last register (65536)",
    ),
    (
        0,
        {"address": 0, "type": "float32", "bit": 2},
        "devices[0].points[0].bit: only a uint16 or int16 point can name a bit, not float32",
    ),
    (
        0,
        {"address": 0, "type": "uint16", "bit": 2, "scale": 0.1},
        "devices[0].points[0].scale: a true/false point cannot have scale or offset",
    ),
    (
        0,
        {"table": "coil", "address": 0, "type": "bool", "bit": 1},
        "devices[0].points[0].bit: a coil point is already a single bit",
    ),
    (
        0,
        {"address": 0, "type": "uint16", "bit": 16},
        "devices[0].points[0].bit: Input should be less than or equal to 15 (got 16)",
    ),
    (
        "hex",
        {"address": 0, "type": "uint16"},
        "devices[0].address_base: Input should be 0, 1 or 'modicon' (got 'hex')",
    ),
]


@pytest.mark.parametrize(("base", "point", "message"), BAD)
def test_address_mistake_is_named(base: Any, point: dict[str, Any], message: str) -> None:
    assert problems(base, point) == [message]


def test_every_point_with_a_problem_is_reported_at_once() -> None:
    assert problems(
        "modicon",
        {"address": 40001, "type": "uint16"},
        {"address": 40001, "table": "coil", "type": "uint16"},
        {"address": -1, "type": "uint16"},
        {"address": 30001, "type": "uint16"},
        {"address": 0, "type": "uint16"},
    ) == [
        "devices[0].points[1].table: address 40001 is a holding register in Modicon notation "
        "(4xxxx), but table is 'coil'; leave `table` out or fix the address",
        "devices[0].points[2].address: Input should be greater than or equal to 0 (got -1)",
        "devices[0].points[4].address: 0: write Modicon coil addresses as quoted text, e.g. "
        "'00010' (YAML reads 00010 as the octal number 8)",
    ]


def test_resolve_and_modicon_are_inverse() -> None:
    for table in ("coil", "discrete", "input", "holding"):
        for protocol in (0, 1, 9998):
            for width in (5, 6):
                text = modicon(table, protocol, width)  # type: ignore[arg-type]
                assert resolve("modicon", text, None) == (table, protocol)
    assert modicon("holding", 0) == "40001"
    assert modicon("input", 9) == "30010"
    assert modicon("coil", 65535, 6) == "065536"


# -- end to end: bits in every notation, against the simulator -------------------------------

SIM = {
    "kind": "sim",
    "devices": [
        {
            "name": "plc",
            "unit_id": 4,
            "registers": [
                {"table": "coil", "address": 0, "type": "bool", "value": True},
                {"table": "coil", "address": 1, "type": "bool", "value": False},
                *(
                    {"table": "coil", "address": a, "type": "bool", "value": False}
                    for a in range(2, 9)
                ),
                {"table": "coil", "address": 9, "type": "bool", "value": True},
                {"table": "discrete", "address": 0, "type": "bool", "value": 1},
                {"table": "discrete", "address": 1, "type": "bool", "value": 0},
                {
                    "table": "holding",
                    "address": 0,
                    "type": "uint16",
                    "value": 0b1010_0000_0000_0101,
                },
                {"table": "holding", "address": 1, "type": "float32", "value": 230.5},
                {"table": "input", "address": 9, "type": "int16", "value": -7},
            ],
        }
    ],
}
EXPECTED = {
    "run": True,
    "stop": False,
    "trip": True,
    "door": True,
    "smoke": False,
    "status": 0b1010_0000_0000_0101,
    "ready": True,
    "fault": False,
    "remote": True,
    "high": True,
    "voltage": 230.5,
    "temp": -7,
}
NOTATIONS: dict[Any, list[dict[str, Any]]] = {
    0: [
        {"name": "run", "table": "coil", "address": 0, "type": "bool"},
        {"name": "stop", "table": "coil", "address": 1, "type": "bool"},
        {"name": "trip", "table": "coil", "address": 9, "type": "bool"},
        {"name": "door", "table": "discrete", "address": 0, "type": "bool"},
        {"name": "smoke", "table": "discrete", "address": 1, "type": "bool"},
        {"name": "status", "address": 0, "type": "uint16"},
        {"name": "ready", "address": 0, "type": "uint16", "bit": 0},
        {"name": "fault", "address": 0, "type": "uint16", "bit": 1},
        {"name": "remote", "address": 0, "type": "uint16", "bit": 13},
        {"name": "high", "address": 0, "type": "int16", "bit": 15},
        {"name": "voltage", "address": 1, "type": "float32"},
        {"name": "temp", "table": "input", "address": 9, "type": "int16"},
    ],
    1: [
        {"name": "run", "table": "coil", "address": 1, "type": "bool"},
        {"name": "stop", "table": "coil", "address": 2, "type": "bool"},
        {"name": "trip", "table": "coil", "address": 10, "type": "bool"},
        {"name": "door", "table": "discrete", "address": 1, "type": "bool"},
        {"name": "smoke", "table": "discrete", "address": 2, "type": "bool"},
        {"name": "status", "address": 1, "type": "uint16"},
        {"name": "ready", "address": 1, "type": "uint16", "bit": 0},
        {"name": "fault", "address": 1, "type": "uint16", "bit": 1},
        {"name": "remote", "address": 1, "type": "uint16", "bit": 13},
        {"name": "high", "address": 1, "type": "int16", "bit": 15},
        {"name": "voltage", "address": 2, "type": "float32"},
        {"name": "temp", "table": "input", "address": 10, "type": "int16"},
    ],
    "modicon": [
        {"name": "run", "address": "00001", "type": "bool"},
        {"name": "stop", "address": "00002", "type": "bool"},
        {"name": "trip", "address": "000010", "type": "bool"},
        {"name": "door", "address": 10001, "type": "bool"},
        {"name": "smoke", "address": 100002, "type": "bool"},
        {"name": "status", "address": 40001, "type": "uint16"},
        {"name": "ready", "address": 40001, "type": "uint16", "bit": 0},
        {"name": "fault", "address": 40001, "type": "uint16", "bit": 1},
        {"name": "remote", "address": 400001, "type": "uint16", "bit": 13},
        {"name": "high", "address": 40001, "table": "holding", "type": "int16", "bit": 15},
        {"name": "voltage", "address": 40002, "type": "float32"},
        {"name": "temp", "address": 30010, "type": "int16"},
    ],
}


@pytest.mark.parametrize("base", list(NOTATIONS), ids=["0-based", "1-based", "modicon"])
async def test_coils_discretes_and_bits_poll_in_every_notation(base: Any) -> None:
    async with SimPlant(SimConfig.model_validate(SIM)) as plant:
        _host, port, unit = plant.endpoints()["plc"]
        doc = edge_doc(NOTATIONS[base], address_base=base, unit_id=unit)
        doc["buses"][0].update(port=port, timeout=0.5)
        config = validate_edge(doc, "t", env={})
        plugin = DriverRegistry().get("modbus")
        program = plugin.compile_device(config.devices[0])
        worker = BusWorker(
            "line",
            plugin.open_bus(config.buses[0]),
            [ScheduledDevice(config.devices[0], program)],
            lambda groups: None,
        )
        groups: list[Group] = await worker.poll(worker.devices[0])
        requests = plant.stats()["plc"].requests
    readings = {r.point: r for g in groups for r in g.readings()}
    assert {p: r.value for p, r in readings.items()} == EXPECTED
    assert all(r.quality is Quality.GOOD for r in readings.values())
    assert all(type(readings[p].value) is bool for p in ("run", "door", "ready", "high"))
    # coil 0..9, discrete 0..1, holding 0..2 (the word and its four bits in one read), input 9
    assert requests == 4
    assert [(r.table, r.address, r.count) for r in program.requests] == [
        ("coil", 0, 10),
        ("discrete", 0, 2),
        ("holding", 0, 3),
        ("input", 9, 1),
    ]
