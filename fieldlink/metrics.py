"""Health metrics in the Prometheus text exposition format (0.0.4), and the tiny HTTP
endpoint that serves them (``GET /metrics``, ``GET /healthz``).

Why our own, and so small: the agent runs on gateways with a tight memory budget (60 MiB at
10,000 readings/s, ~56 used), so neither ``prometheus_client`` nor ``http.server`` (and its
threads) is imported; this module needs only the standard library and asyncio, and the agent
imports it only when ``health.listen`` is set.

Nothing is counted here. The agent and the ingester keep plain integer counters on their
live objects (they did before there was an endpoint); a :class:`Registry` holds
*collectors*, functions that read those objects when a scrape arrives and return
:class:`Family` objects. So the hot path pays nothing for the endpoint, and a value is as
fresh as the scrape.

The format (https://prometheus.io/docs/instrumenting/exposition_formats/): per family a
``# HELP`` and a ``# TYPE`` line, then one line per sample, ``name{label="value",...} value``.
Counters end in ``_total``; label values escape ``\\``, ``"`` and newline; values are Go
floats (``+Inf``, ``-Inf``, ``NaN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("fieldlink.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

MetricType = Literal["counter", "gauge"]


@dataclass
class Family:
    """One metric: its name, type, help text and samples (label set → value).

    A counter's name ends in ``_total``. Label names are checked here, once per family;
    values are any text (escaped when rendered).
    """

    name: str
    type: MetricType
    help: str
    #: Label names, in the order they are rendered; every sample gives a value for each.
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")
        for label in self.labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} in {self.name}")

    def add(self, value: float, *label_values: str) -> Family:
        """Add a sample; ``label_values`` in the order of :attr:`labels`."""
        if len(label_values) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(label_values)} label value(s) for labels {self.labels}"
            )
        self.samples.append((label_values, value))
        return self


def counter(name: str, help: str, *labels: str) -> Family:
    return Family(name, "counter", help, labels)


def gauge(name: str, help: str, *labels: str) -> Family:
    return Family(name, "gauge", help, labels)


#: A collector returns the families it sees now; it may be a coroutine function (one that
#: needs a thread hop, e.g. a query of the agent's spool).
Collector = Callable[[], Iterable[Family] | Awaitable[Iterable[Family]]]


class Registry:
    """Collectors, asked at every scrape. Families of the same name from several collectors
    (one per bus worker, say) are merged into one family."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    async def collect(self) -> list[Family]:
        merged: dict[str, Family] = {}
        for collector in self._collectors:
            try:
                result = collector()
                families = await result if isinstance(result, Awaitable) else result
                for family in families:
                    known = merged.get(family.name)
                    if known is None:
                        merged[family.name] = family
                    elif known.type != family.type or known.labels != family.labels:
                        raise ValueError(f"{family.name} is defined twice, differently")
                    else:
                        known.samples.extend(family.samples)
            except Exception:
                # One broken collector must not take the endpoint (or the agent) down: its
                # metrics are missing from this scrape, the others are served.
                log.exception("collecting metrics failed in %r", collector)
        return list(merged.values())

    async def render(self) -> str:
        return render(await self.collect())


def render(families: Iterable[Family]) -> str:
    """The families in the text exposition format 0.0.4. A sample whose label set repeats
    an earlier one of its family is left out (Prometheus would refuse the whole scrape)."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {escape_help(family.help)}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        seen: set[tuple[str, ...]] = set()
        for values, value in family.samples:
            if values in seen:
                log.warning("%s: duplicate sample %r left out", family.name, values)
                continue
            seen.add(values)
            if values:
                pairs = ",".join(
                    f'{name}="{escape_label(v)}"'
                    for name, v in zip(family.labels, values, strict=True)
                )
                out.append(f"{family.name}{{{pairs}}} {format_value(value)}\n")
            else:
                out.append(f"{family.name} {format_value(value)}\n")
    return "".join(out)


def escape_label(value: str) -> str:
    """A label value as the format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Help text: backslash and newline escaped (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as a Go float: integers exactly, floats in their shortest form."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# --- the endpoint ------------------------------------------------------------------------------

#: What ``/healthz`` answers: healthy or not, and a short text saying why.
HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]

