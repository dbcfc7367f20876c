"""The versioned JSON payload that carries a batch of readings (see ``docs/wire.md``).

Readings taken in one poll of one device share the device, asset and sample time, so a batch
is a list of *groups*, each with its shared fields once and its points below::

    {"schema": "fieldlink.batch/1", "site": "plant-a", "agent": "gw-01",
     "groups": [{"asset": "pump-1", "device": "meter-1", "t": 1732900000123456789,
                 "points": [{"p": "voltage", "v": 231.4, "u": "V"},
                            {"p": "current", "q": "bad", "r": "timeout", "u": "A"}]}]}

The decoder is strict: anything it does not understand is a :class:`PayloadError` whose
message names the JSON path, so an ingester can dead-letter it with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from wire.model import Group, Quality, Reading, Value, point_entry
from wire.topics import ID_PATTERN, is_valid_id, is_valid_unit

PAYLOAD_SCHEMA = "fieldlink.batch/1"
CONFIRM_SCHEMA = "fieldlink.confirm/1"
#: Epochs are short opaque tokens (the agent uses 32 hex digits).
MAX_EPOCH = 64
#: Text values longer than this are refused: they would bloat every write downstream.
MAX_TEXT_VALUE = 1024


class PayloadError(ValueError):
    """A message that is not a valid fieldlink batch. The text names the JSON path."""


@dataclass(frozen=True, slots=True)
class Batch:
    site: str
    agent: str
    groups: list[Group] = field(default_factory=list)
    #: Per-agent sequence number; optional in schema 1 (used by the delivery protocol).
    seq: int | None = None
    #: The agent's spool epoch: sequence numbers are unique within one epoch (a new spool,
    #: e.g. after a corrupt one was moved aside, starts a new epoch at seq 1).
    epoch: str | None = None

    @property
    def readings(self) -> list[Reading]:
        """Every reading as a :class:`Reading` (tools and tests; not the hot path)."""
        return [r for g in self.groups for r in g.readings()]

    @property
    def count(self) -> int:
        return sum(len(g.points) for g in self.groups)


def encode_groups(
    site: str,
    agent: str,
    groups: Sequence[Group],
    seq: int | None = None,
    epoch: str | None = None,
) -> bytes:
    """Pack groups of readings into one message: the agent's hot path, one ``orjson.dumps``."""
    doc: dict[str, Any] = {"schema": PAYLOAD_SCHEMA, "site": site, "agent": agent, "groups": groups}
    if seq is not None:
        doc["seq"] = seq
    if epoch is not None:
        doc["epoch"] = epoch
    return orjson.dumps(doc)


def encode_batch(
    site: str, agent: str, readings: Iterable[Reading], seq: int | None = None
) -> bytes:
    """Pack readings into one message, grouping consecutive readings of one device and time."""
    return encode_groups(site, agent, group_readings(readings), seq)


def group_readings(readings: Iterable[Reading]) -> list[Group]:
    """Consecutive readings of one asset, device and sample time become one group."""
    groups: list[Group] = []
    key: tuple[str, str, int] | None = None
    for r in readings:
        k = (r.asset, r.device, r.ts_ns)
        if k != key:
            groups.append(Group(r.asset, r.device, r.ts_ns, []))
            key = k
        groups[-1].points.append(point_entry(r.point, r.value, r.unit, r.quality, r.reason))
    return groups


