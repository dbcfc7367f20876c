"""``fieldlink edge run AGENT.yaml``."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import pickle
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from config.edge import EdgeConfig, load_edge_config
from config.errors import ConfigError
from wire.model import Quality, Reading


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edge = subparsers.add_parser("edge", help="the agent that polls devices and publishes readings")
    sub = edge.add_subparsers(dest="edge_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent from an agent config file")
    run.add_argument("config", type=Path, metavar="AGENT.yaml")
    run.add_argument("--once", action="store_true", help="poll every device once, then exit")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="with --once: print the decoded readings instead of publishing them",
    )
    run.add_argument(
        "--json", action="store_true", help="with --dry-run: JSON lines instead of a table"
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="with --once: seconds to wait for the broker (default 30)",
    )
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    loaded = _load_in_child(args.config)
    if isinstance(loaded, str):
        print(loaded, file=sys.stderr)
        return 2
    if loaded is None:  # no fork here, or the child failed: the same load in this process
        try:
            loaded = load_edge_config(args.config)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 2
    config = loaded
    _settle_memory()
    if args.dry_run and not args.once:
        print(
            "--dry-run needs --once: fieldlink edge run AGENT.yaml --once --dry-run",
            file=sys.stderr,
        )
        return 2
    try:
        if args.once:
            return _once(config, dry_run=args.dry_run, as_json=args.json, timeout=args.timeout)
        from edge.agent import run_agent

        async def main() -> int:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await run_agent(config, stop=stop)

        return asyncio.run(main())
    except ConfigError as exc:
        # Problems only found when the buses are built (a bus mixing streaming and polled
        # devices, for a driver without the is_streaming hook): reported like any config error.
        print(exc.render(), file=sys.stderr)
        return 2


def _once(config: EdgeConfig, *, dry_run: bool, as_json: bool, timeout: float) -> int:
    """Poll once. Exit 0 when every reading is good, 1 when any is bad (so an installer's
    script can tell), after printing or publishing them all."""
    from edge.agent import poll_once

    groups = asyncio.run(poll_once(config))
    readings = [r for g in groups for r in g.readings()]
    if dry_run:
        _print_readings(readings, as_json=as_json)
    else:
        from edge.publisher import BrokerUnreachable, publish_once

        try:
            asyncio.run(publish_once(config, groups, wait_s=timeout))
        except BrokerUnreachable as exc:
            print(
                f"could not publish to the MQTT broker at {config.mqtt.host}:{config.mqtt.port} "
                f"within {timeout:g} s: {exc}; the readings stay in the spool and go out on the "
                "next run",
                file=sys.stderr,
            )
            return 3
        print(f"published {len(readings)} readings to {config.mqtt.host}:{config.mqtt.port}")
    return 0 if all(r.quality is Quality.GOOD for r in readings) else 1


def _print_readings(readings: list[Reading], *, as_json: bool) -> None:
    if as_json:
        for r in readings:
            print(
                json.dumps(
                    {
                        "asset": r.asset,
                        "device": r.device,
                        "point": r.point,
                        "time": format_ns(r.ts_ns),
                        "value": r.value,
                        "unit": r.unit,
                        "quality": r.quality.value,
                        "reason": r.reason,
                    }
                )
            )
        return
    from rich.console import Console  # only here: the running agent does not need rich
    from rich.table import Table

    table = Table(title=f"{len(readings)} readings", title_justify="left")
    for column in ("device", "point", "value", "unit", "quality", "time"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for r in sorted(readings, key=lambda r: (r.device, r.point)):
        quality = r.quality.value if r.reason is None else f"{r.quality.value}: {r.reason}"
        value = (
            "" if r.value is None else repr(r.value) if isinstance(r.value, str) else str(r.value)
        )
        table.add_row(r.device, r.point, value, r.unit or "", quality, format_ns(r.ts_ns))
    Console().print(table)


def format_ns(ts_ns: int) -> str:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _load_in_child(path: Path) -> EdgeConfig | str | None:
    """Parse and validate the config in a forked child, which hands the result back pickled:
    the config, the rendered config errors (a str), or None when this cannot be done here
    (no ``fork``, or the child failed for another reason: the caller then loads it itself,
    so any other error surfaces exactly as it would have).

    Why: parsing and validating thousands of points churns through several times the memory
    the resulting config needs (YAML nodes, the document, its env-substituted copy,
    validation temporaries). CPython's allocator returns an arena to the system only when
    every object in it is gone, and the surviving config objects are spread over most of
    them: at 10,000 points the agent kept ~40 MiB for ~9 MiB of config. Unpickled in the
    parent, the config is allocated compactly, with no garbage around it (issue 7).
    """
    if not hasattr(os, "fork"):
        return None
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: load, send, and leave without running the parent's clean-ups
        try:
            os.close(read_end)
            result: EdgeConfig | str
            try:
                result = load_edge_config(path)
            except ConfigError as exc:
                result = exc.render()
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        except BaseException:
            os._exit(1)  # silently: the parent loads the config itself and reports the error
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as data:
        payload = data.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not payload:
        return None
    result = pickle.loads(payload)
    return result if isinstance(result, EdgeConfig | str) else None


def _settle_memory() -> None:
    """After the config is loaded: free what loading left, return it to the system, and
    freeze the survivors.

    ``gc.freeze()`` moves every object alive now — the config (tens of thousands of pydantic
    objects at scale), modules, classes — out of the collector's generations: they live as
    long as the agent, and otherwise every full collection would walk them all again: a
    pause in the middle of the poll schedule (poll jitter) of 80 ms at 10,000 points and
    230 ms at 100,000 on the 2-core benchmark machine, ~0 once frozen.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to trim
        pass
    else:
        libc.malloc_trim(0)
    gc.freeze()
