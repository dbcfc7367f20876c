"""Simulated serial-line instruments on pseudo-terminals: :class:`InstrumentRack`.

Each instrument of a :class:`~config.sim.SimConfig` gets a pty (``pty.py``) of its own, or
shares one with the other command instruments of its ``line``. A *stream* instrument renders
its frame templates every ``interval`` and writes them; a *command* instrument reads request
lines and answers the ones it knows. Values come from constants and the register waveforms
(``waves.py``); frames are built by ``instrument_frame.py``.

Faults (``faults`` in the config, and the methods of the rack for tests) act per frame or
reply, in this order: ``close_port`` (the pty vanishes, a new one appears later),
silence, garbage before the frame, wrong checksum. See sim/README.md, "Serial instruments".

Every line writes one frame at a time: with timing emulation a frame reaches the pty when its
last byte would have arrived at the line's baud rate, and the next frame starts after it.

Two clocks, both injectable: ``clock`` (monotonic seconds) drives the waveforms of the
values; ``wall_clock`` (epoch seconds or an aware datetime; default the system clock) gives
``{utc}`` and :attr:`Emission.time_ns`, so a test can pin the exact time fields of a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple

from config.sim import (
    ConstantWave,
    EveryN,
    InstrumentFault,
    SimConfig,
    SimInstrument,
)
from sim.faults import strikes
from sim.instrument_frame import (
    Template,
    Value,
    WallTime,
    compile_template,
    encode_frame,
    epoch_ns,
)
from sim.pty import PtyLine, open_pty
from sim.server import SimStartError
from sim.serving import Clock, Served
from sim.waves import value_function

log = logging.getLogger(__name__)

#: A request longer than this without a terminator is noise; it is dropped.
_MAX_REQUEST: Final = 1024
#: Requests waiting for their replies on one line; more are dropped (an input overrun).
_MAX_PENDING_REQUESTS: Final = 64
#: Bytes of one line of noise written by the `garbage` fault: 1..16 bytes from this set.
_NOISE_BYTES: Final = bytes(b for b in range(256) if b not in b"\r\n$*")
#: Frames/replies and requests kept per instrument for :meth:`InstrumentRack.emitted` etc.
_MAX_RECORDS: Final = 100_000

#: The time of ``{utc}``: seconds since the epoch, or an aware datetime.
WallClock = Callable[[], WallTime]


class Emission(NamedTuple):
    """A frame or reply that was written to the pty."""

    #: The rack's wall-clock time (ns since the epoch) at which the frame was rendered and
    #: started on the wire: what ``{utc}`` shows.
    time_ns: int
    #: The rendered template: no ``$``, checksum or terminator.
    body: str
    #: The values of the placeholders it used, unformatted.
    values: dict[str, Value]


class Sent(NamedTuple):
    """An :class:`Emission` with the exact bytes written and the fault applied to it."""

    time_ns: int
    body: str
    values: dict[str, Value]
    wire: bytes
    #: None, or "bad_checksum" when it went out with a wrong checksum.
    fault: str | None


@dataclass(slots=True)
class InstrumentStats:
    """Counters of one instrument. The rack counts in one of these; :meth:`InstrumentRack.stats`
    returns a copy, so changing it changes nothing there."""

    #: Frames (stream) or replies (command) written.
    frames: int = 0
    #: Request lines received on its line.
    requests: int = 0
    #: Requests on its line that no command of any instrument there matched.
    unknown_requests: int = 0
    #: Frames or replies not sent: `silence` fault or :meth:`InstrumentRack.set_silent`.
    silenced: int = 0
    #: Frames or replies written with a wrong checksum.
    corrupted: int = 0
    #: Lines of noise written by the `garbage` fault (not :meth:`InstrumentRack.inject_garbage`).
    garbage: int = 0
    #: Times its port was closed (by the `close_port` fault or :meth:`InstrumentRack.close_port`).
    closes: int = 0
    #: Stream bytes nobody read during a whole interval, dropped before the next burst.
    discarded_bytes: int = 0


class _Rule:
    """One configured fault and how many frames/replies it has seen (for `every`)."""

    __slots__ = ("count", "fault")

    def __init__(self, fault: InstrumentFault) -> None:
        self.fault = fault
        self.count = 0


def _strikes(rule: _Rule, how: float | str | EveryN, rng: random.Random) -> bool:
    """Whether a fault strikes this frame, by the Modbus sim's rules (`sim.faults.strikes`)."""
    rule.count += 1
    return strikes(rule.count, how, rng)


