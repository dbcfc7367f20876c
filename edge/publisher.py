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

from config.edge import MqttSection, PublishSection
from edge.backoff import Backoff
from wire.codec import encode_batch
from wire.model import Reading
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
        self._queue: deque[Reading] = deque()
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
        return len(self._queue)

    def submit(self, readings: list[Reading]) -> None:
        if not readings:
            return
        if not self._queue:
            # The publisher may be idle with no deadline; the first reading starts the
            # max_delay clock, so it must be woken to arm it.
            self._oldest_at = self._clock()
            self._wakeup.set()
        self._queue.extend(readings)
        overflow = len(self._queue) - self._cfg.queue_size
        if overflow > 0:
            if self.stats.dropped == 0:
                log.warning(
                    "publish queue full (%d readings): dropping the oldest; the broker is "
                    "away or too slow",
                    self._cfg.queue_size,
                )
            for _ in range(overflow):
                self._queue.popleft()
            self.stats.dropped += overflow
        if len(self._queue) >= self._cfg.max_batch:
            self._wakeup.set()

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
            batch = [
                self._queue.popleft() for _ in range(min(self._cfg.max_batch, len(self._queue)))
            ]
            self._oldest_at = self._clock() if self._queue else None
            try:
                await client.publish(
                    self._topic, encode_batch(self._site, self._agent, batch), qos=1
                )
            except BaseException:
                # Not acknowledged: the batch goes back to the front, in order, to be retried.
                self._queue.extendleft(reversed(batch))
                self._oldest_at = self._clock()
                raise
            self.stats.messages += 1
            self.stats.readings += len(batch)

    async def _wait_for_batch(self) -> None:
        while True:
            if len(self._queue) >= self._cfg.max_batch or (self._flushing and self._queue):
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
