"""``fieldlink demo``: the whole path on one machine, with real services, in one command.

It starts Mosquitto and InfluxDB 1.x as child processes on free loopback ports (unless
``--mqtt``/``--influx`` name running ones), a simulated plant, the agent and the ingester as
the same ``fieldlink`` subcommands a user would run, shows readings as they flow, prints what
InfluxDB stored through ``fieldlink query``, and stops everything it started.

The configs it runs are the commented examples in ``config/examples/demo-*.yaml``; ports are
passed to them through environment variables (``${DEMO_...}``), the same substitution secrets use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from wire.codec import PayloadError, decode_batch
from wire.model import Quality, Reading

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"
DATABASE = "fieldlink"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo", help="run a simulated plant → agent → Mosquitto → ingester → InfluxDB, end to end"
    )
    demo.add_argument(
        "--duration", type=float, default=20.0, help="seconds of live data (default 20)"
    )
    demo.add_argument(
        "--mqtt",
        default=os.environ.get("FIELDLINK_DEMO_MQTT"),
        metavar="HOST:PORT",
        help="use this running broker instead of starting Mosquitto ($FIELDLINK_DEMO_MQTT)",
    )
    demo.add_argument(
        "--influx",
        default=os.environ.get("FIELDLINK_DEMO_INFLUX"),
        metavar="URL",
        help="use this running InfluxDB 1.x instead of starting one ($FIELDLINK_DEMO_INFLUX)",
    )
    demo.add_argument("--mosquitto-bin", metavar="PATH", help="the mosquitto executable to run")
    demo.add_argument("--influxd-bin", metavar="PATH", help="the influxd (1.x) executable to run")
    demo.add_argument(
        "--workdir", type=Path, help="keep configs, logs and data here (default: a temp dir)"
    )
    demo.set_defaults(handler=_run)


@dataclass
class LiveState:
    """What the live view shows, filled from the broker by a paho thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latest: dict[tuple[str, str], Reading] = field(default_factory=dict)
    messages: int = 0
    readings: int = 0
    invalid: int = 0

    def take(self, payload: bytes) -> None:
        try:
            batch = decode_batch(payload)
        except PayloadError:
            with self.lock:
                self.invalid += 1
            return
        with self.lock:
            self.messages += 1
            self.readings += len(batch.readings)
            for r in batch.readings:
                self.latest[(r.device, r.point)] = r


def _run(args: argparse.Namespace) -> int:
    console = Console()
    missing = _missing_binaries(args)
    if missing:
        for line in missing:
            print(line, file=sys.stderr)
        return 3
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _demo(args, args.workdir, console)
    with tempfile.TemporaryDirectory(prefix="fieldlink-demo-") as tmp:
        return _demo(args, Path(tmp), console)


def _missing_binaries(args: argparse.Namespace) -> list[str]:
    from fieldlink.localstack import BinaryNotFoundError, InfluxDB1, Mosquitto

    problems = []
    for wanted, cls, binary, flag in (
        (not args.mqtt, Mosquitto, args.mosquitto_bin, "--mqtt HOST:PORT"),
        (not args.influx, InfluxDB1, args.influxd_bin, "--influx URL"),
    ):
        if not wanted:
            continue
        try:
            cls.find_binary(binary)
        except BinaryNotFoundError as exc:
            problems.append(f"{exc}; or point the demo at a running one with {flag}")
    return problems


