"""``fieldlink edge run AGENT.yaml``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from config.edge import load_edge_config
from config.errors import ConfigError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edge = subparsers.add_parser("edge", help="the agent that polls devices and publishes readings")
    sub = edge.add_subparsers(dest="edge_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent from an agent config file")
    run.add_argument("config", type=Path, metavar="AGENT.yaml")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_edge_config(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    from edge.agent import run_agent

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_agent(config, stop=stop)

    return asyncio.run(main())
