"""A serial line (or an RTU-over-TCP connection): one byte stream, RTU or ASCII frames, and
the units listening on it.

:class:`LineServer` is independent of where the bytes come from: a pseudo-terminal
(``pty.py``) or a TCP connection (``tcp.py``) feeds it what it reads and gives it a function
to write with. Like devices on RS-485 it

* answers only requests addressed to one of its units; requests to other unit ids are
  ignored, unit 0 is a broadcast (writes are applied by every unit, nobody answers);
* drops a frame with a bad CRC/LRC without answering, and counts it;
* with ``timing``, sends an answer only after the time its bytes take on the wire;
* counts *collisions* (a request arrives while an answer is still pending or being sent)
  and *short gaps* (an RTU request starts less than 3.5 characters after the previous
  answer ended), so tests can show that an agent keeps the line's discipline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from sim import ascii as ascii_framing
from sim import rtu
from sim.faults import Reply

#: Answers one request PDU for one unit: the answer bytes, or a Reply (faults).
UnitHandler = Callable[[bytes], bytes | Reply]
Framing = Literal["rtu", "ascii"]

#: Quiet time after which an RTU request of unknown length (or leftover noise) is taken as
#: complete: on a pty or TCP the real 3.5 characters are too short to rely on.
_SILENCE: Final = 0.05
_WRITES: Final = frozenset({0x05, 0x06, 0x0F, 0x10})


@dataclass
class LineStats:
    """Counters of one line (all connections of an RTU-over-TCP listener)."""

    #: Frames received with a correct checksum, for any unit id.
    frames: int = 0
    #: Frames dropped because their CRC (RTU) or LRC / hex digits (ASCII) were wrong.
    crc_errors: int = 0
    #: Requests that arrived while an answer was still pending or on the wire.
    collisions: int = 0
    #: RTU requests that started less than 3.5 character times after the last answer.
    short_gaps: int = 0
    #: Frames for unit ids nobody on this line serves (ignored, as on a real bus).
    foreign: int = 0
    #: Broadcast requests (unit 0).
    broadcasts: int = 0


class Outbox:
    """Sends frames in order, each no earlier than its due time (answers with latency)."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._queue: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_due = 0.0

    @property
    def busy_until(self) -> float:
        """Loop time at which the last queued frame goes out (past if nothing is queued)."""
        return self._last_due if self._queue else float("-inf")

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def send(self, frame: bytes, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._queue:
            due = max(due, self._last_due)
        self._last_due = due
        if delay <= 0 and not self._queue:
            self._write(frame)
            return
        self._queue.append((due, frame))
        if self._timer is None:
            self._timer = loop.call_at(self._queue[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._queue and self._queue[0][0] <= now:
            self._write(self._queue.popleft()[1])
        if self._queue:
            self._timer = loop.call_at(self._queue[0][0], self._flush)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class LineServer:
    """The units of one line answering the frames of one byte stream."""

    def __init__(
        self,
        framing: Framing,
        units: Mapping[int, UnitHandler],
        stats: LineStats,
        write: Callable[[bytes], None],
        *,
        drop: Callable[[], None] | None = None,
        char_time: float = 0.0,
        frame_gap: float = 0.0,
        timing: bool = False,
    ) -> None:
        self._framing = framing
        self._units = units
        self._stats = stats
        self._outbox = Outbox(write)
        self._drop = drop
        self._char_time = char_time if timing else 0.0
        self._frame_gap = frame_gap
        self._buffer = b""
        self._silence: asyncio.TimerHandle | None = None
        #: Loop time the last answer finished going out.
        self._last_answer_end = float("-inf")

    def close(self) -> None:
        self._outbox.close()
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None

    def feed(self, data: bytes) -> None:
        """Bytes read from the line."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._buffer:
            # The first byte of a new frame: is the line free, and was it quiet long enough?
            if self._outbox.pending:
                self._stats.collisions += 1
            elif now - self._last_answer_end < self._frame_gap:
                self._stats.short_gaps += 1
        self._buffer += data
        if self._framing == "rtu":
            self._split_rtu()
        else:
            self._split_ascii()
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None
        if self._buffer:
            self._silence = loop.call_later(_SILENCE, self._quiet)

    def _split_rtu(self) -> None:
        while self._buffer:
            size = rtu.request_size(self._buffer)
            if size is None or size == rtu.UNKNOWN or len(self._buffer) < size:
                return  # more bytes, or silence, will tell
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            if not rtu.check(frame):
                # A device cannot find the next frame in garbage; it waits for silence.
                self._stats.crc_errors += 1
                self._buffer = b""
                return
            self._handle(frame[0], frame[1:-2])

    def _split_ascii(self) -> None:
        frames, self._buffer, _noise = ascii_framing.split(self._buffer)
        for frame in frames:
            try:
                unit, pdu = ascii_framing.decode(frame)
            except ascii_framing.BadFrame:
                self._stats.crc_errors += 1
                continue
            self._handle(unit, pdu)

    def _quiet(self) -> None:
        """The line went quiet with bytes left: an RTU frame of unknown length, or noise."""
        self._silence = None
        frame, self._buffer = self._buffer, b""
        if self._framing == "rtu" and rtu.check(frame):
            self._handle(frame[0], frame[1:-2])
        elif frame:
            self._stats.crc_errors += 1

    def _handle(self, unit: int, pdu: bytes) -> None:
        stats = self._stats
        stats.frames += 1
        if unit == 0:
            stats.broadcasts += 1
            if pdu and pdu[0] in _WRITES:
                for each in self._units.values():
                    each(pdu)
            return
        handler = self._units.get(unit)
        if handler is None:
            stats.foreign += 1
            return
        answer = handler(pdu)
        delay, corrupt = 0.0, False
        if type(answer) is not bytes:
            assert isinstance(answer, Reply)
            if answer.drop and self._drop is not None:
                self._buffer = b""
                self._drop()
                return
            if answer.pdu is None:
                return
            delay, corrupt, answer = answer.delay, answer.corrupt, answer.pdu
        encode = rtu.encode if self._framing == "rtu" else ascii_framing.encode
        frame = encode(unit, answer, corrupt=corrupt)
        delay += len(frame) * self._char_time
        loop = asyncio.get_running_loop()
        self._last_answer_end = max(loop.time() + delay, self._outbox.busy_until)
        self._outbox.send(frame, delay)
