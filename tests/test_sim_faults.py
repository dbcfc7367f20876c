"""Injected faults, and the reason each one yields in the agent's readings: ``timeout`` for no
answer, ``exception N (...)`` for an exception code, ``disconnected`` and then recovery for a
dropped connection, ``frame error: bad CRC`` / ``bad LRC`` for a corrupted checksum, and
latency below the timeout tolerated. Through the real link and BusWorker, on TCP, RTU over
TCP, and RTU/ASCII on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from config.edge import validate_edge
from config.errors import ConfigError
from config.sim import SimConfig, load_sim_config
from drivers.errors import ConnectError
from drivers.registry import DriverRegistry
from edge.scheduler import BusWorker, ScheduledDevice
from sim.faults import FaultyUnit
from sim.server import SimPlant
from wire.model import Quality, Reading

TIMEOUT = 0.4
SERIAL = {"parity": "N"}  # a pseudo-terminal takes no parity (see test_sim_rtu.py)
REGISTERS = [
    {"address": 0, "type": "uint16", "value": 11},
    {"address": 100, "type": "uint16", "value": 22},
    {"table": "input", "address": 0, "type": "int16", "value": -3},
]
POINTS = [
    {"name": "a", "address": 0, "type": "uint16"},
    {"name": "b", "address": 100, "type": "uint16"},
    {"name": "c", "table": "input", "address": 0, "type": "int16"},
]
GOOD = {"a": 11, "b": 22, "c": -3}


def plant(transport: str, faults: list[dict[str, Any]], **device: Any) -> SimConfig:
    extra = dict(SERIAL) if transport in ("rtu", "ascii") else {}
    if transport == "ascii":
        extra["bytesize"] = 8
    return SimConfig.model_validate(
        {
            "kind": "sim",
            "devices": [
                {
                    "name": "dev",
                    "transport": transport,
                    "unit_id": 5,
                    "faults": faults,
                    "fault_seed": 3,
                    "registers": REGISTERS,
                    **extra,
                    **device,
                }
            ],
        }
    )


class Rig:
    """A plant with one faulty device and a BusWorker polling it, with a clock the test moves
    (so reconnect backoff and the breaker can be stepped over)."""

    def __init__(self, sim: SimPlant, worker: BusWorker, clock: list[float]) -> None:
        self.sim = sim
        self.worker = worker
        self.clock = clock

    async def poll(self) -> dict[str, Reading]:
        groups = await self.worker.poll(self.worker.devices[0])
        return {r.point: r for g in groups for r in g.readings()}

    def later(self, seconds: float = 120.0) -> None:
        self.clock[0] += seconds  # past any backoff or open breaker


@asynccontextmanager
async def rig(transport: str, faults: list[dict[str, Any]], **device: Any) -> AsyncIterator[Rig]:
    async with SimPlant(plant(transport, faults, **device)) as sim:
        if transport in ("rtu", "ascii"):
            where: dict[str, Any] = {
                "serial_port": sim.serial_endpoints()["dev"].path,
                **SERIAL,
            }
            if transport == "ascii":
                where["bytesize"] = 8
        else:
            host, port, _ = sim.endpoints()["dev"]
            where = {"host": host, "port": port}
        doc = {
            "kind": "edge",
            "agent": {"id": "gw", "site": "lab"},
            "buses": [
                {
                    "name": "bus",
                    "driver": "modbus",
                    "transport": transport,
                    "timeout": TIMEOUT,
                    **where,
                }
            ],
            "devices": [{"name": "dev", "bus": "bus", "unit_id": 5, "points": POINTS}],
        }
        config = validate_edge(doc, "test", env={})
        plugin = DriverRegistry().get("modbus")
        clock = [0.0]
        worker = BusWorker(
            "bus",
            plugin.open_bus(config.buses[0]),
            [ScheduledDevice(config.devices[0], plugin.compile_device(config.devices[0]))],
            lambda groups: None,
            clock=lambda: clock[0],
        )
        try:
            yield Rig(sim, worker, clock)
        finally:
            await worker._link.close()


def values(readings: dict[str, Reading]) -> dict[str, Any]:
    return {p: r.value if r.quality is Quality.GOOD else r.reason for p, r in readings.items()}


ALL = ["tcp", "rtu-over-tcp", "rtu", "ascii"]


@pytest.mark.parametrize("transport", ALL)
async def test_no_fault_no_surprise(transport: str) -> None:
    async with rig(transport, []) as r:
        assert values(await r.poll()) == GOOD


@pytest.mark.parametrize("transport", ALL)
async def test_no_answer_is_a_timeout(transport: str) -> None:
    async with rig(transport, [{"no_answer": "always"}]) as r:
        started = time.monotonic()
        got = values(await r.poll())
        took = time.monotonic() - started
        stats = r.sim.stats()["dev"]
    # The first request times out; the rest of the poll is not asked again (same news).
    assert got == {"a": "timeout", "b": "timeout", "c": "timeout"}
    assert TIMEOUT <= took < 2 * TIMEOUT
    assert stats.unanswered == 1 and stats.requests == 1


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_exception_code_for_an_address_range(transport: str) -> None:
    faults = [
        {"exception": 4, "table": "holding", "addresses": [50, 150]},
        {"exception": 11, "table": "input"},
    ]
    async with rig(transport, faults) as r:
        for _ in range(2):  # the same every cycle, and nothing is "learned" from it
            assert values(await r.poll()) == {
                "a": 11,
                "b": "exception 4 (server device failure)",
                "c": "exception 11 (gateway target device failed to respond)",
            }
        assert r.sim.stats()["dev"].exceptions == 4


@pytest.mark.parametrize("transport", ["tcp", "rtu-over-tcp"])
async def test_dropped_connection_is_disconnected_then_recovers(transport: str) -> None:
    async with rig(transport, [{"drop_connection": {"every": 4}}]) as r:
        assert values(await r.poll()) == GOOD  # requests 1..3
        started = time.monotonic()
        got = values(await r.poll())  # request 4: the device hangs up
        took = time.monotonic() - started
        # Told at once (not after the timeout), and the whole poll is bad: the bus is down.
        assert got == {"a": "disconnected", "b": "disconnected", "c": "disconnected"}
        assert took < TIMEOUT
        assert values(await r.poll()) == {p: "disconnected" for p in GOOD}  # within backoff
        r.later()
        assert values(await r.poll()) == GOOD  # reconnected: requests 5..7
        assert r.worker.devices[0].failing is None
        assert r.sim.stats()["dev"].dropped == 1


@pytest.mark.parametrize(
    ("transport", "reason"),
    [("rtu", "bad CRC"), ("rtu-over-tcp", "bad CRC"), ("ascii", "bad LRC")],
)
async def test_corrupted_checksum_is_a_frame_error(transport: str, reason: str) -> None:
    async with rig(transport, [{"corrupt_crc": "always", "table": "input"}]) as r:
        started = time.monotonic()
        got = values(await r.poll())
        took = time.monotonic() - started
        assert got == {"a": 11, "b": 22, "c": f"frame error: {reason}"}
        assert took < TIMEOUT  # known as soon as the answer is in, not at the timeout
        assert r.sim.stats()["dev"].corrupted == 1
        # The link stays usable: the next poll reads the good points again.
        assert values(await r.poll())["a"] == 11


async def test_pymodbus_alone_turns_a_bad_crc_into_a_timeout() -> None:
    """The finding behind the link's own check: pymodbus 3.16's RTU framer drops a frame with
    a bad CRC without a word, and the request runs into its timeout."""
    async with rig("rtu", [{"corrupt_crc": "always"}]) as r:
        r.worker._link._check = None  # type: ignore[attr-defined]
        started = time.monotonic()
        got = values(await r.poll())
        assert got == {p: "timeout" for p in GOOD}
        assert time.monotonic() - started >= TIMEOUT


@pytest.mark.parametrize("transport", ALL)
async def test_latency_below_the_timeout_is_tolerated(transport: str) -> None:
    async with rig(transport, [{"latency": TIMEOUT / 4}]) as r:
        started = time.monotonic()
        assert values(await r.poll()) == GOOD
        assert time.monotonic() - started >= 3 * TIMEOUT / 4  # three requests, each late
        assert r.sim.stats()["dev"].delayed == 3


async def test_latency_past_the_timeout_is_a_timeout_and_a_collision_on_rtu() -> None:
    async with rig("rtu", [{"latency": TIMEOUT * 1.5, "addresses": [0, 0]}]) as r:
        got = values(await r.poll())
        assert got == {"a": "timeout", "b": "timeout", "c": "timeout"}
        r.later()  # past the breaker the timeout opened
        # The late answer is still on its way when the next request goes out: on RS-485 the
        # two would collide, and the sim counts it.
        await r.poll()
        assert r.sim.bus_stats("dev").collisions >= 1


def test_probabilities_are_reproducible_from_the_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        device = plant("tcp", [{"no_answer": 0.5}], fault_seed=seed).devices[0]
        unit = FaultyUnit(device, lambda pdu: b"\x03\x02\x00\x00")
        return [unit(b"\x03\x00\x00\x00\x01").pdu is None for _ in range(64)]

    first = pattern(7)
    assert first == pattern(7)
    assert first != pattern(8)
    assert 16 < sum(first) < 48  # about half


def test_faults_outside_their_range_do_not_strike() -> None:
    device = plant(
        "tcp",
        [
            {"no_answer": "always", "table": "coil"},
            {"exception": 2, "addresses": [10, 19]},
            {"latency": 0.5, "table": "input", "addresses": [0, 0]},
        ],
    ).devices[0]
    unit = FaultyUnit(device, lambda pdu: b"\x03\x02\x00\x2a")
    assert unit(bytes.fromhex("030000000a")).pdu == b"\x03\x02\x00\x2a"  # holding 0..9
    assert unit(bytes.fromhex("030009000a")).pdu == b"\x83\x02"  # holding 9..18 overlaps
    assert unit(bytes.fromhex("0400000001")).delay == 0.5
    assert unit(bytes.fromhex("0400010001")).delay == 0.0
    assert unit(bytes.fromhex("0100000001")).pdu is None


async def test_single_connection_device_serves_its_one_client() -> None:
    async with rig("tcp", [], max_connections=1) as r:
        assert values(await r.poll()) == GOOD
        bus = r.worker._link._bus  # type: ignore[attr-defined]
        other = DriverRegistry().get("modbus").open_bus(bus)
        request = r.worker.devices[0].program.requests[0]

        async def second_client() -> None:
            await other.connect()  # accepted by TCP, then closed by the device at once
            for _ in range(20):
                await other.execute(request)
                await asyncio.sleep(0.01)

        with pytest.raises(ConnectError):
            await second_client()
        await other.close()
        assert values(await r.poll()) == GOOD  # the first client was never disturbed
        assert r.sim.bus_stats("dev").refused_connections >= 1


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (
            {"faults": [{"corrupt_crc": 0.1}]},
            "devices[0].faults[0].corrupt_crc: Modbus TCP frames have no CRC; needs transport "
            "rtu, rtu-over-tcp or ascii",
        ),
        (
            {"transport": "rtu", "faults": [{"drop_connection": {"every": 3}}]},
            "devices[0].faults[0].drop_connection: a serial line has no connection to drop; "
            "needs transport tcp or rtu-over-tcp",
        ),
        (
            {"faults": [{"latency": 0.1, "no_answer": 0.5}]},
            "devices[0].faults[0].no_answer: one kind per fault; this one already has "
            "`latency`, give the other as its own list entry",
        ),
        (
            {"faults": [{"table": "holding"}]},
            "devices[0].faults[0]: a fault needs one of: latency, no_answer, exception, "
            "drop_connection, corrupt_crc",
        ),
        (
            {"faults": [{"exception": 2, "addresses": [20, 10]}]},
            "devices[0].faults[0].addresses: need 0 <= first <= last <= 65535, got [20, 10]",
        ),
        (
            {"faults": [{"no_answer": 1.5}]},
            "devices[0].faults[0].no_answer: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            {"faults": [{"no_answer": "sometimes"}]},
            "devices[0].faults[0].no_answer: Input should be 'always' (got 'sometimes')",
        ),
        (
            {"transport": "rtu", "port": 5020},
            "devices[0].port: not for transport rtu: a serial device is served on a "
            "pseudo-terminal",
        ),
        (
            {"transport": "ascii", "unit_id": 0},
            "devices[0].unit_id: 0 is the broadcast address on a serial line; use 1..247",
        ),
        (
            {"baudrate": 9600},
            "devices[0].baudrate: not for transport tcp: only serial devices (transport rtu or "
            "ascii) have it",
        ),
    ],
)
def test_fault_and_transport_config_errors(
    tmp_path: Any, device: dict[str, Any], message: str
) -> None:
    import yaml

    doc = {
        "kind": "sim",
        "devices": [
            {"name": "d", "registers": [{"address": 0, "type": "uint16", "value": 1}], **device}
        ],
    }
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_sim_config(path, env={})
    assert [f"{p.path}: {p.message}" for p in caught.value.problems] == [message]


def test_devices_on_one_line_must_agree() -> None:
    doc = {
        "kind": "sim",
        "devices": [
            {
                "name": n,
                "transport": "rtu",
                "gateway": "line",
                "unit_id": u,
                "baudrate": b,
                "registers": [{"address": 0, "type": "uint16", "value": 1}],
            }
            for n, u, b in (("a", 1, 9600), ("b", 2, 19200))
        ],
    }
    with pytest.raises(ValueError, match="baudrate: gateway 'line' is shared with devices"):
        SimConfig.model_validate(doc)


async def test_tcp_link_silent_for_long_reconnects_but_still_reports_timeout() -> None:
    """pymodbus would close the connection after retries+3 unanswered requests and the
    request would read "disconnected"; the link keeps reporting "timeout" and, after three
    requests in a row that nobody answered, opens a fresh connection for the next one."""
    async with rig("tcp", [{"no_answer": "always"}]) as r:
        reasons = []
        clients: list[object] = []  # the objects themselves: no id reuse
        for _ in range(5):
            r.later()  # past the breaker
            got = values(await r.poll())
            reasons.append(got["a"])
            clients.append(r.worker._link._client)  # type: ignore[attr-defined]
        assert reasons == ["timeout"] * 5
        assert clients[0] is clients[1] is clients[2]
        assert clients[3] is not clients[2] and clients[4] is clients[3]
        assert r.sim.stats()["dev"].unanswered == 5
