"""The whole path on real parts: simulated Modbus device → agent → Mosquitto → ingester →
InfluxDB 1.x (v1 API) and VictoriaMetrics (v2 API). Asserts exact decoded values, units and
the sample timestamps the agent put on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import InfluxDatabase, async_wait_for
from paho.mqtt.enums import CallbackAPIVersion

from cloud.ingester import run_ingester
from config.cloud import CloudConfig
from config.edge import validate_edge
from config.sim import SimConfig
from edge.agent import run_agent
from fieldlink.localstack import Mosquitto, VictoriaMetrics
from sim.server import SimPlant
from wire.codec import decode_batch
from wire.model import Quality, Reading
from wire.topics import data_topic


def as_float32(value: float) -> float:
    """The value a float32 register holds: the agent reports it exactly, widened to a double
    (49.95 is stored as 49.95000076293945)."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


SITE = "e2e-site"
INTERVAL = 0.2

SIM_DEVICES: list[dict[str, Any]] = [
    {
        "name": "plc-1",
        "gateway": "gw",
        "unit_id": 1,
        "registers": [
            {"address": 0, "type": "int16", "scale": 0.1, "value": -12.3},
            {"address": 1, "type": "int32", "value": -123456},
            {"address": 3, "type": "float32", "value": 230.5},
            {"address": 5, "type": "float32", "order": "CDAB", "value": 49.95},
        ],
    },
    {
        "name": "plc-2",
        "gateway": "gw",
        "unit_id": 2,
        "registers": [
            {"table": "input", "address": 0, "type": "uint16", "value": 65535},
            {"table": "input", "address": 1, "type": "uint32", "value": 4_000_000_000},
            {"table": "input", "address": 3, "type": "string", "length": 2, "value": "OK"},
        ],
    },
]
DEVICES: list[dict[str, Any]] = [
    {
        "name": "plc-1",
        "bus": "gw",
        "asset": "boiler-1",
        "unit_id": 1,
        "interval": INTERVAL,
        "points": [
            {"name": "temp", "address": 0, "type": "int16", "scale": 0.1, "unit": "degC"},
            {"name": "position", "address": 1, "type": "int32", "unit": "mm"},
            {"name": "voltage", "address": 3, "type": "float32", "unit": "V"},
            {"name": "freq", "address": 5, "type": "float32", "order": "CDAB", "unit": "Hz"},
        ],
    },
    {
        "name": "plc-2",
        "bus": "gw",
        "unit_id": 2,
        "interval": INTERVAL,
        "points": [
            {"name": "raw", "table": "input", "address": 0, "type": "uint16"},
            {"name": "energy", "table": "input", "address": 1, "type": "uint32", "unit": "Wh"},
            {"name": "status", "table": "input", "address": 3, "type": "string", "length": 2},
        ],
    },
]
EXPECTED: dict[tuple[str, str], tuple[Any, str | None]] = {
    ("plc-1", "temp"): (-12.3, "degC"),
    ("plc-1", "position"): (-123456, "mm"),
    ("plc-1", "voltage"): (230.5, "V"),
    ("plc-1", "freq"): (as_float32(49.95), "Hz"),
    ("plc-2", "raw"): (65535, None),
    ("plc-2", "energy"): (4_000_000_000, "Wh"),
    ("plc-2", "status"): ("OK", None),
}


