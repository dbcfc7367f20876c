"""Checks one MQTT message must pass before its readings are written, cheapest first.

A message that fails is *invalid*: it is dead-lettered with the :class:`InvalidKind` (for
counters and alerting) and a reason a person can act on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

from cloud.errors import CloudError
from cloud.lineproto import LineProtocolError, group_lines
from config.cloud import IngestSection
from wire.codec import PayloadError, decode_batch
from wire.model import Group
from wire.topics import TopicError, parse_data_topic


class InvalidKind(enum.StrEnum):
    """Why a message was refused; the label of the `invalid` counters."""

    TOO_LARGE = "too_large"
    TOPIC = "topic"
    NOT_JSON = "not_json"
    PAYLOAD = "payload"
    MISMATCH = "mismatch"
    IN_FUTURE = "in_future"
    TOO_OLD = "too_old"
    UNWRITABLE = "unwritable"
    #: InfluxDB itself refused the point (e.g. a field-type conflict); dead-lettered per point.
    REFUSED = "refused"


class Source(NamedTuple):
    site: str
    agent: str
    epoch: str | None
    seq: int | None


class InvalidMessageError(CloudError):
    def __init__(
        self,
        kind: InvalidKind,
        reason: str,
        source: Source | None = None,
    ) -> None:
        self.kind = kind
        self.reason = reason
        #: Who sent it and which message it was, when readable enough to tell; lets the
        #: ingester confirm a dead-lettered message to its agent.
        self.source = source
        super().__init__(f"{kind}: {reason}")


@dataclass(frozen=True, slots=True)
class Checked:
    """A message that passed: its line-protocol lines, one per reading."""

    site: str
    agent: str
    lines: list[str]
    seq: int | None = None
    epoch: str | None = None
    #: Carries the agent's own records (device = agent id: spool gap reports), which a later
    #: message may rewrite at the same series and time; written with no other write in flight
    #: so the newer version always lands last.
    ordered: bool = False


def check_message(
    topic: str,
    payload: bytes,
    *,
    root: str,
    measurement: str,
    limits: IngestSection,
    now_ns: int,
) -> Checked:
    """Validate one message and encode its readings; raise :class:`InvalidMessageError`."""
    if len(payload) > limits.max_message_bytes:
        raise InvalidMessageError(
            InvalidKind.TOO_LARGE,
            f"{len(payload)} bytes is more than ingest.max_message_bytes "
            f"({limits.max_message_bytes})",
        )
    try:
        site, agent = parse_data_topic(topic, root=root)
    except TopicError as exc:
        raise InvalidMessageError(InvalidKind.TOPIC, str(exc)) from exc
    try:
        batch = decode_batch(payload)
    except PayloadError as exc:
        # decode_batch chains orjson's error when the bytes are not JSON at all; telling that
        # apart from a JSON message of the wrong shape helps find the sender.
        if isinstance(exc.__cause__, orjson.JSONDecodeError):
            raise InvalidMessageError(InvalidKind.NOT_JSON, str(exc)) from exc
        source = Source(site, agent, *_lenient_identity(payload))
        raise InvalidMessageError(InvalidKind.PAYLOAD, str(exc), source) from exc
    source = Source(site, agent, batch.epoch, batch.seq)
    if (batch.site, batch.agent) != (site, agent):
        raise InvalidMessageError(
            InvalidKind.MISMATCH,
            f"the payload says site={batch.site!r} agent={batch.agent!r} but it was published "
            f"on the topic of site={site!r} agent={agent!r}",
            source,
        )
    try:
        _check_window(batch.groups, limits, now_ns)
    except InvalidMessageError as exc:
        exc.source = source
        raise
    try:
        lines = group_lines(measurement, site, agent, batch.groups, batch.seq)
    except LineProtocolError as exc:
        raise InvalidMessageError(InvalidKind.UNWRITABLE, str(exc), source) from exc
    ordered = any(g.device == agent for g in batch.groups)
    return Checked(
        site=site, agent=agent, lines=lines, seq=batch.seq, epoch=batch.epoch, ordered=ordered
    )


def _lenient_identity(payload: bytes) -> tuple[str | None, int | None]:
    """``(epoch, seq)`` of a JSON message that failed validation, where usable."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    seq, epoch = doc.get("seq"), doc.get("epoch")
    return (
        epoch if isinstance(epoch, str) and 0 < len(epoch) <= 64 else None,
        seq if type(seq) is int and seq >= 0 else None,
    )


def _check_window(groups: list[Group], limits: IngestSection, now_ns: int) -> None:
    if not groups:
        return
    newest = max(groups, key=lambda g: g.t)
    ahead = (newest.t - now_ns) / 1e9
    if ahead > limits.max_future:
        raise InvalidMessageError(
            InvalidKind.IN_FUTURE,
            f"{_name(newest)} is stamped {_iso(newest.t)}, {ahead:.0f} s ahead of the "
            f"ingester's clock (ingest.max_future: {limits.max_future:g}); check the agent's clock",
        )
    if limits.max_age is not None:
        oldest = min(groups, key=lambda g: g.t)
        age = (now_ns - oldest.t) / 1e9
        if age > limits.max_age:
            raise InvalidMessageError(
                InvalidKind.TOO_OLD,
                f"{_name(oldest)} is stamped {_iso(oldest.t)}, {age:.0f} s old "
                f"(ingest.max_age: {limits.max_age:g})",
            )


def _name(group: Group) -> str:
    return f"{group.asset}/{group.device}/{group.points[0].get('p')}"


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
