"""The ingester's MQTT side: one paho client, its network thread, and the hand-over of messages
to the asyncio loop.

paho runs its network loop in its own thread (``loop_start``). Each received message is
stamped with the *session generation* and handed to the event loop with
``call_soon_threadsafe`` into an :class:`asyncio.Queue`. At most ``mqtt.receive_maximum``
messages wait there: the client announces that number as its MQTT 5 Receive Maximum, so a
compliant broker stops sending once that many are unacknowledged (messages are acknowledged
only after InfluxDB accepted them). Mosquitto 2.0.11 does not always keep to it, so the hand-over
also holds a semaphore of that many slots: when all are taken, the network thread waits for one
— it stops reading the socket and the broker keeps the surplus in its own queue. A wait longer
than the keep-alive costs the connection; the session survives and its unacknowledged
messages come back on the next one.

Acknowledgement (``manual_ack=True``) is tied to the connection a message came on. After a
connection is lost the broker redelivers every unacknowledged message on the next connection,
with the *same packet ids*; acknowledging an old message on the new connection could release
a different message that reused the id. So :meth:`MqttLink.ack` drops acks of earlier
generations, and messages of an earlier generation still waiting in the queue are discarded.
A redelivered message may be written twice; identical points overwrite each other.

The paho client, its callbacks and the connection-state logging are the shared
:class:`fieldlink.mqtt_session.PahoSession`; this module adds manual acknowledgement, the
shared subscription and the bounded hand-over, without importing paho itself. paho's types and
errors do not leave the session module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from cloud.errors import MqttError, MqttRefusedError
from config.cloud import MqttSection
from fieldlink.mqtt_session import PahoSession, SendRefused
from wire.topics import data_subscription

log = logging.getLogger(__name__)

#: CONNACK / SUBACK reason codes that retrying cannot fix.
_FATAL_CODES = {
    0x84: "the broker does not speak MQTT 5",
    0x85: "the broker refused mqtt.client_id",
    0x86: "bad mqtt.username or mqtt.password",
    0x87: "not authorised; check mqtt.username/password and the broker's ACL",
    0x8A: "the client is banned",
    0x8C: "bad authentication method",
}


@dataclass(frozen=True, slots=True)
class Incoming:
    """One MQTT message as the ingester sees it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    #: Wall-clock arrival time, for dead letters and logs.
    received_ns: int
    #: Generation of the connection the message arrived on (see the module docstring).
    session: int


