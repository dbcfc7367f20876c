"""Parts shared by the delivery acceptance tests (``tests/test_delivery.py``, issue 4).

The agent and the ingester run as real processes (``python -m fieldlink edge|cloud run``),
the simulated meter in the test's event loop (:class:`sim.server.SimPlant`), Mosquitto and
InfluxDB 1.x as real servers. What turns "nothing missing" into a proof:

* every reading is stored with the integer field ``seq`` of the message that carried it;
* once the agent has stopped (exit 0), its spool's ``meta.next_seq`` is the first seq never
  handed out: ``1..next_seq - 1`` are all the messages the agent ever built;
* :func:`verify` reads every stored reading back and demands each of those seqs (minus the
  ones a spool cap dropped, when a test says so), all 100 points of a poll at one timestamp
  under one seq, seqs that never go down in sample time, and every value equal to the
  meter's constant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import paho.mqtt.client as paho
import yaml
from helpers import async_wait_for
from paho.mqtt.enums import CallbackAPIVersion

from config.sim import SimConfig
from fieldlink.localstack import InfluxDB1, Mosquitto
from sim.server import SimPlant
from wire.topics import confirm_topic, data_topic

SITE = "plant"
AGENT = "gw-1"
DEVICE = "meter"
#: One poll = one Modbus request (110 registers) = 100 readings; ten polls a second.
INTERVAL = 0.1
UINT_POINTS = 90
FLOAT_POINTS = 10
POINTS = UINT_POINTS + FLOAT_POINTS
RATE = POINTS / INTERVAL
#: point → the constant the meter holds; the float32 ones are exact in binary (x.25).
EXPECTED: dict[str, float] = {f"u{i:02d}": float(1000 + 7 * i) for i in range(UINT_POINTS)} | {
    f"f{i}": 230.25 + i for i in range(FLOAT_POINTS)
}


def say(message: str) -> None:
    """A number for the test report (``pytest -s`` or ``-rA``)."""
    print(f"[delivery] {message}", flush=True)


# --- configs --------------------------------------------------------------------------------


def sim_config() -> SimConfig:
    registers: list[dict[str, Any]] = [
        {"address": i, "type": "uint16", "value": 1000 + 7 * i} for i in range(UINT_POINTS)
    ]
    registers += [
        {"address": UINT_POINTS + 2 * i, "type": "float32", "value": 230.25 + i}
        for i in range(FLOAT_POINTS)
    ]
    return SimConfig.model_validate(
        {"kind": "sim", "devices": [{"name": DEVICE, "registers": registers}]}
    )


@dataclass(frozen=True)
class Address:
    """Where an agent connects when it is not a :class:`Mosquitto` of the test's."""

    host: str
    port: int


