"""One task per bus: it owns the bus link and polls the bus's devices in turn.

Why one owner: a serial line or a single-connection TCP gateway can carry one transaction at a
time; devices on it must take turns rather than collide. The worker:

* keeps for every device a due time on the monotonic clock, advanced by whole intervals so
  polls never drift; a device whose slot was missed (the bus was busy) skips to its next slot
  and the skip is counted — polls of one device never overlap or pile up;
* staggers first polls across each device's interval so devices do not all fire at once;
* reconnects a lost link with capped, jittered backoff; while the link is down, every due poll
  yields bad readings with reason ``disconnected`` instead of waiting;
* turns every failed request into bad readings carrying the reason, and logs a device's state
  only when it changes (failing / recovered), not on every poll.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config.device import DeviceBase
from drivers.base import BusLink, DeviceProgram
from drivers.errors import DriverError, LinkError
from edge.backoff import Backoff
from wire.model import Group

log = logging.getLogger("fieldlink.edge")

Sink = Callable[[list[Group]], None]


@dataclass
class DeviceStats:
    polls: int = 0
    failed_requests: int = 0
    skipped_polls: int = 0
    last_poll_ns: int = 0


@dataclass
class ScheduledDevice:
    config: DeviceBase
    program: DeviceProgram
    stats: DeviceStats = field(default_factory=DeviceStats)
    #: Reason of the current failure, None while healthy; drives state-change logging.
    failing: str | None = None


class BusWorker:
    def __init__(
        self,
        name: str,
        link: BusLink,
        devices: list[ScheduledDevice],
        sink: Sink,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._link = link
        self._devices = devices
        self._sink = sink
        self._clock = clock
        self._wall_ns = wall_ns
        self._backoff = backoff or Backoff()
        self._connected = False
        self._next_connect = 0.0
        self._link_failure: str | None = None

    @property
    def devices(self) -> list[ScheduledDevice]:
        return self._devices

    async def run(self) -> None:
        """Poll until cancelled. Cancellation closes the link and propagates."""
        start = self._clock()
        count = len(self._devices)
        # (due time, index) heap; the index breaks ties deterministically.
        due: list[tuple[float, int]] = [
            (start + d.config.interval * i / count, i) for i, d in enumerate(self._devices)
        ]
        heapq.heapify(due)
        try:
            while due:
                when, index = heapq.heappop(due)
                delay = when - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                device = self._devices[index]
                try:
                    await self.poll(device)
                except Exception:
                    # A bug in one device's decoding must not stop the bus or the agent.
                    log.exception("device %s: poll failed unexpectedly", device.config.name)
                heapq.heappush(due, (self._next_slot(device, when), index))
        finally:
            await self._link.close()

    def _next_slot(self, device: ScheduledDevice, when: float) -> float:
        interval = device.config.interval
        nxt = when + interval
        now = self._clock()
        if nxt <= now:
            missed = int((now - nxt) // interval) + 1
            device.stats.skipped_polls += missed
            nxt += missed * interval
        return nxt

    async def poll(self, device: ScheduledDevice) -> list[Group]:
        """Poll one device once: every point yields exactly one reading, good or bad."""
        groups: list[Group] = []
        failure: str | None = None
        program = device.program
        device.stats.polls += 1
        pending = list(program.requests)
        while pending:
            request = pending.pop(0)
            if not await self._ensure_connected():
                failure = self._link_failure or "disconnected"
                groups.append(program.fail(request, failure, self._wall_ns()))
                continue
            try:
                answer = await self._link.execute(request)
            except DriverError as exc:
                if isinstance(exc, LinkError):
                    self._lost(exc)
                else:
                    smaller = program.refine(request, exc)
                    if smaller:
                        pending[0:0] = smaller
                        continue
                failure = exc.reason
                device.stats.failed_requests += 1
                groups.append(program.fail(request, failure, self._wall_ns()))
            else:
                groups.append(program.decode(request, answer, self._wall_ns()))
        device.stats.last_poll_ns = self._wall_ns()
        if failure != device.failing:
            self._note_state(device, failure)
        if groups:
            self._sink(groups)
        return groups

    async def _ensure_connected(self) -> bool:
        if self._connected:
            return True
        if self._clock() < self._next_connect:
            return False
        try:
            await self._link.connect()
        except DriverError as exc:
            self._lost(exc)
            return False
        if self._link_failure is not None:
            log.info("bus %s: connected again", self.name)
        self._connected = True
        self._link_failure = None
        self._backoff.reset()
        return True

    def _lost(self, exc: DriverError) -> None:
        if self._link_failure is None:
            log.warning("bus %s: %s; retrying with backoff", self.name, exc)
        self._connected = False
        self._link_failure = exc.reason
        self._next_connect = self._clock() + self._backoff.next_delay()

    def _note_state(self, device: ScheduledDevice, failure: str | None) -> None:
        if failure is None:
            log.info("device %s: recovered", device.config.name)
        elif device.failing is None:
            log.warning("device %s: failing (%s)", device.config.name, failure)
        else:
            log.warning("device %s: now failing with %s", device.config.name, failure)
        device.failing = failure
