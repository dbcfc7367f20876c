"""The broker connection settings agents and ingesters share."""

from __future__ import annotations

from pydantic import Field

from config.base import Ident, StrictModel


class BrokerSection(StrictModel):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    username: str | None = Field(default=None, description="User name, if the broker wants one.")
    password: str | None = Field(
        default=None, description="Password; write it as ${ENV_VAR} rather than in the file."
    )
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keep-alive in seconds.")
    topic_root: Ident = Field(
        default="fieldlink",
        description="First level of every topic; agents and ingesters must agree on it.",
    )
