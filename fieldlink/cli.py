"""The ``fieldlink`` command. Each layer registers its own subcommands; this module only
assembles them, sets up logging and turns a missing extra into an install hint."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from fieldlink import __version__

#: (module, extra that provides its dependencies). Imported lazily so that a gateway with only
#: `fieldlink[edge]` installed can still run `fieldlink edge` and `fieldlink check`.
COMMAND_MODULES = [
    ("sim.cli", "edge"),
    ("edge.cli", "edge"),
    ("drivers.modbus.tools", "edge"),
    ("cloud.cli", "cloud"),
    ("fieldlink.tools", None),
    ("fieldlink.demo", "demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldlink",
        description="Field devices → typed readings → MQTT → InfluxDB.",
    )
    parser.add_argument("--version", action="version", version=f"fieldlink {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FIELDLINK_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO, or $FIELDLINK_LOG_LEVEL)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, extra in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if extra is None:
                raise
            missing = subparsers.add_parser(
                module_name.split(".")[0], help=f"(needs: pip install 'fieldlink[{extra}]')"
            )
            missing.set_defaults(handler=_missing_extra(extra, exc))
            continue
        module.register(subparsers)
    return parser


def _missing_extra(extra: str, exc: ImportError) -> object:
    def handler(args: argparse.Namespace) -> int:
        print(
            f"this command needs packages that are not installed ({exc.name}); "
            f"install them with: pip install 'fieldlink[{extra}]'",
            file=sys.stderr,
        )
        return 3

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
