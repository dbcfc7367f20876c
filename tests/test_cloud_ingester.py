"""The ingester against a real Mosquitto, InfluxDB 1.x and VictoriaMetrics: exact points,
dead letters, a persistent session across restarts and an InfluxDB outage that loses nothing.

The ingester runs in-process in a task; publishers and the dead-letter watcher are plain paho
clients whose blocking calls run in a worker thread so the ingester's loop keeps going.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from helpers import InfluxDatabase, ServiceFactory, async_wait_for, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from cloud.errors import EXIT_INFLUX, EXIT_MQTT, EXIT_OK
from cloud.ingester import Ingester
from config.cloud import CloudConfig
from fieldlink.localstack import InfluxDB1, InfluxError, Mosquitto, VictoriaMetrics
from wire.codec import encode_batch
from wire.model import Quality, Reading
from wire.topics import data_topic

ROOT = Path(__file__).resolve().parent.parent


def now_ns() -> int:
    """A sample time of a few seconds ago, whole milliseconds (VictoriaMetrics keeps ms)."""
    return (time.time_ns() // 1_000_000 - 5_000) * 1_000_000


class Publisher:
    """A paho client that publishes at QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, broker: Mosquitto) -> None:
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"broker did not confirm the publish to {topic}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Watcher:
    """Subscribes to one topic filter and collects what arrives."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        client.connect(broker.host, broker.port)
        client.loop_start()
        self._client = client
        assert self._subscribed.wait(10), f"no SUBACK for {topic}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


def make_config(
    broker: Mosquitto, influx: dict[str, Any], root: str, **sections: Any
) -> CloudConfig:
    return CloudConfig.model_validate(
        {
            "kind": "cloud",
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": f"ing-{root}",
                "topic_root": root,
            },
            "influx": influx,
            "batch": {"max_points": 5000, "max_delay": 0.05},
            **sections,
        }
    )


@pytest.fixture
def config(mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str) -> CloudConfig:
    influx = {"api": "v1", "url": influx_db.service.url, "database": influx_db.name}
    return make_config(mosquitto, influx, unique_id, ingest={"max_message_bytes": 4096})


@contextlib.asynccontextmanager
async def running(ingester: Ingester, expect: int = EXIT_OK) -> AsyncIterator[asyncio.Task[int]]:
    """Run the ingester until the block ends, then stop it and check its exit code."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop=stop, ready=ready.set))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        raise AssertionError(f"ingester ended before it was ready: exit {task.result()}")
    assert ready.is_set(), "ingester did not subscribe within 20 s"
    try:
        yield task
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 20)
    assert code == expect


def select(service: InfluxDB1, db: str, q: str) -> list[dict[str, Any]]:
    series: list[dict[str, Any]] = service.query(q, db)["results"][0].get("series", [])
    return series


def count(service: InfluxDB1, db: str, where: str = "") -> int:
    series = select(service, db, f"SELECT count(quality) FROM readings {where}")
    return int(series[0]["values"][0][1]) if series else 0


def sample_readings(t: int) -> list[Reading]:
    return [
        Reading("pump-1", "meter-1", "voltage", t, 231.4, "V"),
        Reading("pump-1", "meter-1", "starts", t, 7),
        Reading("pump-1", "meter-1", "running", t, True),
        Reading("pump-1", "meter-1", "model", t, "PX-200"),
        Reading.bad(
            asset="pump-1", device="meter-1", point="current", ts_ns=t, reason="timeout", unit="A"
        ),
        Reading("pump-1", "meter-2", "temp", t + 1000, 41.5, "deg C", Quality.UNCERTAIN, "range"),
    ]