def decode_batch(payload: bytes, *, max_readings: int = 100_000) -> Batch:
    """Parse and validate one message. Raises :class:`PayloadError` naming what is wrong.

    This is the ingester's hot path, so valid input takes a lean route: the point entries
    orjson produced are checked in place and kept as they are (they already are the wire
    form :class:`Group` holds), and JSON paths are only spelled out when something is wrong.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PayloadError(f"top level must be an object, got {_kind(doc)}")
    schema = doc.get("schema")
    if schema != PAYLOAD_SCHEMA:
        raise PayloadError(f"schema: expected {PAYLOAD_SCHEMA!r}, got {schema!r}")
    unknown = doc.keys() - _TOP_KEYS
    if unknown:
        raise PayloadError(f"unknown top-level field(s): {', '.join(sorted(unknown))}")
    site = _id(doc, "site", "site")
    agent = _id(doc, "agent", "agent")
    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or seq < 0):
        raise PayloadError(f"seq: expected a non-negative integer, got {seq!r}")
    epoch = doc.get("epoch")
    if epoch is not None and not _is_epoch(epoch):
        raise PayloadError(f"epoch: expected a string of 1 to {MAX_EPOCH} characters")
    raw_groups = doc.get("groups")
    if not isinstance(raw_groups, list):
        raise PayloadError(f"groups: expected an array, got {_kind(raw_groups)}")
    groups: list[Group] = []
    count = 0
    for gi, group in enumerate(raw_groups):
        checked = _group(group, gi)
        groups.append(checked)
        count += len(checked.points)
        if count > max_readings:
            raise PayloadError(f"more than {max_readings} readings in one message")
    return Batch(site=site, agent=agent, groups=groups, seq=seq, epoch=epoch)


_TOP_KEYS = frozenset({"schema", "site", "agent", "groups", "seq", "epoch"})
_GROUP_KEYS = frozenset({"asset", "device", "t", "points"})
_POINT_KEYS = frozenset({"p", "v", "u", "q", "r"})
_QUALITY_NAMES = frozenset(q.value for q in Quality)


def _group(group: object, gi: int) -> Group:
    path = f"groups[{gi}]"
    if not isinstance(group, dict):
        raise PayloadError(f"{path}: expected an object, got {_kind(group)}")
    unknown = group.keys() - _GROUP_KEYS
    if unknown:
        raise PayloadError(f"{path}: unknown field(s): {', '.join(sorted(unknown))}")
    asset = _id(group, "asset", f"{path}.asset")
    device = _id(group, "device", f"{path}.device")
    ts = group.get("t")
    if type(ts) is not int or ts < 0:
        raise PayloadError(f"{path}.t: expected integer nanoseconds since the epoch, got {ts!r}")
    points = group.get("points")
    if not isinstance(points, list) or not points:
        raise PayloadError(f"{path}.points: expected a non-empty array, got {_kind(points)}")
    # The common entries, {"p", "v"} or {"p", "v", "u"} with a finite number, are checked
    # inline; anything else (bad readings, text, unknown keys, errors) takes _point_problem.
    for pi, entry in enumerate(points):
        if entry.__class__ is dict:
            keys = entry.keys()
            if keys in (_PVU, _PV):
                value = entry["v"]
                unit = entry.get("u")
                point = entry["p"]
                if (
                    ((value.__class__ is float and value - value == 0.0) or value.__class__ is int)
                    and point.__class__ is str
                    and is_valid_id(point)
                    and (unit is None or (unit.__class__ is str and is_valid_unit(unit)))
                ):
                    continue
        _point_problem(entry, f"{path}.points[{pi}]")
    return Group(asset, device, ts, points)


_PV = frozenset({"p", "v"})
_PVU = frozenset({"p", "v", "u"})


def check_point(entry: object, path: str) -> None:
    """Check one point entry exactly as :func:`decode_batch` does; raise :class:`PayloadError`
    naming ``path``. For a consumer with its own fast route for the common entries (the
    ingester's one-pass encoder) that hands every other entry here."""
    _point_problem(entry, path)


def _point_problem(entry: object, path: str) -> None:
    """Check a point the fast path did not accept; raise naming the path, or return if it
    is valid after all (a bad or uncertain reading)."""
    if not isinstance(entry, dict):
        raise PayloadError(f"{path}: expected an object, got {_kind(entry)}")
    unknown = entry.keys() - _POINT_KEYS
    if unknown:
        raise PayloadError(f"{path}: unknown field(s): {', '.join(sorted(unknown))}")
    _id(entry, "p", f"{path}.p")
    q_text = entry.get("q", "good")
    if not isinstance(q_text, str) or q_text not in _QUALITY_NAMES:
        raise PayloadError(f"{path}.q: expected one of good, bad, uncertain; got {q_text!r}")
    quality = Quality(q_text)
    unit = entry.get("u")
    if unit is not None and (not isinstance(unit, str) or not is_valid_unit(unit)):
        raise PayloadError(
            f"{path}.u: expected a unit of 1 to 32 characters without backslash or control "
            f"characters, got {unit!r}"
        )
    reason = entry.get("r")
    if reason is not None and (not isinstance(reason, str) or not 0 < len(reason) <= 256):
        raise PayloadError(f"{path}.r: expected a reason string of 1 to 256 characters")
    value = _value(entry.get("v"), f"{path}.v")
    if quality is Quality.BAD:
        if value is not None:
            raise PayloadError(f"{path}: a bad reading carries no value")
        if reason is None:
            raise PayloadError(f"{path}.r: a bad reading needs a reason")
    elif value is None:
        raise PayloadError(f"{path}.v: a {quality.value} reading needs a value")


def _value(v: object, path: str) -> Value | None:
    if v is None or type(v) is bool or type(v) is int:
        return v
    if type(v) is float:
        if not math.isfinite(v):
            raise PayloadError(f"{path}: {v} is not a finite number")
        return v
    if type(v) is str:
        if len(v) > MAX_TEXT_VALUE:
            raise PayloadError(f"{path}: text longer than {MAX_TEXT_VALUE} characters")
        return v
    raise PayloadError(f"{path}: expected a number, boolean or string, got {_kind(v)}")


def _id(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not is_valid_id(value):
        raise PayloadError(f"{path}: expected an id matching {ID_PATTERN}, got {value!r}")
    return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def encode_confirm(epoch: str | None, ranges: Sequence[tuple[int, int]]) -> bytes:
    """An ingester's confirmation: these inclusive seq ranges of the agent's spool epoch are
    stored."""
    doc: dict[str, Any] = {"schema": CONFIRM_SCHEMA, "ranges": [list(r) for r in ranges]}
    if epoch is not None:
        doc["epoch"] = epoch
    return orjson.dumps(doc)


def decode_confirm(payload: bytes) -> tuple[str | None, list[tuple[int, int]]]:
    """``(epoch, ranges)`` of a confirmation; raises :class:`PayloadError`."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != CONFIRM_SCHEMA:
        raise PayloadError(f"schema: expected {CONFIRM_SCHEMA!r}")
    epoch = doc.get("epoch")
    if epoch is not None and not _is_epoch(epoch):
        raise PayloadError(f"epoch: expected a string of 1 to {MAX_EPOCH} characters")
    ranges = doc.get("ranges")
    if not isinstance(ranges, list):
        raise PayloadError("ranges: expected an array of [first, last] pairs")
    out: list[tuple[int, int]] = []
    for i, pair in enumerate(ranges):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(type(x) is int and x >= 0 for x in pair)
            or pair[0] > pair[1]
        ):
            raise PayloadError(f"ranges[{i}]: expected [first, last] with 0 <= first <= last")
        out.append((pair[0], pair[1]))
    return epoch, out


def _is_epoch(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_EPOCH


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges of a set of sequence numbers."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges
