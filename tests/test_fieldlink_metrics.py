"""fieldlink/metrics.py: the exposition text (checked with prometheus_client's own parser) and
the endpoint over real HTTP on a loopback port.

``get`` and ``scrape`` here are the HTTP client of the agent's and the ingester's metrics
tests too: raw asyncio streams, so any method and any broken request can be sent, and the
event loop of an agent running in the test is never blocked.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fieldlink.metrics import (
    CONTENT_TYPE,
    Family,
    ListenError,
    MetricsServer,
    Registry,
    counter,
    format_value,
    gauge,
    render,
)


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: str


async def request(host: str, port: int, raw: bytes) -> Response:
    """Send ``raw`` as it is and read the answer until the server closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Response(status, headers, body.decode("utf-8"))


async def get(url: str, method: str = "GET") -> Response:
    """``method`` of ``url`` (``http://127.0.0.1:PORT/path``)."""
    rest = url.removeprefix("http://")
    where, _, path = rest.partition("/")
    host, _, port = where.rpartition(":")
    raw = f"{method} /{path} HTTP/1.1\r\nHost: {where}\r\nUser-Agent: test\r\n\r\n"
    return await request(host, int(port), raw.encode())


async def scrape(base: str) -> dict[str, list[Sample]]:
    """GET ``base``/metrics, check it as Prometheus would read it, and return the samples
    by metric name (counters keep their ``_total``)."""
    answer = await get(f"{base}/metrics")
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"] == CONTENT_TYPE
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(answer.body):
        assert family.documentation, f"{family.name} has no HELP"
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def peek(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """Like :func:`value`, for conditions waited on: NaN while the sample is not there (NaN
    compares false with anything, so the wait goes on)."""
    found = [
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return found[0] if len(found) == 1 else math.nan


# --- the text -----------------------------------------------------------------------------------


def test_label_values_and_help_are_escaped_and_read_back_exactly() -> None:
    nasty = 'C:\\plant\\"north"\nline 2'
    family = counter("demo_events_total", 'Events.\nSecond "line" with a \\ backslash', "where")
    family.add(3, nasty)
    text = render([family])
    assert text == (
        '# HELP demo_events_total Events.\\nSecond "line" with a \\\\ backslash\n'
        "# TYPE demo_events_total counter\n"
        'demo_events_total{where="C:\\\\plant\\\\\\"north\\"\\nline 2"} 3\n'
    )
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.type == "counter"
    assert parsed.documentation == 'Events.\nSecond "line" with a \\ backslash'
    assert [(s.name, s.labels, s.value) for s in parsed.samples] == [
        ("demo_events_total", {"where": nasty}, 3.0)
    ]


def test_values_are_prometheus_floats() -> None:
    assert [format_value(v) for v in (0, 7, True, 2.0, 0.1, 1e20, -1.5e-7)] == [
        "0",
        "7",
        "1",
        "2",
        "0.1",
        "1e+20",
        "-1.5e-07",
    ]
    assert [format_value(v) for v in (math.inf, -math.inf, math.nan)] == ["+Inf", "-Inf", "NaN"]
    family = gauge("demo_values", "Values.", "k")
    for k, v in {"a": 1e20, "b": math.inf, "c": -math.inf, "d": 0.1, "e": 1732900000.123}.items():
        family.add(v, k)
    (parsed,) = text_string_to_metric_families(render([family]))
    got = {s.labels["k"]: s.value for s in parsed.samples}
    assert got == {"a": 1e20, "b": math.inf, "c": -math.inf, "d": 0.1, "e": 1732900000.123}
    nan = gauge("demo_nan", "NaN.").add(math.nan)
    (parsed,) = text_string_to_metric_families(render([nan]))
    assert math.isnan(parsed.samples[0].value)


def test_names_are_checked_when_a_family_is_made() -> None:
    with pytest.raises(ValueError, match="must end in _total"):
        counter("demo_events", "Events.")
    with pytest.raises(ValueError, match="invalid metric name"):
        gauge("demo-level", "Level.")
    with pytest.raises(ValueError, match="invalid label name"):
        gauge("demo_level", "Level.", "bad-label")
    with pytest.raises(ValueError, match="invalid label name"):
        gauge("demo_level", "Level.", "__reserved")
    with pytest.raises(ValueError, match="label value"):
        gauge("demo_level", "Level.", "a", "b").add(1, "only-a")


def test_a_repeated_label_set_is_left_out_not_served_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    family = gauge("demo_level", "Level.", "k").add(1, "x").add(2, "x").add(3, "y")
    text = render([family])
    assert text.count('demo_level{k="x"}') == 1
    assert 'demo_level{k="y"} 3' in text
    assert "duplicate sample" in caplog.text


async def test_families_of_several_collectors_merge_and_a_broken_one_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()
    registry.register(lambda: [counter("demo_polls_total", "Polls.", "bus").add(1, "a")])

    async def second() -> list[Family]:
        await asyncio.sleep(0)
        return [counter("demo_polls_total", "Polls.", "bus").add(2, "b")]

    def broken() -> list[Family]:
        raise RuntimeError("a bug in one collector")

    registry.register(second)
    registry.register(broken)
    registry.register(lambda: [gauge("demo_up", "Up.").add(1)])
    families = list(text_string_to_metric_families(await registry.render()))
    assert [(f.name, [(s.labels, s.value) for s in f.samples]) for f in families] == [
        ("demo_polls", [({"bus": "a"}, 1.0), ({"bus": "b"}, 2.0)]),
        ("demo_up", [({}, 1.0)]),
    ]
    assert "a bug in one collector" in caplog.text


# --- the endpoint -------------------------------------------------------------------------------


class Endpoint(NamedTuple):
    server: MetricsServer
    #: What /healthz says: flip ``health["ok"]``.
    health: dict[str, bool]


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    health = {"ok": True}

    async def check() -> tuple[bool, str]:
        return health["ok"], "ok: all good" if health["ok"] else "failing: the spool is full"

    registry = Registry()
    registry.register(lambda: [counter("demo_requests_total", "Requests.").add(5)])
    server = MetricsServer(registry, "127.0.0.1", 0, health=check)
    await server.start()
    yield Endpoint(server, health)
    await server.close()


async def test_metrics_and_healthz_over_http(endpoint: Endpoint) -> None:
    server = endpoint.server
    samples = await scrape(server.url)
    assert value(samples, "demo_requests_total") == 5
    ok = await get(f"{server.url}/healthz")
    assert (ok.status, ok.body) == (200, "ok: all good\n")
    assert ok.headers["Content-Type"] == "text/plain; charset=utf-8"
    endpoint.health["ok"] = False
    failing = await get(f"{server.url}/healthz")
    assert (failing.status, failing.body) == (503, "failing: the spool is full\n")
    query = await get(f"{server.url}/metrics?format=text")
    assert query.status == 200 and "demo_requests_total 5" in query.body


async def test_other_paths_methods_and_broken_requests(endpoint: Endpoint) -> None:
    server = endpoint.server
    missing = await get(f"{server.url}/")
    assert missing.status == 404 and "/metrics" in missing.body
    post = await get(f"{server.url}/metrics", method="POST")
    assert post.status == 405
    assert post.headers["Allow"] == "GET, HEAD"
    head = await get(f"{server.url}/metrics", method="HEAD")
    assert head.status == 200 and head.body == ""
    assert int(head.headers["Content-Length"]) > 0
    host, port = server.address
    garbage = await request(host, port, b"hello there\r\n\r\n")
    assert garbage.status == 400
    # Past the 8 KiB limit (and within what the server reads at once, so it closes cleanly).
    huge = await request(host, port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n")
    assert huge.status == 431
    # The endpoint still answers after all of that.
    assert (await get(f"{server.url}/healthz")).status == 200


async def test_close_ends_a_connection_in_progress_and_stops_listening() -> None:
    endpoint = MetricsServer(Registry(), "127.0.0.1", 0)
    await endpoint.start()
    host, port = endpoint.address
    # A client that connected and sent half a request: close() must not wait for it.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.wait_for(endpoint.close(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)


async def test_a_port_in_use_is_one_line_naming_the_address_and_the_field() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = MetricsServer(Registry(), "127.0.0.1", port, config_field="health.listen")
        with pytest.raises(ListenError) as caught:
            await endpoint.start()
    text = str(caught.value)
    assert text.startswith(f"health.listen: cannot listen on 127.0.0.1:{port}: ")
    assert "already in use" in text and "\n" not in text
