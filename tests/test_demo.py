"""`fieldlink demo`, README command 1, run for real: it must end with readings from the
simulated devices stored in InfluxDB and printed back, and clean up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldlink", "demo", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_demo_stores_readings_of_every_simulated_device(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = run_demo("--duration", "4", "--workdir", str(workdir), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "devices with readings in InfluxDB: meter-1, meter-2, pump-1, tank-1" in out
    assert "(all of them)" in out
    # The latest-value table printed through `fieldlink query latest` shows every point.
    for point in ("voltage", "current", "energy", "frequency", "flow", "position", "level"):
        assert point in out
    assert "P1-0042" in out  # the pump's string register, decoded
    assert "demo OK" in out
    # Both processes serve their health, as an installer would curl it.
    assert out.count("GET /healthz → 200 ok: MQTT broker") == 2
    assert 'fieldlink_device_up{device="pump-1",bus="pump-line",driver="modbus"} 1' in out
    written = re.search(r"^fieldlink_ingester_readings_written_total (\d+)", out, re.M)
    assert written is not None and int(written.group(1)) > 0
    # Every child was stopped: nothing still writes to the logs' processes.
    assert (workdir / "edge.log").exists()
    assert "agent stopped" in (workdir / "edge.log").read_text()


def test_demo_says_how_to_install_a_missing_server(tmp_path: Path) -> None:
    result = run_demo(
        "--mosquitto-bin",
        str(tmp_path / "no-mosquitto"),
        "--influxd-bin",
        "no-such-influxd",
        cwd=tmp_path,
    )
    assert result.returncode == 3
    assert "install it with 'sudo apt-get install mosquitto'" in result.stderr
    assert "install it with 'sudo apt-get install influxdb'" in result.stderr
