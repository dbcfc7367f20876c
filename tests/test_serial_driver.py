"""The serial driver on real pseudo-terminals, served by the simulator's instruments.

1. A streaming NMEA GPS: values, units and sample times reach InfluxDB 1.x exactly (the real
   agent → Mosquitto → the real ingester); a sentence with a corrupted checksum becomes bad
   readings with reason ``checksum mismatch``, and the next sentence is read.
2. Two polled instruments on one line, two commands each per cycle: values land; a silent
   one is reported bad with ``timeout`` and does not hold up the other.
3. The pty vanishes and comes back: the driver reopens it by itself (by its symlink), the
   readings resume; meanwhile the points are bad with ``disconnected``.
Plus: a silent stream is reported ``timeout`` once per interval, ``--once --dry-run`` on a
stream, and the shipped examples read the shipped simulator config.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import InfluxDatabase, async_wait_for, start_edge
from test_e2e import Recorder, recording, running

from cloud.ingester import run_ingester
from config.cloud import CloudConfig
from config.device import BusBase, DeviceBase
from config.edge import EdgeConfig, load_edge_config, validate_edge
from config.errors import ConfigError
from config.sim import SimConfig, load_sim_config
from drivers.base import BusLink, DeviceProgram, StreamDecoder
from drivers.errors import ConnectError
from drivers.registry import DriverRegistry
from drivers.serial.checksum import Checksum
from drivers.serial.link import SerialLink
from drivers.serial.plugin import SerialPlugin
from drivers.serial.program import PolledProgram
from edge.agent import build_workers, poll_once, run_agent
from fieldlink.localstack import Mosquitto
from sim.instruments import Emission, InstrumentRack
from wire.model import Group, Quality, Reading
from wire.topics import data_topic

ROOT = Path(__file__).resolve().parent.parent
SITE = "serial-site"

GGA = "GPGGA,{utc:%H%M%S.%6f},{lat:09.4f},N,{lon:010.4f},E,1,08,0.9,{alt:.1f},M,46.9,M,,"


def gps_sim(link: Path, interval: float = 0.2) -> SimConfig:
    return SimConfig.model_validate(
        {
            "kind": "sim",
            "instruments": [
                {
                    "name": "gps-1",
                    "mode": "stream",
                    "serial_link": str(link),
                    "interval": interval,
                    "baudrate": 38400,
                    "checksum": "nmea",
                    "frames": [GGA],
                    "values": {
                        "lat": 4807.038,
                        "lon": 1131.0,
                        "alt": {"wave": "sine", "offset": 545.4, "amplitude": 2, "period": 5},
                    },
                }
            ],
        }
    )


def gps_device(stale_after: float = 1.0, interval: float = 0.2) -> dict[str, Any]:
    return {
        "name": "gps-1",
        "bus": "gps",
        "asset": "truck-7",
        "mode": "stream",
        "interval": interval,
        "stale_after": stale_after,
        "checksum": "nmea",
        "framing": {"type": "line", "start": "$"},
        "frames": [
            {
                "match": "^GPGGA,",
                "parse": {"type": "fields"},
                "points": [
                    {"name": "fix_time", "field": 1, "type": "string"},
                    {"name": "latitude", "field": 2, "unit": "ddmm.mmmm"},
                    {"name": "longitude", "field": 4, "unit": "dddmm.mmmm"},
                    {"name": "satellites", "field": 7, "type": "int"},
                    {"name": "altitude", "field": 9, "unit": "m"},
                ],
            }
        ],
    }


def edge(
    broker: Mosquitto | None, agent: str, buses: list[dict[str, Any]], devices: list[Any]
) -> EdgeConfig:
    doc: dict[str, Any] = {
        "kind": "edge",
        "agent": {"id": agent, "site": SITE},
        "publish": {"max_batch": 50, "max_delay": 0.05},
        "buses": buses,
        "devices": devices,
    }
    if broker is not None:
        doc["mqtt"] = {"host": broker.host, "port": broker.port}
    return validate_edge(doc, "test", env={})


def serial_bus(name: str, link: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "driver": "serial", "serial_port": str(link), **extra}


def cloud_for(broker: Mosquitto, influx: InfluxDatabase, unique_id: str) -> CloudConfig:
    return CloudConfig.model_validate(
        {
            "kind": "cloud",
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"ing-{unique_id}"},
            "influx": {"api": "v1", "url": influx.service.url, "database": influx.name},
            "batch": {"max_points": 100, "max_delay": 0.05},
        }
    )


def stored_rows(influx: InfluxDatabase, agent: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    result = influx.service.query(f"SELECT * FROM readings WHERE agent = '{agent}'", influx.name)
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for series in result["results"][0].get("series", []):
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            rows[(row["device"], row["point"], row["time"])] = row
    return rows


@asynccontextmanager
async def agent_running(config: EdgeConfig, broker: Mosquitto) -> AsyncIterator[Recorder]:
    """The real agent publishing to the broker; yields what arrives on its data topic."""
    with recording(broker, data_topic(SITE, config.agent.id)) as recorder:
        stop = asyncio.Event()
        async with running(run_agent(config, stop=stop), stop):
            yield recorder


@asynccontextmanager
async def ingester_running(cloud: CloudConfig) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    async with running(run_ingester(cloud, stop=stop, ready=ready.set), stop):
        await asyncio.wait_for(ready.wait(), 20)
        yield


def of(readings: list[Reading], device: str, point: str) -> list[Reading]:
    return sorted(
        (r for r in readings if r.device == device and r.point == point), key=lambda r: r.ts_ns
    )


def as_printed(value: Any, spec: str) -> float:
    """A value as the instrument printed it (and so as the agent must read it)."""
    return float(format(value, spec))


async def wait_stored(influx: InfluxDatabase, agent: str, count: int) -> dict[Any, Any]:
    def complete() -> dict[Any, Any] | None:
        rows = stored_rows(influx, agent)
        return rows if len(rows) >= count else None

    rows: dict[Any, Any] = await async_wait_for(
        lambda: asyncio.to_thread(complete), timeout=30, message=f"{count} readings in InfluxDB"
    )
    return rows


# -- 1. streaming NMEA to InfluxDB -------------------------------------------------------


async def test_nmea_stream_reaches_influxdb_exactly_and_a_bad_checksum_is_reported(
    tmp_path: Path, mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str
) -> None:
    link = tmp_path / "gps"
    agent = f"agent-{unique_id}"[:60]
    config = edge(mosquitto, agent, [serial_bus("gps", link, baudrate=38400)], [gps_device()])
    async with (
        InstrumentRack(gps_sim(link)) as rack,
        ingester_running(cloud_for(mosquitto, influx_db, unique_id)),
    ):
        async with agent_running(config, mosquitto) as recorder:
            await async_wait_for(
                lambda: len(of(recorder.snapshot(), "gps-1", "altitude")) >= 5,
                timeout=20,
                message="five GGA sentences read",
            )
            rack.corrupt_next("gps-1", 1)
            corrupted_from = len(rack.sent("gps-1"))

            def good_after_bad() -> bool:
                alt = of(recorder.snapshot(), "gps-1", "altitude")
                bad = [r for r in alt if r.quality is Quality.BAD]
                return bool(bad) and any(
                    r.quality is Quality.GOOD and r.ts_ns > bad[0].ts_ns for r in alt
                )

            await async_wait_for(
                good_after_bad, timeout=20, message="a bad sentence, then a good one"
            )
        published = recorder.snapshot()
        sent = rack.sent("gps-1")
        distinct = {(r.device, r.point, r.ts_ns) for r in published}
        rows = await wait_stored(influx_db, agent, len(distinct))

    # Every sentence the instrument printed after the agent started is one reading each.
    by_time: dict[str, Emission] = {
        format_utc(e.time_ns): Emission(e.time_ns, e.body, e.values) for e in sent
    }
    good = [r for r in published if r.quality is Quality.GOOD]
    bad = [r for r in published if r.quality is Quality.BAD]
    assert {r.point for r in bad} == {"fix_time", "latitude", "longitude", "satellites", "altitude"}
    assert {r.reason for r in bad} == {"checksum mismatch"}
    (bad_sentence,) = [s for s in sent if s.fault == "bad_checksum"]
    assert sent.index(bad_sentence) >= corrupted_from - 1
    assert len({r.ts_ns for r in bad}) == 1, "one corrupted sentence, one group of readings"

    times = {r.ts_ns: r.value for r in good if r.point == "fix_time"}
    for r in good:
        emission = by_time[str(times[r.ts_ns])]
        expected, unit = {
            "fix_time": (format_utc(emission.time_ns), None),
            "latitude": (4807.038, "ddmm.mmmm"),
            "longitude": (1131.0, "dddmm.mmmm"),
            "satellites": (8, None),
            "altitude": (as_printed(emission.values["alt"], ".1f"), "m"),
        }[r.point]
        assert (r.value, r.unit) == (expected, unit), r
        # Sample time: when the sentence arrived — after it was emitted, within its time on
        # the wire (38400 bit/s) and the agent's reaction on a busy machine.
        assert 0 <= r.ts_ns - emission.time_ns < 1_000_000_000, r
    assert good_after_bad_sentence(good, bad)

    assert len(rows) == len(distinct)
    for r in published:
        row = rows[(r.device, r.point, r.ts_ns)]  # the sample time, to the nanosecond
        assert (row["site"], row["agent"], row["asset"]) == (SITE, agent, "truck-7")
        assert row["unit"] == r.unit
        assert row["quality"] == r.quality.value
        if r.quality is Quality.BAD:
            assert row["reason"] == "checksum mismatch"
            assert row["value"] is None and row["text"] is None
        elif isinstance(r.value, str):
            assert row["text"] == r.value
        else:
            assert row["value"] == r.value


def format_utc(ns: int) -> str:
    """``{utc:%H%M%S.%6f}`` of an emission time, as the instrument printed it."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%H%M%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}"


