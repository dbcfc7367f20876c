"""The agent's config file (``kind: edge``): who it is, where it publishes, what it polls."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import orjson
from pydantic import Field, create_model, field_validator, model_validator

from config.base import Ident, StrictModel
from config.device import BusBase, DeviceBase
from config.errors import ConfigError, Problem
from config.loader import environ, join_path, read_document, substitute_env, validate
from config.mqtt import BrokerSection
from drivers.base import StreamingPlugin
from drivers.registry import DriverNotFound, DriverRegistry


class AgentSection(StrictModel):
    id: Ident = Field(description="Agent id, unique per site; the `agent` tag and a topic level.")
    site: Ident = Field(description="Site the agent belongs to; the `site` tag and a topic level.")


class MqttSection(BrokerSection):
    client_id: str | None = Field(
        default=None,
        description=(
            "MQTT client id, fixed so the broker keeps the agent's session (confirmations "
            "published while it is away); defaults to fieldlink-<site>-<agent>."
        ),
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description=(
            "MQTT version. 5 lets the agent see the broker's refusals (not authorised, quota) "
            "in PUBACKs; 3.1.1 for brokers without it."
        ),
    )
    session_expiry: int = Field(
        default=86_400,
        ge=0,
        le=0xFFFFFFFF,  # a four-byte integer in MQTT 5's CONNECT; the largest means "never"
        description="Seconds the broker keeps the agent's session while it is disconnected.",
    )
    max_inflight: int = Field(
        default=20,
        ge=1,
        le=1000,
        description=(
            "Messages published and not yet acknowledged by the broker; also capped by the "
            "broker's Receive Maximum."
        ),
    )
    reconnect_initial: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description=(
            "Seconds before the first reconnect attempt after the broker went away or "
            "refused the connection; doubles with every failed attempt up to reconnect_max. "
            "Each wait is drawn at random between half and all of it (jitter), so many "
            "agents do not reconnect in step."
        ),
    )
    reconnect_max: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Cap of the reconnect wait in seconds (see reconnect_initial).",
    )

    @model_validator(mode="after")
    def _reconnect_order(self) -> MqttSection:
        if self.reconnect_max < self.reconnect_initial:
            raise ValueError(
                f"@reconnect_max: must be at least reconnect_initial ({self.reconnect_initial:g} s)"
            )
        return self


class PublishSection(StrictModel):
    max_batch: int = Field(
        default=2000, ge=1, le=100_000, description="Most readings packed into one MQTT message."
    )
    max_delay: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description=(
            "Seconds a reading may wait for its batch to fill. Every batch is a spool commit, "
            "an MQTT message and a confirmation: at low rates (a batch not filled by "
            "max_batch) a longer wait costs less CPU, at the price of latency and of what a "
            "crash of the agent loses before it is spooled (this many seconds' worth)."
        ),
    )
    queue_size: int = Field(
        default=200_000,
        ge=1000,
        description=(
            "Readings waiting in memory to be written to the spool (normally a fraction of a "
            "second's worth). If the disk cannot keep up and it fills, the oldest are dropped "
            "and counted."
        ),
    )


class SpoolSection(StrictModel):
    """The on-disk queue every batch is committed to before it is published."""

    path: Path | None = Field(
        default=None,
        description=(
            "SQLite file of the spool; default "
            "$XDG_STATE_HOME/fieldlink/<site>-<agent>.spool (~/.local/state/fieldlink/...)."
        ),
    )
    max_bytes: int = Field(
        default=1 << 30,
        ge=1 << 16,
        description="Size cap; past it the oldest messages are dropped, counted and reported.",
    )
    max_age: float | None = Field(
        default=7 * 86_400,
        gt=0,
        description="Age cap in seconds (unset: none); older messages are dropped and reported.",
    )
    confirm_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds to wait for the cloud's confirmation of a published message before "
            "publishing it again."
        ),
    )
    backlog_rate: float = Field(
        default=20_000,
        gt=0,
        description=(
            "Readings per second at most spent on backlog (messages spooled while the broker "
            "or cloud was away), so live readings are never starved while it drains."
        ),
    )


class HealthSection(StrictModel):
    """The health endpoint: Prometheus metrics on ``/metrics``, a status on ``/healthz``
    (docs/health.md). Shared by the agent (``kind: edge``) and the ingester (``kind: cloud``)."""

    listen: str | None = Field(
        default=None,
        description=(
            'Address to serve /metrics and /healthz on, as HOST:PORT: "127.0.0.1:9108" '
            '(this machine only), "0.0.0.0:9108" (every interface), "[::1]:9108". '
            "Unset: no endpoint (and its code is not even loaded)."
        ),
        examples=["127.0.0.1:9108"],
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f'a port alone is not an address: write HOST:PORT, e.g. "127.0.0.1:{value}" '
                f'(this machine only) or "0.0.0.0:{value}" (every interface)'
            )
        if isinstance(value, str):
            check_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, None when the endpoint is off."""
        return None if self.listen is None else check_listen(self.listen)


