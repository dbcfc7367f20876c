"""``fieldlink sim run SIM.yaml [--ports-file PATH]``: serve a simulated plant (Modbus devices
and serial instruments) until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.sim import SimConfig, load_sim_config
from sim.instruments import InstrumentRack
from sim.server import SimPlant, SimStartError, format_endpoint


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` command (with its ``run`` subcommand) to a CLI."""
    sim = subparsers.add_parser(
        "sim",
        help=(
            "simulated Modbus devices (TCP, RTU over TCP, RTU/ASCII on a pseudo-terminal) and "
            "serial instruments"
        ),
        description=(
            "Simulated Modbus devices, for tests, demos and benchmarks: Modbus TCP, RTU over "
            "TCP, and RTU or ASCII on a pseudo-terminal; and serial-line instruments (text "
            "streams and ASCII commands) on pseudo-terminals."
        ),
    )
    actions = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    run = actions.add_parser(
        "run",
        help="serve the devices of a sim config until SIGINT/SIGTERM",
        description=(
            "Serve the devices and instruments of a sim config until SIGINT or SIGTERM. "
            "Prints one line per device with its real port (port 0 in the config picks a free "
            "one) or, for a serial device or an instrument, the pseudo-terminal to open."
        ),
    )
    run.add_argument("config", type=Path, metavar="SIM.yaml", help="simulator config (kind: sim)")
    run.add_argument(
        "--ports-file",
        type=Path,
        metavar="PATH",
        help=(
            'write {"device": {"host": ..., "port": ..., "unit_id": ..., "transport": ...}} '
            '(serial devices: "serial_port" instead of host and port; instruments: '
            '"serial_port", "transport": "instrument", "mode") here once every port is bound '
            "(atomically: a reader sees the whole file or none); rewritten when an "
            "instrument's pseudo-terminal is re-created; removed on exit"
        ),
    )
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``sim run``: 0 after a clean stop, 2 for a bad config, 1 if a port is taken."""
    try:
        config = load_sim_config(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    ports_file: Path | None = args.ports_file
    if ports_file is not None:
        # A file left by an earlier run would send waiting processes to dead ports.
        ports_file.unlink(missing_ok=True)
    try:
        asyncio.run(serve(config, ports_file))
    except SimStartError as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 1
    finally:
        if ports_file is not None:
            ports_file.unlink(missing_ok=True)
    return 0


async def serve(config: SimConfig, ports_file: Path | None = None) -> None:
    """Serve ``config`` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    plant = SimPlant(config)

    def rack_changed() -> None:
        # An instrument's pty was re-created: the file must name the new one.
        if ports_file is not None:
            write_ports_file(ports_file, {}, {**plant.describe(), **rack.describe()})

    rack = InstrumentRack(config, on_reopen=rack_changed)
    try:
        async with plant, rack:
            for line in announce(config, plant) + announce_instruments(config, rack):
                print(line, flush=True)
            if ports_file is not None:
                write_ports_file(
                    ports_file, plant.endpoints(), {**plant.describe(), **rack.describe()}
                )
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def announce(config: SimConfig, plant: SimPlant) -> list[str]:
    """One line per device, in config order: where it is served."""
    tcp, serial = plant.endpoints(), plant.serial_endpoints()
    lines = []
    for device in config.devices:
        if device.name in tcp:
            host, port, unit = tcp[device.name]
            where = format_endpoint(host, port)
            if device.transport != "tcp":
                where += f" ({device.transport})"
        else:
            end = serial[device.name]
            unit = end.unit_id
            settings = f"{device.baudrate} {device.data_bits}{device.parity}{device.stopbits}"
            link = f", link {end.link}" if end.link else ""
            where = f"{end.path} ({device.transport} {settings}{link})"
        lines.append(f"sim: {device.name} unit {unit} on {where}")
    return lines


def announce_instruments(config: SimConfig, rack: InstrumentRack) -> list[str]:
    """One line per instrument, in config order: its pseudo-terminal and line settings."""
    lines = []
    for inst in config.instruments:
        settings = f"{inst.baudrate} baud, {inst.checksum}"
        if inst.serial_link is not None:
            settings += f", link {inst.serial_link}"
        lines.append(f"sim: {inst.name} {inst.mode} on {rack.path(inst.name)} ({settings})")
    return lines


def write_ports_file(
    path: Path,
    endpoints: dict[str, tuple[str, int, int]],
    described: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write the endpoints as JSON via a temporary file and a rename, so that a process
    polling for the file never reads it half-written. ``described`` (from
    :meth:`SimPlant.describe`) replaces ``endpoints`` when given and covers serial devices."""
    doc = described
    if doc is None:
        doc = {
            name: {"host": host, "port": port, "unit_id": unit}
            for name, (host, port, unit) in endpoints.items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m sim run SIM.yaml``: the same command without the ``fieldlink`` CLI."""
    parser = argparse.ArgumentParser(prog="python -m sim")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.handler(args)
    return code