def good_after_bad_sentence(good: list[Reading], bad: list[Reading]) -> bool:
    return any(r.ts_ns > bad[0].ts_ns for r in good if r.point == "altitude")


# -- 2. polled instruments sharing a line ---------------------------------------------------


def probe(name: str, address: str, link: Path) -> dict[str, Any]:
    return {
        "name": name,
        "mode": "command",
        "serial_link": str(link),
        "line": "rs485",
        "baudrate": 38400,
        "checksum": "crc16-modbus",
        "commands": [
            {"request": f"#{address}MEAS?", "reply": "T={temp:.2f};RH={rh:.1f}"},
            {"request": f"#{address}STAT?", "reply": "OK,{uptime:d}"},
        ],
        "values": {
            "temp": {"wave": "sine", "offset": 21.5, "amplitude": 3, "period": 7},
            "rh": 45.0 if address == "01" else 61.5,
            "uptime": {"wave": "counter", "start": 0, "step": 1, "interval": 1},
        },
    }


def polled_device(name: str, address: str, interval: float) -> dict[str, Any]:
    return {
        "name": name,
        "bus": "rs485",
        "mode": "polled",
        "interval": interval,
        "checksum": "crc16-modbus",
        "commands": [
            {
                "send": f"#{address}MEAS?",
                "parse": {"type": "keyvalue", "pair_separator": ";"},
                "points": [
                    {"name": "temperature", "key": "T", "unit": "degC"},
                    {"name": "humidity", "key": "RH", "unit": "%"},
                ],
            },
            {
                "send": f"#{address}STAT?",
                "parse": {"type": "fields"},
                "points": [
                    {"name": "status", "field": 0, "type": "string"},
                    {"name": "uptime", "field": 1, "type": "int", "unit": "s"},
                ],
            },
        ],
    }


async def test_polled_instruments_on_one_line_and_a_silent_one_times_out_alone(
    tmp_path: Path, mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str
) -> None:
    link = tmp_path / "rs485"
    agent = f"agent-{unique_id}"[:60]
    interval, timeout = 0.4, 0.3
    sim = SimConfig.model_validate(
        {"kind": "sim", "instruments": [probe("p1", "01", link), probe("p2", "02", link)]}
    )
    config = edge(
        mosquitto,
        agent,
        [serial_bus("rs485", link, baudrate=38400, timeout=timeout)],
        [polled_device("probe-1", "01", interval), polled_device("probe-2", "02", interval)],
    )
    async with (
        InstrumentRack(sim) as rack,
        ingester_running(cloud_for(mosquitto, influx_db, unique_id)),
    ):
        async with agent_running(config, mosquitto) as recorder:

            def good(device: str) -> list[Reading]:
                return [
                    r
                    for r in of(recorder.snapshot(), device, "temperature")
                    if r.quality is Quality.GOOD
                ]

            await async_wait_for(
                lambda: len(good("probe-1")) >= 3 and len(good("probe-2")) >= 3,
                timeout=20,
                message="three cycles of both probes",
            )
            rack.set_silent("p2", True)
            silent_from = time.time_ns()
            # requests() lists every request on the shared line: count probe-2's own.
            asked_before = len([q for q in rack.requests("p2") if q.startswith("#02")])
            await async_wait_for(
                lambda: len([r for r in good("probe-1") if r.ts_ns > silent_from]) >= 8,
                timeout=20,
                message="eight cycles of probe-1 while probe-2 is silent",
            )
            silent_until = time.time_ns()
            asked = [q for q in rack.requests("p2") if q.startswith("#02")]
            asked_while_silent = len(asked) - asked_before
        published = recorder.snapshot()
        requests = {name: rack.requests(name) for name in ("p1", "p2")}
        emitted = rack.emitted("p1") + rack.emitted("p2")
        distinct = {(r.device, r.point, r.ts_ns) for r in published}
        rows = await wait_stored(influx_db, agent, len(distinct))

    # Both commands went out each cycle, on the one shared line.
    assert "#01MEAS?" in requests["p1"] and "#01STAT?" in requests["p1"]
    assert "#02MEAS?" in requests["p2"] and "#02STAT?" in requests["p2"]
    # Values: exactly what the instruments printed.
    printed = {e.body for e in emitted}
    for r in published:
        if r.quality is not Quality.GOOD:
            continue
        assert r.unit == {"temperature": "degC", "humidity": "%", "uptime": "s"}.get(r.point)
        if r.point == "temperature":
            rh = "45.0" if r.device == "probe-1" else "61.5"
            assert f"T={r.value:.2f};RH={rh}" in printed, r
        elif r.point == "humidity":
            assert r.value == (45.0 if r.device == "probe-1" else 61.5)
        elif r.point == "status":
            assert r.value == "OK"
    # The silent probe: bad with reason timeout, every point of it.
    silent = [r for r in published if r.device == "probe-2" and r.ts_ns > silent_from + 10**9]
    assert silent, "probe-2 reported while silent"
    assert {(r.quality, r.reason) for r in silent} == {(Quality.BAD, "timeout")}
    assert {r.point for r in silent} == {"temperature", "humidity", "status", "uptime"}
    # ... and probe-1 kept its pace: no gap longer than an interval plus one timeout.
    times = [r.ts_ns for r in of(published, "probe-1", "temperature")]
    window = [t for t in times if silent_from <= t <= silent_until]
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(window)]
    assert max(gaps) < interval + timeout + 0.35, gaps
    # The per-device breaker: the silent probe was asked far less often than once a cycle
    # (after a timeout it is skipped for a growing, jittered backoff of 1 s and more).
    cycles = (silent_until - silent_from) / 1e9 / interval
    assert asked_while_silent < cycles / 2, (asked_while_silent, cycles)
    assert all(r.quality is Quality.GOOD for r in published if r.device == "probe-1")
    # Everything landed in InfluxDB, bad readings with their reason.
    assert len(rows) == len(distinct)
    for r in published:
        row = rows[(r.device, r.point, r.ts_ns)]
        assert row["quality"] == r.quality.value and row["reason"] == r.reason
        if isinstance(r.value, str):
            assert row["text"] == r.value
        elif r.value is not None:
            assert row["value"] == r.value


