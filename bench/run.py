"""The ``python -m bench`` dispatcher: one subcommand per benchmark module.

A benchmark module exposes ``add_parser(subparsers) -> None``, which adds its subcommand
and sets ``handler`` (``Callable[[argparse.Namespace], int]``) as a default. The modules
are listed by name in ``bench/__main__.py``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import Protocol, cast


class BenchModule(Protocol):
    def add_parser(
        self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    ) -> None: ...


def build_parser(modules: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fieldlink benchmarks; each prints a table and appends JSON lines to "
        "bench/results/results.jsonl. See bench/README.md.",
    )
    subparsers = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in modules:
        module = cast(BenchModule, importlib.import_module(name))
        module.add_parser(subparsers)
    return parser


def main(modules: Sequence[str], argv: Sequence[str] | None = None) -> int:
    args = build_parser(modules).parse_args(argv)
    handler = cast(Callable[[argparse.Namespace], int], args.handler)
    return handler(args)
