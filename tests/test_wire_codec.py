"""The wire codec: what the agent encodes the ingester decodes unchanged, and anything else
is refused with a message naming the JSON path."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.codec import PayloadError, decode_batch, encode_batch
from wire.model import Quality, Reading
from wire.topics import UNIT_PATTERN, TopicError, data_subscription, data_topic, parse_data_topic

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z")
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.text(max_size=50),
)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    quality = draw(st.sampled_from(list(Quality)))
    unit = draw(st.none() | st.from_regex(UNIT_PATTERN, fullmatch=True))
    common = {
        "asset": draw(ids),
        "device": draw(ids),
        "point": draw(ids),
        "ts_ns": draw(st.integers(min_value=0, max_value=2**63 - 1)),
        "unit": unit,
    }
    if quality is Quality.BAD:
        reason = draw(st.text(min_size=1, max_size=100))
        return Reading(**common, value=None, quality=quality, reason=reason)
    return Reading(**common, value=draw(values), quality=quality, reason=None)


@given(st.lists(readings(), max_size=30), ids, ids, st.none() | st.integers(0, 2**63 - 1))
def test_decode_of_encode_is_the_identity(
    batch: list[Reading], site: str, agent: str, seq: int | None
) -> None:
    decoded = decode_batch(encode_batch(site, agent, batch, seq=seq))
    assert decoded.site == site
    assert decoded.agent == agent
    assert decoded.seq == seq
    assert decoded.readings == batch


def test_readings_of_one_poll_share_a_group() -> None:
    batch = [
        Reading("a", "d", "p1", 5, 1.0, "V"),
        Reading("a", "d", "p2", 5, 2.0, "A"),
        Reading("a", "d", "p1", 6, 1.5, "V"),
    ]
    doc = orjson.loads(encode_batch("s", "g", batch))
    assert [len(g["points"]) for g in doc["groups"]] == [2, 1]


def good(**overrides: object) -> bytes:
    doc: dict[str, object] = {
        "schema": "fieldlink.batch/1",
        "site": "s",
        "agent": "g",
        "groups": [{"asset": "a", "device": "d", "t": 1, "points": [{"p": "x", "v": 1.5}]}],
    }
    doc.update(overrides)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "top level must be an object, got an array"),
        (good(schema="other/1"), "schema: expected 'fieldlink.batch/1', got 'other/1'"),
        (good(extra=1), "unknown top-level field(s): extra"),
        (good(site="a b"), "site: expected an id matching"),
        (good(groups={}), "groups: expected an array, got an object"),
        (
            good(groups=[{"asset": "a", "device": "d", "t": -1, "points": [{"p": "x", "v": 1}]}]),
            "groups[0].t: expected integer nanoseconds since the epoch, got -1",
        ),
        (
            good(groups=[{"asset": "a", "device": "d", "t": 1, "points": [{"p": "x"}]}]),
            "groups[0].points[0].v: a good reading needs a value",
        ),
        (
            good(
                groups=[{"asset": "a", "device": "d", "t": 1, "points": [{"p": "x", "q": "bad"}]}]
            ),
            "groups[0].points[0].r: a bad reading needs a reason",
        ),
        (
            good(groups=[{"asset": "a", "device": "d", "t": 1, "points": [{"p": "x", "v": [1]}]}]),
            "groups[0].points[0].v: expected a number, boolean or string, got an array",
        ),
        (
            b'{"schema":"fieldlink.batch/1","site":"s","agent":"g","groups":[{"asset":"a",'
            b'"device":"d","t":1,"points":[{"p":"x","v":NaN}]}]}',
            "not JSON",
        ),
        (
            good().replace(b'"v":1.5', b'"v":1e400'),
            "not JSON",  # a number beyond the float range would be infinity
        ),
    ],
)
def test_malformed_payload_is_refused_with_its_path(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_batch(payload)
    assert message in str(info.value)


def test_topics_round_trip_and_refuse_foreign_ones() -> None:
    assert data_topic("plant-a", "gw-01") == "fieldlink/v1/plant-a/gw-01/data"
    assert parse_data_topic("fieldlink/v1/plant-a/gw-01/data") == ("plant-a", "gw-01")
    assert data_subscription() == "fieldlink/v1/+/+/data"
    with pytest.raises(TopicError, match="wire version 'v9'"):
        parse_data_topic("fieldlink/v9/plant-a/gw-01/data")
    with pytest.raises(TopicError):
        parse_data_topic("other/v1/plant-a/gw-01/data")
    with pytest.raises(TopicError):
        data_topic("plant a", "gw-01")


@pytest.mark.parametrize(
    "entry",
    [
        {"p": 5, "v": 1.0},
        {"p": ["x"], "v": 1.0},
        {"p": "x", "v": 1.0, "u": 7},
        {"p": "x", "v": 1.0, "u": ["V"]},
        {"p": "x", "v": float("inf")},
        {"p": "x", "v": None},
        {"p": "x", "v": {"a": 1}},
    ],
)
def test_odd_point_entries_are_refused_not_crashed_on(entry: dict[str, object]) -> None:
    doc = {
        "schema": "fieldlink.batch/1",
        "site": "s",
        "agent": "g",
        "groups": [{"asset": "a", "device": "d", "t": 1, "points": [entry]}],
    }
    # orjson writes inf as null; the decoder sees what a foreign sender could send.
    with pytest.raises(PayloadError, match=r"groups\[0\]\.points\[0\]"):
        decode_batch(orjson.dumps(doc))