def _demo(args: argparse.Namespace, workdir: Path, console: Console) -> int:
    from fieldlink.localstack import InfluxDB1, Mosquitto, free_port

    with contextlib.ExitStack() as stack:
        if args.mqtt:
            mqtt_host, _, port_text = args.mqtt.rpartition(":")
            mqtt_port = int(port_text)
        else:
            broker = stack.enter_context(
                Mosquitto(data_dir=workdir / "mosquitto", binary=args.mosquitto_bin)
            )
            mqtt_host, mqtt_port = broker.host, broker.port
            console.print(f"started Mosquitto on {mqtt_host}:{mqtt_port}")
        if args.influx:
            influx_url = args.influx.rstrip("/")
        else:
            influx = stack.enter_context(
                InfluxDB1(data_dir=workdir / "influxdb", binary=args.influxd_bin)
            )
            influx_url = influx.url
            console.print(f"started InfluxDB 1.x on {influx_url}")
        env = dict(os.environ)
        env.update(
            DEMO_MQTT_HOST=mqtt_host,
            DEMO_MQTT_PORT=str(mqtt_port),
            DEMO_INFLUX_URL=influx_url,
            DEMO_INFLUX_DB=DATABASE,
            # The agent's spool lives with the demo's other data, not in the user's state dir.
            XDG_STATE_HOME=str(workdir / "state"),
            DEMO_AGENT_HEALTH_PORT=str(free_port()),
            DEMO_INGESTER_HEALTH_PORT=str(free_port()),
        )
        procs = _Children(workdir, env, console)
        stack.callback(procs.stop_all)

        ports_file = workdir / "sim-ports.json"
        procs.start(
            "sim", ["sim", "run", str(EXAMPLES / "demo-sim.yaml"), "--ports-file", str(ports_file)]
        )
        ports = _wait_for_ports(ports_file, procs, timeout=15)
        for device, info in ports.items():
            env[f"DEMO_{device.upper().replace('-', '_')}_PORT"] = str(info["port"])
        procs.start("cloud", ["cloud", "run", str(EXAMPLES / "demo-cloud.yaml")])

        state = LiveState()
        watcher = stack.enter_context(_watch_broker(mqtt_host, mqtt_port, state))
        del watcher
        procs.start("edge", ["edge", "run", str(EXAMPLES / "demo-edge.yaml")])

        _live_view(console, state, args.duration, procs, influx_url)
        _show_health(console, env)
        procs.stop("edge")
        with state.lock:
            published = state.readings
        stored = _wait_stored(influx_url, published, timeout=20)
        procs.stop("cloud")
        console.print(
            f"\nagent published {published} readings; InfluxDB holds {stored} "
            f"({'all of them' if stored >= published else 'MISSING ' + str(published - stored)})\n"
        )
        for title, query_args in (
            ("Latest value of every point (fieldlink query latest)", ["latest"]),
            (
                "meter-1 voltage, mean per 5 s (fieldlink query range)",
                ["range", "--device=meter-1", "--point=voltage", "--from=-2m", "--every=5s"],
            ),
        ):
            console.rule(title)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fieldlink",
                    "query",
                    *query_args,
                    "-c",
                    str(EXAMPLES / "demo-cloud.yaml"),
                ],
                env=env,
                check=False,
            )
        devices = _devices_stored(influx_url)
        console.print(
            f"\ndevices with readings in InfluxDB: {', '.join(sorted(devices)) or 'none'}"
        )
        ok = len(devices) >= 3 and stored >= published > 0
        console.print(
            "[green]demo OK[/green]" if ok else "[red]demo FAILED[/red] (see logs in the workdir)"
        )
        return 0 if ok else 1
    return 1


