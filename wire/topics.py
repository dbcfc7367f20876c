"""MQTT topic layout.

``fieldlink/v1/<site>/<agent>/data`` carries batches of readings from one agent. Site and
agent ids are single topic levels, so they may not contain ``/``, ``+``, ``#`` or NUL and
may not be empty (see :data:`ID_PATTERN`).
"""

from __future__ import annotations

import functools
import re

ROOT = "fieldlink"
VERSION = "v1"
#: What a site, agent, asset, device or point id may look like. Conservative on purpose: these
#: ids become MQTT topic levels and InfluxDB tag values, and must survive both unchanged.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)
#: What a unit may look like: free text, but no backslash or control character, which an
#: InfluxDB 1.x tag value cannot carry faithfully.
UNIT_PATTERN = r"^[^\\\x00-\x1f\x7f]{1,32}$"
_UNIT_RE = re.compile(UNIT_PATTERN)


class TopicError(ValueError):
    """A topic that is not part of the fieldlink layout."""


@functools.lru_cache(maxsize=65536)
def is_valid_id(text: str) -> bool:
    # Cached: the ingester checks the same few thousand ids in every message.
    return _ID_RE.match(text) is not None


@functools.lru_cache(maxsize=4096)
def is_valid_unit(text: str) -> bool:
    return _UNIT_RE.match(text) is not None


def data_topic(site: str, agent: str, *, root: str = ROOT) -> str:
    for name, value in (("site", site), ("agent", agent)):
        if not is_valid_id(value):
            raise TopicError(f"{name} id {value!r} does not match {ID_PATTERN}")
    return f"{root}/{VERSION}/{site}/{agent}/data"


def deadletter_topic(*, root: str = ROOT) -> str:
    """Where an ingester publishes messages it refused, with the reason (see docs/wire.md)."""
    return f"{root}/{VERSION}/deadletter"


def status_topic(site: str, agent: str, *, root: str = ROOT) -> str:
    """Retained agent status: ``{"state": "online", ...}`` (birth) or ``offline`` (will)."""
    return data_topic(site, agent, root=root).rsplit("/", 1)[0] + "/status"


def confirm_topic(site: str, agent: str, *, root: str = ROOT) -> str:
    """Where ingesters confirm to an agent which of its messages are stored."""
    return data_topic(site, agent, root=root).rsplit("/", 1)[0] + "/confirm"


def data_subscription(*, root: str = ROOT) -> str:
    """The filter an ingester subscribes to: every site, every agent."""
    return f"{root}/{VERSION}/+/+/data"


def parse_data_topic(topic: str, *, root: str = ROOT) -> tuple[str, str]:
    """Return ``(site, agent)`` of a data topic, or raise :class:`TopicError`."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != root or parts[4] != "data":
        raise TopicError(f"topic {topic!r} is not {root}/{VERSION}/<site>/<agent>/data")
    if parts[1] != VERSION:
        raise TopicError(
            f"topic {topic!r} has wire version {parts[1]!r}; this side speaks {VERSION}"
        )
    site, agent = parts[2], parts[3]
    if not (is_valid_id(site) and is_valid_id(agent)):
        raise TopicError(f"topic {topic!r} has a site or agent id outside {ID_PATTERN}")
    return site, agent
