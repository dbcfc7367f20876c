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
  only when it changes (failing / recovered), not on every poll (:func:`note_state`, shared
  with the stream worker);
* keeps per device plain counters (:class:`DeviceStats`, shared with the stream worker too),
  which the health endpoint reads when scraped.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from config.device import DeviceBase
from drivers.base import BusLink, DeviceProgram
from drivers.errors import DeviceTimeout, DriverError, LinkError
from edge.backoff import Backoff
from wire.model import Group

log = logging.getLogger("fieldlink.edge")

Sink = Callable[[list[Group]], None]
DeviceT = TypeVar("DeviceT")


@dataclass
class DeviceStats:
    """What happened to one device since the agent started; counters only grow. Both kinds
    of worker keep one per device (a field that does not apply to a kind stays 0): the
    health endpoint (``edge/health.py``) reads them when it is scraped, so keeping them is
    all the hot path pays for metrics."""

    #: Polled: polls due, those answered from an open circuit breaker included.
    polls: int = 0
    #: Polled: requests sent to the device on the bus.
    requests: int = 0
    failed_requests: int = 0
    skipped_polls: int = 0
    #: Polls answered from an open circuit breaker: bad readings, no I/O on the bus.
    polls_skipped_by_breaker: int = 0
    #: Streaming: chunks read from the link and fed to the device's decoder.
    chunks: int = 0
    #: Streaming: groups (frames) the decoder completed.
    groups: int = 0
    #: Streaming: bad reports made by the watchdog (silence or a lost link).
    stale_reports: int = 0
    #: Streaming: chunks whose decoding raised (a driver bug); only the first is logged.
    decode_crashes: int = 0
    #: Readings handed on, by quality (``good``, ``bad``, ``uncertain``).
    readings: dict[str, int] = field(default_factory=dict)
    #: Polls (polled) or watchdog reports (streaming) that brought no data, by the class of
    #: their reason (:func:`reason_class`).
    failures: dict[str, int] = field(default_factory=dict)
    #: Wall-clock time (ns) of the end of the last poll.
    last_poll_ns: int = 0
    #: Wall-clock time (ns) of the last success: a poll every request of which was answered,
    #: or a frame that arrived. 0: none yet.
    last_success_ns: int = 0

    def count_readings(self, groups: list[Group]) -> None:
        """Count the readings of ``groups`` by quality (a dict lookup per reading: good
        entries carry no ``q``)."""
        readings = self.readings
        good = 0
        for group in groups:
            points = group.points
            good += len(points)
            for entry in points:
                quality = entry.get("q")
                if quality is not None and quality != "good":
                    readings[quality] = readings.get(quality, 0) + 1
                    good -= 1
        if good:
            readings["good"] = readings.get("good", 0) + good

    def count_failure(self, reason: str) -> None:
        kind = reason_class(reason)
        self.failures[kind] = self.failures.get(kind, 0) + 1


def reason_class(reason: str) -> str:
    """A failure's reason without its details, for counting: ``"exception 2 (illegal data
    address)"`` → ``"exception 2"``, ``"frame error: CRC mismatch"`` → ``"frame error"``,
    ``"timeout"`` → ``"timeout"``. Few distinct values, so fit for a metric label."""
    head = reason.split(":", 1)[0].split("(", 1)[0].strip()
    return head[:64] or "unknown"


class Tracked(Protocol):
    """A device as the state-change log sees it (polled or streaming)."""

    config: DeviceBase
    #: Reason of the current failure, None while healthy.
    failing: str | None


def note_state(device: Tracked, failure: str | None, detail: str | None = None) -> None:
    """Log a device's change of state — failing, failing for another reason, recovered —
    once per change (never per poll or frame), and remember the new state. Shared by the
    bus worker and the stream worker, so both read the same in the log."""
    said = f"{failure}: {detail}" if detail else failure
    if failure is None:
        log.info("device %s: recovered", device.config.name)
    elif device.failing is None:
        log.warning("device %s: failing (%s)", device.config.name, said)
    else:
        log.warning("device %s: now failing with %s", device.config.name, said)
    device.failing = failure


@dataclass
class Breaker:
    """Per-device circuit breaker for devices that do not answer.

    After a timeout the breaker opens: until ``retry_at`` every due poll yields bad readings
    with reason ``timeout`` without touching the bus. Then one poll is let through; another
    timeout re-opens it for a longer, jittered period (capped), an answer closes it. A dead
    device so costs the bus at most one timeout per backoff period.
    """

    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=60.0))
    retry_at: float | None = None

    def is_open(self, now: float) -> bool:
        return self.retry_at is not None and now < self.retry_at

    def trip(self, now: float) -> None:
        self.retry_at = now + self.backoff.next_delay()

    def reset(self) -> None:
        self.retry_at = None
        self.backoff.reset()


