"""One task per streaming bus: it owns the link and reads what its devices push.

The request/response bus worker (``scheduler.py``) asks and waits; a streaming device (a GPS
printing sentences, a logger printing lines) does not wait to be asked. Its bus gets a
:class:`StreamWorker` instead, built on the optional streaming seam of ``drivers/base.py``
(:class:`~drivers.base.StreamLink`, :class:`~drivers.base.StreamDecoder`):

* the reader reads the link continuously and feeds every chunk to each device's decoder with
  the chunk's arrival time (``time.time_ns()`` right after the read), which becomes the sample
  time of the frames it completes; every frame yields readings, good or bad (a bad checksum
  or an unparsable field is a bad reading with its reason, and the next frame is read);
* the watchdog reports what did *not* arrive: a device silent for ``stale_after`` seconds is
  reported bad with reason ``timeout``, then once per ``interval`` while the silence lasts, so
  a gap in the data always has a reading explaining it;
* a lost link is reported at once (``disconnected``, then once per interval) and reopened with
  capped, jittered backoff; after reopening, the decoders forget partial frames;
* a device's state (silent, unreachable) is logged when it changes (failing / recovered), not
  on every frame (the bus worker's :func:`~edge.scheduler.note_state`); trouble inside frames
  is logged by ``edge/framewatch.py``;
* per device counters are the bus worker's :class:`~edge.scheduler.DeviceStats` (chunks,
  frames, readings by quality, watchdog reports by reason), read by the health endpoint.

:meth:`StreamWorker.once` is ``--once --dry-run`` for streams: connect, wait until every point
of every device was reported once (or ``stale_after`` passed: ``timeout``), return.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config.device import DeviceBase
from drivers.base import StreamDecoder, StreamLink
from drivers.errors import DeviceTimeout, DriverError, LinkError
from edge.backoff import Backoff
from edge.scheduler import DeviceStats, LinkWorker, Sink, log, note_state
from wire.model import Group


@dataclass
class StreamDevice:
    config: DeviceBase
    program: StreamDecoder
    stats: DeviceStats = field(default_factory=DeviceStats)
    #: Monotonic time of the last frame (or of connecting, which starts the silence clock).
    last_frame: float = 0.0
    #: Monotonic time before which the watchdog reports nothing more for this device.
    quiet_until: float = 0.0
    #: Reason of the current failure (``timeout``, ``disconnected``), None while frames come;
    #: drives state-change logging.
    failing: str | None = None


class StreamWorker(LinkWorker[StreamDevice]):
    def __init__(
        self,
        name: str,
        link: StreamLink,
        devices: list[StreamDevice],
        sink: Sink,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name, devices, sink, clock=clock, wall_ns=wall_ns, backoff=backoff)
        self._link = link
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Read until cancelled. Cancellation closes the link and propagates."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_forever(), name=f"stream-{self.name}-read")
                tasks.create_task(self._watch(), name=f"stream-{self.name}-watch")
        finally:
            await self.close()

    async def close(self) -> None:
        await self._link.close()
        self._connected = False

    # -- reading -------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        while True:
            if not await self._connect():
                await asyncio.sleep(self._backoff.next_delay())
                continue
            try:
                while True:
                    self._take(await self._link.receive())
            except LinkError as exc:
                self._lost(exc)
                await asyncio.sleep(self._backoff.next_delay())

    async def _connect(self) -> bool:
        try:
            await self._link.connect()
        except DriverError as exc:
            self._lost(exc)
            return False
        self._link_up()
        now = self._clock()
        for device in self._devices:
            device.program.reset()
            device.last_frame = now  # silence is counted from here
            device.quiet_until = 0.0
        self._wake.set()
        return True

    def _take(self, data: bytes) -> list[Group]:
        ts_ns = self._wall_ns()
        now = self._clock()
        out: list[Group] = []
        for device in self._devices:
            device.stats.chunks += 1
            try:
                groups = device.program.feed(data, ts_ns)
            except Exception:
                # A bug in one device's decoding must not stop the bus or the agent. Logged
                # once, not per chunk; the device's points then go `timeout` (no frames).
                device.stats.decode_crashes += 1
                if device.stats.decode_crashes == 1:
                    log.exception(
                        "device %s: decoding failed unexpectedly (logged once; its points are "
                        "reported timeout while it fails)",
                        device.config.name,
                    )
                continue
            if not groups:
                continue
            device.stats.groups += len(groups)
            device.stats.last_success_ns = ts_ns
            device.stats.count_readings(groups)
            device.last_frame = now
            device.quiet_until = 0.0
            if device.failing is not None:
                # Frames arrive again. What is wrong *in* frames (checksums, parsing) is not
                # this worker's state: bad frames come and go frame by frame, and the
                # FrameWatch (edge/framewatch.py) logs them with hysteresis.
                note_state(device, None)
            self._sink(groups)
            out.extend(groups)
        if out:
            self._backoff.reset()  # the link works: the next loss starts from a short delay
        return out

    def _lost(self, exc: DriverError) -> None:
        if self._connected:
            # Report the loss now, not when the last report's interval is over.
            for device in self._devices:
                device.quiet_until = 0.0
        self._link_down(exc)
        self._report_stale(self._clock())
        self._wake.set()

    # -- what did not arrive --------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            wake_at = self._report_stale(self._clock())
            self._wake.clear()
            delay = max(0.0, wake_at - self._clock())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _report_stale(self, now: float) -> float:
        """Report every device that is due a bad reading; return when to look again."""
        wake_at = now + 60.0
        for device in self._devices:
            program = device.program
            if self._connected:
                reason = DeviceTimeout.reason
                due = max(device.last_frame + program.stale_after, device.quiet_until)
            elif self._link_failure is not None:
                reason = self._link_failure
                due = device.quiet_until
            else:
                continue  # the first connection is still being opened: nothing to say yet
            if now >= due:
                try:
                    stale = [program.stale(reason, self._wall_ns())]
                    self._sink(stale)
                except Exception:  # a bug in one device must not stop the bus or the agent
                    log.exception("device %s: reporting %s failed", device.config.name, reason)
                else:
                    device.stats.count_readings(stale)
                device.stats.stale_reports += 1
                device.stats.count_failure(reason)
                device.quiet_until = now + program.interval
                if reason != device.failing:
                    note_state(device, reason)
                due = device.quiet_until
            wake_at = min(wake_at, due)
        return wake_at

    # -- once ----------------------------------------------------------------------------

    async def once(self) -> list[Group]:
        """Connect, read until every point was reported once, or report what is missing.

        Waits at most the longest ``stale_after`` of the bus's devices; points not reported
        by then are bad with ``timeout`` (``disconnected`` if the link cannot be opened).
        """
        groups: list[Group] = []
        missing = {id(d): set(d.program.points) for d in self._devices}
        try:
            try:
                await self._link.connect()
            except DriverError as exc:
                reason = exc.reason
                log.warning("bus %s: %s", self.name, exc)
            else:
                reason = DeviceTimeout.reason
                limit = max(d.program.stale_after for d in self._devices)
                try:
                    async with asyncio.timeout(limit):
                        while any(missing.values()):
                            data = await self._link.receive()
                            ts_ns = self._wall_ns()
                            for device in self._devices:
                                for group in device.program.feed(data, ts_ns):
                                    fresh = [
                                        e for e in group.points if e["p"] in missing[id(device)]
                                    ]
                                    missing[id(device)] -= {e["p"] for e in fresh}
                                    if fresh:
                                        groups.append(
                                            Group(group.asset, group.device, group.t, fresh)
                                        )
                except TimeoutError:
                    pass
                except LinkError as exc:
                    reason = exc.reason
        finally:
            await self.close()
        for device in self._devices:
            left = missing[id(device)]
            if left:
                stale = device.program.stale(reason, self._wall_ns())
                stale.points = [e for e in stale.points if e["p"] in left]
                groups.append(stale)
        self._sink(groups)
        return groups
