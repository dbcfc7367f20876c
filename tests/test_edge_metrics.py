"""The agent's health endpoint, scraped over real HTTP while the agent runs against simulated
devices and a real Mosquitto (and, for the outage, the real ingester and InfluxDB): what an
operator watching /metrics and /healthz sees.

1. A live and a dead Modbus device on one bus (the `fieldlink edge run` process): readings
   and up=1 for one; up=0, the breaker open and timeouts rising for the other.
2. An NMEA stream: a sentence with a corrupted checksum bumps the checksum frame counter.
3. The broker stops: MQTT connected 0, the spool grows, /healthz says it spools, then 503
   once the spool is nearly full; the broker is back: connected, a reconnect counted, 200.
4. A port already in use: one line naming the address and health.listen, exit 2.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from helpers import InfluxDatabase, async_wait_for, start_edge
from prometheus_client.samples import Sample
from test_e2e import running
from test_fieldlink_metrics import get, peek, scrape, value
from test_serial_driver import cloud_for, gps_device, gps_sim, ingester_running, serial_bus

from config.edge import EdgeConfig, validate_edge
from config.sim import SimConfig
from edge.agent import run_agent
from fieldlink import __version__
from fieldlink.localstack import Mosquitto, free_port
from sim.instruments import InstrumentRack
from sim.server import SimPlant

ROOT = Path(__file__).resolve().parent.parent
SITE = "metrics-site"

Samples = dict[str, list[Sample]]


def plant(units: list[int], registers: int = 1) -> SimConfig:
    return SimConfig.model_validate(
        {
            "kind": "sim",
            "devices": [
                {
                    "name": f"dev-{u}",
                    "gateway": "gw",
                    "unit_id": u,
                    "registers": [
                        {"address": a, "type": "uint16", "value": u * 100 + a}
                        for a in range(registers)
                    ],
                }
                for u in units
            ],
        }
    )


def modbus_device(name: str, unit: int, interval: float, registers: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "bus": "line",
        "unit_id": unit,
        "interval": interval,
        "points": [{"name": f"r{a}", "address": a, "type": "uint16"} for a in range(registers)],
    }


def agent_doc(
    agent: str, broker: Mosquitto, listen: str, buses: list[Any], devices: list[Any]
) -> dict[str, Any]:
    return {
        "kind": "edge",
        "agent": {"id": agent, "site": SITE},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_initial": 0.2,
            "reconnect_max": 1.0,
        },
        "publish": {"max_batch": 50, "max_delay": 0.05},
        "health": {"listen": listen},
        "buses": buses,
        "devices": devices,
    }


def modbus_bus(port: int) -> dict[str, Any]:
    return {"name": "line", "driver": "modbus", "host": "127.0.0.1", "port": port, "timeout": 0.2}


@asynccontextmanager
async def agent_running(config: EdgeConfig) -> AsyncIterator[str]:
    """The agent in this process; yields the endpoint's base URL once it answers."""
    stop = asyncio.Event()
    async with running(run_agent(config, stop=stop), stop):
        assert config.health.address is not None
        host, port = config.health.address
        base = f"http://{host}:{port}"
        await async_wait_for(
            lambda: get(f"{base}/healthz"), ignore=(OSError,), message="the endpoint answers"
        )
        yield base


async def scrape_until(
    base: str,
    predicate: Any,
    message: str,
    timeout: float = 20,  # noqa: ASYNC109  # a poll deadline, like async_wait_for's
) -> Samples:
    """Scrape until ``predicate(samples)`` holds; return those samples. A refused connection
    counts as "not yet" (an agent process still starting)."""

    async def attempt() -> Samples | None:
        samples = await scrape(base)
        return samples if predicate(samples) else None

    result: Samples = await async_wait_for(
        attempt, timeout=timeout, message=message, ignore=(ConnectionRefusedError,)
    )
    return result


# -- 1. a live and a dead device, through `fieldlink edge run` ------------------------------------


