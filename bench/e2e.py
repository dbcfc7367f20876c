"""``python -m bench e2e``: latency from a reading's sample time to the moment it is queryable
in InfluxDB, over the whole path, at a steady rate (default 100 devices × 100 points every
1 s = 10,000 points/s).

fieldlink: the device farm (``bench/farm.py``, the real simulator) → ``fieldlink edge run`` →
Mosquitto → ``fieldlink cloud run`` → InfluxDB 1.x, every part at its shipped defaults (agent:
batches of 2,000 readings or 1 s; ingester: 5,000 points or 0.5 s, acknowledged after the
write). naive: the same farm → ``bench/baseline/naive_edge.py`` (one message per device poll)
→ Mosquitto → ``bench/baseline/naive_ingest.py`` → InfluxDB. Each system gets a fresh
Mosquitto and InfluxDB; the farm is shared.

Latency is measured by polling InfluxDB (``bench/e2e_probe.py``): every ``--poll`` seconds,
the newest sample times of the first point of every read of every device; a reading's
latency is the arrival of the first answer containing it minus its sample time. Readings
sampled during the ``--window`` (after ``--warmup``) count. Reported: p50/p99/max in ms, and
the target of issue 7, p99 ≤ poll interval + 1 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.e2e_probe import LatencyProbe, summary
from bench.farm import Farm, parts_for
from bench.ingest_stack import (
    SUBSCRIPTION,
    BenchError,
    Child,
    HostLoad,
    InfluxReader,
    Stack,
    children,
    prime_session,
    start_consumer,
    wait_idle,
    wait_until,
    workspace,
)
from bench.measure import ProcessSample, group_cpu_seconds
from bench.report import Row, append_results, new_run_id, print_table
from bench.workload import (
    Workload,
    device_name,
    edge_config,
    naive_spec,
    point_specs,
    read_blocks,
    to_yaml,
)

DEFAULT_WORKLOAD = "100x100@1"
SMOKE_WORKLOAD = "10x50@1"
SYSTEMS = ("naive", "fieldlink")
NAIVE_TOPIC = "naive/bench/data"
COLUMNS = [
    "points_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "samples",
    "target_ms",
    "to_broker_p99_ms",
    "from_broker_p99_ms",
    "cpu_pct",
    "rss_mib",
]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "e2e",
        help="sample time → queryable in InfluxDB: p50/p99/max latency, fieldlink vs naive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workload",
        help=f"DEVICESxPOINTS@SECONDS (default {DEFAULT_WORKLOAD}; smoke {SMOKE_WORKLOAD})",
    )
    parser.add_argument("--window", type=float, help="measured seconds (default 30; smoke 4)")
    parser.add_argument(
        "--warmup", type=float, help="seconds after the first reading lands (default 5; smoke 1)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.1, help="seconds between probe queries (default 0.1)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated (default naive,fieldlink)"
    )
    parser.add_argument(
        "--no-split",
        dest="split",
        action="store_false",
        help="do not run the broker-side observer that splits latency at the broker",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="before each system, wait up to this long for the machine to be idle "
        "(default 120; 0 with --smoke)",
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    parser.add_argument(
        "--results", type=Path, help="JSON lines file (default bench/results/results.jsonl)"
    )
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and data here")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class Settings:
    workload: Workload
    window: float
    warmup: float
    poll: float
    split: bool = True
    wait_idle: float = 0.0

    @property
    def target_ms(self) -> float:
        return (self.workload.interval + 1.0) * 1000


def watched_series(workload: Workload) -> set[tuple[str, str]]:
    """(device, point) of the first point of every read of every device."""
    specs = point_specs(workload.points)
    starts = {address for address, _count in read_blocks(specs)}
    firsts = [s.name for s in specs if s.address in starts]
    return {(device_name(i), p) for i in range(workload.devices) for p in firsts}


def _agent_argv(
    system: str, settings: Settings, farm: Farm, stack: Stack, rundir: Path
) -> list[str]:
    broker = (stack.broker.host, stack.broker.port)
    if system == "fieldlink":
        path = rundir / "agent.yaml"
        # A spool file of this run's own: the default one (~/.local/state) would carry
        # messages from earlier runs into this one.
        spool = str(rundir / "agent.spool")
        doc = edge_config(settings.workload, farm.endpoints, broker, spool=spool)
        path.write_text(to_yaml(doc))
        return [
            sys.executable,
            "-m",
            "fieldlink",
            "--log-level",
            "WARNING",
            "edge",
            "run",
            str(path),
        ]
    path = rundir / "naive-edge.json"
    spec = naive_spec(settings.workload, farm.endpoints, broker, NAIVE_TOPIC)
    path.write_text(json.dumps(spec))
    return [sys.executable, "-m", "bench.baseline.naive_edge", str(path)]


def _observer(stack: Stack, topic: str, rundir: Path, kids: list[Child]) -> Child:
    """``bench.e2e_observer`` on the data topic: when each group reached the broker."""
    argv = [sys.executable, "-m", "bench.e2e_observer", "--host", stack.broker.host]
    argv += ["--port", str(stack.broker.port), "--topic", topic]
    argv += ["--out", str(rundir / "at-broker.json")]
    child = Child("observer", argv, rundir / "observer.log")
    kids.append(child)
    if not wait_until(lambda: not child.alive() or "ready" in child.output(), 30):
        raise BenchError(f"the broker-side observer did not subscribe:\n{child.tail()}")
    _check(child)
    return child


def _arrivals(path: Path) -> dict[tuple[str, int], int]:
    """(device, sample time) → first arrival at the broker-side observer, in ns."""
    if not path.exists():
        raise BenchError(f"the broker-side observer wrote no {path.name}")
    out: dict[tuple[str, int], int] = {}
    for device, ts, arrived in json.loads(path.read_bytes())["arrivals"]:
        out.setdefault((device, ts), arrived)
    return out


def _check(*procs: Child) -> None:
    for proc in procs:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited (code {proc.stop()}):\n{proc.tail()}")


def measure(system: str, settings: Settings, farm: Farm, rundir: Path) -> Row:
    workload = settings.workload
    rundir.mkdir(parents=True, exist_ok=True)
    topic = SUBSCRIPTION if system == "fieldlink" else NAIVE_TOPIC
    idle = settings.wait_idle <= 0 or wait_idle(settings.wait_idle)
    with Stack(rundir / "services") as stack, children() as kids:
        prime_session(stack.broker, system, topic)
        consumer, _ = start_consumer(system, stack, rundir, kids, topic)
        observer = _observer(stack, topic, rundir, kids) if settings.split else None
        agent = Child(
            "agent", _agent_argv(system, settings, farm, stack, rundir), rundir / "agent.log"
        )
        kids.append(agent)
        reader = InfluxReader(stack.influx)
        probe = LatencyProbe(
            reader, watched_series(workload), lookback_s=max(10.0, 5 * settings.target_ms / 1000)
        )

        def poll_for(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                next_at = time.monotonic() + settings.poll
                probe.poll()
                _check(consumer, agent)
                time.sleep(max(0.0, next_at - time.monotonic()))

        # Start-up: the agent parses its config (PyYAML, ~0.7 s per 1,000 points) first.
        startup_deadline = time.monotonic() + 60 + workload.devices * workload.points / 800
        while not probe.arrivals:
            if time.monotonic() > startup_deadline:
                raise BenchError(f"no reading reached InfluxDB:\n{agent.tail()}\n{consumer.tail()}")
            poll_for(settings.poll)
        poll_for(settings.warmup)

        pids = {"agent": agent.pid, "ingest": consumer.pid}
        samples = {name: ProcessSample.begin(pid) for name, pid in pids.items()}
        others = {"farm": farm.pids, "broker": [stack.broker.pid or 0]}
        others["influxd"] = [stack.influx.pid or 0]
        others0 = {name: group_cpu_seconds(p) for name, p in others.items()}
        host = HostLoad()
        w0 = time.time_ns()
        until = time.monotonic() + settings.window
        next_rss = 0.0
        while time.monotonic() < until:
            if time.monotonic() >= next_rss:
                for sample in samples.values():
                    sample.poll_rss()
                next_rss = time.monotonic() + 0.5
            poll_for(settings.poll)
        w1 = time.time_ns()
        host_pct = host.pct()
        own_cpu = host.own_cpu()
        figures = {name: sample.end() for name, sample in samples.items()}
        other_cpu = {name: group_cpu_seconds(p) - others0[name] for name, p in others.items()}
        window_s = (w1 - w0) / 1e9

        # Readings sampled just before w1 are still on their way: keep polling until every
        # watched series has one sampled after w1, or the lookback has passed.
        grace = time.monotonic() + probe.lookback_s
        while not probe.caught_up(w1) and time.monotonic() < grace:
            poll_for(settings.poll)
        latencies = probe.latencies_ms(w0, w1)
        to_broker: list[float] = []
        from_broker: list[float] = []
        if observer is not None:
            observer.stop()
            at_broker = _arrivals(rundir / "at-broker.json")
            to_broker, from_broker = probe.split_ms(at_broker, w0, w1)
        stored = probe.stored_in(w0, w1)
        landed = reader.count(f"time >= {w0} AND time < {w1}", field="value")
        reader.close()

    cpu = {name: f.cpu_s for name, f in figures.items()}
    row: dict[str, float | int | str | None] = {
        "points_per_s": round(landed / window_s, 1),
        "expected_per_s": round(workload.expected_pts_s, 1),
        **summary(latencies),
        "target_ms": settings.target_ms,
        **{k: v for k, v in summary(to_broker, "to_broker_").items() if "samples" not in k},
        **{k: v for k, v in summary(from_broker, "from_broker_").items() if "samples" not in k},
        "unseen": stored - probe.seen_in(w0, w1),
        "cpu_pct": round(100 * (cpu["agent"] + cpu["ingest"]) / window_s, 1),
        "agent_cpu_pct": round(100 * cpu["agent"] / window_s, 1),
        "ingest_cpu_pct": round(100 * cpu["ingest"] / window_s, 1),
        "rss_mib": round(figures["agent"].peak_rss_mib + figures["ingest"].peak_rss_mib, 1),
        "agent_rss_mib": round(figures["agent"].peak_rss_mib, 1),
        "ingest_rss_mib": round(figures["ingest"].peak_rss_mib, 1),
        "influx_cpu_pct": round(100 * other_cpu["influxd"] / window_s, 1),
        "broker_cpu_pct": round(100 * other_cpu["broker"] / window_s, 1),
        "farm_cpu_pct": round(100 * other_cpu["farm"] / window_s, 1),
        "host_cpu_pct": host_pct,
        "other_cpu_pct": round(
            max(
                0.0,
                host_pct - 100 * (sum(cpu.values()) + sum(other_cpu.values()) + own_cpu) / window_s,
            ),
            1,
        ),
        "window_s": round(window_s, 2),
        "probe_poll_ms": round(settings.poll * 1000, 1),
        "probe_query_ms": round(1000 * sum(probe.query_s) / max(1, len(probe.query_s)), 1),
        "watched_series": len(probe.series),
    }
    p99 = row["p99_ms"]
    row["within_target"] = int(isinstance(p99, float) and p99 <= settings.target_ms)
    notes = (
        "agent + ingester, shipped defaults"
        if system == "fieldlink"
        else "naive_edge.py + naive_ingest.py"
    ) + ("" if idle else "; machine was busy at start")
    return Row("e2e", system, workload.label, row, notes)


def run(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    smoke: bool = args.smoke
    workload = Workload.parse(args.workload or (SMOKE_WORKLOAD if smoke else DEFAULT_WORKLOAD))
    settings = Settings(
        workload=workload,
        window=args.window if args.window is not None else (4.0 if smoke else 30.0),
        warmup=args.warmup if args.warmup is not None else (1.0 if smoke else 5.0),
        poll=args.poll,
        split=args.split,
        wait_idle=0.0 if smoke else args.wait_idle,
    )
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(unknown)}; choose from {SYSTEMS}")
    run_id = new_run_id()
    rows: list[Row] = []
    with workspace(args.workdir, "fieldlink-bench-e2e-") as work:
        parts = parts_for(workload)
        with Farm(workload, parts, work / "farm") as farm:
            console.print(
                f"[bold]e2e[/bold] run {run_id}: {workload.label} "
                f"({workload.expected_pts_s:,.0f} points/s), farm of {parts} process(es)"
            )
            for system in systems:
                console.print(f"{workload.label}: {system}…")
                row = measure(system, settings, farm, work / system)
                rows.append(row)
                f = row.figures
                console.print(
                    f"  {system}: p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, max {f['max_ms']} ms"
                    f" over {f['samples']} readings; {f['points_per_s']} points/s landed"
                )
    path = append_results(rows, run_id, args.results)
    print_table(f"e2e (run {run_id})", rows, COLUMNS, console)
    for row in rows:
        f = row.figures
        verdict = "[green]PASS[/green]" if f["within_target"] else "[red]FAIL[/red]"
        console.print(
            f"{row.system}: p99 {f['p99_ms']} ms vs target ≤ {f['target_ms']:.0f} ms "
            f"(poll interval + 1 s) {verdict}; probe resolution: +{f['probe_poll_ms']} ms poll "
            f"+ {f['probe_query_ms']} ms query"
        )
    console.print(f"results appended to {path}")
    return 0 if all(r.figures["samples"] for r in rows) else 1
