"""``sim run`` as a separate process, the way the demo and the benchmarks start it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from sim.cli import register

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 15.0  # seconds for the process to start up or shut down; generous for slow CI

PLANT = {
    "kind": "sim",
    "devices": [
        {
            "name": "meter-1",
            "unit_id": 1,
            "gateway": "gw",
            "registers": [{"address": 0, "type": "uint16", "value": 4242}],
        },
        {
            "name": "meter-2",
            "unit_id": 2,
            "gateway": "gw",
            "registers": [{"address": 0, "type": "uint16", "value": 4343}],
        },
        {
            "name": "pump",
            "unit_id": 3,
            "registers": [{"table": "input", "address": 5, "type": "int16", "value": -7}],
        },
    ],
}


@asynccontextmanager
async def sim_process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m sim ARGS`` (the `fieldlink` console script is wired up elsewhere)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


async def wait_for_file(
    path: Path, process: asyncio.subprocess.Process, stale: str | None = None
) -> str:
    """Poll until ``path`` holds something other than ``stale``; fail early if the process
    died, or at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while (text := read_if_exists(path)) is None or text == stale:
        if process.returncode is not None:
            stderr = await process.stderr.read() if process.stderr else b""
            pytest.fail(f"sim exited with {process.returncode}: {stderr.decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {DEADLINE} s")
        await asyncio.sleep(0.02)  # polling interval, not a guess at how long start-up takes
    return text


async def test_run_writes_ports_file_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(PLANT), encoding="utf-8")
    ports_file = tmp_path / "run" / "ports.json"  # its directory does not exist yet
    async with sim_process("run", str(config), "--ports-file", str(ports_file)) as process:
        ports = json.loads(await wait_for_file(ports_file, process))
        assert list(ports) == ["meter-1", "meter-2", "pump"]
        assert ports["meter-1"]["port"] == ports["meter-2"]["port"]
        assert ports["pump"]["port"] != ports["meter-1"]["port"]
        assert {d["host"] for d in ports.values()} == {"127.0.0.1"}
        assert [d["unit_id"] for d in ports.values()] == [1, 2, 3]

        meter = ports["meter-2"]
        client = AsyncModbusTcpClient(meter["host"], port=meter["port"], timeout=5, retries=0)
        assert await client.connect()
        try:
            result = await client.read_holding_registers(0, count=1, device_id=2)
            assert result.registers == [4343]
        finally:
            client.close()
        pump = ports["pump"]
        client = AsyncModbusTcpClient(pump["host"], port=pump["port"], timeout=5, retries=0)
        assert await client.connect()
        try:
            result = await client.read_input_registers(5, count=1, device_id=3)
            assert result.registers == [0xFFF9]
        finally:
            client.close()

        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
        assert process.returncode == 0, stderr.decode()
        assert stdout.decode().splitlines() == [
            f"sim: meter-1 unit 1 on 127.0.0.1:{ports['meter-1']['port']}",
            f"sim: meter-2 unit 2 on 127.0.0.1:{ports['meter-2']['port']}",
            f"sim: pump unit 3 on 127.0.0.1:{ports['pump']['port']}",
        ]
    assert not ports_file.exists()  # removed on exit: it names ports nobody serves now


async def test_sigint_stops_too(tmp_path: Path) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(yaml.safe_dump(PLANT), encoding="utf-8")
    ports_file = tmp_path / "ports.json"
    ports_file.write_text("{}", encoding="utf-8")  # stale, from an earlier run
    async with sim_process("run", str(config), "--ports-file", str(ports_file)) as process:
        ports = json.loads(await wait_for_file(ports_file, process, stale="{}"))
        assert list(ports) == ["meter-1", "meter-2", "pump"]
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
        assert process.returncode == 0, stderr.decode()


async def test_bad_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "kind: sim\n"
        "devices:\n"
        "  - name: a\n"
        "    unit_id: 300\n"
        "    registers: [{address: 0, type: int16, value: 1, bogus: 2}]\n",
        encoding="utf-8",
    )
    async with sim_process("run", str(config)) as process:
        stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == 2
    assert stdout == b""
    assert stderr.decode().splitlines() == [
        f"{config}: 2 problems",
        "  devices[0].unit_id: Input should be less than or equal to 247 (got 300)",
        "  devices[0].registers[0].bogus: unknown field; allowed here: table, address, type, "
        "order, length, scale, offset, value",
    ]


async def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        doc = {
            "kind": "sim",
            "devices": [
                {
                    "name": "a",
                    "port": port,
                    "registers": [{"address": 0, "type": "int16", "value": 1}],
                }
            ],
        }
        config = tmp_path / "plant.yaml"
        config.write_text(yaml.safe_dump(doc), encoding="utf-8")
        async with sim_process("run", str(config)) as process:
            _, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == 1
    assert stderr.decode().startswith(f"sim: cannot listen on 127.0.0.1:{port} for a: ")


def test_register_adds_sim_run_with_a_handler() -> None:
    parser = argparse.ArgumentParser(prog="fieldlink")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", "run", "plant.yaml", "--ports-file", "p.json"])
    assert args.config == Path("plant.yaml")
    assert args.ports_file == Path("p.json")
    assert callable(args.handler)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["sim"])  # `run` is required
    assert caught.value.code == 2