class _Requests:
    """Splits what the agent writes into request lines (ended by CR, LF or CR LF)."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self._on_line = on_line
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            ends = [i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line:  # the LF of a CR LF, or a blank line
                self._on_line(line)
        self._buffer = buffer if len(buffer) <= _MAX_REQUEST else b""

    def close(self) -> None:
        self._buffer = b""


class _Line:
    """One pseudo-terminal and the instruments on it; survives its pty being re-created."""

    def __init__(self, config: SimInstrument, on_reopen: Callable[[], None]) -> None:
        #: Settings every instrument of the line agrees on (validated in config.sim).
        self.config = config
        self.instruments: list[_Instrument] = []
        self.path = ""
        self.written = 0
        self._pty: PtyLine | None = None
        self._on_reopen = on_reopen
        self._reopen_timer: asyncio.TimerHandle | None = None
        self._pending: asyncio.Queue[tuple[_Instrument, Template]] = asyncio.Queue(
            _MAX_PENDING_REQUESTS
        )
        #: One frame on the wire at a time.
        self.wire = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self._pty is not None

    def open(self) -> None:
        pty = open_pty(self.config.serial_link)
        pty.attach(_Requests(self._request))
        self._pty = pty
        self.path = pty.path

    def close(self, down_for: float | None = None) -> None:
        """Make the pty vanish; with ``down_for``, a new one appears after that long."""
        self._cancel_reopen()
        if self._pty is not None:
            self._pty.close()
            self._pty = None
            for inst in self.instruments:
                inst.counters.closes += 1
            # Requests of the old port are not answered on the new one.
            while not self._pending.empty():
                self._pending.get_nowait()
        if down_for is not None:
            loop = asyncio.get_running_loop()
            self._reopen_timer = loop.call_later(down_for, self._reopen_due)

    def reopen(self) -> None:
        self._cancel_reopen()
        if self._pty is None:
            self.open()
            self._on_reopen()

    def _reopen_due(self) -> None:
        self._reopen_timer = None
        try:
            self.reopen()
        except OSError as exc:
            names = ", ".join(i.config.name for i in self.instruments)
            log.error("sim: cannot re-create the pseudo-terminal of %s: %s", names, exc)

    def _cancel_reopen(self) -> None:
        if self._reopen_timer is not None:
            self._reopen_timer.cancel()
            self._reopen_timer = None

    def write(self, data: bytes) -> bool:
        """Write to the agent; False if the port is closed (the bytes are lost)."""
        if self._pty is None:
            return False
        self._pty.write(data)
        self.written += len(data)
        return True

    def unread(self) -> int:
        return self._pty.unread() if self._pty is not None else 0

    def discard_unread(self) -> int:
        return self._pty.discard_unread() if self._pty is not None else 0

    def _request(self, raw: bytes) -> None:
        text = raw.decode(self.config.encoding, errors="replace")
        answer: tuple[_Instrument, Template] | None = None
        for inst in self.instruments:
            inst.received.append(text)
            inst.counters.requests += 1
            template = inst.replies.get(text)
            if template is not None:
                answer = (inst, template)
        if answer is None:
            for inst in self.instruments:
                inst.counters.unknown_requests += 1
            # Only an instrument alone on its line may have an unknown_reply (config.sim).
            first = self.instruments[0]
            if first.unknown is not None:
                answer = (first, first.unknown)
        if answer is not None:
            with contextlib.suppress(asyncio.QueueFull):  # an overrun: the request is lost
                self._pending.put_nowait(answer)

    async def answer_requests(self) -> None:
        """Reply to requests in the order they came, one at a time (one line, one talker)."""
        while True:
            inst, template = await self._pending.get()
            if inst.config.reply_delay > 0:
                await asyncio.sleep(inst.config.reply_delay)
            await inst.emit(template)

    def shutdown(self) -> None:
        self._cancel_reopen()
        if self._pty is not None:
            self._pty.close()
            self._pty = None


class _Instrument:
    """One instrument's templates, values, faults and records."""

    def __init__(
        self,
        config: SimInstrument,
        line: _Line,
        clock: Callable[[], float],
        now_ns: Callable[[], int],
    ) -> None:
        self.config = config
        self.line = line
        self.frames = [compile_template(text) for text in config.frames]
        self.replies = {c.request: compile_template(c.reply) for c in config.commands}
        self.unknown = (
            compile_template(config.unknown_reply) if config.unknown_reply is not None else None
        )
        self._clock = clock
        self._now_ns = now_ns
        self._constants: dict[str, Value] = {}
        self._waves: dict[str, Callable[[float], int | float]] = {}
        for name, value in config.values.items():
            if isinstance(value, str | int | float):
                self._constants[name] = value
            elif isinstance(value, ConstantWave):
                self._constants[name] = value.value
            else:
                at = value_function(value)
                assert at is not None  # only constants have no function of time
                self._waves[name] = at
        self._rng = random.Random(config.fault_seed)
        self._rules = [_Rule(f) for f in config.faults]
        self._terminator = config.terminator.encode(config.encoding)
        self.silent = False
        self.corrupt_pending = 0
        self.counters = InstrumentStats()
        # Bounded, so that `fieldlink sim run` can run for weeks.
        self.sent: deque[Sent] = deque(maxlen=_MAX_RECORDS)
        self.received: deque[str] = deque(maxlen=_MAX_RECORDS)

    def values_for(self, template: Template) -> dict[str, Value]:
        t = self._clock()
        out: dict[str, Value] = {}
        for name in template.names:
            at = self._waves.get(name)
            out[name] = at(t) if at is not None else self._constants[name]
        return out

    async def emit(self, template: Template) -> None:
        """Send one frame or reply, faults applied; returns once it is on the pty."""
        line = self.line
        if not line.is_open:
            return  # due while the port is down: lost, and not counted
        config, rng, counters = self.config, self._rng, self.counters
        for rule in self._rules:
            close = rule.fault.close_port
            if close is not None:
                rule.count += 1
                if rule.count % close.every == 0:
                    line.close(close.down_for)
                    return
        silenced = self.silent
        for rule in self._rules:
            chance = rule.fault.silence
            if chance is not None and _strikes(rule, chance, rng):
                silenced = True
        if silenced:
            counters.silenced += 1
            return
        for rule in self._rules:
            chance = rule.fault.garbage
            if chance is not None and _strikes(rule, chance, rng):
                noise = bytes(rng.choice(_NOISE_BYTES) for _ in range(rng.randint(1, 16)))
                if line.write(noise + self._terminator):
                    counters.garbage += 1
        corrupt = False
        if self.corrupt_pending > 0:
            self.corrupt_pending -= 1
            corrupt = True
        for rule in self._rules:
            how = rule.fault.bad_checksum
            if how is not None and _strikes(rule, how, rng):
                corrupt = True
        async with line.wire:
            time_ns = self._now_ns()
            values = self.values_for(template)
            body = template.render(values, time_ns)
            wire = encode_frame(
                config.checksum, body.encode(config.encoding), self._terminator, corrupt=corrupt
            )
            if config.emulate_timing:
                await asyncio.sleep(len(wire) * config.char_time)
            if not line.write(wire):
                return  # the port closed while the frame was on the wire
        counters.frames += 1
        if corrupt:
            counters.corrupted += 1
        self.sent.append(Sent(time_ns, body, values, wire, "bad_checksum" if corrupt else None))

    async def stream(self) -> None:
        """Bursts of frames on a fixed grid of ``interval`` from now."""
        loop = asyncio.get_running_loop()
        interval = self.config.interval
        start = loop.time()
        slot = 0
        unread_mark, written_mark = 0, 0
        while True:
            delay = start + slot * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # Nobody read a byte since the last burst: nobody has the port open, and a
            # serial line does not keep frames for a closed port.
            unread = self.line.unread()
            if unread > 0 and unread >= unread_mark + (self.line.written - written_mark):
                self.counters.discarded_bytes += self.line.discard_unread()
            unread_mark, written_mark = self.line.unread(), self.line.written
            for template in self.frames:
                await self.emit(template)
            # Late by more than an interval (a stalled loop): skip to the latest slot.
            slot = max(slot + 1, math.floor((loop.time() - start) / interval))

    def stats(self) -> InstrumentStats:
        return replace(self.counters)