def agent_file(
    tmp_path: Path,
    broker: Mosquitto | Address,
    sim_port: int,
    *,
    confirm_timeout: float = 4.0,
    max_bytes: int | None = None,
    mqtt: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the agent's config (``mqtt``: more settings of its mqtt section, e.g.
    credentials, TLS, client id); return it and its spool path."""
    points: list[dict[str, Any]] = [
        {"name": f"u{i:02d}", "address": i, "type": "uint16"} for i in range(UINT_POINTS)
    ]
    points += [
        {"name": f"f{i}", "address": UINT_POINTS + 2 * i, "type": "float32", "unit": "V"}
        for i in range(FLOAT_POINTS)
    ]
    spool_path = tmp_path / "agent.spool"
    spool: dict[str, Any] = {"path": str(spool_path), "confirm_timeout": confirm_timeout}
    if max_bytes is not None:
        spool["max_bytes"] = max_bytes
    doc = {
        "kind": "edge",
        "agent": {"id": AGENT, "site": SITE},
        "mqtt": {"host": broker.host, "port": broker.port, **(mqtt or {})},
        "publish": {"max_delay": 0.2},
        "spool": spool,
        "buses": [
            {
                "name": "line",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim_port,
                "timeout": 1.0,
            }
        ],
        "devices": [{"name": DEVICE, "bus": "line", "interval": INTERVAL, "points": points}],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, spool_path


def cloud_file(
    tmp_path: Path,
    broker: Mosquitto,
    influx: InfluxDB1,
    database: str,
    *,
    receive_maximum: int | None = None,
    mqtt_extra: dict[str, Any] | None = None,
) -> Path:
    mqtt: dict[str, Any] = {"host": broker.host, "port": broker.port, "client_id": "ingester-1"}
    if receive_maximum is not None:
        mqtt["receive_maximum"] = receive_maximum
    mqtt.update(mqtt_extra or {})
    doc = {
        "kind": "cloud",
        "mqtt": mqtt,
        "influx": {"api": "v1", "url": influx.url, "database": database},
        "batch": {"max_points": 5000, "max_delay": 0.1},
    }
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --- processes ------------------------------------------------------------------------------


class Fieldlink:
    """One ``python -m fieldlink ...`` process; stdout and stderr go to ``log``."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Fieldlink:
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fieldlink",
                *self.args,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, wait_s: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), wait_s)

    async def kill(self) -> int:
        """SIGKILL (kill -9) and reap."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return await asyncio.wait_for(self.proc.wait(), 10)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_log(self, needle: str, wait_s: float = 30.0) -> None:
        await async_wait_for(
            lambda: needle in self.text(), timeout=wait_s, message=f"{self.name} log: {needle!r}"
        )

    async def cleanup(self) -> None:
        """After a failed test: nothing may outlive it (a stopped process first continues)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.send(signal.SIGCONT)
                self.send(signal.SIGKILL)
            assert self.proc is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)


class Processes:
    """Starts fieldlink processes and kills whatever still runs when the block exits."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._all: list[Fieldlink] = []

    async def agent(self, config: Path, log: str = "agent.log") -> Fieldlink:
        return await self._start("agent", ["edge", "run", str(config)], log)

    async def ingester(self, config: Path) -> Fieldlink:
        ingester = await self._start("ingester", ["cloud", "run", str(config)], "ingester.log")
        await ingester.wait_log("subscribed to", wait_s=30)
        return ingester

    async def _start(self, name: str, args: list[str], log: str) -> Fieldlink:
        process = Fieldlink(name, args, self._tmp / log)
        self._all.append(process)
        return await process.start()

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in self._all:
            await process.cleanup()


def agent_summary(agent: Fieldlink) -> dict[str, int]:
    """The numbers of the agent's last "agent stopped" line."""
    lines = [line for line in agent.text().splitlines() if "agent stopped:" in line]
    assert lines, f"no 'agent stopped' line in {agent.log}"
    numbers = [int(n) for n in re.findall(r"\d+", lines[-1].split("agent stopped:")[1])]
    keys = ("readings", "messages", "republished", "confirmed", "dropped")
    return dict(zip(keys, numbers, strict=True))


def ingester_summary(ingester: Fieldlink) -> str:
    lines = [line for line in ingester.text().splitlines() if "ingester stopped:" in line]
    assert lines, f"no 'ingester stopped' line in {ingester.log}"
    return lines[-1].split("ingester stopped:")[1].strip()


# --- the spool ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpoolState:
    next_seq: int
    entries: int
    readings: int
    #: Sum of the payload sizes: what spool.max_bytes bounds.
    payload_bytes: int
    #: The largest message's payload.
    largest: int
    #: Unreported gaps: (cause, first_seq, last_seq, messages, readings).
    gaps: list[tuple[Any, ...]]
    #: Gaps reported in a message not confirmed yet: (cause, first_seq, last_seq, messages,
    #: readings, seq of the reporting message).
    reported: list[tuple[Any, ...]] = field(default_factory=list)


