"""The seam between the agent and a field protocol.

A driver plugin (:class:`DriverPlugin`) contributes three things:

* config models for its buses and devices (validated in stage two of config loading);
* :meth:`DriverPlugin.open_bus`, which returns a :class:`BusLink` — the one connection (socket,
  serial port) that all devices of that bus share;
* :meth:`DriverPlugin.compile_device`, which turns a device's config into a
  :class:`DeviceProgram`: the planned requests and how their answers become readings.

Scheduling, retries, backoff, timestamps and quality bookkeeping live *above* this seam, in
``edge/``. A driver only performs the I/O it is asked for and raises :mod:`drivers.errors`.

Lifecycle of a :class:`BusLink`: ``connect()`` may be called again after any
:class:`~drivers.errors.LinkError`; the agent backs off between attempts. ``execute()`` on a
link that is not connected raises :class:`~drivers.errors.ConnectError`. ``close()`` is
idempotent. Cancelling ``execute()`` raises ``asyncio.CancelledError`` and leaves the link
closed or usable, never half-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from config.device import BusBase, DeviceBase
from drivers.errors import DriverError
from wire.model import Group


class BusLink(Protocol):
    async def connect(self) -> None: ...

    async def execute(self, request: Any) -> Any:
        """Perform one planned request; return its raw answer or raise a DriverError."""
        ...

    async def close(self) -> None: ...


class DeviceProgram(Protocol):
    """A device's compiled poll: the requests of one cycle and how to read their answers."""

    @property
    def requests(self) -> Sequence[Any]: ...

    def decode(self, request: Any, answer: Any, ts_ns: int) -> Group:
        """Readings (good or bad, one per point of the request) from a successful answer."""
        ...

    def fail(self, request: Any, reason: str, ts_ns: int) -> Group:
        """Bad readings, one per point of the request, all carrying ``reason``."""
        ...

    def refine(self, request: Any, error: DriverError) -> Sequence[Any] | None:
        """Smaller requests to run now instead of a failed one, or None to report the failure.

        Lets a driver learn from refusals (a Modbus merged read over a hole). The program
        itself remembers the replacement for later cycles in :attr:`requests`.
        """
        ...


class DriverPlugin(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def bus_model(self) -> type[BusBase]: ...

    @property
    def device_model(self) -> type[DeviceBase]: ...

    def open_bus(self, bus: BusBase) -> BusLink: ...

    def compile_device(self, device: DeviceBase) -> DeviceProgram: ...
