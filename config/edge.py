"""The agent's config file (``kind: edge``): who it is, where it publishes, what it polls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from config.base import Ident, StrictModel


class AgentSection(StrictModel):
    id: Ident = Field(description="Agent id, unique per site; the `agent` tag and a topic level.")
    site: Ident = Field(description="Site the agent belongs to; the `site` tag and a topic level.")


class MqttSection(StrictModel):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    username: str | None = Field(default=None, description="User name, if the broker wants one.")
    password: str | None = Field(
        default=None, description="Password; write it as ${ENV_VAR} rather than in the file."
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; defaults to fieldlink-<site>-<agent>."
    )
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keep-alive in seconds.")
    topic_root: Ident = Field(default="fieldlink", description="First level of every topic.")


class PublishSection(StrictModel):
    max_batch: int = Field(
        default=2000, ge=1, le=100_000, description="Most readings packed into one MQTT message."
    )
    max_delay: float = Field(
        default=0.2, gt=0, le=60, description="Seconds a reading may wait for its batch to fill."
    )
    queue_size: int = Field(
        default=200_000,
        ge=1000,
        description=(
            "Readings held in memory while the broker is slow or away. When full, the oldest "
            "are dropped and counted (the disk spool of the delivery issue replaces this)."
        ),
    )


class EdgeEnvelope(StrictModel):
    """Stage one of validation: the parts every agent file has. Buses and devices are checked
    in stage two against the model of their driver."""

    kind: Literal["edge"] = Field(description="Must be `edge` for an agent config.")
    agent: AgentSection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    publish: PublishSection = Field(default_factory=PublishSection)
    buses: list[dict[str, Any]] = Field(description="Field buses; see each driver's schema.")
    devices: list[dict[str, Any]] = Field(description="Devices to poll; see each driver's schema.")