class MqttLink(PahoSession):
    """The ingester's session. Methods other than the ``_on_*`` hooks run in the event loop."""

    def __init__(self, config: MqttSection) -> None:
        super().__init__(config, client_id=config.client_id, logger=log, manual_ack=True)
        self._settings = config
        self._subscription = data_subscription(root=config.topic_root)
        if config.group is not None:
            # MQTT 5 shared subscription: the broker hands each message to one member of the
            # group, so N ingesters with one group name share the load.
            self._subscription = f"$share/{config.group}/{self._subscription}"
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        # Bounds the queue (see the module docstring); released when a message is taken.
        self._slots = threading.Semaphore(config.receive_maximum)
        self._waiting_logged = False
        self._lock = threading.Lock()  # guards _session against the network thread
        self._session = 0
        self._subscribed = asyncio.Event()
        self._failed = asyncio.Event()
        self._fatal: MqttRefusedError | None = None
        self._unconfirmed = 0  # dead-letter publishes waiting for their PUBACK
        self._confirmed = asyncio.Event()
        self._confirmed.set()
        self._started = False
        self.discarded = 0  # messages of a lost connection dropped from the queue
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)

    # --- used by the ingester (event loop thread) -------------------------------------------

    def start(self) -> None:
        """Start connecting in paho's thread; returns at once (the broker may be down)."""
        try:
            self._start(
                session_expiry=self._settings.session_expiry,
                receive_maximum=self._settings.receive_maximum,
            )
        except ValueError as exc:
            raise MqttRefusedError(f"cannot use MQTT broker {self.where}: {exc}") from exc
        self._started = True

    async def wait_subscribed(self) -> None:
        """Return once the subscription is confirmed; raise :class:`MqttRefusedError` if fatal."""
        waiters = [
            asyncio.ensure_future(self._subscribed.wait()),
            asyncio.ensure_future(self._failed.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    @property
    def failed(self) -> asyncio.Event:
        """Set when the broker refused us for good; :meth:`raise_if_failed` says why."""
        return self._failed

    def take_nowait(self) -> Incoming | None:
        """The next received message, or None if none is waiting."""
        try:
            message = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        self._slots.release()
        return message

    async def take(self) -> Incoming:
        """Wait for the next received message. Safe to cancel: nothing is taken then."""
        message = await self._queue.get()
        self._slots.release()
        return message

    def ack(self, message: Incoming) -> bool:
        """Acknowledge ``message`` if its connection is still the current one."""
        with self._lock:
            if message.session != self._session:
                return False  # the broker redelivers it on the new connection
            return self._ack(message.mid, message.qos)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1. paho keeps the message and resends it after a reconnect; the
        close() drain waits for its PUBACK."""
        self._unconfirmed += 1
        self._confirmed.clear()
        try:
            self._send(topic, payload)
        except (ValueError, RuntimeError, SendRefused) as exc:
            self._publish_confirmed()
            raise MqttError(f"cannot publish to {topic}: {exc}") from exc

    async def close(self, grace: float = 5.0) -> None:
        """Wait (bounded) for outstanding publishes, disconnect cleanly, stop the thread."""
        if not self._started:
            return
        self._started = False
        self._closing = True  # a network thread waiting for a slot gives up
        if self._client.is_connected() and self._fatal is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._confirmed.wait(), grace)
            if self._unconfirmed:
                log.warning(
                    "%d dead-letter message(s) not confirmed by the broker at shutdown",
                    self._unconfirmed,
                )
        await self._disconnect(grace)

    # --- hooks (paho's network thread) ------------------------------------------------------

    def _on_accepted(self, session_present: bool, receive_maximum: int | None) -> None:
        with self._lock:
            self._session += 1
        self._call(self._new_session)
        # Subscribing again on a resumed session is harmless and covers a broker that lost
        # its session store.
        self._subscribe(self._subscription)

    def _on_refused(self, code: int, reason: str) -> None:
        if code in _FATAL_CODES:
            self._call(
                self._set_fatal,
                MqttRefusedError(
                    f"MQTT broker {self.where} refused the connection ({reason}): "
                    f"{_FATAL_CODES[code]}"
                ),
            )
        else:
            log.warning("MQTT broker %s refused the connection: %s; retrying", self.where, reason)

    def _on_closed(self, connected_at: float | None) -> None:
        with self._lock:
            self._session += 1

    def _on_subscribed(self, refusals: list[str]) -> None:
        if refusals:
            self._call(
                self._set_fatal,
                MqttRefusedError(
                    f"MQTT broker {self.where} refused the subscription to "
                    f"{self._subscription}: {refusals[0]} (check the broker's ACL)"
                ),
            )
            return
        log.info("subscribed to %s at QoS 1", self._subscription)
        self._call(self._subscribed.set)

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        incoming = Incoming(
            topic=topic,
            payload=payload,
            mid=mid,
            qos=qos,
            received_ns=time.time_ns(),
            session=self._session,  # written only by this thread
        )
        while not self._slots.acquire(timeout=0.5):
            if self._closing:
                return  # not acknowledged: the broker redelivers it to the next run
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info(
                    "%d messages wait to be written; pausing reads from the broker until "
                    "some are (mqtt.receive_maximum)",
                    self._settings.receive_maximum,
                )
        self._call(self._queue.put_nowait, incoming)

    def _on_published(self, mid: int, code: int, reason: str) -> None:
        self._call(self._publish_confirmed)

    # --- run in the event loop, scheduled from the network thread ---------------------------

    def _new_session(self) -> None:
        # Scheduled by on_connect before any message of the new connection is handed over
        # (call_soon_threadsafe keeps order), so everything still queued came on an earlier
        # connection: the broker resends it with the same packet ids, and its acks would be
        # dropped anyway.
        dropped = 0
        while self.take_nowait() is not None:
            dropped += 1
        if dropped:
            self.discarded += dropped
            log.info(
                "dropped %d queued message(s) of the lost connection; the broker redelivers them",
                dropped,
            )

    def _set_fatal(self, error: MqttRefusedError) -> None:
        if self._fatal is None:
            self._fatal = error
        self._failed.set()

    def _publish_confirmed(self) -> None:
        self._unconfirmed = max(0, self._unconfirmed - 1)
        if self._unconfirmed == 0:
            self._confirmed.set()
