"""The ingest benchmark's load: realistic agent batches, and the process that publishes them.

The plant is ``agents × devices × points``: every agent polls its devices once per *cycle*
and publishes the cycle as one message (``wire.codec.encode_batch``, one group per device),
exactly what ``fieldlink edge run`` sends for a plant of that shape. With the defaults
(10 agents × 10 devices × 100 points) a message holds 1,000 readings and one cycle of the
whole plant is 10,000 readings on 10,000 series.

Every reading has a distinct (series, timestamp): cycle ``c`` of device ``d`` is stamped
``base + c × period + d µs``, so nothing overwrites and ``count(quality)`` in InfluxDB equals
the number of readings published. Values mix what a meter delivers: float32 values decoded
to Python floats (long reprs such as ``231.39999389648438``), integer counters, a boolean,
a scaled int16, and about 2 % *bad* readings that carry a reason instead of a value.

Run as a process (the benchmark does this)::

    python -m bench.ingest_load --host H --port P --readings 1000000            # a backlog
    python -m bench.ingest_load --host H --port P --rate 10000 --duration 20    # a steady rate

It prints one JSON object per line on stdout: ``{"event": "start", ...}`` when the first
message goes out, and ``{"event": "done", ...}`` (readings and messages confirmed by the
broker, where the last message lies, and the last few as `tail`) when every PUBACK is in.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from wire.codec import encode_batch
from wire.model import Quality, Reading
from wire.topics import data_topic

SITE = "bench-site"
#: Messages the publisher keeps unacknowledged at once (paho queues the rest).
PUBLISH_WINDOW = 200


@dataclass(frozen=True)
class Plant:
    """The shape of the simulated fleet the load comes from."""

    agents: int = 10
    devices: int = 10  # per agent
    points: int = 100  # per device

    @property
    def per_message(self) -> int:
        """Readings in one message: one cycle of one agent."""
        return self.devices * self.points

    @property
    def per_cycle(self) -> int:
        """Readings in one cycle of the whole plant."""
        return self.agents * self.per_message

    @property
    def label(self) -> str:
        return f"{self.agents}x{self.devices}x{self.points}"

    @classmethod
    def for_message_size(cls, per_message: int, agents: int = 10) -> Plant:
        """A plant whose messages hold ``per_message`` readings (100 points per device)."""
        points = 100 if per_message % 100 == 0 else per_message
        return cls(agents=agents, devices=max(1, per_message // points), points=points)


def agent_id(index: int) -> str:
    return f"gw-{index:03d}"


def device_id(agent: int, index: int) -> str:
    return f"meter-{agent:03d}-{index:03d}"


def _float32(value: float) -> float:
    """What an agent reads back from a float32 register: the float32 nearest ``value``."""
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


# Precomputed value tables, so generating a million readings costs little more than
# building the Reading objects and encoding them.
_FLOATS = [_float32(230.0 + i * 0.037) for i in range(997)]
_UNITS = ["V", "A", "kW", "degC", "Hz", "m3/h"]


def reading(agent: int, device: int, point: int, cycle: int, ts_ns: int) -> Reading:
    """Point ``point`` of a device in one cycle (see the module docstring for the mix)."""
    asset = f"asset-{agent:03d}-{device // 2:03d}"
    name = f"p{point:03d}"
    slot = point % 10
    k = cycle * 31 + device * 7 + point
    dev = device_id(agent, device)
    if slot <= 5:  # float32 values with a unit
        return Reading(asset, dev, name, ts_ns, _FLOATS[k % 997], _UNITS[slot])
    if slot == 6:  # an energy counter, an integer on the wire
        return Reading(asset, dev, name, ts_ns, 100_000 + k * 3, "Wh")
    if slot == 7:  # an int16 with scale 0.1 and a unit with a space (escaped as a tag)
        return Reading(asset, dev, name, ts_ns, round(20.0 + (k % 50) * 0.1, 1), "deg C")
    if slot == 8:  # a status bit
        return Reading(asset, dev, name, ts_ns, k % 3 == 0, None)
    if k % 5 == 0:  # slot 9: a flaky register, bad 1 time in 5 (2 % of all readings)
        return Reading(asset, dev, name, ts_ns, None, "%", Quality.BAD, "timeout")
    return Reading(asset, dev, name, ts_ns, float(k % 101), "%")


def message(plant: Plant, agent: int, cycle: int, ts_ns: int, seq: int) -> bytes:
    """One agent's cycle: ``plant.devices`` groups, device ``d`` stamped ``ts_ns + d µs``;
    ``seq`` is the agent's own message sequence number (the cycle), as an agent sends it."""
    readings = [
        reading(agent, d, p, cycle, ts_ns + d * 1000)
        for d in range(plant.devices)
        for p in range(plant.points)
    ]
    return encode_batch(SITE, agent_id(agent), readings, seq=seq)


@dataclass(frozen=True, slots=True)
class LastMessage:
    """Where the last published message lies, so the benchmark can tell when it landed with
    cheap queries: a consumer writes in arrival order, one write at a time, so once the last
    reading of the last message is queryable every earlier write has been answered."""

    agent: str
    device: str  # the message's last device...
    point: str  # ...and its last point: the last reading of the message
    ts_min_ns: int
    ts_max_ns: int
    readings: int

    @classmethod
    def of(cls, plant: Plant, agent: int, ts_ns: int) -> LastMessage:
        return cls(
            agent_id(agent),
            device_id(agent, plant.devices - 1),
            f"p{plant.points - 1:03d}",
            ts_ns,
            ts_ns + (plant.devices - 1) * 1000,
            plant.per_message,
        )

    @property
    def last_reading(self) -> str:
        """InfluxQL condition selecting the message's last reading (one series, one time)."""
        return (
            f"agent = '{self.agent}' AND device = '{self.device}' AND point = '{self.point}' "
            f"AND time = {self.ts_max_ns}"
        )

    @property
    def where(self) -> str:
        """InfluxQL condition selecting exactly this message's readings."""
        return f"agent = '{self.agent}' AND time >= {self.ts_min_ns} AND time <= {self.ts_max_ns}"


