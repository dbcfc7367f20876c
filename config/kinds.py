"""Dispatch on the ``kind:`` line every fieldlink config file starts with."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.errors import ConfigError, Problem
from config.loader import read_document

#: kind → (module, loader function, schema function)
KINDS: dict[str, tuple[str, str, str]] = {
    "edge": ("config.edge", "load_edge_config", "edge_json_schema"),
    "cloud": ("config.cloud", "load_cloud_config", "cloud_json_schema"),
    "sim": ("config.sim", "load_sim_config", "sim_json_schema"),
}


def kind_of(path: Path) -> str:
    doc = read_document(path)
    kind = doc.get("kind")
    if kind not in KINDS:
        hint = "add `kind: edge`, `kind: cloud` or `kind: sim` as the first line"
        got = "missing" if kind is None else f"{kind!r} is not a config kind"
        raise ConfigError(str(path), [Problem("kind", f"{got}; {hint}")])
    return str(kind)


def load_any(path: Path) -> tuple[str, Any]:
    """Validate a file of any kind; raises :class:`ConfigError` with all its problems."""
    kind = kind_of(path)
    module, loader, _ = KINDS[kind]
    load: Callable[[Path], Any] = getattr(importlib.import_module(module), loader)
    return kind, load(path)


def json_schema(kind: str) -> dict[str, Any]:
    module, _, schema = KINDS[kind]
    make: Callable[[], dict[str, Any]] = getattr(importlib.import_module(module), schema)
    return make()