def read_spool(path: Path) -> SpoolState:
    """The spool's state. Only once the agent has exited: while it runs, the file is locked
    (``locking_mode=EXCLUSIVE``); see :func:`snapshot_spool` for that."""
    conn = sqlite3.connect(path)
    try:
        (next_seq,) = conn.execute("SELECT next_seq FROM meta WHERE id = 0").fetchone()
        entries, readings, size, largest = conn.execute(
            "SELECT count(*), total(readings), total(size), coalesce(max(size), 0) FROM entries"
        ).fetchone()
        rows = conn.execute(
            "SELECT cause, first_seq, last_seq, messages, readings, report_seq FROM gaps "
            "ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    gaps = [tuple(r[:5]) for r in rows if r[5] is None]
    reported = [tuple(r) for r in rows if r[5] is not None]
    return SpoolState(
        int(next_seq), int(entries), int(readings), int(size), int(largest), gaps, reported
    )


def snapshot_spool(path: Path, scratch: Path) -> SpoolState | None:
    """The state of a spool the agent holds open, read from a copy of its files.

    The agent's EXCLUSIVE lock is an advisory lock: the bytes can still be copied. The main
    file only changes at a checkpoint (every 1000 WAL pages); the WAL grows by appended frames,
    each commit sealed by a checksummed frame, so SQLite's recovery of the copied WAL ends at
    the last complete commit: the copy is the spool as of a recent commit. A copy torn by a
    concurrent checkpoint fails to open or to read and is skipped (``None``)."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "copy.spool"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    try:
        shutil.copyfile(path, copy)
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        return read_spool(copy)
    except (OSError, sqlite3.Error, TypeError):
        return None


# --- InfluxDB -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    t: int
    #: The message's seq; the ingester may store it on one reading of a poll only
    #: (cloud/lineproto.py), the others then have ``None``.
    seq: int | None
    point: str
    value: Any
    quality: str


class Store:
    """The agent's readings in one InfluxDB 1.x database."""

    PAGE = 20_000

    def __init__(self, influx: InfluxDB1, database: str) -> None:
        self.influx = influx
        self.database = database

    def _series(self, query: str) -> list[dict[str, Any]]:
        result = self.influx.query(query, self.database)
        series: list[dict[str, Any]] = result["results"][0].get("series", [])
        return series

    def progress(self) -> tuple[int, int]:
        """(distinct seqs, highest seq) among the meter's readings."""
        series = self._series(
            "SELECT count(distinct(seq)), max(seq) FROM readings "
            f"WHERE agent = '{AGENT}' AND device = '{DEVICE}'"
        )
        if not series:
            return 0, 0
        _, distinct, highest = series[0]["values"][0]
        return int(distinct), int(highest)

    def seqs(self) -> set[int]:
        """The distinct seqs of the meter's readings."""
        series = self._series(
            f"SELECT DISTINCT(seq) FROM readings WHERE agent = '{AGENT}' AND device = '{DEVICE}'"
        )
        return {int(v[1]) for v in series[0]["values"]} if series else set()

    def readings(self) -> list[Row]:
        """Every reading of the meter, oldest first, read in pages of PAGE rows. A page may
        end in the middle of a timestamp's points: the next one starts at that timestamp."""
        rows: list[Row] = []
        since = 0
        while True:
            series = self._series(
                'SELECT "seq", "point", "value", "quality" FROM readings '
                f"WHERE agent = '{AGENT}' AND device = '{DEVICE}' AND time >= {since} "
                f"LIMIT {self.PAGE}"
            )
            page = [Row(*values) for values in series[0]["values"]] if series else []
            if len(page) < self.PAGE:
                rows.extend(page)
                return rows
            last = page[-1].t
            assert page[0].t != last, "a page of one timestamp: raise PAGE"
            rows.extend(r for r in page if r.t < last)
            since = last

    def gap_records(self) -> list[dict[str, Any]]:
        """The agent's own points (spool_gap, spool_dropped_*), one dict per time and point."""
        series = self._series(
            f"SELECT * FROM readings WHERE agent = '{AGENT}' AND device = '{AGENT}'"
        )
        if not series:
            return []
        columns = series[0]["columns"]
        return [dict(zip(columns, values, strict=True)) for values in series[0]["values"]]


@dataclass(frozen=True)
class GapRecord:
    """One gap as it arrived in InfluxDB: spool_gap (bad, reason) and its counts."""

    t: int
    reason: str
    first_seq: int
    last_seq: int
    messages: int
    readings: int


def gap_records(store: Store) -> list[GapRecord]:
    by_time: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in store.gap_records():
        by_time[row["time"]][row["point"]] = row
    out = []
    for t, points in sorted(by_time.items()):
        gap = points["spool_gap"]
        assert gap["quality"] == "bad" and gap["value"] is None, gap
        match = re.search(r"seq (\d+)\.\.(\d+)", gap["reason"])
        assert match, gap["reason"]
        out.append(
            GapRecord(
                t,
                gap["reason"],
                int(match.group(1)),
                int(match.group(2)),
                int(points["spool_dropped_messages"]["value"]),
                int(points["spool_dropped_readings"]["value"]),
            )
        )
    return out


@dataclass(frozen=True)
class Progress:
    """What InfluxDB holds; true once complete (a failed wait shows the last one)."""

    distinct: int
    highest: int
    complete: bool

    def __bool__(self) -> bool:
        return self.complete


async def wait_delivered(
    store: Store, up_to: int, *, dropped: int = 0, wait_s: float = 120.0
) -> Progress:
    """Until InfluxDB holds every seq 1..``up_to`` but ``dropped`` of them, with no seq
    missing below its highest (no hole)."""

    async def progress() -> Progress:
        distinct, highest = await asyncio.to_thread(store.progress)
        return Progress(distinct, highest, distinct + dropped == highest and highest >= up_to)

    result: Progress = await async_wait_for(
        progress,
        timeout=wait_s,
        interval=0.5,
        message=f"every seq up to {up_to} in InfluxDB ({dropped} dropped)",
    )
    return result


@dataclass
class Delivered:
    readings: int
    polls: int
    seqs: set[int]
    first_ns: int
    last_ns: int
    #: poll timestamps, sorted
    times: list[int] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.readings / max(1e-9, (self.last_ns - self.first_ns) / 1e9)

    def polls_between(self, start_ns: int, end_ns: int) -> int:
        return sum(1 for t in self.times if start_ns <= t < end_ns)


def ranges(seqs: Iterable[int]) -> str:
    """1,2,3,7 → "1..3, 7" (for messages)."""
    out: list[str] = []
    run: list[int] = []
    for s in sorted(seqs):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}..{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}..{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out) or "none"


