"""The agent's poll path against simulated devices on real sockets: exact decoding, and a
bad reading with the right reason for every kind of failure."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from config.edge import EdgeConfig, validate_edge
from config.sim import SimConfig
from drivers.registry import DriverRegistry
from edge.scheduler import BusWorker, ScheduledDevice
from sim.server import SimPlant
from wire.model import Group, Quality, Reading


def as_float32(value: float) -> float:
    """The value a float32 register holds: the agent reports it exactly, widened to a double
    (49.95 is stored as 49.95000076293945)."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


REGISTERS: list[dict[str, Any]] = [
    {"table": "holding", "address": 0, "type": "int16", "scale": 0.1, "value": -12.3},
    {"table": "holding", "address": 1, "type": "int32", "value": -123456},
    {"table": "holding", "address": 3, "type": "float32", "value": 230.5},
    {"table": "holding", "address": 5, "type": "float32", "order": "CDAB", "value": 49.95},
    {"table": "holding", "address": 7, "type": "uint32", "value": 4_000_000_000},
    {"table": "holding", "address": 9, "type": "int64", "order": "DCBA", "value": -(2**40)},
    {"table": "holding", "address": 13, "type": "float64", "order": "BADC", "value": 1.0e-3},
    {"table": "holding", "address": 17, "type": "string", "length": 3, "value": "AB-1"},
    {"table": "input", "address": 0, "type": "uint16", "value": 65535},
    # A float32 quiet NaN (0x7FC00000) written as two raw words, as a device reporting
    # "sensor not available" would.
    {"table": "input", "address": 1, "type": "uint16", "value": 0x7FC0},
    {"table": "input", "address": 2, "type": "uint16", "value": 0},
]
POINTS: list[dict[str, Any]] = [
    {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "unit": "degC"},
    {"name": "position", "address": 1, "type": "int32", "unit": "mm"},
    {"name": "voltage", "address": 3, "type": "float32", "unit": "V"},
    {"name": "freq", "address": 5, "type": "float32", "order": "CDAB", "unit": "Hz"},
    {"name": "energy", "address": 7, "type": "uint32", "unit": "Wh"},
    {"name": "big", "address": 9, "type": "int64", "order": "DCBA"},
    {"name": "small", "address": 13, "type": "float64", "order": "BADC"},
    {"name": "serial", "address": 17, "type": "string", "length": 3},
    {"name": "raw", "table": "input", "address": 0, "type": "uint16"},
]
EXPECTED = {
    "temp": -12.3,
    "position": -123456,
    "voltage": 230.5,
    "freq": as_float32(49.95),
    "energy": 4_000_000_000,
    "big": -(2**40),
    "small": 1.0e-3,
    "serial": "AB-1",
    "raw": 65535,
}


def sim_config(registers: list[dict[str, Any]] = REGISTERS) -> SimConfig:
    return SimConfig.model_validate(
        {"kind": "sim", "devices": [{"name": "plc", "unit_id": 3, "registers": registers}]}
    )


def edge_config(
    port: int, points: list[dict[str, Any]], unit_id: int = 3, **device: Any
) -> EdgeConfig:
    doc = {
        "kind": "edge",
        "agent": {"id": "gw-test", "site": "lab"},
        "buses": [
            {"name": "bus", "driver": "modbus", "host": "127.0.0.1", "port": port, "timeout": 0.3}
        ],
        "devices": [{"name": "plc", "bus": "bus", "unit_id": unit_id, "points": points, **device}],
    }
    return validate_edge(doc, "test", env={})


def worker_for(config: EdgeConfig, sink: list[Group], **kwargs: Any) -> BusWorker:
    registry = DriverRegistry()
    plugin = registry.get("modbus")
    devices = [ScheduledDevice(d, plugin.compile_device(d)) for d in config.devices]
    return BusWorker("bus", plugin.open_bus(config.buses[0]), devices, sink.extend, **kwargs)


def readings_of(groups: list[Group]) -> list[Reading]:
    return [r for g in groups for r in g.readings()]


async def poll(worker: BusWorker) -> list[Reading]:
    return readings_of(await worker.poll(worker.devices[0]))


def by_point(readings: list[Reading]) -> dict[str, Reading]:
    return {r.point: r for r in readings}


async def test_every_type_decodes_to_the_exact_value() -> None:
    async with SimPlant(sim_config(), clock=lambda: 0.0) as plant:
        port = plant.endpoints()["plc"][1]
        sink: list[Group] = []
        worker = worker_for(edge_config(port, POINTS), sink)
        readings = await poll(worker)
    got = by_point(readings)
    assert {p: r.value for p, r in got.items()} == EXPECTED
    assert all(r.quality is Quality.GOOD for r in readings)
    assert got["temp"].unit == "degC" and got["serial"].unit is None
    assert readings_of(sink) == readings


async def test_nan_register_becomes_a_bad_reading_with_reason() -> None:
    async with SimPlant(sim_config(), clock=lambda: 0.0) as plant:
        port = plant.endpoints()["plc"][1]
        points = [{"name": "nan", "table": "input", "address": 1, "type": "float32"}]
        worker = worker_for(edge_config(port, points), [])
        (reading,) = await poll(worker)
    assert reading.quality is Quality.BAD
    assert reading.value is None
    assert reading.reason == "not a finite number (nan)"


