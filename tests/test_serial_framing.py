"""Deframers: every frame comes out exactly once whatever size the reads come in, and noise
between frames is dropped (and counted) without costing a frame."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.checksum import Checksum
from drivers.serial.framing import (
    Deframer,
    FixedDeframer,
    LineDeframer,
    MarkerDeframer,
    RegexDeframer,
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given positions (any number, any order, duplicates allowed)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(deframer: Deframer, chunks: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for chunk in chunks:
        frames.extend(deframer.feed(chunk))
    return frames


def text(alphabet: str, min_size: int = 1, max_size: int = 40) -> st.SearchStrategy[bytes]:
    return st.text(alphabet, min_size=min_size, max_size=max_size).map(lambda s: s.encode())


PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
BODY = PRINTABLE.replace("$", "").replace("*", "").replace("!", "")
#: Noise the simulator sends: any byte except CR, LF, $ and *.
NOISE_BYTES = st.binary(max_size=16).map(lambda b: bytes(x for x in b if x not in b"\r\n$*"))
CUTS = st.lists(st.integers(min_value=0), max_size=30)


# -- line --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(text(PRINTABLE.replace("\n", "")), max_size=10), cuts=CUTS)
def test_lines_split_across_any_reads(frames: list[bytes], cuts: list[int]) -> None:
    frames = [f.strip(b"\r\n") for f in frames if f.strip(b"\r\n")]
    wire = b"".join(f + b"\r\n" for f in frames)
    assert feed_all(LineDeframer(), chunked(wire, cuts)) == frames


@settings(max_examples=300, deadline=None)
@given(
    sentences=st.lists(st.tuples(text(BODY, max_size=60), NOISE_BYTES, st.booleans()), max_size=8),
    cuts=CUTS,
)
def test_nmea_lines_with_noise_between_them(
    sentences: list[tuple[bytes, bytes, bool]], cuts: list[int]
) -> None:
    """Noise before a sentence on its line, or as a line of its own (what the simulator's
    garbage fault sends), never hides the sentence and never becomes a frame."""
    nmea = Checksum("nmea")
    wire = b""
    noise = 0
    for body, garbage, own_line in sentences:
        wire += garbage + (b"\r\n" if own_line else b"") + nmea.append(body) + b"\r\n"
        noise += len(garbage)
    deframer = LineDeframer(b"\n", start=b"$")
    frames = feed_all(deframer, chunked(wire, cuts))
    assert [nmea.verify(f) for f in frames] == [body for body, _, _ in sentences]
    assert deframer.noise_bytes == noise


def test_a_line_longer_than_max_length_is_dropped_as_overflow() -> None:
    deframer = LineDeframer(b"\n", max_length=10)
    assert deframer.feed(b"x" * 25) == []
    assert (deframer.overflow_bytes, deframer.noise_bytes) == (25, 0)
    assert deframer.feed(b"\nok\n") == [b"ok"]


def test_the_rest_of_a_dropped_line_is_not_taken_for_a_frame() -> None:
    # A wrong delimiter or a runaway line: its tail, once the delimiter comes, is no frame.
    deframer = LineDeframer(b"\n", max_length=10)
    assert deframer.feed(b"y" * 11) == []
    assert deframer.feed(b"tail\nok\n") == [b"ok"]
    assert deframer.overflow_bytes == 15
    # Arriving whole in one read, an overlong line is dropped the same way.
    assert deframer.feed(b"z" * 12 + b"\nok\n") == [b"ok"]
    assert deframer.overflow_bytes == 27


def test_cr_only_lines_and_empty_lines() -> None:
    deframer = LineDeframer(b"\r")
    assert deframer.feed(b"A=1\r\rB=2\r\nC") == [b"A=1", b"B=2"]
    assert deframer.feed(b"=3\r") == [b"C=3"]
    assert deframer.noise_bytes == 0


# -- fixed -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.binary(min_size=7, max_size=7), max_size=10),
    noise=st.lists(st.binary(max_size=12), max_size=10),
    cuts=CUTS,
)
def test_fixed_frames_with_a_start_marker_resync_after_noise(
    frames: list[bytes], noise: list[bytes], cuts: list[int]
) -> None:
    # Bodies and noise avoid the start byte, so a frame is found only at its own start.
    frames = [f.replace(b"\x02", b"\x00") for f in frames]
    gaps = [n.replace(b"\x02", b"") for n in noise] + [b""] * len(frames)
    wire = b"".join(gap + b"\x02" + f for gap, f in zip(gaps, frames, strict=False))
    deframer = FixedDeframer(8, start=b"\x02")
    assert feed_all(deframer, chunked(wire, cuts)) == frames
    assert deframer.noise_bytes == sum(len(g) for g in gaps[: len(frames)])


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.binary(min_size=5, max_size=5), max_size=10), cuts=CUTS)
def test_fixed_frames_without_marker(frames: list[bytes], cuts: list[int]) -> None:
    assert feed_all(FixedDeframer(5), chunked(b"".join(frames), cuts)) == frames


# -- markers -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=30), max_size=8),
    noise=st.lists(st.binary(max_size=10), max_size=8),
    cuts=CUTS,
)
def test_stx_etx_frames_with_noise_between(
    frames: list[bytes], noise: list[bytes], cuts: list[int]
) -> None:
    def clean(b: bytes) -> bytes:
        return b.replace(b"\x02", b"").replace(b"\x03", b"")

    frames = [clean(f) for f in frames]
    gaps = [clean(n) for n in noise] + [b""] * len(frames)
    wire = b"".join(gap + b"\x02" + f + b"\x03" for gap, f in zip(gaps, frames, strict=False))
    deframer = MarkerDeframer(b"\x02", b"\x03")
    assert feed_all(deframer, chunked(wire, cuts)) == frames
    assert deframer.noise_bytes == sum(len(g) for g in gaps[: len(frames)])


def test_a_frame_cut_off_by_a_new_start_is_dropped() -> None:
    deframer = MarkerDeframer(b"\x02", b"\x03")
    assert deframer.feed(b"\x02trunc\x02whole\x03") == [b"whole"]
    assert deframer.noise_bytes == len(b"\x02trunc")


def test_a_marker_frame_longer_than_max_length_is_dropped_as_overflow() -> None:
    deframer = MarkerDeframer(b"<", b">", max_length=8)
    # Within the limit the frame in progress is kept, across reads.
    assert deframer.feed(b"xx<aaaa") == []
    assert (deframer.overflow_bytes, deframer.noise_bytes) == (0, 2)
    # Past it, the whole frame so far goes.
    assert deframer.feed(b"aaaaa") == []
    assert (deframer.overflow_bytes, deframer.noise_bytes) == (10, 2)
    # Its tail has no start marker: noise; the next frame comes out whole.
    assert deframer.feed(b"b><ok>") == [b"ok"]
    assert (deframer.overflow_bytes, deframer.noise_bytes) == (10, 4)


# -- regex -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(min_value=-(10**6), max_value=10**6), max_size=10),
    noise=st.lists(text("abcxyz \t", min_size=0, max_size=10), max_size=10),
    cuts=CUTS,
)
def test_regex_frames_split_across_reads_with_noise(
    values: list[int], noise: list[bytes], cuts: list[int]
) -> None:
    gaps = noise + [b""] * len(values)
    frames = [f"W:{v:+d}kg".encode() for v in values]
    wire = b"".join(g + f + b";" for g, f in zip(gaps, frames, strict=False))
    deframer = RegexDeframer(rb"(?P<frame>W:[+-]\d+kg);")
    assert feed_all(deframer, chunked(wire, cuts)) == frames
    assert deframer.noise_bytes == sum(len(g) for g in gaps[: len(values)])


def test_regex_keeps_only_the_newest_max_length_bytes_without_a_match() -> None:
    deframer = RegexDeframer(rb"<[^>]*>", max_length=8)
    assert deframer.feed(b"<" + b"a" * 7) == []
    assert deframer.overflow_bytes == 0
    # 13 bytes and no match: the oldest 5 go, the newest 8 stay (a match may start there).
    assert deframer.feed(b"a" * 5) == []
    assert (deframer.overflow_bytes, deframer.noise_bytes) == (5, 0)
    assert deframer.feed(b"><ok>") == [b"<ok>"]
    assert (deframer.overflow_bytes, deframer.noise_bytes) == (5, 9)


# -- all ---------------------------------------------------------------------------------


def test_reset_forgets_a_partial_frame() -> None:
    makers: list[Callable[[], Deframer]] = [
        lambda: LineDeframer(),
        lambda: FixedDeframer(4, b"#"),
        lambda: MarkerDeframer(b"<", b">"),
        lambda: RegexDeframer(rb"<[^>]*>"),
    ]
    partial = [b"half", b"#ab", b"<ab", b"<ab"]
    whole = [b"one\n", b"#xyz", b"<xy>", b"<xy>"]
    expected = [b"one", b"xyz", b"xy", b"<xy>"]
    for make, part, full, frame in zip(makers, partial, whole, expected, strict=True):
        deframer = make()
        assert deframer.feed(part) == []
        deframer.reset()
        assert deframer.feed(full) == [frame]
