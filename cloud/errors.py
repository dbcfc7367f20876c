"""The cloud side's own exceptions and exit codes.

Library exceptions (``influxdb_client``, ``paho``, ``http.client``, ``urllib``) are translated
into these in exactly one place per library — the module that wraps it — so callers never
import a third-party type to handle an error.
"""

from __future__ import annotations

#: Exit codes of ``fieldlink cloud run`` and ``fieldlink query``.
EXIT_OK = 0
#: ``query`` only: the query ran but no reading matched.
EXIT_NO_MATCH = 1
#: The config file or the command line is wrong (argparse uses 2 as well).
EXIT_CONFIG = 2
#: InfluxDB refused us for good: bad credentials, missing database, unusable answer.
EXIT_INFLUX = 3
#: The MQTT broker refused us for good (bad credentials, not authorised, bad client id).
EXIT_MQTT = 4


class CloudError(Exception):
    """Base of every error raised by the ``cloud`` package."""


class FatalError(CloudError):
    """Retrying cannot help; an operator has to change something. Carries the exit code."""

    exit_code = EXIT_INFLUX


# --- InfluxDB ---------------------------------------------------------------------------------


class InfluxError(CloudError):
    """Any failure talking to InfluxDB."""


class InfluxUnavailableError(InfluxError):
    """Connection refused, timeout or a 5xx/429 answer: try the same request again later.

    ``retry_after`` is the server's Retry-After in seconds, when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class InfluxRejectedError(InfluxError):
    """The server refused the points themselves (400, 413...). ``text`` is its error text."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(f"InfluxDB refused the write (HTTP {status}): {text}")


class InfluxAuthError(InfluxError, FatalError):
    """401/403: the credentials in the config are wrong or lack a permission."""


class InfluxDatabaseMissingError(InfluxError):
    """404 on a v1 write: the database does not exist (the caller may create it)."""

    def __init__(self, database: str, text: str) -> None:
        self.database = database
        self.text = text
        super().__init__(
            f"influx.database {database!r} does not exist; "
            "create it or set influx.create_database: true"
        )


class InfluxConfigError(InfluxError, FatalError):
    """The server says a configured name is wrong (missing database or retention policy)."""


class InfluxQueryError(InfluxError):
    """An InfluxQL statement failed; ``text`` is the server's error."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)


# --- MQTT -------------------------------------------------------------------------------------


class MqttError(CloudError):
    """Any failure talking to the broker."""


class MqttRefusedError(MqttError, FatalError):
    """The broker refused the connection for a reason retrying cannot fix."""

    exit_code = EXIT_MQTT
