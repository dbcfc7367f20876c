"""The measuring subscriber: counts what reaches the broker, in a process of its own.

``python -m bench.subscriber --port P --topic T --format fieldlink|naive --out F``

Subscribes at QoS 1 and records, for every *group* of readings (fieldlink: one group of a
batch = one request's answer, sharing a sample time; naive: one message = one poll), its
key, sample time, reading count, bad-reading count and arrival time. On SIGTERM or SIGINT it
writes them to ``--out`` as JSON and exits; the benchmark cuts its window out of them, so
counting is exact and independent of when messages arrive.

For fieldlink it also plays the ingester's part of the delivery protocol: every message
carrying a sequence number is confirmed at once on the agent's confirm topic (as
``cloud/`` does after the database write), so the agent's spool deletes it and nothing is
published twice. A message seen again (same spool epoch and seq) is counted in ``duplicates``
and not recorded twice.

Cost: every message is parsed with orjson (cheap: no Python objects per reading beyond the
dicts orjson builds); every ``--validate-every``-th fieldlink message is also decoded with
:func:`wire.codec.decode_batch`, the strict decoder the ingester uses, and a failure is
counted in ``invalid``. Prints ``ready`` once subscribed and ``first`` on the first message.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from wire.codec import PayloadError, decode_batch, encode_confirm
from wire.topics import confirm_topic


class Recorder:
    def __init__(self, fmt: str, validate_every: int) -> None:
        self.fmt = fmt
        self.validate_every = validate_every
        self.keys: dict[str, int] = {}
        #: Per group: key index, sample time (ns), readings, bad readings, arrival (ns).
        self.groups: list[tuple[int, int, int, int, int]] = []
        self.messages = 0
        self.invalid = 0
        self.duplicates = 0
        self.errors: list[str] = []
        self._seen: set[tuple[Any, int]] = set()
        self.confirm_errors = 0
        #: Called with (site, agent, epoch, seq) for every fieldlink message with a seq.
        self.confirm: Callable[[str, str, str | None, int], None] | None = None

    def key(self, name: str) -> int:
        index = self.keys.get(name)
        if index is None:
            index = self.keys[name] = len(self.keys)
        return index

    def on_payload(self, payload: bytes) -> None:
        arrived = time.time_ns()
        self.messages += 1
        try:
            doc = orjson.loads(payload)
            if self.fmt == "fieldlink":
                self._fieldlink(doc, arrived)
                if self.messages % self.validate_every == 0:
                    decode_batch(payload)
            else:
                self._naive(doc, arrived)
        except (orjson.JSONDecodeError, PayloadError, KeyError, TypeError) as exc:
            self.invalid += 1
            if len(self.errors) < 5:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _fieldlink(self, doc: dict[str, Any], arrived: int) -> None:
        seq = doc.get("seq")
        if seq is not None:
            epoch = doc.get("epoch")
            if self.confirm is not None:
                try:
                    self.confirm(doc["site"], doc["agent"], epoch, seq)
                except Exception as exc:  # the count must not depend on the confirmation
                    self.confirm_errors += 1
                    if len(self.errors) < 5:
                        self.errors.append(f"confirm: {type(exc).__name__}: {exc}")
            seen = (epoch, seq)
            if seen in self._seen:
                self.duplicates += 1
                return
            self._seen.add(seen)
        groups = self.groups
        for group in doc["groups"]:
            points = group["points"]
            # One request of one device per group; its first point names the request.
            key = self.key(f"{group['device']}/{points[0]['p']}")
            bad = 0
            for p in points:
                if "q" in p and p["q"] != "good":
                    bad += 1
            groups.append((key, group["t"], len(points), bad, arrived))

    def _naive(self, doc: dict[str, Any], arrived: int) -> None:
        values = doc["values"]
        bad = sum(1 for v in values.values() if v is None)
        self.groups.append((self.key(doc["device"]), doc["ts"], len(values), bad, arrived))

    def dump(self) -> bytes:
        return orjson.dumps(
            {
                "messages": self.messages,
                "invalid": self.invalid,
                "duplicates": self.duplicates,
                "confirm_errors": self.confirm_errors,
                "errors": self.errors,
                "keys": list(self.keys),
                "groups": self.groups,
            }
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.subscriber")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--format", choices=("fieldlink", "naive"), required=True)
    parser.add_argument("--validate-every", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    recorder = Recorder(args.format, max(1, args.validate_every))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{args.format}")
    first = [True]

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe(args.topic, qos=1)

    def on_subscribe(c: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        print("ready", flush=True)

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        recorder.on_payload(bytes(message.payload))
        if first[0]:
            first[0] = False
            print("first", flush=True)

    def confirm(site: str, agent: str, epoch: str | None, seq: int) -> None:
        client.publish(confirm_topic(site, agent), encode_confirm(epoch, [(seq, seq)]), qos=1)

    recorder.confirm = confirm
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message

    def stop(signum: int, frame: FrameType | None) -> None:
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client.connect(args.host, args.port, keepalive=60)
    client.loop_forever()
    args.out.write_bytes(recorder.dump())
    return 0


if __name__ == "__main__":
    sys.exit(main())
