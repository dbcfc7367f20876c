"""The ingester's health endpoint, scraped over real HTTP while it runs against a real
Mosquitto and InfluxDB 1.x: its counts agree with what InfluxDB stored, a dead letter is
counted by kind, an InfluxDB outage shows in /healthz and the failure counter, and a port
in use stops `fieldlink cloud run` with one clear line."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import InfluxDatabase, async_wait_for
from prometheus_client.samples import Sample
from test_cloud_ingester import Publisher, count, make_config, now_ns, running, sample_readings
from test_fieldlink_metrics import Response, get, peek, scrape, value

from cloud.ingester import Ingester
from fieldlink import __version__
from fieldlink.localstack import InfluxDB1, Mosquitto, free_port
from wire.codec import encode_batch
from wire.topics import data_topic

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[str, list[Sample]]


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


async def test_counts_agree_with_influxdb_and_dead_letters_are_counted_by_kind(
    mosquitto: Mosquitto, influx_db: InfluxDatabase, publisher: Publisher, unique_id: str
) -> None:
    service, db = influx_db
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    influx = {"api": "v1", "url": service.url, "database": db}
    config = make_config(mosquitto, influx, unique_id, health={"listen": listen})
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    started = time.time()
    async with running(Ingester(config)):
        before = await scrape(base)
        assert value(before, "fieldlink_ingester_readings_written_total") == 0
        assert value(before, "fieldlink_ingester_last_write_timestamp_seconds") == 0
        for i in range(3):
            payload = encode_batch("plant-a", "gw-01", sample_readings(now_ns() + i))
            await asyncio.to_thread(publisher.publish, topic, payload)
        await asyncio.to_thread(publisher.publish, topic, b"not json at all")

        async def all_stored() -> bool:
            return await asyncio.to_thread(count, service, db) == 18

        await async_wait_for(all_stored, message="18 readings stored")

        async def settled() -> Samples | None:
            s = await scrape(base)
            done = (
                peek(s, "fieldlink_ingester_messages_received_total") == 4
                and peek(s, "fieldlink_ingester_writes_in_flight") == 0
                and peek(s, "fieldlink_ingester_dead_lettered_total", kind="not_json") == 1
            )
            return s if done else None

        s: Samples = await async_wait_for(settled, message="every message taken and finished")
        healthz = await get(f"{base}/healthz")
    stored = await asyncio.to_thread(count, service, db)
    assert value(s, "fieldlink_ingester_readings_written_total") == stored == 18
    assert value(s, "fieldlink_ingester_write_batches_total") >= 1
    assert value(s, "fieldlink_ingester_invalid_total", kind="not_json") == 1
    assert value(s, "fieldlink_ingester_write_failures_total", kind="unavailable") == 0
    assert value(s, "fieldlink_ingester_write_failures_total", kind="rejected") == 0
    assert value(s, "fieldlink_ingester_mqtt_connected") == 1
    assert value(s, "fieldlink_ingester_info", version=__version__) == 1
    last_write = value(s, "fieldlink_ingester_last_write_timestamp_seconds")
    assert started <= last_write <= time.time()
    assert healthz.status == 200
    assert healthz.body == (
        f"ok: MQTT broker {mosquitto.host}:{mosquitto.port} connected, writing to "
        f"{service.url} db={db}\n"
    )


async def test_an_influxdb_outage_shows_in_healthz_and_the_failure_counter(
    mosquitto: Mosquitto, private_influxdb1: InfluxDB1, publisher: Publisher, unique_id: str
) -> None:
    service = private_influxdb1
    listen = f"127.0.0.1:{free_port()}"
    base = f"http://{listen}"
    influx = {
        "api": "v1",
        "url": service.url,
        "database": "plant",
        "create_database": True,
        "timeout": 2,
    }
    config = make_config(mosquitto, influx, unique_id, health={"listen": listen})
    topic = data_topic("plant-a", "gw-01", root=unique_id)

    def batch(i: int) -> bytes:
        return encode_batch("plant-a", "gw-01", sample_readings(now_ns() + i)[:1])

    ingester = Ingester(config, retry_first=0.05, retry_cap=0.2)
    async with running(ingester):
        await asyncio.to_thread(publisher.publish, topic, batch(0))
        await async_wait_for(
            lambda: scrape_value(base, "fieldlink_ingester_readings_written_total", 1),
            message="the first reading written",
        )
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(publisher.publish, topic, batch(1))

        async def failing() -> Response | None:
            answer = await get(f"{base}/healthz")
            return answer if answer.status == 503 else None

        down: Response = await async_wait_for(
            failing, message="/healthz 503 while InfluxDB is down"
        )
        s = await scrape(base)
        assert value(s, "fieldlink_ingester_write_failures_total", kind="unavailable") >= 1
        assert value(s, "fieldlink_ingester_writes_in_flight") == 1
        assert value(s, "fieldlink_ingester_readings_written_total") == 1
        await asyncio.to_thread(service.start)
        await async_wait_for(
            lambda: scrape_value(base, "fieldlink_ingester_readings_written_total", 2),
            timeout=30,
            message="the held reading written after the outage",
        )
        up = await get(f"{base}/healthz")
    assert down.body.startswith(f"failing: writes to {service.url} db=plant fail (")
    assert "the messages stay unacknowledged at the broker" in down.body
    assert up.status == 200 and up.body.startswith("ok: "), up


async def scrape_value(base: str, name: str, expected: float) -> bool:
    return peek(await scrape(base), name) == expected


def test_a_port_in_use_stops_cloud_run_with_one_line_and_exit_2(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_file = tmp_path / "cloud.yaml"
        config_file.write_text(
            "kind: cloud\n"
            f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}, client_id: ing-busy}}\n"
            "influx: {api: v1, url: 'http://127.0.0.1:9', database: d}\n"
            f"health: {{listen: '127.0.0.1:{port}'}}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "fieldlink", "cloud", "run", str(config_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "health.listen" in x]
    assert line.endswith(
        f"health.listen: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another process listens there: a second agent or ingester?); stop it, or choose "
        "another port"
    )
    assert "subscribed" not in result.stderr  # stopped before connecting anywhere
