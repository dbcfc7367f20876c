"""The ingester: MQTT batches of readings → validated → line protocol → InfluxDB.

Delivery guarantee: a message is acknowledged to the broker only after InfluxDB accepted its
points (or after it was dead-lettered as invalid), and acknowledgements go out in the order
the messages arrived. Until then the broker keeps it in the ingester's persistent session, so
a crash, a restart or an InfluxDB outage loses nothing; at worst a message is written twice,
which overwrites identical points.

Concurrency: paho's network thread hands messages to this module's event loop (see
:mod:`cloud.mqtt`); writes run one at a time in a worker thread (``asyncio.to_thread``) so the
loop keeps watching the stop signal. Each resource has one owner: :class:`Ingester.run` opens
and closes the MQTT link and the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloud.deadletter import Counters, FirstSeen, deadletter_body
from cloud.errors import (
    EXIT_OK,
    FatalError,
    InfluxConfigError,
    InfluxDatabaseMissingError,
    InfluxRejectedError,
    InfluxUnavailableError,
    MqttError,
)
from cloud.mqtt import Incoming, MqttLink
from cloud.validate import InvalidKind, InvalidMessageError, check_message
from cloud.writer import Writer, open_writer
from config.cloud import CloudConfig, InfluxV1
from wire.codec import encode_confirm, seq_ranges
from wire.topics import confirm_topic, deadletter_topic

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

    def clear(self) -> None:
        self.messages.clear()
        self.lines.clear()
        self.deadline = None
        self.confirm.clear()


class Ingester:
    """One run of the ingester. Tests read :attr:`counters`; the CLI uses :func:`run_ingester`."""

    def __init__(
        self,
        config: CloudConfig,
        *,
        summary_interval: float = SUMMARY_INTERVAL,
        retry_first: float = RETRY_FIRST,
        retry_cap: float = RETRY_CAP,
    ) -> None:
        self.config = config
        self.counters = Counters()
        self._summary_interval = summary_interval
        self._retry_first = retry_first
        self._retry_cap = retry_cap
        self._deadletter_topic = deadletter_topic(root=config.mqtt.topic_root)
        self._logged_sources = FirstSeen()
        self._link: MqttLink | None = None
        self._highest_seq: dict[str, int] = {}
        self._missing: dict[str, set[int]] = {}

    async def run(
        self,
        *,
        stop: asyncio.Event | None = None,
        ready: Callable[[], None] | None = None,
    ) -> int:
        """Run until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None); return the exit
        code. ``ready`` is called once the subscription is confirmed."""
        signals: list[signal.Signals] = []
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
                signals.append(sig)
        link = MqttLink(self.config.mqtt)  # opens nothing until start()
        self._link = link
        writer = open_writer(self.config.influx)
        log.info(
            "ingester starting: MQTT %s → %s (measurement %s)",
            link.where,
            writer.target,
            self.config.influx.measurement,
        )
        code = EXIT_OK
        try:
            link.start()
            if await self._until_subscribed(link, stop):
                if ready is not None:
                    ready()
                await self._consume(link, writer, stop)
        except FatalError as exc:
            log.error("%s", exc)
            code = exc.exit_code
        finally:
            await link.close()
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

    async def _consume(self, link: MqttLink, writer: Writer, stop: asyncio.Event) -> None:
        batch = _Batch()
        max_points = self.config.batch.max_points
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        failed: asyncio.Future[Any] = asyncio.ensure_future(link.failed.wait())
        getter: asyncio.Future[Any] | None = None
        next_summary = time.monotonic() + self._summary_interval
        try:
            while not stop.is_set():
                link.raise_if_failed()
                # While a getter waits, it alone takes messages: it may already hold the
                # next one, and taking another past it would break the order of acks.
                message = link.take_nowait() if getter is None else None
                if message is None:
                    # Wait for a message, the batch deadline, the summary, a stop or a failure.
                    wake = (
                        next_summary
                        if batch.deadline is None
                        else min(batch.deadline, next_summary)
                    )
                    if getter is None:
                        getter = asyncio.ensure_future(link.take())
                    await asyncio.wait(
                        {getter, stopping, failed},
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
                    or not batch.lines  # only invalid messages: ack them now
                    or (batch.deadline is not None and now >= batch.deadline)
                ):
                    await self._flush(batch, link, writer, stop)
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
                await self._flush(batch, link, writer, stop)
        finally:
            for future in (getter, stopping, failed):
                if future is not None:
                    future.cancel()

    def _take(self, message: Incoming, batch: _Batch, link: MqttLink) -> None:
        """Validate one message into the batch, or dead-letter it."""
        self.counters.messages_received += 1
        influx = self.config.influx
        try:
            checked = check_message(
                message.topic,
                message.payload,
                root=self.config.mqtt.topic_root,
                measurement=influx.measurement,
                limits=self.config.ingest,
                now_ns=time.time_ns(),
            )
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
        if self._logged_sources.first(message.topic, log):
            log.warning(
                "invalid message on %s (%s): %s — dead-lettered to %s; further invalid "
                "messages from this topic are only counted",
                message.topic,
                exc.kind,
                exc.reason,
                self._deadletter_topic,
            )

    async def _flush(
        self, batch: _Batch, link: MqttLink, writer: Writer, stop: asyncio.Event
    ) -> None:
        """Write the batch's lines (in chunks of batch.max_points), then acknowledge its
        messages in arrival order."""
        max_points = self.config.batch.max_points
        for start in range(0, len(batch.lines), max_points):
            chunk = batch.lines[start : start + max_points]
            if not await self._write(writer, chunk, stop, len(batch.messages)):
                log.warning(
                    "stopping with %d message(s) not written; they stay unacknowledged and the "
                    "broker redelivers them when the ingester is back",
                    len(batch.messages),
                )
                batch.clear()
                return
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
        batch.clear()

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
        if self._logged_sources.first(f"influx:{exc.status}", log):
            log.warning(
                "InfluxDB refused a point (HTTP %d: %s); it is dead-lettered to %s with the "
                "line, further refusals are only counted",
                exc.status,
                exc.text,
                self._deadletter_topic,
            )


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