def backlog(
    plant: Plant, readings: int, base_ns: int, period_ns: int = 1_000_000_000
) -> Iterator[tuple[str, bytes, LastMessage]]:
    """``readings`` readings (rounded up to whole messages), cycle by cycle, agent by agent."""
    messages = -(-readings // plant.per_message)
    for n in range(messages):
        cycle, agent = divmod(n, plant.agents)
        ts = base_ns + cycle * period_ns
        last = LastMessage.of(plant, agent, ts)
        yield data_topic(SITE, agent_id(agent)), message(plant, agent, cycle, ts, cycle), last


class Publisher:
    """A paho client publishing at QoS 1 and counting PUBACKs."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self._client.max_inflight_messages_set(PUBLISH_WINDOW)
        self._client.max_queued_messages_set(0)
        self._lock = threading.Condition()
        self._acked = 0
        self._connected = threading.Event()
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.on_publish = self._on_publish
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise SystemExit(f"publisher: cannot connect to {host}:{port}")
        self.sent = 0

    def _on_publish(self, *_: object) -> None:
        with self._lock:
            self._acked += 1
            self._lock.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SystemExit(f"publisher: publish failed: {paho.error_string(info.rc)}")
        self.sent += 1
        # Keep paho's own queue short: generating ahead of the socket only costs memory.
        with self._lock:
            while self.sent - self._acked > 4 * PUBLISH_WINDOW:
                self._lock.wait(1.0)

    def wait_acked(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._acked < self.sent and time.monotonic() < deadline:
                self._lock.wait(0.5)
            return self._acked

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


_GROUP_TIME = re.compile(rb'"t":(\d+)')


def _restamp(payload: bytes, shift_ns: int) -> bytes:
    """The payload with every group's sample time (``"t":``) moved by ``shift_ns``."""
    return _GROUP_TIME.sub(lambda m: b'"t":%d' % (int(m[1]) + shift_ns), payload)


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


#: How many of the last messages the ``done`` event describes (``tail``): at least the
#: largest number of ingesters the benchmark runs in one group.
TAIL = 8


def run(args: argparse.Namespace) -> int:
    plant = Plant(args.agents, args.devices, args.points)
    publisher = Publisher(args.host, args.port, args.client_id)
    sent_readings = 0
    last: LastMessage | None = None
    # The last few messages: with several consumers in a shared group, each one's share ends
    # with one of them (the broker deals messages out in turn), so the benchmark waits for all.
    tail: deque[LastMessage] = deque(maxlen=TAIL)
    started = time.monotonic()
    if args.rate is None:
        # A backlog: as fast as the broker takes it, stamped in the recent past.
        base = time.time_ns() - 3_600_000_000_000
        _emit("start", mono=started, wall_ns=time.time_ns(), cpu_s=time.process_time())
        for topic, payload, last in backlog(plant, args.readings, base):
            publisher.publish(topic, payload)
            sent_readings += last.readings
            tail.append(last)
    else:
        # A steady rate: message n is due at start + n × per_message / rate and is stamped
        # with that time, like an agent's sample time. Every message is built before the
        # clock starts, so that generating the load does not compete with the consumer for
        # the CPU during the window (a few ms late at most: the send follows its stamp).
        spacing = plant.per_message / args.rate
        total = max(1, round(args.duration / spacing))
        spacing_ns = int(spacing * 1e9)
        base_ns = time.time_ns()  # placeholder: shifted to the real start when sent
        plan = []
        for n in range(total):
            cycle, agent = divmod(n, plant.agents)
            ts = base_ns + n * spacing_ns
            plan.append((agent, ts, message(plant, agent, cycle, ts, cycle)))
        started = time.monotonic() + 0.5
        start_ns = time.time_ns() + 500_000_000
        shift = start_ns - base_ns
        _emit("start", mono=started, wall_ns=start_ns, cpu_s=time.process_time())
        behind = 0
        for n, (agent, ts, payload) in enumerate(plan):
            real_ts = ts + shift
            payload = _restamp(payload, shift)
            delay = started + n * spacing - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -spacing:
                behind += 1
            publisher.publish(data_topic(SITE, agent_id(agent)), payload)
            last = LastMessage.of(plant, agent, real_ts)
            tail.append(last)
            sent_readings += plant.per_message
        if behind:
            print(f"publisher: {behind} message(s) went out late", file=sys.stderr)
    published_mono = time.monotonic()
    acked = publisher.wait_acked(timeout=120)
    publisher.close()
    if acked < publisher.sent:
        print(f"publisher: only {acked} of {publisher.sent} messages confirmed", file=sys.stderr)
        return 1
    _emit(
        "done",
        mono=time.monotonic(),
        cpu_s=time.process_time(),
        published_mono=published_mono,
        readings=sent_readings,
        messages=publisher.sent,
        seconds=published_mono - started,
        last=asdict(last) if last is not None else None,
        tail=[asdict(message) for message in tail],
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest_load", description="publish the ingest benchmark's load"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", default="bench-load")
    parser.add_argument("--agents", type=int, default=Plant.agents)
    parser.add_argument("--devices", type=int, default=Plant.devices, help="per agent")
    parser.add_argument("--points", type=int, default=Plant.points, help="per device")
    parser.add_argument("--readings", type=int, default=1_000_000, help="backlog size")
    parser.add_argument("--rate", type=float, help="readings/s; publish steadily instead")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds at --rate")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
