"""InfluxDB's own limit on this machine: the backlog's readings as line protocol, built before
the clock starts (the backlog's messages run through the ingester's own encoder,
``cloud.encoder.MessageEncoder``, so these are exactly the lines the ingester writes, ``seq``
field included), then POSTed in bodies of
``--batch`` lines by ``--writers`` keep-alive connections, each in its own thread (the
threads wait on sockets, not on the GIL).

    python -m bench.ingest_direct --url http://127.0.0.1:8086 --readings 1000000 --writers 2

Prints one JSON object: points, seconds, and the influxd CPU seconds over the window.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlencode, urlsplit

from bench.ingest_load import Plant, backlog
from bench.ingest_stack import DATABASE, MEASUREMENT
from bench.measure import cpu_seconds
from cloud.encoder import MessageEncoder
from config.cloud import IngestSection
from wire.topics import ROOT


def bodies(plant: Plant, readings: int, batch: int) -> list[bytes]:
    base = time.time_ns() - 3_600_000_000_000
    encoder = MessageEncoder(root=ROOT, measurement=MEASUREMENT, limits=IngestSection())
    lines: list[bytes] = []
    out: list[bytes] = []
    for topic, payload, _last in backlog(plant, readings, base):
        checked = encoder.check(topic, payload, time.time_ns())
        lines.extend(_as_bytes(line) for line in checked.lines)
        while len(lines) >= batch:
            out.append(b"\n".join(lines[:batch]))
            del lines[:batch]
    if lines:
        out.append(b"\n".join(lines))
    return out


def _as_bytes(line: str | bytes) -> bytes:
    return line if isinstance(line, bytes) else line.encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_direct")
    parser.add_argument("--url", required=True)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--agents", type=int, default=Plant.agents)
    parser.add_argument("--devices", type=int, default=Plant.devices)
    parser.add_argument("--points", type=int, default=Plant.points)
    parser.add_argument("--influxd-pid", type=int, help="report this process's CPU seconds")
    args = parser.parse_args(argv)
    plant = Plant(args.agents, args.devices, args.points)
    work = bodies(plant, args.readings, args.batch)
    points = sum(body.count(b"\n") + 1 for body in work)
    url = urlsplit(args.url)
    path = "/write?" + urlencode({"db": DATABASE, "precision": "ns"})
    lock = threading.Lock()
    failures: list[str] = []

    def writer() -> None:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 8086, timeout=60)
        while True:
            with lock:
                if not work:
                    break
                body = work.pop()
            conn.request("POST", path, body=body)
            response = conn.getresponse()
            text = response.read()
            if response.status != 204:
                failures.append(f"HTTP {response.status}: {text[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=writer) for _ in range(args.writers)]
    influx_cpu0 = cpu_seconds(args.influxd_pid) if args.influxd_pid else 0.0
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    influx_cpu = cpu_seconds(args.influxd_pid) - influx_cpu0 if args.influxd_pid else None
    for failure in failures[:5]:
        print(failure, file=sys.stderr)
    print(json.dumps({"points": points, "seconds": seconds, "influx_cpu_s": influx_cpu}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