class Recorder:
    """Subscribes to the agent's data topic: the readings exactly as they went on the wire."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.readings: list[Reading] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{topic[-30:]}")
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda _c, _u, msg: self._take(bytes(msg.payload))
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "recorder could not subscribe"

    def _take(self, payload: bytes) -> None:
        with self._lock:
            self.readings.extend(decode_batch(payload).readings)

    def snapshot(self) -> list[Reading]:
        with self._lock:
            return list(self.readings)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def recording(broker: Mosquitto, topic: str) -> Iterator[Recorder]:
    recorder = Recorder(broker, topic)
    try:
        yield recorder
    finally:
        recorder.close()


@contextlib.asynccontextmanager
async def running(coro: Any, stop: asyncio.Event) -> AsyncIterator[asyncio.Task[int]]:
    task: asyncio.Task[int] = asyncio.create_task(coro)
    try:
        yield task
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 30)
        assert code == 0


def edge_doc(broker: Mosquitto, agent: str, port: int) -> dict[str, Any]:
    return {
        "kind": "edge",
        "agent": {"id": agent, "site": SITE},
        "mqtt": {"host": broker.host, "port": broker.port},
        "publish": {"max_batch": 50, "max_delay": 0.05},
        "buses": [{"name": "gw", "driver": "modbus", "host": "127.0.0.1", "port": port}],
        "devices": DEVICES,
    }


async def run_pipeline(
    broker: Mosquitto,
    cloud: CloudConfig,
    agent: str,
    stored: Callable[[], int],
    kept: Callable[[Reading], bool] = lambda r: True,
    polls: int = 3,
) -> tuple[list[Reading], int, int]:
    """Run sim, ingester and agent until every device was polled ``polls`` times; stop the
    agent, and stop the ingester only once ``stored()`` (readings the store holds) covers
    everything the agent published. Return what it published and the run's time window."""
    sim = SimConfig.model_validate({"kind": "sim", "devices": SIM_DEVICES})
    topic = data_topic(SITE, agent)
    async with SimPlant(sim) as plant:
        port = plant.endpoints()["plc-1"][1]
        config = validate_edge(edge_doc(broker, agent, port), "e2e", env={})
        ingest_stop, agent_stop = asyncio.Event(), asyncio.Event()
        ingest_ready = asyncio.Event()
        with recording(broker, topic) as recorder:
            async with running(
                run_ingester(cloud, stop=ingest_stop, ready=ingest_ready.set), ingest_stop
            ):
                await asyncio.wait_for(ingest_ready.wait(), 20)
                started = time.time_ns()
                async with running(run_agent(config, stop=agent_stop), agent_stop):
                    await async_wait_for(
                        lambda: len(recorder.snapshot()) >= polls * len(EXPECTED),
                        timeout=20,
                        message=f"{polls} polls of every device on the broker",
                    )
                ended = time.time_ns()
                # The agent drained its queue on stop: this is everything it sent (a
                # republished message appears twice, hence the set).
                published = recorder.snapshot()
                distinct = len({(r.device, r.point, r.ts_ns) for r in published if kept(r)})
                await async_wait_for(
                    lambda: asyncio.to_thread(lambda: stored() >= distinct),
                    timeout=30,
                    message=f"{distinct} published readings in the store",
                )
                return published, started, ended


def cloud_config(broker: Mosquitto, unique_id: str, influx: dict[str, Any]) -> CloudConfig:
    """The ingester's config: this test's client id on ``broker``, writing to ``influx``."""
    return CloudConfig.model_validate(
        {
            "kind": "cloud",
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": f"ing-{unique_id}"},
            "influx": influx,
            "batch": {"max_points": 100, "max_delay": 0.05},
        }
    )


def check_published(published: list[Reading], started: int, ended: int) -> None:
    assert published
    for r in published:
        assert r.quality is Quality.GOOD, r
        assert (r.value, r.unit) == EXPECTED[(r.device, r.point)], r
        assert started <= r.ts_ns <= ended, "sample time outside the run"
    assets = {r.device: r.asset for r in published}
    assert assets == {"plc-1": "boiler-1", "plc-2": "plc-2"}


