"""``fieldlink query``: read readings back with InfluxQL over HTTP (``/query``, ``epoch=ns``).

Works against InfluxDB 1.x, and 2.x/3.x through their InfluxQL compatibility endpoint (with a
token). VictoriaMetrics has no InfluxQL; query it with PromQL (``readings_value{...}``).

Two operations, both filterable by site, agent, asset, device and point:

* :func:`latest` — the newest reading of every point, whatever its quality;
* :func:`window_range` — one aggregate (mean, max, ...) of ``value`` per time window and point.

``urllib`` errors are translated into :mod:`cloud.errors` here and nowhere else.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlencode

from rich.console import Console
from rich.table import Table

from cloud.errors import (
    InfluxAuthError,
    InfluxConfigError,
    InfluxQueryError,
    InfluxUnavailableError,
)
from cloud.influxql import duration_ns, quote_ident, quote_string

#: Aggregates ``range --agg`` accepts (InfluxQL functions of one numeric field).
AGGREGATES = ("mean", "median", "min", "max", "first", "last", "count", "sum", "spread", "stddev")
#: More windows than this per point is almost certainly a mistake (``--every 1s`` over a month).
MAX_WINDOWS = 100_000
#: The tags a reading is identified by, in display order.
SERIES_TAGS = ("site", "agent", "asset", "device", "point")
_RELATIVE = re.compile(r"^(?:now)?\s*-\s*(\S+)$")


@dataclass(frozen=True, slots=True)
class QueryTarget:
    """Where to send InfluxQL: a server, a database and the credentials."""

    url: str
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    #: InfluxDB 2.x/3.x token (``Authorization: Token ...``) instead of a user and password.
    token: str | None = None
    measurement: str = "readings"
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Filters:
    """Each non-empty tuple keeps readings whose tag equals one of its values."""

    site: tuple[str, ...] = ()
    agent: tuple[str, ...] = ()
    asset: tuple[str, ...] = ()
    device: tuple[str, ...] = ()
    point: tuple[str, ...] = ()

    def conditions(self) -> list[str]:
        out = []
        for tag in SERIES_TAGS:
            values: tuple[str, ...] = getattr(self, tag)
            if values:
                alternatives = " OR ".join(
                    f"{quote_ident(tag)} = {quote_string(v)}" for v in values
                )
                out.append(f"({alternatives})" if len(values) > 1 else alternatives)
        return out


@dataclass(frozen=True, slots=True)
class Result:
    """Rows ready to print; every cell is already text (``""`` for nothing)."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


# --- statements -------------------------------------------------------------------------------


def _source(target: QueryTarget) -> str:
    if target.retention_policy:
        return ".".join(
            quote_ident(x) for x in (target.database, target.retention_policy, target.measurement)
        )
    return quote_ident(target.measurement)


def latest_statement(target: QueryTarget, filters: Filters) -> str:
    """The newest point of every series (one series per site/agent/asset/device/point/unit).

    A raw ``SELECT *`` with ``LIMIT 1`` per series, rather than ``last(value)``: it keeps the
    reading's own time and its quality and reason together (several selectors in one query
    would report time 0), and it shows a point whose newest reading is bad.
    """
    where = filters.conditions()
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT * FROM {_source(target)}{clause} GROUP BY * ORDER BY time DESC LIMIT 1"


def range_statement(
    target: QueryTarget, filters: Filters, start_ns: int, end_ns: int, every: str, agg: str
) -> str:
    """One ``agg(value)`` per window of ``every`` and per series, empty windows left out."""
    if agg not in AGGREGATES:
        raise ValueError(f"--agg must be one of {', '.join(AGGREGATES)}; got {agg!r}")
    width = duration_ns(every)
    if end_ns <= start_ns:
        raise ValueError("--to must be later than --from")
    if (end_ns - start_ns) // width > MAX_WINDOWS:
        raise ValueError(
            f"{(end_ns - start_ns) // width} windows of {every} per point is more than "
            f"{MAX_WINDOWS}; choose a larger --every or a shorter range"
        )
    where = [f"time >= {start_ns}", f"time < {end_ns}", *filters.conditions()]
    tags = ", ".join(quote_ident(t) for t in (*SERIES_TAGS, "unit"))
    return (
        f"SELECT {agg}({quote_ident('value')}) AS {quote_ident('value')} FROM {_source(target)} "
        f"WHERE {' AND '.join(where)} GROUP BY time({every}), {tags} fill(none)"
    )


# --- running them -----------------------------------------------------------------------------


