"""What the ingester needs from a database: write a body of line protocol, or say why not."""

from __future__ import annotations

from typing import Protocol

from config.cloud import InfluxV1, InfluxV2


class Writer(Protocol):
    """A blocking writer owned by one thread at a time (the ingester calls it via a worker
    thread so that the event loop stays responsive).

    :meth:`write` returns when the server accepted every line, and otherwise raises one of
    :class:`cloud.errors.InfluxUnavailableError` (retry the same body later),
    :class:`cloud.errors.InfluxRejectedError` (the points are bad),
    :class:`cloud.errors.InfluxDatabaseMissingError` (v1),
    :class:`cloud.errors.FatalError` (a setting is wrong).
    """

    #: Where the writes go, for log lines: ``http://host:8086 db=plant``.
    target: str

    def write(self, body: bytes) -> None: ...

    def create_database(self) -> None:
        """Create the configured database (v1); raise if this writer cannot."""
        ...

    def close(self) -> None: ...


def open_writer(config: InfluxV1 | InfluxV2) -> Writer:
    """The writer for the configured API. Imports lazily: v1 needs only the stdlib."""
    if isinstance(config, InfluxV1):
        from cloud.influx_v1 import InfluxV1Writer

        return InfluxV1Writer(config)
    from cloud.influx_v2 import InfluxV2Writer

    return InfluxV2Writer(config)
