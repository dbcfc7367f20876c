"""A Hypothesis state machine of the spool (issue 4, test 7).

Rules: append, take (pending with in-flight exclusions), confirm (ranges around taken seqs or
anywhere), mark attempts, enforce the caps, advance the clock, report gaps, sync, close and
reopen, *crash* (the files as they are on disk mid-run, opened by a new instance while the
old one is abandoned) and *power loss* (the files rolled back to a state between the last
fsync and now, opened as after a reboot).

Invariants, after every step: the spool holds exactly the model's entries — every appended
and not confirmed (nor dropped) entry, with its payload, readings and attempts, and nothing
else, so no confirmed entry is ever returned; seqs strictly increase over the whole run and
are never handed out twice, power losses included; the unreported gaps match the drops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import edge.spool
from edge.spool import Dropped, Spool

#: A RAM disk when there is one: every step copies the files (a crash or power-loss
#: snapshot), and file creation dominates the run time on a real disk. The SIGKILL test in
#: test_spool.py covers the real file system.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
SECOND = 1_000_000_000
MAX_BYTES = 400
MAX_AGE_S = 100
SEQ_BLOCK = 3  # small: reservations (fsyncs) happen often and are exercised
#: Checkpoint every few pages: they happen within a run (crashes land between them), and
#: the WAL stays small, so the snapshot of every step is a cheap copy.
WAL_PAGES = 8


def payload_with(data: bytes) -> Callable[[int], bytes]:
    return lambda seq: b"%d|" % seq + data


def copy_spool_files(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


@dataclass(frozen=True)
class Row:
    payload: bytes
    readings: int
    created_ns: int
    attempts: int = 0


@dataclass
class Model:
    """What the spool must hold: entries by seq, and the unreported losses."""

    rows: dict[int, Row] = field(default_factory=dict)
    #: Unreported cap drops per cause: [messages, readings, first_seq, last_seq].
    drops: dict[str, list[int]] = field(default_factory=dict)
    #: Unreported host-restart gaps (first, last).
    skipped: list[tuple[int, int]] = field(default_factory=list)
    #: The spool's next seq as it is on disk (for the power-loss expectation).
    next_seq: int = 0
    #: Reports outstanding: seq of the reporting message → the counted gaps it carries
    #: (cause → [messages, readings, first_seq, last_seq]) and the host-restart gaps.
    reported: dict[int, tuple[dict[str, list[int]], list[tuple[int, int]]]] = field(
        default_factory=dict
    )

    def copy(self) -> Model:
        return Model(
            dict(self.rows),
            {k: list(v) for k, v in self.drops.items()},
            list(self.skipped),
            self.next_seq,
            {
                s: ({k: list(v) for k, v in counted.items()}, list(host))
                for s, (counted, host) in self.reported.items()
            },
        )

    def add_drop(self, cause: str, loss: list[int]) -> None:
        """Merge ``loss`` ([messages, readings, first, last]) into the unreported gap of
        ``cause``, as the spool does (one unreported gap per cause)."""
        d = self.drops.get(cause)
        if d is None:
            self.drops[cause] = list(loss)
        else:
            d[0] += loss[0]
            d[1] += loss[1]
            d[2] = min(d[2], loss[2])
            d[3] = max(d[3], loss[3])


@dataclass
class Snapshot:
    """The files as a power loss could leave them, and the model at that moment."""

    path: Path
    model: Model


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.saved_wal_pages = edge.spool.WAL_AUTOCHECKPOINT_PAGES
        edge.spool.WAL_AUTOCHECKPOINT_PAGES = WAL_PAGES
        self.root = Path(tempfile.mkdtemp(prefix="spool-state-", dir=SCRATCH))
        self.generation = 0
        self.now = 1_700_000_000 * SECOND
        self.host = "host-0"
        self.model = Model()
        self.handed_out: list[int] = []  # every seq append returned, in order, whole run
        self.taken: set[int] = set()
        self.abandoned: list[Spool] = []
        #: Possible states after a power loss: the last fsynced one, then each later one.
        self.snapshots: list[Snapshot] = []
        self.spool: Spool

    # ------------------------------------------------------------------------ helpers
    def clock(self) -> int:
        return self.now

    def fresh_path(self) -> Path:
        self.generation += 1
        return self.root / f"spool-{self.generation}.db"

    def open(self, path: Path) -> Spool:
        return Spool.open(
            path,
            max_bytes=MAX_BYTES,
            max_age_s=MAX_AGE_S,
            clock_ns=self.clock,
            seq_block=SEQ_BLOCK,
            lock_timeout_s=0,
            host_boot_id=self.host,
        )

    def copy_files(self, dst: Path) -> Path:
        """The spool's files as they are on disk now (a crash snapshot)."""
        return copy_spool_files(self.spool.path, dst)

    def after_step(self, syncs_before: int) -> None:
        """Record what a power loss could roll back to: if this step fsynced, nothing
        earlier than now; otherwise now is one more possible state."""
        if self.spool.stats.syncs != syncs_before:
            self.snapshots.clear()
        path = self.copy_files(self.fresh_path())
        self.snapshots.append(Snapshot(path, self.model.copy()))

    def opened(self, spool: Spool) -> None:
        self.spool = spool
        self.model.next_seq = spool.next_seq
        self.snapshots.clear()  # open fsyncs
        self.after_step(spool.stats.syncs)

    # -------------------------------------------------------------------------- rules
    @initialize()
    def start(self) -> None:
        self.opened(self.open(self.fresh_path()))

    @rule(
        messages=st.lists(
            st.tuples(
                # Some distinct bytes, padded to a size that reaches the byte cap quickly.
                st.builds(lambda b, n: b + b"." * n, st.binary(max_size=16), st.integers(0, 150)),
                st.integers(0, 50),
            ),
            max_size=4,
        ),
        caps=st.sampled_from(["none", "after", "within"]),
    )
    def append(self, messages: list[tuple[bytes, int]], caps: str) -> None:
        """Appends one after another (several per rule, so the caps and the seq
        reservations are reached in a few steps; a power loss may keep any prefix), each
        followed by ``enforce_caps`` (``after``) or with the caps in its own transaction
        (``within``: ``append_within_caps``, as the publisher does)."""
        for data, readings in messages:
            syncs = self.spool.stats.syncs
            expected = self.spool.next_seq
            if caps == "within":
                self.model.rows[expected] = Row(payload_with(data)(expected), readings, self.now)
                gone, old = self.expected_drop()
                entry, got = self.spool.append_within_caps(payload_with(data), readings)
            else:
                entry = self.spool.append(payload_with(data), readings)
            assert entry.seq == expected
            assert not self.handed_out or entry.seq > max(self.handed_out)
            assert entry.payload == b"%d|" % entry.seq + data
            self.handed_out.append(entry.seq)
            self.model.rows[entry.seq] = Row(entry.payload, readings, self.now)
            self.model.next_seq = entry.seq + 1
            if caps == "within":
                self.apply_drop(gone, old, got)
            self.after_step(syncs)
            if caps == "after":
                self.check_caps()

    @rule(limit=st.integers(0, 6), data=st.data())
    def take(self, limit: int, data: st.DataObject) -> None:
        present = sorted(self.model.rows)
        candidates = st.sampled_from(present) if present else st.nothing()
        exclude = data.draw(
            st.sets(candidates | st.integers(-2, (self.handed_out or [0])[-1] + 2), max_size=5)
        )
        got = self.spool.pending(limit, exclude=exclude)
        want = [s for s in present if s not in exclude][:limit]
        assert [e.seq for e in got] == want
        for e in got:
            row = self.model.rows[e.seq]
            assert (e.payload, e.readings, e.created_ns, e.attempts) == (
                row.payload,
                row.readings,
                row.created_ns,
                row.attempts,
            )
        self.taken.update(want)

    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        top = (self.handed_out or [0])[-1] + 2
        taken = sorted(self.taken)
        start = st.sampled_from(taken) if taken else st.nothing()
        ranges = data.draw(
            st.lists(
                st.tuples(start | st.integers(-2, top), st.integers(0, 3)).map(
                    lambda t: (t[0], t[0] + t[1])
                ),
                max_size=4,
            )
        )
        syncs = self.spool.stats.syncs
        deleted = self.spool.confirm(ranges)
        gone = {s for s in self.model.rows if any(a <= s <= b for a, b in ranges)}
        assert deleted == len(gone)
        for s in [s for s in self.model.reported if any(a <= s <= b for a, b in ranges)]:
            del self.model.reported[s]  # the report is stored: its gaps are done
        for s in gone:
            del self.model.rows[s]
        self.taken -= gone
        self.after_step(syncs)

    @rule(data=st.data())
    def mark_attempts(self, data: st.DataObject) -> None:
        present = sorted(self.model.rows)
        seqs = data.draw(
            st.lists(
                (st.sampled_from(present) if present else st.nothing()) | st.integers(-1, 5),
                max_size=5,
            )
        )
        syncs = self.spool.stats.syncs
        self.spool.mark_attempts(seqs)
        for s in seqs:
            if s in self.model.rows:
                row = self.model.rows[s]
                self.model.rows[s] = replace(row, attempts=row.attempts + 1)
        self.after_step(syncs)

    @rule(seconds=st.integers(0, 60))
    def advance_clock(self, seconds: int) -> None:
        self.now += seconds * SECOND

    @rule()
    def enforce_caps(self) -> None:
        self.check_caps()

    def check_caps(self) -> None:
        gone, old = self.expected_drop()
        syncs = self.spool.stats.syncs
        got = self.spool.enforce_caps()
        self.apply_drop(gone, old, got)
        if gone:
            self.after_step(syncs)

    def expected_drop(self) -> tuple[list[int], int]:
        """The prefix the caps must drop from the model's rows now, and how many of it for
        age."""
        present = sorted(self.model.rows)
        cutoff = self.now - MAX_AGE_S * SECOND
        old = 0  # the longest prefix older than the age cap...
        while old < len(present) and self.model.rows[present[old]].created_ns < cutoff:
            old += 1
        big = 0  # ...and the shortest prefix whose removal brings the bytes under the cap
        remaining = sum(len(r.payload) for r in self.model.rows.values())
        while remaining > MAX_BYTES:
            remaining -= len(self.model.rows[present[big]].payload)
            big += 1
        return present[: max(old, big)], old

    def apply_drop(self, gone: list[int], old: int, got: Dropped | None) -> None:
        """Check what the spool dropped against ``gone`` and update the model."""
        if not gone:
            assert got is None
            return
        n = len(gone)
        readings = sum(self.model.rows[s].readings for s in gone)
        assert got == Dropped(gone[0], gone[-1], n, readings)
        # Reports dropped before their confirmation: their gaps are unreported again.
        for s in [s for s in self.model.reported if s <= gone[-1]]:
            counted, host = self.model.reported.pop(s)
            for cause, loss in counted.items():
                self.model.add_drop(cause, loss)
            self.model.skipped = sorted([*self.model.skipped, *host])
        for cause, seqs in (("age_cap", gone[:old]), ("size_cap", gone[old:])):
            if not seqs:
                continue
            r = sum(self.model.rows[s].readings for s in seqs)
            self.model.add_drop(cause, [len(seqs), r, seqs[0], seqs[-1]])
        for s in gone:
            del self.model.rows[s]
        self.taken -= set(gone)

    @rule(readings=st.integers(0, 3), pad=st.integers(0, 500), within=st.booleans())
    def report_gaps(self, readings: int, pad: int, within: bool) -> None:
        """Append a message that reports every unreported gap (whether or not a report is
        due: the spool must keep any number of outstanding reports straight); ``within``:
        with the caps in the same transaction (a padded report may drop itself)."""
        ids = [g.id for g in self.spool.gaps()]
        syncs = self.spool.stats.syncs

        def build(seq: int) -> bytes:
            return b"gaps %d %r" % (seq, ids) + b"." * pad

        seq = self.spool.next_seq
        self.model.rows[seq] = Row(build(seq), readings, self.now)
        if self.model.drops or self.model.skipped:
            self.model.reported[seq] = (dict(self.model.drops), list(self.model.skipped))
        self.model.drops = {}
        self.model.skipped = []
        if within:
            gone, old = self.expected_drop()
            entry, got = self.spool.append_within_caps(build, readings, reported_gaps=ids)
        else:
            entry = self.spool.append(build, readings, reported_gaps=ids)
        assert entry.seq == seq
        self.handed_out.append(entry.seq)
        self.model.next_seq = entry.seq + 1
        if within:
            self.apply_drop(gone, old, got)
        else:
            assert self.spool.gaps() == []
        self.after_step(syncs)

    @rule()
    def sync(self) -> None:
        syncs = self.spool.stats.syncs
        self.spool.sync()
        assert self.spool.stats.syncs == syncs + 1
        self.after_step(syncs)

    @rule()
    def reopen(self) -> None:
        path = self.spool.path
        self.spool.close()
        spool = self.open(path)
        assert not spool.unclean_shutdown
        assert spool.next_seq == self.model.next_seq
        self.opened(spool)

    @rule()
    def crash(self) -> None:
        """The process dies: a new instance opens the files as they are on disk."""
        copy = self.copy_files(self.fresh_path())
        self.abandoned.append(self.spool)  # never closed cleanly, and never used again
        spool = self.open(copy)
        assert spool.unclean_shutdown
        # Same host boot: every committed transaction survived, the sequence goes on.
        assert spool.next_seq == self.model.next_seq
        self.opened(spool)

    @precondition(lambda self: bool(self.snapshots))
    @rule(data=st.data())
    def power_loss(self, data: st.DataObject) -> None:
        """The host loses power: the files roll back to any state between the last fsync
        and now, and the agent starts after a reboot."""
        snapshot = data.draw(st.sampled_from(self.snapshots))
        self.abandoned.append(self.spool)
        self.host = f"host-{len(self.abandoned)}"
        path = self.fresh_path()
        copy_spool_files(snapshot.path, path)
        lost_after = snapshot.model.next_seq
        self.model = snapshot.model.copy()
        spool = self.open(path)
        assert spool.unclean_shutdown
        # Never a seq that may have been handed out before the power failed...
        assert spool.next_seq > max(self.handed_out, default=0)
        # ...and every seq handed out since the restored state is inside the new gap.
        since = [s for s in self.handed_out if s >= lost_after]
        host_gaps = [(g.first_seq, g.last_seq) for g in spool.gaps() if g.cause == "host_restart"]
        new = [g for g in host_gaps if g not in self.model.skipped]
        assert len(new) <= 1
        if new:
            assert new[0][0] == lost_after
        if since:
            [(first, last)] = new
            assert first == lost_after and last >= since[-1]
        self.model.skipped.extend(new)
        self.taken.clear()
        self.opened(spool)

    # --------------------------------------------------------------------- invariants
    @invariant()
    def holds_exactly_the_model(self) -> None:
        entries = self.spool.pending(10**6)
        assert [e.seq for e in entries] == sorted(self.model.rows)
        for e in entries:
            row = self.model.rows[e.seq]
            assert (e.payload, e.readings, e.created_ns, e.attempts) == (
                row.payload,
                row.readings,
                row.created_ns,
                row.attempts,
            )
        stats = self.spool.stats
        assert stats.entries == len(entries)
        assert stats.readings == sum(e.readings for e in entries)
        assert stats.bytes == sum(len(e.payload) for e in entries)

    @invariant()
    def seqs_only_grow(self) -> None:
        assert self.handed_out == sorted(set(self.handed_out))
        assert self.spool.next_seq > max(self.handed_out, default=0)

    @invariant()
    def gaps_match_the_drops(self) -> None:
        gaps = self.spool.gaps()
        assert sorted((g.first_seq, g.last_seq) for g in gaps if g.cause == "host_restart") == (
            sorted(self.model.skipped)
        )
        unreported = bool(self.model.drops or self.model.skipped)
        assert self.spool.report_due == (unreported and not self.model.reported)
        for cause in ("age_cap", "size_cap"):
            mine = [g for g in gaps if g.cause == cause]
            d = self.model.drops.get(cause)
            if d is None:
                assert mine == []
            else:
                [g] = mine  # successive drops of one cause merge while unreported
                assert (g.messages, g.readings, g.first_seq, g.last_seq) == tuple(d)

    def teardown(self) -> None:
        for spool in [*self.abandoned, getattr(self, "spool", None)]:
            if spool is not None:
                spool.close()
        shutil.rmtree(self.root, ignore_errors=True)
        edge.spool.WAL_AUTOCHECKPOINT_PAGES = self.saved_wal_pages


SpoolMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSpoolStateMachine = SpoolMachine.TestCase
