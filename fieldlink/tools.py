"""``fieldlink check`` and ``fieldlink schema``: config tools for installers and editors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.errors import ConfigError
from config.kinds import KINDS, json_schema, load_any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = subparsers.add_parser(
        "check", help="validate config files and print every problem with its field path"
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE.yaml")
    check.set_defaults(handler=_check)
    schema = subparsers.add_parser("schema", help="print the JSON Schema of a config kind")
    schema.add_argument("kind", choices=sorted(KINDS))
    schema.set_defaults(handler=_schema)


def _check(args: argparse.Namespace) -> int:
    code = 0
    for path in args.files:
        try:
            kind, _ = load_any(path)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            code = 2
        else:
            print(f"{path}: valid {kind} config")
    return code


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(args.kind), indent=2))
    return 0
