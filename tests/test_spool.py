"""The on-disk spool (edge/spool.py): sequence numbers, order, confirmation, caps, gaps,
corrupt files, and a writer killed with SIGKILL. The state-machine test is test_spool_state.py."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.spool import (
    APPLICATION_ID,
    CORRUPT_MESSAGE,
    FIRST_SEQ,
    SCHEMA_VERSION,
    Dropped,
    Gap,
    Spool,
    SpoolError,
    SpoolLocked,
    move_aside,
)

REPO = Path(__file__).resolve().parent.parent
HOST = "host-boot-1"
SECOND = 1_000_000_000


def payload(seq: int, size: int = 40) -> bytes:
    """A deterministic payload that embeds its seq (as the real messages do)."""
    head = b"%d|" % seq
    return head + (b"%08d" % seq) * ((size - len(head)) // 8 + 1)


def builder(size: int = 40) -> Callable[[int], bytes]:
    return lambda seq: payload(seq, size)


class Clock:
    def __init__(self, start_ns: int = 1_700_000_000 * SECOND) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now


def open_spool(path: Path, **kw: object) -> Spool:
    args: dict[str, object] = {"max_bytes": 10**9, "max_age_s": None, "host_boot_id": HOST}
    args.update(kw)
    return Spool.open(path, **args)  # type: ignore[arg-type]


def crash_copy(src: Path, dst: Path) -> Path:
    """What a crash of the process leaves: the files as they are on disk *now*, taken while
    the spool is open (the database and its unrecovered WAL). The copy is opened instead."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "agent.db"


@pytest.fixture
def spool(spool_path: Path) -> Iterator[Spool]:
    sp = open_spool(spool_path)
    yield sp
    sp.close()


# ----------------------------------------------------------------------------- sequence


def test_new_spool_starts_at_first_seq_and_creates_its_directory(spool_path: Path) -> None:
    with open_spool(spool_path) as sp:
        assert spool_path.exists()
        assert sp.next_seq == FIRST_SEQ
        assert sp.opened_fresh_after_corruption is None
        assert not sp.unclean_shutdown
        assert len(sp.epoch) == 32
        assert len(sp.boot_id) == 32
        assert sp.gaps() == []
        entry = sp.append(builder(), 3)
    assert entry.seq == FIRST_SEQ
    assert entry.payload == payload(FIRST_SEQ)
    assert entry.readings == 3
    assert entry.attempts == 0


def test_seq_survives_reopen_and_is_never_reused_after_everything_was_confirmed(
    spool_path: Path,
) -> None:
    with open_spool(spool_path) as sp:
        seqs = [sp.append(builder(), 1).seq for _ in range(5)]
        epoch, boot = sp.epoch, sp.boot_id
        assert seqs == list(range(FIRST_SEQ, FIRST_SEQ + 5))
        assert sp.confirm([(seqs[0], seqs[-1])]) == 5
        assert sp.stats.entries == 0
    with open_spool(spool_path) as sp:
        assert sp.epoch == epoch
        assert sp.boot_id != boot
        assert not sp.unclean_shutdown
        assert sp.stats.entries == 0
        assert sp.next_seq == seqs[-1] + 1
        assert sp.append(builder(), 1).seq == seqs[-1] + 1
        assert sp.gaps() == []


def test_seq_after_a_process_crash_continues_exactly(spool_path: Path, tmp_path: Path) -> None:
    sp = open_spool(spool_path, seq_block=4)
    for _ in range(6):
        sp.append(builder(), 1)
    sp.confirm([(1, 6)])
    copy = crash_copy(spool_path, tmp_path / "crashed" / "agent.db")
    sp.close()
    # Same host boot: the page cache survived, so did every committed transaction.
    with open_spool(copy, seq_block=4) as again:
        assert again.unclean_shutdown
        assert again.next_seq == 7
        assert again.gaps() == []


