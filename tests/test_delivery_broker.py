"""Issue 4, the broker's side of delivery, against a real Mosquitto 2.0.11: refusals in the
PUBACK (0x87 not authorised by the ACL, 0x10 no matching subscribers), a broker that wants a
user name and password, and the retained birth and will on the agent's status topic.

The agent and the ingester are real processes, the simulated meter runs in the test's event
loop (1,000 readings/s), InfluxDB 1.x is real (see ``delivery_helpers``). Run with ``-s`` to
see the numbers.

Why there is no 0x97 (quota exceeded) test: Mosquitto 2.0.11 cannot send it for a QoS 1
PUBLISH. It acknowledges a QoS 1 message as soon as it has queued it for the subscribers
(``handle__publish``: PUBACK after ``sub__messages_queue``), and its only incoming quota check
(``db__ready_for_flight`` on the client's incoming messages) counts QoS 2 messages awaiting
PUBREL, never QoS 1 ones; queues that overflow later drop silently (issue #3687 of
eclipse-mosquitto/mosquitto: PUBACK 0x00, then dropped). 2.0.21 added a 0x97 for a client
whose *outgoing* packet queue is full (issue #3244). 3,000 QoS 1 publishes into
``max_inflight_messages 1`` / ``max_queued_messages 1`` / ``max_queued_bytes`` brokers got
0x00 every time here. The agent handles 0x97 exactly like 0x87 (every code >= 0x80 is "not
delivered", ``edge/mqtt.py``); the 0x87 test below is that path, seen for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
import yaml
from delivery_helpers import (
    AGENT,
    DEVICE,
    SITE,
    Address,
    Processes,
    Run,
    agent_file,
    finish,
    hold,
    in_thread,
    pipeline,
    say,
    sim_config,
    spool_state_when,
    wait_delivered,
)
from helpers import InfluxDatabase, ServiceFactory, async_wait_for
from paho.mqtt.enums import CallbackAPIVersion

from config.edge import load_edge_config
from fieldlink import __version__
from fieldlink.localstack import Mosquitto, write_password_file
from sim.server import SimPlant
from wire.topics import data_topic, status_topic

pytestmark = pytest.mark.timeout(240)

DATA = data_topic(SITE, AGENT)
STATUS = status_topic(SITE, AGENT)
AGENT_USER, AGENT_PASSWORD = AGENT, "agent-secret"
INGESTER_USER, INGESTER_PASSWORD = "ingester-1", "ingester-secret"
AGENT_LOGIN = {"username": AGENT_USER, "password": AGENT_PASSWORD}
INGESTER_LOGIN = {"username": INGESTER_USER, "password": INGESTER_PASSWORD}


def secured_broker(make_service: ServiceFactory, tmp_path: Path, acl: str | None) -> Mosquitto:
    """A broker that wants a user name and password (and applies ``acl``, if given)."""
    passwords = write_password_file(
        tmp_path / "passwords",
        {AGENT_USER: AGENT_PASSWORD, INGESTER_USER: INGESTER_PASSWORD},
    )
    acl_file = None
    if acl is not None:
        acl_file = tmp_path / "acl"
        acl_file.write_text(acl)
    return make_service(
        Mosquitto, allow_anonymous=False, password_file=passwords, acl_file=acl_file
    )


def secured_pipeline(
    tmp_path: Path, broker: Mosquitto, influx_db: InfluxDatabase, agent_login: dict[str, str]
) -> contextlib.AbstractAsyncContextManager[Run]:
    """The pipeline on a :func:`secured_broker`: the ingester logs in with its password, the
    agent with ``agent_login``."""
    return pipeline(tmp_path, broker, influx_db, agent_mqtt=agent_login, cloud_mqtt=INGESTER_LOGIN)


def acl(agent_may_publish_data: bool) -> str:
    """The ingester may do everything under fieldlink/; the agent may publish its status and
    read its confirmations, and publish its data only if ``agent_may_publish_data``."""
    lines = [
        f"user {INGESTER_USER}",
        "topic readwrite fieldlink/#",
        "",
        f"user {AGENT_USER}",
        f"topic write {STATUS}",
        f"topic read fieldlink/v1/{SITE}/{AGENT}/confirm",
    ]
    if agent_may_publish_data:
        lines.append(f"topic write {DATA}")
    return "\n".join([*lines, ""])


async def test_publishes_the_acl_denies_stay_spooled_and_go_out_once_the_acl_allows_them(
    tmp_path: Path, make_service: ServiceFactory, influx_db: InfluxDatabase
) -> None:
    broker = secured_broker(make_service, tmp_path, acl(agent_may_publish_data=False))
    async with secured_pipeline(tmp_path, broker, influx_db, AGENT_LOGIN) as run:
        await run.agent.wait_log("PUBACK 0x87")
        # ~5 s of refused messages (10 polls/s, a message every 0.2 s).
        denied = await spool_state_when(
            run, lambda s: s.entries >= 25, "25 refused messages in the spool"
        )
        refusals = run.agent.lines("PUBACK 0x87")
        stored_while_denied = await asyncio.to_thread(run.store.progress)
        say(f"agent's refusal log line: {refusals[0]}")
        say(
            f"while the ACL denied {DATA}: {denied.entries} message(s), {denied.readings} "
            f"readings in the spool (seq 1..{denied.next_seq - 1}); InfluxDB (distinct seqs, "
            f"highest): {stored_while_denied}"
        )
        # Refused, logged once, named clearly; nothing deleted, nothing stored.
        assert len(refusals) == 1, refusals
        assert DATA in refusals[0] and "ACL" in refusals[0] and "acl_file" in refusals[0]
        assert denied.entries == denied.next_seq - 1, "a refused message left the spool"
        assert stored_while_denied == (0, 0)

        # The operator fixes the ACL and reloads the broker: everything goes out.
        (tmp_path / "acl").write_text(acl(agent_may_publish_data=True))
        await in_thread(broker.reload)
        loop = asyncio.get_running_loop()
        fixed = loop.time()
        await wait_delivered(run.store, denied.next_seq - 1, wait_s=60)
        say(
            f"ACL fixed (SIGHUP): all {denied.next_seq - 1} refused messages stored "
            f"{loop.time() - fixed:.1f} s later"
        )
        done = await finish(run)
    counted = run.agent.lines("the broker refused")
    assert counted, "no count of the refusals at stop"
    [refused] = [int(n) for n in re.findall(r"PUBACK 0x87: (\d+)", counted[-1])]
    say(f"agent at stop: {counted[-1]}")
    assert refused >= denied.entries
    assert done.delivered.seqs >= set(range(1, denied.next_seq))


async def test_no_matching_subscribers_keeps_messages_spooled_until_an_ingester_subscribes(
    tmp_path: Path, make_service: ServiceFactory, influx_db: InfluxDatabase
) -> None:
    broker = make_service(Mosquitto)
    async with pipeline(tmp_path, broker, influx_db, ingester=False) as run:
        await run.agent.wait_log("PUBACK 0x10")
        waiting = await spool_state_when(
            run, lambda s: s.entries >= 15, "15 unsubscribed messages in the spool"
        )
        refusals = run.agent.lines("PUBACK 0x10")
        say(f"agent's log line: {refusals[0]}")
        assert len(refusals) == 1, refusals
        assert DATA in refusals[0] and "no ingester is subscribed" in refusals[0]
        assert waiting.entries == waiting.next_seq - 1
        await run.start_ingester()
        await wait_delivered(run.store, waiting.next_seq - 1, wait_s=60)
        done = await finish(run)
    say(f"{waiting.entries} message(s) published to nobody were stored once it subscribed")
    assert done.delivered.seqs >= set(range(1, waiting.next_seq))


async def test_wrong_password_is_named_keeps_spooling_backs_off_and_right_one_delivers(
    tmp_path: Path, make_service: ServiceFactory, influx_db: InfluxDatabase
) -> None:
    broker = secured_broker(make_service, tmp_path, acl=None)
    wrong = {"username": AGENT_USER, "password": "not-the-password"}
    window = 8.0
    async with secured_pipeline(tmp_path, broker, influx_db, wrong) as run:
        await run.agent.wait_log("bad user name or password")
        refused_before = broker.log_path.read_text().count("disconnected, not authorised")
        await hold(window)
        attempts = (
            broker.log_path.read_text().count("disconnected, not authorised") - refused_before
        )
        errors = run.agent.lines("refused the connection")
        spooled = await spool_state_when(run, lambda s: s.entries >= 30, "30 spooled messages")
        say(f"agent's error: {errors[0]}")
        say(
            f"in {window:.0f} s after the first refusal: {attempts} more attempt(s) refused by "
            f"the broker; {spooled.entries} message(s) spooled meanwhile"
        )
        assert run.agent.running, "the agent died on a refused login"
        assert len(errors) == 1, errors
        assert f"{broker.host}:{broker.port}" in errors[0]
        assert "ERROR" in errors[0]
        # Backoff 0.5 s doubling, each wait 50-100 % of its step: 4-6 attempts in 8 s. A
        # client that retried without waiting would make hundreds.
        assert 2 <= attempts <= 8, attempts
        assert await asyncio.to_thread(run.store.progress) == (0, 0)

        # The right password: everything spooled meanwhile arrives.
        assert await run.agent.stop() == 0
        doc = yaml.safe_load(run.agent_config.read_text())
        doc["mqtt"].update(AGENT_LOGIN)
        run.agent_config.write_text(yaml.safe_dump(doc))
        await run.restart_agent(log="agent-right-password.log")
        await run.agent.wait_log("connected to MQTT broker")
        await wait_delivered(run.store, spooled.next_seq - 1, wait_s=60)
        done = await finish(run)
    assert done.delivered.seqs >= set(range(1, spooled.next_seq))


class StatusWatcher:
    """A client subscribed to the agent's status topic: every message with its retain flag."""

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.messages: list[tuple[dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(STATUS, qos=1)
        self._client.loop_start()

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((orjson.loads(message.payload), bool(message.retain)))

    def seen(self) -> list[tuple[dict[str, Any], bool]]:
        with self._lock:
            return list(self.messages)

    async def wait(self, count: int) -> list[tuple[dict[str, Any], bool]]:
        return await async_wait_for(
            lambda: (seen := self.seen())[count - 1 :] and seen,
            timeout=15,
            message=f"{count} status message(s) on {STATUS}",
        )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def test_retained_birth_after_start_will_after_kill_and_offline_after_clean_stop(
    tmp_path: Path, make_service: ServiceFactory, influx_db: InfluxDatabase
) -> None:
    broker = make_service(Mosquitto)
    async with pipeline(tmp_path, broker, influx_db) as run:
        await run.agent.wait_log("connected to MQTT broker")
        expected_hash = load_edge_config(run.agent_config).config_hash

        # Subscribed after the agent started: the birth is retained.
        late = StatusWatcher(broker, "status-late")
        try:
            [(birth, retained)] = await late.wait(1)
            say(f"retained birth: {birth}")
            assert retained
            assert birth["state"] == "online"
            assert birth["version"] == __version__
            assert birth["config_hash"] == expected_hash
            assert re.fullmatch(r"[0-9a-f]{32}", birth["boot"])
            assert re.fullmatch(r"[0-9a-f]{32}", birth["epoch"])
            assert set(birth) == {"state", "version", "config_hash", "boot", "epoch"}

            # kill -9: the broker publishes the will.
            await run.agent.kill()
            [_, (will, _)] = await late.wait(2)
            say(f"after kill -9: {will}")
            assert will == {"state": "offline"}
        finally:
            late.close()
        after_kill = StatusWatcher(broker, "status-after-kill")
        try:
            [(kept, retained)] = await after_kill.wait(1)
            assert (kept, retained) == ({"state": "offline"}, True)
        finally:
            after_kill.close()
        assert (
            f"Client fieldlink-{SITE}-{AGENT} closed its connection" in broker.log_path.read_text()
        )

        # Restarted: online again (a new boot, the same spool epoch); a clean stop publishes
        # offline itself (the broker drops the will on a clean DISCONNECT).
        await run.restart_agent()
        watcher = StatusWatcher(broker, "status-restart")
        try:
            await run.agent.wait_log("connected to MQTT broker")
            await async_wait_for(
                lambda: watcher.seen()[-1][0]["state"] == "online", message="online again"
            )
            reborn = watcher.seen()[-1][0]
            assert reborn["boot"] != birth["boot"] and reborn["epoch"] == birth["epoch"]
            await run.agent.stop()
            offline = await async_wait_for(
                lambda: (last := watcher.seen()[-1])[0]["state"] == "offline" and last,
                message="offline after a clean stop",
            )
            say(f"after a clean stop (SIGTERM, exit 0): {offline[0]}")
            assert offline[0] == {"state": "offline"}
        finally:
            watcher.close()
        assert f"Client fieldlink-{SITE}-{AGENT} disconnected." in broker.log_path.read_text()
        epoch = read_spool_epoch(run.spool)
        assert birth["epoch"] == epoch
        assert await run.ingester.stop() == 0


def read_spool_epoch(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        (epoch,) = conn.execute("SELECT epoch FROM meta WHERE id = 0").fetchone()
    finally:
        conn.close()
    return str(epoch)


class ConnectionRecorder:
    """A TCP listener that plays a broker which is down in the nastiest way: it accepts,
    reads the MQTT CONNECT (for the client id), records when, and hangs up."""

    def __init__(self, client_ids: list[str]) -> None:
        self.client_ids = client_ids
        self.attempts: dict[str, list[float]] = {c: [] for c in client_ids}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        at = asyncio.get_running_loop().time()
        data = b""
        try:
            async with asyncio.timeout(2):
                while not any(c.encode() in data for c in self.client_ids):
                    chunk = await reader.read(1024)
                    if not chunk:
                        break
                    data += chunk
        except TimeoutError:
            pass
        for client_id in self.client_ids:
            if client_id.encode() in data:
                self.attempts[client_id].append(at)
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_reconnects_back_off_exponentially_capped_and_jittered_per_agent(
    tmp_path: Path,
) -> None:
    initial, cap, attempts = 0.2, 1.6, 7
    ids = ["jitter-a", "jitter-b"]
    recorder = ConnectionRecorder(ids)
    await recorder.start()
    try:
        async with (
            SimPlant(sim_config()) as plant,
            contextlib.aclosing(Processes(tmp_path)) as procs,
        ):
            port = plant.endpoints()[DEVICE][1]
            agents = []
            for client_id in ids:
                directory = tmp_path / client_id
                directory.mkdir()
                config, _ = agent_file(
                    directory,
                    Address("127.0.0.1", recorder.port),
                    port,
                    mqtt={
                        "client_id": client_id,
                        "reconnect_initial": initial,
                        "reconnect_max": cap,
                    },
                )
                agents.append(await procs.agent(config, log=f"{client_id}.log"))
            await async_wait_for(
                lambda: all(len(t) >= attempts for t in recorder.attempts.values()),
                timeout=60,
                message=f"{attempts} connection attempts of each agent",
            )
            for agent in agents:
                assert agent.running
                assert await agent.stop() == 0
    finally:
        await recorder.close()
    steps = [min(initial * 2**k, cap) for k in range(attempts - 1)]
    waits = {
        c: [b - a for a, b in itertools.pairwise(t)][: attempts - 1]
        for c, t in recorder.attempts.items()
    }
    for client_id, intervals in waits.items():
        say(f"{client_id}: waits between attempts {[round(w, 3) for w in intervals]} s")
    say(f"backoff steps {steps} s, each wait drawn in [step/2, step]")
    for client_id, intervals in waits.items():
        for step, wait in zip(steps, intervals, strict=True):
            # Lower bound: half the step (the jitter); upper: the step plus the time to
            # notice the hang-up and connect again on a loaded machine.
            assert step / 2 - 0.02 <= wait <= step + 0.3, (client_id, steps, intervals)
    # Increasing, then capped: the last waits are at the cap's range, not 2**k * initial.
    for intervals in waits.values():
        assert sum(intervals[-2:]) / 2 >= 3 * intervals[0]
    # Not in step: the two agents' waits differ (paho's own backoff would be identical).
    differences = [abs(a - b) for a, b in zip(*waits.values(), strict=True)]
    say(f"differences between the two agents' waits: {[round(d, 3) for d in differences]}")
    assert max(differences) > 0.05, differences
