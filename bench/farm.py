"""The device farm: the workload's devices served by ``sim/`` in one or more processes.

Why ``sim/`` and not pymodbus's server: the pymodbus server tops out near 2,600 requests/s
per connection on this machine; our asyncio server answers a cached read in a few
microseconds. Each farm process runs the real simulator (:class:`sim.server.SimPlant`
through :func:`sim.cli.serve`, the code behind ``python -m sim run``); the only difference is
that the config is built in memory from :mod:`bench.workload` instead of read from YAML,
because PyYAML's pure-Python loader needs over a minute for 1,000 devices × 100 registers.

Layout: devices sit behind **gateways**, :data:`bench.workload.DEVICES_PER_GATEWAY` unit ids
per TCP port, like RS-485 meters behind a Modbus TCP gateway. The agent gets one bus per
gateway port, so 1,000 devices are 50 connections, not 1,000. Gateways are dealt round-robin
to the farm processes.

``python -m bench.farm serve --workload 100x100@1 --part 0 --parts 2 --ports-file F`` serves
one part; :class:`Farm` starts and stops all parts; :func:`measure_farm` measures a farm
alone under pipelined load (``python -m bench.farm load ...``) and gives the ``farm`` row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.measure import group_cpu_seconds, rss_mib
from bench.report import Row
from bench.workload import (
    DEVICES_PER_GATEWAY,
    Endpoint,
    Workload,
    device_name,
    gateway_of,
    point_specs,
    read_blocks,
    sim_config,
)

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
#: Requests/s one farm process is given at most before another process is added. One
#: process answers far more (see the `farm` row); this keeps its share of a core small.
REQ_S_PER_PROCESS = 5_000


def parts_for(workload: Workload, cpus: int | None = None) -> int:
    """Farm processes for a workload: one per REQ_S_PER_PROCESS requests/s, at most one per
    CPU, never more than there are gateways."""
    gateways = math.ceil(workload.devices / DEVICES_PER_GATEWAY)
    wanted = math.ceil(workload.expected_req_s / REQ_S_PER_PROCESS)
    return max(1, min(wanted, cpus or os.cpu_count() or 1, gateways))


def devices_of_part(workload: Workload, part: int, parts: int) -> list[int]:
    return [i for i in range(workload.devices) if gateway_of(i) % parts == part]


# -- one farm process ----------------------------------------------------------------------


def serve_part(workload: Workload, part: int, parts: int, ports_file: Path) -> int:
    from config.sim import SimConfig
    from sim.cli import serve

    config = SimConfig.model_validate(sim_config(workload, devices_of_part(workload, part, parts)))
    try:
        asyncio.run(serve(config, ports_file))
    finally:
        ports_file.unlink(missing_ok=True)  # nobody may read dead ports from it
    return 0


# -- the whole farm -------------------------------------------------------------------------


@dataclass
class Farm:
    """``parts`` simulator processes serving ``workload``; a context manager."""

    workload: Workload
    parts: int
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    startup_timeout: float = 120.0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def ports(self) -> list[tuple[str, int]]:
        return sorted({(e.host, e.port) for e in self.endpoints.values()}, key=lambda hp: hp[1])

    def start(self) -> Farm:
        self.workdir.mkdir(parents=True, exist_ok=True)
        files = [self.workdir / f"farm-ports-{i}.json" for i in range(self.parts)]
        for ports_file in files:
            ports_file.unlink(missing_ok=True)  # left by an earlier farm: dead ports
        for i, ports_file in enumerate(files):
            log = (self.workdir / f"farm-{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [
                        PYTHON,
                        "-m",
                        "bench.farm",
                        "serve",
                        "--workload",
                        self.workload.label,
                        "--part",
                        str(i),
                        "--parts",
                        str(self.parts),
                        "--ports-file",
                        str(ports_file),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        pending = list(enumerate(files))
        while pending:
            for i, ports_file in list(pending):
                proc = self.procs[i]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"farm process {i} exited with {proc.returncode}: "
                        f"{(self.workdir / f'farm-{i}.log').read_text()[-2000:]}"
                    )
                if ports_file.exists():
                    for name, ep in json.loads(ports_file.read_text()).items():
                        self.endpoints[name] = Endpoint(ep["host"], ep["port"], ep["unit_id"])
                    pending.remove((i, ports_file))
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"farm not ready within {self.startup_timeout:g} s")
                time.sleep(0.05)
        missing = self.workload.devices - len(self.endpoints)
        if missing:
            raise RuntimeError(f"farm is missing {missing} device(s)")
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def __enter__(self) -> Farm:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- load generator: pipelined raw Modbus TCP, counting answers by their size ----------------


def _request(transaction: int, unit: int, address: int, count: int) -> bytes:
    return (
        transaction.to_bytes(2, "big")
        + b"\x00\x00\x00\x06"
        + bytes((unit, 3))
        + address.to_bytes(2, "big")
        + count.to_bytes(2, "big")
    )


async def _load_connection(
    host: str,
    port: int,
    units: list[int],
    blocks: list[tuple[int, int]],
    depth: int,
    stop_at: float,
    counter: list[int],
) -> None:
    """Keep ``depth`` rounds (one read of every block of one unit each) in flight on one
    connection; count answered rounds. Answers are counted by size: every answer to a read
    of ``n`` registers is 9 + 2n bytes, so no parsing is needed."""
    reader, writer = await asyncio.open_connection(host, port)
    rounds = [b"".join(_request(i, u, a, c) for i, (a, c) in enumerate(blocks)) for u in units]
    round_bytes = sum(9 + 2 * c for _, c in blocks)
    loop = asyncio.get_running_loop()
    k = 0
    for _ in range(depth):
        writer.write(rounds[k % len(rounds)])
        k += 1
    received = 0
    while loop.time() < stop_at:
        data = await reader.read(1 << 16)
        if not data:
            break
        received += len(data)
        done, received = divmod(received, round_bytes)
        if done:
            counter[0] += done * len(blocks)
            writer.write(b"".join(rounds[(k + j) % len(rounds)] for j in range(done)))
            k += done
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _load(
    ports: list[tuple[str, int, list[int]]],
    points: int,
    depth: int,
    seconds: float,
    pids: list[int],
) -> dict[str, float]:
    blocks = read_blocks(point_specs(points))
    counter = [0]
    loop = asyncio.get_running_loop()
    # Measure from the first full second on: connecting is not serving.
    start = loop.time() + 0.5
    stop_at = start + seconds
    tasks = [
        asyncio.create_task(_load_connection(h, p, u, blocks, depth, stop_at + 0.2, counter))
        for h, p, u in ports
    ]
    await asyncio.sleep(start - loop.time())
    first, cpu0, rss = counter[0], group_cpu_seconds(pids), 0.0
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    answered, cpu = counter[0] - first, group_cpu_seconds(pids) - cpu0
    elapsed = time.monotonic() - t0
    with contextlib.suppress(OSError):
        rss = sum(rss_mib(pid) for pid in pids)
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"requests": answered, "seconds": elapsed, "cpu_s": cpu, "rss_mib": rss}


def measure_farm(
    workload: Workload, workdir: Path, seconds: float = 5.0, parts: int = 1, depth: int = 16
) -> Row:
    """Serve ``workload``'s devices from ``parts`` process(es) and load them with pipelined
    reads from a separate process until ``seconds`` have passed: what one process answers."""
    with Farm(workload, parts, workdir / "farm-alone") as farm:
        units: dict[tuple[str, int], list[int]] = {}
        for i in range(workload.devices):
            ep = farm.endpoints[device_name(i)]
            units.setdefault((ep.host, ep.port), []).append(ep.unit_id)
        spec = workdir / "farm-load.json"
        result = workdir / "farm-load-result.json"
        spec.write_text(json.dumps([[h, p, u] for (h, p), u in units.items()]))
        load = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "bench.farm",
                "load",
                "--spec",
                str(spec),
                "--points",
                str(workload.points),
                "--depth",
                str(depth),
                "--seconds",
                str(seconds),
                "--pids",
                ",".join(map(str, farm.pids)),
                "--out",
                str(result),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        load.wait(timeout=seconds + 60)
        if load.returncode != 0 or not result.exists():
            raise RuntimeError(f"farm load generator failed with {load.returncode}")
        got = json.loads(result.read_text())
    req_s = got["requests"] / got["seconds"]
    pts_per_req = workload.points / workload.requests_per_poll
    return Row(
        bench="farm",
        system="sim",
        workload=workload.label,
        figures={
            "processes": parts,
            "connections": len(units),
            "req_s": round(req_s, 1),
            "req_s_per_process": round(req_s / parts, 1),
            "points_per_s": round(req_s * pts_per_req, 1),
            "needed_req_s": round(workload.expected_req_s, 1),
            "headroom": round(req_s / workload.expected_req_s, 1),
            "cpu_pct": round(100 * got["cpu_s"] / got["seconds"] / parts, 1),
            "rss_mib": round(got["rss_mib"] / parts, 1),
        },
        notes=f"pipelined depth {depth}, one connection per gateway port",
    )


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.farm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one part of a workload's farm until SIGTERM")
    serve.add_argument("--workload", required=True)
    serve.add_argument("--part", type=int, default=0)
    serve.add_argument("--parts", type=int, default=1)
    serve.add_argument("--ports-file", type=Path, required=True)
    load = sub.add_parser("load", help="pipelined read load against a farm")
    load.add_argument("--spec", type=Path, required=True)
    load.add_argument("--points", type=int, required=True)
    load.add_argument("--depth", type=int, default=16)
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--pids", default="", help="farm pids whose CPU is measured")
    load.add_argument("--out", type=Path, required=True)
    measure = sub.add_parser("measure", help="measure a farm alone and print its row")
    measure.add_argument("--workload", default="1000x100@1")
    measure.add_argument("--parts", type=int, default=1)
    measure.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_part(Workload.parse(args.workload), args.part, args.parts, args.ports_file)
    if args.command == "load":
        ports = [(h, int(p), list(u)) for h, p, u in json.loads(args.spec.read_text())]
        pids = [int(p) for p in args.pids.split(",") if p]
        got = asyncio.run(_load(ports, args.points, args.depth, args.seconds, pids))
        args.out.write_text(json.dumps(got))
        return 0
    from rich.console import Console

    from bench.report import print_table

    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        row = measure_farm(Workload.parse(args.workload), Path(tmp), args.seconds, args.parts)
    print_table("farm alone", [row], list(row.figures), Console(width=200))
    return 0


if __name__ == "__main__":
    sys.exit(main())
