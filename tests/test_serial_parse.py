"""From frame bytes to readings: checksum, text, parse, type, scale, unit; every failure is a
bad reading with its reason and a counter, and the next frame is read as usual."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.edge import validate_edge
from drivers.registry import DriverRegistry
from drivers.serial.checksum import Checksum
from drivers.serial.config import SerialDevice
from drivers.serial.program import PolledProgram, StreamProgram
from wire.model import Group, Quality, Reading

GGA = "GPGGA,123519.00,4807.0380,N,01131.0000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123519.00,A,4807.0380,N,01131.0000,E,022.4,084.4,230394,003.1,W"


def device(**fields: Any) -> SerialDevice:
    doc = {
        "kind": "edge",
        "agent": {"id": "gw", "site": "lab"},
        "buses": [{"name": "b", "driver": "serial", "serial_port": "/dev/null"}],
        "devices": [{"name": "d", "bus": "b", **fields}],
    }
    config = validate_edge(doc, "test", env={}, registry=DriverRegistry())
    result = config.devices[0]
    assert isinstance(result, SerialDevice)
    return result


def gps(**extra: Any) -> StreamProgram:
    return StreamProgram(
        device(
            mode="stream",
            checksum="nmea",
            framing={"type": "line", "start": "$"},
            frames=[
                {
                    "match": "^GPGGA,",
                    "parse": {"type": "fields"},
                    "points": [
                        {"name": "time", "field": 1, "type": "string"},
                        {"name": "lat", "field": 2, "unit": "ddmm.mmmm"},
                        {"name": "fix", "field": 6, "type": "int"},
                        {"name": "sats", "field": 7, "type": "int"},
                        {"name": "alt", "field": 9, "unit": "m"},
                    ],
                },
                {
                    "match": "^GPRMC,",
                    "parse": {"type": "fields"},
                    "points": [
                        {"name": "speed", "field": 7, "unit": "kn", "scale": 0.514444},
                        {"name": "course", "field": 8, "unit": "deg"},
                    ],
                },
            ],
            **extra,
        )
    )


def readings(groups: list[Group]) -> dict[str, Reading]:
    return {r.point: r for g in groups for r in g.readings()}


def nmea(body: str) -> bytes:
    return Checksum("nmea").append(body.encode()) + b"\r\n"


def test_nmea_sentences_become_typed_readings_with_units_and_the_arrival_time() -> None:
    program = gps()
    groups = program.feed(nmea(GGA) + nmea(RMC), 1_700_000_000_123_456_789)
    got = readings(groups)
    assert {p: (r.value, r.unit) for p, r in got.items()} == {
        "time": ("123519.00", None),
        "lat": (4807.038, "ddmm.mmmm"),
        "fix": (1, None),
        "sats": (8, None),
        "alt": (545.4, "m"),
        "speed": (11.5235456, "kn"),  # 22.4 kn x 0.514444, exactly as a decimal
        "course": (84.4, "deg"),
    }
    assert isinstance(got["sats"].value, int)
    assert all(r.quality is Quality.GOOD for r in got.values())
    # Two frames completed by one read: its arrival time, plus their order in nanoseconds.
    assert [g.t for g in groups] == [1_700_000_000_123_456_789, 1_700_000_000_123_456_790]
    assert program.stats.good_frames == 2


def test_a_bad_checksum_is_a_bad_reading_and_the_next_line_is_read() -> None:
    program = gps()
    good = nmea(GGA)
    wrong = int(good[-4:-2], 16) ^ 0xFF  # every bit of the checksum inverted
    corrupt = good[:-4] + f"{wrong:02X}".encode() + b"\r\n"
    groups = program.feed(corrupt + good, 1)
    assert len(groups) == 2
    bad, good = groups[0].readings(), groups[1].readings()
    assert {r.point for r in bad} == {"time", "lat", "fix", "sats", "alt"}
    assert all(r.quality is Quality.BAD and r.reason == "checksum mismatch" for r in bad)
    assert all(r.quality is Quality.GOOD for r in good)
    assert program.stats.checksum_errors == 1
    assert program.stats.good_frames == 1


def test_noise_lines_and_unconfigured_sentences_are_counted_not_reported() -> None:
    program = gps()
    groups = program.feed(b"\x00\x13noise\r\n" + nmea("GPGSV,3,1,11") + b"xx" + nmea(GGA), 5)
    assert [g.readings()[0].point for g in groups] == ["time"]
    assert program.stats.unmatched_frames == 1
    assert program.noise_bytes == len(b"\x00\x13noise") + 2


def test_a_frame_split_across_reads_keeps_the_time_it_was_completed() -> None:
    program = gps()
    wire = nmea(GGA)
    assert program.feed(wire[:20], 100) == []
    (group,) = program.feed(wire[20:], 200)
    assert group.t == 200


def test_an_empty_or_malformed_field_costs_only_its_point() -> None:
    program = gps()
    broken = GGA.replace(",08,", ",,").replace("545.4", "5x5")
    got = readings(program.feed(nmea(broken), 1))
    assert got["lat"].value == 4807.038
    assert got["sats"].quality is Quality.BAD
    assert got["sats"].reason == "parse error: field 7 is empty"
    assert got["alt"].reason == "parse error: '5x5' is not a float"
    assert program.stats.parse_errors == 1


def test_missing_fields_say_which() -> None:
    program = gps()
    got = readings(program.feed(nmea("GPGGA,123519.00,4807.0380"), 1))
    assert got["lat"].value == 4807.038
    assert got["alt"].reason == "parse error: field 9 is missing (the frame has 3)"


def keyvalue_logger() -> StreamProgram:
    return StreamProgram(
        device(
            mode="stream",
            interval=5,
            frames=[
                {
                    "parse": {"type": "keyvalue"},
                    "points": [
                        {"name": "flow", "unit": "m3/h"},
                        {"name": "level", "unit": "m", "scale": 100, "offset": -1},
                        {"name": "pump", "type": "bool"},
                        {"name": "stamp", "key": "ts", "type": "string"},
                    ],
                }
            ],
        )
    )


def test_key_value_pairs() -> None:
    line = b"ts=2026-11-29T22:04:05.123456Z flow=12.41 level=1.732 pump=1\n"
    got = readings(keyvalue_logger().feed(line, 1))
    assert {p: r.value for p, r in got.items()} == {
        "flow": 12.41,
        "level": 172.2,  # 1.732 x 100 - 1, exactly
        "pump": True,
        "stamp": "2026-11-29T22:04:05.123456Z",
    }
    missing = readings(keyvalue_logger().feed(b"flow=1 pump=maybe\n", 1))
    assert missing["level"].reason == "parse error: key 'level' is missing"
    assert missing["pump"].reason == "parse error: 'maybe' is not true/false"
    assert missing["flow"].value == 1.0


@pytest.mark.parametrize(
    ("raw", "scale", "offset", "expected"),
    [
        ("234", 0.1, 0.0, 23.4),
        ("4998", 0.01, 0.0, 49.98),
        ("-12.5", 1.0, 0.0, -12.5),
        ("7", 0.1, 273.15, 273.85),
        ("1e3", 1.0, 0.0, 1000.0),
    ],
)
def test_scaled_values_are_the_decimal_result(
    raw: str, scale: float, offset: float, expected: float
) -> None:
    program = StreamProgram(
        device(
            mode="stream",
            frames=[
                {
                    "parse": {"type": "regex", "pattern": r"V=(?P<v>\S+)"},
                    "points": [{"name": "v", "scale": scale, "offset": offset}],
                }
            ],
        )
    )
    (group,) = program.feed(f"V={raw}\n".encode(), 1)
    assert group.readings()[0].value == expected


def test_regex_that_does_not_match_fails_every_point_of_the_frame() -> None:
    program = StreamProgram(
        device(
            mode="stream",
            frames=[
                {
                    "parse": {"type": "regex", "pattern": r"T=(?P<temp>-?\d+\.\d+)"},
                    "points": [{"name": "temp", "unit": "degC"}],
                }
            ],
        )
    )
    (group,) = program.feed(b"ERR 42\n", 1)
    (reading,) = group.readings()
    assert reading.reason == "parse error: the pattern does not match 'ERR 42'"
    assert reading.unit == "degC"


def test_int_points_refuse_fractions_and_nan() -> None:
    program = StreamProgram(
        device(
            mode="stream",
            frames=[
                {
                    "parse": {"type": "fields", "separator": ";"},
                    "points": [
                        {"name": "a", "field": 0, "type": "int"},
                        {"name": "b", "field": 1},
                        {"name": "c", "field": 2, "type": "int"},
                    ],
                }
            ],
        )
    )
    got = readings(program.feed(b"1.5;nan;-7\n", 1))
    assert got["a"].reason == "parse error: '1.5' is not an int"
    assert got["b"].reason == "parse error: 'nan' is not a finite number"
    assert got["c"].value == -7


def test_non_ascii_bytes_are_a_bad_reading_not_a_crash() -> None:
    program = keyvalue_logger()
    (group,) = program.feed(b"flow=1\xff level=2 pump=0 ts=x\n", 1)
    assert {r.reason for r in group.readings()} == {"parse error: not ascii text at byte 6"}
    assert program.stats.decode_errors == 1


def test_polled_replies_are_parsed_by_their_command() -> None:
    program = PolledProgram(
        device(
            mode="polled",
            checksum="crc16-ccitt",
            commands=[
                {
                    "send": "MEAS?",
                    "parse": {"type": "keyvalue", "pair_separator": ";"},
                    "points": [
                        {"name": "temp", "key": "T", "unit": "degC"},
                        {"name": "rh", "key": "RH", "unit": "%"},
                    ],
                },
                {
                    "send": "STATUS?",
                    "parse": {"type": "fields"},
                    "points": [
                        {"name": "status", "field": 0, "type": "string"},
                        {"name": "uptime", "field": 1, "type": "int", "unit": "s"},
                    ],
                },
            ],
        )
    )
    meas, status = program.requests
    assert meas.payload == b"MEAS?\r\n" and status.payload == b"STATUS?\r\n"
    crc = Checksum("crc16-ccitt")
    got = readings([program.decode(meas, crc.append(b"T=21.50;RH=45.0"), 7)])
    assert {p: (r.value, r.unit) for p, r in got.items()} == {
        "temp": (21.5, "degC"),
        "rh": (45.0, "%"),
    }
    got = readings([program.decode(status, crc.append(b"OK,1234"), 7)])
    assert got["uptime"].value == 1234
    bad = readings([program.decode(status, b"OK,1234*0000", 7)])
    assert {r.reason for r in bad.values()} == {"checksum mismatch"}
    failed = readings([program.fail(meas, "timeout", 9)])
    assert set(failed) == {"temp", "rh"}
    assert {r.reason for r in failed.values()} == {"timeout"}
    assert program.stats.checksum_errors == 1


def test_stale_reports_every_point() -> None:
    group = gps().stale("timeout", 42)
    assert [r.point for r in group.readings()] == [
        "time",
        "lat",
        "fix",
        "sats",
        "alt",
        "speed",
        "course",
    ]
    assert {(r.reason, r.ts_ns) for r in group.readings()} == {("timeout", 42)}


def test_the_edge_schema_includes_the_serial_driver_models() -> None:
    from config.edge import edge_json_schema

    defs = edge_json_schema(DriverRegistry())["$defs"]
    assert {"SerialBus", "SerialDevice", "SerialPoint", "Command", "StreamFrame"} <= set(defs)
    assert set(defs["SerialPoint"]["properties"]["type"]["enum"]) == {
        "float",
        "int",
        "bool",
        "string",
    }


@settings(max_examples=150, deadline=None)
@given(
    samples=st.lists(
        st.tuples(
            st.decimals(min_value=-9999, max_value=9999, places=3, allow_nan=False),
            st.integers(min_value=0, max_value=99),
            st.binary(max_size=12).map(lambda b: bytes(x for x in b if x not in b"\r\n$*")),
        ),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_values_round_trip_through_frames_split_anyhow_with_noise(
    samples: list[tuple[Decimal, int, bytes]], cuts: list[int]
) -> None:
    """Printed values come back exactly, whatever the reads and the noise between lines."""
    program = gps()
    wire = b""
    for altitude, sats, noise in samples:
        body = GGA.replace("545.4", f"{altitude}").replace(",08,", f",{sats:02d},")
        wire += noise + b"\r\n" + nmea(body)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    groups = [
        g for t, (a, b) in enumerate(itertools.pairwise(points)) for g in program.feed(wire[a:b], t)
    ]
    got = [
        (r.value, s.value)
        for g in groups
        for r in g.readings()
        for s in g.readings()
        if r.point == "alt" and s.point == "sats"
    ]
    assert got == [(float(altitude), sats) for altitude, sats, _ in samples]
    assert program.stats.good_frames == len(samples)


# -- bool points from the device's own words -----------------------------------------------


def status_gps(words: dict[Any, Any]) -> StreamProgram:
    return StreamProgram(
        device(
            mode="stream",
            checksum="nmea",
            framing={"type": "line", "start": "$"},
            frames=[
                {
                    "match": "^GPRMC,",
                    "parse": {"type": "fields"},
                    "points": [
                        {"name": "valid", "field": 2, "type": "bool", "words": words},
                        {"name": "speed", "field": 7, "unit": "kn"},
                    ],
                }
            ],
        )
    )


def rmc(status: str) -> bytes:
    return nmea(RMC.replace(",A,", f",{status},", 1))


@pytest.mark.parametrize(
    ("status", "value"), [("A", True), ("V", False), ("a", True), (" V ", False), ("ON", True)]
)
def test_a_bool_point_reads_the_devices_own_words_in_any_case(status: str, value: bool) -> None:
    program = status_gps({"true": ["A", "ON"], "false": ["V", "OFF"]})
    got = readings(program.feed(rmc(status), 1))
    assert (got["valid"].quality, got["valid"].value) == (Quality.GOOD, value)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("X", "parse error: 'X' is none of the words for true (A, ON) or false (V, OFF)"),
        # With words, the default words are not taken: "1" is not a status this device prints.
        ("1", "parse error: '1' is none of the words for true (A, ON) or false (V, OFF)"),
        ("", "parse error: field 2 is empty"),
    ],
)
def test_any_other_word_is_a_bad_reading_and_costs_only_its_point(status: str, reason: str) -> None:
    program = status_gps({"true": ["A", "ON"], "false": ["V", "OFF"]})
    got = readings(program.feed(rmc(status), 1))
    assert (got["valid"].quality, got["valid"].reason) == (Quality.BAD, reason)
    assert (got["speed"].quality, got["speed"].value) == (Quality.GOOD, 22.4)
    assert program.stats.parse_errors == 1


def test_yaml_true_false_keys_are_taken_as_the_states() -> None:
    # What the YAML loader hands over for `words: {true: [A], false: [V]}`.
    program = status_gps({True: ["A"], False: ["V"]})
    assert readings(program.feed(rmc("V"), 1))["valid"].value is False


def test_without_words_a_bool_takes_the_usual_words_and_names_the_bad_one() -> None:
    program = status_gps({"true": ["A"], "false": ["V"]})
    default = StreamProgram(
        device(
            mode="stream",
            frames=[
                {
                    "parse": {"type": "keyvalue"},
                    "points": [{"name": "pump", "type": "bool"}],
                }
            ],
        )
    )
    assert readings(default.feed(b"pump=On\n", 1))["pump"].value is True
    assert readings(default.feed(b"pump=A\n", 2))["pump"].reason == (
        "parse error: 'A' is not true/false"
    )
    assert readings(program.feed(rmc("A"), 3))["valid"].value is True
