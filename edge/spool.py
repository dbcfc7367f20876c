"""The agent's crash-safe spool: every message is committed to an SQLite file before it is
published, and leaves it only when the cloud confirmed it (or a cap dropped it, recorded as a
gap). See ``docs/delivery.md`` for what is and is not guaranteed.

One row per *message* (never per reading), keyed by a per-agent sequence number:

* ``entries(seq, created_ns, readings, size, payload)`` — the unconfirmed messages, and
  ``attempts(seq, n)`` beside them (so counting an attempt does not rewrite a payload);
* ``meta`` — one row: the spool's ``epoch`` (a random id born with the file: the sequence
  numbers are unique within it), ``next_seq`` (updated in the same transaction as every
  append, so a seq is never reused after a process crash, even once every entry was
  confirmed), ``seq_ceiling`` (a durable bound, see below), the clean-shutdown flag and the
  host boot id of the last open;
* ``gaps`` — losses not confirmed reported to the cloud: prefixes dropped by the caps, and
  seqs that may have been handed out before the host lost power. Written in the same
  transaction as the loss; marked with the seq of the message reporting them in the same
  transaction as its append (``report_seq``); deleted in the same transaction as that
  message's confirmation; unmarked again in the same transaction as a cap drop of that
  message before its confirmation (so it is reported again). A loss is never forgotten,
  whatever crashes in between, until the cloud confirmed storing its report.

Durability: WAL journal, ``synchronous=NORMAL``. Every committed transaction survives a
crash of the process (SIGKILL, OOM, segfault); a power loss or kernel crash may roll back
the most recent transactions (never corrupting the file). To keep sequence numbers unique
even then, seqs are handed out below ``seq_ceiling``, which is raised in blocks of
``seq_block`` by a transaction committed with ``synchronous=FULL`` (an fsync, also making
every earlier transaction durable). After an unclean shutdown in which the host rebooted,
the spool resumes at the ceiling and records the seqs in between as a ``host_restart`` gap.

The file is opened with ``locking_mode=EXCLUSIVE``: a second process (a second agent pointed
at the same path) cannot open it. The class is synchronous and takes a lock per call, so it
may be driven from a worker thread (``asyncio.to_thread``); calls are serialised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

log = logging.getLogger("fieldlink.edge.spool")

#: ``PRAGMA application_id`` of a spool file ("FLSP"): tells our files from other SQLite files.
APPLICATION_ID = 0x464C5350
#: ``PRAGMA user_version``: the layout of the tables below.
SCHEMA_VERSION = 2
#: Versions this code reads and upgrades in place at open (one transaction): 1 had no
#: ``gaps.report_seq``/``gaps.noted_ns`` (a gap was deleted when its report was appended).
_UPGRADES = {
    1: (
        "ALTER TABLE gaps ADD COLUMN report_seq INTEGER",
        "ALTER TABLE gaps ADD COLUMN noted_ns INTEGER",
    ),
}
#: The first sequence number of a new spool; 0 is never used, so a watermark of 0 means
#: "nothing confirmed yet".
FIRST_SEQ = 1
#: Seqs reserved per durable (fsynced) commit; see the module docstring.
DEFAULT_SEQ_BLOCK = 1024

#: WAL pages (4 KiB) between checkpoints. A checkpoint copies the WAL into the main file and
#: fsyncs both: the latency spike of an append every this many pages, and a bound on the WAL.
WAL_AUTOCHECKPOINT_PAGES = 1000

#: The warning logged when a file is moved aside (the tests pin its exact text).
CORRUPT_MESSAGE = (
    "spool %s is unusable (%s); moved it aside to %s (with its -wal/-shm files, if any) and "
    "started a new, empty spool: the unconfirmed messages it held (number unknown) are lost "
    "unless recovered from that file"
)

GapCause = Literal["size_cap", "age_cap", "host_restart"]

_HOST_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")

_SQLITE_BUSY = 5
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = (
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        epoch TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        seq_ceiling INTEGER NOT NULL,
        clean INTEGER NOT NULL,
        host_boot_id TEXT NOT NULL,
        created_ns INTEGER NOT NULL
    )""",
    """CREATE TABLE entries (
        seq INTEGER PRIMARY KEY,
        created_ns INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL
    )""",
    # Apart from the entries: updating a column of an entry would rewrite its whole payload.
    """CREATE TABLE attempts (
        seq INTEGER PRIMARY KEY,
        n INTEGER NOT NULL
    )""",
    """CREATE TABLE gaps (
        id INTEGER PRIMARY KEY,
        cause TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        messages INTEGER,
        readings INTEGER,
        from_ns INTEGER,
        to_ns INTEGER,
        report_seq INTEGER,
        noted_ns INTEGER
    )""",
)