def run_query(target: QueryTarget, statement: str) -> list[dict[str, Any]]:
    """Run one statement; return its series (``name``, ``tags``, ``columns``, ``values``)."""
    params = {"db": target.database, "epoch": "ns"}
    url = f"{target.url.rstrip('/')}/query?{urlencode(params)}"
    body = urlencode({"q": statement}).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    request.add_header("Accept", "application/json")
    if target.token is not None:
        request.add_header("Authorization", f"Token {target.token}")
    elif target.username is not None:
        creds = f"{target.username}:{target.password or ''}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(creds).decode("ascii"))
    try:
        with urllib.request.urlopen(request, timeout=target.timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            text = _error_text(exc.read())
        raise _http_error(target, exc.code, text) from exc
    except urllib.error.URLError as exc:
        raise InfluxUnavailableError(
            f"cannot reach InfluxDB at {target.url}: {exc.reason}"
        ) from exc
    except (OSError, ValueError) as exc:  # timeouts, resets, a URL urllib cannot use
        raise InfluxUnavailableError(f"cannot reach InfluxDB at {target.url}: {exc}") from exc
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InfluxQueryError(f"{target.url}/query did not answer JSON") from exc
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        error = doc.get("error") if isinstance(doc, dict) else None
        raise InfluxQueryError(str(error or f"{target.url}/query gave an unexpected answer"))
    first = results[0]
    if isinstance(first.get("error"), str):
        error = first["error"]
        if error.startswith("database not found"):
            raise InfluxConfigError(
                f"database {target.database!r} does not exist at {target.url} ({error})"
            )
        if error.startswith("retention policy not found"):
            raise InfluxConfigError(
                f"retention policy {target.retention_policy!r} does not exist in database "
                f"{target.database!r} at {target.url}"
            )
        raise InfluxQueryError(f"InfluxDB refused the query: {error}\n  query: {statement}")
    series = first.get("series") or []
    return [s for s in series if isinstance(s, dict)]


def _http_error(target: QueryTarget, status: int, text: str) -> Exception:
    if status in (401, 403):
        which = (
            "the token (--token, influx.token)"
            if target.token
            else ("the credentials (--username/--password, influx.username/password)")
        )
        return InfluxAuthError(
            f"InfluxDB at {target.url} refused {which}: HTTP {status} {text}".rstrip()
        )
    if status == 404:
        return InfluxConfigError(
            f"{target.url} has no InfluxQL /query endpoint (HTTP 404); is it the base URL of an "
            "InfluxDB server? (VictoriaMetrics has none: query it with PromQL)"
        )
    if status >= 500:
        return InfluxUnavailableError(f"InfluxDB at {target.url} answered {status}: {text}")
    return InfluxQueryError(f"InfluxDB refused the query (HTTP {status}): {text}")


def _error_text(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return text[:500]


# --- the two operations -----------------------------------------------------------------------

LATEST_COLUMNS = (
    "site", "agent", "asset", "device", "point", "value", "unit", "quality", "time", "reason",
)  # fmt: skip


def latest(target: QueryTarget, filters: Filters) -> Result:
    """The newest reading of each point, sorted by site, agent, asset, device, point."""
    rows = []
    for series in run_query(target, latest_statement(target, filters)):
        tags = series.get("tags") or {}
        for record in _records(series):
            value = _value_text(record.get("value"), record.get("state"), record.get("text"))
            rows.append(
                (
                    *(str(tags.get(t, "")) for t in SERIES_TAGS),
                    value,
                    str(tags.get("unit", "")),
                    str(record.get("quality") or ""),
                    format_time(record["time"]),
                    str(record.get("reason") or ""),
                )
            )
    rows.sort()
    return Result(LATEST_COLUMNS, rows)


def window_range(
    target: QueryTarget, filters: Filters, start_ns: int, end_ns: int, every: str, agg: str
) -> Result:
    """One row per window and point: window start, ``agg(value)``, unit."""
    statement = range_statement(target, filters, start_ns, end_ns, every, agg)
    rows = []
    for series in run_query(target, statement):
        tags = series.get("tags") or {}
        for record in _records(series):
            rows.append(
                (
                    *(str(tags.get(t, "")) for t in SERIES_TAGS),
                    format_time(record["time"]),
                    _number_text(record.get("value"), whole=agg == "count"),
                    str(tags.get("unit", "")),
                )
            )
    rows.sort()
    return Result((*SERIES_TAGS, "time", agg, "unit"), rows)


def _records(series: dict[str, Any]) -> list[dict[str, Any]]:
    columns = series.get("columns") or []
    return [dict(zip(columns, values, strict=False)) for values in series.get("values") or []]


def _value_text(value: object, state: object, text: object) -> str:
    if value is not None:
        return _number_text(value)
    if isinstance(state, bool):
        return "true" if state else "false"
    if text is not None:
        return str(text)
    return ""


def _number_text(value: object, *, whole: bool = False) -> str:
    """A number as text. ``value`` is a float field, but JSON drops the ``.0`` of a whole float,
    so numbers are shown as floats unless ``whole`` (``count``) says they are counts."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if whole else repr(float(value))
    return str(value)


# --- time ------------------------------------------------------------------------------------


def format_time(ts_ns: int) -> str:
    """ISO 8601 in UTC with all nine digits: ``2024-11-29T17:46:40.123456789Z``."""
    seconds, nanos = divmod(int(ts_ns), 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def parse_time(text: str, now_ns: int | None = None) -> int:
    """``now``, a relative time (``-1h``, ``now-15m``) or an ISO 8601 time (UTC if it has no
    offset) → nanoseconds since the epoch. Raises ValueError saying what is accepted."""
    now = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative is not None:
        return now - duration_ns(relative.group(1))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; write now, -1h, now-15m or an ISO 8601 time such as "
            "2024-11-29T17:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


# --- output ----------------------------------------------------------------------------------


def write_csv(result: Result, stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)


def print_table(result: Result, console: Console, *, title: str | None = None) -> None:
    table = Table(title=title)
    shown = _shown_columns(result)
    numeric = {"value", *AGGREGATES}
    for index in shown:
        name = result.columns[index]
        table.add_column(name, justify="right" if name in numeric else "left", no_wrap=True)
    for row in result.rows:
        cells = [row[i] for i in shown]
        style = "red" if "quality" in result.columns and _quality(result, row) == "bad" else None
        table.add_row(*cells, style=style)
    console.print(table)


def _shown_columns(result: Result) -> Sequence[int]:
    # A column that is empty in every row (no reasons, no units) only takes width in a table.
    return [
        i
        for i, name in enumerate(result.columns)
        if name not in ("reason", "unit") or any(row[i] for row in result.rows)
    ]


def _quality(result: Result, row: tuple[str, ...]) -> str:
    return row[result.columns.index("quality")]
