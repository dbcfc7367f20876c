"""Run the real backing services (Mosquitto, InfluxDB 1.x, VictoriaMetrics) as child processes.

Used by ``fieldlink demo`` and by the pytest fixtures, so that both exercise the same brokers
and databases a deployment uses instead of fakes. Every service:

* listens on a free loopback port only, so it never collides with a system-wide instance
  (the Debian packages start one on the default ports) or with another test run;
* keeps its data, generated config and log (stdout + stderr) in one directory, a fresh temp
  dir unless one is given, so a ``stop()``/``start()`` on the same dir and port simulates an
  outage with the data surviving it;
* runs in its own process group and is stopped with SIGTERM, then SIGKILL after a deadline,
  by ``stop()``, by the context manager and, as a last resort, at interpreter exit.

Only the standard library is used here: this module must import in every install profile.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypedDict, Unpack

__all__ = [
    "LOOPBACK",
    "BinaryNotFoundError",
    "InfluxDB1",
    "InfluxError",
    "Mosquitto",
    "PortInUseError",
    "Service",
    "ServiceError",
    "ServiceOptions",
    "VictoriaMetrics",
    "free_port",
    "http_request",
    "quote_ident",
    "write_password_file",
]

LOOPBACK = "127.0.0.1"

# Debian installs daemons into /usr/sbin, which is not on a normal user's PATH.
_EXTRA_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 25
# Picking a free port and binding it later is racy; retry a first start this often with
# fresh ports when the service reports the port as taken.
_PORT_ATTEMPTS = 3


class ServiceError(RuntimeError):
    """A local service could not be started, stopped or talked to."""


class BinaryNotFoundError(ServiceError):
    """The service's executable is not installed (or not at the given path)."""


class PortInUseError(ServiceError):
    """The service exited during startup because its port was already taken."""


