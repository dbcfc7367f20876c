"""What the ingest and end-to-end benchmarks share: the broker and database they start, the
consumers they measure (fieldlink's ingester and the naive script), and reading InfluxDB back.

Services come from :mod:`fieldlink.localstack`, each run on a fresh temp dir and free ports, so
one system's data (and InfluxDB's compactions of it) never weighs on the next measurement.

The broker is configured so that a backlog of millions of readings is kept, not dropped:

* ``max_queued_messages 0`` and ``max_queued_bytes 0``: no limit on what Mosquitto queues for
  a session. The default, 1,000 messages, keeps only 1 M readings of 1,000-reading messages
  (half that at 500 per message) and silently drops the rest;
* ``max_inflight_messages 1000``: messages sent but not yet acknowledged per client. An MQTT 5
  client's own Receive Maximum takes precedence (fieldlink announces ``receive_maximum``,
  1,000 by default); the naive script speaks MQTT 3.1.1, which has none, and gets this value
  (default 20), so both have the same window;
* no ``memory_limit`` (unlimited by default): a 1 M backlog is ~40 MB of payloads.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlencode

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.measure import host_cpu_seconds
from bench.pinning import on_cpus
from fieldlink.localstack import InfluxDB1, Mosquitto

REPO = Path(__file__).resolve().parent.parent
DATABASE = "bench"
MEASUREMENT = "readings"
SUBSCRIPTION = "fieldlink/v1/+/+/data"
BROKER_CONFIG = """\
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 1000
"""
#: The fieldlink ingester's client id in the benchmarks, and the naive script's.
FIELDLINK_CLIENT = "bench-fieldlink-ingester"
#: The shared-subscription group of the benchmark's 2 or 3 ingesters (``mqtt.group``).
GROUP = "bench"
GROUP_SUBSCRIPTION = f"$share/{GROUP}/{SUBSCRIPTION}"
NAIVE_CLIENT = "bench-naive-ingester"
SYSTEMS = ("naive", "fieldlink")


class BenchError(RuntimeError):
    """A benchmark run could not be carried out (a service or a process failed)."""


@dataclass
class Stack:
    """Mosquitto and InfluxDB 1.x of one measured run, in ``workdir``."""

    workdir: Path
    #: Pin influxd to these CPUs (``bench/pinning.py``); ``None``: wherever the kernel puts it.
    influx_cpus: frozenset[int] | None = None
    #: ``{section: {key: value}}`` laid over the measured ingester's shipped defaults
    #: (``bench ingest --fieldlink-set``); empty: the defaults as shipped.
    fieldlink_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    broker: Mosquitto = field(init=False)
    influx: InfluxDB1 = field(init=False)

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(data_dir=self.workdir / "mosquitto", extra_config=BROKER_CONFIG)
        self.influx = InfluxDB1(data_dir=self.workdir / "influxdb")
        try:
            self.broker.start()
            with on_cpus(self.influx_cpus):
                self.influx.start()
            self.influx.create_database(DATABASE)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for service in (getattr(self, "broker", None), getattr(self, "influx", None)):
            if service is not None:
                service.close()

    def pids(self) -> dict[str, int]:
        out = {}
        for name, service in (("mosquitto", self.broker), ("influxd", self.influx)):
            if service.pid is not None:
                out[name] = service.pid
        return out


# --- MQTT sessions -----------------------------------------------------------------------------


def prime_session(
    broker: Mosquitto, system: str, topic: str = SUBSCRIPTION, client_id: str | None = None
) -> None:
    """Create the consumer's persistent session (its subscription) and disconnect, so that the
    broker queues everything published from now on for it — as it does for a real ingester
    that is down. Uses the consumer's own client id and protocol version. For members of a
    shared-subscription group, ``topic`` is ``$share/<group>/...`` and ``client_id`` the
    member's: Mosquitto hands each message to one member's session, online or not."""
    done = threading.Event()
    if system == "fieldlink":
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or FIELDLINK_CLIENT,
            protocol=paho.MQTTv5,
        )
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        connect: dict[str, Any] = {"clean_start": True, "properties": props}
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=NAIVE_CLIENT,
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        connect = {}
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: done.set()
    client.connect(broker.host, broker.port, keepalive=30, **connect)
    client.loop_start()
    try:
        if not done.wait(10):
            raise BenchError(f"could not create the {system} session on the broker")
    finally:
        client.disconnect()
        client.loop_stop()


def client_connected_at(broker: Mosquitto, client_id: str, offset: int) -> bool:
    """Whether Mosquitto logged a connection of ``client_id`` after byte ``offset`` of its log."""
    with broker.log_path.open("rb") as log:
        log.seek(offset)
        return f" as {client_id} ".encode() in log.read()


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- consumers ---------------------------------------------------------------------------------


def cloud_config(broker: Mosquitto, influx: InfluxDB1, **overrides: Any) -> dict[str, Any]:
    """The ``kind: cloud`` document of the measured ingester: the shipped defaults (batch of
    5,000 points or 0.5 s, receive_maximum 1,000) with the benchmark's broker and database."""
    doc: dict[str, Any] = {
        "kind": "cloud",
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": FIELDLINK_CLIENT},
        "influx": {"api": "v1", "url": influx.url, "database": DATABASE},
    }
    for section, values in overrides.items():
        doc.setdefault(section, {}).update(values)
    return doc


