"""Cutting a byte stream into frames, whatever size the reads come in.

A serial port hands over bytes as they happen to arrive: half a frame, three frames and a
half, noise from a cable being plugged in. Each deframer here is a small state machine: it is
fed chunks (:meth:`Deframer.feed`) and returns every frame completed so far, keeping the
incomplete tail for the next chunk. Bytes that belong to no frame are dropped and counted in
``noise_bytes``; a frame, or a buffer, that grows past ``max_length`` without ending is dropped
and counted in ``overflow_bytes``, so a line that never sends a delimiter cannot exhaust
memory (and a wrong delimiter shows as overflow, not as noise).

Frames are returned without their delimiters and markers:

=============  ====================================================================
``line``       up to each ``delimiter`` (default ``\\n``); ``\\r`` and ``\\n`` around a line
               are stripped, empty lines skipped. With ``start`` (e.g. ``$``) a line is
               taken from its last ``start`` on; what precedes is noise, a line without
               it is noise.
``fixed``      ``length`` bytes each; with ``start``, a frame is ``start`` and the bytes
               after it, ``length`` in all, so the deframer resynchronises after noise.
``markers``    from ``start`` to ``end`` (e.g. STX ``\\x02`` … ETX ``\\x03``); a second
               ``start`` before ``end`` drops the truncated frame before it.
``regex``      each match of a bytes pattern (its group ``frame`` if it has one, else the
               whole match); bytes before a match are noise. The pattern must mark the
               frame's end (a terminator), or a frame that has arrived only in part matches.
=============  ====================================================================
"""

from __future__ import annotations

import re
from typing import Protocol


class Deframer(Protocol):
    #: Bytes outside any frame (line noise, lines without the start marker), dropped.
    noise_bytes: int
    #: Bytes of frames that grew past ``max_length`` without ending, dropped.
    overflow_bytes: int

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data`` (with what was buffered before), in order."""
        ...

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect or before a new request)."""
        ...


_LINE_TRIM = b"\r\n"


class _Buffered:
    """What every deframer keeps: the bytes not yet cut into frames, and the counts of those
    dropped. Its helpers drop bytes from the front of the buffer and count them."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.noise_bytes = 0
        self.overflow_bytes = 0

    def reset(self) -> None:
        self._buffer.clear()

    def _to_start(self, start: bytes) -> bool:
        """Drop the noise before the first ``start`` marker in the buffer; False if there is
        none (then a tail that could be the beginning of a marker is kept)."""
        buffer = self._buffer
        at = buffer.find(start)
        if at < 0:
            at = max(0, len(buffer) - len(start) + 1)
        self.noise_bytes += at
        del buffer[:at]
        return buffer.startswith(start)

    def _overflow_keeping(self, keep: int) -> None:
        """Drop all but the last ``keep`` buffered bytes, counted as overflow."""
        drop = max(0, len(self._buffer) - keep)
        self.overflow_bytes += drop
        del self._buffer[:drop]


class LineDeframer(_Buffered):
    def __init__(
        self, delimiter: bytes = b"\n", start: bytes | None = None, max_length: int = 4096
    ) -> None:
        if not delimiter:
            raise ValueError("a line delimiter cannot be empty")
        super().__init__()
        self._delimiter = delimiter
        self._start = start or None
        self._max = max_length
        #: The line in progress was dropped as too long: its rest, up to the delimiter, goes too
        #: (without a start marker it would otherwise come out as a bogus frame).
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buffer, delimiter = self._buffer, self._delimiter
        begin = 0
        while (end := buffer.find(delimiter, begin)) >= 0:
            line = bytes(buffer[begin:end])
            begin = end + len(delimiter)
            if self._skipping:
                self._skipping = False
                self.overflow_bytes += len(line)
                continue
            frame = self._take(line)
            if frame:
                frames.append(frame)
        del buffer[:begin]
        if len(buffer) > self._max:
            self._overflow()
        return frames

    def _take(self, line: bytes) -> bytes | None:
        line = line.strip(_LINE_TRIM)
        if not line:
            return None  # an empty line (a bare CR LF) is no frame and no noise
        if self._start is not None:
            at = line.rfind(self._start)
            if at < 0:
                self.noise_bytes += len(line)
                return None
            self.noise_bytes += at
            line = line[at + len(self._start) :].strip(_LINE_TRIM)
        if len(line) > self._max:
            self.overflow_bytes += len(line)
            return None
        return line or None

    def _overflow(self) -> None:
        buffer = self._buffer
        keep = 0
        if self._start is not None:
            at = buffer.rfind(self._start)
            # A frame may have begun at the last start marker: keep it if it still fits.
            if at >= 0 and len(buffer) - at <= self._max:
                keep = len(buffer) - at
        else:
            self._skipping = True
        self._overflow_keeping(keep)

    def reset(self) -> None:
        super().reset()
        self._skipping = False


class FixedDeframer(_Buffered):
    def __init__(self, length: int, start: bytes | None = None) -> None:
        start = start or None
        if length < 1 or (start is not None and length <= len(start)):
            raise ValueError("a fixed frame must be longer than its start marker")
        super().__init__()  # overflow_bytes stays 0: a fixed frame cannot overflow
        self._length = length
        self._start = start

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        buffer, start, length = self._buffer, self._start, self._length
        frames: list[bytes] = []
        while True:
            if start is not None and not self._to_start(start):
                break
            if len(buffer) < length:
                break
            skip = len(start) if start is not None else 0
            frames.append(bytes(buffer[skip:length]))
            del buffer[:length]
        return frames


class MarkerDeframer(_Buffered):
    def __init__(self, start: bytes, end: bytes, max_length: int = 4096) -> None:
        if not start or not end:
            raise ValueError("start and end markers cannot be empty")
        super().__init__()
        self._start = start
        self._end = end
        self._max = max_length

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        buffer, start, end = self._buffer, self._start, self._end
        frames: list[bytes] = []
        while self._to_start(start):
            content = len(start)
            stop = buffer.find(end, content)
            restart = buffer.find(start, content)
            if restart >= 0 and (stop < 0 or restart < stop):
                # A new frame began before this one ended: this one was cut off.
                self.noise_bytes += restart
                del buffer[:restart]
                continue
            if stop < 0:
                if len(buffer) > self._max:
                    self._overflow_keeping(0)  # one frame, already too long: all of it
                break
            frames.append(bytes(buffer[content:stop]))
            del buffer[: stop + len(end)]
        return frames


class RegexDeframer(_Buffered):
    def __init__(self, pattern: bytes, max_length: int = 4096) -> None:
        super().__init__()
        self._pattern = re.compile(pattern, re.DOTALL)
        self._group: int | str = "frame" if "frame" in self._pattern.groupindex else 0
        self._max = max_length

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        buffer = self._buffer
        frames: list[bytes] = []
        begin = 0
        while (match := self._pattern.search(buffer, begin)) is not None and match.end() > begin:
            self.noise_bytes += match.start() - begin
            frames.append(bytes(match.group(self._group)))
            begin = match.end()
        del buffer[:begin]
        # A match may begin anywhere in what is left: keep the newest max_length bytes.
        self._overflow_keeping(self._max)
        return frames
