"""Smoke test of the edge benchmark: `python -m bench edge --smoke` runs end to end.

A tiny workload (4 devices × 20 points every 0.5 s) through the real agent and the naive
script, a ~4 s window each, on a private Mosquitto and a one-process device farm. It checks
that the benchmark works, not what it measures: benchmarks are not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_KEYS = {
    "run",
    "bench",
    "system",
    "workload",
    "expected_pts_s",
    "points_per_s",
    "achieved_pct",
    "cpu_pct",
    "cpu_per_1k_pts_pct",
    "rss_mib",
    "peak_rss_mib",
    "jitter_p50_ms",
    "jitter_p99_ms",
    "missed_polls",
    "bad",
    "notes",
}


@pytest.mark.timeout(90)
def test_bench_edge_smoke(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "edge", "--smoke", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "fieldlink" in proc.stdout, output
    assert "naive" in proc.stdout, output
    assert "÷ naive" in proc.stdout, output

    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    edge = {r["system"]: r for r in rows if r["bench"] == "edge"}
    assert set(edge) == {"fieldlink", "naive"}, rows
    for system, row in edge.items():
        assert row.keys() >= EXPECTED_KEYS, (system, EXPECTED_KEYS - row.keys())
        assert row["points_per_s"] > 0, (system, row)
        assert row["bad"] == 0, (system, row)
        assert row["workload"] == "4x20@0.5s"
    assert edge["fieldlink"]["invalid_messages"] == 0, edge["fieldlink"]
    assert any(r["bench"] == "farm" for r in rows), rows


@pytest.mark.timeout(90)
def test_bench_edge_runs_another_checkout_beside_this_one(tmp_path: Path) -> None:
    """`--ref-tree DIR` runs the agent of DIR as `fieldlink-ref` on the same farm (here this
    very checkout, so both rows measure the same agent); a DIR that is no checkout is refused."""
    results = tmp_path / "results.jsonl"
    argv = [sys.executable, "-m", "bench", "edge", "--smoke", "--no-farm", "--systems", "fieldlink"]
    proc = subprocess.run(
        [*argv, "--ref-tree", str(ROOT), "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    assert [r["system"] for r in rows] == ["fieldlink-ref", "fieldlink"], rows
    assert all(r["points_per_s"] > 0 and r["bad"] == 0 for r in rows), rows

    refused = subprocess.run(
        [*argv, "--ref-tree", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2
    assert f"--ref-tree {tmp_path}: not a fieldlink checkout (no edge/cli.py)" in refused.stdout
