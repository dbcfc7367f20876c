"""Line protocol: the exact bytes for each kind of reading, and what real InfluxDB 1.x makes of
them (field types that never change, escaped units, overwrite on replay)."""

from __future__ import annotations

import pytest
from helpers import InfluxDatabase

from cloud.lineproto import LineProtocolError, batch_lines, reading_line
from wire.model import Quality, Reading

T = 1_732_900_000_123_456_789
TAGS = "readings,agent=gw-01,asset=pump-1,device=meter-1"


def line(reading: Reading) -> bytes:
    return reading_line("readings", "plant-a", "gw-01", reading)


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        pytest.param(
            Reading("pump-1", "meter-1", "voltage", T, 231.4, "V"),
            f'{TAGS},point=voltage,site=plant-a,unit=V quality="good",value=231.4 {T}',
            id="float",
        ),
        pytest.param(
            Reading("pump-1", "meter-1", "count", T, 42),
            f'{TAGS},point=count,site=plant-a quality="good",value=42.0 {T}',
            id="int-becomes-float-literal",
        ),
        pytest.param(
            Reading("pump-1", "meter-1", "big", T, 2**60),
            f'{TAGS},point=big,site=plant-a quality="good",value=1.152921504606847e+18 {T}',
            id="int-beyond-2**53-is-rounded",
        ),
        pytest.param(
            Reading("pump-1", "meter-1", "running", T, True),
            f'{TAGS},point=running,site=plant-a quality="good",state=true {T}',
            id="bool",
        ),
        pytest.param(
            Reading("pump-1", "meter-1", "model", T, 'say "hi" \\ bye'),
            f'{TAGS},point=model,site=plant-a quality="good",text="say \\"hi\\" \\\\ bye" {T}',
            id="string-escaped",
        ),
        pytest.param(
            Reading.bad(
                asset="pump-1",
                device="meter-1",
                point="current",
                ts_ns=T,
                reason="timeout",
                unit="A",
            ),
            f'{TAGS},point=current,site=plant-a,unit=A quality="bad",reason="timeout" {T}',
            id="bad-with-reason",
        ),
        pytest.param(
            Reading("pump-1", "meter-1", "temp", T, -1.5, "deg C", Quality.UNCERTAIN, "range"),
            f"{TAGS},point=temp,site=plant-a,unit=deg\\ C "
            f'quality="uncertain",reason="range",value=-1.5 {T}',
            id="uncertain-unit-with-space",
        ),
        pytest.param(
            Reading("pump-1", "meter-1", "ratio", T, 0.5, "a,b=c"),
            f'{TAGS},point=ratio,site=plant-a,unit=a\\,b\\=c quality="good",value=0.5 {T}',
            id="unit-comma-equals",
        ),
    ],
)
def test_exact_line(reading: Reading, expected: str) -> None:
    assert line(reading) == expected.encode()


@pytest.mark.parametrize("unit", ["V\\", "a\\b", "line\nbreak", "tab\t"])
def test_unit_that_a_tag_cannot_carry_is_refused(unit: str) -> None:
    with pytest.raises(LineProtocolError, match="pump-1/meter-1/v: unit"):
        line(Reading("pump-1", "meter-1", "v", T, 1.0, unit))


def test_round_trip_through_influxdb1_keeps_types_and_overwrites(
    influx_db: InfluxDatabase,
) -> None:
    service, db = influx_db
    readings = [
        # The same point sends an int first and a float later: still one float field.
        Reading("pump-1", "meter-1", "speed", T, 1500, "rpm"),
        Reading("pump-1", "meter-1", "speed", T + 1, 1500.5, "rpm"),
        Reading("pump-1", "meter-1", "running", T, False),
        Reading("pump-1", "meter-1", "model", T, 'PX-200 "rev b"'),
        Reading.bad(
            asset="pump-1", device="meter-1", point="flow", ts_ns=T, reason="crc", unit="m3/h"
        ),
        Reading("pump-1", "meter-1", "temp", T, 20.25, "deg C", Quality.UNCERTAIN, "stale"),
    ]
    body = b"\n".join(batch_lines("readings", "plant-a", "gw-01", readings)).decode()
    service.write(body, db)
    service.write(body, db)  # a replay: same series and times, so nothing is duplicated

    keys = service.query("SHOW FIELD KEYS FROM readings", db)["results"][0]["series"][0]
    assert sorted(map(tuple, keys["values"])) == [
        ("quality", "string"),
        ("reason", "string"),
        ("state", "boolean"),
        ("text", "string"),
        ("value", "float"),
    ]
    fields = '"quality", "reason", "state", "text", "value"'
    result = service.query(f'SELECT {fields} FROM readings GROUP BY "point", "unit"', db)
    got = {
        (s["tags"]["point"], s["tags"]["unit"]): [tuple(v) for v in s["values"]]
        for s in result["results"][0]["series"]
    }
    assert got == {
        ("flow", "m3/h"): [(T, "bad", "crc", None, None, None)],
        ("model", ""): [(T, "good", None, None, 'PX-200 "rev b"', None)],
        ("running", ""): [(T, "good", None, False, None, None)],
        ("speed", "rpm"): [
            (T, "good", None, None, None, 1500),
            (T + 1, "good", None, None, None, 1500.5),
        ],
        ("temp", "deg C"): [(T, "uncertain", "stale", None, None, 20.25)],
    }