def verify(store: Store, last_seq: int, *, dropped: Iterable[int] = ()) -> Delivered:
    """Every seq 1..last_seq but ``dropped`` is stored, every poll whole, every value exact."""
    rows = store.readings()
    assert rows, "no readings in InfluxDB"
    wrong = [r for r in rows if r.quality != "good" or r.value != EXPECTED.get(r.point)]
    assert not wrong, f"{len(wrong)} reading(s) not exact, e.g. {wrong[:3]}"
    polls: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        polls[r.t].append(r)
    poll_seq = {t: {r.seq for r in group if r.seq is not None} for t, group in polls.items()}
    partial = {
        t: (len(group), sorted(poll_seq[t]))
        for t, group in polls.items()
        if len(group) != POINTS
        or {r.point for r in group} != EXPECTED.keys()
        or len(poll_seq[t]) != 1
    }
    assert not partial, f"{len(partial)} poll(s) not whole: {list(partial.items())[:3]}"
    seqs = {s for group in poll_seq.values() for s in group}
    expected = set(range(1, last_seq + 1)) - set(dropped)
    missing, unexpected = expected - seqs, seqs - expected
    assert not missing, f"{len(missing)} message(s) missing in InfluxDB: seq {ranges(missing)}"
    assert not unexpected, f"seqs that should not be there: {ranges(unexpected)}"
    times = sorted(polls)
    # Polls are spooled in the order they were sampled, so their seqs never go down in time:
    # a seq handed out twice (say, after a restart) would show up here.
    order = [min(poll_seq[t]) for t in times]
    back = [(a, b) for a, b in itertools.pairwise(order) if b < a]
    assert not back, f"seqs going backwards in time: {back[:5]}"
    return Delivered(len(rows), len(polls), seqs, times[0], times[-1], times)


