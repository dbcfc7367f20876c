"""InfluxDB 2.x write API writer (``POST /api/v2/write``), also for InfluxDB 3.x and
VictoriaMetrics, on ``influxdb_client``'s synchronous WriteApi.

``influxdb_client`` and ``urllib3`` errors are translated into :mod:`cloud.errors` here and
nowhere else.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import urllib3
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from cloud.errors import (
    InfluxAuthError,
    InfluxConfigError,
    InfluxRejectedError,
    InfluxUnavailableError,
)
from config.cloud import InfluxV2

log = logging.getLogger(__name__)

MAX_ERROR_TEXT = 2000


class InfluxV2Writer:
    """Owns one ``InfluxDBClient`` (and its connection pool); one thread at a time."""

    def __init__(self, config: InfluxV2) -> None:
        self._config = config
        # retries=False: the ingester owns the retry policy (backoff, no ack meanwhile); a
        # hidden urllib3 retry loop would only delay its decisions.
        self._client: Any = InfluxDBClient(
            url=config.url,
            token=config.token,
            org=config.org,
            timeout=int(config.timeout * 1000),
            retries=False,
            enable_gzip=config.gzip,
        )
        self._api: Any = self._client.write_api(write_options=SYNCHRONOUS)
        self.target = f"{config.url} org={config.org} bucket={config.bucket}"

    def write(self, body: bytes) -> None:
        try:
            self._api.write(
                bucket=self._config.bucket,
                org=self._config.org,
                record=body,
                write_precision=WritePrecision.NS,
            )
        except InfluxDBError as exc:
            raise self._translate(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise InfluxUnavailableError(
                f"cannot reach InfluxDB at {self._config.url}: {exc}"
            ) from exc

    def create_database(self) -> None:
        raise InfluxConfigError("the v2 API has no create_database; create the bucket first")

    def close(self) -> None:
        self._api.close()
        self._client.close()

    def _translate(self, exc: InfluxDBError) -> Exception:
        status = getattr(exc, "status", None)
        text = _message(exc)
        if not isinstance(status, int) or status == 0 or status >= 500 or status == 429:
            # status 0: the client's own wrapping of a TLS or connection failure.
            return InfluxUnavailableError(
                f"InfluxDB at {self._config.url} failed: {text}",
                retry_after=_seconds(getattr(exc, "retry_after", None)),
            )
        if status in (401, 403):
            return InfluxAuthError(
                f"InfluxDB at {self._config.url} refused the token ({_http(status, text)}); "
                "check influx.token (it needs write access to the bucket)"
            )
        if status == 404:
            return InfluxConfigError(
                f"InfluxDB at {self._config.url} answered 404 ({text}); check influx.org "
                f"{self._config.org!r} and influx.bucket {self._config.bucket!r}"
            )
        return InfluxRejectedError(status, text)


def _seconds(header: object) -> float | None:
    try:
        return max(0.0, float(header)) if isinstance(header, str | int | float) else None
    except ValueError:
        return None


def _http(status: int, text: str) -> str:
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _message(exc: InfluxDBError) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes | str) and body:
        raw = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])[:MAX_ERROR_TEXT]
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:MAX_ERROR_TEXT]
        return raw.strip()[:MAX_ERROR_TEXT]
    reason = getattr(exc, "reason", None)
    return str(reason or exc.message or exc)[:MAX_ERROR_TEXT]