async def test_readings_land_in_influxdb1_exactly(
    config: CloudConfig, influx_db: InfluxDatabase, publisher: Publisher, unique_id: str
) -> None:
    service, db = influx_db
    t = now_ns()
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    ingester = Ingester(config)
    async with running(ingester):
        payload = encode_batch("plant-a", "gw-01", sample_readings(t))
        await asyncio.to_thread(publisher.publish, topic, payload)
        await async_wait_for(lambda: count(service, db) == 6, message="6 readings in InfluxDB")
    result = select(
        service,
        db,
        'SELECT "quality", "reason", "state", "text", "value" FROM readings GROUP BY *',
    )
    got = {
        (s["tags"]["device"], s["tags"]["point"], s["tags"]["unit"]): [
            tuple(v) for v in s["values"]
        ]
        for s in result
    }
    assert got == {
        ("meter-1", "voltage", "V"): [(t, "good", None, None, None, 231.4)],
        ("meter-1", "starts", ""): [(t, "good", None, None, None, 7)],
        ("meter-1", "running", ""): [(t, "good", None, True, None, None)],
        ("meter-1", "model", ""): [(t, "good", None, None, "PX-200", None)],
        ("meter-1", "current", "A"): [(t, "bad", "timeout", None, None, None)],
        ("meter-2", "temp", "deg C"): [(t + 1000, "uncertain", "range", None, None, 41.5)],
    }
    assert {(s["tags"]["site"], s["tags"]["agent"], s["tags"]["asset"]) for s in result} == {
        ("plant-a", "gw-01", "pump-1")
    }
    keys = select(service, db, "SHOW FIELD KEYS FROM readings")[0]["values"]
    assert ["value", "float"] in keys
    counters = ingester.counters
    assert (counters.messages_received, counters.readings_written) == (1, 6)
    assert counters.invalid == {} and counters.batches_written == 1


async def test_v2_api_into_victoriametrics(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, publisher: Publisher, unique_id: str
) -> None:
    site = f"site-{unique_id[-8:]}"
    influx = {"api": "v2", "url": victoria.url, "org": "acme", "bucket": "plant", "token": "t0k"}
    config = make_config(mosquitto, influx, unique_id)
    t = now_ns()
    ingester = Ingester(config)
    async with running(ingester):
        payload = encode_batch(site, "gw-01", sample_readings(t))
        await asyncio.to_thread(
            publisher.publish, data_topic(site, "gw-01", root=unique_id), payload
        )

        def exported() -> list[dict[str, Any]]:
            rows = victoria.export(f'{{__name__=~"readings_(value|state)",site="{site}"}}')
            return rows if len(rows) == 4 else []

        rows = await async_wait_for(
            lambda: asyncio.to_thread(exported), timeout=20, message="4 series in VictoriaMetrics"
        )
    got = {
        (r["metric"]["__name__"], r["metric"]["point"], r["metric"].get("unit")): (
            r["values"],
            r["timestamps"],
        )
        for r in rows
    }
    ms = t // 1_000_000
    assert got == {
        ("readings_value", "voltage", "V"): ([231.4], [ms]),
        ("readings_value", "starts", None): ([7], [ms]),
        ("readings_state", "running", None): ([1], [ms]),
        ("readings_value", "temp", "deg C"): ([41.5], [ms + 0]),  # 1 µs later: same ms
    }
    assert {r["metric"]["agent"] for r in rows} == {"gw-01"}
    assert ingester.counters.readings_written == 6


async def test_invalid_messages_are_dead_lettered_counted_and_logged_once(
    config: CloudConfig,
    influx_db: InfluxDatabase,
    mosquitto: Mosquitto,
    publisher: Publisher,
    unique_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud")
    service, db = influx_db
    root = unique_id
    t = now_ns()
    good = encode_batch("plant-a", "gw-ok", [Reading("a1", "d1", "p1", t, 1.5, "V")])
    nan = (
        b'{"schema":"fieldlink.batch/1","site":"plant-a","agent":"gw-nan","groups":[{"asset":"a1",'
        b'"device":"d1","t":' + str(t).encode() + b',"points":[{"p":"p1","v":NaN}]}]}'
    )
    oversized = encode_batch(
        "plant-a", "gw-big", [Reading("a1", "d1", f"p{i}", t, float(i)) for i in range(200)]
    )
    assert len(oversized) > 4096
    invalid = [
        (data_topic("plant-a", "gw-text", root=root), b"not json at all", "not_json"),
        (data_topic("plant-a", "gw-text", root=root), b"still not json", "not_json"),
        (data_topic("plant-a", "gw-foreign", root=root), b'{"hello": "world"}', "payload"),
        (data_topic("plant-a", "gw-nan", root=root), nan, "not_json"),
        (data_topic("plant-a", "gw-big", root=root), oversized, "too_large"),
        (data_topic("plant-b", "gw-ok", root=root), good, "mismatch"),
        (f"{root}/v1/bad site/gw-ok/data", good, "topic"),
    ]
    watcher = await asyncio.to_thread(Watcher, mosquitto, f"{root}/v1/deadletter")
    ingester = Ingester(config)
    try:
        async with running(ingester):
            for topic, payload, _ in invalid:
                await asyncio.to_thread(publisher.publish, topic, payload)
            await asyncio.to_thread(
                publisher.publish, data_topic("plant-a", "gw-ok", root=root), good
            )
            await async_wait_for(lambda: count(service, db) == 1, message="the good reading")
            await async_wait_for(
                lambda: len(watcher.messages) == len(invalid), message="every dead letter"
            )
    finally:
        await asyncio.to_thread(watcher.close)

    letters = [orjson.loads(body) for _, body in watcher.messages]
    assert [(d["topic"], d["kind"]) for d in letters] == [(t_, k) for t_, _, k in invalid]
    for letter, (_, payload, _) in zip(letters, invalid, strict=True):
        assert letter["reason"]
        assert letter["payload_size"] == len(payload)
        assert base64.b64decode(letter["payload_b64"]) == payload
        assert letter["truncated"] is False
        assert isinstance(letter["received_ns"], int)
    reasons = {d["kind"]: d["reason"] for d in letters}
    assert reasons["too_large"].startswith(f"{len(oversized)} bytes is more than")
    assert "site='plant-b'" in reasons["mismatch"] and "site='plant-a'" in reasons["mismatch"]
    assert reasons["payload"].startswith("schema:")

    assert ingester.counters.invalid == {
        "not_json": 3,
        "payload": 1,
        "too_large": 1,
        "mismatch": 1,
        "topic": 1,
    }
    assert ingester.counters.dead_lettered == 7
    assert ingester.counters.readings_written == 1
    logged = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("invalid message")
    ]
    # One line per source topic: gw-text sent two invalid messages but is logged once.
    assert len(logged) == 6
    assert sum("/gw-text/" in m for m in logged) == 1


