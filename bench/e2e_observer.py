"""A passive subscriber that notes when each group of readings reached the broker.

``python -m bench.e2e_observer --port P --topic T --out F``

Subscribes at QoS 1 and records, for every group (fieldlink: one group of a batch, i.e. one
read of one device; the naive edge script: one message, i.e. one device poll), the device,
the sample time and the arrival time. It only listens: unlike ``bench/subscriber.py`` it
never confirms anything to an agent, so the ingester alone plays the delivery protocol's
cloud side. Prints ``ready`` once subscribed; on SIGTERM writes
``{"arrivals": [[device, sample_ns, arrived_ns], ...]}`` to ``--out`` and exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def groups_of(payload: bytes | bytearray) -> list[tuple[str, int]]:
    """(device, sample time) of every group in a fieldlink batch or a naive edge message."""
    doc = orjson.loads(payload)
    if "groups" in doc:
        return [(g["device"], g["t"]) for g in doc["groups"]]
    return [(doc["device"], doc["ts"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e_observer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    arrivals: list[tuple[str, int, int]] = []
    errors = 0
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-e2e-observer")

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe(args.topic, qos=1)

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        print("ready", flush=True)

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal errors
        arrived = time.time_ns()
        try:
            arrivals.extend((device, ts, arrived) for device, ts in groups_of(message.payload))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            errors += 1

    def stop(signum: int, frame: FrameType | None) -> None:
        client.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client.connect(args.host, args.port, keepalive=60)
    client.loop_forever()
    args.out.write_bytes(orjson.dumps({"arrivals": arrivals, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
