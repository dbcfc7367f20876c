"""A serial device's compiled program: its commands (polled) or its frame decoder (stream).

Both modes turn one frame into readings the same way (:class:`FrameDecoder`): verify the
checksum, decode the text, find which entry reads it, parse the points. A frame that fails
any step becomes bad readings with the reason (``checksum mismatch``, ``parse error: ...``)
and is counted in :class:`SerialStats`; it never raises, so the next frame is read as usual.
Both programs hand their counters to the agent through ``frame_counts()``
(:class:`~drivers.base.FrameCounting`), which logs when a kind of trouble starts and stops.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from drivers.base import FrameCounts
from drivers.errors import DriverError
from drivers.serial.checksum import Checksum, ChecksumError
from drivers.serial.config import (
    FixedFraming,
    LineFraming,
    MarkerFraming,
    RegexFraming,
    SerialDevice,
)
from drivers.serial.framing import (
    Deframer,
    FixedDeframer,
    LineDeframer,
    MarkerDeframer,
    RegexDeframer,
)
from drivers.serial.parse import MessageParser
from wire.model import Group

log = logging.getLogger("fieldlink.drivers.serial")


def _marker(text: str) -> bytes:
    # One character = one byte: "\x02" is STX whatever the device's text encoding.
    return text.encode("latin-1")


def new_deframer(device: SerialDevice) -> Deframer:
    framing = device.framing
    if isinstance(framing, LineFraming):
        start = _marker(framing.start) if framing.start else None
        return LineDeframer(_marker(framing.delimiter), start, framing.max_length)
    if isinstance(framing, FixedFraming):
        return FixedDeframer(framing.length, _marker(framing.start) if framing.start else None)
    if isinstance(framing, MarkerFraming):
        return MarkerDeframer(_marker(framing.start), _marker(framing.end), framing.max_length)
    assert isinstance(framing, RegexFraming)
    return RegexDeframer(_marker(framing.pattern), framing.max_length)


#: Kinds of frame trouble as the agent's log names them (worded to follow a number).
CHECKSUM_FAILURES: Final = "checksum failures"
PARSE_FAILURES: Final = "parse failures"
NOISE_BYTES: Final = "noise bytes dropped"
OVERFLOW_BYTES: Final = "bytes of overlong frames dropped"
UNMATCHED_FRAMES: Final = "unmatched frames"


@dataclass
class SerialStats:
    """What happened to a device's frames; counters only grow."""

    frames: int = 0
    good_frames: int = 0
    checksum_errors: int = 0
    decode_errors: int = 0
    parse_errors: int = 0
    #: Frames no `frames` entry matched (stream): skipped, e.g. NMEA sentences not configured.
    unmatched_frames: int = 0
    #: Polled: bytes the link's deframer dropped while waiting for replies (a stream
    #: program's deframer counts its own).
    noise_bytes: int = 0
    overflow_bytes: int = 0
    #: Per kind of trouble, what the latest one looked like (for the agent's log).
    latest: dict[str, str] = field(default_factory=dict)

    def counts(self, noise_bytes: int, overflow_bytes: int, max_length: int | None) -> FrameCounts:
        latest = dict(self.latest)
        if noise_bytes:
            latest[NOISE_BYTES] = (
                "bytes outside any frame: line noise, or lines without the start marker"
            )
        if overflow_bytes:
            latest[OVERFLOW_BYTES] = (
                f"no frame end within max_length ({max_length} bytes): a wrong delimiter or "
                "framing, or max_length too small"
            )
        return FrameCounts(
            good=self.good_frames,
            trouble={
                CHECKSUM_FAILURES: self.checksum_errors,
                PARSE_FAILURES: self.parse_errors + self.decode_errors,
                NOISE_BYTES: noise_bytes,
                OVERFLOW_BYTES: overflow_bytes,
            },
            latest=latest,
            info={UNMATCHED_FRAMES: self.unmatched_frames} if self.unmatched_frames else {},
        )


def _max_length(device: SerialDevice) -> int | None:
    framing = device.framing
    return None if isinstance(framing, FixedFraming) else framing.max_length


@dataclass
class _Entry:
    parser: MessageParser
    match: re.Pattern[str] | None = None


@dataclass
class FrameDecoder:
    """Frame bytes → one Group per frame, good or bad; shared by both modes."""

    device: SerialDevice
    entries: list[_Entry]
    stats: SerialStats = field(default_factory=SerialStats)

    def __post_init__(self) -> None:
        d = self.device
        self._checksum = Checksum(d.checksum, _marker(d.checksum_separator), d.checksum_format)

    def group(self, ts_ns: int, entries: list[dict[str, object]]) -> Group:
        return Group(self.device.asset_name, self.device.name, ts_ns, entries)

    def decode(self, frame: bytes, ts_ns: int, only: _Entry | None = None) -> Group | None:
        """Readings of one frame; ``only``: the entry a polled reply belongs to. None when no
        entry matches (stream)."""
        self.stats.frames += 1
        try:
            body = self._checksum.verify(frame)
        except ChecksumError as exc:
            self.stats.checksum_errors += 1
            self.stats.latest[CHECKSUM_FAILURES] = str(exc)
            log.debug("device %s: %s in %r", self.device.name, exc, frame[:80])
            entry = only or self._matching(frame.decode(self.device.encoding, "replace"))
            targets = [entry] if entry is not None else self.entries
            return self.group(ts_ns, [e for t in targets for e in t.parser.fail(exc.reason)])
        try:
            text = body.decode(self.device.encoding)
        except UnicodeDecodeError as exc:
            self.stats.decode_errors += 1
            reason = f"parse error: not {self.device.encoding} text at byte {exc.start}"
            self.stats.latest[PARSE_FAILURES] = reason
            entry = only or self._matching(body.decode(self.device.encoding, "replace"))
            targets = [entry] if entry is not None else self.entries
            return self.group(ts_ns, [e for t in targets for e in t.parser.fail(reason)])
        entry = only or self._matching(text)
        if entry is None:
            self.stats.unmatched_frames += 1
            return None
        entries, errors = entry.parser.parse(text)
        if errors:
            self.stats.parse_errors += 1
            first = next(e for e in entries if "r" in e)
            self.stats.latest[PARSE_FAILURES] = f"point {first['p']}: {first['r']}"
            log.debug("device %s: parse error in %r", self.device.name, text[:80])
        else:
            self.stats.good_frames += 1
        return self.group(ts_ns, entries)

    def _matching(self, text: str) -> _Entry | None:
        for entry in self.entries:
            if entry.match is None or entry.match.search(text):
                return entry
        return None


