"""Finding drivers: the ``fieldlink.drivers`` entry-point group, loaded lazily by name.

Built-in drivers register through the same group in our own pyproject.toml, so a
third-party package (``pip install fieldlink-driver-foo``) is found the same way. A name that
two distributions claim is an error, never a silent override. Tests build their own
:class:`DriverRegistry` instead of touching a global one.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from drivers.base import DriverPlugin

GROUP = "fieldlink.drivers"


class DriverNotFound(LookupError):
    pass


class DriverRegistry:
    def __init__(self, entries: Iterable[EntryPoint] | None = None) -> None:
        self._entries: dict[str, EntryPoint] = {}
        self._loaded: dict[str, DriverPlugin] = {}
        self._conflicts: dict[str, list[str]] = {}
        for ep in entries if entries is not None else entry_points(group=GROUP):
            if ep.name in self._entries and self._entries[ep.name].value != ep.value:
                self._conflicts.setdefault(ep.name, [self._entries[ep.name].value]).append(ep.value)
            self._entries.setdefault(ep.name, ep)

    def add(self, plugin: DriverPlugin) -> None:
        """Register a plugin object directly (tests, embedding). Refuses to replace one."""
        if plugin.name in self._entries or plugin.name in self._loaded:
            raise ValueError(f"a driver named {plugin.name!r} is already registered")
        self._loaded[plugin.name] = plugin

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._loaded))

    def get(self, name: str) -> DriverPlugin:
        if name in self._loaded:
            return self._loaded[name]
        if name in self._conflicts:
            sources = ", ".join(self._conflicts[name])
            raise DriverNotFound(
                f"driver {name!r} is provided by several packages ({sources}); "
                "uninstall all but one"
            )
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise DriverNotFound(f"unknown driver {name!r}; installed drivers: {known}")
        try:
            plugin = entry.load()
        except ImportError as exc:
            raise DriverNotFound(
                f"driver {name!r} cannot be loaded ({exc}); install the agent's extra: "
                "pip install 'fieldlink[edge]'"
            ) from exc
        self._loaded[name] = plugin
        return plugin  # type: ignore[no-any-return]
