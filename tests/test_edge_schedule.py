"""The bus scheduler on real sockets: a dead device does not stall the others, its points are
reported bad with reason "timeout", and it costs the bus at most one timeout per backoff."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from helpers import async_wait_for

from config.edge import validate_edge
from config.sim import SimConfig
from drivers.registry import DriverRegistry
from edge.scheduler import BusWorker, ScheduledDevice
from sim.server import SimPlant
from wire.model import Group, Quality

INTERVAL = 1.0
TIMEOUT = 0.3


def plant(units: list[int]) -> SimConfig:
    return SimConfig.model_validate(
        {
            "kind": "sim",
            "devices": [
                {
                    "name": f"dev-{u}",
                    "gateway": "gw",
                    "unit_id": u,
                    "registers": [{"address": 0, "type": "uint16", "value": u}],
                }
                for u in units
            ],
        }
    )


def worker(port: int, units: list[int], sink: list[Group], **bus: Any) -> BusWorker:
    doc = {
        "kind": "edge",
        "agent": {"id": "gw", "site": "lab"},
        "buses": [
            {
                "name": "line",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": port,
                "timeout": TIMEOUT,
                **bus,
            }
        ],
        "devices": [
            {
                "name": f"dev-{u}",
                "bus": "line",
                "unit_id": u,
                "interval": INTERVAL,
                "points": [{"name": "v", "address": 0, "type": "uint16"}],
            }
            for u in units
        ],
    }
    config = validate_edge(doc, "test", env={})
    plugin = DriverRegistry().get("modbus")
    devices = [ScheduledDevice(d, plugin.compile_device(d)) for d in config.devices]
    return BusWorker(
        "line",
        plugin.open_bus(config.buses[0]),
        devices,
        sink.extend,
        request_gap=config.buses[0].request_gap,
    )


async def test_dead_device_does_not_stall_four_live_ones() -> None:
    alive = [1, 2, 3, 4]
    dead = 9  # no device answers unit 9 on this gateway
    sink: list[Group] = []
    async with SimPlant(plant(alive)) as sim:
        port = sim.endpoints()["dev-1"][1]
        bus = worker(port, [*alive, dead], sink)
        task = asyncio.create_task(bus.run())
        try:
            await async_wait_for(
                lambda: all(sum(1 for g in sink if g.device == f"dev-{u}") >= 6 for u in alive),
                timeout=30,
                message="six polls of every live device",
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    by_device: dict[str, list[Group]] = {}
    for g in sink:
        by_device.setdefault(g.device, []).append(g)
    for u in alive:
        groups = by_device[f"dev-{u}"]
        assert all(r.quality is Quality.GOOD and r.value == u for g in groups for r in g.readings())
        span = (groups[-1].t - groups[0].t) / 1e9
        expected = span / INTERVAL + 1
        assert len(groups) >= 0.9 * expected, (u, len(groups), expected)
        assert bus.devices[u - 1].stats.skipped_polls == 0
    dead_groups = by_device[f"dev-{dead}"]
    assert dead_groups, "the dead device is still reported every cycle"
    assert all(
        r.quality is Quality.BAD and r.reason == "timeout"
        for g in dead_groups
        for r in g.readings()
    )
    stats = bus.devices[4].stats
    # Only the polls the breaker let through cost a timeout on the bus.
    assert stats.failed_requests == stats.polls - stats.polls_skipped_by_breaker
    assert stats.polls_skipped_by_breaker >= 1
    assert stats.failed_requests < stats.polls


async def test_request_gap_keeps_the_bus_quiet_between_requests() -> None:
    sink: list[Group] = []
    async with SimPlant(plant([1, 2])) as sim:
        port = sim.endpoints()["dev-1"][1]
        bus = worker(port, [1, 2], sink, request_gap=0.25)
        for device in bus.devices:
            await bus.poll(device)
        await bus.poll(bus.devices[0])
    times = [g.t for g in sink]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.25 for gap in gaps), gaps