class _Children:
    """The demo's child processes, each logging to a file in the workdir."""

    def __init__(self, workdir: Path, env: dict[str, str], console: Console) -> None:
        self._workdir = workdir
        self._env = env
        self._console = console
        self._procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}

    def start(self, name: str, argv: list[str]) -> None:
        log = (self._workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fieldlink", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
        )
        self._procs[name] = (proc, log)
        self._console.print(f"started fieldlink {' '.join(argv[:2])} (log: {log.name})")

    def check_alive(self) -> None:
        for name, (proc, _) in self._procs.items():
            if proc.poll() is not None:
                tail = (
                    (self._workdir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                )
                raise SystemExit(
                    f"fieldlink {name} exited with {proc.returncode}:\n" + "\n".join(tail)
                )

    def stop(self, name: str, timeout: float = 15) -> None:
        proc, log = self._procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    def stop_all(self) -> None:
        for name in list(reversed(self._procs)):
            self.stop(name)


def _wait_for_ports(path: Path, procs: _Children, timeout: float) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        if path.exists():
            data: dict[str, dict[str, int]] = json.loads(path.read_text())
            return data
        time.sleep(0.05)
    raise SystemExit(f"the simulator did not report its ports within {timeout:.0f} s")


@contextlib.contextmanager
def _watch_broker(host: str, port: int, state: LiveState) -> Iterator[object]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from wire.topics import data_subscription

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fieldlink-demo-view")
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(data_subscription(), qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, msg: state.take(bytes(msg.payload))
    client.connect(host, port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise SystemExit(f"could not subscribe on the broker at {host}:{port}")
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def _live_view(
    console: Console, state: LiveState, duration: float, procs: _Children, influx_url: str
) -> None:
    end = time.monotonic() + duration
    last_count = time.monotonic()
    stored = 0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() < end:
            procs.check_alive()
            if time.monotonic() - last_count > 2:
                stored = _count_stored(influx_url)
                last_count = time.monotonic()
            live.update(_table(state, stored, end - time.monotonic()))
            time.sleep(0.25)


def _table(state: LiveState, stored: int, remaining: float) -> Table:
    with state.lock:
        rows = sorted(state.latest.items())
        messages, readings = state.messages, state.readings
    table = Table(
        title=f"readings flowing: {messages} messages, {readings} readings on MQTT, "
        f"{stored} stored in InfluxDB; {max(remaining, 0):.0f} s left",
        title_justify="left",
    )
    for column in ("device", "point", "value", "unit", "quality", "age"):
        table.add_column(column, justify="right" if column in ("value", "age") else "left")
    now = time.time_ns()
    for (device, point), r in rows:
        value = (
            f"{r.value:.3f}"
            if isinstance(r.value, float)
            else str(r.value if r.value is not None else "—")
        )
        quality = (
            r.quality.value
            if r.quality is Quality.GOOD
            else f"[red]{r.quality.value}: {r.reason}[/red]"
        )
        table.add_row(device, point, value, r.unit or "", quality, f"{(now - r.ts_ns) / 1e9:.1f} s")
    return table


def _influx_query(url: str, q: str) -> dict[str, object]:
    import urllib.parse
    import urllib.request

    params = urllib.parse.urlencode({"db": DATABASE, "q": q, "epoch": "ns"})
    try:
        with urllib.request.urlopen(f"{url}/query?{params}", timeout=5) as resp:
            result: dict[str, object] = json.loads(resp.read())
            return result
    except OSError:
        return {}


def _series(result: dict[str, object]) -> list[dict[str, object]]:
    results = result.get("results")
    if not isinstance(results, list) or not results:
        return []
    series = results[0].get("series", []) if isinstance(results[0], dict) else []
    return series if isinstance(series, list) else []


def _count_stored(url: str) -> int:
    for s in _series(_influx_query(url, "SELECT count(quality) FROM readings")):
        values = s.get("values")
        if isinstance(values, list) and values:
            return int(values[0][1])
    return 0


def _wait_stored(url: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    stored = _count_stored(url)
    while stored < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        stored = _count_stored(url)
    return stored


def _devices_stored(url: str) -> set[str]:
    devices: set[str] = set()
    for s in _series(
        _influx_query(
            url, "SELECT count(value) FROM readings WHERE quality = 'good' GROUP BY device"
        )
    ):
        tags = s.get("tags")
        if isinstance(tags, dict) and "device" in tags:
            devices.add(str(tags["device"]))
    return devices


#: The metric families the demo shows from each process's /metrics (all of them are listed
#: in docs/health.md).
_SHOWN_METRICS = {
    "agent": (
        "fieldlink_device_up",
        "fieldlink_device_readings_total",
        "fieldlink_spool_messages",
    ),
    "ingester": (
        "fieldlink_ingester_readings_written_total",
        "fieldlink_ingester_writes_in_flight",
    ),
}
_HEALTH_PORTS = {"agent": "DEMO_AGENT_HEALTH_PORT", "ingester": "DEMO_INGESTER_HEALTH_PORT"}


def _show_health(console: Console, env: dict[str, str]) -> None:
    """What an installer would curl: each process's /healthz and a few of its metrics."""
    for name, port_var in _HEALTH_PORTS.items():
        base = f"http://127.0.0.1:{env[port_var]}"
        console.print()
        console.rule(f"{name} health: {base}/healthz and /metrics")
        status, text = _http_get(base + "/healthz")
        console.print(f"GET /healthz → {status} {text.strip()}", markup=False, soft_wrap=True)
        status, text = _http_get(base + "/metrics")
        shown = [
            line
            for line in text.splitlines()
            if line.startswith(_SHOWN_METRICS[name]) and not line.startswith("#")
        ]
        console.print("\n".join(shown) or f"GET /metrics → {status}", markup=False, soft_wrap=True)


def _http_get(url: str) -> tuple[int | str, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return "unreachable", str(exc)
