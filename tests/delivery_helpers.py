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
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import paho.mqtt.client as paho
import yaml
from helpers import InfluxDatabase, async_wait_for, every
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
#: The smallest spool.max_bytes the config allows: ~10 messages of ~6 KB.
TINY_SPOOL = 65_536
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

    def lines(self, needle: str) -> list[str]:
        """The lines of its log that contain ``needle``."""
        return [line for line in self.text().splitlines() if needle in line]

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
    """Starts fieldlink processes; :meth:`aclose` kills whatever still runs (use it as
    ``async with contextlib.aclosing(Processes(tmp_path)) as procs``)."""

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

    async def aclose(self) -> None:
        for process in self._all:
            await process.cleanup()


def agent_summary(agent: Fieldlink) -> dict[str, int]:
    """The numbers of the agent's last "agent stopped" line."""
    lines = agent.lines("agent stopped:")
    assert lines, f"no 'agent stopped' line in {agent.log}"
    numbers = [int(n) for n in re.findall(r"\d+", lines[-1].split("agent stopped:")[1])]
    keys = ("readings", "messages", "republished", "confirmed", "dropped")
    return dict(zip(keys, numbers, strict=True))


def ingester_summary(ingester: Fieldlink) -> str:
    lines = ingester.lines("ingester stopped:")
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


async def spool_state_when(
    run: Run, predicate: Callable[[SpoolState], bool], what: str, wait_s: float = 60.0
) -> SpoolState:
    """A snapshot of the running agent's spool once ``predicate(state)`` holds (a torn copy
    is taken again)."""

    async def probe() -> SpoolState | None:
        state = await asyncio.to_thread(snapshot_spool, run.spool, run.scratch)
        return state if state is not None and predicate(state) else None

    found = await async_wait_for(probe, timeout=wait_s, interval=0.5, message=what)
    assert found is not None
    return found


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


@dataclass(frozen=True)
class Traffic:
    """What the :class:`Observer` had counted at one moment."""

    #: The agent's publishes, republishes included.
    publishes: int
    highest_seq: int
    #: The broker's last reported count of messages it dropped.
    broker_dropped: int


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

    def traffic(self) -> Traffic:
        with self._lock:
            return Traffic(
                sum(self.published.values()), max(self.published, default=0), self.broker_dropped
            )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


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

    async def restart_agent(self, log: str = "agent-restarted.log") -> Fieldlink:
        """A new agent process on the same config (as it is on disk now) and spool; the
        previous one must have exited."""
        self.agent = await self.procs.agent(self.agent_config, log=log)
        return self.agent

    async def kill_agent_and_restart(self) -> SpoolState:
        """kill -9 the agent and start it again, until the new one has taken up the messages
        the killed one left; the spool as the killed agent left it."""
        await self.agent.kill()
        left = read_spool(self.spool)  # unlocked now: the process is gone
        await self.restart_agent()
        await self.agent.wait_log("waiting from earlier runs")
        return left


