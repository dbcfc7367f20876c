"""A running simulated plant: every configured device served over its transport.

Devices sharing a listener key (``SimDevice.listener_key``) share one TCP listener or one
serial line: a Modbus TCP port, an RTU-over-TCP port, or a pseudo-terminal carrying RTU or
ASCII frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from config.sim import SimConfig, SimDevice
from sim.faults import FaultyUnit
from sim.image import RegisterImage
from sim.line import Framing, LineServer, LineStats
from sim.pdu import handle_pdu
from sim.pty import PtyLine, open_pty
from sim.serving import Clock, Served
from sim.tcp import PduHandler, TcpListener, listen_tcp


class SimStartError(RuntimeError):
    """A listener could not be bound (port in use, address not local, ...) or a
    pseudo-terminal not created."""


@dataclass(frozen=True, slots=True)
class DeviceStats:
    #: Requests received for the device (answered or not).
    requests: int
    #: Requests answered with a Modbus exception (illegal function, address or value, or
    #: an injected exception).
    exceptions: int
    #: Requests left unanswered by a `no_answer` fault.
    unanswered: int = 0
    #: Connections closed by a `drop_connection` fault.
    dropped: int = 0
    #: Answers sent with a wrong CRC/LRC by a `corrupt_crc` fault.
    corrupted: int = 0
    #: Answers delayed by a `latency` fault.
    delayed: int = 0


@dataclass
class BusStats(LineStats):
    """Counters of the line or listener a device is on, a copy: the frame counters of
    :class:`sim.line.LineStats` (they stay 0 on a Modbus TCP listener, which does not count
    frames) and the refused connections."""

    #: Connections closed on arrival because of `max_connections`.
    refused_connections: int = 0


@dataclass(frozen=True, slots=True)
class SerialEndpoint:
    """Where a serial device is served: the pseudo-terminal the agent opens."""

    path: str
    unit_id: int
    transport: str
    #: The symlink configured as `serial_link`, pointing at ``path``.
    link: str | None


class _Unit:
    """One device behind a listener: its registers and its counters."""

    __slots__ = ("exceptions", "image", "requests")

    def __init__(self, image: RegisterImage) -> None:
        self.image = image
        self.requests = 0
        self.exceptions = 0

    def __call__(self, pdu: bytes) -> bytes:
        answer = handle_pdu(self.image, pdu)
        self.requests += 1
        if answer[0] & 0x80:
            self.exceptions += 1
        return answer


class SimPlant(Served):
    """Serves the devices of a :class:`SimConfig` while the ``async with`` block runs.

    ``clock`` returns seconds and drives every waveform; it defaults to the monotonic time
    since the plant started. Tests inject their own to get exact values.
    """

    def __init__(self, config: SimConfig, clock: Callable[[], float] | None = None) -> None:
        super().__init__(clock)
        self._config = config
        self._listeners: list[TcpListener] = []
        self._lines: list[PtyLine] = []
        self._endpoints: dict[str, tuple[str, int, int]] = {}
        self._serial: dict[str, SerialEndpoint] = {}
        self._units: dict[str, _Unit | FaultyUnit] = {}
        self._buses: dict[str, tuple[LineStats | None, TcpListener | None]] = {}

    async def _open(self, clock: Clock) -> None:
        groups: dict[tuple[str, int, str], list[SimDevice]] = {}
        for device in self._config.devices:
            groups.setdefault(device.listener_key(), []).append(device)
        self._units = {d.name: _make_unit(d, clock) for d in self._config.devices}
        for devices in groups.values():
            handlers: dict[int, PduHandler] = {d.unit_id: self._units[d.name] for d in devices}
            if devices[0].is_serial:
                self._open_line(devices, handlers)
            else:
                await self._listen(devices, handlers)
        # Report devices in the order of the config file, not of the listeners.
        order = [d.name for d in self._config.devices]
        self._endpoints = {n: self._endpoints[n] for n in order if n in self._endpoints}
        self._serial = {n: self._serial[n] for n in order if n in self._serial}

    async def _listen(self, devices: list[SimDevice], handlers: dict[int, PduHandler]) -> None:
        first = devices[0]
        framing: Framing | None = "rtu" if first.transport == "rtu-over-tcp" else None
        stats = LineStats() if framing is not None else None
        try:
            listener = await listen_tcp(
                first.host,
                first.port,
                handlers,
                framing=framing,
                stats=stats,
                max_connections=first.max_connections,
            )
        except OSError as exc:
            names = ", ".join(d.name for d in devices)
            raise SimStartError(
                f"cannot listen on {format_endpoint(first.host, first.port)} for {names}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._listeners.append(listener)
        for device in devices:
            self._endpoints[device.name] = (first.host, listener.port, device.unit_id)
            self._buses[device.name] = (stats, listener)

    def _open_line(self, devices: list[SimDevice], handlers: dict[int, PduHandler]) -> None:
        first = devices[0]
        try:
            line = open_pty(first.serial_link)
        except OSError as exc:
            names = ", ".join(d.name for d in devices)
            where = f" with link {first.serial_link}" if first.serial_link else ""
            raise SimStartError(
                f"cannot open a pseudo-terminal{where} for {names}: {exc.strerror or exc}"
            ) from exc
        self._lines.append(line)
        stats = LineStats()
        framing: Framing = "ascii" if first.transport == "ascii" else "rtu"
        line.attach(
            LineServer(
                framing,
                handlers,
                stats,
                line.write,
                char_time=first.char_time,
                frame_gap=first.frame_gap,
                timing=first.emulate_timing,
            )
        )
        for device in devices:
            self._serial[device.name] = SerialEndpoint(
                line.path, device.unit_id, device.transport, first.serial_link
            )
            self._buses[device.name] = (stats, None)

    async def _close(self) -> None:
        # Stats stay readable after the plant stopped (benchmarks report them); endpoints
        # do not, nothing listens there any more.
        self._endpoints = {}
        self._serial = {}
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()
        lines, self._lines = self._lines, []
        for line in lines:
            line.close()

    def endpoints(self) -> dict[str, tuple[str, int, int]]:
        """TCP device name (tcp, rtu-over-tcp) → (host, bound port, unit id), in config
        order; empty when not running. Serial devices are in :meth:`serial_endpoints`."""
        return dict(self._endpoints)

    def serial_endpoints(self) -> dict[str, SerialEndpoint]:
        """Serial device name (rtu, ascii) → its pseudo-terminal and unit id, in config order;
        empty when not running."""
        return dict(self._serial)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every device's endpoint as the ports file has it, in config order."""
        out: dict[str, dict[str, Any]] = {}
        for device in self._config.devices:
            if device.name in self._endpoints:
                host, port, unit = self._endpoints[device.name]
                out[device.name] = {
                    "host": host,
                    "port": port,
                    "unit_id": unit,
                    "transport": device.transport,
                }
            elif device.name in self._serial:
                serial = self._serial[device.name]
                out[device.name] = {
                    "serial_port": serial.path,
                    "unit_id": serial.unit_id,
                    "transport": serial.transport,
                }
                if serial.link is not None:
                    out[device.name]["serial_link"] = serial.link
        return out

    def stats(self) -> dict[str, DeviceStats]:
        """Device name → requests received so far, and faults injected."""
        return {name: _device_stats(unit) for name, unit in self._units.items()}

    def bus_stats(self, device: str) -> BusStats:
        """Counters of the line or listener ``device`` is on (shared by its neighbours)."""
        stats, listener = self._buses[device]
        refused = listener.limit.refused if listener is not None and listener.limit else 0
        if stats is None:
            return BusStats(refused_connections=refused)
        return BusStats(**asdict(stats), refused_connections=refused)


def _make_unit(device: SimDevice, clock: Callable[[], float]) -> _Unit | FaultyUnit:
    image = RegisterImage(device, clock)
    if device.faults:
        return FaultyUnit(device, partial(handle_pdu, image))
    return _Unit(image)


def _device_stats(unit: _Unit | FaultyUnit) -> DeviceStats:
    if isinstance(unit, FaultyUnit):
        return DeviceStats(
            unit.requests,
            unit.exceptions,
            unit.unanswered,
            unit.dropped,
            unit.corrupted,
            unit.delayed,
        )
    return DeviceStats(unit.requests, unit.exceptions)


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
