"""The broker connection settings agents and ingesters share."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import Field, model_validator

from config.base import Ident, StrictModel


class TlsSection(StrictModel):
    """TLS to the broker. The server certificate is always verified, host name included; a
    TLS connection that fails is never retried in plain TCP."""

    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed the broker's certificate; the system's CAs if unset.",
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS; needs key_file."
    )
    key_file: Path | None = Field(
        default=None, description="Private key (PEM) of cert_file, for mutual TLS."
    )

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context (certificate and host name), with the client
        certificate loaded for mutual TLS. One place for the agent and the ingester."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("@cert_file: mutual TLS needs both cert_file and key_file")
        return self


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
    tls: TlsSection | None = Field(
        default=None,
        description="Connect with TLS (port 8883 usually); unset: plain TCP.",
    )
