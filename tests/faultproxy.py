"""A small fault-injecting HTTP proxy for tests: put it between the ingester and a real
InfluxDB to make the database answer 5xx, 429 with Retry-After, 413, or nothing at all.

Requests that are not faulted are forwarded to the real server unchanged, so what lands is
what InfluxDB really stored.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Decides the fate of one request: None forwards it, (status, headers, body) answers it.
Fault = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes] | None]


@dataclass
class FaultProxy:
    upstream: str
    fault: Fault | None = None
    #: (monotonic time, method, path, status answered) of every request seen.
    log: list[tuple[float, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy.fault
                answer = fault(self.command, self.path, body) if fault else None
                if answer is None:
                    answer = proxy._forward(parts.hostname or "", parts.port or 80, self, body)
                status, headers, data = answer
                proxy.log.append((time.monotonic(), self.command, self.path, status))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @staticmethod
    def _forward(
        host: str, port: int, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            keep = {
                k: v
                for k, v in response.getheaders()
                if k.lower() in ("content-type", "x-influxdb-error", "retry-after")
            }
            return response.status, keep, data
        finally:
            conn.close()

    def writes(self) -> list[tuple[float, str, str, int]]:
        return [entry for entry in self.log if entry[2].startswith("/write")]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