async def test_restart_resumes_the_session_and_loses_nothing(
    config: CloudConfig, influx_db: InfluxDatabase, publisher: Publisher, unique_id: str
) -> None:
    service, db = influx_db
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    t = now_ns()

    def batch(i: int) -> bytes:
        return encode_batch("plant-a", "gw-01", [Reading("a1", "d1", "p", t + i, float(i))])

    first = Ingester(config)
    async with running(first):
        await asyncio.to_thread(publisher.publish, topic, batch(0))
        await async_wait_for(lambda: count(service, db) == 1, message="first reading")
    # The ingester is down; the broker queues for its session.
    for i in range(1, 4):
        await asyncio.to_thread(publisher.publish, topic, batch(i))
    second = Ingester(config)
    async with running(second):
        await async_wait_for(lambda: count(service, db) == 4, message="readings sent while down")
    # The message of the first run was acknowledged: it did not come back.
    assert second.counters.messages_received == 3


async def test_a_burst_beyond_receive_maximum_and_batch_size_all_lands(
    mosquitto: Mosquitto, influx_db: InfluxDatabase, publisher: Publisher, unique_id: str
) -> None:
    service, db = influx_db
    influx = {"api": "v1", "url": service.url, "database": db}
    config = make_config(mosquitto, influx, unique_id, batch={"max_points": 7, "max_delay": 0.05})
    config = config.model_copy(
        update={"mqtt": config.mqtt.model_copy(update={"receive_maximum": 5})}
    )
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    t = now_ns()
    ingester = Ingester(config)

    def publish_all() -> None:
        for i in range(300):
            readings = [Reading("a1", "d1", f"p{j}", t + i, float(i * 10 + j)) for j in range(3)]
            publisher.publish(topic, encode_batch("plant-a", "gw-01", readings))

    async with running(ingester):
        await asyncio.to_thread(publish_all)
        await async_wait_for(lambda: count(service, db) == 900, timeout=30, message="900 points")
    assert ingester.counters.messages_received == 300
    assert ingester.counters.readings_written == 900


async def test_broker_restart_reconnects_and_resumes(
    private_mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str
) -> None:
    service, db = influx_db
    influx = {"api": "v1", "url": service.url, "database": db}
    config = make_config(private_mosquitto, influx, unique_id)
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    t = now_ns()

    def publish(i: int) -> None:
        pub = Publisher(private_mosquitto)
        try:
            pub.publish(
                topic, encode_batch("plant-a", "gw-01", [Reading("a", "d", "p", t + i, 1.0)])
            )
        finally:
            pub.close()

    ingester = Ingester(config)
    async with running(ingester):
        await asyncio.to_thread(publish, 0)
        await async_wait_for(lambda: count(service, db) == 1, message="first reading")
        await asyncio.to_thread(private_mosquitto.restart)
        await asyncio.to_thread(publish, 1)  # queued by the broker for the ingester's session
        await async_wait_for(
            lambda: count(service, db) == 2, timeout=30, message="reading after the restart"
        )


