"""Scale-out: three ingester processes in one shared-subscription group share the load, every
point lands once, and killing one (kill -9) and restarting it loses nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import yaml
from helpers import InfluxDatabase, async_wait_for
from test_cloud_ingester import Publisher, count, now_ns

from fieldlink.localstack import Mosquitto
from wire.codec import encode_batch
from wire.model import Reading
from wire.topics import data_topic

MESSAGES = 300
PER_MESSAGE = 20


def cloud_file(
    tmp_path: Path, broker: Mosquitto, influx: InfluxDatabase, root: str, n: int
) -> Path:
    doc = {
        "kind": "cloud",
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"ing-{root}-{n}",
            "topic_root": root,
            "group": "ingest",
        },
        "influx": {"api": "v1", "url": influx.service.url, "database": influx.name},
        "batch": {"max_points": 200, "max_delay": 0.05},
    }
    path = tmp_path / f"cloud-{n}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def start(path: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fieldlink",
            "cloud",
            "run",
            str(path),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def test_three_ingesters_share_the_load_and_a_killed_one_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influx_db: InfluxDatabase, unique_id: str
) -> None:
    root = unique_id
    files = [cloud_file(tmp_path, mosquitto, influx_db, root, n) for n in range(3)]
    logs = [tmp_path / f"ingester-{n}.log" for n in range(3)]
    procs = [await start(f, log) for f, log in zip(files, logs, strict=True)]
    publisher = Publisher(mosquitto)
    try:
        await async_wait_for(
            lambda: all("subscribed to $share/ingest/" in log.read_text() for log in logs),
            timeout=30,
            message="three subscribed ingesters",
        )
        topic = data_topic("plant-a", "gw-01", root=root)
        t0 = now_ns()

        def batch(i: int) -> bytes:
            readings = [
                Reading("a1", f"d{j}", "p", t0 + i * 1000 + j, float(i * PER_MESSAGE + j))
                for j in range(PER_MESSAGE)
            ]
            return encode_batch("plant-a", "gw-01", readings)

        for i in range(MESSAGES // 2):
            await asyncio.to_thread(publisher.publish, topic, batch(i))
        # kill -9 one member in the middle of the stream, then bring it back.
        procs[1].send_signal(signal.SIGKILL)
        await procs[1].wait()
        for i in range(MESSAGES // 2, MESSAGES):
            await asyncio.to_thread(publisher.publish, topic, batch(i))
        procs[1] = await start(files[1], logs[1])
        total = MESSAGES * PER_MESSAGE

        async def landed() -> bool:
            return await asyncio.to_thread(count, influx_db.service, influx_db.name) >= total

        await async_wait_for(
            landed,
            timeout=60,
            message=f"{total} points in InfluxDB",
        )
        assert count(influx_db.service, influx_db.name) == total  # once each, no duplicates
    finally:
        publisher.close()
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 30) for p in procs]
    assert codes == [0, 0, 0]
    # Load was spread: every member wrote some of it (its stop summary says how much).
    written = []
    for log in logs:
        last = [line for line in log.read_text().splitlines() if "ingester stopped" in line][-1]
        written.append(int(last.split("wrote ")[1].split(" ")[0]))
    assert all(n > 0 for n in written), written
    # ...and each message went to one member only (without the group each would write all;
    # the killed member's first life is not in its summary, redeliveries may add a few).
    assert sum(written) <= 1.2 * MESSAGES * PER_MESSAGE, written
