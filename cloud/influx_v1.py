"""InfluxDB 1.x writer: ``POST /write?db=&rp=&precision=ns`` over one keep-alive connection.

Only the standard library: a gateway-sized ingester should not need an HTTP client package to
talk to InfluxDB 1.x. ``http.client`` errors are translated into :mod:`cloud.errors` here and
nowhere else.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import ssl
from urllib.parse import urlencode, urlsplit

from cloud.errors import (
    InfluxAuthError,
    InfluxConfigError,
    InfluxDatabaseMissingError,
    InfluxRejectedError,
    InfluxUnavailableError,
)
from cloud.influxql import quote_ident
from config.cloud import InfluxV1

log = logging.getLogger(__name__)

#: Error texts are cut to this length: a 400 echoes the offending line, which may be long.
MAX_ERROR_TEXT = 2000


class InfluxV1Writer:
    """Owns one HTTP connection; used by one thread at a time."""

    def __init__(self, config: InfluxV1) -> None:
        self._config = config
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        prefix = parts.path.rstrip("/")
        params = {"db": config.database, "precision": "ns"}
        if config.retention_policy is not None:
            params["rp"] = config.retention_policy
        self._write_path = f"{prefix}/write?{urlencode(params)}"
        self._query_path = f"{prefix}/query"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.username is not None:
            # InfluxDB 1.x accepts Basic auth on every endpoint; unlike u=&p= in the query
            # string, it does not end up in proxy access logs.
            token = f"{config.username}:{config.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        self._gzip = config.gzip
        self._gzip_headers = dict(self._headers, **{"Content-Encoding": "gzip"})
        self._conn: http.client.HTTPConnection | None = None
        #: Retry-After of the last answer, in seconds (None when absent or not a number).
        self._retry_after: float | None = None
        rp = f" rp={config.retention_policy}" if config.retention_policy else ""
        self.target = f"{config.url} db={config.database}{rp}"

    def write(self, body: bytes) -> None:
        headers = self._headers
        if self._gzip:
            # Level 1: most of the size gain (line protocol repeats its tags) for little CPU.
            body = gzip.compress(body, compresslevel=1)
            headers = self._gzip_headers
        status, data, header = self._request("POST", self._write_path, body, headers)
        if status in (200, 204):
            return
        text = _error_text(data, header)
        if status in (401, 403):
            raise InfluxAuthError(
                f"InfluxDB at {self._config.url} refused the credentials "
                f"({_http(status, text)}); check influx.username/password"
            )
        if status == 404 and "database not found" in text:
            raise InfluxDatabaseMissingError(self._config.database, text)
        if status == 404:
            raise InfluxConfigError(
                f"{self._config.url}/write answered 404 ({text or 'no text'}); "
                "is influx.url the base URL of an InfluxDB 1.x server?"
            )
        if "retention policy not found" in text:
            # InfluxDB 1.x answers this with a 500; retrying would never end.
            raise InfluxConfigError(
                f"influx.retention_policy {self._config.retention_policy!r} does not exist in "
                f"database {self._config.database!r} ({text})"
            )
        if status >= 500 or status == 429:
            raise InfluxUnavailableError(
                f"InfluxDB at {self._config.url} answered {status}: {text}",
                retry_after=self._retry_after,
            )
        raise InfluxRejectedError(status, text)

    def create_database(self) -> None:
        statement = f"CREATE DATABASE {quote_ident(self._config.database)}"
        headers = dict(self._headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        body = urlencode({"q": statement}).encode("ascii")
        status, data, header = self._request("POST", self._query_path, body, headers)
        text = _error_text(data, header) if status != 200 else _statement_error(data)
        if status in (401, 403):
            raise InfluxAuthError(
                f"InfluxDB at {self._config.url} refused to create database "
                f"{self._config.database!r} ({_http(status, text)}); creating a database needs "
                "an admin user in influx.username/password"
            )
        if status >= 500 or status == 429:
            raise InfluxUnavailableError(
                f"InfluxDB at {self._config.url} answered {status}: {text}"
            )
        if status != 200 or text:
            raise InfluxConfigError(
                f"cannot create database {self._config.database!r} ({_http(status, text)})"
            )
        log.warning("created InfluxDB database %r at %s", self._config.database, self._config.url)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        """Send one request; return (status, body, X-Influxdb-Error header). The only place
        http.client errors are caught."""
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._conn if self._conn is not None else self._connect()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                # The server closes idle keep-alive connections; the first request on such a
                # connection fails without reaching it. Resending is safe: a write of the same
                # points is idempotent.
                if reused and attempt == 1:
                    continue
                raise self._unavailable(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unavailable(exc) from exc
            if response.will_close:
                self.close()
            self._retry_after = _seconds(response.getheader("Retry-After"))
            return response.status, data, response.getheader("X-Influxdb-Error") or ""
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> http.client.HTTPConnection:
        timeout = self._config.timeout
        if self._https:
            context = ssl.create_default_context()
            self._conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._conn

    def _unavailable(self, exc: BaseException) -> InfluxUnavailableError:
        reason = str(exc) or type(exc).__name__
        return InfluxUnavailableError(f"cannot reach InfluxDB at {self._config.url}: {reason}")


def _seconds(header: str | None) -> float | None:
    """Retry-After as seconds; the HTTP-date form is rare from InfluxDB and is ignored."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


def _http(status: int, text: str) -> str:
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _error_text(data: bytes, header: str) -> str:
    """InfluxDB's error message: the JSON ``error`` of the body, else the body or header."""
    text = data.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        text = doc["error"]
    return (text or header)[:MAX_ERROR_TEXT]


def _statement_error(data: bytes) -> str:
    """The first statement error of a 200 answer from /query, or ``""``."""
    try:
        doc = json.loads(data)
    except ValueError:
        return "the answer is not JSON"
    results = doc.get("results") if isinstance(doc, dict) else None
    for result in results if isinstance(results, list) else []:
        if isinstance(result, dict) and isinstance(result.get("error"), str):
            return str(result["error"])[:MAX_ERROR_TEXT]
    return ""
