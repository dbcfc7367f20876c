"""``python -m bench ingest``: fieldlink's ingester against the naive script, MQTT → InfluxDB 1.x.

Two workloads, each run for every system on a fresh Mosquitto and a fresh InfluxDB:

* **backlog**: the consumer's persistent session is created (its subscription, under its own
  client id), ``--readings`` readings are published at QoS 1 while it is away, then the
  consumer starts and drains the broker's queue. Measured from the moment the broker logs its
  connection until every published reading is queryable in InfluxDB: points/s landed, CPU
  seconds per million points (``/proc`` of the consumer process), peak RSS, and points
  missing = published − ``SELECT count(quality) FROM readings``. fieldlink also runs as 2 and
  3 ingesters in one shared-subscription group (``--ingesters``), their CPU summed.
* **steady**: the consumer runs; the publisher sends at a fixed rate (``--rates``) for
  ``--window`` seconds; measured from the first message until the last one is queryable.

The load (``bench/ingest_load.py``) is realistic agent batches (``wire.codec.encode_batch``,
1,000 readings per message from 10 agents × 10 devices × 100 points by default), every reading
on its own series and timestamp. fieldlink runs as ``python -m fieldlink cloud run`` with its
shipped defaults (acknowledge after the write, batches of 5,000 points or 0.5 s, two writes
in flight, receive_maximum 1,000); the baseline is ``bench/baseline/naive_ingest.py`` with the
same batch size. InfluxDB's own limit is measured too: the backlog as the very lines the
ingester writes, built beforehand and POSTed by 1 and 2 writers (``bench/ingest_direct.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from bench.ingest_load import LastMessage, Plant
from bench.ingest_stack import (
    GROUP_SUBSCRIPTION,
    REPO,
    SYSTEMS,
    BenchError,
    Child,
    HostLoad,
    InfluxReader,
    Stack,
    child_env,
    children,
    member_id,
    prime_session,
    start_consumer,
    start_members,
    wait_idle,
    workspace,
)
from bench.measure import ProcessSample, cpu_seconds, group_cpu_seconds
from bench.pinning import label as pin_label
from bench.pinning import parse_cpus, rest_of
from bench.profile import py_spy, summarise
from bench.report import Row, append_results, new_run_id, print_table

COLUMNS = [
    "points_per_s",
    "cpu_s_per_million",
    "cpu_pct",
    "rss_mib",
    "missing",
    "seconds",
    "influx_cpu_s_per_million",
    "influx_cpu_pct",
    "host_cpu_pct",
    "other_cpu_pct",
]
#: Other processes' CPU (% of one core) above which a row is flagged as measured on a busy
#: machine.
BUSY_OTHERS = 25.0
#: Consumer CPU must stay flat this long (and the last message not land) to call it stalled.
STALL_SECONDS = 10.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="MQTT → InfluxDB 1.x: fieldlink's ingester vs the naive script",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds-long version for CI: a 20,000 backlog only"
    )
    parser.add_argument(
        "--readings", type=int, default=1_000_000, help="backlog size (default 1,000,000)"
    )
    parser.add_argument(
        "--per-message",
        type=int,
        default=1000,
        help="readings per MQTT message (default 1000: 10 devices × 100 points)",
    )
    parser.add_argument(
        "--rates",
        default="10000,50000",
        help="steady rates in readings/s, comma-separated; '' for none (default 10000,50000)",
    )
    parser.add_argument(
        "--window", type=float, default=20.0, help="seconds of publishing per steady rate"
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated, from: naive, fieldlink (default both, naive first)",
    )
    parser.add_argument(
        "--no-backlog", dest="backlog", action="store_false", help="skip the backlog workload"
    )
    parser.add_argument(
        "--ingesters",
        default="1,2,3",
        help="fieldlink on the backlog with these numbers of ingester processes; 2 and more "
        "share one subscription group (mqtt.group) (default 1,2,3; 1 with --smoke)",
    )
    parser.add_argument(
        "--no-direct",
        dest="direct",
        action="store_false",
        help="skip measuring InfluxDB alone (pre-built lines POSTed by 1 and 2 writers); "
        "always skipped with --smoke",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every measurement this many times"
    )
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="seconds a run may take to land"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for the machine to be idle "
        "(default 120; 0 with --smoke)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="JSON-lines file to append to (default bench/results/results.jsonl)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep configs, logs and data here (default: a temp dir)"
    )
    parser.add_argument(
        "--influxd-cpus",
        metavar="CPUS",
        help="pin influxd to these CPUs (e.g. 0) and every other process of the run to the "
        "rest, in every measurement: InfluxDB on cores of its own, as on a host of its own "
        "(bench/pinning.py; default: no pinning)",
    )
    parser.add_argument(
        "--fieldlink-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="lay this over fieldlink's shipped cloud config (VALUE read as JSON, else a "
        "string), e.g. batch.max_points=10000; repeatable. The rows say so in their notes",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record fieldlink's ingester with py-spy during each run (raw stacks into DIR)",
    )
    parser.set_defaults(handler=run)


class Load:
    """The publisher process (``bench.ingest_load``) and the events it prints."""

    def __init__(self, stack: Stack, plant: Plant, log_path: Path, extra: list[str]) -> None:
        argv = [
            sys.executable,
            "-m",
            "bench.ingest_load",
            "--host",
            stack.broker.host,
            "--port",
            str(stack.broker.port),
            "--agents",
            str(plant.agents),
            "--devices",
            str(plant.devices),
            "--points",
            str(plant.points),
            *extra,
        ]
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env(),
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=self._read, args=(stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"the publisher sent no {event!r} within {timeout:g} s") from None
            if item["event"] == event:
                return item
            if item["event"] == "exit":
                raise BenchError(f"the publisher exited (code {self.proc.wait()}) before {event!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _last(done: dict[str, Any], consumers: int = 1) -> list[LastMessage]:
    """The last message published, or with ``consumers`` in a shared group the last that many
    (the broker deals messages out in turn, so each member's share ends with one of them)."""
    tail = [LastMessage(**m) for m in done.get("tail") or [done["last"]]]
    return tail[-consumers:]


@dataclass
class Landing:
    """What watching the consumer(s) drain produced."""

    landed: bool
    ended: float  # monotonic
    samples: list[ProcessSample]
    host: HostLoad
    why: str = ""


def _watch(
    consumers: list[Child],
    reader: InfluxReader,
    lasts: list[LastMessage],
    published: int,
    samples: list[ProcessSample],
    host: HostLoad,
    started: float,
    deadline: float,
) -> Landing:
    """Poll until every published reading is queryable, a consumer stalls or dies, or the
    deadline.

    Counting a million points is too heavy to repeat 20 times a second (it would slow
    InfluxDB down), so the poll first waits for the last reading of each of ``lasts`` (one
    series at one time each: the last message, or with N ingesters in a group the last N,
    one ending each member's share), then for those whole messages, and only then counts
    everything until the count is complete: with writes in flight concurrently, or several
    ingesters, the last message published is not always the last one to land. Counts are
    spaced by four times the last one's duration (at least 0.2 s), so that a count repeated
    while a slow member finishes takes at most a fifth of InfluxDB's time. The run ends when
    a complete count comes back (so it includes one count query's duration).
    """
    next_rss = 0.0
    pids = [c.pid for c in consumers]
    cpu_mark, cpu_mark_at = group_cpu_seconds(pids), time.monotonic()
    last_seen = False
    count_pause = 0.2
    while True:
        now = time.monotonic()
        if now >= next_rss:
            for sample in samples:
                sample.poll_rss()
            next_rss = now + 0.5
        if not last_seen:
            last_seen = all(reader.count(m.last_reading) for m in lasts) and all(
                reader.count(m.where) >= m.readings for m in lasts
            )
        if last_seen:
            counted = time.monotonic()
            if reader.count() >= published:
                return Landing(True, time.monotonic(), samples, host)
            count_pause = max(0.2, 4 * (time.monotonic() - counted))
        dead = [c.name for c in consumers if not c.alive()]
        if dead:
            return Landing(False, now, samples, host, f"{', '.join(dead)} exited")
        cpu = group_cpu_seconds(pids)
        if cpu - cpu_mark > 0.05:
            cpu_mark, cpu_mark_at = cpu, now
        elif now - cpu_mark_at > STALL_SECONDS:
            return Landing(False, now, samples, host, f"stalled: no CPU for {STALL_SECONDS:g} s")
        if now - started > deadline:
            return Landing(False, now, samples, host, f"deadline of {deadline:g} s")
        time.sleep(count_pause if last_seen else 0.05)


def _py_spy(
    args: argparse.Namespace, system: str, pid: int, name: str, kids: list[Child]
) -> Child | None:
    """Start py-spy on fieldlink's ingester if asked to (``--py-spy DIR``)."""
    if args.py_spy is None or system != "fieldlink":
        return None
    exe = py_spy()
    if exe is None:
        raise BenchError("--py-spy: py-spy is not installed (.venv/bin/pip install py-spy)")
    args.py_spy.mkdir(parents=True, exist_ok=True)
    out = args.py_spy / f"{name}.txt"
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--function", "--rate", "200"]
    argv += ["--nonblocking", "--output", str(out)]
    child = Child("py-spy", argv, args.py_spy / f"{name}.log")
    kids.append(child)
    return child


@functools.cache
def output() -> Console:
    """The terminal, or 200 columns when the output goes to a file or pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _py_spy_done(spy: Child | None) -> None:
    """Stop py-spy (SIGINT makes it write its output) and print the summary."""
    if spy is None:
        return
    spy.stop(sig=signal.SIGINT)
    raw = Path(spy.log_path).with_suffix(".txt")
    if raw.exists():
        summary = summarise(raw).render()
        raw.with_name(raw.stem + "-summary.txt").write_text(summary + "\n")
        output().print(f"py-spy profile of the ingester ({raw}):\n{summary}")


def _common(
    system: str,
    stack: Stack,
    landing: Landing,
    started: float,
    published: int,
    services0: dict[str, float],
    reader: InfluxReader,
    publisher_cpu: float = 0.0,
) -> dict[str, float | int | str | None]:
    ends = [sample.end() for sample in landing.samples]
    cpu_s = sum(end.cpu_s for end in ends)
    peak_rss = max(end.peak_rss_mib for end in ends)
    host_pct = landing.host.pct()
    window = time.monotonic() - landing.host.started
    services = {name: cpu - services0[name] for name, cpu in _service_cpu(stack).items()}
    influx_cpu = services.get("influxd", 0.0)
    ours = cpu_s + sum(services.values()) + publisher_cpu + landing.host.own_cpu()
    stored = reader.count()
    seconds = landing.ended - started
    per_million = 1e6 / stored if stored else float("nan")
    return {
        "points": published,
        "stored": stored,
        "missing": published - stored,
        "seconds": round(seconds, 3),
        "points_per_s": round(stored / seconds, 1) if seconds > 0 else None,
        "cpu_s": round(cpu_s, 3),
        "cpu_s_per_million": round(cpu_s * per_million, 3),
        "cpu_pct": round(100 * cpu_s / seconds, 1) if seconds > 0 else None,
        "rss_mib": round(peak_rss, 1),
        "influx_cpu_s_per_million": round(influx_cpu * per_million, 3),
        # Where the machine's CPU went (% of one core): with the host near 100 % × cores, the
        # run was bound by the machine, not by any one process.
        "influx_cpu_pct": round(100 * influx_cpu / window, 1),
        "broker_cpu_pct": round(100 * services.get("mosquitto", 0.0) / window, 1),
        # The most points/s this machine could carry if it did nothing else: all its cores
        # divided by what one point cost the consumer(s), influxd and Mosquitto together.
        "machine_limit_pts_s": round(
            (os.cpu_count() or 1) * stored / (cpu_s + sum(services.values())), 1
        )
        if stored and cpu_s + sum(services.values()) > 0
        else None,
        "host_cpu_pct": host_pct,
        # The machine minus what this run started: other users of a shared machine.
        "other_cpu_pct": round(max(0.0, host_pct - 100 * ours / window), 1),
        "landed": int(landing.landed),
        "ingesters": len(landing.samples),
    }


def _service_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the run's influxd and Mosquitto."""
    return {name: cpu_seconds(pid) for name, pid in stack.pids().items()}


def measure_backlog(
    system: str,
    args: argparse.Namespace,
    plant: Plant,
    rundir: Path,
    workload: str,
    ingesters: int = 1,
) -> Row:
    """One backlog run. ``ingesters`` > 1 (fieldlink only): that many ingester processes in
    one shared-subscription group, each with its own persistent session primed beforehand,
    so the broker splits the backlog between their queues as it is published."""
    rundir.mkdir(parents=True, exist_ok=True)
    with Stack(rundir / "services", args.influx_cpus, args.overrides) as stack, children() as kids:
        if ingesters == 1:
            prime_session(stack.broker, system)
        else:
            for index in range(ingesters):
                prime_session(stack.broker, system, GROUP_SUBSCRIPTION, member_id(index))
        load = Load(stack, plant, rundir / "load.log", ["--readings", str(args.readings)])
        try:
            done = load.wait("done", timeout=args.deadline)
        finally:
            load.close()
        published, lasts = int(done["readings"]), _last(done, ingesters)
        idle = _wait_idle(args)
        spawned = time.monotonic()
        if ingesters == 1:
            consumer, started = start_consumer(system, stack, rundir, kids)
            consumers = [consumer]
        else:
            consumers, started = start_members(stack, rundir, kids, ingesters)
        samples = [ProcessSample.begin(c.pid) for c in consumers]
        host = HostLoad()
        services0 = _service_cpu(stack)
        spy = _py_spy(args, system, consumers[0].pid, rundir.name, kids)
        reader = InfluxReader(stack.influx)
        landing = _watch(consumers, reader, lasts, published, samples, host, started, args.deadline)
        _py_spy_done(spy)
        figures = _common(system, stack, landing, started, published, services0, reader)
        figures["startup_s"] = round(started - spawned, 3)
        figures["per_message"] = plant.per_message
        figures["publish_s"] = round(float(done["seconds"]), 3)
        if ingesters > 1:
            # How the broker split the backlog: the readings each member wrote (its summary).
            figures["written_by_member"] = " / ".join(str(_written(c)) for c in consumers)
        reader.close()
        notes = _notes(system, landing, idle, ingesters)
    name = system if ingesters == 1 else f"{system} ×{ingesters}"
    return Row("ingest", name, workload, figures, notes)


def _written(consumer: Child) -> str:
    """Readings a fieldlink ingester says it wrote (its stop summary), or '?'."""
    consumer.stop()
    for line in reversed(consumer.output().splitlines()):
        if "ingester stopped" in line and "wrote " in line:
            return line.split("wrote ", 1)[1].split(" ", 1)[0]
    return "?"


def measure_steady(
    system: str, args: argparse.Namespace, plant: Plant, rate: float, rundir: Path, workload: str
) -> Row:
    rundir.mkdir(parents=True, exist_ok=True)
    with Stack(rundir / "services", args.influx_cpus, args.overrides) as stack, children() as kids:
        prime_session(stack.broker, system)
        idle = _wait_idle(args)
        consumer, _ = start_consumer(system, stack, rundir, kids)
        reader = InfluxReader(stack.influx)
        sample = ProcessSample.begin(consumer.pid)
        host = HostLoad()
        services0 = _service_cpu(stack)
        spy = _py_spy(args, system, consumer.pid, rundir.name, kids)
        extra = ["--rate", str(rate), "--duration", str(args.window)]
        load = Load(stack, plant, rundir / "load.log", extra)
        try:
            start = load.wait("start", timeout=60)
            started = float(start["mono"])
            # Sample RSS while the publisher runs; its "done" comes after the last PUBACK.
            deadline = time.monotonic() + args.window + args.deadline
            while True:
                sample.poll_rss()
                try:
                    done = load.wait("done", timeout=0.5)
                    break
                except BenchError:
                    if load.proc.poll() is not None or time.monotonic() > deadline:
                        raise
        finally:
            load.close()
        published, lasts = int(done["readings"]), _last(done)
        landing = _watch(
            [consumer], reader, lasts, published, [sample], host, started, args.deadline
        )
        _py_spy_done(spy)
        publisher_cpu = float(done["cpu_s"]) - float(start["cpu_s"])
        figures = _common(
            system, stack, landing, started, published, services0, reader, publisher_cpu
        )
        figures["offered_per_s"] = rate
        figures["drain_s"] = round(landing.ended - float(done["published_mono"]), 3)
        figures["per_message"] = plant.per_message
        reader.close()
        notes = _notes(system, landing, idle)
    return Row("ingest", system, workload, figures, notes)


def _wait_idle(args: argparse.Namespace) -> bool:
    return args.wait_idle <= 0 or wait_idle(args.wait_idle)


def _notes(system: str, landing: Landing, idle: bool, ingesters: int = 1) -> str:
    notes = []
    if not landing.landed:
        notes.append(f"NOT LANDED: {landing.why}")
    if not idle:
        notes.append("machine was busy at start")
    if system == "fieldlink":
        members = "1 ingester" if ingesters == 1 else f"{ingesters} ingesters, shared group"
        notes.append(f"ack after write, {members}")
    else:
        notes.append("auto-ack on receipt")
    return "; ".join(notes)


def measure_direct(
    args: argparse.Namespace, plant: Plant, writers: int, rundir: Path, workload: str
) -> Row:
    """InfluxDB alone: the backlog's lines, pre-built, POSTed by ``writers`` connections."""
    rundir.mkdir(parents=True, exist_ok=True)
    idle = _wait_idle(args)
    with Stack(rundir / "services", args.influx_cpus, args.overrides) as stack:
        influx_pid = stack.influx.pid
        argv = [
            sys.executable,
            "-m",
            "bench.ingest_direct",
            "--url",
            stack.influx.url,
            "--readings",
            str(args.readings),
            "--writers",
            str(writers),
            "--agents",
            str(plant.agents),
            "--devices",
            str(plant.devices),
            "--points",
            str(plant.points),
        ]
        if influx_pid is not None:
            argv += ["--influxd-pid", str(influx_pid)]
        with (rundir / "direct.log").open("ab") as log:
            out = subprocess.run(
                argv, cwd=REPO, stdout=subprocess.PIPE, stderr=log, env=child_env(), check=False
            )
        if out.returncode != 0:
            raise BenchError(f"bench.ingest_direct failed (code {out.returncode}), see {rundir}")
        result = json.loads(out.stdout)
        reader = InfluxReader(stack.influx)
        # Every consumer row ends with one complete count query (``_watch``); so does this
        # one, or InfluxDB alone would be timed without what the others are timed with.
        count_started = time.monotonic()
        stored = reader.count()
        count_s = time.monotonic() - count_started
        reader.close()
        influx_cpu = _f(result.get("influx_cpu_s"))
        figures: dict[str, float | int | str | None] = {
            "points": int(result["points"]),
            "stored": stored,
            "missing": int(result["points"]) - stored,
            "seconds": round(float(result["seconds"]) + count_s, 3),
            "points_per_s": round(stored / (float(result["seconds"]) + count_s), 1),
            "count_s": round(count_s, 3),
            "influx_cpu_s_per_million": (
                round(influx_cpu * 1e6 / stored, 3) if stored and influx_cpu is not None else None
            ),
            "writers": writers,
        }
    notes = "pre-built lines, no MQTT" + ("" if idle else "; machine was busy at start")
    return Row("ingest", "influxdb-direct", workload, figures, notes)


def _ingesters(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise SystemExit(f"--ingesters: expected counts like 1,2,3, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"--ingesters: expected counts of at least 1, got {text!r}")
    return counts


def _systems(text: str) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(unknown)}; choose from {SYSTEMS}")
    return systems


def run(args: argparse.Namespace) -> int:
    console = output()
    if args.smoke:
        args.readings = min(args.readings, 20_000)
        args.rates = ""
        args.direct = False
        args.ingesters = "1"
        args.deadline = min(args.deadline, 60.0)
        args.wait_idle = 0.0
    systems = _systems(args.systems)
    influx_cpus = _pin(args)
    args.overrides = _overrides(args.fieldlink_set)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    ingesters = _ingesters(args.ingesters)
    plant = Plant.for_message_size(args.per_message)
    run_id = new_run_id()
    rows: list[Row] = []
    console.print(f"[bold]ingest[/bold] run {run_id}")
    if influx_cpus is not None:
        console.print(
            f"influxd on CPU {pin_label(influx_cpus)}, everything else on CPU "
            f"{pin_label(rest_of(influx_cpus))}"
        )
    with workspace(args.workdir, "fieldlink-bench-ingest-") as work:
        for rep in range(args.repeat):
            suffix = f"-{rep + 1}" if args.repeat > 1 else ""
            label = f" #{rep + 1}" if args.repeat > 1 else ""
            if args.backlog:
                workload = f"backlog {args.readings:,}{label}"
                for system in systems:
                    counts = ingesters if system == "fieldlink" else [1]
                    for count in counts:
                        name = system if count == 1 else f"{system} ×{count}"
                        console.print(f"{workload}: {name}…")
                        rundir = work / f"backlog-{system}{count if count > 1 else ''}{suffix}"
                        row = measure_backlog(system, args, plant, rundir, workload, count)
                        rows.append(row)
                        _say(console, row)
            for rate in rates:
                workload = f"steady {rate:,.0f}/s × {args.window:g}s{label}"
                for system in systems:
                    console.print(f"{workload}: {system}…")
                    tag = f"steady{rate:.0f}-{system}{suffix}"
                    row = measure_steady(system, args, plant, rate, work / tag, workload)
                    rows.append(row)
                    _say(console, row)
            if args.direct:
                for writers in (1, 2):
                    workload = f"direct {args.readings:,}, {writers} writer(s){label}"
                    console.print(f"{workload}…")
                    rundir = work / f"direct{writers}{suffix}"
                    row = measure_direct(args, plant, writers, rundir, workload)
                    rows.append(row)
                    _say(console, row)
    for row in rows:
        row.figures["plant"] = plant.label
        if influx_cpus is not None:
            _pinned_figures(row, influx_cpus)
        if args.fieldlink_set and row.system.startswith("fieldlink"):
            row.figures["fieldlink_set"] = " ".join(args.fieldlink_set)
            row.notes = "; ".join(filter(None, [row.notes, " ".join(args.fieldlink_set)]))
    path = append_results(rows, run_id, args.results)
    title = f"ingest (run {run_id}, plant {plant.label}, {plant.per_message} readings/message)"
    print_table(title, rows, COLUMNS, console)
    for line in verdicts(rows):
        console.print(line)
    console.print(f"results appended to {path}")
    missing = sum(int(r.figures.get("missing") or 0) for r in rows)
    not_landed = [r for r in rows if r.figures.get("landed") == 0]
    return 1 if missing or not_landed else 0


def _pin(args: argparse.Namespace) -> frozenset[int] | None:
    """``--influxd-cpus``: move this process (and so every child it starts) off influxd's
    CPUs; the stacks start influxd on them (``Stack.influx_cpus``)."""
    if not args.influxd_cpus:
        args.influx_cpus = None
        return None
    try:
        cpus = parse_cpus(args.influxd_cpus)
    except ValueError as exc:
        raise SystemExit(f"bench ingest: --influxd-cpus: {exc}") from None
    os.sched_setaffinity(0, rest_of(cpus))
    args.influx_cpus = cpus
    return cpus


def _overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``--fieldlink-set SECTION.KEY=VALUE`` → ``{section: {key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for setting in settings:
        name, eq, text = setting.partition("=")
        section, dot, key = name.partition(".")
        if not (eq and dot and section and key):
            raise SystemExit(
                f"bench ingest: --fieldlink-set {setting!r}: expected SECTION.KEY=VALUE, "
                "e.g. batch.max_points=10000"
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        out.setdefault(section, {})[key] = value
    return out


def _pinned_figures(row: Row, influx_cpus: frozenset[int]) -> None:
    """With influxd pinned, the machine's limit is the smaller of what influxd's cores and
    what the other cores (consumers, Mosquitto) could carry at this run's cost per point."""
    f = row.figures
    f["influxd_cpus"] = pin_label(influx_cpus)
    row.notes = "; ".join(filter(None, [row.notes, f"influxd on CPU {pin_label(influx_cpus)}"]))
    influx = _f(f.get("influx_cpu_s_per_million"))
    ours = _f(f.get("cpu_s_per_million"))
    broker_pct, rate = _f(f.get("broker_cpu_pct")), _f(f.get("points_per_s"))
    if not influx or ours is None or broker_pct is None or not rate:
        return
    others = ours + broker_pct / 100 * 1e6 / rate  # CPU-s per million off influxd's cores
    f["machine_limit_pts_s"] = round(
        min(len(influx_cpus) * 1e6 / influx, len(rest_of(influx_cpus)) * 1e6 / others), 1
    )


def _say(console: Console, row: Row) -> None:
    f = row.figures
    console.print(
        f"  {row.system}: {f.get('points_per_s')} points/s, "
        f"{f.get('cpu_s_per_million', '—')} CPU-s per million, missing {f.get('missing')}"
        + (f" ({row.notes})" if "NOT" in row.notes else "")
    )


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's ingest targets, judged on this run's ratios."""
    out = []
    naive = {r.workload: r for r in rows if r.system == "naive"}
    for row in rows:
        if row.system != "fieldlink":
            continue
        base = naive.get(row.workload)
        f = row.figures
        missing = f.get("missing")
        out.append(
            f"{row.workload}: missing {missing} "
            + ("[green]PASS[/green]" if missing == 0 else "[red]FAIL[/red]")
        )
        if base is None:
            continue
        b = base.figures
        others = max(_f(f.get("other_cpu_pct")) or 0.0, _f(b.get("other_cpu_pct")) or 0.0)
        if others > BUSY_OTHERS:
            out.append(
                f"{row.workload}: [yellow]other processes used up to {others:.0f} % of a core "
                "during these runs: the ratios below are unreliable, run again[/yellow]"
            )
        cpu, cpu_base = _f(f.get("cpu_s_per_million")), _f(b.get("cpu_s_per_million"))
        if cpu is not None and cpu_base:
            ok = cpu <= cpu_base
            out.append(
                f"{row.workload}: CPU-s per million {cpu:.2f} vs naive {cpu_base:.2f} "
                f"({cpu / cpu_base:.2f}×, target ≤ 1.00×) " + _pass(ok)
            )
        rate, rate_base = _f(f.get("points_per_s")), _f(b.get("points_per_s"))
        if row.workload.startswith("backlog") and rate is not None and rate_base:
            ok = rate >= 1.25 * rate_base
            out.append(
                f"{row.workload}: points/s {rate:,.0f} vs naive {rate_base:,.0f} "
                f"({rate / rate_base:.2f}×, target ≥ 1.25×) " + _pass(ok)
            )
    out.extend(_scale_verdicts(rows))
    return out


def _scale_verdicts(rows: list[Row]) -> list[str]:
    """3 ingesters ≥ 2 × 1 ingester's points/s, or InfluxDB's own limit (the best
    ``influxdb-direct`` row: pre-built lines, 1 or 2 writers), per backlog workload."""
    out = []
    for row in rows:
        if row.system != "fieldlink ×3":
            continue
        one = next(
            (r for r in rows if r.system == "fieldlink" and r.workload == row.workload), None
        )
        suffix = row.workload.partition(" #")[2]
        direct = [
            _f(r.figures.get("points_per_s")) or 0.0
            for r in rows
            if r.system == "influxdb-direct" and r.workload.partition(" #")[2] == suffix
        ]
        rate = _f(row.figures.get("points_per_s"))
        base = _f(one.figures.get("points_per_s")) if one is not None else None
        if rate is None or not base:
            continue
        limit = max(direct, default=0.0)
        machine = _f(row.figures.get("machine_limit_pts_s"))
        text = f"{row.workload}: 3 ingesters {rate:,.0f} points/s = {rate / base:.2f}× 1 ingester"
        if limit:
            text += f", {rate / limit:.0%} of InfluxDB's own limit ({limit:,.0f}, direct)"
        if machine:
            text += f", {rate / machine:.0%} of the machine's CPU limit ({machine:,.0f})"
        if rate >= 2 * base:
            out.append(text + " (target ≥ 2×) " + _pass(True))
        elif limit and rate >= 0.9 * limit:
            out.append(text + " (target: ≥ 2× or InfluxDB's limit; at the limit) " + _pass(True))
        else:
            out.append(text + " (target: ≥ 2× or ≥ 90 % of InfluxDB's limit) " + _pass(False))
            out.append("  " + _bound(row))
    if not out:
        out.append("3 ingesters ≥ 2 × 1 ingester: [yellow]NOT MEASURED[/yellow] (--ingesters)")
    return out


def _bound(row: Row) -> str:
    """Where the CPU went during a run, to tell what bounds it."""
    f = row.figures
    host = _f(f.get("host_cpu_pct")) or 0.0
    capacity = 100.0 * (os.cpu_count() or 1)
    pinned = f.get("influxd_cpus")
    if isinstance(pinned, str):
        cores = 100.0 * len(pinned.split(","))
        influx = _f(f.get("influx_cpu_pct")) or 0.0
        bound = influx >= 0.9 * cores
        where = "bound by influxd's CPUs" if bound else "not bound by influxd's CPUs"
        return (
            f"{where} (influxd {influx:.0f} % of {cores:.0f} % on CPU {pinned}; ingester(s) "
            f"{f.get('cpu_pct')} %, Mosquitto {f.get('broker_cpu_pct')} %, others "
            f"{f.get('other_cpu_pct')} % on the rest)"
        )
    parts = (
        f"host {host:.0f} % of {capacity:.0f} %: influxd {f.get('influx_cpu_pct')} %, "
        f"ingester(s) {f.get('cpu_pct')} %, Mosquitto {f.get('broker_cpu_pct')} %, "
        f"others {f.get('other_cpu_pct')} %"
    )
    if host >= 0.9 * capacity:
        return (
            f"bound by the machine's CPU ({parts}); InfluxDB's own limit was measured with "
            "the machine to itself — to give InfluxDB cores of its own, as on a host of its "
            "own, run again with --influxd-cpus 0"
        )
    return f"not CPU-bound on the host ({parts})"


def _f(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _pass(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
