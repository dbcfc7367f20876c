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


def build_parser(
    modules: Sequence[tuple[str, str | None]] = COMMAND_MODULES,
) -> argparse.ArgumentParser:
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
    for module_name, extra in modules:
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


#: Commands that import only their own module when they run: the agent on a gateway then
#: carries no cloud, simulator or table-printing code (about 5 MiB of RSS, issue 7).
#: `fieldlink --help` and any other command still build the full parser.
LEAN_COMMANDS: dict[str, tuple[str, str | None]] = {"edge": ("edge.cli", "edge")}


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``, skipping the global options and their values."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    lean = LEAN_COMMANDS.get(_command_word(words) or "")
    parser = build_parser([lean] if lean is not None else COMMAND_MODULES)
    args = parser.parse_args(words)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
