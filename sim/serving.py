"""What the simulator's servers share: serving while an ``async with`` block runs.

:class:`sim.server.SimPlant` (Modbus devices) and :class:`sim.instruments.InstrumentRack`
(serial instruments) both start everything on entry, undo a half-done start before its error
propagates, stop on exit, refuse to be entered twice at once, and drive their waveforms from
one clock: the one given, or the monotonic time since the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

#: Seconds, driving every waveform of one server.
Clock = Callable[[], float]


def monotonic_since_now() -> Clock:
    """A clock reading 0 now and counting monotonic seconds from here."""
    start = time.monotonic()
    return lambda: time.monotonic() - start


class Served:
    """Serves while the ``async with`` block runs: :meth:`_open` starts everything,
    :meth:`_close` stops what is running (also what a failed :meth:`_open` left)."""

    def __init__(self, clock: Clock | None) -> None:
        self._clock = clock
        self._running = False

    async def __aenter__(self) -> Self:
        if self._running:
            raise RuntimeError(f"this {type(self).__name__} is already running")
        self._running = True
        try:
            await self._open(self._clock if self._clock is not None else monotonic_since_now())
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._running = False
        await self._close()

    async def _open(self, clock: Clock) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError
