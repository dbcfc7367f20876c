"""A running simulated plant: every configured device served over Modbus TCP."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from config.sim import SimConfig, SimDevice
from sim.image import RegisterImage
from sim.pdu import handle_pdu
from sim.tcp import PduHandler, TcpListener, listen_tcp


class SimStartError(RuntimeError):
    """A listener could not be bound (port in use, address not local, ...)."""


@dataclass(frozen=True, slots=True)
class DeviceStats:
    #: Requests answered, exceptions included.
    requests: int
    #: Requests answered with a Modbus exception (illegal function, address or value).
    exceptions: int


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


def _monotonic_since_now() -> Callable[[], float]:
    start = time.monotonic()
    return lambda: time.monotonic() - start


class SimPlant:
    """Serves the devices of a :class:`SimConfig` while the ``async with`` block runs.

    ``clock`` returns seconds and drives every waveform; it defaults to the monotonic time
    since the plant started. Tests inject their own to get exact values.
    """

    def __init__(self, config: SimConfig, clock: Callable[[], float] | None = None) -> None:
        self._config = config
        self._clock = clock
        self._listeners: list[TcpListener] = []
        self._endpoints: dict[str, tuple[str, int, int]] = {}
        self._units: dict[str, _Unit] = {}

    async def __aenter__(self) -> SimPlant:
        if self._listeners:
            raise RuntimeError("this SimPlant is already running")
        clock = self._clock if self._clock is not None else _monotonic_since_now()
        groups: dict[tuple[str, int, str], list[SimDevice]] = {}
        for device in self._config.devices:
            groups.setdefault(device.listener_key(), []).append(device)
        self._units = {d.name: _Unit(RegisterImage(d, clock)) for d in self._config.devices}
        try:
            for (host, port, _), devices in groups.items():
                handlers: dict[int, PduHandler] = {d.unit_id: self._units[d.name] for d in devices}
                try:
                    listener = await listen_tcp(host, port, handlers)
                except OSError as exc:
                    names = ", ".join(d.name for d in devices)
                    raise SimStartError(
                        f"cannot listen on {format_endpoint(host, port)} for {names}: "
                        f"{exc.strerror or exc}"
                    ) from exc
                self._listeners.append(listener)
                for device in devices:
                    self._endpoints[device.name] = (host, listener.port, device.unit_id)
        except BaseException:
            await self._close()
            raise
        # Report devices in the order of the config file, not of the listeners.
        self._endpoints = {d.name: self._endpoints[d.name] for d in self._config.devices}
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        # Stats stay readable after the plant stopped (benchmarks report them); endpoints
        # do not, nothing listens there any more.
        self._endpoints = {}
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.close()

    def endpoints(self) -> dict[str, tuple[str, int, int]]:
        """Device name → (host, bound port, unit id), in config order; empty when not running."""
        return dict(self._endpoints)

    def stats(self) -> dict[str, DeviceStats]:
        """Device name → requests answered so far."""
        return {
            name: DeviceStats(unit.requests, unit.exceptions) for name, unit in self._units.items()
        }


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
