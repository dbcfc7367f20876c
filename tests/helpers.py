"""Test helpers: polling with a deadline instead of sleeping, and the types fixtures yield.

A fixed ``sleep`` is either too short on a loaded CI runner (flaky) or too long everywhere
else (slow); these poll quickly and fail with a message saying what never happened.

    from helpers import async_wait_for, wait_for

    rows = wait_for(lambda: vm.export(selector), timeout=10, message="point not in VM")
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

from fieldlink.localstack import InfluxDB1, Service

T = TypeVar("T")
S = TypeVar("S", bound=Service)

DEFAULT_TIMEOUT = 10.0


def _failure(message: str, timeout: float, last: object, error: BaseException | None) -> str:
    detail = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    return f"timed out after {timeout:g}s waiting for: {message} ({detail})"


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
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            error = exc
        else:
            if result:
                return result
            last, error = result, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_failure(message, timeout, last, error)) from error
        time.sleep(min(interval, remaining))


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
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            outcome = predicate()
            result = await outcome if inspect.isawaitable(outcome) else outcome
        except ignore as exc:
            error = exc
        else:
            if result:
                return result
            last, error = result, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(_failure(message, timeout, last, error)) from error
        await asyncio.sleep(min(interval, remaining))


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