# --- MQTT observer --------------------------------------------------------------------------


class Observer:
    """A plain subscriber to the agent's data and confirm topics: what the agent published
    (every publish, republishes included) and what the ingester confirmed, with the times;
    and to the broker's count of dropped messages (published every ``sys_interval``)."""

    DROPPED = "$SYS/broker/publish/messages/dropped"

    def __init__(self, broker: Mosquitto) -> None:
        self.data = data_topic(SITE, AGENT)
        self.confirm = confirm_topic(SITE, AGENT)
        self._lock = threading.Lock()
        self.published: Counter[int] = Counter()
        self.confirmed: set[int] = set()
        #: (monotonic time, watermark) after each confirmation.
        self.watermarks: list[tuple[float, int]] = []
        #: The broker's last reported count of messages it dropped (queues full).
        self.broker_dropped = 0
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="delivery-observer")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(10), "the observer could not subscribe"

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe([(self.data, 1), (self.confirm, 1), (self.DROPPED, 0)])

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self.DROPPED:
            self.broker_dropped = int(message.payload)
            return
        doc = orjson.loads(message.payload)
        with self._lock:
            if message.topic == self.data:
                self.published[int(doc["seq"])] += 1
                return
            for first, last in doc["ranges"]:
                self.confirmed.update(range(first, last + 1))
            self.watermarks.append((time.monotonic(), self._watermark()))

    def _watermark(self) -> int:
        mark = 0
        while mark + 1 in self.confirmed:
            mark += 1
        return mark

    def watermark(self) -> int:
        """The highest seq W with every seq 1..W confirmed."""
        with self._lock:
            return self._watermark()

    def republished(self) -> dict[int, int]:
        with self._lock:
            return {seq: n for seq, n in self.published.items() if n > 1}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- outages --------------------------------------------------------------------------------


@dataclass
class Outage:
    seconds: float
    rss_kib: list[int] = field(default_factory=list)
    spool: list[SpoolState] = field(default_factory=list)
    watermarks: list[int] = field(default_factory=list)
    started_ns: int = 0
    ended_ns: int = 0

    @property
    def rss_spread_mib(self) -> float:
        return (max(self.rss_kib) - min(self.rss_kib)) / 1024

    def report(self) -> None:
        rss = [round(k / 1024, 1) for k in self.rss_kib]
        say(f"outage {self.seconds:.1f} s; agent RSS (MiB) every second: {rss}")
        say(f"agent RSS spread during the outage: {self.rss_spread_mib:.1f} MiB")
        if self.spool:
            last = self.spool[-1]
            peak = max(s.payload_bytes for s in self.spool)
            say(
                f"spool sampled {len(self.spool)}x: at the end {last.entries} message(s), "
                f"{last.readings} readings, {last.payload_bytes} payload bytes; peak "
                f"{peak} bytes; next seq {last.next_seq}"
            )


async def hold(
    seconds: float,
    *,
    agent: Fieldlink | None = None,
    spool: Path | None = None,
    scratch: Path | None = None,
    observer: Observer | None = None,
) -> Outage:
    """Let an outage last ``seconds`` on the event loop's clock (the scenario is defined by
    wall time), sampling the agent's RSS, a copy of its spool and the watermark each second."""
    loop = asyncio.get_running_loop()
    outage = Outage(seconds, started_ns=time.time_ns())
    start = loop.time()
    tick = 0
    while True:
        if agent is not None and agent.running:
            outage.rss_kib.append(agent.rss_kib())
        if spool is not None and scratch is not None:
            state = await asyncio.to_thread(snapshot_spool, spool, scratch)
            if state is not None:
                outage.spool.append(state)
        if observer is not None:
            outage.watermarks.append(observer.watermark())
        tick += 1
        now = loop.time()
        if now >= start + seconds:
            break
        await asyncio.sleep(min(start + tick, start + seconds) - now)
    outage.ended_ns = time.time_ns()
    return outage


