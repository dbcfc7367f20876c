"""``python -m bench edge``: the agent against the naive script, on the same device farm.

For each workload (``N×M@T``: N devices of M points polled every T seconds):

1. a farm of simulated devices (:mod:`bench.farm`) serves the workload's register maps;
2. for each system (``fieldlink``, then ``naive``): a private Mosquitto, the measuring
   subscriber (:mod:`bench.subscriber`, its own process), then the system as a real process
   — ``python -m fieldlink edge run agent.yaml`` or ``python -m bench.baseline.naive_edge``;
3. after the first message and a warm-up, a window of ``--window`` seconds is measured:
   CPU and RSS of the system's process from /proc (:class:`bench.measure.ProcessSample`),
   and every reading whose *sample time* lies in the window, counted by the subscriber;
4. one :class:`bench.report.Row` per system, printed side by side (fieldlink ÷ naive) and
   appended to ``bench/results/results.jsonl``.

``--max`` then looks for the most points/s each system sustains on one core by adding
devices (at a fixed interval) until the system falls behind (achieved < 95 % of expected) or
its CPU reaches 95 % of one core (:func:`find_max`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from bench.farm import Farm, measure_farm, parts_for
from bench.measure import ProcessSample, group_cpu_seconds, host_cpu_seconds, percentile
from bench.pinning import label as pin_label
from bench.pinning import on_cpus, parse_cpus, rest_of
from bench.profile import start_record, summarise
from bench.report import RESULTS_DIR, Row, append_results, new_run_id, print_table
from bench.workload import DEVICES_PER_GATEWAY, Workload, edge_config, naive_spec, to_yaml
from fieldlink.localstack import Mosquitto

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("fieldlink", "naive")
#: The agent of another checkout (``--ref-tree``): before/after a change, in the same run.
REF_SYSTEM = "fieldlink-ref"
DEFAULT_WORKLOADS = "20x100@1,100x100@1,1000x100@1"
SMOKE_WORKLOAD = "4x20@0.5"
#: The broker must never be what drops readings: no queue or in-flight limits per client.
BROKER_CONFIG = "max_queued_messages 0\nmax_inflight_messages 0\nmax_queued_bytes 0\n"
#: A system "keeps up" while it delivers this share of the expected points...
KEEPS_UP = 0.95
#: ... and uses less than this share of one core.
CPU_LIMIT = 95.0

TABLE_COLUMNS = [
    "expected_pts_s",
    "points_per_s",
    "cpu_pct",
    "cpu_per_1k_pts_pct",
    "rss_mib",
    "peak_rss_mib",
    "jitter_p50_ms",
    "jitter_p99_ms",
    "missed_polls",
    "bad",
    "max_pts_s_est",
    "other_cpu_pct",
]


MAX_COLUMNS = [
    "at_workload",
    "max_pts_s",
    "cpu_pct",
    "cpu_per_1k_pts_pct",
    "rss_mib",
    "jitter_p99_ms",
    "other_cpu_pct",
]


@dataclass(frozen=True)
class Settings:
    window: float
    warmup: float
    grace: float
    validate_every: int
    workdir: Path
    startup_timeout: float = 0.0  # 0: from the workload size
    #: Seconds to wait, before each run, for other users of the machine to quiet down.
    wait_idle: float = 0.0
    #: Sample the system with py-spy during the window (costs it a few % of CPU).
    profile: bool = False
    #: Another checkout of fieldlink, run as the system ``fieldlink-ref`` (``--ref-tree``).
    ref_tree: Path | None = None
    #: Run the system under test on these CPUs, everything else on the rest (``--system-cpus``).
    system_cpus: frozenset[int] | None = None


class BenchError(RuntimeError):
    pass


# -- processes ------------------------------------------------------------------------------


class Lines:
    """The lines a child prints, collected by a thread, so waiting for one has a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self._queue.put(raw.decode(errors="replace").strip())

    def wait_for(self, line: str, timeout: float, alive: Callable[[], str | None]) -> None:
        """Return once ``line`` was printed; raise if ``alive()`` reports a death or time
        runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._queue.get(timeout=0.1) == line:
                    return
            except queue.Empty:
                pass
            problem = alive()
            if problem is not None:
                raise BenchError(problem)
            if time.monotonic() > deadline:
                raise BenchError(f"no {line!r} within {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


@contextlib.contextmanager
def _running(
    argv: list[str],
    log: Path,
    stdout_pipe: bool = False,
    cwd: Path = ROOT,
    cpus: frozenset[int] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in ``cwd`` (on ``cpus``, if given): ``python -m fieldlink`` imports the
    tree it is started in (``sys.path[0]``), which is how ``--ref-tree`` runs another
    checkout's agent."""
    with log.open("wb") as out, on_cpus(cpus):
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else out,
            stderr=out,
        )
    try:
        yield proc
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# -- one measured run -----------------------------------------------------------------------