@contextlib.asynccontextmanager
async def pipeline(
    tmp_path: Path,
    broker: Mosquitto,
    db: InfluxDatabase,
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
    async with (
        SimPlant(sim_config()) as plant,
        contextlib.aclosing(Processes(tmp_path)) as procs,
    ):
        port = plant.endpoints()[DEVICE][1]
        config, spool = agent_file(tmp_path, broker, port, max_bytes=max_bytes, mqtt=agent_mqtt)
        cloud = cloud_file(
            tmp_path,
            broker,
            db.service,
            db.name,
            receive_maximum=receive_maximum,
            mqtt_extra=cloud_mqtt,
        )
        started = await procs.ingester(cloud) if ingester else None
        agent = await procs.agent(config)
        store = Store(db.service, db.name)
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


# --- outages --------------------------------------------------------------------------------
#
# Every outage scenario is the same choreography: a steady pipeline, a peer stopped for a stated
# time (maybe with the agent killed and restarted meanwhile), the peer started again, a wait
# until InfluxDB has caught up, :func:`finish`. :func:`peer_outage` plays the first part and
# records what it saw; :func:`backlog_stored` or :func:`losses_reported` is the wait.


class Peer(Protocol):
    """What an outage takes away and gives back: a :class:`Mosquitto` or :class:`InfluxDB1`
    of the test's own, or a process frozen in place (:class:`Paused`). Both calls block."""

    def stop(self) -> None: ...

    def start(self) -> object: ...


@dataclass(frozen=True)
class Paused:
    """A fieldlink process as an outage's peer: SIGSTOP, later SIGCONT. It keeps its
    connections and all it holds; it only takes nothing in meanwhile."""

    process: Fieldlink

    @property
    def name(self) -> str:
        return self.process.name

    def stop(self) -> None:
        self.process.send(signal.SIGSTOP)

    def start(self) -> None:
        self.process.send(signal.SIGCONT)


@dataclass
class Outage:
    """One outage of a peer and what it did to the agent, sampled each second."""

    #: What was down ("mosquitto", "influxd", "ingester") and for how long.
    peer: str
    seconds: float
    #: The running agent's RSS at each sample (after a kill: the restarted agent's only).
    rss_kib: list[int] = field(default_factory=list)
    #: Copies of the spool, one a second (a torn copy is skipped).
    spool: list[SpoolState] = field(default_factory=list)
    #: The observer's watermark at each sample (with ``peer_outage(..., observer=...)``).
    watermarks: list[int] = field(default_factory=list)
    #: Wall clock (sample time) as the sampling began and ended: which polls fell into it.
    started_ns: int = 0
    ended_ns: int = 0
    #: ``time.monotonic()`` just after the peer went down, and just before it came back.
    down_at: float = 0.0
    back_at: float = 0.0
    #: The spool just after the peer came back: its ``next_seq - 1`` ends the backlog.
    returned: SpoolState | None = None
    #: The spool the agent killed during the outage left (``agent_killed_after``).
    left_by_killed: SpoolState | None = None
    #: The observer's counts just after the peer went down and just after it came back.
    traffic_down: Traffic | None = None
    traffic_back: Traffic | None = None
    #: Seconds from the peer's return until InfluxDB had caught up (set by the wait).
    drain_s: float = 0.0

    @property
    def backlog_last(self) -> int:
        """The last seq the agent had spooled when the peer came back."""
        assert self.returned is not None, "the peer has not come back"
        return self.returned.next_seq - 1

    @property
    def at_kill(self) -> SpoolState:
        assert self.left_by_killed is not None, "the agent was not killed"
        return self.left_by_killed

    def traffic(self) -> tuple[Traffic, Traffic]:
        """The observer's counts as the peer went down and as it came back."""
        assert self.traffic_down is not None and self.traffic_back is not None, "no observer"
        return self.traffic_down, self.traffic_back

    @property
    def rss_spread_mib(self) -> float:
        return (max(self.rss_kib) - min(self.rss_kib)) / 1024

    def polls_stored(self, done: Finished) -> int:
        """How many of the meter's polls sampled during the outage are in InfluxDB."""
        return done.delivered.polls_between(self.started_ns, self.ended_ns)

    def report(self, done: Finished | None = None) -> None:
        rss = [round(k / 1024, 1) for k in self.rss_kib]
        say(f"{self.peer} down {self.seconds:.1f} s; agent RSS (MiB) every second: {rss}")
        if self.rss_kib:
            say(f"agent RSS spread during the outage: {self.rss_spread_mib:.1f} MiB")
        if self.spool:
            last = self.spool[-1]
            peak = max(s.payload_bytes for s in self.spool)
            say(
                f"spool sampled {len(self.spool)}x: at the end {last.entries} message(s), "
                f"{last.readings} readings, {last.payload_bytes} payload bytes; peak "
                f"{peak} bytes; next seq {last.next_seq}"
            )
        if self.returned is not None:
            say(
                f"{self.peer} back: backlog up to seq {self.backlog_last} stored "
                f"{self.drain_s:.1f} s later"
            )
        if done is not None:
            say(
                f"polls stored from the outage: {self.polls_stored(done)} of "
                f"{self.seconds / INTERVAL:.0f} slots"
            )


async def hold(seconds: float) -> None:
    """Let ``seconds`` of wall time pass: a window the scenario defines (say, to count
    reconnect attempts in), not a wait for a condition. The event loop keeps running, so the
    simulated meter keeps answering."""
    await asyncio.sleep(seconds)


def in_thread(fn: Any, *args: Any) -> Any:
    """Blocking service control (broker/InfluxDB stop and start) off the event loop, so the
    simulated meter in this loop keeps answering."""
    return asyncio.to_thread(fn, *args)


async def _sample(outage: Outage, run: Run, seconds: float, observer: Observer | None) -> None:
    """Let ``seconds`` of the outage pass on the event loop's clock (the scenario is defined
    by wall time), sampling the agent's RSS, a copy of its spool and the watermark each
    second."""
    if not outage.started_ns:
        outage.started_ns = time.time_ns()
    async for _ in every(1.0, seconds):
        if run.agent.running:
            outage.rss_kib.append(run.agent.rss_kib())
        state = await asyncio.to_thread(snapshot_spool, run.spool, run.scratch)
        if state is not None:
            outage.spool.append(state)
        if observer is not None:
            outage.watermarks.append(observer.watermark())
    outage.ended_ns = time.time_ns()


async def peer_outage(
    run: Run,
    peer: Peer,
    seconds: float,
    *,
    agent_killed_after: float | None = None,
    observer: Observer | None = None,
) -> Outage:
    """Once the pipeline is steady (:func:`steady`): ``peer`` stopped for ``seconds``, sampled
    each second, then started again. With ``agent_killed_after``, that many seconds into the
    outage the agent is killed (kill -9) and started again on its spool
    (:meth:`Run.kill_agent_and_restart`). Wait for the backlog next: :func:`backlog_stored`
    or :func:`losses_reported`."""
    await steady(run)
    outage = Outage(getattr(peer, "name", type(peer).__name__), seconds)
    await in_thread(peer.stop)
    outage.down_at = time.monotonic()
    if observer is not None:
        outage.traffic_down = observer.traffic()
    if agent_killed_after is None:
        await _sample(outage, run, seconds, observer)
    else:
        await _sample(outage, run, agent_killed_after, observer)
        outage.left_by_killed = await run.kill_agent_and_restart()
        outage.rss_kib.clear()
        await _sample(outage, run, seconds - agent_killed_after, observer)
    outage.back_at = time.monotonic()
    await in_thread(peer.start)
    if observer is not None:
        outage.traffic_back = observer.traffic()
    outage.returned = await spool_state_when(run, lambda _: True, "a readable copy of the spool")
    return outage


async def backlog_stored(
    run: Run, outage: Outage, *, up_to: int | None = None, wait_s: float
) -> None:
    """Until InfluxDB holds every seq up to ``up_to`` (by default the last one the agent had
    spooled when the peer came back); records how long that took as ``outage.drain_s``."""
    last = outage.backlog_last if up_to is None else up_to
    await wait_delivered(run.store, last, wait_s=wait_s)
    outage.drain_s = time.monotonic() - outage.back_at


@dataclass(frozen=True)
class Losses:
    """The seqs InfluxDB misses and the seqs its gap records name; true once it holds the
    backlog's last seq and every missing seq is named (a failed wait shows the last one)."""

    missing: set[int]
    named: set[int]
    caught_up: bool

    def __bool__(self) -> bool:
        return self.caught_up and self.missing <= self.named

    def __repr__(self) -> str:
        return (
            f"Losses(caught up: {self.caught_up}; missing {ranges(self.missing)}; named by "
            f"gap records {ranges(self.named)})"
        )


async def losses_reported(run: Run, outage: Outage, *, wait_s: float = 120.0) -> set[int]:
    """For an outage during which a spool cap dropped messages: until InfluxDB holds the
    backlog (everything up to the agent's last seq when the peer came back) but the dropped
    messages, and gap records name each one of those; the missing seqs. Records the time it
    took as ``outage.drain_s``."""
    target = outage.backlog_last

    def probe() -> Losses:
        seqs = run.store.seqs()
        top = max(seqs, default=0)
        missing = set(range(1, max(top, target) + 1)) - seqs
        named = {s for g in gap_records(run.store) for s in range(g.first_seq, g.last_seq + 1)}
        return Losses(missing, named, caught_up=top >= target)

    losses: Losses = await async_wait_for(
        lambda: asyncio.to_thread(probe),
        timeout=wait_s,
        interval=0.5,
        message=f"every seq up to {target} in InfluxDB or named by a gap record",
    )
    outage.drain_s = time.monotonic() - outage.back_at
    return losses.missing
