"""The ingester's config file (``kind: cloud``): where to read readings and where to write them.

Example files: ``config/examples/cloud-influx1.yaml`` and ``config/examples/cloud-v2.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from config.base import Ident, StrictModel
from config.edge import HealthSection
from config.errors import ConfigError, Problem
from config.loader import read_document, substitute_env, validate
from config.mqtt import BrokerSection

#: Messages the broker may have in flight to the ingester, unacknowledged (MQTT 5 Receive
#: Maximum). Acks wait for InfluxDB, so this also bounds the ingester's memory.
DEFAULT_RECEIVE_MAXIMUM = 1000


class MqttSection(BrokerSection):
    client_id: str = Field(
        default="fieldlink-ingester",
        min_length=1,
        max_length=128,
        description=(
            "MQTT client id. Fixed, because the broker keeps the session (subscription and "
            "unacknowledged messages) under this id while the ingester is down; two ingesters "
            "with one id would take the session from each other."
        ),
    )
    group: Ident | None = Field(
        default=None,
        description=(
            "Shared-subscription group. Ingesters with the same group (and each its own "
            "client_id) share the data topics: each message goes to one of them "
            "(`$share/<group>/...`, MQTT 5). Unset: this ingester takes every message."
        ),
    )
    session_expiry: int = Field(
        default=3600,
        ge=0,
        le=0xFFFFFFFF,
        description=(
            "Seconds the broker keeps the session, and queues readings for it, after the "
            "ingester disconnects. Readings published during a longer outage are lost."
        ),
    )
    receive_maximum: int = Field(
        default=DEFAULT_RECEIVE_MAXIMUM,
        ge=1,
        le=65535,
        description=(
            "Most messages the broker sends before the ingester acknowledges them (MQTT 5 "
            "Receive Maximum). Messages are acknowledged only once written, so this bounds "
            "memory; keep it well above batch.max_points / readings per message."
        ),
    )


class _InfluxBase(StrictModel):
    url: str = Field(description="Base URL of the server, e.g. http://127.0.0.1:8086.")
    measurement: Ident = Field(
        default="readings", description="Measurement every reading is written to."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds to wait for one write to be answered."
    )
    compress: Literal["auto", "gzip", "none"] = Field(
        default="auto",
        description=(
            "Compress write bodies with gzip. `auto` compresses unless the server is on this "
            "machine (loopback), where it would only cost CPU."
        ),
    )

    @property
    def gzip(self) -> bool:
        if self.compress == "auto":
            host = urlsplit(self.url).hostname or ""
            return not (host == "localhost" or host.startswith("127.") or host == "::1")
        return self.compress == "gzip"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("the URL may not have a query (?...) or fragment (#...)")
        return value.rstrip("/")


class InfluxV1(_InfluxBase):
    """InfluxDB 1.x: ``POST /write`` with database and retention policy."""

    api: Literal["v1"] = Field(description="`v1`: the InfluxDB 1.x write API (POST /write).")
    database: str = Field(min_length=1, description="Database to write into.")
    retention_policy: str | None = Field(
        default=None,
        min_length=1,
        description="Retention policy; the database's default policy when not set.",
    )
    username: str | None = Field(
        default=None, description="User name, when the server has auth-enabled = true."
    )
    password: str | None = Field(
        default=None, description="Password; write it as ${ENV_VAR} rather than in the file."
    )
    create_database: bool = Field(
        default=False,
        description=(
            "Create the database if it does not exist (needs an admin user). Off by default so "
            "that a typo in `database` is an error rather than a new, empty database."
        ),
    )

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> InfluxV1:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        return self


class InfluxV2(_InfluxBase):
    """The InfluxDB 2.x write API, also served by InfluxDB 3.x and VictoriaMetrics."""

    api: Literal["v2"] = Field(
        description="`v2`: POST /api/v2/write (InfluxDB 2.x/3.x, VictoriaMetrics)."
    )
    org: str = Field(min_length=1, description="Organization name or id.")
    bucket: str = Field(min_length=1, description="Bucket to write into.")
    token: str = Field(
        min_length=1,
        description="API token with write access; write it as ${ENV_VAR}.",
    )


def _influx_api(value: Any) -> str | None:
    # A callable discriminator with capitalised tags: config.loader drops capitalised
    # location parts, so problems read `influx.token`, not `influx.v2.token`.
    api = value.get("api") if isinstance(value, dict) else getattr(value, "api", None)
    return {"v1": "InfluxV1", "v2": "InfluxV2"}.get(api) if isinstance(api, str) else None


InfluxSection = Annotated[
    Annotated[InfluxV1, Tag("InfluxV1")] | Annotated[InfluxV2, Tag("InfluxV2")],
    Discriminator(
        _influx_api,
        custom_error_type="influx_api",
        custom_error_message=(
            "`api` must be v1 (InfluxDB 1.x /write) or v2 (/api/v2/write: InfluxDB 2.x/3.x, "
            "VictoriaMetrics)"
        ),
    ),
]


class BatchSection(StrictModel):
    max_points: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Write as soon as this many points are waiting.",
    )
    max_delay: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds the first waiting point may wait before the batch is written.",
    )
    # Two overlap InfluxDB's work on one batch with the round trip and parsing of the next;
    # InfluxDB 1.x took 1.2-2.5x the points/s from two writers as from one in five of six
    # runs of `bench ingest` (0.8x in one on a busy machine). More were not measured, and
    # each holds one more batch unacknowledged.
    writes_in_flight: int = Field(
        default=2,
        ge=1,
        le=8,
        description=(
            "Batches written to InfluxDB at once, each over its own connection, while the next "
            "is validated; acknowledgements and confirms still go out in arrival order. 1 "
            "writes strictly one batch after the other."
        ),
    )


class IngestSection(StrictModel):
    max_message_bytes: int = Field(
        default=1_048_576,
        ge=256,
        le=268_435_455,
        description="Larger MQTT messages are dead-lettered without being parsed.",
    )
    max_future: float = Field(
        default=300,
        ge=0,
        description=(
            "A message with a reading stamped more than this many seconds ahead of the "
            "ingester's clock is refused (a gateway with a wrong clock)."
        ),
    )
    max_age: float | None = Field(
        default=None,
        gt=0,
        description=(
            "A message with a reading older than this many seconds is refused; unlimited when "
            "not set, so that a spool drained after a long outage still lands."
        ),
    )


class CloudConfig(StrictModel):
    """The whole ``kind: cloud`` file."""

    kind: Literal["cloud"] = Field(description="Must be `cloud` for an ingester config.")
    mqtt: MqttSection = Field(default_factory=MqttSection, description="The broker to read from.")
    influx: InfluxSection = Field(description="Where readings are written; see `api`.")
    batch: BatchSection = Field(
        default_factory=BatchSection, description="How readings are grouped into writes."
    )
    ingest: IngestSection = Field(
        default_factory=IngestSection, description="Limits a message must respect to be written."
    )
    health: HealthSection = Field(
        default_factory=HealthSection,
        description="The Prometheus metrics and /healthz endpoint; off unless `listen` is set.",
    )


def load_cloud_config(path: Path | str, env: Mapping[str, str] = os.environ) -> CloudConfig:
    """Read, substitute ``${ENV}`` and validate; raise :class:`ConfigError` with every problem."""
    path = Path(path)
    doc = read_document(path)
    problems: list[Problem] = []
    data = substitute_env(doc, env, "", problems)
    config = validate(CloudConfig, data, "", problems)
    if problems or config is None:
        raise ConfigError(str(path), problems)
    return config


def cloud_json_schema() -> dict[str, Any]:
    """JSON Schema of the ``kind: cloud`` file, for editors and ``fieldlink schema cloud``."""
    return CloudConfig.model_json_schema()