def test_after_a_host_restart_the_spool_skips_to_its_durable_ceiling_and_records_a_gap(
    spool_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sp = open_spool(spool_path, seq_block=10)  # open reserves seqs 1..10 durably
    for _ in range(3):
        sp.append(builder(), 1)
    copy = crash_copy(spool_path, tmp_path / "crashed" / "agent.db")
    sp.close()
    with caplog.at_level(logging.WARNING, "fieldlink.edge.spool"):
        again = open_spool(copy, seq_block=10, host_boot_id="host-boot-2")
    try:
        assert again.unclean_shutdown
        # Seqs 4..10 may have been handed out just before the power failed: never reuse them.
        assert again.next_seq == 11
        [gap] = again.gaps()
        assert gap == Gap(gap.id, "host_restart", 4, 10, None, None, None, None)
        assert [e.seq for e in again.pending(10)] == [1, 2, 3]
        assert "seqs 4..10 are skipped" in caplog.text
    finally:
        again.close()
    # The gap stays until a message reports it, across restarts...
    with open_spool(copy, seq_block=10, host_boot_id="host-boot-2") as sp3:
        assert [g.id for g in sp3.gaps()] == [gap.id]
        entry = sp3.append(builder(), 0, reported_gaps=[gap.id])
        assert entry.seq == 11
        assert sp3.gaps() == []


def test_a_simulated_power_loss_never_reuses_a_handed_out_seq(
    spool_path: Path, tmp_path: Path
) -> None:
    """Power loss = the files roll back to (at worst) their last fsynced state. The spool
    resumes above every seq that may have been handed out since, and records them."""
    sp = open_spool(spool_path, seq_block=5)
    sp.append(builder(), 1)
    sp.sync()  # durable: seq 1, and seqs below 2 + 5 reserved
    syncs = sp.stats.syncs
    durable = crash_copy(spool_path, tmp_path / "durable" / "agent.db")
    handed_out = [sp.append(builder(), 1).seq for _ in range(5)]
    assert sp.stats.syncs == syncs  # no fsync since: all of these may vanish
    sp.close()
    with open_spool(durable, seq_block=5, host_boot_id="after-power-loss") as again:
        assert handed_out == [2, 3, 4, 5, 6]
        assert again.next_seq == 7
        assert [(g.cause, g.first_seq, g.last_seq) for g in again.gaps()] == [
            ("host_restart", 2, 6)
        ]
        assert [e.seq for e in again.pending(100)] == [1]
    # One more append would have reserved (and fsynced) the next block first.
    with open_spool(spool_path, seq_block=5) as sp:
        before = sp.stats.syncs
        for _ in range(6):
            sp.append(builder(), 1)
        assert sp.stats.syncs == before + 1


def test_payload_for_failing_leaves_nothing_and_the_seq_unused(spool: Spool) -> None:
    def boom(seq: int) -> bytes:
        raise RuntimeError("encoder broke")

    with pytest.raises(RuntimeError, match="encoder broke"):
        spool.append(boom, 1)
    assert spool.stats.entries == 0
    assert spool.append(builder(), 1).seq == FIRST_SEQ


# ------------------------------------------------------------------- pending and confirm


def test_pending_is_oldest_first_respects_limit_and_skips_excluded(spool: Spool) -> None:
    for i in range(10):
        spool.append(builder(10 + i), i)
    assert [e.seq for e in spool.pending(3)] == [1, 2, 3]
    assert [e.seq for e in spool.pending(3, exclude={1, 2, 4})] == [3, 5, 6]
    assert [e.seq for e in spool.pending(100, exclude=range(1, 10))] == [10]
    assert spool.pending(0) == []
    assert spool.pending(5, exclude=set(range(1, 11))) == []
    [e] = spool.pending(1, exclude=[1, 2, 3, 4, 5, 6])
    assert (e.seq, e.payload, e.readings) == (7, payload(7, 16), 6)


def test_confirm_deletes_inclusive_ranges_and_ignores_unknown_seqs(spool: Spool) -> None:
    for _ in range(10):
        spool.append(builder(), 2)
    assert spool.confirm([(2, 3), (3, 5), (9, 9)]) == 5
    assert [e.seq for e in spool.pending(100)] == [1, 6, 7, 8, 10]
    assert spool.confirm([(2, 5), (50, 60), (-5, 0)]) == 0  # again, and unknown: harmless
    assert spool.confirm([]) == 0
    with pytest.raises(ValueError, match="first is after last"):
        spool.confirm([(1, 1), (7, 6)])
    assert spool.stats.entries == 5  # the valid range of that call was not applied either
    assert spool.confirm([(0, 100)]) == 5
    stats = spool.stats
    assert (stats.entries, stats.readings, stats.bytes) == (0, 0, 0)


def test_attempts_are_counted_persisted_and_forgotten_with_the_entry(spool_path: Path) -> None:
    with open_spool(spool_path) as sp:
        for _ in range(3):
            sp.append(builder(), 1)
        sp.mark_attempts([1, 2, 99])
        sp.mark_attempts([2])
        sp.mark_attempts([])
    with open_spool(spool_path) as sp:
        assert [(e.seq, e.attempts) for e in sp.pending(10)] == [(1, 1), (2, 2), (3, 0)]
        assert [(e.seq, e.attempts) for e in sp.pending(10, exclude={1})] == [(2, 2), (3, 0)]
        sp.confirm([(2, 2)])
        sp.mark_attempts([2])  # confirmed: ignored
        assert [(e.seq, e.attempts) for e in sp.pending(10)] == [(1, 1), (3, 0)]


def test_stats_are_restored_on_open(spool_path: Path) -> None:
    with open_spool(spool_path) as sp:
        for i in range(4):
            sp.append(builder(100), i + 1)
        sp.confirm([(1, 1)])
        expected = sp.stats
    with open_spool(spool_path) as sp:
        got = sp.stats
        assert (got.entries, got.readings, got.bytes) == (3, 2 + 3 + 4, expected.bytes)
        assert got.bytes == sum(len(payload(s, 100)) for s in (2, 3, 4))


def test_calls_from_several_threads_are_serialised(spool: Spool) -> None:
    """The publisher calls the spool through asyncio.to_thread; a stray concurrent call must
    not corrupt the sequence."""
    with ThreadPoolExecutor(4) as pool:
        entries = list(pool.map(lambda _: spool.append(builder(), 1), range(200)))
    assert sorted(e.seq for e in entries) == list(range(FIRST_SEQ, FIRST_SEQ + 200))
    assert all(e.payload == payload(e.seq) for e in entries)
    assert spool.stats.entries == 200


# --------------------------------------------------------------------------------- caps


def test_size_cap_drops_the_oldest_and_records_one_merged_gap(spool_path: Path) -> None:
    size = len(payload(1, 100))
    clock = Clock()
    with open_spool(spool_path, max_bytes=3 * size, clock_ns=clock) as sp:
        for _ in range(3):
            sp.append(builder(100), 10)
        assert sp.enforce_caps() is None
        sp.confirm([(2, 2)])
        for _ in range(3):
            sp.append(builder(100), 10)
        # 5 entries (1, 3, 4, 5, 6) for room for 3: the two oldest go.
        assert sp.enforce_caps() == Dropped(first_seq=1, last_seq=3, messages=2, readings=20)
        assert [e.seq for e in sp.pending(10)] == [4, 5, 6]
        assert sp.stats.bytes == 3 * size
        clock.now += SECOND
        sp.append(builder(100), 7)
        assert sp.enforce_caps() == Dropped(4, 4, 1, 10)
        [gap] = sp.gaps()
        assert (gap.cause, gap.first_seq, gap.last_seq, gap.messages, gap.readings) == (
            "size_cap",
            1,
            4,
            3,
            30,
        )
        assert (gap.from_ns, gap.to_ns) == (clock.now - SECOND, clock.now - SECOND)
        # Reported: the next drop starts a new gap.
        sp.append(builder(100), 1, reported_gaps=[gap.id])
        assert sp.enforce_caps() == Dropped(5, 5, 1, 10)
        assert [(g.first_seq, g.last_seq, g.messages) for g in sp.gaps()] == [(5, 5, 1)]


def test_a_reported_gap_is_kept_until_its_report_is_confirmed_across_a_crash(
    spool_path: Path, tmp_path: Path
) -> None:
    size = len(payload(1, 100))
    with open_spool(spool_path, max_bytes=2 * size) as sp:
        for _ in range(3):
            sp.append(builder(100), 10)
        assert sp.enforce_caps() == Dropped(1, 1, 1, 10)
        assert sp.report_due
        [gap] = sp.gaps()
        report = sp.append(builder(10), 3, reported_gaps=[gap.id])
        # Reported (no longer listed), and no second report while this one is outstanding.
        assert sp.gaps() == [] and not sp.report_due
        assert sp.enforce_caps() == Dropped(2, 2, 1, 10)
        assert not sp.report_due
        copy = crash_copy(spool_path, tmp_path / "crash" / "agent.db")
        # The report's confirmation deletes the gap it carried; the newer one is due now.
        sp.confirm([(report.seq, report.seq)])
        assert [(g.first_seq, g.last_seq) for g in sp.gaps()] == [(2, 2)]
        assert sp.report_due
    # After a crash before the confirmation: the report is still outstanding (its message
    # is in the spool), the newer loss still listed.
    with open_spool(copy, max_bytes=2 * size) as again:
        assert [(g.first_seq, g.last_seq) for g in again.gaps()] == [(2, 2)]
        assert not again.report_due
        again.confirm([(report.seq, report.seq)])
        assert again.report_due


def test_a_report_dropped_before_its_confirmation_lists_its_gap_again_merged(
    spool_path: Path,
) -> None:
    size = len(payload(1, 100))
    clock = Clock()
    with open_spool(spool_path, max_bytes=2 * size, clock_ns=clock) as sp:
        first_append = clock.now
        for _ in range(3):
            sp.append(builder(100), 10)
            clock.now += SECOND
        assert sp.enforce_caps() == Dropped(1, 1, 1, 10)
        [gap] = sp.gaps()
        report = sp.append(builder(100), 3, reported_gaps=[gap.id])  # seq 4
        assert sp.enforce_caps() == Dropped(2, 2, 1, 10)
        for _ in range(2):
            sp.append(builder(100), 10)
        # Seqs 3 and 4 (the report) dropped: its gap comes back, merged with 2..4, under
        # its own id and first time (a report of it supersedes the lost one).
        assert sp.enforce_caps() == Dropped(3, report.seq, 2, 13)
        [again] = sp.gaps()
        assert (again.id, again.first_seq, again.last_seq, again.messages, again.readings) == (
            gap.id,
            1,
            4,
            4,
            33,
        )
        assert again.from_ns == first_append == gap.from_ns
        assert sp.report_due
        # A confirmation of the dropped report arriving late deletes nothing.
        sp.confirm([(report.seq, report.seq)])
        assert [g.id for g in sp.gaps()] == [gap.id]


def test_append_within_caps_never_commits_more_than_the_cap(
    spool_path: Path, tmp_path: Path
) -> None:
    size = len(payload(1, 100))
    cap = 3 * size + size // 2
    with open_spool(spool_path, max_bytes=cap) as sp:
        for n in range(1, 9):
            entry, dropped = sp.append_within_caps(builder(100), 10)
            # What a crash right after this call leaves on disk: never above the cap.
            copy = crash_copy(spool_path, tmp_path / f"crash-{n}" / "agent.db")
            conn = sqlite3.connect(copy)
            (on_disk,) = conn.execute("SELECT total(size) FROM entries").fetchone()
            conn.close()
            assert on_disk <= cap and sp.stats.bytes <= cap
            assert dropped == (None if n <= 3 else Dropped(n - 3, n - 3, 1, 10))
            assert entry.seq == n
        [gap] = sp.gaps()
        assert (gap.first_seq, gap.last_seq, gap.messages, gap.readings) == (1, 5, 5, 50)


def test_an_oversized_report_dropped_in_its_own_append_lists_its_gaps_again(
    spool_path: Path,
) -> None:
    size = len(payload(1, 100))
    with open_spool(spool_path, max_bytes=2 * size) as sp:
        for _ in range(3):
            sp.append_within_caps(builder(100), 10)
        [gap] = sp.gaps()
        # The report is larger than the cap: dropped in the transaction that appends it.
        entry, dropped = sp.append_within_caps(builder(3 * size), 4, reported_gaps=[gap.id])
        assert dropped is not None and dropped.last_seq == entry.seq
        [again] = sp.gaps()
        assert again.id == gap.id and again.last_seq == entry.seq
        assert again.messages == 1 + dropped.messages
        assert sp.report_due


def test_a_version_1_spool_is_upgraded_in_place(spool_path: Path) -> None:
    size = len(payload(1, 100))
    with open_spool(spool_path, max_bytes=2 * size) as sp:
        for _ in range(3):
            sp.append(builder(100), 10)
        sp.enforce_caps()
        epoch = sp.epoch
    conn = sqlite3.connect(spool_path)
    conn.execute("ALTER TABLE gaps DROP COLUMN report_seq")
    conn.execute("ALTER TABLE gaps DROP COLUMN noted_ns")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with open_spool(spool_path, max_bytes=2 * size) as sp:
        assert sp.opened_fresh_after_corruption is None
        assert sp.epoch == epoch
        assert [e.seq for e in sp.pending(10)] == [2, 3]
        [gap] = sp.gaps()
        assert (gap.first_seq, gap.last_seq, gap.messages) == (1, 1, 1)
        assert sp.report_due
    conn = sqlite3.connect(spool_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_message_larger_than_the_cap_is_dropped_too(spool_path: Path) -> None:
    with open_spool(spool_path, max_bytes=50) as sp:
        sp.append(builder(200), 5)
        assert sp.enforce_caps() == Dropped(1, 1, 1, 5)
        assert sp.stats.entries == 0


def test_age_cap_drops_entries_older_than_max_age(spool_path: Path) -> None:
    clock = Clock()
    with open_spool(spool_path, max_age_s=60, clock_ns=clock) as sp:
        for _ in range(3):
            sp.append(builder(), 1)
            clock.now += 10 * SECOND
        sp.append(builder(), 4)
        clock.now += 35 * SECOND  # ages: 65, 55, 45, 35 s
        assert sp.enforce_caps() == Dropped(1, 1, 1, 1)
        assert sp.enforce_caps() is None
        clock.now += 20 * SECOND  # ages: 75, 65, 55 s
        assert sp.enforce_caps() == Dropped(2, 3, 2, 2)
        [gap] = sp.gaps()
        assert (gap.cause, gap.first_seq, gap.last_seq, gap.messages) == ("age_cap", 1, 3, 3)
        clock.now -= 3600 * SECOND  # the wall clock stepped back: nothing looks old
        assert sp.enforce_caps() is None
        assert [e.seq for e in sp.pending(10)] == [4]


def test_age_and_size_caps_together_give_two_gaps(spool_path: Path) -> None:
    clock = Clock()
    size = len(payload(1))
    with open_spool(spool_path, max_age_s=60, max_bytes=2 * size, clock_ns=clock) as sp:
        sp.append(builder(), 1)
        sp.append(builder(), 1)
        clock.now += 61 * SECOND
        for _ in range(4):
            sp.append(builder(), 1)
        assert sp.enforce_caps() == Dropped(1, 4, 4, 4)
        assert {(g.cause, g.first_seq, g.last_seq) for g in sp.gaps()} == {
            ("age_cap", 1, 2),
            ("size_cap", 3, 4),
        }


def test_gaps_survive_a_crash(spool_path: Path, tmp_path: Path) -> None:
    sp = open_spool(spool_path, max_bytes=1)
    sp.append(builder(), 1)
    assert sp.enforce_caps() is not None
    copy = crash_copy(spool_path, tmp_path / "crashed" / "agent.db")
    sp.close()
    with open_spool(copy) as again:
        assert [(g.cause, g.first_seq, g.last_seq) for g in again.gaps()] == [("size_cap", 1, 1)]


def test_open_refuses_bad_arguments(spool_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Spool.open(spool_path, max_bytes=0, max_age_s=None)
    with pytest.raises(ValueError, match="max_age_s"):
        Spool.open(spool_path, max_bytes=1, max_age_s=0)
    with pytest.raises(ValueError, match="seq_block"):
        Spool.open(spool_path, max_bytes=1, max_age_s=None, seq_block=0)


# ------------------------------------------------------------------- corrupt and foreign


def expected_warning(path: Path, reason: str, aside: Path) -> str:
    return (
        f"spool {path} is unusable ({reason}); moved it aside to {aside} (with its -wal/-shm "
        "files, if any) and started a new, empty spool: the unconfirmed messages it held "
        "(number unknown) are lost unless recovered from that file"
    )


def open_expecting_move(
    path: Path, caplog: pytest.LogCaptureFixture, reason_check: Callable[[str], bool]
) -> tuple[Spool, Path]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, "fieldlink.edge.spool"):
        sp = open_spool(path)
    aside = sp.opened_fresh_after_corruption
    assert aside is not None
    assert aside.name.startswith(path.name + ".corrupt-")
    [record] = [r for r in caplog.records if r.name == "fieldlink.edge.spool"]
    assert record.levelno == logging.WARNING
    assert record.msg == CORRUPT_MESSAGE
    reason = str(record.args[1])  # type: ignore[index]
    assert reason_check(reason), reason
    assert record.getMessage() == expected_warning(path, reason, aside)
    return sp, aside


def assert_works(sp: Spool) -> None:
    assert sp.next_seq == FIRST_SEQ
    assert sp.stats.entries == 0
    sp.append(builder(), 1)
    assert [e.seq for e in sp.pending(5)] == [FIRST_SEQ]


def test_a_file_of_garbage_is_moved_aside_with_a_clear_message(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_path.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    spool_path.write_bytes(garbage)
    sp, aside = open_expecting_move(spool_path, caplog, lambda r: r == "file is not a database")
    try:
        assert caplog.records[0].getMessage() == expected_warning(
            spool_path, "file is not a database", aside
        )
        assert aside.read_bytes() == garbage
        assert_works(sp)
    finally:
        sp.close()


def test_a_truncated_spool_is_moved_aside(
    spool_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_spool(spool_path) as sp:
        for _ in range(200):
            sp.append(builder(3000), 1)
        old_epoch = sp.epoch
    size = spool_path.stat().st_size
    with spool_path.open("r+b") as f:
        f.truncate(size // 2)
    sp, aside = open_expecting_move(spool_path, caplog, lambda r: bool(r))
    try:
        assert aside.stat().st_size == size // 2
        assert sp.epoch != old_epoch  # a new sequence space
        assert_works(sp)
    finally:
        sp.close()


def test_damaged_pages_are_found_by_the_integrity_check_and_moved_aside(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_spool(spool_path) as sp:
        for _ in range(200):
            sp.append(builder(3000), 1)
        sp.confirm([(1, 100)])  # leaves a freelist to damage as well
    data = bytearray(spool_path.read_bytes())
    page = 4096
    for n in range(2, len(data) // page, 7):  # scribble over the headers of many pages
        data[n * page : n * page + 16] = b"\xa5" * 16
    spool_path.write_bytes(bytes(data))
    sp, _ = open_expecting_move(spool_path, caplog, lambda r: bool(r))
    try:
        assert_works(sp)
    finally:
        sp.close()


def test_a_damaged_spool_with_a_wal_is_replaced_by_a_clean_one(
    spool_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its WAL must go with it (into the moved file or beside it): a stale WAL left next to
    the new spool would be replayed into it."""
    sp = open_spool(spool_path)
    for _ in range(200):  # past a checkpoint: the main file holds pages the WAL does not
        sp.append(builder(30_000), 1)
    copy = crash_copy(spool_path, tmp_path / "c" / "agent.db")
    sp.close()
    assert Path(f"{copy}-wal").stat().st_size > 0
    copy.write_bytes(os.urandom(copy.stat().st_size))
    sp, aside = open_expecting_move(copy, caplog, lambda r: "\n" not in r and bool(r))
    try:
        assert_works(sp)
        names = {p.name for p in copy.parent.iterdir()}
        assert names <= {copy.name, f"{copy.name}-wal", aside.name, f"{aside.name}-wal"}
    finally:
        sp.close()


def test_an_unknown_schema_version_is_moved_aside(
    spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_spool(spool_path).close()
    conn = sqlite3.connect(spool_path)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    sp, _ = open_expecting_move(
        spool_path, caplog, lambda r: r == f"schema version 99; this agent reads {SCHEMA_VERSION}"
    )
    try:
        assert_works(sp)
    finally:
        sp.close()


def test_another_applications_database_is_left_alone(spool_path: Path) -> None:
    spool_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(spool_path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    before = spool_path.read_bytes()
    with pytest.raises(SpoolError, match=r"another application.*left untouched"):
        open_spool(spool_path)
    assert spool_path.read_bytes() == before
    assert [p.name for p in spool_path.parent.iterdir()] == [spool_path.name]


def test_move_aside_never_overwrites_an_earlier_one(tmp_path: Path) -> None:
    now = datetime(2026, 5, 10, 10, 15, 2, tzinfo=UTC)
    path = tmp_path / "s.db"
    path.write_bytes(b"one")
    first = move_aside(path, now=now)
    path.write_bytes(b"two")
    Path(f"{path}-wal").write_bytes(b"wal")
    second = move_aside(path, now=now)
    assert first.name == "s.db.corrupt-20260510T101502Z"
    assert second.name == "s.db.corrupt-20260510T101502Z-2"
    assert (first.read_bytes(), second.read_bytes()) == (b"one", b"two")
    assert Path(f"{second}-wal").read_bytes() == b"wal"
    assert not path.exists()


def test_a_second_open_of_the_same_file_is_refused(spool: Spool, spool_path: Path) -> None:
    with pytest.raises(SpoolLocked, match="in use by another process"):
        open_spool(spool_path, lock_timeout_s=0)
    spool.append(builder(), 1)  # the first one is unaffected


def test_closed_spool_refuses_calls_and_close_is_idempotent(spool: Spool) -> None:
    spool.close()
    spool.close()
    assert spool.closed
    with pytest.raises(SpoolError, match="closed"):
        spool.append(builder(), 1)
    with pytest.raises(SpoolError, match="closed"):
        spool.pending(1)


def test_the_file_is_tagged_as_a_spool(spool: Spool, spool_path: Path) -> None:
    spool.close()
    conn = sqlite3.connect(spool_path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


# -------------------------------------------------------------------------- SIGKILL


CHILD = """
import sys
from pathlib import Path
from edge.spool import Spool

path, size = Path(sys.argv[1]), int(sys.argv[2])

def payload(seq):
    head = b"%d|" % seq
    return head + (b"%08d" % seq) * ((size - len(head)) // 8 + 1)

sp = Spool.open(path, max_bytes=10**12, max_age_s=None, seq_block=64)
print("open", sp.next_seq, flush=True)
while True:
    entry = sp.append(payload, sp.next_seq % 7 + 1)
    if entry.seq % 5 == 4:
        sp.confirm([(entry.seq - 3, entry.seq - 2)])
    print(entry.seq, flush=True)
"""


def confirmed_by(seq: int) -> set[int]:
    """What the child confirms right after appending ``seq``."""
    return {seq - 3, seq - 2} if seq % 5 == 4 else set()


@pytest.mark.parametrize("size", [200, 30_000])
def test_a_writer_killed_with_sigkill_loses_nothing_it_committed(
    spool_path: Path, size: int
) -> None:
    """A child appends (and now and then confirms) in a loop and prints each seq once its
    append returned; it is killed with SIGKILL, most likely mid-append or mid-checkpoint.
    Twice: the second child starts from the first one's wreck."""
    spool_path.parent.mkdir(parents=True)
    returned: list[int] = []  # seqs whose append returned, over both runs
    confirmed: set[int] = set()  # seqs certainly confirmed
    next_seq = FIRST_SEQ
    for count in (150, 200):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(spool_path), str(size)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["open", str(next_seq)]
        run: list[int] = []
        deadline = time.monotonic() + 60
        while len(run) < count and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            run.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # What the child printed before dying but the loop above did not read yet.
        rest = child.stdout.read()
        child.stdout.close()
        assert len(run) == count
        run += [int(line) for line in rest.split("\n")[:-1]]  # complete lines only
        returned += run
        for seq in run:
            confirmed |= confirmed_by(seq)
        # The append in progress at the kill may have committed (and then confirmed).
        unreported = returned[-1] + 1
        maybe_confirmed = confirmed_by(unreported)

        with open_spool(spool_path, host_boot_id=None) as sp:  # this host, truly
            assert sp.unclean_shutdown
            assert sp.gaps() == []
            entries = sp.pending(10**6)
            seqs = {e.seq for e in entries}
            # Every append that returned before the kill is there unless it was confirmed...
            assert set(returned) - confirmed - maybe_confirmed <= seqs
            # ...no confirmed entry came back...
            assert not confirmed & seqs
            # ...nothing is half-written or mixed up...
            for e in entries:
                assert e.payload == payload(e.seq, size)
                assert e.readings == e.seq % 7 + 1
            assert max(seqs) in (returned[-1], unreported)
            # ...the sequence continues exactly, and the bookkeeping agrees with the rows.
            assert sp.next_seq == max(seqs) + 1
            assert sp.stats.entries == len(entries)
            assert sp.stats.bytes == sum(len(e.payload) for e in entries)
            next_seq = sp.next_seq
            if unreported in seqs:
                returned.append(unreported)
                confirmed |= maybe_confirmed - seqs