#: Bytes of request line and headers accepted; scrapers send a few hundred.
MAX_REQUEST_HEAD = 8192
#: Seconds a client may take to send its request.
REQUEST_TIMEOUT = 10.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ListenError(Exception):
    """The endpoint cannot listen on its configured address; the text is one line naming
    the address, the config field and the fix."""


class MetricsServer:
    """``GET /metrics`` (the registry, rendered at each request), ``GET /healthz`` (200 or
    503 and the check's text), 404 for other paths, 405 for other methods. HTTP/1.1, one
    request per connection (``Connection: close``): a scraper asks every few seconds, so
    keeping connections alive would save nothing worth the code.

    ``config_field`` is the config field the address came from, named in a
    :class:`ListenError`.
    """

    def __init__(
        self,
        registry: Registry,
        host: str,
        port: int,
        *,
        health: HealthCheck | None = None,
        config_field: str = "health.listen",
    ) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._health = health
        self._field = config_field
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The address listened on (the real port, once started)."""
        if self._server is not None and self._server.sockets:
            sockname = self._server.sockets[0].getsockname()
            return str(sockname[0]), int(sockname[1])
        return self._host, self._port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Listen; raises :class:`ListenError` (one line: address, field, fix) when the
        address cannot be used."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_REQUEST_HEAD
            )
        except socket.gaierror as exc:
            raise ListenError(
                f"{self._field}: cannot listen on {self._where}: the host name does not "
                f"resolve ({exc.strerror}); use an address of this machine, e.g. "
                f"127.0.0.1:{self._port}"
            ) from exc
        except OSError as exc:
            raise ListenError(
                f"{self._field}: cannot listen on {self._where}: {_listen_problem(exc)}"
            ) from exc
        log.info("health endpoint on %s/metrics and %s/healthz", self.url, self.url)

    async def close(self) -> None:
        """Stop listening, end the connections being served, and wait for them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def _where(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stalled: nothing to answer
        except asyncio.CancelledError:
            # Closing: the connection ends here. Not re-raised: this task belongs to the
            # server, and its cancellation is our own doing (close()).
            pass
        except Exception:
            log.exception("health endpoint: answering a request failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "request head too large\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, "expected an HTTP/1.x request line\n")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            await _respond(writer, 404, "not found; try /metrics or /healthz\n", method=method)
            return
        if method not in ("GET", "HEAD"):
            await _respond(
                writer, 405, f"{method} not allowed; use GET\n", extra={"Allow": "GET, HEAD"}
            )
            return
        if path == "/metrics":
            try:
                text = await self._registry.render()
            except Exception:
                log.exception("health endpoint: rendering the metrics failed")
                await _respond(writer, 500, "rendering the metrics failed; see the log\n")
                return
            await _respond(writer, 200, text, content_type=CONTENT_TYPE, method=method)
            return
        ok, why = (True, "ok") if self._health is None else await self._health()
        await _respond(writer, 200 if ok else 503, why + "\n", method=method)


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: str,
    *,
    content_type: str = "text/plain; charset=utf-8",
    method: str = "GET",
    extra: Mapping[str, str] | None = None,
) -> None:
    data = body.encode("utf-8")
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(data)),
        "Connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    writer.write(head.encode("latin-1") + b"\r\n" + (b"" if method == "HEAD" else data))
    await writer.drain()


def _listen_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            "the address is already in use (another process listens there: a second agent "
            "or ingester?); stop it, or choose another port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no network interface of this machine has that address; use one it has"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges); choose a port above 1023"
    return f"{exc.strerror or exc}; choose another address"