def member_id(index: int) -> str:
    """The client id of member ``index`` (0-based) of the benchmark's ingester group."""
    return f"{FIELDLINK_CLIENT}-{index + 1}"


def consumer_command(
    system: str,
    stack: Stack,
    workdir: Path,
    topic: str = SUBSCRIPTION,
    *,
    member: int | None = None,
) -> tuple[list[str], str]:
    """The argv that runs ``system``'s consumer, and its MQTT client id. fieldlink always
    subscribes to the data topics — as member ``member`` of the shared-subscription group
    :data:`GROUP` when given (``mqtt.group``, its own client id); the naive script subscribes
    to ``topic``."""
    if system == "fieldlink":
        client_id = FIELDLINK_CLIENT if member is None else member_id(member)
        mqtt: dict[str, Any] = {"client_id": client_id}
        if member is not None:
            mqtt["group"] = GROUP
        path = workdir / ("cloud.yaml" if member is None else f"cloud-{member + 1}.yaml")
        # JSON is YAML: no YAML writer needed.
        overrides = {**stack.fieldlink_overrides}
        overrides["mqtt"] = {**overrides.get("mqtt", {}), **mqtt}
        doc = cloud_config(stack.broker, stack.influx, **overrides)
        path.write_text(json.dumps(doc, indent=2))
        command = [sys.executable, "-m", "fieldlink", "--log-level", "INFO"]
        return [*command, "cloud", "run", str(path)], client_id
    if system == "naive":
        return [
            sys.executable,
            "-m",
            "bench.baseline.naive_ingest",
            "--mqtt-host",
            stack.broker.host,
            "--mqtt-port",
            str(stack.broker.port),
            "--client-id",
            NAIVE_CLIENT,
            "--topic",
            topic,
            "--influx-url",
            stack.influx.url,
            "--db",
            DATABASE,
        ], NAIVE_CLIENT
    raise ValueError(f"unknown system {system!r}")


class Child:
    """A child process of the benchmark with its output in a log file; stopped with SIGTERM
    (then SIGKILL) by :meth:`stop`."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "<no log>"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_members(
    stack: Stack, rundir: Path, kids: list[Child], count: int
) -> tuple[list[Child], float]:
    """Start ``count`` fieldlink ingesters of one shared-subscription group (appended to
    ``kids``) all at once; return them and the monotonic time at which the broker logged the
    first one's connection (messages flow from then on)."""
    offset = log_size(stack.broker.log_path)
    members: list[tuple[Child, str]] = []
    for index in range(count):
        argv, client_id = consumer_command("fieldlink", stack, rundir, member=index)
        child = Child(f"fieldlink-{index + 1}", argv, rundir / f"{client_id}-ingest.log")
        kids.append(child)
        members.append((child, client_id))
    first: float | None = None
    deadline = time.monotonic() + 60
    waiting = dict(members)
    while waiting:
        for child, client_id in list(waiting.items()):
            if not child.alive():
                raise BenchError(f"{child.name} exited at start:\n{child.tail()}")
            if client_connected_at(stack.broker, client_id, offset):
                first = first if first is not None else time.monotonic()
                del waiting[child]
        if time.monotonic() > deadline:
            names = ", ".join(child.name for child in waiting)
            raise BenchError(f"{names} did not connect to the broker within 60 s")
        time.sleep(0.02)
    assert first is not None
    return [child for child, _ in members], first


