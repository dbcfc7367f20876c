"""`fieldlink edge run` as an installer runs it: --once --dry-run prints decoded readings and
its exit code says whether all were good; --once publishes one round and exits."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from helpers import async_wait_for
from paho.mqtt.enums import CallbackAPIVersion

from config.sim import SimConfig
from fieldlink.localstack import Mosquitto
from sim.server import SimPlant
from wire.codec import decode_batch

SIM = {
    "kind": "sim",
    "devices": [
        {
            "name": "meter",
            "registers": [
                {"address": 0, "type": "float32", "value": 230.5},
                {"address": 2, "type": "int16", "scale": 0.1, "value": -4.2},
            ],
        }
    ],
}


def agent_file(
    tmp_path: Path, port: int, *, mqtt_port: int = 1883, dead_port: int | None = None
) -> Path:
    buses: list[dict[str, Any]] = [
        {"name": "line", "driver": "modbus", "host": "127.0.0.1", "port": port, "timeout": 0.3}
    ]
    devices: list[dict[str, Any]] = [
        {
            "name": "meter",
            "bus": "line",
            "points": [
                {"name": "voltage", "address": 0, "type": "float32", "unit": "V"},
                {"name": "temp", "address": 2, "type": "int16", "scale": 0.1, "unit": "degC"},
            ],
        }
    ]
    if dead_port is not None:
        buses.append({"name": "dead", "driver": "modbus", "host": "127.0.0.1", "port": dead_port})
        devices.append(
            {
                "name": "ghost",
                "bus": "dead",
                "points": [{"name": "x", "address": 0, "type": "uint16"}],
            }
        )
    doc = {
        "kind": "edge",
        "agent": {"id": "gw-cli", "site": "lab"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "buses": buses,
        "devices": devices,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def fieldlink(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fieldlink",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_dry_run_prints_every_decoded_reading_and_exits_0(tmp_path: Path) -> None:
    async with SimPlant(SimConfig.model_validate(SIM)) as plant:
        port = plant.endpoints()["meter"][1]
        code, out, err = await fieldlink(
            "edge", "run", str(agent_file(tmp_path, port)), "--once", "--dry-run", "--json"
        )
    assert code == 0, err
    rows = {r["point"]: r for r in map(json.loads, out.splitlines())}
    assert rows["voltage"]["value"] == 230.5
    assert rows["voltage"]["unit"] == "V"
    assert rows["temp"]["value"] == -4.2
    assert {r["quality"] for r in rows.values()} == {"good"}


async def test_dry_run_exits_1_and_names_the_reason_when_a_device_is_down(tmp_path: Path) -> None:
    async with SimPlant(SimConfig.model_validate(SIM)) as plant:
        port = plant.endpoints()["meter"][1]
    async with SimPlant(SimConfig.model_validate(SIM)) as plant:
        live = plant.endpoints()["meter"][1]
        code, out, err = await fieldlink(
            "edge", "run", str(agent_file(tmp_path, live, dead_port=port)), "--once", "--dry-run"
        )
    assert code == 1, err
    assert "ghost" in out
    assert "bad: disconnected" in out
    assert "230.5" in out


async def test_dry_run_without_once_is_refused(tmp_path: Path) -> None:
    code, _, err = await fieldlink("edge", "run", str(agent_file(tmp_path, 1)), "--dry-run")
    assert code == 2
    assert "--dry-run needs --once" in err


async def test_once_publishes_one_round_and_exits(tmp_path: Path, mosquitto: Mosquitto) -> None:
    received: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-edge-cli-once")
    client.on_connect = lambda c, *_: c.subscribe("fieldlink/v1/lab/gw-cli/data", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, msg: received.append(bytes(msg.payload))
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        async with SimPlant(SimConfig.model_validate(SIM)) as plant:
            port = plant.endpoints()["meter"][1]
            path = agent_file(tmp_path, port, mqtt_port=mosquitto.port)
            code, out, err = await fieldlink("edge", "run", str(path), "--once")
        assert code == 0, err
        assert "published 2 readings" in out
        # The broker acknowledged before the command returned; delivery to us follows.
        await async_wait_for(lambda: received, timeout=10, message="the published batch")
    finally:
        client.disconnect()
        client.loop_stop()
    (payload,) = received
    readings = {r.point: r.value for r in decode_batch(payload).readings}
    assert readings == {"voltage": 230.5, "temp": -4.2}


async def test_a_broken_config_is_reported_once_with_its_location_and_exit_2(
    tmp_path: Path,
) -> None:
    # The config is parsed in a forked child (edge/cli.py); its error must reach the user
    # exactly once, as the in-process load would print it.
    path = agent_file(tmp_path, 1502)
    path.write_text(path.read_text().replace("type: float32", "type: float23"))
    code, out, err = await fieldlink("edge", "run", str(path))
    assert code == 2
    assert out == ""
    assert err.count("devices[0].points[0].type") == 1, err
    assert "float23" in err


def test_the_forked_load_gives_the_same_config_as_loading_in_process(tmp_path: Path) -> None:
    from config.edge import load_edge_config
    from edge.cli import _load_in_child

    path = agent_file(tmp_path, 1502, dead_port=1503)
    forked = _load_in_child(path)
    direct = load_edge_config(path)
    assert not isinstance(forked, str) and forked is not None
    assert forked == direct
    assert forked.config_hash == direct.config_hash != ""


def test_the_agent_command_imports_no_cloud_simulator_or_table_code(tmp_path: Path) -> None:
    import subprocess

    probe = (
        "import sys\n"
        "from fieldlink.cli import main\n"
        f"code = main(['--log-level', 'ERROR', 'edge', 'run', {str(tmp_path / 'none.yaml')!r}])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('cloud', 'sim', 'rich', 'influxdb_client'))\n"
        "print(code, loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
