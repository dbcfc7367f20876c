"""``fieldlink query latest|range`` against a real InfluxDB 1.x holding readings written in
the ingester's schema: exact table and CSV output, filters, and clear errors."""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import InfluxDatabase

from cloud.cli import register
from cloud.errors import EXIT_CONFIG, EXIT_INFLUX, EXIT_NO_MATCH, EXIT_OK
from cloud.lineproto import batch_lines
from cloud.query import Filters, QueryTarget, latest_statement, parse_time, range_statement
from fieldlink.localstack import free_port
from wire.model import Quality, Reading

ROOT = Path(__file__).resolve().parent.parent
MINUTE = 60 * 1_000_000_000
#: 2026-01-01T00:00:00Z: the readings below are at fixed, round times.
T0 = 1_767_225_600_000_000_000


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fieldlink")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture
def stored(influx_db: InfluxDatabase) -> InfluxDatabase:
    """Two devices over three minutes; the newest current reading is bad."""
    service, db = influx_db
    readings = []
    for i, volts in enumerate([230.0, 231.0, 232.5, 233.5]):
        t = T0 + i * 30_000_000_000  # every 30 s: two per minute
        readings.append(Reading("pump-1", "meter-1", "voltage", t, volts, "V"))
        readings.append(Reading("pump-2", "meter-2", "voltage", t, volts + 10, "V"))
    readings.append(Reading("pump-1", "meter-1", "current", T0, 4.25, "A"))
    readings.append(
        Reading.bad(
            asset="pump-1",
            device="meter-1",
            point="current",
            ts_ns=T0 + 123,
            reason="timeout",
            unit="A",
        )
    )
    readings.append(Reading("pump-1", "meter-1", "running", T0 + 5, True))
    readings.append(
        Reading("pump-1", "meter-1", "temp", T0 + 7, 41.5, "deg C", Quality.UNCERTAIN, "stale")
    )
    service.write(b"\n".join(batch_lines("readings", "plant-a", "gw-01", readings)).decode(), db)
    return influx_db


def test_latest_as_csv(stored: InfluxDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    service, db = stored
    assert run("query", "latest", "--url", service.url, "--db", db, "--format", "csv") == EXIT_OK
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["site", "agent", "asset", "device", "point", "value", "unit", "quality", "time", "reason"],
        ["plant-a", "gw-01", "pump-1", "meter-1", "current", "", "A", "bad",
         "2026-01-01T00:00:00.000000123Z", "timeout"],
        ["plant-a", "gw-01", "pump-1", "meter-1", "running", "true", "", "good",
         "2026-01-01T00:00:00.000000005Z", ""],
        ["plant-a", "gw-01", "pump-1", "meter-1", "temp", "41.5", "deg C", "uncertain",
         "2026-01-01T00:00:00.000000007Z", "stale"],
        ["plant-a", "gw-01", "pump-1", "meter-1", "voltage", "233.5", "V", "good",
         "2026-01-01T00:01:30.000000000Z", ""],
        ["plant-a", "gw-01", "pump-2", "meter-2", "voltage", "243.5", "V", "good",
         "2026-01-01T00:01:30.000000000Z", ""],
    ]  # fmt: skip


def test_latest_table_with_filters(
    stored: InfluxDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    service, db = stored
    code = run("query", "latest", "--url", service.url, "--db", db, "--device", "meter-1",
               "--point", "voltage", "--point", "current")  # fmt: skip
    assert code == EXIT_OK
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "meter-1" in line]
    assert len(lines) == 2
    assert "current" in lines[0] and "bad" in lines[0] and "timeout" in lines[0]
    assert "233.5" in lines[1] and "2026-01-01T00:01:30.000000000Z" in lines[1]
    assert "meter-2" not in out and "running" not in out
    for header in ("site", "asset", "device", "point", "value", "unit", "quality", "time"):
        assert header in out


def test_range_mean_per_minute_as_csv(
    stored: InfluxDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    service, db = stored
    code = run(
        "query", "range", "--url", service.url, "--db", db, "--device", "meter-1",
        "--point", "voltage", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:03:00Z",
        "--every", "1m", "--agg", "mean", "--format", "csv",
    )  # fmt: skip
    assert code == EXIT_OK
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["site", "agent", "asset", "device", "point", "time", "mean", "unit"],
        ["plant-a", "gw-01", "pump-1", "meter-1", "voltage", "2026-01-01T00:00:00.000000000Z",
         "230.5", "V"],
        ["plant-a", "gw-01", "pump-1", "meter-1", "voltage", "2026-01-01T00:01:00.000000000Z",
         "233.0", "V"],
    ]  # fmt: skip