@dataclass
class ScheduledDevice:
    config: DeviceBase
    program: DeviceProgram
    stats: DeviceStats = field(default_factory=DeviceStats)
    breaker: Breaker = field(default_factory=Breaker)
    #: Reason of the current failure, None while healthy; drives state-change logging.
    failing: str | None = None


class LinkWorker(Generic[DeviceT]):
    """What both kinds of worker — polled (:class:`BusWorker`) and streaming
    (``edge.streamer.StreamWorker``) — keep about one link and its devices: the devices,
    where their readings go, the clocks, the reconnect backoff, and whether the link is up,
    logged once when it goes down and once when it comes back."""

    def __init__(
        self,
        name: str,
        devices: list[DeviceT],
        sink: Sink,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._devices = devices
        self._sink = sink
        self._clock = clock
        self._wall_ns = wall_ns
        self._backoff = backoff or Backoff()
        self._connected = False
        #: Reason the link is down, None while it is up (or has not failed yet).
        self._link_failure: str | None = None

    @property
    def devices(self) -> list[DeviceT]:
        return self._devices

    @property
    def connected(self) -> bool:
        """Whether the link is open (as far as the last exchange knows)."""
        return self._connected

    def _link_up(self) -> None:
        if self._link_failure is not None:
            log.info("bus %s: connected again", self.name)
        self._connected = True
        self._link_failure = None

    def _link_down(self, exc: DriverError) -> None:
        if self._link_failure is None:
            log.warning("bus %s: %s; retrying with backoff", self.name, exc)
        self._connected = False
        self._link_failure = exc.reason


class BusWorker(LinkWorker[ScheduledDevice]):
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
        request_gap: float = 0.0,
        connect_delay: float = 0.0,
    ) -> None:
        super().__init__(name, devices, sink, clock=clock, wall_ns=wall_ns, backoff=backoff)
        self._link = link
        self._request_gap = request_gap
        self._connect_delay = connect_delay
        self._last_request_end = float("-inf")
        self._next_connect = 0.0

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
        #: The driver's own words for the failure (which command, which timeout), for the log.
        detail: str | None = None
        program = device.program
        stats = device.stats
        stats.polls += 1
        if device.breaker.is_open(self._clock()):
            stats.polls_skipped_by_breaker += 1
            groups = [
                program.fail(r, DeviceTimeout.reason, self._wall_ns()) for r in program.requests
            ]
            stats.count_failure(DeviceTimeout.reason)
            stats.count_readings(groups)
            self._sink(groups)
            return groups
        pending = list(program.requests)
        pending.reverse()  # popped from the end: in order, without shifting the list
        while pending:
            request = pending.pop()
            if failure == DeviceTimeout.reason:
                # The device just did not answer; asking it again in this poll would cost the
                # bus another timeout for the same news.
                groups.append(program.fail(request, failure, self._wall_ns()))
                continue
            # The checks are inline on the hot path: connected and unpaced, as is usual,
            # a request costs no extra coroutine.
            if not self._connected and not await self._ensure_connected():
                failure = self._link_failure or "disconnected"
                groups.append(program.fail(request, failure, self._wall_ns()))
                continue
            if self._request_gap > 0:
                await self._pace()
            stats.requests += 1
            try:
                answer = await self._link.execute(request)
            except DriverError as exc:
                self._last_request_end = self._clock()
                if isinstance(exc, LinkError):
                    self._lost(exc)
                else:
                    smaller = program.refine(request, exc)
                    if smaller:
                        pending.extend(reversed(smaller))  # next, in their order
                        continue
                failure = exc.reason
                detail = exc.detail or None
                stats.failed_requests += 1
                groups.append(program.fail(request, failure, self._wall_ns()))
            else:
                self._last_request_end = self._clock()
                groups.append(program.decode(request, answer, self._wall_ns()))
        if failure == DeviceTimeout.reason:
            device.breaker.trip(self._clock())
        elif failure is None and device.breaker.retry_at is not None:
            device.breaker.reset()
        stats.last_poll_ns = self._wall_ns()
        if failure is None:
            stats.last_success_ns = stats.last_poll_ns
        else:
            stats.count_failure(failure)
        if failure != device.failing:
            note_state(device, failure, detail)
        if groups:
            stats.count_readings(groups)
            self._sink(groups)
        return groups

    async def close(self) -> None:
        """Close the bus link (``run`` does this itself when cancelled)."""
        await self._link.close()
        self._connected = False

    async def _pace(self) -> None:
        """Keep the bus's configured quiet time between two requests (slow gateways, RS-485
        turnaround), so devices on one line never see back-to-back frames."""
        gap = self._request_gap
        if gap <= 0:
            return
        wait = self._last_request_end + gap - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)

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
        if self._connect_delay > 0:
            # Some gateways drop the first request sent right after the TCP handshake.
            await asyncio.sleep(self._connect_delay)
        self._link_up()
        self._backoff.reset()
        return True

    def _lost(self, exc: DriverError) -> None:
        self._link_down(exc)
        self._next_connect = self._clock() + self._backoff.next_delay()
