"""Forwarding readings: batch, commit to the spool, publish, and forget only what the cloud
confirmed stored (see docs/delivery.md).

The path of a batch:

1. Pollers call :meth:`Publisher.submit`, which never waits on the network or the disk.
   Groups wait in memory (``publish.queue_size`` readings at most; when that fills because
   the disk cannot keep up, the oldest are dropped and counted).
2. Every ``max_batch`` readings or ``max_delay`` seconds, the batch is encoded with the
   agent's next sequence number and spool epoch and committed to the spool (SQLite) in one
   transaction, in the spool's own thread.
3. The sender publishes spooled messages at QoS 1, at most ``mqtt.max_inflight`` (and the
   broker's Receive Maximum) at a time. **Live first**: messages spooled since the last send
   go out before backlog (messages spooled during an outage, or published and never
   confirmed within ``spool.confirm_timeout``); backlog gets at most ``spool.backlog_rate``
   readings per second, so fresh readings keep flowing while a backlog drains. A negative
   PUBACK (not authorised, quota, no subscribers) counts as not delivered.
4. An ingester confirms stored sequence numbers on the agent's confirm topic; only then are
   they deleted from the spool. Unconfirmed messages are published again after the timeout.
5. The spool's caps (size, age) drop the oldest messages when exceeded; the loss is counted
   and sent as a gap record — readings of the agent's own points ``spool_dropped_readings``
   and ``spool_dropped_messages`` — so it is visible in InfluxDB next to the data.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from config.edge import EdgeConfig
from edge.mqtt import AgentSession, NotDelivered
from edge.spool import Dropped, Entry, Gap, Spool, SpoolError, SpoolStats
from fieldlink import __version__
from wire.codec import PayloadError, decode_confirm, encode_groups
from wire.model import Group, PointEntry
from wire.topics import confirm_topic, data_topic, status_topic

log = logging.getLogger("fieldlink.edge.publish")

T = TypeVar("T")

#: Spooled messages kept in memory for the live path; older ones are read back from the spool.
LIVE_WINDOW = 64
#: Seconds between two checks of the spool's caps while nothing is appended (they are also
#: applied in every append), and between two warnings about cap drops.
CAPS_INTERVAL = 5.0
#: Longest the sender sleeps without a reason to wake (a safety net: every event that can
#: make something sendable wakes it, and it sleeps until the next republish is due).
SENDER_IDLE_S = 1.0


@dataclass
class PublishStats:
    messages: int = 0
    readings: int = 0
    #: Readings dropped from the in-memory queue before reaching the spool.
    dropped: int = 0
    #: Readings the spool's caps dropped.
    spool_dropped: int = 0
    republished: int = 0
    not_delivered: int = 0
    confirmed: int = 0
    #: Publishes the broker refused in its PUBACK, by reason code (0x87 not authorised,
    #: 0x10 no matching subscribers, 0x97 quota exceeded).
    refused: dict[int, int] = field(default_factory=dict)


def default_spool_path(site: str, agent: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fieldlink" / f"{site}-{agent}.spool"


class Publisher:
    def __init__(self, config: EdgeConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._site = config.agent.site
        self._agent = config.agent.id
        self._cfg = config.publish
        self._spool_cfg = config.spool
        self._clock = clock
        root = config.mqtt.topic_root
        self._topic = data_topic(self._site, self._agent, root=root)
        self._confirm_topic = confirm_topic(self._site, self._agent, root=root)
        self._status_topic = status_topic(self._site, self._agent, root=root)
        self._buffer: deque[Group] = deque()
        self._buffered = 0
        self._oldest_at: float | None = None
        self._batch_wakeup = asyncio.Event()
        self._send_wakeup = asyncio.Event()
        self._flushing = False
        #: Spooled, never published: the live path (newest LIVE_WINDOW kept in memory).
        self._fresh: deque[Entry] = deque(maxlen=LIVE_WINDOW)
        self._inflight: set[int] = set()
        #: seq → monotonic time of its last successful publish, until confirmed.
        self._sent_at: dict[int, float] = {}
        #: Confirmed seqs whose deletion from the spool is still under way.
        self._confirming: set[int] = set()
        #: Confirmed ranges not yet deleted from the spool, and when the oldest arrived: they
        #: ride along with the next append (one spool-thread call), or go alone after
        #: ``max_delay`` when nothing is buffered.
        self._to_confirm: list[tuple[int, int]] = []
        self._confirms_since: float | None = None
        #: Whether the spool may hold messages the sender does not track (left by an earlier
        #: run, pushed out of the live window, refused and forgiven, or a failed confirm):
        #: only then, or when a republish is due, is the spool asked for its backlog.
        self._untracked = True
        #: No tracked message is due for a republish before this (monotonic) time; an early
        #: bound (confirms only make it later), made exact by every backlog query.
        self._next_due_at = float("inf")
        #: Causes of not-delivered publishes logged since the last delivery (PUBACK code,
        #: None for a lost connection): each is logged once until a message is delivered.
        self._refusals_logged: set[int | None] = set()
        #: Seqs the broker refused since the last delivery: due again at once when the
        #: broker accepts a message again (its ACL was fixed, an ingester subscribed).
        self._refused: set[int] = set()
        #: seq → publishes so far, until confirmed: the wait before the next one doubles.
        self._attempts: dict[int, int] = {}
        self._backlog_tokens = 0.0
        self._backlog_refill_at = clock()
        self._spool: Spool | None = None
        #: Cap drops not logged yet (logged at most once per CAPS_INTERVAL), and when last.
        self._drops_unlogged: Dropped | None = None
        self._drops_logged_at = float("-inf")
        self._session: AgentSession | None = None
        self._session_started = asyncio.Event()
        # All spool access goes through this one thread: SQLite connections are used by one
        # thread at a time, and the event loop never blocks on the disk.
        self._spool_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self.stats = PublishStats()

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def pending(self) -> int:
        """Readings not yet in the spool."""
        return self._buffered

    def submit(self, groups: list[Group]) -> None:
        if not groups:
            return
        if not self._buffer:
            self._oldest_at = self._clock()
            self._batch_wakeup.set()
        self._buffer.extend(groups)
        self._buffered += sum(len(g.points) for g in groups)
        if self._buffered > self._cfg.queue_size:
            self._drop_oldest()
        if self._buffered >= self._cfg.max_batch:
            self._batch_wakeup.set()

    def _drop_oldest(self) -> None:
        if self.stats.dropped == 0:
            log.warning(
                "%d readings wait for the spool: the disk is not keeping up; dropping the oldest",
                self._cfg.queue_size,
            )
        while self._buffered > self._cfg.queue_size and len(self._buffer) > 1:
            dropped = len(self._buffer.popleft().points)
            self._buffered -= dropped
            self.stats.dropped += dropped

    async def _in_spool_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._spool_thread, fn, *args)

    async def run(self) -> None:
        """Open the spool and the MQTT session, then batch, publish and confirm until
        cancelled. Cancellation leaves everything unconfirmed in the spool."""
        spool_cfg = self._spool_cfg
        path = spool_cfg.path or default_spool_path(self._site, self._agent)
        self._spool = await self._in_spool_thread(
            lambda: Spool.open(path, max_bytes=spool_cfg.max_bytes, max_age_s=spool_cfg.max_age)
        )
        backlog = self._spool.stats
        log.info(
            "spool %s: %d message(s) waiting from earlier runs; epoch %s, next seq %d",
            path,
            backlog.entries,
            self._spool.epoch,
            self._spool.next_seq,
        )
        self._session = AgentSession(
            self._config.mqtt,
            client_id=self._config.mqtt.client_id or f"fieldlink-{self._site}-{self._agent}",
            status_topic=self._status_topic,
            confirm_topic=self._confirm_topic,
            birth={
                "version": __version__,
                "config_hash": self._config.config_hash,
                "boot": self._spool.boot_id,
                "epoch": self._spool.epoch,
            },
            on_confirm=self._on_confirm,
        )
        self._session.start()
        self._session_started.set()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._batcher(), name="spool-batcher")
                tasks.create_task(self._sender(), name="mqtt-sender")
                tasks.create_task(self._caps(), name="spool-caps")
        finally:
            if self.stats.refused:
                codes = sorted(self.stats.refused.items())
                log.warning(
                    "the broker refused %d publish(es) in this run (%s); none was deleted "
                    "from the spool",
                    sum(self.stats.refused.values()),
                    ", ".join(f"PUBACK {c:#04x}: {n}" for c, n in codes),
                )
            await self._session.close()
            await self._in_spool_thread(self._spool.close)
            self._spool_thread.shutdown(wait=False)

    def connection_problem(self) -> str | None:
        return self._session.last_error if self._session is not None else None

    # --- read by the health endpoint (edge/health.py) at scrape time ---------------------------

    @property
    def mqtt_connected(self) -> bool:
        return self._session is not None and self._session.connected.is_set()

    @property
    def mqtt_reconnects(self) -> int:
        """Connections the broker accepted after the first one."""
        return max(0, self._session.connections - 1) if self._session is not None else 0

    @property
    def spool_stats(self) -> SpoolStats | None:
        """The spool's counters (in memory), None while it is not open."""
        spool = self._spool
        return None if spool is None or spool.closed else spool.stats

    async def spool_oldest_ns(self) -> int | None:
        """Append time of the oldest message in the spool (not yet confirmed by the cloud),
        None when it is empty or not open. One indexed read in the spool's thread."""
        spool = self._spool
        if spool is None or spool.closed or spool.stats.entries == 0:
            return None
        try:
            head = await self._in_spool_thread(spool.pending, 1)
        except (SpoolError, RuntimeError):  # closed meanwhile, or its thread shut down
            return None
        return head[0].created_ns if head else None

    async def wait_connected(self) -> None:
        await self._session_started.wait()
        assert self._session is not None
        await self._session.connected.wait()

    async def drain(self) -> None:
        """Spool what is buffered and publish what is fresh, waiting for the broker's PUBACKs;
        the caller bounds the wait. Unconfirmed messages stay in the spool for the next run."""
        self._flushing = True
        self._batch_wakeup.set()
        while self._buffer or self._fresh or self._inflight:
            self._batch_wakeup.set()
            self._send_wakeup.set()
            # Polling three conditions owned by other tasks; runs once, at shutdown.
            await asyncio.sleep(0.02)

    # --- batching into the spool --------------------------------------------------------------

    async def _batcher(self) -> None:
        """Commit batches and confirmations to the spool: whatever one wakeup has for the
        spool goes in one call to its thread (an append and the confirmed deletions that
        arrived since the last one), so the quiet path costs one thread hop per batch."""
        assert self._spool is not None
        spool = self._spool
        while True:
            await self._wait_for_batch()
            batch, count = self._take_batch()
            confirms, self._to_confirm = _coalesce(self._to_confirm), []
            self._confirms_since = None
            if not batch and not confirms:
                continue
            deleted, appended = await self._in_spool_thread(
                functools.partial(self._spool_round, spool, batch, count, confirms)
            )
            if confirms:
                self._confirmed(confirms, deleted)
            if appended is None:
                continue
            entry, dropped = appended
            if dropped is not None:
                self._note_drop(dropped)
            if dropped is None or entry.seq > dropped.last_seq:
                if len(self._fresh) == LIVE_WINDOW:
                    # The oldest fresh entry falls out of memory: the backlog has it.
                    self._untracked = True
                self._fresh.append(entry)
            self._send_wakeup.set()

    def _spool_round(
        self, spool: Spool, batch: list[Group], count: int, confirms: list[tuple[int, int]]
    ) -> tuple[int | None, tuple[Entry, Dropped | None] | None]:
        """In the spool thread: delete the confirmed ranges (one transaction; before the
        append, so its caps count the room they free), then append the batch (another).
        Returns the entries deleted (``None``: the deletion failed, they stay spooled and
        are published again) and the append's result (``None`` without a batch)."""
        deleted: int | None = 0
        if confirms:
            try:
                deleted = spool.confirm(confirms)
            except SpoolError as exc:
                log.warning(
                    "could not delete confirmed messages from the spool (%s); they "
                    "stay spooled and are published again",
                    exc,
                )
                deleted = None
        appended = self._append(spool, batch, count) if batch else None
        return deleted, appended

    def _append(self, spool: Spool, batch: list[Group], count: int) -> tuple[Entry, Dropped | None]:
        """In the spool thread: add the records of the spool's unreported gaps when a report
        is due (:attr:`Spool.report_due`: one report outstanding at a time, an in-memory
        check), encode with the next seq and commit, with the caps enforced in the same
        transaction. Returns the entry and what the caps dropped.

        The spool keeps a reported gap until the report's message is confirmed, and lists it
        again if the caps drop that message first, in the same transactions: a gap report
        survives a restart of the agent (issue 4; it used to be kept in memory). Reading the
        gaps in the same call as the append: a cap drop run between the two (the periodic
        check) would merge into a gap the append then marks as reported."""
        gaps = spool.gaps() if spool.report_due else []
        records = self._gap_records(gaps)
        count += sum(len(g.points) for g in records)
        site, agent, epoch = self._site, self._agent, spool.epoch
        groups = [*batch, *records]

        def payload_for(seq: int) -> bytes:
            return encode_groups(site, agent, groups, seq, epoch)

        # The caps are enforced in the append's own transaction (an in-memory check unless a
        # cap is exceeded): no commit leaves the spool above max_bytes, not even between an
        # append and its drop (issue 4; checked only every CAPS_INTERVAL, the spool once
        # outgrew a 64 KiB cap 3x at 1,000 readings/s).
        return spool.append_within_caps(payload_for, count, reported_gaps=[g.id for g in gaps])

    def _take_batch(self) -> tuple[list[Group], int]:
        batch: list[Group] = []
        taken = 0
        while self._buffer:
            size = len(self._buffer[0].points)
            if batch and taken + size > self._cfg.max_batch:
                break
            batch.append(self._buffer.popleft())
            taken += size
        self._buffered -= taken
        self._oldest_at = self._clock() if self._buffer else None
        return batch, taken

    async def _wait_for_batch(self) -> None:
        """Until a batch is full, or the oldest buffered reading waited ``max_delay``, or
        (nothing buffered) the oldest confirmation did (when flushing: until anything is
        buffered or confirmed)."""
        while True:
            if self._buffered >= self._cfg.max_batch:
                return
            if self._flushing and (self._buffer or self._to_confirm):
                return
            # Confirmations wait for the next append while one is coming (readings are
            # buffered: within max_delay), else max_delay on their own.
            since = self._oldest_at if self._buffer else self._confirms_since
            remaining: float | None = None
            if since is not None:
                remaining = since + self._cfg.max_delay - self._clock()
                if remaining <= 0:
                    return
            self._batch_wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._batch_wakeup.wait()
            except TimeoutError:
                return

    # --- publishing ---------------------------------------------------------------------------

    async def _sender(self) -> None:
        assert self._session is not None and self._spool is not None
        session = self._session
        while True:
            await session.connected.wait()
            window = min(self._config.mqtt.max_inflight, session.receive_maximum)
            free = window - len(self._inflight)
            sent = 0
            while free > 0 and self._fresh:
                entry = self._fresh.popleft()
                if entry.seq in self._sent_at or entry.seq in self._inflight:
                    continue
                self._send(entry)
                free -= 1
                sent += 1
            backlog = self._untracked or self._clock() >= self._next_due_at
            if free > 0 and backlog and self._backlog_allowance() > 0:
                # Cleared before the query: whatever becomes untracked meanwhile sets it again.
                self._untracked = False
                due = await self._due_backlog(free)
                for entry in due:
                    if self._backlog_allowance() <= 0:
                        # Not all sent: what is left is still to be asked for.
                        self._untracked = True
                        break
                    self._backlog_tokens -= entry.readings
                    if entry.seq in self._sent_at:
                        self.stats.republished += 1
                    self._send(entry)
                    sent += 1
                if len(due) >= free:
                    self._untracked = True  # the query was cut at the window: maybe more
            if sent == 0:
                self._send_wakeup.clear()
                # Wake for new fresh entries, freed slots, confirmations, or when the next
                # republish is due (no polling of the spool while nothing can be due).
                try:
                    async with asyncio.timeout(self._sender_sleep()):
                        await self._send_wakeup.wait()
                except TimeoutError:
                    pass

    def _sender_sleep(self) -> float:
        """How long the sender may sleep when nothing was sent: until the next republish
        is due, or (backlog waiting for tokens) until the backlog rate allows one more."""
        if self._untracked or self._clock() >= self._next_due_at:
            tokens = self._backlog_allowance()
            if tokens <= 0:
                wait = -tokens / self._spool_cfg.backlog_rate
                return min(max(wait, 0.01), SENDER_IDLE_S)
            # Waiting for a free slot: a PUBACK wakes the sender.
            return SENDER_IDLE_S
        return min(max(self._next_due_at - self._clock(), 0.0), SENDER_IDLE_S)

    def _backlog_allowance(self) -> float:
        now = self._clock()
        rate = self._spool_cfg.backlog_rate
        self._backlog_tokens = min(
            rate, self._backlog_tokens + (now - self._backlog_refill_at) * rate
        )
        self._backlog_refill_at = now
        return self._backlog_tokens

    def _due_after(self, seq: int) -> float:
        """Seconds after its last publish at which ``seq`` is due again. A message waits
        confirm_timeout after its first publish, then twice as long after each republish
        (capped at 8×): a cloud that is down for long is not flooded with copies, and one
        that is back gets each message again within a bounded time."""
        attempts = self._attempts.get(seq, 1)
        return self._spool_cfg.confirm_timeout * min(1 << max(attempts - 1, 0), 8)

    async def _due_backlog(self, limit: int) -> list[Entry]:
        """Spooled messages that are neither in flight, nor fresh, nor published recently."""
        assert self._spool is not None
        now = self._clock()
        exclude = set(self._inflight) | self._confirming
        exclude.update(e.seq for e in self._fresh)
        due_tracked: set[int] = set()
        next_due = float("inf")
        for seq, at in self._sent_at.items():
            due_at = at + self._due_after(seq)
            if now < due_at:
                exclude.add(seq)
                next_due = min(next_due, due_at)
            elif seq not in exclude:
                due_tracked.add(seq)
        # Exact now; publishes made while the query runs lower it again.
        self._next_due_at = next_due
        spool = self._spool
        entries = await self._in_spool_thread(
            functools.partial(spool.pending, limit, exclude=exclude)
        )
        if len(entries) < limit:
            # The query saw every spooled seq it did not exclude: a due seq it did not
            # return has left the spool (confirmed while in flight, or dropped), and would
            # otherwise look due, and wake this query, for ever.
            for seq in due_tracked.difference(e.seq for e in entries):
                self._sent_at.pop(seq, None)
                self._attempts.pop(seq, None)
        return entries

    def _send(self, entry: Entry) -> None:
        assert self._session is not None
        self._inflight.add(entry.seq)
        future = self._session.publish(self._topic, entry.payload)
        future.add_done_callback(functools.partial(self._published, entry))

    def _published(self, entry: Entry, future: asyncio.Future[None]) -> None:
        self._inflight.discard(entry.seq)
        self._send_wakeup.set()
        error = future.exception() if not future.cancelled() else NotDelivered("cancelled")
        now = self._clock()
        self._sent_at[entry.seq] = now
        self._attempts[entry.seq] = self._attempts.get(entry.seq, 0) + 1
        self._next_due_at = min(self._next_due_at, now + self._due_after(entry.seq))
        if error is None:
            self.stats.messages += 1
            self.stats.readings += entry.readings
            if self._refused or self._refusals_logged:
                self._accepted_again()
            return
        self.stats.not_delivered += 1
        # Counted as an attempt (above): it is due again after the (growing) confirm
        # timeout, not at once — a broker that refuses (no subscribers, not authorised) is
        # not hammered.
        code = error.code if isinstance(error, NotDelivered) else None
        if code is not None:
            self.stats.refused[code] = self.stats.refused.get(code, 0) + 1
            self._refused.add(entry.seq)
        if code not in self._refusals_logged:
            self._refusals_logged.add(code)
            log.log(
                logging.ERROR if code is not None and code >= 0x80 else logging.WARNING,
                "message seq %d not delivered: %s; it stays spooled and is published again "
                "later (logged once per cause until a message is delivered)",
                entry.seq,
                error,
            )

    def _accepted_again(self) -> None:
        """The broker took a message after refusing others: what it refused is due again
        now (not after its grown confirm timeout), at the backlog rate."""
        refused = len(self._refused)
        for seq in self._refused:
            self._sent_at.pop(seq, None)
        if refused:
            self._untracked = True
            self._send_wakeup.set()
        self._refused.clear()
        self._refusals_logged.clear()
        if refused:
            log.info(
                "the broker accepts messages again; the %d message(s) it refused go out again now",
                refused,
            )

    def _on_confirm(self, payload: bytes) -> None:
        try:
            epoch, ranges = decode_confirm(payload)
        except PayloadError as exc:
            log.warning("ignoring a malformed confirmation on %s: %s", self._confirm_topic, exc)
            return
        if self._spool is None or epoch != self._spool.epoch:
            # Seqs of another spool epoch (a spool replaced after corruption): they name other
            # messages than ours, so they must not delete anything.
            return
        for first, last in ranges:
            for seq in [s for s in self._sent_at if first <= s <= last]:
                del self._sent_at[seq]
                self._attempts.pop(seq, None)
                # Until the spool thread deleted it, the backlog query could still return it.
                self._confirming.add(seq)
        # Deleted with the next append (the batcher's next spool call): within max_delay
        # while readings are buffered, else max_delay from now.
        if not self._to_confirm:
            self._confirms_since = self._clock()
            self._batch_wakeup.set()
        self._to_confirm.extend(ranges)

    def _confirmed(self, ranges: list[tuple[int, int]], deleted: int | None) -> None:
        """After the spool thread deleted ``ranges`` (``deleted`` entries; ``None``: the
        deletion failed and they stay spooled, to be published again)."""
        if deleted is None:
            self._untracked = True
        else:
            self.stats.confirmed += deleted
        for first, last in ranges:
            self._confirming.difference_update([s for s in self._confirming if first <= s <= last])

    # --- caps and gaps --------------------------------------------------------------------------

    async def _caps(self) -> None:
        assert self._spool is not None
        while True:
            await asyncio.sleep(CAPS_INTERVAL)
            # After every append too (_append); here for the age cap while nothing is polled.
            dropped = await self._in_spool_thread(self._spool.enforce_caps)
            if dropped is not None:
                self._note_drop(dropped)
            self._log_drops()

    def _note_drop(self, dropped: Dropped) -> None:
        """Account for what a cap dropped (in the event loop)."""
        self.stats.spool_dropped += dropped.readings
        for seq in range(dropped.first_seq, dropped.last_seq + 1):
            self._sent_at.pop(seq, None)
            self._attempts.pop(seq, None)
        # Fix (issue 4): what the caps dropped is not sent any more, not even from memory: the
        # live window kept copies of dropped messages and published them after the outage,
        # although the gap record said they were dropped.
        if self._fresh and self._fresh[0].seq <= dropped.last_seq:
            kept = (e for e in self._fresh if e.seq > dropped.last_seq)
            self._fresh = deque(kept, maxlen=LIVE_WINDOW)
        # The spool recorded the loss as a gap; the next batch reports it.
        self._batch_wakeup.set()
        if not self._buffer:
            self._oldest_at = self._clock()
        pending = self._drops_unlogged
        if pending is not None:
            dropped = Dropped(
                pending.first_seq,
                dropped.last_seq,
                pending.messages + dropped.messages,
                pending.readings + dropped.readings,
            )
        self._drops_unlogged = dropped
        self._log_drops()

    def _log_drops(self) -> None:
        """Warn about cap drops, at most once per CAPS_INTERVAL (with a full spool, every
        append drops)."""
        dropped = self._drops_unlogged
        now = self._clock()
        if dropped is None or now - self._drops_logged_at < CAPS_INTERVAL:
            return
        self._drops_unlogged, self._drops_logged_at = None, now
        log.warning(
            "spool cap reached: dropped the oldest %d message(s) (%d readings, seq %d..%d); "
            "a gap record goes to the cloud",
            dropped.messages,
            dropped.readings,
            dropped.first_seq,
            dropped.last_seq,
        )

    def _gap_records(self, gaps: list[Gap]) -> list[Group]:
        """A gap as readings of the agent's own points, so the loss shows in InfluxDB next to
        the data: ``spool_gap`` (bad, with the reason) and the counts when they are known, at
        the append time of the *first* lost message (a ``host_restart`` gap: when it was
        noted). That time is stable: a gap reported again after its report was dropped has
        absorbed the later losses but kept its first message, so its new record overwrites
        the old one in InfluxDB (same series and time) instead of counting it twice."""
        records = []
        for gap in gaps:
            if gap.messages is None:
                reason = (
                    f"{gap.cause}: seq {gap.first_seq}..{gap.last_seq} may have been lost "
                    "(the host restarted before they were made durable)"
                )
            else:
                reason = (
                    f"{gap.cause}: {gap.messages} message(s), {gap.readings} reading(s), "
                    f"seq {gap.first_seq}..{gap.last_seq} dropped"
                )
            points: list[PointEntry] = [
                {"p": "spool_gap", "q": "bad", "r": reason[:256]},
            ]
            if gap.readings is not None:
                points.append({"p": "spool_dropped_readings", "v": gap.readings})
                points.append({"p": "spool_dropped_messages", "v": gap.messages})
            at = gap.from_ns if gap.from_ns is not None else gap.noted_ns
            records.append(Group(self._agent, self._agent, at or time.time_ns(), points))
        return records


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Confirmed ranges merged where they overlap or touch (one confirmation per message
    is one range per message: a round's deletions become one statement per run of seqs)."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


class BrokerUnreachable(Exception):
    """`--once` could not hand its readings to the broker in time; they stay spooled."""


async def publish_once(config: EdgeConfig, groups: list[Group], wait_s: float = 30.0) -> None:
    """Spool and publish readings, waiting for the broker's acknowledgements (`--once`)."""
    publisher = Publisher(config)
    publisher.submit(groups)
    problem: str | None = None
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(publisher.run())
        try:
            async with asyncio.timeout(wait_s):
                await publisher.wait_connected()
                await publisher.drain()
        except TimeoutError:
            problem = publisher.connection_problem() or "timed out"
        finally:
            runner.cancel()
    if problem is not None:
        raise BrokerUnreachable(problem)
