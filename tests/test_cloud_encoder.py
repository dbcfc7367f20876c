"""The ingester's one-pass encoder (cloud/encoder.py) against the strict path
(cloud.validate.check_message): for any message, both accept it with the very same lines, or
both refuse it with the same kind and reason — the encoder by handing it to the strict path."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.encoder import MessageEncoder
from cloud.lineproto import SEQ_ON_EVERY_READING
from cloud.validate import Checked, InvalidMessageError, check_message
from config.cloud import IngestSection
from wire.codec import PAYLOAD_SCHEMA, encode_batch
from wire.model import Quality, Reading
from wire.topics import data_topic

NOW = 1_800_000_000_000_000_000
T = NOW - 60_000_000_000
LIMITS = IngestSection(max_age=3600)
TOPIC = data_topic("plant-a", "gw-01")


def strict(topic: str, payload: bytes) -> Checked | InvalidMessageError:
    try:
        return check_message(
            topic, payload, root="fieldlink", measurement="readings", limits=LIMITS, now_ns=NOW
        )
    except InvalidMessageError as exc:
        return exc


def one_pass(encoder: MessageEncoder, topic: str, payload: bytes) -> Checked | InvalidMessageError:
    try:
        return encoder.check(topic, payload, NOW)
    except InvalidMessageError as exc:
        return exc


def same(a: Checked | InvalidMessageError, b: Checked | InvalidMessageError) -> None:
    if isinstance(b, InvalidMessageError):
        assert isinstance(a, InvalidMessageError), f"one-pass accepted what strict refuses: {b}"
        assert (a.kind, a.reason) == (b.kind, b.reason)
    else:
        assert a == b


def encoder() -> MessageEncoder:
    return MessageEncoder(root="fieldlink", measurement="readings", limits=LIMITS)


def good_doc() -> dict[str, Any]:
    readings = [
        Reading("pump-1", "meter-1", "voltage", T, 231.4, "V"),
        Reading("pump-1", "meter-1", "energy", T, 120_000, "Wh"),
        Reading("pump-1", "meter-1", "running", T, True),
        Reading("pump-1", "meter-1", "model", T, 'say "hi"'),
        Reading.bad(
            asset="pump-1", device="meter-1", point="current", ts_ns=T, reason="timeout", unit="A"
        ),
        Reading("pump-1", "meter-1", "temp", T, 41.5, "deg C", Quality.UNCERTAIN, "range"),
        Reading("pump-1", "meter-2", "voltage", T + 5, -0.0, "V"),
    ]
    doc: dict[str, Any] = orjson.loads(encode_batch("plant-a", "gw-01", readings, seq=7))
    doc["epoch"] = "e" * 32
    return doc


def test_a_valid_message_gives_the_strict_lines_and_its_seq() -> None:
    payload = orjson.dumps(good_doc())
    enc = encoder()
    first = enc.encode(TOPIC, payload, NOW)
    assert first is not None, "the common message takes the one-pass route"
    assert first == strict(TOPIC, payload)
    # Second time round every series comes from the cache: still the same lines.
    assert enc.encode(TOPIC, payload, NOW) == first
    seqs = [line for line in first.lines if ",seq=7i" in line]
    if SEQ_ON_EVERY_READING:
        assert seqs == first.lines
    else:  # on the first reading of each group
        assert len(seqs) == 2 and "device=meter-1,point=voltage" in seqs[0]
        assert "device=meter-2" in seqs[1]


# Each mutation makes the good message invalid in one way (or, for a few, valid in an odd
# way); the encoder must answer exactly as the strict path.
MUTATIONS: list[tuple[str, Any]] = [
    ("groups.0.points.0.v", None),
    ("groups.0.points.0.v", "x" * 1025),
    ("groups.0.points.0.v", [1]),
    ("groups.0.points.0.u", "V\\"),
    ("groups.0.points.0.u", "x" * 33),
    ("groups.0.points.0.u", 5),
    ("groups.0.points.0.u", None),
    ("groups.0.points.0.p", "bad/id"),
    ("groups.0.points.0.p", ["unhashable"]),
    ("groups.0.points.0.p", 5),
    ("groups.0.points.0.q", "good"),
    ("groups.0.points.0.q", "meh"),
    ("groups.0.points.0.x", 1),
    ("groups.0.points.2.v", 1),
    ("groups.0.points.4.r", None),
    ("groups.0.points.4.v", 1.0),
    ("groups.0.points.4.r", ""),
    ("groups.0.points.0", [1, 2]),
    ("groups.0.points", []),
    ("groups.0.t", -1),
    ("groups.0.t", 1.5),
    ("groups.0.t", NOW + 10**12),
    ("groups.0.t", 1),
    ("groups.0.asset", "has space"),
    ("groups.0.asset", 1),
    ("groups.0.extra", 1),
    ("groups.0", "not a group"),
    ("groups", {}),
    ("seq", -1),
    ("seq", True),
    ("seq", 1.0),
    ("epoch", ""),
    ("epoch", "x" * 65),
    ("site", "plant-b"),
    ("agent", "gw/01"),
    ("schema", "fieldlink.batch/2"),
    ("unknown", 1),
]


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(("path", "value"), MUTATIONS, ids=[f"{p}={v!r:.20}" for p, v in MUTATIONS])
def test_each_odd_message_is_judged_as_the_strict_path_judges_it(path: str, value: Any) -> None:
    payload = orjson.dumps(mutate(good_doc(), path, value))
    enc = encoder()
    enc.check(TOPIC, orjson.dumps(good_doc()), NOW)  # the cache knows the good series
    same(one_pass(enc, TOPIC, payload), strict(TOPIC, payload))


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("fieldlink/v2/plant-a/gw-01/data", None),
        ("other/v1/plant-a/gw-01/data", None),
        (TOPIC, b"not json"),
        (TOPIC, b'{"schema": "fieldlink.batch/1", "v": NaN}'),
        (TOPIC, b"[]"),
        (TOPIC, b"x" * (LIMITS.max_message_bytes + 1)),
        (TOPIC, orjson.dumps({"schema": PAYLOAD_SCHEMA, "site": "plant-a", "agent": "gw-01"})),
    ],
)
def test_foreign_topics_and_payloads_are_refused_alike(topic: str, payload: bytes | None) -> None:
    payload = payload if payload is not None else orjson.dumps(good_doc())
    same(one_pass(encoder(), topic, payload), strict(topic, payload))


def test_a_unit_change_is_a_new_series_and_the_cache_stays_bounded() -> None:
    enc = MessageEncoder(root="fieldlink", measurement="readings", limits=LIMITS, max_series=3)
    for unit in ("V", "kV", "V"):
        readings = [Reading("a", "d", f"p{i}", T + i, float(i), unit) for i in range(5)]
        payload = encode_batch("plant-a", "gw-01", readings, seq=1)
        same(one_pass(enc, TOPIC, payload), strict(TOPIC, payload))
    assert enc.cached_series <= 3


ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,8}\Z")
json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["good", "bad", "uncertain", "V", "deg C", "a,b=c", "\\", "\n"]),
)
entries = st.dictionaries(
    st.sampled_from(["p", "v", "u", "q", "r", "x"]),
    st.one_of(json_values, ids),
    max_size=5,
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "asset": ids,
                "device": st.sampled_from(["m1", "m2", "bad id"]),
                "t": st.sampled_from([T, T + 1, 0, -5, NOW + 10**12]),
                "points": st.lists(entries, max_size=6),
            }
        ),
        max_size=4,
    ),
    st.none() | st.integers(-1, 10),
)
@settings(max_examples=300, deadline=None)
def test_any_message_is_judged_as_the_strict_path_judges_it(
    groups: list[dict[str, Any]], seq: int | None
) -> None:
    doc: dict[str, Any] = {"schema": PAYLOAD_SCHEMA, "site": "plant-a", "agent": "gw-01"}
    doc["groups"] = groups
    if seq is not None:
        doc["seq"] = seq
    payload = orjson.dumps(doc)
    enc = encoder()
    same(one_pass(enc, TOPIC, payload), strict(TOPIC, payload))
    same(one_pass(enc, TOPIC, payload), strict(TOPIC, payload))  # again, from the cache