class InfluxError(ServiceError):
    """InfluxDB rejected a query or a write."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# Without an empty ProxyHandler urllib would send 127.0.0.1 requests through an http_proxy
# from the environment (CI runners often set one without listing loopback in no_proxy).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """Send one HTTP request and return ``(status, body)``.

    HTTP error statuses are returned, not raised, so callers can assert on them; connection
    failures raise ``OSError`` (``urllib.error.URLError`` is one).
    """
    if params:
        url = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status: int = response.status
            data: bytes = response.read()
            return status, data
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _resolve_binary(binary: str, name: str, package: str) -> str:
    search_path = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_BIN_DIRS])
    found = shutil.which(binary, path=search_path)
    if found is None:
        hint = "" if binary == name else f" [looked for {binary!r}]"
        raise BinaryNotFoundError(
            f"{name} not found: install it with 'sudo apt-get install {package}' "
            f"(Debian/Ubuntu){hint}"
        )
    return found


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening TCP socket on ``port``.

    A successful connect alone can be answered by someone else's server that grabbed the
    port (other test runs share this machine), so readiness checks ownership via /proc.
    Where /proc is unavailable this cannot be checked and is assumed.
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    inodes: set[str] = set()
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                # fields: sl, local "ADDR:PORT" (hex), remote, state (0A = LISTEN), ..., inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    try:
        fds = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd.path) in inodes:
                return True
    return False


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat ("T" = stopped), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ...": comm may contain spaces and parentheses, so split at the last ")".
    return stat.rsplit(")", 1)[1].split()[0]


def _tcp_connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _http_status(url: str) -> int | None:
    try:
        return http_request("GET", url, timeout=2.0)[0]
    except (OSError, http.client.HTTPException):
        return None


_LIVE: set[Service] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all_services() -> None:
    # Last line of defence for callers that never stopped a service (a crashed demo, an
    # interrupted test session): no child may outlive the Python process.
    with _LIVE_LOCK:
        services = list(_LIVE)
    for service in services:
        with contextlib.suppress(Exception):
            service.close()


class ServiceOptions(TypedDict, total=False):
    """What every :class:`Service` takes, keyword only: ``data_dir`` (default a fresh temp
    dir, deleted by ``close()``), ``port`` (default a free one), ``binary`` (default the
    service's usual executable on PATH or in the sbin dirs), ``startup_timeout`` (30 s) and
    ``stop_timeout`` (10 s)."""

    data_dir: str | os.PathLike[str] | None
    port: int | None
    binary: str | None
    startup_timeout: float
    stop_timeout: float


class Service:
    """One local server process with a data dir, a loopback port and a log file.

    ``start()`` blocks until the service answers (or raises ``ServiceError`` with the tail
    of its log); ``stop()``/``start()`` reuse the same data dir and port, ``pause()`` and
    ``resume()`` freeze and thaw the process (SIGSTOP/SIGCONT) to simulate a hung server.
    As a context manager it is started on entry and closed on exit.
    """

    #: Name used in messages and for the log file (also the executable's usual name).
    name: ClassVar[str]
    #: Debian package that ships the executable, for the "not found" hint.
    package: ClassVar[str]
    host: ClassVar[str] = LOOPBACK

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        # Resolve first: a missing binary must fail before anything is created on disk.
        self.binary = self.find_binary(binary)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._port_fixed = port is not None
        self.port: int = port if port is not None else free_port()
        self._owns_dir = data_dir is None
        if data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"fieldlink-{self.name}-"))
        else:
            self.data_dir = Path(data_dir).resolve()
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._started_once = False
        self._closed = False
        self._log_offset = 0
        # Tests may stop a service from a helper thread while atexit runs in the main one.
        self._lock = threading.RLock()
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- subclass hooks ---------------------------------------------------------------------

    @classmethod
    def find_binary(cls, binary: str | None = None) -> str:
        """The executable's path, or :class:`BinaryNotFoundError` saying how to install it."""
        return _resolve_binary(binary or cls.name, cls.name, cls.package)

    def _command(self) -> list[str]:
        """The argv to run; called on every start, after ports are final."""
        raise NotImplementedError

    def _answers(self) -> bool:
        """Whether the service answers its protocol's health check right now."""
        raise NotImplementedError

    def _ports(self) -> list[int]:
        """Every port the process must own before it counts as started."""
        return [self.port]

    def _pick_new_ports(self) -> None:
        if not self._port_fixed:
            self.port = free_port()

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- state ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """True while the process exists (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} dir={self.data_dir}>"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process (no-op if running) and wait until it answers."""
        with self._lock:
            if self._closed:
                raise ServiceError(f"{self.name}: start() after close()")
            if self.is_running:
                return self
            # Only ports we picked ourselves may change, and only before the first start:
            # after that, clients rely on the service coming back where it was.
            attempts = 1 if self._port_fixed or self._started_once else _PORT_ATTEMPTS
            for attempt in range(1, attempts + 1):
                try:
                    self._start_once()
                    break
                except PortInUseError:
                    if attempt == attempts:
                        raise
                    self._pick_new_ports()
            self._started_once = True
            return self

    def _start_once(self) -> None:
        command = self._command()
        # If this process dies without cleaning up (SIGKILL, os._exit from a timeout), the
        # kernel kills the child too. PDEATHSIG fires when the *thread* that forked exits,
        # so only use it from the main thread, which lives as long as the process.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        with self.log_path.open("ab") as log:
            log.write(f"\n=== fieldlink.localstack: {time.ctime()}: {command}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=self._env(),
                # Own process group: signals from the terminal (Ctrl-C) go to us, not the
                # server, and stop() can signal the server's whole group.
                start_new_session=True,
            )
        self._paused = False
        self._wait_ready(self._proc)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                tail = self.log_tail()
                error = PortInUseError if "address already in use" in tail.lower() else ServiceError
                raise error(
                    f"{self.name} exited with code {code} during startup "
                    f"(log: {self.log_path}); last lines:\n{tail}"
                )
            if all(_listens_on(proc.pid, port) for port in self._ports()) and self._answers():
                return
            if time.monotonic() > deadline:
                self._kill_group(proc, signal.SIGKILL)
                proc.wait()
                raise ServiceError(
                    f"{self.name} did not become ready on {self.host}:{self.port} within "
                    f"{self.startup_timeout:g}s (log: {self.log_path}); last lines:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the process; idempotent.

        ``graceful`` sends SIGTERM and escalates to SIGKILL after ``stop_timeout``; with
        ``graceful=False`` it is killed at once, like a crash (no final flush to disk).
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                self._kill_group(proc, signal.SIGTERM if graceful else signal.SIGKILL)
                if self._paused:
                    # A stopped process only acts on SIGTERM once it runs again.
                    self._kill_group(proc, signal.SIGCONT)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._kill_group(proc, signal.SIGKILL)
                    proc.wait()
            self._proc = None
            self._paused = False

    def restart(self) -> Self:
        """Stop gracefully and start again on the same port and data dir."""
        with self._lock:
            self.stop()
            return self.start()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): its port stays open but nothing is answered.

        Returns once the kernel reports the process stopped, since signal delivery is
        asynchronous and a caller expects the server frozen when this returns.
        """
        with self._lock:
            proc = self._require_running("pause")
            self._kill_group(proc, signal.SIGSTOP)
            self._paused = True
            self._await_state(proc, stopped=True)

    def resume(self) -> None:
        """Undo ``pause()`` (SIGCONT); returns once the process runs again."""
        with self._lock:
            proc = self._require_running("resume")
            self._kill_group(proc, signal.SIGCONT)
            self._paused = False
            self._await_state(proc, stopped=False)

    def _await_state(self, proc: subprocess.Popen[bytes], *, stopped: bool) -> None:
        deadline = time.monotonic() + self.stop_timeout
        while (_process_state(proc.pid) == "T") != stopped:
            if proc.poll() is not None or _process_state(proc.pid) is None:
                return  # exited, or no /proc to tell: nothing left to wait for
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} (pid {proc.pid}) did not {'stop' if stopped else 'continue'}"
                )
            time.sleep(0.005)

    def close(self) -> None:
        """Stop for good and delete the data dir if it was a temp dir created here."""
        with self._lock:
            self.stop()
            self._closed = True
            if self._owns_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the current (or last) run wrote to its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"

    def _require_running(self, action: str) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ServiceError(f"{self.name}: cannot {action}, it is not running")
        return proc

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The group id is the leader's pid; it cannot be reused before we reap the leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


class Mosquitto(Service):
    """Mosquitto 2.x broker on ``host:port``, anonymous access, persistence in the data dir.

    ``extra_config`` is appended to the generated ``mosquitto.conf`` (e.g.
    ``"max_queued_messages 10\\nmax_inflight_messages 1"``) to shape the broker's queues;
    for TLS, its ``cafile``/``certfile``/``keyfile``/``require_certificate`` lines apply to
    the one listener.

    Access control: ``password_file`` (made with ``mosquitto_passwd``, see
    :func:`write_password_file`) and ``allow_anonymous=False`` make clients log in;
    ``acl_file`` limits what each may publish and subscribe to. :meth:`reload` (SIGHUP)
    makes a running broker re-read both files, as an operator does after editing them.
    """

    name = "mosquitto"
    package = "mosquitto"

    def __init__(
        self,
        *,
        extra_config: str = "",
        allow_anonymous: bool = True,
        password_file: str | os.PathLike[str] | None = None,
        acl_file: str | os.PathLike[str] | None = None,
        **options: Unpack[ServiceOptions],
    ) -> None:
        super().__init__(**options)
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.password_file = None if password_file is None else Path(password_file).resolve()
        self.acl_file = None if acl_file is None else Path(acl_file).resolve()
        self.config_path = self.data_dir / "mosquitto.conf"

    def _command(self) -> list[str]:
        lines = [
            "# Generated by fieldlink.localstack on every start; edits are overwritten.",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            # Sessions, queued QoS>0 messages and retained messages survive stop()/start(),
            # as they do on a production broker (mosquitto.db is written on SIGTERM).
            "persistence true",
            f"persistence_location {self.data_dir}",
            "log_dest stderr",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto 2 drops privileges to the 'mosquitto' user, which cannot
            # write our (root-owned, 0700) data dir; staying root is fine for a test broker.
            lines.append("user root")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        self.config_path.write_text("\n".join([*lines, self.extra_config, ""]))
        return [self.binary, "-c", str(self.config_path)]

    def reload(self) -> None:
        """Make the running broker re-read its config, password and ACL files (SIGHUP, as
        ``systemctl reload mosquitto`` does). Returns once its log says so."""
        with self._lock:
            proc = self._require_running("reload")
            with self.log_path.open("rb") as log:
                before = log.read().count(b"Reloading config.")
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + self.stop_timeout
            while self.log_path.read_bytes().count(b"Reloading config.") <= before:
                if time.monotonic() > deadline:
                    raise ServiceError(f"{self.name} did not log a reload after SIGHUP")
                time.sleep(_POLL_INTERVAL)

    def _answers(self) -> bool:
        return _tcp_connects(self.host, self.port)


class _HttpService(Service):
    """A service with an HTTP API on ``url``; it answers once ``GET health_path`` returns
    ``health_status``."""

    health_path: ClassVar[str]
    health_status: ClassVar[int]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _answers(self) -> bool:
        return _http_status(f"{self.url}{self.health_path}") == self.health_status


class InfluxDB1(_HttpService):
    """InfluxDB 1.x (``influxd``) with its HTTP API on ``url``.

    Also moves the RPC (backup/restore) listener, default 8088, to a free port, since a
    system-wide influxd may hold 8088; usage reporting and the ``_internal`` monitor
    database are off and logging is limited to errors.
    """

    name = "influxd"
    package = "influxdb"
    health_path = "/ping"
    health_status = 204

    def __init__(self, *, rpc_port: int | None = None, **options: Unpack[ServiceOptions]) -> None:
        super().__init__(**options)
        self._rpc_port_fixed = rpc_port is not None
        self.rpc_port: int = rpc_port if rpc_port is not None else free_port()
        self.config_path = self.data_dir / "influxdb.conf"

    def _ports(self) -> list[int]:
        return [self.port, self.rpc_port]

    def _pick_new_ports(self) -> None:
        super()._pick_new_ports()
        if not self._rpc_port_fixed:
            self.rpc_port = free_port()

    def _env(self) -> dict[str, str]:
        # influxd lets INFLUXDB_<SECTION>_<KEY> variables override the config file; one left
        # in the environment (e.g. INFLUXDB_HTTP_BIND_ADDRESS) would silently move the port.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _command(self) -> list[str]:
        def path(name: str) -> str:
            return json.dumps(str(self.data_dir / name))  # a JSON string is a TOML string

        # 1.6 has no [hinted-handoff] section (that went with clustering in 0.12); it
        # would be silently ignored, so it is not written.
        config = f"""\
# Generated by fieldlink.localstack on every start; edits are overwritten.
reporting-enabled = false
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = {path("meta")}
  logging-enabled = false

[data]
  dir = {path("data")}
  wal-dir = {path("wal")}
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "{self.host}:{self.port}"
  log-enabled = false

[logging]
  level = "error"
  suppress-logo = true

[continuous_queries]
  log-enabled = false
"""
        self.config_path.write_text(config)
        return [self.binary, "run", "-config", str(self.config_path)]

    # -- API helpers ------------------------------------------------------------------------

    def query(self, q: str, db: str | None = None) -> dict[str, Any]:
        """Run InfluxQL (POST /query, ``epoch=ns``) and return the decoded JSON.

        Raises ``InfluxError`` if the request or any statement failed.
        """
        params = {"q": q, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        # POST, because 1.x refuses CREATE/DROP over GET and accepts SELECT either way.
        status, body = http_request(
            "POST",
            f"{self.url}/query",
            body=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            result: dict[str, Any] = json.loads(body)
        except ValueError:
            result = {"error": body.decode(errors="replace")}
        errors = [result.get("error")] + [r.get("error") for r in result.get("results", [])]
        if status != 200 or any(errors):
            message = "; ".join(str(e) for e in errors if e) or body.decode(errors="replace")
            raise InfluxError(f"InfluxQL {q!r} failed (HTTP {status}): {message}")
        return result

    def write(self, lines: str, db: str, precision: str = "ns") -> None:
        """Write line protocol (POST /write); raises ``InfluxError`` unless it returns 204."""
        status, body = http_request(
            "POST",
            f"{self.url}/write",
            params={"db": db, "precision": precision},
            body=lines.encode(),
        )
        if status != 204:
            raise InfluxError(f"write to {db!r} failed (HTTP {status}): {body.decode()}")

    def create_database(self, name: str) -> None:
        self.query(f"CREATE DATABASE {quote_ident(name)}")

    def drop_database(self, name: str) -> None:
        self.query(f"DROP DATABASE {quote_ident(name)}")


def quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier (database, measurement, tag key)."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class VictoriaMetrics(_HttpService):
    """Single-node VictoriaMetrics with its HTTP API on ``url``.

    Tuned for tests: fresh points are visible to queries at "now"
    (``-search.latencyOffset=0s``), no response cache can hide a just-written point,
    timestamps from any year are kept (``-retentionPeriod=100y``; the default of one month
    silently drops older points) and only errors are logged. ``extra_args`` are appended.

    Influx line protocol writes are stored as one series per field, named
    ``{measurement}_{field}``, with the tags as labels; the ``db`` query parameter (not the
    v2 ``bucket``, in 1.79) becomes a ``db`` label. Timestamps are kept in milliseconds.
    """

    name = "victoria-metrics"
    package = "victoria-metrics"
    health_path = "/health"
    health_status = 200

    def __init__(
        self, *, extra_args: Sequence[str] = (), **options: Unpack[ServiceOptions]
    ) -> None:
        super().__init__(**options)
        self.extra_args = list(extra_args)

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.data_dir / 'data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-retentionPeriod=100y",
            "-loggerLevel=ERROR",
            *self.extra_args,
        ]

    # -- API helpers ------------------------------------------------------------------------

    def flush(self) -> None:
        """Make recently written samples searchable now (GET /internal/force_flush).

        In 1.79 a new point takes ~10 s to show up in /api/v1/export on its own; after a
        flush it takes about 1 s, so poll ``export()`` (which flushes) rather than sleep.
        """
        status, body = http_request("GET", f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServiceError(f"force_flush failed (HTTP {status}): {body.decode()}")

    def export(self, match: str, *, flush: bool = True) -> list[dict[str, Any]]:
        """Raw samples of the series matching a selector, e.g. ``'{__name__=~"temp_.*"}'``.

        One dict per series: ``{"metric": {"__name__": ..., label: value},
        "values": [...], "timestamps": [ms, ...]}`` (GET /api/v1/export, JSON lines).
        """
        if flush:
            self.flush()
        status, body = http_request("GET", f"{self.url}/api/v1/export", params={"match[]": match})
        if status != 200:
            raise ServiceError(f"export {match!r} failed (HTTP {status}): {body.decode()}")
        rows: list[dict[str, Any]] = [json.loads(line) for line in body.splitlines() if line]
        return rows


def write_password_file(path: str | os.PathLike[str], users: Mapping[str, str]) -> Path:
    """A Mosquitto password file for ``users`` (name → password), made by the
    ``mosquitto_passwd`` that ships with the broker (hashes only it knows how to write)."""
    target = Path(path)
    target.write_text("")
    tool = _resolve_binary("mosquitto_passwd", "mosquitto_passwd", "mosquitto")
    for user, password in users.items():
        subprocess.run(
            [tool, "-b", str(target), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return target