async def test_influxdb_outage_retries_and_a_stop_meanwhile_loses_nothing(
    mosquitto: Mosquitto, private_influxdb1: InfluxDB1, publisher: Publisher, unique_id: str
) -> None:
    service = private_influxdb1
    db = "plant"  # does not exist yet: create_database makes it on the first write
    influx = {
        "api": "v1",
        "url": service.url,
        "database": db,
        "create_database": True,
        "timeout": 2,
    }
    config = make_config(mosquitto, influx, unique_id)
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    t = now_ns()

    def batch(i: int) -> bytes:
        return encode_batch("plant-a", "gw-01", [Reading("a1", "d1", "p", t + i, float(i))])

    def stored() -> int:
        try:
            return count(service, db)
        except InfluxError:  # "database not found" until the first write created it
            return 0

    first = Ingester(config, retry_first=0.05, retry_cap=0.2)
    async with running(first):
        await asyncio.to_thread(publisher.publish, topic, batch(0))
        await async_wait_for(lambda: stored() == 1, message="first reading")
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(publisher.publish, topic, batch(1))
        await async_wait_for(lambda: first.counters.write_retries >= 2, message="retries")
        await asyncio.to_thread(service.start)
        await async_wait_for(lambda: stored() == 2, message="reading written after the outage")
        # Down again, and this time the ingester is stopped while it retries.
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(publisher.publish, topic, batch(2))
        await async_wait_for(lambda: first.counters.write_retries >= 4, message="more retries")
    assert first.counters.readings_written == 2
    await asyncio.to_thread(service.start)
    second = Ingester(config)
    async with running(second):
        await async_wait_for(lambda: stored() == 3, message="the unacknowledged message")
    assert second.counters.messages_received == 1