def _nanoseconds(wall_clock: WallClock | None) -> Callable[[], int]:
    """A clock of nanoseconds since the epoch: ``wall_clock``'s, or the system's."""
    if wall_clock is None:
        return time.time_ns
    epoch_ns(wall_clock())  # a clock returning a naive datetime fails on entry, not later
    return lambda: epoch_ns(wall_clock())


class InstrumentRack(Served):
    """Serves every instrument of a :class:`SimConfig` while the ``async with`` block runs.

    ``clock`` returns seconds and drives the waveforms (default: monotonic time since the
    rack started). ``wall_clock`` returns the time ``{utc}`` shows, as seconds since the
    epoch or an aware datetime (default: the system clock); it is read once on entry, so a
    clock that returns something else fails there. ``on_reopen`` is called whenever a pty is
    re-created (its path changed), e.g. to rewrite a ports file.
    """

    def __init__(
        self,
        config: SimConfig,
        clock: Callable[[], float] | None = None,
        on_reopen: Callable[[], None] | None = None,
        wall_clock: WallClock | None = None,
    ) -> None:
        super().__init__(clock)
        self._config = config
        self._wall_clock = wall_clock
        self._on_reopen = on_reopen or (lambda: None)
        self._lines: list[_Line] = []
        self._instruments: dict[str, _Instrument] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def _open(self, clock: Clock) -> None:
        now_ns = _nanoseconds(self._wall_clock)
        lines: dict[str, _Line] = {}
        for config in self._config.instruments:
            line = lines.get(config.line_key())
            if line is None:
                line = lines[config.line_key()] = _Line(config, self._on_reopen)
                self._lines.append(line)
                try:
                    line.open()
                except OSError as exc:
                    where = f" with link {config.serial_link}" if config.serial_link else ""
                    raise SimStartError(
                        f"cannot open a pseudo-terminal{where} for {config.name}: "
                        f"{exc.strerror or exc}"
                    ) from exc
            inst = _Instrument(config, line, clock, now_ns)
            line.instruments.append(inst)
            self._instruments[config.name] = inst
        for inst in self._instruments.values():
            if inst.config.mode == "stream":
                self._spawn(inst.stream(), f"stream {inst.config.name}")
        for line in self._lines:
            if line.config.mode == "command":
                self._spawn(line.answer_requests(), f"replies on {line.path}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(work, name=name))

    async def _close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for line in self._lines:
            line.shutdown()
        self._lines = []
        for result in results:
            # A task that died (a bug) must not go unnoticed: surface it on exit.
            if isinstance(result, Exception):
                raise result

    def _get(self, name: str) -> _Instrument:
        try:
            return self._instruments[name]
        except KeyError:
            known = ", ".join(self._instruments) or "none"
            raise KeyError(f"no instrument named {name!r}; instruments: {known}") from None

    def names(self) -> list[str]:
        """Instrument names, in config order."""
        return list(self._instruments)

    def path(self, name: str) -> str:
        """The instrument's pty (``/dev/pts/N``); while its port is closed, the last one."""
        return self._get(name).line.path

    def link(self, name: str) -> str | None:
        """The configured ``serial_link``, or None."""
        return self._get(name).config.serial_link

    def is_open(self, name: str) -> bool:
        """Whether the instrument's port exists now (False while ``close_port`` holds)."""
        return self._get(name).line.is_open

    def emitted(self, name: str) -> list[Emission]:
        """Every frame or reply written so far, oldest first."""
        return [Emission(s.time_ns, s.body, s.values) for s in self._get(name).sent]

    def sent(self, name: str) -> list[Sent]:
        """:meth:`emitted` with the exact bytes and the fault of each."""
        return list(self._get(name).sent)

    def requests(self, name: str) -> list[str]:
        """Request lines received on the instrument's line, terminator stripped."""
        return list(self._get(name).received)

    def stats(self, name: str) -> InstrumentStats:
        return self._get(name).stats()

    def close_port(self, name: str) -> None:
        """Make the pty (of the instrument's whole line) vanish until :meth:`reopen_port`."""
        self._get(name).line.close()

    def reopen_port(self, name: str) -> None:
        """A new pty for a closed port, the symlink repointed; no-op if it is open."""
        self._get(name).line.reopen()

    def set_silent(self, name: str, silent: bool) -> None:
        """Stop (True) or resume (False) sending frames and replies."""
        self._get(name).silent = silent

    def corrupt_next(self, name: str, count: int = 1) -> None:
        """Send the next ``count`` frames or replies with a wrong checksum."""
        inst = self._get(name)
        if inst.config.checksum == "none":
            raise ValueError(f"instrument {name!r} sends no checksum (checksum: none)")
        inst.corrupt_pending += count

    def inject_garbage(self, name: str, data: bytes) -> None:
        """Write ``data`` to the instrument's pty now (between frames); lost if it is closed."""
        self._get(name).line.write(data)

    def describe(self) -> dict[str, dict[str, str]]:
        """Every instrument as the ports file lists it, in config order."""
        out: dict[str, dict[str, str]] = {}
        for name, inst in self._instruments.items():
            entry = {
                "serial_port": inst.line.path,
                "transport": "instrument",
                "mode": inst.config.mode,
            }
            if inst.config.serial_link is not None:
                entry["serial_link"] = inst.config.serial_link
            out[name] = entry
        return out