async def test_a_dead_device_shows_failures_rising_and_up_0_while_a_live_one_reads(
    tmp_path: Path, mosquitto: Mosquitto, unique_id: str
) -> None:
    agent = f"agent-{unique_id}"[:60]
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    async with SimPlant(plant([1])) as sim:
        port = sim.endpoints()["dev-1"][1]
        doc = agent_doc(
            agent,
            mosquitto,
            listen,
            [modbus_bus(port)],
            [modbus_device("live", 1, 0.2), modbus_device("dead", 9, 0.2)],
        )
        config_file = tmp_path / "agent.yaml"
        config_file.write_text(yaml.safe_dump(doc))
        log_file = tmp_path / "agent.log"
        with log_file.open("wb") as log:
            process = await start_edge(
                config_file,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            live = {"device": "live", "bus": "line", "driver": "modbus"}
            dead = {"device": "dead", "bus": "line", "driver": "modbus"}

            def readings_and_timeouts(s: Samples) -> bool:
                return (
                    peek(s, "fieldlink_device_readings_total", quality="good", **live) >= 3
                    and peek(s, "fieldlink_device_failures_total", reason="timeout", **dead) >= 1
                    and peek(s, "fieldlink_mqtt_connected") == 1
                )

            first = await scrape_until(
                base, readings_and_timeouts, "live readings and dead timeouts", timeout=30
            )
            failures = value(first, "fieldlink_device_failures_total", reason="timeout", **dead)
            second = await scrape_until(
                base,
                lambda s: (
                    peek(s, "fieldlink_device_failures_total", reason="timeout", **dead) > failures
                ),
                "the dead device's failures rising",
            )
            healthz = await get(f"{base}/healthz")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
    log_text = log_file.read_text()
    assert code == 0, log_text
    s = second
    assert value(s, "fieldlink_agent_info", version=__version__, agent=agent, site=SITE) == 1
    assert value(s, "fieldlink_device_up", **live) == 1
    assert value(s, "fieldlink_device_up", **dead) == 0
    assert value(s, "fieldlink_device_breaker_open", **live) == 0
    assert value(s, "fieldlink_device_breaker_open", **dead) == 1
    assert value(s, "fieldlink_device_readings_total", quality="bad", **live) == 0
    assert value(s, "fieldlink_device_readings_total", quality="good", **dead) == 0
    # Every failed poll of the dead device is one bad reading of its one point.
    dead_bad = value(s, "fieldlink_device_readings_total", quality="bad", **dead)
    dead_failed = value(s, "fieldlink_device_failures_total", reason="timeout", **dead)
    assert dead_bad == dead_failed >= 2
    assert [x.labels["reason"] for x in s["fieldlink_device_failures_total"]] == ["timeout"]
    # The breaker spares the bus: fewer requests to the dead device than polls of it.
    assert value(s, "fieldlink_device_requests_total", **dead) < value(
        s, "fieldlink_device_polls_total", **dead
    )
    assert value(s, "fieldlink_device_requests_total", **live) == value(
        s, "fieldlink_device_polls_total", **live
    )
    assert value(s, "fieldlink_device_last_success_timestamp_seconds", **dead) == 0
    last_success = value(s, "fieldlink_device_last_success_timestamp_seconds", **live)
    assert 0 <= time.time() - last_success < 10
    assert value(s, "fieldlink_bus_connected", bus="line", driver="modbus") == 1
    # Published (whether the shared broker has a subscriber for it or not).
    published = value(s, "fieldlink_publish_messages_total")
    assert published + value(s, "fieldlink_publish_not_delivered_total") >= 1
    assert healthz.status == 200
    assert healthz.body.startswith(f"ok: MQTT broker {mosquitto.host}:{mosquitto.port} connected")
    assert f"health endpoint on {base}/metrics" in log_text


# -- 2. frame trouble of a stream ----------------------------------------------------------------


async def test_a_corrupted_nmea_sentence_bumps_the_checksum_frame_counter(
    tmp_path: Path, mosquitto: Mosquitto, unique_id: str
) -> None:
    link = tmp_path / "gps"
    listen = f"127.0.0.1:{free_port()}"
    doc = agent_doc(
        f"agent-{unique_id}"[:60],
        mosquitto,
        listen,
        [serial_bus("gps", link, baudrate=38400)],
        [gps_device()],
    )
    config = validate_edge(doc, "test", env={})
    gps = {"device": "gps-1", "bus": "gps", "driver": "serial"}
    async with InstrumentRack(gps_sim(link)) as rack, agent_running(config) as base:
        before = await scrape_until(
            base,
            lambda s: peek(s, "fieldlink_device_good_frames_total", **gps) >= 3,
            "three good sentences",
        )
        assert value(before, "fieldlink_device_frame_errors_total", kind="checksum", **gps) == 0
        rack.corrupt_next("gps-1", 1)
        after = await scrape_until(
            base,
            lambda s: (
                peek(s, "fieldlink_device_frame_errors_total", kind="checksum", **gps) == 1
                and peek(s, "fieldlink_device_good_frames_total", **gps)
                > value(before, "fieldlink_device_good_frames_total", **gps)
            ),
            "the checksum failure counted, and good sentences after it",
        )
    s = after
    assert value(s, "fieldlink_device_frame_errors_total", kind="parse", **gps) == 0
    assert {x.labels["kind"] for x in s["fieldlink_device_frame_dropped_bytes_total"]} == {
        "noise",
        "overlong",
    }
    # One bad sentence is a bad reading of each of the GGA sentence's five points; the
    # stream never went silent, so the device stayed up and no failure was counted.
    assert value(s, "fieldlink_device_readings_total", quality="bad", **gps) == 5
    assert value(s, "fieldlink_device_up", **gps) == 1
    assert "fieldlink_device_failures_total" not in s
    # Polls do not apply to a stream.
    assert "fieldlink_device_polls_total" not in s
    assert value(s, "fieldlink_bus_connected", bus="gps", driver="serial") == 1


# -- 3. the broker goes away ---------------------------------------------------------------------


async def test_a_stopped_broker_shows_in_the_spool_the_mqtt_gauge_and_healthz(
    private_mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str
) -> None:
    broker = private_mosquitto
    where = f"{broker.host}:{broker.port}"
    max_bytes = 1 << 16  # the smallest cap: nearly full within seconds at ~800 readings/s
    listen = f"127.0.0.1:{free_port()}"
    async with SimPlant(plant([1], registers=40)) as sim:
        doc = agent_doc(
            f"agent-{unique_id}"[:60],
            broker,
            listen,
            [modbus_bus(sim.endpoints()["dev-1"][1])],
            [modbus_device("meter", 1, 0.05, registers=40)],
        )
        doc["spool"] = {"max_bytes": max_bytes}
        config = validate_edge(doc, "test", env={})
        async with (
            ingester_running(cloud_for(broker, influx_db, unique_id)),
            agent_running(config) as base,
        ):
            await scrape_until(
                base,
                lambda s: (
                    peek(s, "fieldlink_mqtt_connected") == 1
                    and peek(s, "fieldlink_publish_confirmed_total") >= 3
                ),
                "messages confirmed by the ingester",
            )
            healthy = await get(f"{base}/healthz")
            assert healthy.status == 200, healthy
            assert healthy.body.startswith(f"ok: MQTT broker {where} connected")

            await asyncio.to_thread(broker.stop)
            down = await scrape_until(
                base, lambda s: peek(s, "fieldlink_mqtt_connected") == 0, "MQTT down"
            )
            spooling = await get(f"{base}/healthz")
            assert spooling.status == 200, spooling
            assert spooling.body.startswith(f"spooling: MQTT broker {where} not connected")
            rising = await scrape_until(
                base,
                lambda s: (
                    peek(s, "fieldlink_spool_messages")
                    > value(down, "fieldlink_spool_messages") + 5
                ),
                "the spool growing",
            )
            assert value(rising, "fieldlink_spool_oldest_age_seconds") > 0
            assert value(rising, "fieldlink_spool_max_bytes") == max_bytes

            async def nearly_full() -> Any:
                answer = await get(f"{base}/healthz")
                return answer if answer.status == 503 else None

            full = await async_wait_for(
                nearly_full, timeout=30, message="/healthz 503 with a nearly full spool"
            )
            assert full.body.startswith(f"failing: MQTT broker {where} not connected (")
            assert "the spool is nearly full" in full.body
            s = await scrape(base)
            assert value(s, "fieldlink_spool_bytes") >= 0.9 * max_bytes
            assert value(s, "fieldlink_mqtt_reconnects_total") == 0

            await asyncio.to_thread(broker.start)
            back = await scrape_until(
                base, lambda s: peek(s, "fieldlink_mqtt_connected") == 1, "MQTT back"
            )
            assert value(back, "fieldlink_mqtt_reconnects_total") == 1
            again = await get(f"{base}/healthz")
            assert again.status == 200 and again.body.startswith("ok: "), again


# -- 4. start-up -------------------------------------------------------------------------------


async def test_a_port_in_use_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        doc = {
            "kind": "edge",
            "agent": {"id": "gw-01", "site": SITE},
            "health": {"listen": f"127.0.0.1:{port}"},
            "buses": [modbus_bus(free_port())],
            "devices": [modbus_device("meter", 1, 1.0)],
        }
        config_file = tmp_path / "agent.yaml"
        config_file.write_text(yaml.safe_dump(doc))
        process = await start_edge(
            config_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    text = err.decode()
    assert "Traceback" not in text and out == b""
    (line,) = [x for x in text.splitlines() if "health.listen" in x]
    assert line.endswith(
        f"health.listen: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another process listens there: a second agent or ingester?); stop it, or choose "
        "another port"
    )


def test_an_agent_without_health_listen_does_not_load_the_endpoint() -> None:
    probe = (
        "import sys\n"
        "import edge.cli, edge.agent, edge.publisher, config.edge\n"
        "print(sorted(m for m in sys.modules if m in ('fieldlink.metrics', 'edge.health')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