async def test_partial_write_dead_letters_only_the_refused_points(
    mosquitto: Mosquitto,
    config: CloudConfig,
    influx_db: InfluxDatabase,
    publisher: Publisher,
    unique_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, db = influx_db
    t = now_ns()
    # Someone else wrote `state` as a string into this shard: boolean readings now conflict
    # with it, numeric ones (field `value`) do not.
    service.write(f'readings,point=other state="text" {t}', db)
    topic = data_topic("plant-a", "gw-01", root=unique_id)
    readings = [
        Reading("a1", "d1", "speed", t, 12.5),
        Reading("a1", "d1", "running", t, True),
        Reading("a1", "d1", "temp", t, -3.0),
        Reading("a1", "d1", "alarm", t, False),
        Reading("a1", "d1", "level", t, 7),
    ]
    watcher = await asyncio.to_thread(Watcher, mosquitto, f"{unique_id}/v1/deadletter")
    ingester = Ingester(config)
    try:
        async with running(ingester):
            await asyncio.to_thread(
                publisher.publish, topic, encode_batch("plant-a", "gw-01", readings)
            )
            await async_wait_for(
                lambda: len(watcher.messages) == 2, message="two dead-lettered points"
            )
            # The flow goes on: the next message lands.
            after = encode_batch("plant-a", "gw-01", [Reading("a1", "d1", "next", t, 1.0)])
            await asyncio.to_thread(publisher.publish, topic, after)
            await async_wait_for(
                lambda: count(service, db, "WHERE point = 'next'") == 1, message="the next message"
            )
    finally:
        await asyncio.to_thread(watcher.close)
    stored = service.query("SELECT value FROM readings WHERE agent = 'gw-01'", db)
    values = sorted(v[1] for v in stored["results"][0]["series"][0]["values"])
    assert values == [-3.0, 1.0, 7.0, 12.5]
    letters = [orjson.loads(body) for _, body in watcher.messages]
    assert sorted(("point=running" in d["line"], "point=alarm" in d["line"]) for d in letters) == [
        (False, True),
        (True, False),
    ]
    for letter in letters:
        assert letter["kind"] == "refused"
        assert "field type conflict" in letter["reason"]
        assert letter["reason"].startswith("InfluxDB refused the point (HTTP 400)")
    assert ingester.counters.readings_refused == 2
    assert ingester.counters.readings_written == 4
    assert ingester.counters.invalid == {"refused": 2}
    assert caplog.text.count("InfluxDB refused a point (HTTP 400") == 1  # logged once


async def test_missing_database_is_a_clear_fatal_error(
    mosquitto: Mosquitto,
    influxdb1: InfluxDB1,
    publisher: Publisher,
    unique_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    influx = {"api": "v1", "url": influxdb1.url, "database": f"nope_{unique_id}"}
    config = make_config(mosquitto, influx, unique_id)
    ingester = Ingester(config)
    async with running(ingester, expect=EXIT_INFLUX) as task:
        payload = encode_batch("plant-a", "gw-01", [Reading("a1", "d1", "p", now_ns(), 1.0)])
        await asyncio.to_thread(
            publisher.publish, data_topic("plant-a", "gw-01", root=unique_id), payload
        )
        await asyncio.wait_for(asyncio.shield(task), 20)
    assert (
        f"influx.database 'nope_{unique_id}' does not exist; create it or set "
        "influx.create_database: true"
    ) in caplog.text


async def test_broker_refusing_the_client_is_fatal_with_exit_4(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    broker = make_service(Mosquitto, extra_config="allow_anonymous false")
    influx = {"api": "v1", "url": "http://127.0.0.1:9", "database": "unused"}
    ingester = Ingester(make_config(broker, influx, "refused"))
    code = await asyncio.wait_for(ingester.run(stop=asyncio.Event()), 30)
    assert code == EXIT_MQTT
    assert (
        f"MQTT broker {broker.host}:{broker.port} refused the connection (Not authorized): "
        "not authorised; check mqtt.username/password and the broker's ACL"
    ) in caplog.text


async def test_refused_token_is_fatal_and_names_the_setting(
    mosquitto: Mosquitto,
    make_service: ServiceFactory,
    publisher: Publisher,
    unique_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guarded = make_service(
        VictoriaMetrics, extra_args=["-httpAuth.username=u", "-httpAuth.password=p"]
    )
    influx = {"api": "v2", "url": guarded.url, "org": "o", "bucket": "b", "token": "wrong"}
    ingester = Ingester(make_config(mosquitto, influx, unique_id))
    async with running(ingester, expect=EXIT_INFLUX) as task:
        payload = encode_batch("plant-a", "gw-01", [Reading("a1", "d1", "p", now_ns(), 1.0)])
        topic = data_topic("plant-a", "gw-01", root=unique_id)
        await asyncio.to_thread(publisher.publish, topic, payload)
        await asyncio.wait_for(asyncio.shield(task), 20)
    assert (
        f"InfluxDB at {guarded.url} refused the token (HTTP 401); check influx.token"
    ) in caplog.text


def test_cloud_run_subprocess_stops_cleanly_on_sigterm(
    mosquitto: Mosquitto,
    influx_db: InfluxDatabase,
    publisher: Publisher,
    unique_id: str,
    tmp_path: Path,
) -> None:
    service, db = influx_db
    config_file = tmp_path / "cloud.yaml"
    config_file.write_text(
        "kind: cloud\n"
        f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}, client_id: ing-{unique_id},"
        f" topic_root: {unique_id}}}\n"
        f"influx: {{api: v1, url: '{service.url}', database: {db}}}\n"
    )
    log_file = tmp_path / "cloud.log"
    code = (
        "import argparse, sys\n"
        "from cloud.cli import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
    )
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "cloud", "run", str(config_file)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        wait_for(
            lambda: "subscribed to" in log_file.read_text(),
            timeout=20,
            message="the ingester to subscribe",
        )
        payload = encode_batch("plant-a", "gw-01", [Reading("a1", "d1", "p", now_ns(), 2.5)])
        publisher.publish(data_topic("plant-a", "gw-01", root=unique_id), payload)
        wait_for(lambda: count(service, db) == 1, message="the reading in InfluxDB")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_file.read_text()
    assert "ingester stopped: received 1 messages, wrote 1 readings" in text


def test_cloud_run_with_a_broken_config_exits_2(tmp_path: Path) -> None:
    config_file = tmp_path / "cloud.yaml"
    config_file.write_text("kind: cloud\ninflux: {api: v2, url: 'http://x:8086', org: o}\n")
    code = (
        "import argparse, sys\n"
        "from cloud.cli import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "cloud", "run", str(config_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"{config_file}: 2 problems\n"
        "  influx.bucket: required field is missing\n"
        "  influx.token: required field is missing\n"
    )