async def test_sim_to_influxdb1_exact_values_units_and_sample_times(
    mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str
) -> None:
    agent = f"agent-{unique_id}"[:60]
    influx = {"api": "v1", "url": influx_db.service.url, "database": influx_db.name}
    cloud = cloud_config(mosquitto, unique_id, influx)

    def stored() -> dict[tuple[str, str, int], dict[str, Any]]:
        result = influx_db.service.query(
            f"SELECT * FROM readings WHERE agent = '{agent}'", influx_db.name
        )
        series = result["results"][0].get("series", [])
        rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        for s in series:
            for values in s["values"]:
                row = dict(zip(s["columns"], values, strict=True))
                rows[(row["device"], row["point"], row["time"])] = row
        return rows

    published, started, ended = await run_pipeline(mosquitto, cloud, agent, lambda: len(stored()))
    check_published(published, started, ended)

    def complete() -> dict[tuple[str, str, int], dict[str, Any]]:
        """The stored rows once they cover what the agent published (else none: falsy)."""
        rows = stored()
        return rows if len(rows) >= len(published) else {}

    rows = await async_wait_for(
        lambda: asyncio.to_thread(complete),
        timeout=20,
        message="every published reading in InfluxDB",
    )
    assert len(rows) == len(published), "replays must not duplicate, nothing may be missing"
    for r in published:
        row = rows[(r.device, r.point, r.ts_ns)]
        expected_value, unit = EXPECTED[(r.device, r.point)]
        if isinstance(expected_value, str):
            assert row["text"] == expected_value
            assert row["value"] is None
        else:
            assert row["value"] == expected_value
            assert isinstance(row["value"], float | int)
        assert row["unit"] == unit
        assert row["quality"] == "good"
        assert (row["site"], row["agent"], row["asset"]) == (SITE, agent, r.asset)
    # The field type of `value` is float for every point, whatever the register type.
    keys = influx_db.service.query("SHOW FIELD KEYS FROM readings", influx_db.name)
    field_types = dict(keys["results"][0]["series"][0]["values"])
    assert field_types["value"] == "float"


async def test_sim_to_victoriametrics_through_the_v2_write_api(
    mosquitto: Mosquitto, victoria: VictoriaMetrics, unique_id: str
) -> None:
    agent = f"agent-{unique_id}"[:60]
    influx = {
        "api": "v2",
        "url": victoria.url,
        "org": "fieldlink",
        "bucket": "e2e",
        "token": "unused-by-victoriametrics",
    }
    cloud = cloud_config(mosquitto, unique_id, influx)

    def exported() -> dict[tuple[str, str], dict[int, float]]:
        out: dict[tuple[str, str], dict[int, float]] = {}
        for series in victoria.export(f'{{__name__="readings_value",agent="{agent}"}}'):
            labels = series["metric"]
            key = (labels["device"], labels["point"])
            out.setdefault(key, {}).update(zip(series["timestamps"], series["values"], strict=True))
        return out

    def stored_numbers() -> int:
        return sum(len(v) for v in exported().values())

    # VictoriaMetrics keeps numbers only: text readings are not waited for.
    published, started, ended = await run_pipeline(
        mosquitto, cloud, agent, stored_numbers, kept=lambda r: not isinstance(r.value, str)
    )
    check_published(published, started, ended)
    numeric = [r for r in published if not isinstance(r.value, str)]

    def complete() -> dict[tuple[str, str], dict[int, float]]:
        """The exported series once they cover the numbers published (else none: falsy)."""
        got = exported()
        return got if sum(len(v) for v in got.values()) >= len(numeric) else {}

    got = await async_wait_for(
        lambda: asyncio.to_thread(complete), timeout=30, message="readings in VictoriaMetrics"
    )
    for r in numeric:
        # VictoriaMetrics keeps millisecond timestamps and 12 significant decimal digits
        # (its documented storage precision), so 49.95000076293945 comes back 49.9500007629.
        stored = got[(r.device, r.point)][r.ts_ns // 1_000_000]
        assert stored == pytest.approx(r.value, rel=1e-12, abs=0)
    labels = victoria.export(f'{{__name__="readings_value",agent="{agent}",point="temp"}}')[0][
        "metric"
    ]
    assert labels["unit"] == "degC"
    assert labels["site"] == SITE
    assert labels["asset"] == "boiler-1"