def test_range_count_table_for_every_point(
    stored: InfluxDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    service, db = stored
    code = run(
        "query", "range", "--url", service.url, "--db", db, "--point", "voltage",
        "--from", "2026-01-01T00:00:00", "--to", "2026-01-01T00:02:00Z", "--every", "2m",
        "--agg", "count",
    )  # fmt: skip
    assert code == EXIT_OK
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "voltage" in line]
    assert len(rows) == 2  # one window, two devices
    assert all(" 4 " in row for row in rows), out


def test_query_with_config_file_as_a_subprocess(stored: InfluxDatabase, tmp_path: Path) -> None:
    service, db = stored
    config = tmp_path / "cloud.yaml"
    config.write_text(
        "kind: cloud\ninflux: {api: v1, url: '${TEST_INFLUX_URL}', database: wrong}\n"
    )
    code = (
        "import sys, argparse\n"
        "from cloud.cli import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "query", "latest", "-c", str(config), "--db", db,
         "--site", "plant-a", "--asset", "pump-2", "--format", "csv"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_INFLUX_URL": service.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == (
        "site,agent,asset,device,point,value,unit,quality,time,reason\n"
        "plant-a,gw-01,pump-2,meter-2,voltage,243.5,V,good,2026-01-01T00:01:30.000000000Z,\n"
    )


def test_no_match_exits_1(stored: InfluxDatabase, capsys: pytest.CaptureFixture[str]) -> None:
    service, db = stored
    assert run("query", "latest", "--url", service.url, "--db", db, "--site", "nowhere") == (
        EXIT_NO_MATCH
    )
    captured = capsys.readouterr()
    assert captured.err == "no readings match\n"
    assert captured.out == ""


def test_unreachable_server_and_missing_database(
    influx_db: InfluxDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert run("query", "latest", "--url", url, "--db", "x") == EXIT_INFLUX
    assert capsys.readouterr().err.startswith(f"fieldlink query: cannot reach InfluxDB at {url}: ")

    service, _ = influx_db
    assert run("query", "latest", "--url", service.url, "--db", "no_such_db") == EXIT_INFLUX
    assert capsys.readouterr().err == (
        f"fieldlink query: database 'no_such_db' does not exist at {service.url} "
        "(database not found: no_such_db)\n"
    )


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("query", "latest") == EXIT_CONFIG
    assert capsys.readouterr().err == (
        "fieldlink query: no database: give -c CLOUD.yaml or --db NAME\n"
    )
    assert run("query", "range", "--db", "x", "--from", "yesterday") == EXIT_CONFIG
    assert "'yesterday' is not a time" in capsys.readouterr().err
    assert run("query", "range", "--db", "x", "--every", "10 s") == EXIT_CONFIG
    assert "'10 s' is not a duration" in capsys.readouterr().err


def test_times_and_statements() -> None:
    now = T0
    assert parse_time("now", now) == now
    assert parse_time("-1h", now) == now - 60 * MINUTE
    assert parse_time("now-15m", now) == now - 15 * MINUTE
    assert parse_time("2026-01-01T00:00:00Z") == T0
    assert parse_time("2026-01-01T01:00:00+01:00") == T0
    assert parse_time("2026-01-01 00:00:00.5") == T0 + 500_000_000  # no offset: UTC

    target = QueryTarget(url="http://h:8086", database="plant", retention_policy="a year")
    filters = Filters(site=("it's",), device=("m1", "m2"))
    assert latest_statement(target, filters) == (
        'SELECT * FROM "plant"."a year"."readings" WHERE "site" = \'it\\\'s\' AND '
        "(\"device\" = 'm1' OR \"device\" = 'm2') GROUP BY * ORDER BY time DESC LIMIT 1"
    )
    assert range_statement(
        QueryTarget("http://h", "plant"), Filters(), 0, MINUTE, "10s", "max"
    ) == (
        'SELECT max("value") AS "value" FROM "readings" WHERE time >= 0 AND time < 60000000000 '
        'GROUP BY time(10s), "site", "agent", "asset", "device", "point", "unit" fill(none)'
    )
    with pytest.raises(ValueError, match="more than 100000"):
        range_statement(QueryTarget("http://h", "p"), Filters(), 0, 10**6 * MINUTE, "1s", "mean")