# -- 3. the port vanishes and comes back ----------------------------------------------------


@pytest.mark.parametrize("mode", ["stream", "polled"])
async def test_the_port_vanishes_and_comes_back_and_readings_resume(
    tmp_path: Path, mosquitto: Mosquitto, unique_id: str, mode: str
) -> None:
    link = tmp_path / "port"
    agent = f"agent-{unique_id}"[:60]
    if mode == "stream":
        sim = gps_sim(link)
        device, point = gps_device(), "altitude"
        name, instrument = "gps-1", "gps-1"
        bus = serial_bus("gps", link, baudrate=38400)
    else:
        sim = SimConfig.model_validate({"kind": "sim", "instruments": [probe("p1", "01", link)]})
        device, point = polled_device("probe-1", "01", 0.2), "temperature"
        name, instrument = "probe-1", "p1"
        bus = serial_bus("rs485", link, baudrate=38400, timeout=0.3)
    config = edge(mosquitto, agent, [bus], [device])
    async with InstrumentRack(sim) as rack, agent_running(config, mosquitto) as recorder:

        def readings() -> list[Reading]:
            return of(recorder.snapshot(), name, point)

        def good_since(ns: int) -> list[Reading]:
            return [r for r in readings() if r.quality is Quality.GOOD and r.ts_ns > ns]

        await async_wait_for(lambda: len(good_since(0)) >= 3, timeout=20, message="readings")
        rack.close_port(instrument)
        closed_at = time.time_ns()
        await async_wait_for(
            lambda: any(r.reason == "disconnected" for r in readings() if r.ts_ns > closed_at),
            timeout=10,
            message="the loss reported as disconnected",
        )
        rack.reopen_port(instrument)
        reopened_at = time.time_ns()
        await async_wait_for(
            lambda: len(good_since(reopened_at)) >= 3,
            timeout=20,
            message="readings resumed on the new pty",
        )
    during = [r for r in readings() if closed_at < r.ts_ns < reopened_at]
    assert during and all(r.quality is Quality.BAD for r in during)
    assert {r.reason for r in during} <= {"disconnected", "timeout"}
    assert "disconnected" in {r.reason for r in during}