def in_thread(fn: Any, *args: Any) -> Any:
    """Blocking service control (broker/InfluxDB stop and start) off the event loop, so the
    simulated meter in this loop keeps answering."""
    return asyncio.to_thread(fn, *args)


# --- the pipeline ---------------------------------------------------------------------------


@dataclass
class Run:
    agent: Fieldlink
    #: None while a test has not started one (``pipeline(..., ingester=False)``).
    maybe_ingester: Fieldlink | None
    agent_config: Path
    cloud_config: Path
    spool: Path
    store: Store
    procs: Processes
    scratch: Path

    @property
    def ingester(self) -> Fieldlink:
        assert self.maybe_ingester is not None, "no ingester started"
        return self.maybe_ingester

    async def start_ingester(self) -> Fieldlink:
        self.maybe_ingester = await self.procs.ingester(self.cloud_config)
        return self.maybe_ingester


@contextlib.asynccontextmanager
async def pipeline(
    tmp_path: Path,
    broker: Mosquitto,
    influx: InfluxDB1,
    database: str,
    *,
    max_bytes: int | None = None,
    receive_maximum: int | None = None,
    agent_mqtt: dict[str, Any] | None = None,
    cloud_mqtt: dict[str, Any] | None = None,
    ingester: bool = True,
) -> AsyncIterator[Run]:
    """Meter (in this loop), ingester and agent processes, running until the block ends;
    whatever still runs then is killed (a passing test has stopped them itself).
    ``agent_mqtt``/``cloud_mqtt``: more settings of their mqtt sections (credentials...);
    ``ingester=False``: the test starts it itself (``await run.start_ingester()``)."""
    async with SimPlant(sim_config()) as plant, Processes(tmp_path) as procs:
        port = plant.endpoints()[DEVICE][1]
        config, spool = agent_file(tmp_path, broker, port, max_bytes=max_bytes, mqtt=agent_mqtt)
        cloud = cloud_file(
            tmp_path,
            broker,
            influx,
            database,
            receive_maximum=receive_maximum,
            mqtt_extra=cloud_mqtt,
        )
        started = await procs.ingester(cloud) if ingester else None
        agent = await procs.agent(config)
        store = Store(influx, database)
        yield Run(agent, started, config, cloud, spool, store, procs, tmp_path / "spool-copy")


async def steady(run: Run) -> int:
    """Until the first ten messages (~2 s of readings) are in InfluxDB; their count."""
    return (await wait_delivered(run.store, 10, wait_s=60)).distinct


@dataclass
class Finished:
    delivered: Delivered
    spool: SpoolState
    agent: dict[str, int]


async def finish(run: Run, *, dropped: set[int] | None = None) -> Finished:
    """Stop the agent (SIGTERM, exit 0), take the last seq it handed out from its spool, wait
    for InfluxDB to hold them all, prove it, stop the ingester (exit 0)."""
    assert await run.agent.stop() == 0, run.agent.text()[-3000:]
    state = read_spool(run.spool)
    last = state.next_seq - 1
    await wait_delivered(run.store, last, dropped=len(dropped or ()), wait_s=60)
    delivered = await asyncio.to_thread(verify, run.store, last, dropped=dropped or ())
    assert await run.ingester.stop() == 0, run.ingester.text()[-3000:]
    summary = agent_summary(run.agent)
    say(
        f"stored: {delivered.readings} readings in {delivered.polls} polls of {DEVICE}, "
        f"{len(delivered.seqs)} messages (seq 1..{last}"
        + (f" but {len(dropped)} dropped" if dropped else ", none missing")
        + f"), every value exact; {delivered.rate:.0f} readings/s over "
        f"{(delivered.last_ns - delivered.first_ns) / 1e9:.1f} s"
    )
    say(
        f"agent (last run): published {summary['readings']} readings in {summary['messages']} "
        f"messages, {summary['republished']} republished, {summary['confirmed']} confirmed, "
        f"{summary['dropped']} readings dropped; spool after stop: {state.entries} message(s)"
    )
    say(f"ingester: {ingester_summary(run.ingester)}")
    return Finished(delivered, state, summary)