def start_consumer(
    system: str, stack: Stack, rundir: Path, kids: list[Child], topic: str = SUBSCRIPTION
) -> tuple[Child, float]:
    """Start ``system``'s consumer (appended to ``kids``); return it and the monotonic time
    at which the broker logged its connection (messages flow from then on)."""
    argv, client_id = consumer_command(system, stack, rundir, topic)
    offset = log_size(stack.broker.log_path)
    child = Child(system, argv, rundir / f"{system}-ingest.log")
    kids.append(child)
    if not wait_until(
        lambda: not child.alive() or client_connected_at(stack.broker, client_id, offset), 60
    ):
        raise BenchError(f"{system} did not connect to the broker within 60 s:\n{child.tail()}")
    if not child.alive():
        raise BenchError(f"{system} exited at start (code {child.stop()}):\n{child.tail()}")
    return child, time.monotonic()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list that every child is appended to; all are stopped on exit, last first."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            with contextlib.suppress(Exception):
                child.stop()


@contextlib.contextmanager
def workspace(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` if given (left in place), else a temp dir removed on exit."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- reading InfluxDB back ---------------------------------------------------------------------


class InfluxReader:
    """InfluxQL over one keep-alive connection (cheaper than a connection per poll)."""

    def __init__(self, influx: InfluxDB1, database: str = DATABASE) -> None:
        self._host, self._port = influx.host, influx.port
        self._database = database
        self._conn: http.client.HTTPConnection | None = None

    def query(self, q: str) -> list[dict[str, Any]]:
        """The series of the first statement's result (empty if none)."""
        body = urlencode({"q": q, "db": self._database, "epoch": "ns"}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
            try:
                self._conn.request("POST", "/query", body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        doc = json.loads(data)
        if response.status != 200 or "error" in doc:
            raise BenchError(f"InfluxQL {q!r} failed: HTTP {response.status} {doc}")
        result = doc["results"][0]
        if "error" in result:
            raise BenchError(f"InfluxQL {q!r} failed: {result['error']}")
        series: list[dict[str, Any]] = result.get("series", [])
        return series

    def count(self, where: str = "", field: str = "quality") -> int:
        """``count(field)`` of the measurement, optionally ``WHERE where``."""
        clause = f" WHERE {where}" if where else ""
        series = self.query(f"SELECT count({field}) FROM {MEASUREMENT}{clause}")
        return sum(int(s["values"][0][1]) for s in series)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


#: Host CPU, in % of one core, under which the machine counts as idle for :func:`wait_idle`.
IDLE_BELOW = 25.0


def wait_idle(limit: float) -> bool:
    """Wait up to ``limit`` seconds until the host has used under IDLE_BELOW % of one core for
    two seconds running (other benchmarks share this machine); True if it got there."""
    deadline = time.monotonic() + limit
    quiet = 0
    busy0, total0 = host_cpu_seconds()
    cpus = os.cpu_count() or 1
    while time.monotonic() < deadline:
        time.sleep(1.0)
        busy1, total1 = host_cpu_seconds()
        used = 100 * cpus * (busy1 - busy0) / max(total1 - total0, 1e-9)
        busy0, total0 = busy1, total1
        quiet = quiet + 1 if used < IDLE_BELOW else 0
        if quiet >= 2:
            return True
    return False


class HostLoad:
    """The whole machine's CPU over a window, in % of one core: everything this benchmark
    started plus whatever else runs (a figure far above the measured processes' sum says the
    run shared the machine)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._busy, self._total = host_cpu_seconds()
        self._own = time.process_time()

    def own_cpu(self) -> float:
        """CPU seconds the benchmark's own process used since (polling, reading /proc)."""
        return time.process_time() - self._own

    def pct(self) -> float:
        busy, total = host_cpu_seconds()
        cpus = os.cpu_count() or 1
        return round(100 * cpus * (busy - self._busy) / max(total - self._total, 1e-9), 1)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; no fixed sleeps in the callers."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