# One constant text per operation: sqlite3's statement cache prepares each once.
_INSERT = "INSERT INTO entries (seq, created_ns, readings, size, payload) VALUES (?, ?, ?, ?, ?)"
_SET_NEXT = "UPDATE meta SET next_seq = ? WHERE id = 0"
_SET_NEXT_CEILING = "UPDATE meta SET next_seq = ?, seq_ceiling = ? WHERE id = 0"
_SET_CEILING = "UPDATE meta SET seq_ceiling = ? WHERE id = 0"
_ENTRY_SELECT = (
    "SELECT e.seq, e.created_ns, e.readings, coalesce(a.n, 0), e.payload "
    "FROM entries AS e LEFT JOIN attempts AS a ON a.seq = e.seq "
)
_PENDING = _ENTRY_SELECT + "ORDER BY e.seq LIMIT ?"
_PENDING_SEQS = "SELECT seq FROM entries ORDER BY seq LIMIT ?"
_ENTRY = _ENTRY_SELECT + "WHERE e.seq = ?"
_CONFIRM = "DELETE FROM entries WHERE seq BETWEEN ? AND ? RETURNING readings, size"
_CONFIRM_ATTEMPTS = "DELETE FROM attempts WHERE seq BETWEEN ? AND ?"
_ATTEMPT = (
    "INSERT INTO attempts (seq, n) SELECT seq, 1 FROM entries WHERE seq = ? "
    "ON CONFLICT (seq) DO UPDATE SET n = n + 1"
)
_HEAD = "SELECT created_ns FROM entries ORDER BY seq LIMIT 1"
_CAP_SCAN = "SELECT seq, created_ns, readings, size FROM entries ORDER BY seq"
_DROP = "DELETE FROM entries WHERE seq <= ?"
_DROP_ATTEMPTS = "DELETE FROM attempts WHERE seq <= ?"
# Unreported gaps of one cause, oldest first: merged into the first (see enforce_caps).
_UNREPORTED_OF = (
    "SELECT id, first_seq, last_seq, messages, readings, from_ns, to_ns FROM gaps "
    "WHERE cause = ? AND report_seq IS NULL ORDER BY id"
)
_SET_GAP = (
    "UPDATE gaps SET first_seq = ?, last_seq = ?, messages = ?, readings = ?, from_ns = ?, "
    "to_ns = ? WHERE id = ?"
)
_ADD_GAP = (
    "INSERT INTO gaps (cause, first_seq, last_seq, messages, readings, from_ns, to_ns, "
    "noted_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE_GAP = "DELETE FROM gaps WHERE id = ?"
_MARK_REPORTED = "UPDATE gaps SET report_seq = ? WHERE id = ? AND report_seq IS NULL"
_UNMARK_DROPPED = "UPDATE gaps SET report_seq = NULL WHERE report_seq <= ?"
_CONFIRM_GAPS = "DELETE FROM gaps WHERE report_seq BETWEEN ? AND ?"
_GAP_COUNTS = (
    "SELECT coalesce(sum(report_seq IS NULL), 0), coalesce(sum(report_seq IS NOT NULL), 0) "
    "FROM gaps"
)
_GAPS = (
    "SELECT id, cause, first_seq, last_seq, messages, readings, from_ns, to_ns, noted_ns "
    "FROM gaps WHERE report_seq IS NULL ORDER BY id"
)


class SpoolError(Exception):
    """The spool could not do what was asked (disk full, I/O error, closed, foreign file).
    A failed call changed nothing: its transaction was rolled back."""


class SpoolLocked(SpoolError):
    """Another process has the spool open (two agents configured with one spool path?)."""


class SpoolCorrupt(SpoolError):
    """SQLite found the file damaged while in use. Close the spool, call
    :func:`move_aside` on its path and open it again to continue with an empty one."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled message."""

    seq: int
    #: The encoded message, exactly as built by ``payload_for(seq)`` at append time.
    payload: bytes
    readings: int
    #: Wall-clock time of the append (the age cap's reference), nanoseconds since the epoch.
    created_ns: int
    #: How many times :meth:`Spool.mark_attempts` counted it (persisted).
    attempts: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one cap enforcement removed: a prefix of the spool, oldest first.
    Seqs in ``first_seq..last_seq`` that were not in the spool any more (confirmed earlier)
    are not counted."""

    first_seq: int
    last_seq: int
    messages: int
    readings: int


@dataclass(frozen=True, slots=True)
class Gap:
    """A loss not yet reported to the cloud (persisted until a message reports it).

    Meaning for the receiver: *no seq in ``first_seq..last_seq`` of this epoch will be sent
    again*; those it did not receive are lost. ``messages``/``readings`` count the loss and
    ``from_ns``/``to_ns`` bound the append times of the lost messages; all four are ``None``
    for a ``host_restart`` gap, where it is unknown whether anything was lost at all.
    Successive drops of one cause are merged into one gap while it is unreported.
    """

    id: int
    cause: GapCause
    first_seq: int
    last_seq: int
    messages: int | None
    readings: int | None
    from_ns: int | None
    to_ns: int | None
    #: When the loss was recorded (wall clock, ns): a stable time for a report of a
    #: ``host_restart`` gap, which has no ``from_ns``. Not compared.
    noted_ns: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """Counters kept in memory (reading them costs nothing)."""

    #: Unconfirmed messages in the spool, the readings they hold, and their payload bytes
    #: (what ``max_bytes`` bounds; the file is larger by SQLite's page overhead).
    entries: int
    readings: int
    bytes: int
    #: Commits made durable with an fsync since open (open, seq reservations, sync, close).
    syncs: int


def read_host_boot_id() -> str:
    """The kernel's id of the current boot (Linux), or ``""`` when unknown."""
    try:
        return _HOST_BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


def move_aside(path: Path, *, now: datetime | None = None) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<UTC timestamp>`` (plus ``-2``, ``-3``... if taken),
    with its ``-wal`` and ``-shm`` files renamed alongside (so SQLite still pairs them when
    the file is examined later). Returns the new path of the main file. The WAL is moved
    first: a stale WAL left next to a new, empty database would be replayed into it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{base}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        base = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm", ""):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{base}{suffix}")
    _fsync_dir(path.parent)
    return base


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class _DropPlan:
    """What a cap drop removes: per cause [first, last, messages, readings, from_ns,
    to_ns], and the payload bytes that remain."""

    drops: dict[GapCause, list[int]]
    remaining: int

    @property
    def last_seq(self) -> int:
        return max(d[1] for d in self.drops.values())

    def dropped(self) -> Dropped:
        parts = self.drops.values()
        return Dropped(
            min(d[0] for d in parts),
            self.last_seq,
            sum(d[2] for d in parts),
            sum(d[3] for d in parts),
        )


