"""``fieldlink cloud run`` and ``fieldlink query``; wired into ``fieldlink`` by ``register``.

Exit codes (see :mod:`cloud.errors`): 0 success; 1 ``query`` found no reading; 2 the config
file or the command line is wrong, or ``health.listen`` cannot be listened on; 3 InfluxDB
refused us or cannot be reached (``query``) or refused us for good (``cloud run``:
credentials, missing database); 4 the MQTT broker refused us for good.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from cloud.errors import EXIT_CONFIG, EXIT_INFLUX, EXIT_NO_MATCH, EXIT_OK, CloudError
from cloud.query import (
    AGGREGATES,
    Filters,
    QueryTarget,
    Result,
    latest,
    parse_time,
    print_table,
    window_range,
    write_csv,
)
from config.cloud import CloudConfig, InfluxV1, cloud_json_schema, load_cloud_config
from config.errors import ConfigError

__all__ = ["cloud_json_schema", "register"]

DEFAULT_URL = "http://127.0.0.1:8086"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cloud = subparsers.add_parser("cloud", help="the ingester: MQTT → InfluxDB")
    cloud_commands = cloud.add_subparsers(dest="cloud_command", required=True, metavar="COMMAND")
    run = cloud_commands.add_parser(
        "run",
        help="run the ingester until SIGINT/SIGTERM",
        description="Subscribe to the agents' readings and write them to InfluxDB.",
    )
    run.add_argument("config", type=Path, metavar="CLOUD.yaml", help="kind: cloud config file")
    run.set_defaults(handler=run_command)

    query = subparsers.add_parser(
        "query",
        help="read readings back from InfluxDB (InfluxQL)",
        description="Read readings back from InfluxDB 1.x (or 2.x/3.x InfluxQL).",
    )
    operations = query.add_subparsers(dest="query_command", required=True, metavar="OPERATION")
    common = _common_query_options()
    latest_parser = operations.add_parser(
        "latest", parents=[common], help="the newest reading of every point"
    )
    latest_parser.set_defaults(handler=query_command)
    range_parser = operations.add_parser(
        "range", parents=[common], help="one aggregate of value per time window and point"
    )
    range_parser.add_argument(
        "--from",
        dest="start",
        default="-1h",
        metavar="TIME",
        help="start: now, -1h, now-15m or ISO 8601 (UTC if no offset); default -1h",
    )
    range_parser.add_argument(
        "--to", dest="end", default="now", metavar="TIME", help="end (exclusive); default now"
    )
    range_parser.add_argument(
        "--every", default="1m", metavar="DURATION", help="window width, e.g. 10s, 5m, 1h"
    )
    range_parser.add_argument(
        "--agg", default="mean", choices=AGGREGATES, help="aggregate per window (default mean)"
    )
    range_parser.set_defaults(handler=query_command)


def _common_query_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection (flags override the config file)")
    conn.add_argument(
        "-c", "--config", type=Path, metavar="CLOUD.yaml", help="take url, database... from it"
    )
    conn.add_argument("--url", help=f"InfluxDB base URL (default {DEFAULT_URL})")
    conn.add_argument("--db", help="database (with a 2.x token: the bucket)")
    conn.add_argument("--rp", help="retention policy (default: the database's default)")
    conn.add_argument("--username", help="user name")
    conn.add_argument("--password", help="password (prefer a config file with ${ENV})")
    conn.add_argument("--token", help="InfluxDB 2.x/3.x token instead of user and password")
    conn.add_argument("--measurement", help="measurement (default readings)")
    filters = common.add_argument_group("filters (repeat a flag to allow several values)")
    for tag in ("site", "agent", "asset", "device", "point"):
        filters.add_argument(f"--{tag}", action="append", default=[], metavar="ID")
    common.add_argument(
        "--format", choices=("table", "csv"), default="table", help="output (default table)"
    )
    return common


def run_command(args: argparse.Namespace) -> int:
    """``fieldlink cloud run CLOUD.yaml``."""
    try:
        config = load_cloud_config(args.config)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_CONFIG
    # fieldlink.cli configures logging already; this covers running the handler on its own.
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from cloud.ingester import run_ingester  # paho and the writers only when running

    try:
        return asyncio.run(run_ingester(config))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_OK


def query_command(args: argparse.Namespace) -> int:
    """``fieldlink query latest|range ...``."""
    try:
        target = _target(args)
        filters = Filters(
            site=tuple(args.site),
            agent=tuple(args.agent),
            asset=tuple(args.asset),
            device=tuple(args.device),
            point=tuple(args.point),
        )
        if args.query_command == "range":
            start, end = parse_time(args.start), parse_time(args.end)
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"fieldlink query: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.query_command == "latest":
            result = latest(target, filters)
            title = f"latest readings — {target.url} db={target.database}"
        else:
            result = window_range(target, filters, start, end, args.every, args.agg)
            title = f"{args.agg}(value) per {args.every} — {target.url} db={target.database}"
    except ValueError as exc:  # the range arguments
        print(f"fieldlink query: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CloudError as exc:
        print(f"fieldlink query: {exc}", file=sys.stderr)
        return EXIT_INFLUX
    if not result.rows:
        print("no readings match", file=sys.stderr)
        return EXIT_NO_MATCH
    _print(result, args.format, title)
    return EXIT_OK


def _print(result: Result, fmt: str, title: str) -> None:
    if fmt == "csv":
        write_csv(result, sys.stdout)
        return
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        # Piped or captured: no terminal width to respect, so never cut a cell.
        console = Console(file=sys.stdout, width=max(console.width, 200))
    print_table(result, console, title=title)


def _target(args: argparse.Namespace) -> QueryTarget:
    settings: dict[str, Any] = {}
    if args.config is not None:
        settings = _from_config(load_cloud_config(args.config))
    overrides = {
        "url": args.url,
        "database": args.db,
        "retention_policy": args.rp,
        "username": args.username,
        "password": args.password,
        "token": args.token,
        "measurement": args.measurement,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings.setdefault("url", DEFAULT_URL)
    if not settings.get("database"):
        raise ValueError("no database: give -c CLOUD.yaml or --db NAME")
    # Credentials given on the command line replace the config's kind of credentials.
    if args.token is not None:
        settings.pop("username", None)
        settings.pop("password", None)
    elif args.username is not None:
        settings.pop("token", None)
    return QueryTarget(**settings)


def _from_config(config: CloudConfig) -> dict[str, Any]:
    influx = config.influx
    common = {"url": influx.url, "measurement": influx.measurement, "timeout": influx.timeout}
    if isinstance(influx, InfluxV1):
        return {
            **common,
            "database": influx.database,
            "retention_policy": influx.retention_policy,
            "username": influx.username,
            "password": influx.password,
        }
    # InfluxDB 2.x/3.x answer InfluxQL for a bucket mapped to a database of the same name.
    return {**common, "database": influx.bucket, "token": influx.token}
