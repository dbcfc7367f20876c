"""Test helpers: polling with a deadline instead of sleeping, and the types fixtures yield.

A fixed ``sleep`` is either too short on a loaded CI runner (flaky) or too long everywhere
else (slow); these poll quickly and fail with a message saying what never happened.

    from helpers import async_wait_for, wait_for

    rows = wait_for(lambda: vm.export(selector), timeout=10, message="point not in VM")

The one kind of deliberate wait is a stretch of wall time a scenario itself defines ("InfluxDB
is down for 60 s"): :func:`every` paces it, so no test writes a ``sleep`` of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

from fieldlink.localstack import InfluxDB1, Service

#: The repository: a process started here imports this tree (``python -m`` puts the working
#: directory first on ``sys.path``).
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")
S = TypeVar("S", bound=Service)

DEFAULT_TIMEOUT = 10.0


class _Poll:
    """The deadline of one ``wait_for``/``async_wait_for`` call and its last "not yet": a
    falsy result, or an exception of the ``ignore`` types."""

    def __init__(
        self,
        timeout: float,
        interval: float,
        message: str,
        ignore: tuple[type[BaseException], ...],
    ) -> None:
        self.timeout = timeout
        self.interval = interval
        self.message = message
        self.ignore = ignore
        self.deadline = time.monotonic() + timeout
        self.last: object = None
        self.error: BaseException | None = None

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """One call of the predicate: an exception of the ``ignore`` types counts as "not
        yet"; any other propagates at once."""
        try:
            yield
        except self.ignore as exc:
            self.error = exc

    def settled(self, result: object) -> bool:
        """Whether ``result`` ends the wait; if not, it is the last value a failure names."""
        if result:
            return True
        self.last, self.error = result, None
        return False

    def pause(self) -> float:
        """How long to sleep before the next attempt; an ``AssertionError`` naming the
        message and the last value (or error) once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            detail = (
                f"last error: {self.error!r}"
                if self.error is not None
                else f"last value: {self.last!r}"
            )
            raise AssertionError(
                f"timed out after {self.timeout:g}s waiting for: {self.message} ({detail})"
            ) from self.error
        return min(self.interval, remaining)


def wait_for(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Exceptions of the types in ``ignore`` count as "not yet" (e.g. ``OSError`` while a
    server restarts); any other exception propagates at once. After ``timeout`` seconds
    this fails with an ``AssertionError`` naming ``message`` and the last result.
    """
    poll = _Poll(timeout, interval, message, ignore)
    while True:
        with poll.attempt():
            result = predicate()
            if poll.settled(result):
                return result
        time.sleep(poll.pause())


@overload
async def async_wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def async_wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def async_wait_for(
    predicate: Callable[[], Any],
    # Same signature as wait_for on purpose; this is a poll deadline, not a cancel scope.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """Like ``wait_for`` but sleeps without blocking the event loop.

    ``predicate`` may be a plain function or a coroutine function.
    """
    poll = _Poll(timeout, interval, message, ignore)
    while True:
        with poll.attempt():
            outcome = predicate()
            value = await outcome if inspect.isawaitable(outcome) else outcome
            if poll.settled(value):
                return value
        await asyncio.sleep(poll.pause())


async def every(period: float, lasting: float) -> AsyncIterator[float]:
    """Pace a stretch of wall time that a scenario defines (an outage of 60 s, a window to
    count reconnects in), not a wait for a condition (that is :func:`async_wait_for`).

    Yields the seconds since the start at 0, ``period``, 2 × ``period``, ... on the event
    loop's clock, and once more when ``lasting`` seconds have passed; then it ends. The time
    the caller spends between yields counts, so the stretch does not drift."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while True:
        yield loop.time() - start
        tick += 1
        now = loop.time()
        if now >= start + lasting:
            return
        await asyncio.sleep(min(start + tick * period, start + lasting) - now)


class InfluxDatabase(NamedTuple):
    """A database of its own on the shared InfluxDB (what the ``influx_db`` fixture yields)."""

    service: InfluxDB1
    name: str


class ServiceFactory:
    """Starts services of any kind in a test's tmp dir and closes them all at teardown.

    ``make_service(Mosquitto, extra_config="max_queued_messages 5")`` returns a started
    broker that the test owns: it may stop, restart, pause or reconfigure it freely.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._services: list[Service] = []

    def __call__(self, cls: type[S], /, **kwargs: Any) -> S:
        kwargs.setdefault("data_dir", self._root / f"{cls.name}-{len(self._services)}")
        service = cls(**kwargs)
        self._services.append(service)
        return service.start()

    def close_all(self) -> None:
        for service in reversed(self._services):
            service.close()


async def start_edge(config: Path, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``python -m fieldlink edge run CONFIG ARGS...`` as a real process, started in the
    repository; ``kwargs`` go to ``asyncio.create_subprocess_exec`` (stdout, stderr, env)."""
    kwargs.setdefault("cwd", REPO)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fieldlink", "edge", "run", str(config), *args, **kwargs
    )
