"""The naive ingester: what a competent engineer writes in an afternoon to get readings from
MQTT into InfluxDB 1.x. The baseline fieldlink's ingester is measured against.

paho subscribes at QoS 1 with a persistent session (MQTT 3.1.1, ``clean_session=False``, so
a backlog queued while it was down is delivered); each message is parsed with the standard
``json`` module and turned into the same line protocol fieldlink writes (same tags, fields
and escaping, so InfluxDB does the same work for both); lines are batched and POSTed to
``/write`` with ``http.client`` over one keep-alive connection, when ``--batch`` lines are
waiting or the oldest has waited ``--max-delay`` seconds. Messages of the naive edge script
(``bench/baseline/naive_edge.py``, one device poll each) are understood too, for the naive
end-to-end pipeline.

What it does not do, on purpose: validation (a malformed message raises and is skipped),
dead letters, retries, and acknowledging after the write — paho acknowledges every message
as soon as ``on_message`` returns, like any plain script, so readings buffered here are lost
if the script or InfluxDB dies. One thread: ``client.loop()`` and the writes take turns.

    python -m bench.baseline.naive_ingest --mqtt-port 1883 --influx-url http://127.0.0.1:8086 \\
        --db bench
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def to_lines(doc: dict[str, Any], measurement: str) -> list[str]:
    """One line per reading, tag keys sorted; numbers always as floats."""
    site, agent = doc["site"], doc["agent"]
    lines = []
    for group in doc["groups"]:
        head = f"{measurement},agent={agent},asset={group['asset']},device={group['device']},point="
        t = group["t"]
        for p in group["points"]:
            tags = f"{head}{p['p']},site={site}"
            if "u" in p:
                tags += ",unit=" + p["u"].translate(TAG_ESCAPES)
            fields = f'quality="{p.get("q", "good")}"'
            if "r" in p:
                fields += ',reason="' + p["r"].translate(STRING_ESCAPES) + '"'
            v = p.get("v")
            if isinstance(v, bool):
                fields += ",state=true" if v else ",state=false"
            elif isinstance(v, str):
                fields += ',text="' + v.translate(STRING_ESCAPES) + '"'
            elif v is not None:
                fields += f",value={float(v)!r}"
            lines.append(f"{tags} {fields} {t}")
    return lines


def naive_lines(doc: dict[str, Any], measurement: str) -> list[str]:
    """The naive edge script's messages (``bench/baseline/naive_edge.py``): one device poll,
    ``{"device", "ts", "values": {point: number}}``; no site, unit or quality to store."""
    head = f"{measurement},device={doc['device']},point="
    t = doc["ts"]
    return [f"{head}{name} value={float(v)!r} {t}" for name, v in doc["values"].items()]


class NaiveIngester:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        url = urlsplit(args.influx_url)
        self.conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 8086)
        self.path = "/write?" + urlencode({"db": args.db, "precision": "ns"})
        self.lines: list[str] = []
        self.first_at = 0.0
        self.written = 0
        self.errors = 0
        self.running = True

    def on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(self.args.topic, qos=1)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            convert = to_lines if "groups" in doc else naive_lines
            lines = convert(doc, self.args.measurement)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"skipping a bad message on {msg.topic}: {exc!r}", file=sys.stderr)
            return
        if not self.lines:
            self.first_at = time.monotonic()
        self.lines.extend(lines)
        if len(self.lines) >= self.args.batch:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        body = "\n".join(self.lines).encode()
        try:
            self.conn.request("POST", self.path, body=body)
            response = self.conn.getresponse()
            text = response.read()
            if response.status != 204:
                self.errors += 1
                print(f"write failed: HTTP {response.status} {text[:200]!r}", file=sys.stderr)
            else:
                self.written += len(self.lines)
        except (OSError, http.client.HTTPException) as exc:
            self.errors += 1
            self.conn.close()
            print(f"write failed: {exc!r}", file=sys.stderr)
        self.lines = []

    def stop(self, *_: Any) -> None:
        self.running = False

    def run(self) -> int:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.args.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.on_connect = self.on_connect
        client.on_message = self.on_message
        client.connect(self.args.mqtt_host, self.args.mqtt_port, keepalive=60)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while self.running:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS and self.running:
                time.sleep(1.0)  # lost the broker: try again in a second
                try:
                    client.reconnect()
                except OSError as exc:
                    print(f"reconnect failed: {exc!r}", file=sys.stderr)
            if self.lines and time.monotonic() - self.first_at >= self.args.max_delay:
                self.flush()
        self.flush()
        client.disconnect()
        print(f"naive ingester: {self.written} points written, {self.errors} failed writes")
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline.naive_ingest")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--client-id", default="naive-ingester")
    parser.add_argument("--topic", default="fieldlink/v1/+/+/data")
    parser.add_argument("--influx-url", default="http://127.0.0.1:8086")
    parser.add_argument("--db", default="fieldlink")
    parser.add_argument("--measurement", default="readings")
    parser.add_argument("--batch", type=int, default=5000, help="lines per write")
    parser.add_argument("--max-delay", type=float, default=0.5, help="s the oldest line waits")
    return parser


def main(argv: list[str] | None = None) -> int:
    return NaiveIngester(build_parser().parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