def check_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); a ``ValueError`` says what is wrong and the fix."""
    example = 'e.g. "127.0.0.1:9108", "0.0.0.0:9108" (every interface) or "[::1]:9108"'
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not sep or not host or any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"expected HOST:PORT, {example}")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, {example}")
    return host, int(port_text)


class EdgeEnvelope(StrictModel):
    """Stage one of validation: the parts every agent file has. Buses and devices are checked
    in stage two against the model of their driver."""

    kind: Literal["edge"] = Field(description="Must be `edge` for an agent config.")
    agent: AgentSection = Field(description="Who this agent is: its id and its site.")
    mqtt: MqttSection = Field(
        default_factory=MqttSection, description="The broker readings are published to."
    )
    publish: PublishSection = Field(
        default_factory=PublishSection, description="Batching and the in-memory queue."
    )
    spool: SpoolSection = Field(
        default_factory=SpoolSection, description="The crash-safe on-disk queue."
    )
    health: HealthSection = Field(
        default_factory=HealthSection,
        description="The Prometheus metrics and /healthz endpoint; off unless `listen` is set.",
    )
    buses: list[dict[str, Any]] = Field(description="Field buses; see each driver's schema.")
    devices: list[dict[str, Any]] = Field(description="Devices to poll; see each driver's schema.")


@dataclass(frozen=True)
class EdgeConfig:
    """A validated agent config: the envelope plus buses and devices as their drivers' models."""

    source: str
    agent: AgentSection
    mqtt: MqttSection
    publish: PublishSection
    spool: SpoolSection
    buses: list[BusBase]
    devices: list[DeviceBase]
    #: Short hash of the effective config, announced in the agent's birth message so an
    #: operator can tell which config a gateway runs.
    config_hash: str = ""
    health: HealthSection = field(default_factory=HealthSection)

    def bus(self, name: str) -> BusBase:
        return next(b for b in self.buses if b.name == name)


def load_edge_config(
    path: Path, env: Mapping[str, str] | None = None, registry: DriverRegistry | None = None
) -> EdgeConfig:
    return validate_edge(read_document(path), str(path), env, registry)


def validate_edge(
    doc: dict[str, Any],
    source: str,
    env: Mapping[str, str] | None = None,
    registry: DriverRegistry | None = None,
) -> EdgeConfig:
    """Two-stage validation; raises :class:`ConfigError` listing every problem found."""
    registry = registry or DriverRegistry()
    problems: list[Problem] = []
    doc = substitute_env(doc, environ() if env is None else env, "", problems)
    envelope = validate(EdgeEnvelope, doc, "", problems)
    raw_buses = _list_or_empty(doc.get("buses"))
    raw_devices = _list_or_empty(doc.get("devices"))
    buses = _validate_buses(raw_buses, registry, problems)
    devices = _validate_devices(raw_devices, raw_buses, registry, problems)
    _check_bus_kinds(raw_buses, buses, devices, registry, problems)
    if problems or envelope is None:
        raise ConfigError(source, problems)
    # NON_STR_KEYS: YAML keys may be booleans or numbers (`words: {true: [A]}`).
    digest = hashlib.sha256(
        orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    ).hexdigest()[:16]
    return EdgeConfig(
        source,
        envelope.agent,
        envelope.mqtt,
        envelope.publish,
        envelope.spool,
        buses,
        devices,
        config_hash=digest,
        health=envelope.health,
    )


def _list_or_empty(value: Any) -> list[Any]:
    # A wrong type here was already reported by the envelope; stage two just skips it.
    return value if isinstance(value, list) else []


def _driver_of(raw: Any, path: str, registry: DriverRegistry, problems: list[Problem]) -> Any:
    if not isinstance(raw, dict):
        return None
    name = raw.get("driver")
    if name is None:
        problems.append(
            Problem(
                join_path(path, "driver"),
                f"required field is missing; installed drivers: {', '.join(registry.names())}",
            )
        )
        return None
    try:
        return registry.get(str(name))
    except DriverNotFound as exc:
        problems.append(Problem(join_path(path, "driver"), str(exc)))
        return None


def _validate_buses(
    raw_buses: list[Any], registry: DriverRegistry, problems: list[Problem]
) -> list[BusBase]:
    out: list[BusBase] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_buses):
        path = f"buses[{i}]"
        plugin = _driver_of(raw, path, registry, problems)
        if plugin is None:
            continue
        bus = validate(plugin.bus_model, raw, path, problems)
        if bus is None:
            continue
        if bus.name in seen:
            problems.append(
                Problem(
                    f"{path}.name",
                    f"duplicate bus name {bus.name!r} (first at "
                    f"buses[{seen[bus.name]}]); bus names must be unique",
                )
            )
        seen.setdefault(bus.name, i)
        out.append(bus)
    return out


