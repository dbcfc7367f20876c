"""Issue 4: a spool-cap loss is reported even when the agent dies before it could send the
report. The gap records live in the spool (SQLite) until the cloud confirmed the message
that carries them, so a ``kill -9`` during the outage that caused the loss loses nothing of
the report: after the restart and the broker's return, the loss is in InfluxDB with its
exact counts.

Real processes and servers as in ``test_delivery.py``; run with ``-s`` for the numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from delivery_helpers import (
    TINY_SPOOL,
    agent_summary,
    finish,
    gap_records,
    losses_reported,
    peer_outage,
    pipeline,
    ranges,
    say,
)
from helpers import InfluxDatabase, ServiceFactory

from fieldlink.localstack import Mosquitto

pytestmark = pytest.mark.timeout(300)

#: Outage before the kill (the spool turns over ~3 times) and after the restart.
BEFORE_KILL_S = 12
AFTER_RESTART_S = 6


async def test_gap_report_survives_a_kill_during_the_outage_that_caused_it(
    tmp_path: Path, make_service: ServiceFactory, influx_db: InfluxDatabase
) -> None:
    broker = make_service(Mosquitto)
    async with pipeline(tmp_path, broker, influx_db, max_bytes=TINY_SPOOL) as run:
        outage = await peer_outage(
            run, broker, BEFORE_KILL_S + AFTER_RESTART_S, agent_killed_after=BEFORE_KILL_S
        )
        missing = await losses_reported(run, outage)
        done = await finish(run, dropped=missing)
    at_kill = outage.at_kill
    records = gap_records(run.store)
    killed = [*at_kill.gaps, *[r[:5] for r in at_kill.reported]]
    killed_messages = sum(g[3] for g in killed)
    killed_readings = sum(g[4] for g in killed)
    restarted = agent_summary(run.agent)
    say(
        f"at kill -9 ({BEFORE_KILL_S} s into the outage): spool next seq {at_kill.next_seq}, "
        f"{at_kill.entries} message(s); gaps unreported {at_kill.gaps}; gaps in a report not "
        f"yet confirmed (cause, first, last, messages, readings, report seq) {at_kill.reported}"
    )
    for record in records:
        say(f"gap record in InfluxDB: {record.reason!r}")
    messages_reported = sum(g.messages for g in records)
    readings_reported = sum(g.readings for g in records)
    say(
        f"InfluxDB misses {len(missing)} message(s) (seq {ranges(missing)}); the gap records "
        f"count {messages_reported} message(s), {readings_reported} readings = "
        f"{killed_readings} recorded by the killed agent + {restarted['dropped']} dropped by "
        f"the restarted one"
    )
    assert killed, "no cap drop before the kill: the scenario did not happen"
    # The killed agent's losses are in InfluxDB: every seq it recorded as lost is named...
    named = {s for g in records for s in range(g.first_seq, g.last_seq + 1)}
    assert all(set(range(g[1], g[2] + 1)) <= named for g in killed), (killed, records)
    # ...and the counts are exact: the readings both runs dropped, no more, no less (a
    # report superseded by a merged one overwrote it instead of counting twice).
    assert readings_reported == killed_readings + restarted["dropped"]
    assert messages_reported >= killed_messages
    assert messages_reported >= len(missing)
    assert done.spool.gaps == [], "a gap was never reported"
    # Caps held on disk after the stop: at most max_bytes of payload.
    assert done.spool.payload_bytes <= TINY_SPOOL
