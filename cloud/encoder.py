"""The ingester's hot path: validate a message and encode its line protocol in one pass.

:func:`cloud.validate.check_message` decodes a message strictly (``wire.codec.decode_batch``),
then checks its time window, then encodes it (``cloud.lineproto.group_lines``): three walks
over every reading, an id check per point name and a tag string built per reading. Most
messages an ingester sees are valid and come from a few thousand series that it has seen
before, so :class:`MessageEncoder` does it in one walk and remembers, per series, what the
strict path would check and build again every time:

* per topic: the (site, agent) it names, already checked;
* per (asset, device) of an agent: the line prefix up to ``point=``, ids already checked;
* per point of a device: its unit and its escaped tag set
  (``readings,agent=..,asset=..,device=..,point=..,site=..,unit=..``), and that tag set
  followed by ``quality="good",value=`` for the common reading.

It accepts only what the strict path accepts, and writes the very same lines: anything it is
not sure about — an unknown shape, a value or id it would have to judge in detail, any error —
makes :meth:`MessageEncoder.encode` return ``None``, and :meth:`MessageEncoder.check` then
runs the strict path, which refuses the message with its exact reason (or accepts it). Rarer
entries (booleans, text, bad and uncertain readings) are judged by ``wire.codec.check_point``,
the decoder's own rule. ``tests/test_cloud_encoder.py`` holds the two paths against each other.

Memory: at most :data:`MAX_SERIES` series and devices and :data:`MAX_TOPICS` topics are
remembered (~25 MB at the limit); when either is exceeded the cache starts over (correctness
never depends on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from cloud.lineproto import SEQ_ON_EVERY_READING, STRING_ESCAPES, LineProtocolError, unit_tag
from cloud.validate import Checked, check_message
from config.cloud import IngestSection
from wire.codec import MAX_EPOCH, PAYLOAD_SCHEMA, PayloadError, check_point
from wire.topics import TopicError, is_valid_id, is_valid_unit, parse_data_topic

#: Series (site, agent, asset, device, point) whose tag set is remembered, at most (devices
#: count as one each too).
MAX_SERIES = 100_000
#: Data topics remembered, at most.
MAX_TOPICS = 10_000
#: The decoder's limit (``wire.codec.decode_batch``'s default ``max_readings``).
MAX_READINGS = 100_000

_TOP_KEYS = frozenset({"schema", "site", "agent", "groups", "seq", "epoch"})
_GROUP_KEYS = frozenset({"asset", "device", "t", "points"})
#: Marks a key that is absent (a point's unit may be JSON null: the same as no unit).
_ABSENT = object()

#: A point's cached strings: (unit, tag set, tag set + ' quality="good",value=').
_Series = tuple[str | None, str, str]


@dataclass(slots=True)
class _Device:
    head: str  # "<measurement>,agent=..,asset=..,device=..,point="
    points: dict[str, _Series] = field(default_factory=dict)


@dataclass(slots=True)
class _Source:
    site: str
    agent: str
    site_tag: str  # ",site=<site>"
    devices: dict[tuple[str, str], _Device] = field(default_factory=dict)


class MessageEncoder:
    """Validates and encodes messages for one ingester (one thread: the event loop)."""

    def __init__(
        self,
        *,
        root: str,
        measurement: str,
        limits: IngestSection,
        max_series: int = MAX_SERIES,
    ) -> None:
        self._root = root
        self._max_series = max_series
        self._measurement = measurement
        self._limits = limits
        self._sources: dict[str, _Source] = {}
        self._series = 0

    @property
    def cached_series(self) -> int:
        """Series and devices remembered now (at most ``max_series``)."""
        return self._series

    def check(self, topic: str, payload: bytes, now_ns: int) -> Checked:
        """The message's lines; raise :class:`cloud.validate.InvalidMessageError` as
        :func:`cloud.validate.check_message` does (it decides whatever this pass does not)."""
        checked = self.encode(topic, payload, now_ns)
        if checked is not None:
            return checked
        return check_message(
            topic,
            payload,
            root=self._root,
            measurement=self._measurement,
            limits=self._limits,
            now_ns=now_ns,
        )

    def encode(self, topic: str, payload: bytes, now_ns: int) -> Checked | None:
        """The lines of a valid message, or ``None``: let the strict path decide."""
        limits = self._limits
        if len(payload) > limits.max_message_bytes:
            return None
        source = self._sources.get(topic)
        if source is None:
            source = self._learn_topic(topic)
            if source is None:
                return None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if (
            doc.__class__ is not dict
            or doc.get("schema") != PAYLOAD_SCHEMA
            or not doc.keys() <= _TOP_KEYS
            or doc.get("site") != source.site
            or doc.get("agent") != source.agent
        ):
            return None
        seq = doc.get("seq")
        if seq is not None and (seq.__class__ is not int or seq < 0):
            return None
        epoch = doc.get("epoch")
        if epoch is not None and not (epoch.__class__ is str and 0 < len(epoch) <= MAX_EPOCH):
            return None
        groups = doc.get("groups")
        if groups.__class__ is not list:
            return None
        try:
            lines = self._lines(source, groups, seq, now_ns)
        except (TypeError, ValueError, KeyError, OverflowError):
            # Something unexpected (an unhashable point name, say): the strict path judges.
            return None
        if lines is None:
            return None
        agent = source.agent
        ordered = any(g.get("device") == agent for g in groups)
        return Checked(
            site=source.site, agent=agent, lines=lines, seq=seq, epoch=epoch, ordered=ordered
        )

    def _lines(
        self, source: _Source, groups: list[Any], seq: int | None, now_ns: int
    ) -> list[str] | None:
        lines: list[str] = []
        append = lines.append
        devices = source.devices
        count = 0
        newest = oldest = None
        seq_text = "" if seq is None else f",seq={seq}i"
        for group in groups:
            if group.__class__ is not dict or not group.keys() <= _GROUP_KEYS:
                return None
            asset = group.get("asset")
            name = group.get("device")
            t = group.get("t")
            points = group.get("points")
            if (
                asset.__class__ is not str
                or name.__class__ is not str
                or t.__class__ is not int
                or t < 0
                or points.__class__ is not list
                or not points
            ):
                return None
            device = devices.get((asset, name))
            if device is None:
                device = self._learn_device(source, asset, name)
                if device is None:
                    return None
            count += len(points)
            if count > MAX_READINGS:
                return None
            if newest is None or t > newest:
                newest = t
            if oldest is None or t < oldest:
                oldest = t
            known_points = device.points
            stamp = f" {t}"
            # The message's seq: on the group's first reading, and on the others too if
            # SEQ_ON_EVERY_READING (docs/influx-schema.md).
            seq_field = seq_text
            seq_rest = seq_text if SEQ_ON_EVERY_READING else ""
            for entry in points:
                if entry.__class__ is not dict:
                    return None
                # The common entry is exactly {"p", "v"} or {"p", "v", "u"} with a number:
                # with "p" a known point name and "v" a number, the size tells the keys.
                size = len(entry)
                unit = None if size == 2 else entry.get("u", _ABSENT) if size == 3 else _ABSENT
                value: Any = entry.get("v")
                kind = value.__class__
                if unit is not _ABSENT and (kind is float or kind is int or kind is bool):
                    point: Any = entry.get("p")
                    known = known_points.get(point)
                    if known is None or known[0] != unit:
                        known = self._learn_point(source, device, point, unit)
                        if known is None:
                            return None
                    if kind is bool:
                        state = "true" if value else "false"
                        append(f'{known[1]} quality="good"{seq_field},state={state}{stamp}')
                        seq_field = seq_rest
                        continue
                    if kind is int:
                        value = float(value)  # within 64 bits: never overflows
                    elif value - value != 0.0:  # not finite (orjson never makes one): refused
                        return None
                    if seq_field:
                        append(f'{known[1]} quality="good"{seq_field},value={value!r}{stamp}')
                        seq_field = seq_rest
                    else:
                        append(f"{known[2]}{value!r}{stamp}")
                    continue
                line = self._general(source, device, entry, seq_field, stamp)
                if line is None:
                    return None
                append(line)
                seq_field = seq_rest
        if newest is not None and oldest is not None:
            limits = self._limits
            if (newest - now_ns) / 1e9 > limits.max_future:
                return None
            if limits.max_age is not None and (now_ns - oldest) / 1e9 > limits.max_age:
                return None
        return lines

    def _general(
        self, source: _Source, device: _Device, entry: dict[str, Any], seq_field: str, stamp: str
    ) -> str | None:
        """One entry off the common route, encoded as ``cloud.lineproto.group_lines`` does."""
        try:
            check_point(entry, "")
        except PayloadError:
            return None
        point = entry["p"]
        unit = entry.get("u")
        known = device.points.get(point)
        if known is None or known[0] != unit:
            known = self._learn_point(source, device, point, unit)
            if known is None:
                return None
        quality = entry.get("q")
        fields = f' quality="{quality or "good"}"'
        reason: Any = entry.get("r")
        if reason is not None:
            fields += f',reason="{reason.translate(STRING_ESCAPES)}"'
        fields += seq_field
        value: Any = entry.get("v")
        kind = value.__class__
        if kind is float:
            fields += f",value={value!r}"
        elif kind is int:
            try:
                fields += f",value={float(value)!r}"
            except OverflowError:
                return None
        elif kind is bool:
            fields += ",state=true" if value else ",state=false"
        elif kind is str:
            fields += f',text="{value.translate(STRING_ESCAPES)}"'
        elif quality != "bad":
            return None
        return f"{known[1]}{fields}{stamp}"

    # --- learning a series (validated once, then remembered) --------------------------------

    def _learn_topic(self, topic: str) -> _Source | None:
        try:
            site, agent = parse_data_topic(topic, root=self._root)
        except TopicError:
            return None
        if len(self._sources) >= MAX_TOPICS:
            self._forget()
        source = _Source(site, agent, f",site={site}")
        self._sources[topic] = source
        return source

    def _learn_device(self, source: _Source, asset: str, name: str) -> _Device | None:
        if not (is_valid_id(asset) and is_valid_id(name)):
            return None
        if self._series >= self._max_series:
            self._forget()
        self._series += 1  # a device counts as an entry too: it is kept even without points
        head = f"{self._measurement},agent={source.agent},asset={asset},device={name},point="
        device = _Device(head)
        source.devices[(asset, name)] = device
        return device

    def _learn_point(
        self, source: _Source, device: _Device, point: object, unit: object
    ) -> _Series | None:
        if not isinstance(point, str) or not is_valid_id(point):
            return None
        if unit is not None and (not isinstance(unit, str) or not is_valid_unit(unit)):
            return None
        try:
            tag = "" if unit is None else unit_tag(unit)
        except LineProtocolError:
            return None
        if self._series >= self._max_series:
            self._forget()
        tags = f"{device.head}{point}{source.site_tag}{tag}"
        known: _Series = (unit, tags, f'{tags} quality="good",value=')
        if point not in device.points:
            self._series += 1
        device.points[point] = known
        return known

    def _forget(self) -> None:
        """Start the cache over (bounded memory); the message being encoded keeps its own
        references, so it is not disturbed."""
        self._sources.clear()
        self._series = 0
