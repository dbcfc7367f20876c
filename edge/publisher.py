"""Forwarding readings to MQTT: batch, encode, publish at QoS 1, keep what is not confirmed.

Pollers call :meth:`Publisher.submit`, which never waits on the network. Readings wait in a
bounded in-memory queue; a message leaves the queue only once the broker acknowledged it
(PUBACK). If the queue is full the *oldest* readings are dropped and counted — a stated
overflow policy, never a silent one. (The crash-safe disk spool of the delivery issue replaces
this queue; the interface stays.)

This is the only module of the agent that imports aiomqtt/paho.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from config.edge import EdgeConfig, MqttSection, PublishSection
from edge.backoff import Backoff
from wire.codec import encode_groups
from wire.model import Group
from wire.topics import data_topic

log = logging.getLogger("fieldlink.edge.mqtt")


@dataclass
class PublishStats:
    messages: int = 0
    readings: int = 0
    dropped: int = 0
    failures: int = 0


class Publisher:
    def __init__(
        self,
        site: str,
        agent: str,
        mqtt: MqttSection,
        publish: PublishSection,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._site = site
        self._agent = agent
        self._mqtt = mqtt
        self._cfg = publish
        self._clock = clock
        self._topic = data_topic(site, agent, root=mqtt.topic_root)
        #: Groups waiting for the broker, oldest first, and the readings they hold in total.
        self._queue: deque[Group] = deque()
        self._queued_readings = 0
        self._wakeup = asyncio.Event()
        self._oldest_at: float | None = None
        self._backoff = Backoff()
        self._connected = asyncio.Event()
        #: Set while shutting down: send what is queued without waiting for a full batch.
        self._flushing = False
        self.stats = PublishStats()

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged by the broker."""
        return self._queued_readings

    def submit(self, groups: list[Group]) -> None:
        if not groups:
            return
        if not self._queue:
            # The publisher may be idle with no deadline; the first reading starts the
            # max_delay clock, so it must be woken to arm it.
            self._oldest_at = self._clock()
            self._wakeup.set()
        self._queue.extend(groups)
        self._queued_readings += sum(len(g.points) for g in groups)
        if self._queued_readings > self._cfg.queue_size:
            self._drop_oldest()
        if self._queued_readings >= self._cfg.max_batch:
            self._wakeup.set()

    def _drop_oldest(self) -> None:
        if self.stats.dropped == 0:
            log.warning(
                "publish queue full (%d readings): dropping the oldest; the broker is away "
                "or too slow",
                self._cfg.queue_size,
            )
        while self._queued_readings > self._cfg.queue_size and len(self._queue) > 1:
            dropped = len(self._queue.popleft().points)
            self._queued_readings -= dropped
            self.stats.dropped += dropped

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; until cancelled."""
        first_failure = True
        while True:
            try:
                async with self._client() as client:
                    if not first_failure:
                        log.info(
                            "connected to MQTT broker %s:%d again", self._mqtt.host, self._mqtt.port
                        )
                    first_failure = True
                    self._backoff.reset()
                    self._connected.set()
                    await self._publish_loop(client)
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                self.stats.failures += 1
                if first_failure:
                    log.warning(
                        "MQTT broker %s:%d: %s; readings are kept and retried",
                        self._mqtt.host,
                        self._mqtt.port,
                        exc,
                    )
                    first_failure = False
                await asyncio.sleep(self._backoff.next_delay())

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def drain(self) -> None:
        """Send what is queued without waiting for full batches; return once the broker
        acknowledged all of it. The caller bounds the wait with ``asyncio.timeout``."""
        self._flushing = True
        while self._queue:
            self._wakeup.set()
            # Polling is fine here: this runs once, at shutdown.
            await asyncio.sleep(0.02)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self._mqtt.host,
            self._mqtt.port,
            username=self._mqtt.username,
            password=self._mqtt.password,
            identifier=self._mqtt.client_id or f"fieldlink-{self._site}-{self._agent}",
            keepalive=self._mqtt.keepalive,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
        )

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wait_for_batch()
            batch = self._take_batch()
            count = sum(len(g.points) for g in batch)
            try:
                payload = encode_groups(self._site, self._agent, batch)
                await client.publish(self._topic, payload, qos=1)
            except BaseException:
                # Not acknowledged: the batch goes back to the front, in order, to be retried.
                self._queue.extendleft(reversed(batch))
                self._queued_readings += count
                self._oldest_at = self._clock()
                raise
            self.stats.messages += 1
            self.stats.readings += count

    def _take_batch(self) -> list[Group]:
        """Whole groups from the front, up to max_batch readings (at least one group)."""
        batch: list[Group] = []
        taken = 0
        while self._queue:
            size = len(self._queue[0].points)
            if batch and taken + size > self._cfg.max_batch:
                break
            batch.append(self._queue.popleft())
            taken += size
        self._queued_readings -= taken
        self._oldest_at = self._clock() if self._queue else None
        return batch

    async def _wait_for_batch(self) -> None:
        while True:
            if self._queued_readings >= self._cfg.max_batch or (self._flushing and self._queue):
                return
            if self._queue and self._oldest_at is not None:
                remaining = self._oldest_at + self._cfg.max_delay - self._clock()
                if remaining <= 0:
                    return
            else:
                remaining = None
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return


async def publish_once(config: EdgeConfig, groups: list[Group]) -> None:
    """Publish readings in batches and wait for the broker's acknowledgements (`--once`)."""
    publisher = Publisher(config.agent.site, config.agent.id, config.mqtt, config.publish)
    publisher.submit(groups)
    async with asyncio.TaskGroup() as tasks:
        runner = tasks.create_task(publisher.run())
        try:
            async with asyncio.timeout(30):
                await publisher.drain()
        finally:
            runner.cancel()
