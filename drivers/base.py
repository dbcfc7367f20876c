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

Streaming devices (optional). Some devices do not wait to be asked: a GPS prints a sentence
every second, a logger a line per sample. For them the seam has two optional protocols, and
``edge/streamer.py`` runs them instead of the request/response bus worker:

* :meth:`DriverPlugin.compile_device` returns a :class:`StreamDecoder` instead of a
  :class:`DeviceProgram`. It is fed the bytes as they arrive (``feed(data, ts_ns)``) and
  returns a :class:`~wire.model.Group` per complete frame (good or bad readings), keeping a
  partial frame for the next call. ``stale(reason, ts_ns)`` gives bad readings for every point
  (the worker calls it when the stream is silent past ``stale_after`` — reason ``timeout`` —
  or the link is lost — ``disconnected``), ``reset()`` forgets a partial frame after a
  reconnect. ``ts_ns`` is the arrival time of the bytes, taken by the worker: it becomes the
  sample time of the frames they complete.
* The bus's link also implements :class:`StreamLink`: ``receive()`` waits for the next bytes
  the device sends and returns them as they came (any size: half a frame or several); it
  raises :class:`~drivers.errors.ConnectError` when the link is lost (port gone, EOF), after
  which ``connect()`` is called again with backoff, exactly as for ``execute()``. Cancelling
  ``receive()`` raises ``asyncio.CancelledError`` and loses no byte already received.

A bus carries either streaming devices or polled ones, never both: one task owns the link and
it either waits for bytes or asks. Several stream devices on one bus all see every byte (each
takes the frames its entries match). A driver with streaming devices should also implement
:class:`StreamingPlugin` (``is_streaming(device)``, answered from the device's config alone):
``fieldlink check`` then refuses a bus that mixes both kinds. Without it the mix is found only
when the agent starts and compiles the devices.

Frame counters (optional). A program (either kind) that cuts frames out of bytes may also
implement :class:`FrameCounting`: ``frame_counts()`` returns what went wrong so far (checksum
failures, unparsable frames, noise bytes...), as counters that only grow. The agent samples
them, logs a kind of trouble when it starts and when it stops (never per frame), and logs
every device's totals when it stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from config.device import BusBase, DeviceBase
from drivers.errors import DriverError
from wire.model import Group


class BusLink(Protocol):
    async def connect(self) -> None: ...

    async def execute(self, request: Any) -> Any:
        """Perform one planned request; return its raw answer or raise a DriverError."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamLink(Protocol):
    """A link a device pushes data on (optional; see the module docstring)."""

    async def connect(self) -> None: ...

    async def receive(self) -> bytes:
        """The next bytes received, as they came; ConnectError when the link is lost."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamDecoder(Protocol):
    """A streaming device's compiled program (optional; see the module docstring)."""

    @property
    def stale_after(self) -> float:
        """Seconds without a frame after which the points are reported bad (``timeout``)."""
        ...

    @property
    def interval(self) -> float:
        """Seconds between two bad reports while the device stays silent or unreachable."""
        ...

    @property
    def points(self) -> Sequence[str]:
        """Names of every point the device reports."""
        ...

    def feed(self, data: bytes, ts_ns: int) -> list[Group]:
        """Readings of every frame ``data`` completes; ``ts_ns`` is when it arrived."""
        ...

    def stale(self, reason: str, ts_ns: int) -> Group:
        """Bad readings, one per point, all carrying ``reason``."""
        ...

    def reset(self) -> None:
        """Forget any partial frame (the link was reopened)."""
        ...


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

    def compile_device(self, device: DeviceBase) -> DeviceProgram | StreamDecoder: ...


@runtime_checkable
class StreamingPlugin(Protocol):
    """A plugin that can tell a streaming device from its config (optional; see above)."""

    def is_streaming(self, device: DeviceBase) -> bool:
        """Whether :meth:`DriverPlugin.compile_device` gives this device a StreamDecoder.

        Called during config validation with the device's validated model; it must not
        compile the device, open anything or raise.
        """
        ...


@dataclass(frozen=True)
class FrameCounts:
    """A program's frame counters at one moment; every number only grows.

    ``trouble`` maps a kind, worded to read after a number (``"checksum failures"``,
    ``"noise bytes dropped"``), to its count; ``latest`` gives, per kind, what the last one
    looked like (``"checksum mismatch: frame says '5A', computed '5B'"``), for the log.
    ``info`` holds counts that are no trouble (``"unmatched frames"``), for the stop summary.
    """

    good: int
    trouble: Mapping[str, int]
    latest: Mapping[str, str] = field(default_factory=dict)
    info: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class FrameCounting(Protocol):
    """A program that counts its frames' troubles (optional; see the module docstring)."""

    def frame_counts(self) -> FrameCounts:
        """The counters now; cheap (the agent calls it about once a second)."""
        ...