# -- silence, once, examples -------------------------------------------------------------


async def test_a_silent_stream_is_reported_timeout_once_per_interval(tmp_path: Path) -> None:
    link = tmp_path / "gps"
    config = edge(
        None, "gw", [serial_bus("gps", link)], [gps_device(stale_after=0.6, interval=0.3)]
    )
    groups: list[Group] = []
    (worker,) = build_workers(config, groups.extend)
    async with InstrumentRack(gps_sim(link, interval=0.1)) as rack:
        task = asyncio.create_task(worker.run())
        try:
            await async_wait_for(lambda: len(groups) >= 3, timeout=10, message="sentences")
            rack.set_silent("gps-1", True)
            silent_from = time.time_ns()

            def timeouts() -> list[Group]:
                return [
                    g for g in groups if g.t > silent_from and g.points[0].get("r") == "timeout"
                ]

            await async_wait_for(lambda: len(timeouts()) >= 4, timeout=10, message="timeouts")
            reports = [g.t for g in timeouts()]
            rack.set_silent("gps-1", False)
            back = time.time_ns()
            await async_wait_for(
                lambda: any(g.t > back and "r" not in g.points[0] for g in groups),
                timeout=10,
                message="good readings again",
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    # The first report once stale_after passed, then one per interval (not one per tick).
    assert (reports[0] - silent_from) / 1e9 >= 0.6 - 0.1
    spacing = [(b - a) / 1e9 for a, b in itertools.pairwise(reports)]
    assert all(0.28 <= s <= 0.6 for s in spacing), spacing
    assert all(len(g.points) == 5 for g in timeouts())


def shipped_sim(tmp_path: Path) -> tuple[SimConfig, dict[str, Path]]:
    """config/examples/sim-serial.yaml with its symlinks moved under tmp_path."""
    sim = load_sim_config(ROOT / "config" / "examples" / "sim-serial.yaml", env={})
    links = {i.name: tmp_path / i.name for i in sim.instruments}
    instruments = [
        i.model_copy(update={"serial_link": str(links[i.name])}) for i in sim.instruments
    ]
    return sim.model_copy(update={"instruments": instruments}), links


async def test_the_shipped_examples_read_the_shipped_simulator(tmp_path: Path) -> None:
    sim, links = shipped_sim(tmp_path)
    examples = ROOT / "config" / "examples"
    env = {
        "FIELDLINK_GPS": str(links["gps-1"]),
        "FIELDLINK_ANALYSER": str(links["analyser-1"]),
        "FIELDLINK_LOGGER": str(links["logger-1"]),
    }
    async with InstrumentRack(sim):
        results = await asyncio.gather(
            *(
                poll_once(load_edge_config(examples / f"edge-serial-{kind}.yaml", env=env))
                for kind in ("nmea", "polled", "kv")
            )
        )
    values: dict[str, dict[str, Any]] = {}
    for groups in results:
        for group in groups:
            for r in group.readings():
                assert r.quality is Quality.GOOD, r
                values.setdefault(r.device, {})[r.point] = r.value
    assert values["gps-1"]["latitude"] == 4807.038 and values["gps-1"]["fix_valid"] is True
    assert 4 <= values["gps-1"]["satellites"] <= 12
    assert 543.4 <= values["gps-1"]["altitude"] <= 547.4
    assert values["analyser-1"]["status"] == "OK"
    assert 18.5 <= values["analyser-1"]["temperature"] <= 24.5
    assert values["logger-1"]["pump_running"] is True
    assert values["logger-1"]["level_cm"] == pytest.approx(values["logger-1"]["level"] * 100)
    assert set(values["logger-1"]) == {"logger_time", "flow", "level", "level_cm", "pump_running"}


async def test_once_dry_run_waits_for_a_sentence_of_a_stream(tmp_path: Path) -> None:
    sim, links = shipped_sim(tmp_path)
    config_file = ROOT / "config" / "examples" / "edge-serial-nmea.yaml"
    env = {**os.environ, "FIELDLINK_GPS": str(links["gps-1"])}
    async with InstrumentRack(sim):
        process = await start_edge(
            config_file,
            "--once",
            "--dry-run",
            "--json",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert {line["point"] for line in lines} == {
        "fix_time",
        "latitude",
        "longitude",
        "fix_quality",
        "satellites",
        "hdop",
        "altitude",
        "fix_valid",
        "speed",
        "speed_ms",
        "course",
    }
    assert {line["quality"] for line in lines} == {"good"}


async def test_once_on_a_missing_port_reports_every_point_disconnected(tmp_path: Path) -> None:
    config = edge(None, "gw", [serial_bus("gps", tmp_path / "nothing")], [gps_device()])
    groups = await poll_once(config)
    readings = [r for g in groups for r in g.readings()]
    assert len(readings) == 5
    assert {(r.quality, r.reason) for r in readings} == {(Quality.BAD, "disconnected")}


MIXED = (
    "test: 1 problem\n"
    "  buses[0].name: bus 'line' has streaming device(s) (gps-1) and polled device(s) "
    "(probe-1); a bus carries one kind: give the streaming devices a bus (port) of their own"
)


def mixed_line_doc(tmp_path: Path) -> dict[str, Any]:
    stream = {**gps_device(), "bus": "line"}
    polled = {**polled_device("probe-1", "01", 1.0), "bus": "line"}
    return {
        "kind": "edge",
        "agent": {"id": "gw", "site": SITE},
        "buses": [serial_bus("line", tmp_path / "x")],
        "devices": [stream, polled],
    }


def test_a_bus_mixing_streaming_and_polled_devices_is_refused_by_validation(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_edge(mixed_line_doc(tmp_path), "test", env={})
    assert caught.value.render() == MIXED


class SerialWithoutHook:
    """The serial driver as a third-party plugin without the `is_streaming` hook would be."""

    name = "serial"
    bus_model = SerialPlugin.bus_model
    device_model = SerialPlugin.device_model

    def open_bus(self, bus: BusBase) -> BusLink:
        return SerialPlugin().open_bus(bus)

    def compile_device(self, device: DeviceBase) -> DeviceProgram | StreamDecoder:
        return SerialPlugin().compile_device(device)


def test_without_the_hook_the_mix_is_refused_when_the_agent_starts(tmp_path: Path) -> None:
    registry = DriverRegistry(entries=[])
    registry.add(SerialWithoutHook())
    config = validate_edge(mixed_line_doc(tmp_path), "test", env={}, registry=registry)
    with pytest.raises(ConfigError) as caught:
        build_workers(config, lambda groups: None, registry)
    assert caught.value.render() == MIXED


# -- the link itself: TCP serial servers, cancellation, a port in use ---------------------


@asynccontextmanager
async def serial_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A raw TCP serial device server on a free port (like a Moxa NPort in TCP server mode)."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stream_through_a_tcp_serial_server_and_its_reconnect() -> None:
    nmea = Checksum("nmea")
    connections = 0

    async def gps(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for n in range(3):
            # A sentence in two writes, noise between sentences: the deframer copes.
            wire = nmea.append(GGA_FIXED.format(n=n).encode()) + b"\r\n"
            writer.write(b"\x00\x7f" + wire[:10])
            await writer.drain()
            writer.write(wire[10:])
            await writer.drain()
        writer.close()  # the server drops the connection: the agent must reconnect

    groups: list[Group] = []
    async with serial_server(gps) as port:
        bus = {
            "name": "gps",
            "driver": "serial",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
        }
        (worker,) = build_workers(edge(None, "gw", [bus], [gps_device()]), groups.extend)
        task = asyncio.create_task(worker.run())
        try:
            await async_wait_for(
                lambda: (
                    connections >= 2 and len([g for g in groups if "r" not in g.points[0]]) >= 6
                ),
                timeout=15,
                message="two connections' sentences",
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    good = [r for g in groups for r in g.readings() if r.quality is Quality.GOOD]
    assert {r.value for r in good if r.point == "satellites"} >= {0, 1, 2}
    assert {r.reason for g in groups for r in g.readings()} - {None} <= {"disconnected"}


GGA_FIXED = "GPGGA,120000.00,4807.0380,N,01131.0000,E,1,{n:02d},0.9,545.4,M,46.9,M,,"


async def test_polled_commands_through_a_tcp_serial_server_skipping_an_echo() -> None:
    async def analyser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                command = line.strip()
                writer.write(command + b"\r\n")  # a half-duplex adapter echoes what it sent
                if command == b"#01MEAS?":
                    writer.write(Checksum("crc16-modbus").append(b"T=19.25;RH=50.5") + b"\r\n")
                elif command == b"#01STAT?":
                    writer.write(Checksum("crc16-modbus").append(b"OK,77") + b"\r\n")
                await writer.drain()
        finally:
            writer.close()

    device = polled_device("probe-1", "01", 1.0)
    device["commands"][0]["reply_match"] = "^T="
    device["commands"][1]["reply_match"] = "^OK,"
    async with serial_server(analyser) as port:
        bus = {
            "name": "rs485",
            "driver": "serial",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout": 1.0,
        }
        groups = await poll_once(edge(None, "gw", [bus], [device]))
    got = {r.point: r.value for g in groups for r in g.readings()}
    assert got == {"temperature": 19.25, "humidity": 50.5, "status": "OK", "uptime": 77}


async def test_a_refused_tcp_connection_is_disconnected() -> None:
    async with serial_server(lambda r, w: asyncio.sleep(0)) as port:
        pass  # closed again: nothing listens on the port now
    bus = {"name": "gps", "driver": "serial", "transport": "tcp", "host": "127.0.0.1", "port": port}
    groups = await poll_once(edge(None, "gw", [bus], [gps_device()]))
    assert {(r.quality, r.reason) for g in groups for r in g.readings()} == {
        (Quality.BAD, "disconnected")
    }


async def test_cancelling_a_read_or_a_command_raises_cancelled_and_the_link_goes_on(
    tmp_path: Path,
) -> None:
    link_path = tmp_path / "rs485"
    sim = SimConfig.model_validate({"kind": "sim", "instruments": [probe("p1", "01", link_path)]})
    config = edge(
        None,
        "gw",
        [serial_bus("rs485", link_path, timeout=1.0)],
        [polled_device("probe-1", "01", 1.0)],
    )
    bus, device = config.buses[0], config.devices[0]
    plugin = DriverRegistry().get("serial")
    link = plugin.open_bus(bus)
    program = plugin.compile_device(device)
    assert isinstance(link, SerialLink) and isinstance(program, PolledProgram)
    meas = program.requests[0]
    async with InstrumentRack(sim) as rack:
        await link.connect()
        try:
            receive = asyncio.create_task(link.receive())
            await asyncio.sleep(0)
            receive.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receive
            rack.set_silent("p1", True)
            command = asyncio.create_task(link.execute(meas))
            await async_wait_for(lambda: "#01MEAS?" in rack.requests("p1"), message="sent")
            command.cancel()
            with pytest.raises(asyncio.CancelledError):
                await command
            rack.set_silent("p1", False)
            reply = await link.execute(meas)
            assert program.decode(meas, reply, 1).readings()[0].quality is Quality.GOOD
        finally:
            await link.close()


async def test_a_port_in_use_or_missing_is_a_clear_connect_error(tmp_path: Path) -> None:
    link_path = tmp_path / "rs485"
    sim = SimConfig.model_validate({"kind": "sim", "instruments": [probe("p1", "01", link_path)]})
    plugin = DriverRegistry().get("serial")
    config = edge(None, "gw", [serial_bus("rs485", link_path)], [])
    first, second = plugin.open_bus(config.buses[0]), plugin.open_bus(config.buses[0])
    async with InstrumentRack(sim):
        await first.connect()
        try:
            with pytest.raises(ConnectError) as caught:
                await second.connect()
            assert str(caught.value) == (
                f"disconnected: {link_path}: in use by another program (the port is locked)"
            )
        finally:
            await first.close()
    with pytest.raises(ConnectError) as caught:
        await second.connect()
    assert str(caught.value) == (
        f"disconnected: {link_path}: no such port (unplugged? check the path, or "
        "/dev/serial/by-id/)"
    )