def spans(worker: BusWorker) -> list[tuple[str, int, int]]:
    """The requests the device's program issues now: (table, first, last address)."""
    return [
        (r.table, r.address, r.address + r.count - 1) for r in worker.devices[0].program.requests
    ]


async def test_merged_read_over_a_hole_is_split_and_the_split_is_remembered() -> None:
    registers = [
        {"table": "holding", "address": 0, "type": "uint16", "value": 1},
        {"table": "holding", "address": 2, "type": "uint16", "value": 2},  # address 1 is a hole
        {"table": "holding", "address": 3, "type": "uint16", "value": 3},
        {"table": "input", "address": 0, "type": "uint16", "value": 4},
    ]
    points = [
        {"name": "a", "address": 0, "type": "uint16"},
        {"name": "b", "address": 2, "type": "uint16"},
        {"name": "c", "address": 3, "type": "uint16"},
        {"name": "d", "table": "input", "address": 0, "type": "uint16"},
    ]
    async with SimPlant(sim_config(registers)) as plant:
        port = plant.endpoints()["plc"][1]
        worker = worker_for(edge_config(port, points), [])
        assert spans(worker) == [("holding", 0, 3), ("input", 0, 0)]
        first = by_point(await poll(worker))
        after_first = plant.stats()["plc"]
        second = by_point(await poll(worker))
        after_second = plant.stats()["plc"]
    # Every point read fine: the hole held no point, so nothing is bad.
    assert {p: (r.value, r.quality) for p, r in first.items()} == {
        "a": (1, Quality.GOOD),
        "b": (2, Quality.GOOD),
        "c": (3, Quality.GOOD),
        "d": (4, Quality.GOOD),
    }
    assert second == {p: r for p, r in second.items() if r.quality is Quality.GOOD}
    # 0..3 was refused, then split in halves that the device accepts; the halves are kept.
    assert spans(worker) == [("holding", 0, 0), ("holding", 2, 3), ("input", 0, 0)]
    assert after_first.exceptions == 1
    assert after_first.requests == 4  # the refused read, its two halves, the input read
    assert after_second.requests - after_first.requests == 3  # the learned requests only
    assert after_second.exceptions == 1  # no new refusal


async def test_only_the_points_the_device_refuses_are_bad() -> None:
    registers = [
        {"table": "holding", "address": 0, "type": "uint16", "value": 1},
        {"table": "holding", "address": 2, "type": "uint16", "value": 2},
    ]
    points = [
        {"name": "a", "address": 0, "type": "uint16"},
        {"name": "ghost", "address": 1, "type": "uint16"},  # not in the device
        {"name": "b", "address": 2, "type": "uint16"},
    ]
    async with SimPlant(sim_config(registers)) as plant:
        port = plant.endpoints()["plc"][1]
        worker = worker_for(edge_config(port, points), [])
        for _ in range(2):
            got = by_point(await poll(worker))
            assert got["ghost"].quality is Quality.BAD
            assert got["ghost"].reason == "exception 2 (illegal data address)"
            assert (got["a"].value, got["b"].value) == (1, 2)
            assert got["a"].quality is got["b"].quality is Quality.GOOD
    assert spans(worker) == [("holding", 0, 0), ("holding", 1, 1), ("holding", 2, 2)]


async def test_unit_that_never_answers_is_reported_as_timeout() -> None:
    async with SimPlant(sim_config()) as plant:
        port = plant.endpoints()["plc"][1]
        worker = worker_for(edge_config(port, POINTS[:2], unit_id=9), [])
        readings = await poll(worker)
    assert [r.reason for r in readings] == ["timeout", "timeout"]
    assert worker.devices[0].failing == "timeout"


async def test_dead_endpoint_is_disconnected_then_recovers_on_same_port() -> None:
    now = [0.0]
    async with SimPlant(sim_config()) as plant:
        port = plant.endpoints()["plc"][1]
    # The plant is closed: nothing listens on the port any more.
    worker = worker_for(edge_config(port, POINTS[:1]), [], clock=lambda: now[0])
    (reading,) = await poll(worker)
    assert reading.quality is Quality.BAD and reading.reason == "disconnected"
    # Within the backoff period no connection is attempted: still disconnected, no I/O.
    (reading,) = await poll(worker)
    assert reading.reason == "disconnected"
    config = sim_config().model_copy(deep=True)
    device = config.devices[0].model_copy(update={"port": port})
    config = config.model_copy(update={"devices": [device]})
    async with SimPlant(config, clock=lambda: 0.0):
        now[0] += 60.0  # past any backoff
        (reading,) = await poll(worker)
    assert reading.quality is Quality.GOOD and reading.value == EXPECTED["temp"]
    assert worker.devices[0].failing is None


async def test_cancelling_a_read_in_flight_raises_cancelled_error() -> None:
    async with SimPlant(sim_config()) as plant:
        port = plant.endpoints()["plc"][1]
        config = edge_config(port, POINTS[:1], unit_id=9)  # unit 9 never answers
        bus = config.buses[0].model_copy(update={"timeout": 30.0})
        plugin = DriverRegistry().get("modbus")
        link = plugin.open_bus(bus)
        program = plugin.compile_device(config.devices[0])
        await link.connect()
        task = asyncio.create_task(link.execute(program.requests[0]))
        await asyncio.sleep(0)  # let the request go out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await link.close()
