"""The ingest and end-to-end benchmarks still run: their seconds-long ``--smoke`` versions, as
subprocesses exactly as a person runs them (``python -m bench ingest|e2e --smoke``), on real
Mosquitto, InfluxDB 1.x and the simulator. Figures are not judged here (benchmarks are not
tests); only that both systems ran, nothing was lost and the JSON lines are complete."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_bench(args: list[str], results: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args, "--smoke", "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rows_of(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def table_has_row(stdout: str, system: str) -> bool:
    """The terminal table has a row for ``system`` (box lines, or ASCII without UTF-8)."""
    return re.search(rf"^[│|]\s+{re.escape(system)}\s+[│|]", stdout, re.MULTILINE) is not None


@pytest.mark.timeout(90)
def test_ingest_smoke_lands_every_point_for_both_systems(tmp_path: Path) -> None:
    results = tmp_path / "ingest.jsonl"
    done = run_bench(["ingest"], results, timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = rows_of(results)
    assert {r["system"] for r in rows} == {"naive", "fieldlink"}
    for row in rows:
        assert row["bench"] == "ingest"
        assert row["points"] >= 20_000, row
        assert row["missing"] == 0, row
        assert row["points_per_s"] > 0, row
        assert row["cpu_s_per_million"] > 0, row
        assert table_has_row(done.stdout, row["system"]), done.stdout
    assert "÷ naive" in done.stdout


@pytest.mark.timeout(90)
def test_e2e_smoke_measures_latency_for_both_systems(tmp_path: Path) -> None:
    results = tmp_path / "e2e.jsonl"
    done = run_bench(["e2e"], results, timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = rows_of(results)
    assert {r["system"] for r in rows} == {"naive", "fieldlink"}
    for row in rows:
        assert row["bench"] == "e2e"
        assert row["samples"] > 0, row
        assert row["points_per_s"] > 0, row
        assert row["unseen"] == 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], row
        assert table_has_row(done.stdout, row["system"]), done.stdout
    assert "÷ naive" in done.stdout