def _validate_devices(
    raw_devices: list[Any],
    raw_buses: list[Any],
    registry: DriverRegistry,
    problems: list[Problem],
) -> list[DeviceBase]:
    drivers = {str(b.get("name")): b.get("driver") for b in raw_buses if isinstance(b, dict)}
    out: list[DeviceBase] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_devices):
        path = f"devices[{i}]"
        if not isinstance(raw, dict):
            problems.append(Problem(path, "expected a mapping with name, bus, points..."))
            continue
        bus_name = raw.get("bus")
        if bus_name is None:
            problems.append(
                Problem(
                    f"{path}.bus",
                    "required field is missing; name one of the "
                    f"buses: {', '.join(drivers) or '(none defined)'}",
                )
            )
            continue
        if str(bus_name) not in drivers:
            problems.append(
                Problem(
                    f"{path}.bus",
                    f"no bus named {bus_name!r}; defined buses: "
                    f"{', '.join(drivers) or '(none)'}. Add it under `buses:` or fix the name",
                )
            )
            continue
        try:
            plugin = registry.get(str(drivers[str(bus_name)]))
        except DriverNotFound:
            continue  # already reported on the bus
        _check_point_names(raw, path, problems)
        device = validate(plugin.device_model, raw, path, problems)
        if device is None:
            continue
        if device.name in seen:
            problems.append(
                Problem(
                    f"{path}.name",
                    f"duplicate device name {device.name!r} (first at "
                    f"devices[{seen[device.name]}]); device names must be unique per agent",
                )
            )
        seen.setdefault(device.name, i)
        out.append(device)
    return out


def _check_bus_kinds(
    raw_buses: list[Any],
    buses: list[BusBase],
    devices: list[DeviceBase],
    registry: DriverRegistry,
    problems: list[Problem],
) -> None:
    """A bus whose enabled devices are both streaming and polled: one task owns a bus and it
    either waits for what devices push or asks, never both. Asks the driver's
    ``is_streaming`` hook (the device's config alone, nothing compiled); a driver without
    it is checked only when the agent starts. A streaming bus's request settings would be
    ignored: refused too, rather than silently."""
    index: dict[str, int] = {}
    for i, raw in enumerate(raw_buses):
        if isinstance(raw, dict):
            index.setdefault(str(raw.get("name")), i)
    checked: set[str] = set()
    for bus in buses:
        if bus.name in checked:
            continue  # a duplicate name, already reported
        checked.add(bus.name)
        try:
            plugin = registry.get(bus.driver)
        except DriverNotFound:
            continue  # already reported on the bus
        if not isinstance(plugin, StreamingPlugin):
            continue
        on_bus = [d for d in devices if d.bus == bus.name and d.enabled]
        streams = [d.name for d in on_bus if plugin.is_streaming(d)]
        polled = [d.name for d in on_bus if d.name not in streams]
        if bus.name not in index:
            continue
        if streams and polled:
            problems.append(
                Problem(f"buses[{index[bus.name]}].name", mixed_bus(bus.name, streams, polled))
            )
        elif streams:
            for name in ("request_gap", "connect_delay"):
                if name in bus.model_fields_set:
                    problems.append(
                        Problem(
                            f"buses[{index[bus.name]}].{name}",
                            f"the bus's devices ({', '.join(streams)}) send by themselves and "
                            f"are sent no requests: {name} does not apply; remove it",
                        )
                    )


def mixed_bus(bus: str, streams: list[str], polled: list[str]) -> str:
    """The problem of a bus carrying both kinds of device (also used at agent start)."""
    return (
        f"bus {bus!r} has streaming device(s) ({', '.join(streams)}) and polled device(s) "
        f"({', '.join(polled)}); a bus carries one kind: give the streaming devices a bus "
        "(port) of their own"
    )


def _check_point_names(raw: dict[str, Any], path: str, problems: list[Problem]) -> None:
    """Duplicate point names, found on the raw mapping so they are reported even when another
    field of the same point is wrong (all problems at once)."""
    points = raw.get("points")
    if not isinstance(points, list):
        return
    seen: dict[str, int] = {}
    for j, point in enumerate(points):
        name = point.get("name") if isinstance(point, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                Problem(
                    f"{path}.points[{j}].name",
                    f"duplicate point name {name!r} (first at "
                    f"points[{seen[name]}]); point names must be unique within a device",
                )
            )
        seen.setdefault(name, j)


def edge_json_schema(registry: DriverRegistry | None = None) -> dict[str, Any]:
    """The JSON Schema of an agent file, with every installed driver's bus and device models."""
    registry = registry or DriverRegistry()
    plugins = [registry.get(name) for name in registry.names()]
    bus_types = tuple(p.bus_model for p in plugins)
    device_types = tuple(p.device_model for p in plugins)
    bus_union: Any = Union[bus_types] if len(bus_types) > 1 else bus_types[0]  # noqa: UP007
    device_union: Any = Union[device_types] if len(device_types) > 1 else device_types[0]  # noqa: UP007
    model = create_model(
        "EdgeConfig",
        __base__=EdgeEnvelope,
        buses=(list[bus_union], Field(description="Field buses, each owned by one task.")),
        devices=(list[device_union], Field(description="Devices to poll.")),
    )
    schema = model.model_json_schema()
    schema["title"] = "fieldlink agent config (kind: edge)"
    return schema