@dataclass(frozen=True, eq=False)
class SerialCommand:
    """One request of a polled device: what to write, and how to find its reply."""

    device: SerialDevice
    index: int
    payload: bytes
    #: Seconds to wait for the reply; None: the bus's timeout.
    timeout: float | None
    reply_match: re.Pattern[str] | None = None
    #: The program's counters, where the link adds what its deframer dropped.
    stats: SerialStats = field(default_factory=SerialStats)

    def new_deframer(self) -> Deframer:
        return new_deframer(self.device)

    def count_dropped(self, deframer: Deframer) -> None:
        """Add what ``deframer`` dropped while waiting for this command's reply."""
        self.stats.noise_bytes += deframer.noise_bytes
        self.stats.overflow_bytes += deframer.overflow_bytes

    def accepts(self, frame: bytes) -> bool:
        """Whether ``frame`` can be this command's reply (its ``reply_match``, if any)."""
        pattern = self.reply_match
        if pattern is None:
            return True
        return pattern.search(frame.decode(self.device.encoding, "replace")) is not None

    @property
    def text(self) -> str:
        return self.device.commands[self.index].send if self.device.commands else ""


class PolledProgram:
    """A polled device for the bus worker: one request per command, one reply frame each."""

    def __init__(self, device: SerialDevice) -> None:
        commands = device.commands or []
        self._entries = [_Entry(MessageParser(c)) for c in commands]
        self.decoder = FrameDecoder(device, self._entries)
        self._requests = [
            SerialCommand(
                device,
                i,
                (c.send + device.command_terminator).encode(device.encoding),
                device.timeout,
                re.compile(c.reply_match) if c.reply_match else None,
                self.decoder.stats,
            )
            for i, c in enumerate(commands)
        ]
        self._max_length = _max_length(device)

    @property
    def stats(self) -> SerialStats:
        return self.decoder.stats

    def frame_counts(self) -> FrameCounts:
        stats = self.stats
        return stats.counts(stats.noise_bytes, stats.overflow_bytes, self._max_length)

    @property
    def requests(self) -> Sequence[SerialCommand]:
        return self._requests

    def decode(self, request: SerialCommand, answer: bytes, ts_ns: int) -> Group:
        group = self.decoder.decode(answer, ts_ns, self._entries[request.index])
        assert group is not None  # a polled reply always has its entry
        return group

    def fail(self, request: SerialCommand, reason: str, ts_ns: int) -> Group:
        return self.decoder.group(ts_ns, self._entries[request.index].parser.fail(reason))

    def refine(self, request: SerialCommand, error: DriverError) -> Sequence[SerialCommand] | None:
        return None


class StreamProgram:
    """A streaming device for the stream worker: bytes in, one Group per frame out."""

    def __init__(self, device: SerialDevice) -> None:
        self.device = device
        entries = [
            _Entry(MessageParser(f), re.compile(f.match) if f.match else None)
            for f in device.frames or []
        ]
        self.decoder = FrameDecoder(device, entries)
        self._deframer = new_deframer(device)
        self._points = [p.name for f in device.frames or [] for p in f.points]

    @property
    def stats(self) -> SerialStats:
        return self.decoder.stats

    @property
    def noise_bytes(self) -> int:
        return self._deframer.noise_bytes

    def frame_counts(self) -> FrameCounts:
        deframer = self._deframer
        return self.stats.counts(
            deframer.noise_bytes, deframer.overflow_bytes, _max_length(self.device)
        )

    @property
    def stale_after(self) -> float:
        return self.device.effective_stale_after

    @property
    def interval(self) -> float:
        return self.device.interval

    @property
    def points(self) -> Sequence[str]:
        return self._points

    def feed(self, data: bytes, ts_ns: int) -> list[Group]:
        """Readings of the frames ``data`` completes, stamped with its arrival time.

        Frames completed by the same read (the agent fell behind, or a burst arrived at once)
        get ``ts_ns`` plus their index in nanoseconds: the order they came in, and never two
        samples of one point at the same time (InfluxDB would keep only the last).
        """
        groups = []
        for index, frame in enumerate(self._deframer.feed(data)):
            group = self.decoder.decode(frame, ts_ns + index)
            if group is not None:
                groups.append(group)
        return groups

    def stale(self, reason: str, ts_ns: int) -> Group:
        entries = [e for entry in self.decoder.entries for e in entry.parser.fail(reason)]
        return self.decoder.group(ts_ns, entries)

    def reset(self) -> None:
        self._deframer.reset()
