"""Serial line settings mean the same wherever they are written: the agent's Modbus bus and the
simulator's Modbus device time one line alike (``config.device.ModbusLineTiming``), and every
model with a baudrate refuses the same values with the same words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from config.edge import validate_edge
from config.errors import ConfigError
from config.sim import load_sim_config
from drivers.modbus.config import ModbusBus

REGISTER = {"address": 0, "type": "uint16", "value": 1}


def edge_problems(bus: dict[str, Any], device: dict[str, Any]) -> list[str]:
    doc = {
        "kind": "edge",
        "agent": {"id": "gw", "site": "lab"},
        "buses": [{"name": "line", **bus}],
        "devices": [{"name": "d", "bus": "line", **device}],
    }
    try:
        validate_edge(doc, "t", env={})
    except ConfigError as exc:
        return [p.render() for p in exc.problems]
    return []


def sim_problems(tmp_path: Path, doc: dict[str, Any]) -> list[str]:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump({"kind": "sim", **doc}), encoding="utf-8")
    try:
        load_sim_config(path, env={})
    except ConfigError as exc:
        return [p.render() for p in exc.problems]
    return []


MODBUS_DEVICE = {"points": [{"name": "p", "address": 0, "type": "uint16"}]}
SERIAL_DEVICE = {
    "mode": "stream",
    "frames": [{"parse": {"type": "fields"}, "points": [{"name": "p", "field": 0}]}],
}
INSTRUMENT = {"name": "i", "mode": "stream", "frames": ["x"]}


@pytest.mark.parametrize(
    "line",
    [
        {"transport": "rtu", "baudrate": 9600},
        {"transport": "rtu", "baudrate": 1200, "parity": "N", "stopbits": 2},
        {"transport": "rtu", "baudrate": 115200},
        {"transport": "ascii", "baudrate": 19200, "parity": "O"},
        {"transport": "ascii", "baudrate": 4800, "bytesize": 8},
    ],
)
def test_agent_and_simulator_time_a_modbus_line_alike(tmp_path: Path, line: dict[str, Any]) -> None:
    bus = ModbusBus.model_validate(
        {"name": "b", "driver": "modbus", "serial_port": "/dev/x", **line}
    )
    path = tmp_path / "sim.yaml"
    path.write_text(
        yaml.safe_dump(
            {"kind": "sim", "devices": [{"name": "d", "registers": [REGISTER], **line}]}
        ),
        encoding="utf-8",
    )
    device = load_sim_config(path, env={}).devices[0]
    assert (device.data_bits, device.char_time, device.frame_gap) == (
        bus.data_bits,
        bus.char_time,
        bus.frame_gap,
    )
    bits = 1 + bus.data_bits + (0 if bus.parity == "N" else 1) + bus.stopbits
    assert bus.char_time == pytest.approx(bits / line["baudrate"])


@pytest.mark.parametrize(
    ("line", "bits"),
    [
        ({}, 10),
        ({"parity": "E", "stopbits": 2}, 12),
        ({"bytesize": 7, "parity": "O"}, 10),
        ({"bytesize": 5, "parity": "N", "stopbits": 1.5}, 7.5),
    ],
)
def test_an_instrument_line_is_timed_by_its_bits_per_character(
    tmp_path: Path, line: dict[str, Any], bits: float
) -> None:
    instrument = {**INSTRUMENT, "baudrate": 9600, **line}
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump({"kind": "sim", "instruments": [instrument]}), "utf-8")
    [loaded] = load_sim_config(path, env={}).instruments
    assert loaded.char_time == pytest.approx(bits / 9600)
    # A Modbus line of the same settings takes the same time a character.
    if line.get("bytesize", 8) == 8 and line.get("stopbits", 1) != 1.5:
        bus = ModbusBus.model_validate(
            {"name": "b", "driver": "modbus", "serial_port": "/dev/x", "parity": "N"}
            | {"baudrate": 9600, "transport": "rtu", **line}
        )
        assert bus.char_time == loaded.char_time


def test_an_instrument_takes_one_and_a_half_stop_bits_but_not_three(tmp_path: Path) -> None:
    assert sim_problems(tmp_path, {"instruments": [{**INSTRUMENT, "stopbits": 1.5}]}) == []
    assert sim_problems(tmp_path, {"instruments": [{**INSTRUMENT, "stopbits": 3}]}) == [
        "instruments[0].stopbits: stop bits are 1, 1.5 or 2 (got 3)"
    ]


def test_instruments_sharing_a_line_agree_on_its_character_format(tmp_path: Path) -> None:
    command = {"mode": "command", "line": "rs485", "commands": [{"request": "A?", "reply": "1"}]}
    doc = {
        "instruments": [
            {"name": "a", **command, "parity": "E"},
            {"name": "b", **command, "commands": [{"request": "B?", "reply": "2"}]},
        ]
    }
    assert sim_problems(tmp_path, doc) == [
        "instruments[1].parity: line 'rs485' is shared with instruments[0] (a), which has "
        "parity 'E'; instruments on one line must agree"
    ]


def test_rtu_with_seven_data_bits_is_refused_alike(tmp_path: Path) -> None:
    line = {"transport": "rtu", "bytesize": 7}
    bus = {"driver": "modbus", "serial_port": "/dev/ttyUSB0", **line}
    assert edge_problems(bus, MODBUS_DEVICE) == [
        "buses[0].bytesize: RTU needs 8 data bits (7 is for ASCII)"
    ]
    device = {"name": "d", "registers": [REGISTER], **line}
    assert sim_problems(tmp_path, {"devices": [device]}) == [
        "devices[0].bytesize: RTU needs 8 data bits (7 is for ASCII)"
    ]


@pytest.mark.parametrize(
    ("baudrate", "bound"),
    [(49, "greater than or equal to 50"), (4_000_001, "less than or equal to 4000000")],
)
def test_every_baudrate_has_the_same_bounds(tmp_path: Path, baudrate: int, bound: str) -> None:
    message = f"Input should be {bound} (got {baudrate})"
    modbus = {"driver": "modbus", "transport": "rtu", "serial_port": "/dev/x"}
    assert edge_problems({**modbus, "baudrate": baudrate}, MODBUS_DEVICE) == [
        f"buses[0].baudrate: {message}"
    ]
    serial = {"driver": "serial", "serial_port": "/dev/x"}
    assert edge_problems({**serial, "baudrate": baudrate}, SERIAL_DEVICE) == [
        f"buses[0].baudrate: {message}"
    ]
    device = {"name": "d", "transport": "rtu", "registers": [REGISTER], "baudrate": baudrate}
    assert sim_problems(tmp_path, {"devices": [device]}) == [f"devices[0].baudrate: {message}"]
    instrument = {**INSTRUMENT, "baudrate": baudrate}
    assert sim_problems(tmp_path, {"instruments": [instrument]}) == [
        f"instruments[0].baudrate: {message}"
    ]