class _Unusable(Exception):
    """Internal: the file is not a usable spool and may be moved aside (reason in args)."""


@dataclass
class _Meta:
    epoch: str
    next_seq: int
    seq_ceiling: int
    clean: bool
    host_boot_id: str


class Spool:
    """A bounded, crash-safe, on-disk FIFO of encoded messages keyed by sequence number.

    Open with :meth:`open`; close with :meth:`close` (or use it as a context manager).

    Attributes set at open:

    * ``path``: the spool file.
    * ``epoch``: random id of this spool file's sequence space (uuid4 hex), persisted. Seqs
      are unique and increasing *within an epoch*; a new epoch starts only with a new file
      (first run, or after a corrupt file was moved aside). Publish it with every message
      and key the cloud's watermark by (agent, epoch).
    * ``boot_id``: random id of this open (uuid4 hex), not persisted: tells restarts apart.
    * ``opened_fresh_after_corruption``: where the unusable file was moved, or ``None``.
    * ``unclean_shutdown``: the previous run did not :meth:`close` (process or host crash).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        epoch: str,
        *,
        max_bytes: int,
        max_age_s: float | None,
        clock_ns: Callable[[], int],
        seq_block: int,
    ) -> None:
        """Internal: use :meth:`open`."""
        self.path = path
        self.epoch = epoch
        self.boot_id = uuid.uuid4().hex
        self.opened_fresh_after_corruption: Path | None = None
        self.unclean_shutdown = False
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        self._clock_ns = clock_ns
        self._max_bytes = max_bytes
        self._max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self._seq_block = seq_block
        self._syncs = 0
        self._next = FIRST_SEQ
        self._ceiling = FIRST_SEQ
        self._entries = self._readings = self._bytes = 0
        #: Gaps not in any message yet, and gaps in a message not yet confirmed (their
        #: report is outstanding); kept in step with the table so reads cost nothing.
        self._gaps_unreported = self._gaps_outstanding = 0
        #: Append time of the oldest entry, when known (the age cap's cheap check).
        self._head_ns: int | None = None
        self._head_known = False

    # ----------------------------------------------------------------------------- open
    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float | None,
        clock_ns: Callable[[], int] = time.time_ns,
        seq_block: int = DEFAULT_SEQ_BLOCK,
        lock_timeout_s: float = 2.0,
        host_boot_id: str | None = None,
    ) -> Spool:
        """Open the spool at ``path``, creating it (and its directory) if absent.

        ``max_bytes`` bounds the payload bytes held and ``max_age_s`` (``None``: no bound)
        the age of the oldest entry; both are enforced by :meth:`enforce_caps` and
        :meth:`append_within_caps`. ``clock_ns`` is the wall clock stamped on entries.
        ``seq_block`` seqs are reserved per fsync.
        ``lock_timeout_s``: how long to wait for another process holding the file.
        ``host_boot_id`` overrides :func:`read_host_boot_id` (tests simulate reboots).

        A file that is not a usable spool — not SQLite, damaged pages (``PRAGMA
        quick_check``), a schema version this code does not read — is moved aside with
        :func:`move_aside`, one warning (:data:`CORRUPT_MESSAGE`) is logged, and a new spool
        is created in its place (``opened_fresh_after_corruption`` names the moved file).

        Raises :class:`SpoolLocked` if another process has it open, and :class:`SpoolError`
        if it cannot be opened or created at all, or if the file is a valid SQLite database
        of another application (it is left untouched: most likely a wrong path).
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive or None, got {max_age_s}")
        if seq_block < 1:
            raise ValueError(f"seq_block must be at least 1, got {seq_block}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        host = read_host_boot_id() if host_boot_id is None else host_boot_id
        aside: Path | None = None
        try:
            conn, meta = _connect(path, lock_timeout_s, clock_ns)
        except _Unusable as exc:
            aside = move_aside(path)
            log.warning(CORRUPT_MESSAGE, path, exc.args[0], aside)
            try:
                conn, meta = _connect(path, lock_timeout_s, clock_ns)
            except _Unusable as again:  # pragma: no cover - a fresh file is always usable
                raise SpoolError(f"cannot create a new spool at {path}: {again}") from again

        self = cls(
            conn,
            path,
            meta.epoch,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            clock_ns=clock_ns,
            seq_block=seq_block,
        )
        self.opened_fresh_after_corruption = aside
        self.unclean_shutdown = not meta.clean

        # Where to resume. After a clean close or a crash of the process alone (same host
        # boot: the page cache, hence every committed transaction, survived) next_seq is
        # exact. Otherwise the last transactions may be gone: resume at the durable ceiling
        # and record the seqs in between as possibly lost.
        next_seq = meta.next_seq
        host_gap: tuple[int, int] | None = None
        if not meta.clean and not (host and host == meta.host_boot_id):
            if meta.seq_ceiling > meta.next_seq:
                host_gap = (meta.next_seq, meta.seq_ceiling - 1)
            next_seq = max(meta.next_seq, meta.seq_ceiling)
        self._next = next_seq
        self._ceiling = next_seq + seq_block
        try:
            with self._transaction(durable=True):
                conn.execute(
                    "UPDATE meta SET next_seq = ?, seq_ceiling = ?, clean = 0, host_boot_id = ? "
                    "WHERE id = 0",
                    (next_seq, self._ceiling, host),
                )
                if host_gap is not None:
                    conn.execute(
                        _ADD_GAP, ("host_restart", *host_gap, None, None, None, None, clock_ns())
                    )
            count, readings, size = conn.execute(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(size), 0) FROM entries"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        self._entries = int(count)
        self._readings = int(readings)
        self._bytes = int(size)
        self._count_gaps()
        if host_gap is not None:
            log.warning(
                "spool %s: the host restarted while the agent was running (power loss?); the "
                "last messages before it may be lost: seqs %d..%d are skipped and reported "
                "as a gap",
                path,
                *host_gap,
            )
        return self

    # ------------------------------------------------------------------------ properties
    @property
    def next_seq(self) -> int:
        """The seq the next :meth:`append` will get. Increases across restarts and is never
        reused, even after every entry was confirmed and deleted."""
        return self._next

    @property
    def stats(self) -> SpoolStats:
        return SpoolStats(self._entries, self._readings, self._bytes, self._syncs)

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def report_due(self) -> bool:
        """Whether there are unreported gaps (:meth:`gaps`) to report now: some exist and no
        earlier report is outstanding (appended, neither confirmed nor dropped). One report
        at a time keeps successive losses merged into one gap while a report travels (a
        long outage yields one record, not one per message). In memory: no I/O."""
        return self._gaps_unreported > 0 and self._gaps_outstanding == 0

    # ------------------------------------------------------------------------ operations
    def append(
        self,
        payload_for: Callable[[int], bytes],
        readings: int,
        *,
        reported_gaps: Collection[int] = (),
    ) -> Entry:
        """Add one message, committed before this returns; publish it only afterwards.

        ``payload_for(seq)`` builds the message with the seq it was given (called once,
        before the transaction; if it raises, nothing changes and the seq stays unused).
        ``readings`` is how many readings it carries (for stats and drop accounting).
        ``reported_gaps``: ids of :meth:`gaps` this message reports; in the same transaction
        they are marked as reported by this seq (no longer listed by :meth:`gaps`). They are
        deleted when this seq is confirmed, and listed again if a cap drops it first, so a
        gap is always either listed, or in a spooled message, or confirmed stored.

        One transaction: insert the row and advance ``next_seq`` (plus, once per
        ``seq_block`` appends, a durable reservation: that commit waits for an fsync).
        Raises :class:`SpoolError` (e.g. disk full) with nothing written and the seq unused.
        The caps are not applied: see :meth:`append_within_caps`.
        """
        return self._append(payload_for, readings, reported_gaps, within_caps=False)[0]

    def append_within_caps(
        self,
        payload_for: Callable[[int], bytes],
        readings: int,
        *,
        reported_gaps: Collection[int] = (),
    ) -> tuple[Entry, Dropped | None]:
        """:meth:`append`, and :meth:`enforce_caps` in the *same* transaction: no commit
        ever leaves the file holding more than ``max_bytes`` of payload or an entry older
        than ``max_age_s``. Returns the entry (which the caps may have dropped at once, if
        it alone is larger than ``max_bytes``: see ``Dropped.last_seq``) and the drop. While
        under the caps (the usual case) it costs what :meth:`append` costs: the check is in
        memory."""
        return self._append(payload_for, readings, reported_gaps, within_caps=True)

    def _append(
        self,
        payload_for: Callable[[int], bytes],
        readings: int,
        reported_gaps: Collection[int],
        *,
        within_caps: bool,
    ) -> tuple[Entry, Dropped | None]:
        with self._lock:
            conn = self._live()
            seq = self._next
            created = self._clock_ns()
            payload = payload_for(seq)
            size = len(payload)
            reserve = seq >= self._ceiling
            plan: _DropPlan | None = None
            try:
                if reserve:
                    conn.execute("PRAGMA synchronous=FULL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(_INSERT, (seq, created, readings, size, payload))
                    if reserve:
                        conn.execute(_SET_NEXT_CEILING, (seq + 1, seq + self._seq_block))
                    else:
                        conn.execute(_SET_NEXT, (seq + 1,))
                    if reported_gaps:
                        conn.executemany(_MARK_REPORTED, [(seq, g) for g in reported_gaps])
                    if within_caps:
                        # The new row is visible to this transaction's reads.
                        plan = self._plan_drop(self._bytes + size, created)
                        if plan is not None:
                            # Gaps marked just now count as outstanding for the drop.
                            self._write_drop(plan, reports=bool(reported_gaps))
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                finally:
                    if reserve:
                        conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise self._error("append", exc) from exc
            self._next = seq + 1
            if reserve:
                self._ceiling = seq + self._seq_block
                self._syncs += 1
            if self._entries == 0:
                self._head_ns, self._head_known = created, True
            self._entries += 1
            self._readings += readings
            self._bytes += size
            dropped = None if plan is None else self._account_drop(plan)
            if reported_gaps and plan is None:
                self._count_gaps()
            return Entry(seq, payload, readings, created, 0), dropped

    def pending(self, limit: int, *, exclude: Collection[int] = ()) -> list[Entry]:
        """Up to ``limit`` unconfirmed entries, oldest (lowest seq) first, skipping the seqs
        in ``exclude`` (those in flight). Read-only. Cost: one index walk over at most
        ``limit + len(exclude)`` rows; payloads are read only for the entries returned."""
        if limit <= 0:
            return []
        with self._lock:
            conn = self._live()
            try:
                if not exclude:
                    rows = conn.execute(_PENDING, (limit,)).fetchall()
                else:
                    cur = conn.execute(_PENDING_SEQS, (limit + len(exclude),))
                    wanted = [s for (s,) in cur if s not in exclude][:limit]
                    rows = [conn.execute(_ENTRY, (s,)).fetchone() for s in wanted]
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
            return [Entry(s, p, r, c, a) for (s, c, r, a, p) in rows]

    def mark_attempts(self, seqs: Iterable[int]) -> None:
        """Count one more publish attempt for each seq (seqs not in the spool are ignored);
        one transaction, a few microseconds per seq (the counts live in a small table of
        their own, so the payloads are not rewritten)."""
        params = [(s,) for s in seqs]
        if not params:
            return
        with self._lock, self._transaction():
            self._live().executemany(_ATTEMPT, params)

    def confirm(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Delete the entries whose seq lies in any of the inclusive ``(first, last)``
        ranges, and the gaps those entries reported; return how many entries were deleted.
        Seqs not in the spool (never appended, already confirmed, dropped) are ignored, so
        confirming twice is harmless. One transaction.
        Raises ``ValueError`` for a range with ``first > last`` (before changing anything)."""
        spans = [(int(a), int(b)) for a, b in ranges]
        for a, b in spans:
            if a > b:
                raise ValueError(f"confirm range ({a}, {b}): first is after last")
        if not spans:
            return 0
        with self._lock:
            conn = self._live()
            deleted = readings = size = 0
            reports = self._gaps_outstanding > 0
            with self._transaction():
                for span in spans:
                    for r, s in conn.execute(_CONFIRM, span):
                        deleted += 1
                        readings += r
                        size += s
                    conn.execute(_CONFIRM_ATTEMPTS, span)
                    if reports:
                        conn.execute(_CONFIRM_GAPS, span)
            if reports:
                self._count_gaps()
            if deleted:
                self._entries -= deleted
                self._readings -= readings
                self._bytes -= size
                self._head_known = False
            return deleted

    def enforce_caps(self) -> Dropped | None:
        """Drop the oldest entries while the oldest is older than ``max_age_s`` or the
        payload bytes exceed ``max_bytes``; return what was dropped, or ``None`` (the usual
        case: an in-memory check, no I/O).

        The drop and its :class:`Gap` (cause ``age_cap`` or ``size_cap``, merged into the
        unreported gap of the same cause if any) are one transaction. Gaps reported by a
        dropped message become unreported again in it, merged with the unreported gap of
        their cause (the merged gap keeps the oldest one's id and ``from_ns``, so a report
        of it supersedes the lost one). Call it periodically, for the age cap while nothing
        is appended (appends made with :meth:`append_within_caps` apply the caps
        themselves; after a plain :meth:`append`, call it). A single message larger than
        ``max_bytes`` is dropped too. Age is measured on the wall clock against the append
        time, oldest *by seq*: after the clock stepped back, younger-looking entries behind
        an old head wait until they are old or the head is gone."""
        with self._lock:
            self._live()
            try:
                plan = self._plan_drop(self._bytes, None)
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
            if plan is None:
                return None
            with self._transaction():
                self._write_drop(plan, reports=False)
            return self._account_drop(plan)

    def _plan_drop(self, total_bytes: int, newest_ns: int | None) -> _DropPlan | None:
        """What the caps drop from a spool of ``total_bytes`` payload (``newest_ns``: the
        append time of a row just inserted in the open transaction, when the in-memory head
        does not know it yet). ``None`` (no I/O) when nothing is over a cap."""
        entries = self._entries + (newest_ns is not None)
        if entries == 0:
            return None
        cutoff = None if self._max_age_ns is None else self._clock_ns() - self._max_age_ns
        if self._entries == 0:
            old_head = cutoff is not None and newest_ns is not None and newest_ns < cutoff
        else:
            old_head = cutoff is not None and self._head_older(cutoff)
        if total_bytes <= self._max_bytes and not old_head:
            return None
        # causes: [first, last, messages, readings, from_ns, to_ns]
        drops: dict[GapCause, list[int]] = {}
        remaining = total_bytes
        by_age = cutoff is not None
        cur = self._live().execute(_CAP_SCAN)
        for seq, created, readings, size in cur:
            if by_age and cutoff is not None and created < cutoff:
                cause: GapCause = "age_cap"
            elif remaining > self._max_bytes:
                by_age = False
                cause = "size_cap"
            else:
                break
            d = drops.get(cause)
            if d is None:
                drops[cause] = [seq, seq, 1, readings, created, created]
            else:
                d[1] = seq
                d[2] += 1
                d[3] += readings
                d[4] = min(d[4], created)
                d[5] = max(d[5], created)
            remaining -= size
        cur.close()
        if not drops:  # pragma: no cover - the in-memory check said something is over
            return None
        return _DropPlan(drops, remaining)

    def _write_drop(self, plan: _DropPlan, *, reports: bool) -> None:
        """Inside a transaction: delete the planned prefix, list again the gaps its
        messages reported, and record the loss (merged per cause). ``reports``: gaps were
        marked as reported in this transaction (the counters do not know it yet)."""
        conn = self._live()
        last = plan.last_seq
        conn.execute(_DROP, (last,))
        conn.execute(_DROP_ATTEMPTS, (last,))
        if self._gaps_outstanding or reports:
            conn.execute(_UNMARK_DROPPED, (last,))
        now = self._clock_ns()
        for cause in ("age_cap", "size_cap"):
            _merge_unreported(conn, cause, plan.drops.get(cause), now)

    def _account_drop(self, plan: _DropPlan) -> Dropped:
        """After the drop's commit: the in-memory counters."""
        self._count_gaps()
        dropped = plan.dropped()
        self._entries -= dropped.messages
        self._readings -= dropped.readings
        self._bytes = plan.remaining
        self._head_known = False
        return dropped

    def gaps(self) -> list[Gap]:
        """Losses not yet reported, oldest first. Report them in a message appended with
        ``append(..., reported_gaps=[g.id ...])`` (when :attr:`report_due`); until then, and
        again if a cap drops that message before its confirmation, they stay listed, across
        restarts."""
        with self._lock:
            try:
                rows = self._live().execute(_GAPS).fetchall()
            except sqlite3.Error as exc:
                raise self._error("read", exc) from exc
            return [Gap(i, cast(GapCause, c), *rest) for (i, c, *rest) in rows]

    def _count_gaps(self) -> None:
        """Re-read the two gap counters (a tiny table; only after gaps changed)."""
        unreported, outstanding = self._live().execute(_GAP_COUNTS).fetchone()
        self._gaps_unreported, self._gaps_outstanding = int(unreported), int(outstanding)

    def sync(self) -> None:
        """Make everything committed so far durable against a power loss (one fsync), and
        reserve the next block of seqs. Call it periodically to bound what a power loss can
        take (by default only every ``seq_block`` appends are fsynced)."""
        with self._lock:
            ceiling = self._next + self._seq_block
            with self._transaction(durable=True):
                self._live().execute(_SET_CEILING, (ceiling,))
            self._ceiling = ceiling

    def close(self) -> None:
        """Record a clean shutdown (durably) and close the file. Idempotent. Entries stay for
        the next open; nothing is lost by not calling it except the cleanliness record."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                with self._transaction(durable=True):
                    conn.execute("UPDATE meta SET clean = 1 WHERE id = 0")
            except SpoolError as exc:
                log.warning("spool %s: could not record the clean shutdown: %s", self.path, exc)
            finally:
                self._conn = None
                conn.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{self._entries} entries"
        return f"<Spool {self.path} epoch={self.epoch} next_seq={self._next} {state}>"

    # ------------------------------------------------------------------------ internals
    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(f"spool {self.path} is closed")
        return self._conn

    def _head_older(self, cutoff: int) -> bool:
        if not self._head_known:
            row = self._live().execute(_HEAD).fetchone()
            self._head_ns, self._head_known = (None if row is None else row[0]), True
        return self._head_ns is not None and self._head_ns < cutoff

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any error. ``durable``: this commit is
        fsynced (``synchronous=FULL``), and so is everything committed before it."""
        conn = self._live()
        try:
            if durable:
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise self._error("write", exc) from exc
        if durable:
            self._syncs += 1

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _error(self, what: str, exc: sqlite3.Error) -> SpoolError:
        if _code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return SpoolCorrupt(
                f"spool {self.path} is damaged ({what}: {exc}); close it, move it aside "
                "(edge.spool.move_aside) and open a new one"
            )
        return SpoolError(f"spool {self.path}: {what} failed: {exc}")


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", -1)) & 0xFF


def _connect(
    path: Path, lock_timeout_s: float, clock_ns: Callable[[], int]
) -> tuple[sqlite3.Connection, _Meta]:
    """Open, lock, check and (if new) initialise the file. Raises :class:`_Unusable` if it
    should be moved aside, :class:`SpoolError`/:class:`SpoolLocked` otherwise."""
    try:
        conn = sqlite3.connect(
            path, timeout=lock_timeout_s, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open spool {path}: {exc}") from exc
    try:
        # EXCLUSIVE before WAL: the lock is held until close (one agent per file) and the
        # WAL index lives in process memory (no -shm file).
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        # Whose file is it? Asked before anything is written (WAL mode is written to the
        # header): another application's database must be left exactly as it was.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        fresh = app_id == 0 and version == 0 and tables == 0
        if not fresh and app_id != APPLICATION_ID:
            raise SpoolError(
                f"{path} is an SQLite database of another application (application_id "
                f"{app_id:#x}, not a fieldlink spool); left untouched: check the spool path"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"spool {path}: cannot use WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Deleted payloads need not be zeroed (Debian builds SQLite with secure_delete on):
        # it would double the writes of every confirm.
        conn.execute("PRAGMA secure_delete=OFF")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={4096 * WAL_AUTOCHECKPOINT_PAGES * 2}")
        problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            found = "; ".join(" ".join(p.split()) for p in problems)
            raise _Unusable(f"integrity check failed: {found}")
        if fresh:
            _initialise(conn, clock_ns)
        elif version in _UPGRADES:
            _upgrade(conn, version)
        elif version != SCHEMA_VERSION:
            raise _Unusable(f"schema version {version}; this agent reads {SCHEMA_VERSION}")
        row = conn.execute(
            "SELECT epoch, next_seq, seq_ceiling, clean, host_boot_id FROM meta WHERE id = 0"
        ).fetchone()
        if row is None:
            raise _Unusable("its meta row is missing")
        return conn, _Meta(str(row[0]), int(row[1]), int(row[2]), bool(row[3]), str(row[4]))
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            code = _code(exc)
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise _Unusable(str(exc)) from exc
            if code == _SQLITE_BUSY:
                raise SpoolLocked(
                    f"spool {path} is in use by another process (is a second agent configured "
                    "with the same spool path?)"
                ) from exc
            if isinstance(exc, sqlite3.OperationalError) and "no such" in str(exc):
                raise _Unusable(f"not the expected tables: {exc}") from exc
            raise SpoolError(f"cannot open spool {path}: {exc}") from exc
        raise


def _initialise(conn: sqlite3.Connection, clock_ns: Callable[[], int]) -> None:
    """Create the tables of a new spool, tagged with our application id and schema version,
    in one transaction (so a crash leaves either an empty file or a complete spool)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for ddl in _SCHEMA:
            conn.execute(ddl)
        conn.execute(
            "INSERT INTO meta (id, epoch, next_seq, seq_ceiling, clean, host_boot_id, created_ns)"
            " VALUES (0, ?, ?, ?, 1, '', ?)",
            (uuid.uuid4().hex, FIRST_SEQ, FIRST_SEQ, clock_ns()),
        )
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Bring a spool of an older schema version to :data:`SCHEMA_VERSION` in place, in one
    transaction (a crash leaves it either as it was or upgraded)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        while version != SCHEMA_VERSION:
            for ddl in _UPGRADES[version]:
                conn.execute(ddl)
            version += 1
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    log.info("spool upgraded to schema version %d", SCHEMA_VERSION)


def _merge_unreported(
    conn: sqlite3.Connection, cause: GapCause, drop: list[int] | None, now_ns: int
) -> None:
    """Inside a drop's transaction: make the unreported gaps of ``cause`` one (the
    oldest row absorbs the others: gaps unmarked because their report was dropped, and this
    ``drop`` = [first, last, messages, readings, from_ns, to_ns], if any)."""
    rows = conn.execute(_UNREPORTED_OF, (cause,)).fetchall()
    if not rows:
        if drop is not None:
            conn.execute(_ADD_GAP, (cause, *drop, now_ns))
        return
    if len(rows) == 1 and drop is None:
        return
    parts = [tuple(r[1:]) for r in rows] + ([tuple(drop)] if drop is not None else [])
    merged = (
        min(p[0] for p in parts),
        max(p[1] for p in parts),
        sum(p[2] or 0 for p in parts),
        sum(p[3] or 0 for p in parts),
        min(p[4] for p in parts if p[4] is not None),
        max(p[5] for p in parts if p[5] is not None),
    )
    conn.execute(_SET_GAP, (*merged, rows[0][0]))
    conn.executemany(_DELETE_GAP, [(r[0],) for r in rows[1:]])