def _system_argv(
    system: str, workload: Workload, farm: Farm, broker: Mosquitto, workdir: Path
) -> tuple[list[str], str]:
    """The command that runs ``system`` and the topic it publishes to."""
    endpoint = (broker.host, broker.port)
    if system in ("fieldlink", REF_SYSTEM):
        config = workdir / "agent.yaml"
        spool = str(workdir / "agent.spool")
        config.write_text(to_yaml(edge_config(workload, farm.endpoints, endpoint, spool=spool)))
        return [
            PYTHON,
            "-m",
            "fieldlink",
            "edge",
            "run",
            str(config),
        ], "fieldlink/v1/bench/edge-1/data"
    topic = "naive/bench/data"
    spec = workdir / "naive.json"
    spec.write_text(json.dumps(naive_spec(workload, farm.endpoints, endpoint, topic)))
    return [PYTHON, "-m", "bench.baseline.naive_edge", str(spec)], topic


def fresh_dir(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``-3``... if taken: a run never reuses another's broker
    data, spool or ports files."""
    parent.mkdir(parents=True, exist_ok=True)
    candidate, n = parent / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = parent / f"{name}-{n}"


def run_system(system: str, workload: Workload, farm: Farm, settings: Settings) -> Row:
    workdir = fresh_dir(settings.workdir, f"{workload.label.replace('@', '_')}-{system}")
    if settings.wait_idle > 0:
        wait_idle(settings.wait_idle)
    broker = Mosquitto(data_dir=workdir / "mosquitto", extra_config=BROKER_CONFIG)
    with broker:
        argv, topic = _system_argv(system, workload, farm, broker, workdir)
        sub_out = workdir / "subscriber.json"
        sub_argv = [
            PYTHON,
            "-m",
            "bench.subscriber",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--topic",
            topic,
            "--format",
            "naive" if system == "naive" else "fieldlink",
            "--out",
            str(sub_out),
            "--validate-every",
            str(settings.validate_every),
        ]
        with _running(sub_argv, workdir / "subscriber.log", stdout_pipe=True) as sub:
            assert sub.stdout is not None
            lines = Lines(sub.stdout)

            def sub_alive() -> str | None:
                if sub.poll() is not None:
                    return f"subscriber exited: {_tail(workdir / 'subscriber.log')}"
                return None

            lines.wait_for("ready", 30.0, sub_alive)
            log = workdir / f"{system}.log"
            started = time.monotonic()
            cwd = settings.ref_tree if system == REF_SYSTEM and settings.ref_tree else ROOT
            with _running(argv, log, cwd=cwd, cpus=settings.system_cpus) as proc:

                def alive() -> str | None:
                    if proc.poll() is not None:
                        return f"{system} exited with {proc.returncode}: {_tail(log)}"
                    return sub_alive()

                # The agent parses its YAML with PyYAML's pure-Python loader: ~0.7 s per
                # 1,000 points on this machine, before the first poll.
                timeout = (
                    settings.startup_timeout or 30.0 + workload.devices * workload.points / 800
                )
                lines.wait_for("first", timeout, alive)
                startup_s = time.monotonic() - started
                _sleep(max(settings.warmup, 2 * workload.interval), alive)
                recorder = None
                if settings.profile:
                    recorder = start_record(proc.pid, settings.window, workdir / "py-spy.txt")
                # A whole number of intervals: a periodic source then has exactly as many
                # samples in the window whatever its phase (the window is half-open).
                span = math.ceil(settings.window / workload.interval - 1e-9) * workload.interval
                measured = _measure_window(proc.pid, farm, broker, sub.pid, span, alive)
                if recorder is not None:
                    _finish_profile(recorder, workdir / "py-spy.txt", workload, system)
                # Readings sampled at the end of the window are still on their way.
                _sleep(settings.grace + workload.interval, alive)
            # The system stops first (leaving _running), while the subscriber still confirms
            # what it flushes; then the subscriber writes what it counted.
            _stop(sub)
            if not sub_out.exists():
                raise BenchError(f"subscriber wrote nothing: {_tail(workdir / 'subscriber.log')}")
            received = json.loads(sub_out.read_bytes())
    row = _row(system, workload, measured, received, startup_s, farm.parts)
    if settings.system_cpus is not None:
        row.figures["system_cpus"] = pin_label(settings.system_cpus)
        pinned = f"system on CPU {pin_label(settings.system_cpus)}"
        row.notes = f"{row.notes}; {pinned}" if row.notes else pinned
    return row


def _finish_profile(
    recorder: subprocess.Popen[bytes], raw: Path, workload: Workload, system: str
) -> None:
    try:
        _, err = recorder.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        recorder.kill()
        _, err = recorder.communicate()
    if not raw.exists():
        print(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return
    summary = summarise(raw).render()
    (raw.parent / "py-spy-summary.txt").write_text(summary + "\n")
    print(f"\nprofile of {system} on {workload.label} ({raw}):\n{summary}\n", flush=True)


#: Host CPU (in % of one core) above which the machine counts as busy for ``wait_idle``.
IDLE_BELOW = 25.0


def wait_idle(limit: float) -> bool:
    """Wait up to ``limit`` seconds until the host has been under IDLE_BELOW % of one core
    for two seconds running; True if it got there."""
    deadline = time.monotonic() + limit
    quiet = 0
    busy0, total0 = host_cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        busy1, total1 = host_cpu_seconds()
        cpus = os.cpu_count() or 1
        used = 100 * cpus * (busy1 - busy0) / max(total1 - total0, 1e-9)
        busy0, total0 = busy1, total1
        quiet = quiet + 1 if used < IDLE_BELOW else 0
        if quiet >= 2:
            return True
    return False


def _sleep(seconds: float, alive: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
        problem = alive()
        if problem is not None:
            raise BenchError(problem)


@dataclass(frozen=True)
class Window:
    t0_ns: int
    t1_ns: int
    wall_s: float
    cpu_s: float
    rss_mib: float
    peak_rss_mib: float
    farm_cpu_s: float
    broker_cpu_s: float
    sub_cpu_s: float
    host_busy_s: float
    host_total_s: float


def _measure_window(
    pid: int,
    farm: Farm,
    broker: Mosquitto,
    sub_pid: int,
    span: float,
    alive: Callable[[], str | None],
) -> Window:
    """Measure ``span`` seconds. Readings are counted in exactly [t0, t0 + span); CPU over
    the time actually slept (a few ms longer)."""
    broker_pid = broker.pid or 0
    farm0 = group_cpu_seconds(farm.pids)
    broker0 = group_cpu_seconds([broker_pid])
    sub0 = group_cpu_seconds([sub_pid])
    busy0, total0 = host_cpu_seconds()
    t0 = time.time_ns()
    sample = ProcessSample.begin(pid)
    sample.poll_rss()
    deadline = time.monotonic() + span
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.5, left))
        sample.poll_rss()
        problem = alive()
        if problem is not None:
            raise BenchError(problem)
    figures = sample.end()
    busy1, total1 = host_cpu_seconds()
    return Window(
        t0_ns=t0,
        t1_ns=t0 + round(span * 1e9),
        wall_s=figures.wall_s,
        cpu_s=figures.cpu_s,
        rss_mib=figures.rss_mib,
        peak_rss_mib=figures.peak_rss_mib,
        farm_cpu_s=group_cpu_seconds(farm.pids) - farm0,
        broker_cpu_s=group_cpu_seconds([broker_pid]) - broker0,
        sub_cpu_s=group_cpu_seconds([sub_pid]) - sub0,
        host_busy_s=busy1 - busy0,
        host_total_s=total1 - total0,
    )


def _row(
    system: str,
    workload: Workload,
    w: Window,
    received: dict[str, Any],
    startup_s: float,
    farm_parts: int,
) -> Row:
    window_s = (w.t1_ns - w.t0_ns) / 1e9
    interval_ns = workload.interval * 1e9
    groups: list[list[int]] = received["groups"]
    readings = bad = 0
    lags: list[float] = []
    for _key, t, n, b, arrived in groups:
        if w.t0_ns <= t < w.t1_ns:
            readings += n
            bad += b
            lags.append((arrived - t) / 1e6)
    # Jitter: per request (fieldlink) or poll (naive), consecutive sample times whose later
    # one is in the window; |Δt − T| in ms. A gap of more than 1.5 T is a missed poll.
    jitter: list[float] = []
    missed = 0
    previous: dict[int, int] = {}
    for key, t, _n, _b, _a in sorted(groups, key=lambda g: (g[0], g[1])):
        last = previous.get(key)
        previous[key] = t
        if last is None or not w.t0_ns <= t < w.t1_ns:
            continue
        delta = t - last
        if delta > 1.5 * interval_ns:
            missed += round(delta / interval_ns) - 1
        jitter.append(abs(delta - interval_ns) / 1e6)
    points_per_s = readings / window_s if window_s > 0 else 0.0
    cpu_pct = 100.0 * w.cpu_s / w.wall_s if w.wall_s > 0 else 0.0
    per_1k = cpu_pct / (points_per_s / 1000) if points_per_s > 0 else None
    ours = w.cpu_s + w.farm_cpu_s + w.broker_cpu_s + w.sub_cpu_s
    cpus = os.cpu_count() or 1
    achieved = points_per_s / workload.expected_pts_s
    figures: dict[str, float | int | str | None] = {
        "expected_pts_s": round(workload.expected_pts_s, 1),
        "points_per_s": round(points_per_s, 1),
        "achieved_pct": round(100 * achieved, 1),
        "cpu_pct": round(cpu_pct, 1),
        "cpu_per_1k_pts_pct": None if per_1k is None else round(per_1k, 3),
        "rss_mib": round(w.rss_mib, 1),
        "peak_rss_mib": round(w.peak_rss_mib, 1),
        "jitter_p50_ms": _ms(percentile(jitter, 50)),
        "jitter_p99_ms": _ms(percentile(jitter, 99)),
        "jitter_max_ms": _ms(max(jitter) if jitter else float("nan")),
        "missed_polls": missed,
        "bad": bad,
        "invalid_messages": int(received["invalid"]),
        "duplicates": int(received.get("duplicates", 0)),
        "confirm_errors": int(received.get("confirm_errors", 0)),
        "lag_p50_ms": _ms(percentile(lags, 50)),
        "lag_p99_ms": _ms(percentile(lags, 99)),
        "messages": int(received["messages"]),
        # Max points/s at 100 % of one core if CPU grew linearly with the rate.
        "max_pts_s_est": None if per_1k is None else round(100_000 / per_1k),
        "window_s": round(window_s, 2),
        "window_start_ns": w.t0_ns,
        "startup_s": round(startup_s, 2),
        "farm_processes": farm_parts,
        "farm_cpu_pct": round(100 * w.farm_cpu_s / w.wall_s, 1),
        "broker_cpu_pct": round(100 * w.broker_cpu_s / w.wall_s, 1),
        "subscriber_cpu_pct": round(100 * w.sub_cpu_s / w.wall_s, 1),
        # The whole machine, in % of one core (200 = both cores busy), and what of it was
        # used by processes this benchmark did not start (other users of the machine).
        "host_busy_pct": round(100 * cpus * w.host_busy_s / w.host_total_s, 1)
        if w.host_total_s > 0
        else None,
        "other_cpu_pct": round(
            max(0.0, 100 * (cpus * w.host_busy_s / w.host_total_s * w.wall_s - ours) / w.wall_s), 1
        )
        if w.host_total_s > 0
        else None,
    }
    notes = []
    if achieved < KEEPS_UP:
        notes.append(f"behind: {100 * achieved:.0f} % of expected")
    if cpu_pct >= CPU_LIMIT:
        notes.append("CPU-bound")
    if received.get("confirm_errors"):
        notes.append(
            f"{received['confirm_errors']} confirmation(s) failed: {received['errors'][:1]}"
        )
    if received["invalid"]:
        notes.append(f"{received['invalid']} invalid message(s): {received['errors'][:1]}")
    if bad:
        notes.append(f"{bad} bad reading(s)")
    return Row("edge", system, workload.label, figures, "; ".join(notes))


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


# -- the benchmark ---------------------------------------------------------------------------


def run_workload(
    workload: Workload, settings: Settings, systems: Sequence[str], console: Console
) -> list[Row]:
    parts = parts_for(workload)
    rows: list[Row] = []
    console.print(
        f"[bold]{workload.label}[/]: {workload.expected_pts_s:,.0f} points/s expected, "
        f"{workload.expected_req_s:,.0f} requests/s, farm of {parts} process(es)"
    )
    farm_dir = fresh_dir(settings.workdir, f"farm-{workload.label.replace('@', '_')}")
    with Farm(workload, parts, farm_dir) as farm:
        for system in systems:
            console.print(f"  {system} ...", end="")
            row = run_system(system, workload, farm, settings)
            console.print(
                f" {row.figures['points_per_s']:,} points/s at {row.figures['cpu_pct']} % CPU"
            )
            rows.append(row)
    return rows


def find_max(
    system: str,
    points: int,
    interval: float,
    settings: Settings,
    console: Console,
    seeds: Sequence[Row] = (),
    start_devices: int = 500,
    max_steps: int = 5,
    keep: Callable[[list[Row]], None] | None = None,
) -> Row:
    """The most points/s ``system`` sustains on one core, found by adding devices.

    Sustained: at least 95 % of the expected points arrive and the system's CPU stays under
    95 % of one core. Runs already measured at the same points and interval (``seeds``, e.g.
    the 1000x100@1 workload) count as steps. Devices grow ×1.5 (or shrink ×0.6) until one
    count is sustained and a larger one is not, then the two are bisected until they are
    within 15 %. Devices come in whole gateways. The interval stays fixed, so each bus's
    load per device stays what the workloads have: the limit found is the agent's CPU, not
    a bus's round trips. The row is the fastest sustained run.
    """
    good: int | None = None
    bad: int | None = None
    best: Row | None = None
    tried: list[str] = []

    def judge(n: int, row: Row) -> None:
        nonlocal good, bad, best
        ok = _sustained(row)
        tried.append(
            f"{row.workload}: {row.figures['points_per_s']:,} pts/s at "
            f"{row.figures['cpu_pct']} % CPU{'' if ok else ' ✗'}"
        )
        if ok and (good is None or n > good):
            good, best = n, row
        if not ok and (bad is None or n < bad):
            bad = n

    for row in seeds:
        w = Workload.parse(row.workload)
        if row.system == system and w.points == points and w.interval == interval:
            judge(w.devices, row)
    for _ in range(max_steps):
        if good is None and bad is None:
            n = start_devices
        elif good is None:
            assert bad is not None
            n = int(bad * 0.6)
        elif bad is None:
            n = int(good * 1.5)
        elif bad / good < 1.15:
            break
        else:
            n = (good + bad) // 2
        n = max(DEVICES_PER_GATEWAY, round(n / DEVICES_PER_GATEWAY) * DEVICES_PER_GATEWAY)
        if n in (good, bad):
            break
        row = run_workload(Workload(n, points, interval), settings, [system], console)[0]
        row.notes = "; ".join(x for x in (row.notes, f"max search step for {system}") if x)
        if keep is not None:
            keep([row])
        judge(n, row)
    if best is None:
        raise BenchError(f"{system}: no load was sustained ({'; '.join(tried)})")
    figures = dict(best.figures)
    figures["max_pts_s"] = figures["points_per_s"]
    figures["at_workload"] = best.workload
    # One label for every system, so the table can show fieldlink ÷ naive.
    label = f"max Nx{points}@{interval:g}s"
    return Row("edge-max", system, label, figures, "tried " + "; ".join(tried))


def _sustained(row: Row) -> bool:
    achieved = row.figures.get("achieved_pct")
    cpu = row.figures.get("cpu_pct")
    return (
        isinstance(achieved, float | int)
        and achieved >= 100 * KEEPS_UP
        and isinstance(cpu, float | int)
        and cpu < CPU_LIMIT
    )


def console_for_output() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=220)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the context managers: the farm, brokers and systems are stopped.
    raise SystemExit(128 + signum)


def _pin(text: str | None, console: Console) -> frozenset[int] | None:
    """``--system-cpus``: move this process (and so the farm, the brokers and the
    subscribers it starts) off the CPUs the systems under test will run on."""
    if not text:
        return None
    try:
        cpus = parse_cpus(text)
    except ValueError as exc:
        raise SystemExit(f"bench edge: --system-cpus: {exc}") from None
    os.sched_setaffinity(0, rest_of(cpus))
    console.print(
        f"systems under test on CPU {pin_label(cpus)}, farm, brokers and subscribers on CPU "
        f"{pin_label(rest_of(cpus))}"
    )
    return cpus


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = console_for_output()
    smoke: bool = args.smoke
    workloads = [
        Workload.parse(w)
        for w in (args.workloads or (SMOKE_WORKLOAD if smoke else DEFAULT_WORKLOADS)).split(",")
    ]
    systems = [s for s in args.systems.split(",") if s]
    if args.ref_tree is not None:
        if not (args.ref_tree / "edge" / "cli.py").is_file():
            console.print(f"--ref-tree {args.ref_tree}: not a fieldlink checkout (no edge/cli.py)")
            return 2
        systems.insert(0, REF_SYSTEM)
    unknown = set(systems) - {*SYSTEMS, REF_SYSTEM}
    if unknown:
        console.print(
            f"unknown system(s): {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}"
        )
        return 2
    window = args.window if args.window is not None else (4.0 if smoke else 30.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if smoke else 5.0)
    workdir = Path(tempfile.mkdtemp(prefix="bench-edge-")) if args.workdir is None else args.workdir
    settings = Settings(
        window=window,
        warmup=warmup,
        grace=1.0 if smoke else 2.0,
        validate_every=1 if smoke else 10,
        workdir=workdir,
        wait_idle=args.wait_idle,
        profile=args.profile,
        ref_tree=args.ref_tree,
        system_cpus=_pin(args.system_cpus, console),
    )
    run_id = new_run_id()
    rows: list[Row] = []
    shown: list[Row] = []

    def keep(new: list[Row]) -> None:
        """Rows go to the results file as they are measured: a failure later loses none."""
        rows.extend(new)
        append_results(new, run_id, args.results)

    try:
        if args.farm:
            largest = max(workloads, key=lambda w: w.expected_req_s)
            farm_row = measure_farm(largest, workdir, seconds=1.5 if smoke else 5.0)
            keep([farm_row])
            print_table(
                "device farm alone (sim/, pipelined reads)",
                [farm_row],
                list(farm_row.figures),
                console,
            )
        for workload in workloads:
            measured = run_workload(workload, settings, systems, console)
            keep(measured)
            shown.extend(measured)
        if args.max:
            for system in systems:
                best = find_max(
                    system, 100, args.max_interval, settings, console, seeds=shown, keep=keep
                )
                keep([best])
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}\n(work files kept in {workdir})")
        return 1
    print_table(
        f"edge: fieldlink vs naive (run {run_id}, window {window:g} s)",
        shown,
        TABLE_COLUMNS,
        console,
    )
    max_rows = [r for r in rows if r.bench == "edge-max"]
    if max_rows:
        print_table(
            "edge: most points/s sustained on one core",
            max_rows,
            MAX_COLUMNS,
            console,
        )
    path = args.results or RESULTS_DIR / "results.jsonl"
    console.print(f"{len(rows)} result line(s) appended to {path}")
    if args.profile:
        console.print(f"profiles kept in {workdir}/*/py-spy*.txt")
    elif not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "edge",
        help="the agent vs the naive script: points/s, CPU, RSS, poll jitter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workloads",
        help=f"comma-separated DEVICESxPOINTS@SECONDS (default {DEFAULT_WORKLOADS}; "
        f"--smoke: {SMOKE_WORKLOAD})",
    )
    parser.add_argument("--window", type=float, help="measured seconds (default 30; smoke 4)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds after the first message before "
        "measuring (default 5, at least two intervals; smoke 1)",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="default fieldlink,naive")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for CI")
    parser.add_argument(
        "--no-farm", dest="farm", action="store_false", help="skip measuring the farm alone"
    )
    parser.add_argument(
        "--max",
        action="store_true",
        help="also search the most points/s each system sustains on one core",
    )
    parser.add_argument(
        "--max-interval",
        type=float,
        default=1.0,
        help="interval of the --max search, which adds devices of 100 points (default 1 s)",
    )
    parser.add_argument(
        "--results", type=Path, help="JSON lines file (default bench/results/results.jsonl)"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle "
        f"(< {IDLE_BELOW:g} %% of a core busy); other_cpu_pct shows what others used",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each system with py-spy during its window and print the hot spots",
    )
    parser.add_argument(
        "--ref-tree",
        type=Path,
        metavar="DIR",
        help="also run the agent of another fieldlink checkout (e.g. a copy of the tree before "
        f"a change) as system {REF_SYSTEM}, first, on the same farm",
    )
    parser.add_argument(
        "--system-cpus",
        metavar="CPUS",
        help="run each system under test on these CPUs (e.g. 1) and the farm, brokers and "
        "subscribers on the rest: on a small host, one core that is the system's alone, so "
        "--max finds what it sustains on one core (bench/pinning.py; default: no pinning)",
    )
    parser.add_argument("--workdir", type=Path, help="keep configs and logs here")
    parser.add_argument("--keep", action="store_true", help="do not delete the work dir")
    parser.set_defaults(handler=run)
