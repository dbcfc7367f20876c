"""The ingester: MQTT batches of readings → validated → line protocol → InfluxDB.

Delivery guarantee: a message is acknowledged to the broker only after InfluxDB accepted its
points (or after it was dead-lettered as invalid), and acknowledgements go out in the order
the messages arrived. Until then the broker keeps it in the ingester's persistent session, so
a crash, a restart or an InfluxDB outage loses nothing; at worst a message is written twice,
which overwrites identical points.

Concurrency: paho's network thread hands messages to this module's event loop (see
:mod:`cloud.mqtt`). The loop validates and encodes messages into a batch; a full (or due) batch
is handed to a write task and the loop goes on with the next one while the write is in flight.
Up to ``batch.writes_in_flight`` (default 2) batches are written at once, each by its own
writer (one HTTP connection) in a worker thread (``asyncio.to_thread``): InfluxDB takes more
points/s from two concurrent writers than from one, and validation overlaps the writes instead
of waiting for them. Batches are *finished* — confirmed to the agents, then acknowledged to the
broker — strictly in the order they were filled, whatever order their writes complete in, so
the guarantee above holds: a message is acknowledged after its own points and those of every
earlier message are written. Each resource has one owner: :class:`Ingester.run` opens and
closes the MQTT link and the writers, and (with ``health.listen`` set) the health endpoint,
which serves the counters as Prometheus metrics and ``/healthz`` (docs/health.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from cloud.deadletter import Counters, FirstSeen, deadletter_body
from cloud.encoder import MessageEncoder
from cloud.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    FatalError,
    InfluxConfigError,
    InfluxDatabaseMissingError,
    InfluxRejectedError,
    InfluxUnavailableError,
    MqttError,
)
from cloud.mqtt import Incoming, MqttLink
from cloud.validate import InvalidKind, InvalidMessageError
from cloud.writer import Writer, open_writer
from config.cloud import CloudConfig, InfluxV1
from fieldlink import __version__
from wire.codec import encode_confirm, seq_ranges
from wire.topics import confirm_topic, deadletter_topic

if TYPE_CHECKING:
    from fieldlink.metrics import Family, MetricsServer

log = logging.getLogger(__name__)

#: Most seqs per agent remembered as not arrived (bounds memory if an agent's seqs jump).
MAX_TRACKED_MISSING = 100_000
#: Seconds between two summary log lines.
SUMMARY_INTERVAL = 30.0
#: Backoff between write attempts while InfluxDB is unavailable: doubles from the first to
#: the cap, each delay drawn from [50 %, 100 %] of that so that restarted ingesters spread out.
RETRY_FIRST = 0.5
RETRY_CAP = 30.0


@dataclass
class _Batch:
    """Messages taken from the queue but not yet acknowledged, in arrival order, and the lines
    of the valid ones."""

    messages: list[Incoming] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    #: monotonic time by which the lines must be written (first line + batch.max_delay).
    deadline: float | None = None
    #: (site, agent, epoch) → sequence numbers to confirm once the batch is written.
    confirm: dict[tuple[str, str, str | None], list[int]] = field(default_factory=dict)
    #: Holds records a later message may rewrite (see ``Checked.ordered``).
    ordered: bool = False


@dataclass
class _Writing:
    """A batch handed over for writing; ``task`` is None for a batch with nothing to write
    (only invalid messages), which is finished as soon as the batches before it are."""

    batch: _Batch
    task: asyncio.Task[bool] | None

    def done(self) -> bool:
        return self.task is None or self.task.done()


class Ingester:
    """One run of the ingester. Tests read :attr:`counters`; the CLI uses :func:`run_ingester`."""

    def __init__(
        self,
        config: CloudConfig,
        *,
        summary_interval: float = SUMMARY_INTERVAL,
        retry_first: float = RETRY_FIRST,
        retry_cap: float = RETRY_CAP,
        writes_in_flight: int | None = None,
    ) -> None:
        if writes_in_flight is None:
            writes_in_flight = config.batch.writes_in_flight
        if writes_in_flight < 1:
            raise ValueError("writes_in_flight must be at least 1")
        self.config = config
        self._writes_in_flight = writes_in_flight
        self._encoder = MessageEncoder(
            root=config.mqtt.topic_root,
            measurement=config.influx.measurement,
            limits=config.ingest,
        )
        self.counters = Counters()
        self._summary_interval = summary_interval
        self._retry_first = retry_first
        self._retry_cap = retry_cap
        self._deadletter_topic = deadletter_topic(root=config.mqtt.topic_root)
        self._logged_sources = FirstSeen()
        self._link: MqttLink | None = None
        self._highest_seq: dict[str, int] = {}
        self._missing: dict[str, set[int]] = {}
        # For the health endpoint, beside `counters` (cloud/deadletter.py):
        #: Writes under way now (at most writes_in_flight).
        self._writing = 0
        #: Wall-clock ns of the last write InfluxDB accepted; 0: none yet.
        self._last_write_ns = 0
        #: Why the latest write attempt failed while InfluxDB is unavailable; None once one
        #: succeeds.
        self._write_failing: str | None = None
        #: Writes InfluxDB refused (400/413), each then split to isolate the bad points.
        self._rejected_writes = 0
        #: Messages and points published to the dead-letter topic, by kind.
        self._dead_lettered: dict[str, int] = {}
        self._target = ""

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        ready: Callable[[], None] | None = None,
    ) -> int:
        """Run until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None); return the exit
        code. ``ready`` is called once the subscription is confirmed. With ``health.listen``
        set, the health endpoint is served meanwhile; when it cannot listen there, this
        returns :data:`~cloud.errors.EXIT_CONFIG` at once (logged in one line)."""
        address = self.config.health.address
        if address is None:
            return await self._run(stop, ready)
        from fieldlink.metrics import ListenError

        health = self._health_endpoint(*address)
        try:
            await health.start()
        except ListenError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        try:
            return await self._run(stop, ready)
        finally:
            await health.close()

    async def _run(self, stop: asyncio.Event | None, ready: Callable[[], None] | None) -> int:
        signals: list[signal.Signals] = []
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
                signals.append(sig)
        link = MqttLink(self.config.mqtt)  # opens nothing until start()
        self._link = link
        # One writer (one connection) per write in flight; a writer serves one write at a time.
        writers = [open_writer(self.config.influx) for _ in range(self._writes_in_flight)]
        self._target = writers[0].target
        log.info(
            "ingester starting: MQTT %s → %s (measurement %s, up to %d writes in flight)",
            link.where,
            writers[0].target,
            self.config.influx.measurement,
            len(writers),
        )
        code = EXIT_OK
        try:
            link.start()
            if await self._until_subscribed(link, stop):
                if ready is not None:
                    ready()
                await self._consume(link, writers, stop)
        except FatalError as exc:
            log.error("%s", exc)
            code = exc.exit_code
        finally:
            await link.close()
            for writer in writers:
                writer.close()
            loop = asyncio.get_running_loop()
            for sig in signals:
                loop.remove_signal_handler(sig)
            log.info("ingester stopped: %s", self.counters.summary())
        return code

    async def _until_subscribed(self, link: MqttLink, stop: asyncio.Event) -> bool:
        """Wait for the subscription; False if asked to stop first."""
        subscribed = asyncio.ensure_future(link.wait_subscribed())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({subscribed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not subscribed.done():
                subscribed.cancel()
        if subscribed.done() and not subscribed.cancelled():
            subscribed.result()  # raises MqttRefusedError
            return True
        return False

    async def _consume(self, link: MqttLink, writers: list[Writer], stop: asyncio.Event) -> None:
        batch = _Batch()
        max_points = self.config.batch.max_points
        #: Batches handed over for writing, in the order they were filled (= acknowledged).
        writing: collections.deque[_Writing] = collections.deque()
        idle = list(writers)
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        failed: asyncio.Future[Any] = asyncio.ensure_future(link.failed.wait())
        getter: asyncio.Future[Any] | None = None
        next_summary = time.monotonic() + self._summary_interval
        try:
            while not stop.is_set():
                link.raise_if_failed()
                await self._finish_written(writing, link, idle, wait=False)
                # While a getter waits, it alone takes messages: it may already hold the
                # next one, and taking another past it would break the order of acks.
                message = link.take_nowait() if getter is None else None
                if message is None:
                    # Wait for a message, the batch deadline, the summary, a write to finish,
                    # a stop or a failure.
                    wake = (
                        next_summary
                        if batch.deadline is None
                        else min(batch.deadline, next_summary)
                    )
                    if getter is None:
                        getter = asyncio.ensure_future(link.take())
                    waits: set[asyncio.Future[Any]] = {getter, stopping, failed}
                    waits.update(w.task for w in writing if w.task and not w.task.done())
                    await asyncio.wait(
                        waits,
                        timeout=max(0.0, wake - time.monotonic()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if getter.done():
                        message = getter.result()
                        getter = None
                if message is not None:
                    self._take(message, batch, link)
                now = time.monotonic()
                if batch.messages and (
                    len(batch.lines) >= max_points
                    or not batch.lines  # only invalid messages: ack them in turn
                    or (batch.deadline is not None and now >= batch.deadline)
                ):
                    # At most writes_in_flight writes: wait for the oldest to be finished.
                    while batch.lines and not idle:
                        await self._finish_written(writing, link, idle, wait=True)
                    # Concurrent writes interleave in InfluxDB series by series: a record
                    # that rewrites an earlier version (a merged gap report) waits until
                    # every earlier write is done, so the newest version lands last.
                    while batch.ordered and any(w.task is not None for w in writing):
                        await self._finish_written(writing, link, idle, wait=True)
                    writing.append(self._hand_over(batch, idle, stop))
                    batch = _Batch()
                if now >= next_summary:
                    log.info("%s", self.counters.summary())
                    next_summary = now + self._summary_interval
            link.raise_if_failed()
            # Stopping: what was taken from the queue is finished (written and acknowledged);
            # what is still queued stays unacknowledged and the broker redelivers it.
            if getter is not None and getter.done():
                self._take(getter.result(), batch, link)
                getter = None
            if batch.messages:
                while batch.lines and not idle:
                    await self._finish_written(writing, link, idle, wait=True)
                while batch.ordered and any(w.task is not None for w in writing):
                    await self._finish_written(writing, link, idle, wait=True)
                writing.append(self._hand_over(batch, idle, stop))
            while writing:
                await self._finish_written(writing, link, idle, wait=True)
        finally:
            for future in (getter, stopping, failed):
                if future is not None:
                    future.cancel()
            # Only after an error: writes still in flight are abandoned, unacknowledged.
            tasks = [w.task for w in writing if w.task is not None and not w.task.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _hand_over(self, batch: _Batch, idle: list[Writer], stop: asyncio.Event) -> _Writing:
        """Start writing ``batch`` with an idle writer (or nothing to write: no task)."""
        if not batch.lines:
            return _Writing(batch, None)
        writer = idle.pop()

        async def write() -> bool:
            self._writing += 1
            try:
                return await self._write_batch(batch, writer, stop)
            finally:
                self._writing -= 1
                idle.append(writer)

        return _Writing(batch, asyncio.create_task(write(), name="ingester-write"))

    async def _finish_written(
        self,
        writing: collections.deque[_Writing],
        link: MqttLink,
        idle: list[Writer],
        *,
        wait: bool,
    ) -> None:
        """Finish (confirm and acknowledge) the written batches at the head of ``writing``, in
        order; with ``wait``, first wait for the oldest one. A fatal error of any write is
        raised at once, even if an earlier write is still in flight."""
        for item in writing:
            task = item.task
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error
        if wait and writing and not writing[0].done():
            task = writing[0].task
            assert task is not None
            await asyncio.wait({task})
        while writing and writing[0].done():
            item = writing.popleft()
            written = True if item.task is None else item.task.result()
            if not written:
                # Asked to stop while InfluxDB was unavailable: this batch and every later
                # one stay unacknowledged (acks go out in order), the broker redelivers them.
                held = len(item.batch.messages) + sum(len(w.batch.messages) for w in writing)
                log.warning(
                    "stopping with %d message(s) not written; they stay unacknowledged and the "
                    "broker redelivers them when the ingester is back",
                    held,
                )
                later = [w.task for w in writing if w.task is not None]
                writing.clear()
                for task in later:
                    task.cancel()
                # Let them end (and hand their writers back) before the writers are closed.
                await asyncio.gather(*later, return_exceptions=True)
                return
            self._finish(item.batch, link)

    def _take(self, message: Incoming, batch: _Batch, link: MqttLink) -> None:
        """Validate one message into the batch, or dead-letter it."""
        self.counters.messages_received += 1
        try:
            checked = self._encoder.check(message.topic, message.payload, time.time_ns())
        except InvalidMessageError as exc:
            self._dead_letter(message, exc, link)
            batch.messages.append(message)  # acknowledged in order, with its batch
            source = exc.source
            if source is not None and source.seq is not None:
                # Dead-lettered is a reported outcome: confirm it, or the agent would send it
                # again for ever.
                key = (source.site, source.agent, source.epoch)
                batch.confirm.setdefault(key, []).append(source.seq)
            return
        if not batch.lines:
            batch.deadline = time.monotonic() + self.config.batch.max_delay
        batch.lines.extend(checked.lines)
        batch.messages.append(message)
        batch.ordered = batch.ordered or checked.ordered
        if checked.seq is not None:
            key = (checked.site, checked.agent, checked.epoch)
            batch.confirm.setdefault(key, []).append(checked.seq)
            self._track_seq(checked.site, checked.agent, checked.seq)

    def _dead_letter(self, message: Incoming, exc: InvalidMessageError, link: MqttLink) -> None:
        self.counters.count_invalid(exc.kind)
        body = deadletter_body(
            message.topic, exc.kind, exc.reason, message.payload, message.received_ns
        )
        try:
            link.publish(self._deadletter_topic, body)
        except MqttError as err:
            # Not acknowledging it instead would stall nothing (later acks still go out) but
            # would bring it back on every reconnect; it is counted as invalid either way.
            log.error("cannot dead-letter a message from %s: %s", message.topic, err)
        else:
            self.counters.dead_lettered += 1
            self._dead_lettered[exc.kind] = self._dead_lettered.get(exc.kind, 0) + 1
        if self._logged_sources.first(message.topic, log):
            log.warning(
                "invalid message on %s (%s): %s — dead-lettered to %s; further invalid "
                "messages from this topic are only counted",
                message.topic,
                exc.kind,
                exc.reason,
                self._deadletter_topic,
            )

    async def _write_batch(self, batch: _Batch, writer: Writer, stop: asyncio.Event) -> bool:
        """Write the batch's lines (in chunks of batch.max_points). False: asked to stop while
        InfluxDB was unavailable."""
        max_points = self.config.batch.max_points
        for start in range(0, len(batch.lines), max_points):
            chunk = batch.lines[start : start + max_points]
            if not await self._write(writer, chunk, stop, len(batch.messages)):
                return False
        return True

    def _finish(self, batch: _Batch, link: MqttLink) -> None:
        """A written batch: confirm its seqs to the agents, then acknowledge its messages in
        arrival order."""
        # Confirm to the agents before acknowledging to the broker: a crash in between leaves
        # the messages unacknowledged, they come back, are rewritten (same points) and
        # confirmed then.
        for (site, agent, epoch), seqs in batch.confirm.items():
            topic = confirm_topic(site, agent, root=self.config.mqtt.topic_root)
            try:
                link.publish(topic, encode_confirm(epoch, seq_ranges(seqs)))
            except MqttError as exc:
                log.error("cannot confirm to agent %s/%s: %s", site, agent, exc)
        for message in batch.messages:
            link.ack(message)

    def _track_seq(self, site: str, agent: str, seq: int) -> None:
        """Track which sequence numbers of an agent have not arrived (yet).

        Agents send live messages before backlog, so seqs arrive out of order during every
        drain: a seq above the highest one seen opens a gap, and its missing seqs are
        remembered until they arrive. What stays missing is a real gap (a spool drop, which
        the agent also reports). Only meaningful for an ingester that sees all of an agent's
        messages: with a shared-subscription group each member sees a part, so not tracked.
        """
        if self.config.mqtt.group is not None:
            return
        key = f"{site}/{agent}"
        missing = self._missing.setdefault(key, set())
        highest = self._highest_seq.get(key)
        if highest is None or seq > highest:
            if highest is not None and seq > highest + 1 and len(missing) < MAX_TRACKED_MISSING:
                missing.update(range(highest + 1, min(seq, highest + 1 + MAX_TRACKED_MISSING)))
            self._highest_seq[key] = seq
        else:
            missing.discard(seq)
        self.counters.seq_gaps[key] = len(missing)

    async def _write(
        self, writer: Writer, lines: list[str], stop: asyncio.Event, held: int
    ) -> bool:
        """Write one chunk, retrying while InfluxDB is unavailable. False: asked to stop while
        InfluxDB was unavailable (nothing is acknowledged then).

        Points InfluxDB refuses (400, e.g. a field-type conflict; 413, too large) are found by
        halving the chunk and writing the halves again — writes are idempotent, so rewriting
        accepted points is harmless — until single lines remain: those go to the dead-letter
        topic with InfluxDB's reason, everything else is written.
        """
        try:
            await self._write_with_retry(writer, lines, stop, held)
        except _Stopping:
            return False
        except InfluxRejectedError as exc:
            self._rejected_writes += 1
            self._write_failing = None  # InfluxDB answers: it refused these points
            if len(lines) == 1:
                self._refused(lines[0], exc)
                return True
            if exc.status != 413:
                log.warning(
                    "InfluxDB refused part of a batch of %d readings (HTTP %d: %s); "
                    "isolating the refused points",
                    len(lines),
                    exc.status,
                    exc.text,
                )
            middle = len(lines) // 2
            for half in (lines[:middle], lines[middle:]):
                if not await self._write(writer, half, stop, held):
                    return False
            return True
        self.counters.batches_written += 1
        self.counters.readings_written += len(lines)
        self._last_write_ns = time.time_ns()
        return True

    async def _write_with_retry(
        self, writer: Writer, lines: list[str], stop: asyncio.Event, held: int
    ) -> None:
        body = "\n".join(lines).encode()
        attempt = 0
        create = created = False
        while True:
            try:
                if create:
                    await asyncio.to_thread(writer.create_database)
                    create, created = False, True
                await asyncio.to_thread(writer.write, body)
            except InfluxUnavailableError as exc:
                self._write_failing = str(exc)
                if stop.is_set():
                    raise _Stopping from exc
                attempt += 1
                self.counters.write_retries += 1
                delay = min(self._retry_cap, self._retry_first * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    # The server said when; waiting less would only be refused again.
                    delay = max(delay, min(exc.retry_after, self._retry_cap * 10))
                log.warning(
                    "write of %d readings failed (%s); retry %d in %.1f s, holding %d message(s) "
                    "unacknowledged",
                    len(lines),
                    exc,
                    attempt,
                    delay,
                    held,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            except InfluxDatabaseMissingError as exc:
                influx = self.config.influx
                if created or not (isinstance(influx, InfluxV1) and influx.create_database):
                    raise InfluxConfigError(str(exc)) from exc
                create = True
                continue
            self._write_failing = None
            if attempt:
                log.info("write succeeded after %d retries", attempt)
            return

    def _refused(self, line: str, exc: InfluxRejectedError) -> None:
        """A single point InfluxDB will not take: dead-letter it with the reason, count it."""
        self.counters.readings_refused += 1
        self.counters.count_invalid(InvalidKind.REFUSED)
        body = orjson.dumps(
            {
                "kind": InvalidKind.REFUSED.value,
                "reason": f"InfluxDB refused the point (HTTP {exc.status}): {exc.text}",
                "line": line,
                "received_ns": time.time_ns(),
            }
        )
        try:
            assert self._link is not None, "only called while running"
            self._link.publish(self._deadletter_topic, body)
        except MqttError as err:
            log.error("cannot dead-letter a point InfluxDB refused: %s", err)
        else:
            self.counters.dead_lettered += 1
            refused = InvalidKind.REFUSED.value
            self._dead_lettered[refused] = self._dead_lettered.get(refused, 0) + 1
        if self._logged_sources.first(f"influx:{exc.status}", log):
            log.warning(
                "InfluxDB refused a point (HTTP %d: %s); it is dead-lettered to %s with the "
                "line, further refusals are only counted",
                exc.status,
                exc.text,
                self._deadletter_topic,
            )

    # --- the health endpoint (docs/health.md) ---------------------------------------------------

    def _health_endpoint(self, host: str, port: int) -> MetricsServer:
        # Imported here: an ingester without health.listen does not load the endpoint.
        from fieldlink.metrics import MetricsServer, Registry

        registry = Registry()
        registry.register(self._metric_families)
        return MetricsServer(registry, host, port, health=self._check)

    @property
    def mqtt_connected(self) -> bool:
        return self._link is not None and self._link.is_connected

    def _metric_families(self) -> list[Family]:
        from fieldlink.metrics import counter, gauge

        c = self.counters
        out = [
            gauge(
                "fieldlink_ingester_info", "Always 1; the label says which version runs.", "version"
            ).add(1, __version__),
            gauge(
                "fieldlink_ingester_mqtt_connected",
                "1 while the MQTT session with the broker is up.",
            ).add(int(self.mqtt_connected)),
            counter(
                "fieldlink_ingester_messages_received_total",
                "Messages taken from the broker (valid or not).",
            ).add(c.messages_received),
            counter(
                "fieldlink_ingester_readings_written_total",
                "Readings (points) InfluxDB accepted.",
            ).add(c.readings_written),
            counter(
                "fieldlink_ingester_write_batches_total",
                "Write requests InfluxDB accepted.",
            ).add(c.batches_written),
            gauge(
                "fieldlink_ingester_writes_in_flight",
                "Batches being written now (at most batch.writes_in_flight).",
            ).add(self._writing),
            gauge(
                "fieldlink_ingester_last_write_timestamp_seconds",
                "Unix time of the last write InfluxDB accepted; 0 before the first.",
            ).add(self._last_write_ns / 1e9),
        ]
        failures = counter(
            "fieldlink_ingester_write_failures_total",
            "Write attempts that failed, by kind: unavailable (InfluxDB down, timed out, "
            "5xx/429: retried with backoff), rejected (400/413: the refused points are "
            "isolated and dead-lettered).",
            "kind",
        )
        failures.add(c.write_retries, "unavailable").add(self._rejected_writes, "rejected")
        invalid = counter(
            "fieldlink_ingester_invalid_total",
            "Messages refused as invalid and points InfluxDB refused, by kind.",
            "kind",
        )
        for kind, count in sorted(c.invalid.items()):
            invalid.add(count, kind)
        dead = counter(
            "fieldlink_ingester_dead_lettered_total",
            "Messages and points published to the dead-letter topic, by kind.",
            "kind",
        )
        for kind, count in sorted(self._dead_lettered.items()):
            dead.add(count, kind)
        missing = gauge(
            "fieldlink_ingester_missing_seqs",
            "Sequence numbers of an agent not arrived (yet): a lasting gap is a loss the "
            "agent also reports (not tracked with mqtt.group).",
            "site",
            "agent",
        )
        for key, count in sorted(c.seq_gaps.items()):
            site, _, agent = key.partition("/")
            missing.add(count, site, agent)
        return [*out, failures, invalid, dead, missing]

    async def _check(self) -> tuple[bool, str]:
        mqtt = self.config.mqtt
        broker = f"MQTT broker {mqtt.host}:{mqtt.port}"
        if not self.mqtt_connected:
            return False, f"failing: {broker} not connected; nothing is read"
        if self._write_failing is not None:
            return False, (
                f"failing: writes to {self._target} fail ({self._write_failing}); retrying, "
                "the messages stay unacknowledged at the broker"
            )
        return True, f"ok: {broker} connected, writing to {self._target}"


class _Stopping(Exception):
    """Asked to stop while InfluxDB was unavailable."""


async def run_ingester(
    config: CloudConfig,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run the ingester until ``stop`` is set, or until SIGINT/SIGTERM when ``stop`` is None.

    Returns the exit code: 0 after a clean stop, :data:`cloud.errors.EXIT_INFLUX` or
    :data:`cloud.errors.EXIT_MQTT` after a fatal error (already logged).
    """
    return await Ingester(config).run(stop=stop, ready=ready)
