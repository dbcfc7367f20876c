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

This is the only module that imports paho; its types and errors do not leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.errors import MqttError, MqttRefusedError
from config.cloud import MqttSection
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


class MqttLink:
    """Owns the paho client. Methods other than the paho callbacks run in the event loop."""

    def __init__(self, config: MqttSection) -> None:
        self._config = config
        self._subscription = data_subscription(root=config.topic_root)
        if config.group is not None:
            # MQTT 5 shared subscription: the broker hands each message to one member of the
            # group, so N ingesters with one group name share the load.
            self._subscription = f"$share/{config.group}/{self._subscription}"
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        # Bounds the queue (see the module docstring); released when a message is taken.
        self._slots = threading.Semaphore(config.receive_maximum)
        self._closing = False
        self._waiting_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards _session against the network thread
        self._session = 0
        self._subscribed = asyncio.Event()
        self._failed = asyncio.Event()
        self._fatal: MqttRefusedError | None = None
        self._disconnected = threading.Event()
        self._unconfirmed = 0  # dead-letter publishes waiting for their PUBACK
        self._confirmed = asyncio.Event()
        self._confirmed.set()
        self._unreachable_logged = False
        self._connected = False  # network thread only: for log lines
        self._started = False
        self.discarded = 0  # messages of a lost connection dropped from the queue

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            # Verified TLS (certificate and host name); a failed handshake is retried, never
            # replaced by plain TCP.
            client.tls_set_context(config.tls.ssl_context())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client

    @property
    def where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    # --- used by the ingester (event loop thread) -------------------------------------------

    def start(self) -> None:
        """Start connecting in paho's thread; returns at once (the broker may be down)."""
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
        # The session (subscription + unacknowledged and queued messages) survives a restart
        # of the ingester for this long; clean_start=False below resumes it.
        props.SessionExpiryInterval = self._config.session_expiry
        props.ReceiveMaximum = self._config.receive_maximum
        try:
            self._client.connect_async(
                self._config.host,
                self._config.port,
                keepalive=self._config.keepalive,
                clean_start=False,
                properties=props,
            )
        except ValueError as exc:
            raise MqttRefusedError(f"cannot use MQTT broker {self.where}: {exc}") from exc
        self._client.loop_start()
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
            rc = self._client.ack(message.mid, message.qos)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1. paho keeps the message and resends it after a reconnect; the
        close() drain waits for its PUBACK."""
        self._unconfirmed += 1
        self._confirmed.clear()
        try:
            info = self._client.publish(topic, payload, qos=1)
        except (ValueError, RuntimeError) as exc:
            self._publish_confirmed()
            raise MqttError(f"cannot publish to {topic}: {exc}") from exc
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN: queued, sent on reconnect. Anything else: paho did not keep it.
            self._publish_confirmed()
            raise MqttError(f"cannot publish to {topic}: {paho.error_string(info.rc)}")

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
        self._disconnected.clear()
        rc = self._client.disconnect()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.to_thread(self._disconnected.wait, grace)
        await asyncio.to_thread(self._client.loop_stop)

    # --- paho callbacks (network thread) ----------------------------------------------------
    # paho lets an exception escape a callback and end its network thread, so each callback
    # catches everything and logs it.

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                self._connect_refused(reason)
                return
            with self._lock:
                self._session += 1
            self._connected = True
            self._unreachable_logged = False
            log.info(
                "connected to MQTT broker %s as %r (session %s)",
                self.where,
                self._config.client_id,
                "resumed" if flags.session_present else "new",
            )
            self._call(self._new_session)
            # Subscribing again on a resumed session is harmless and covers a broker that lost
            # its session store.
            client.subscribe(self._subscription, qos=1)
        except Exception:
            log.exception("error in the MQTT connect callback")

    def _connect_refused(self, reason: ReasonCode) -> None:
        code = reason.value
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

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("cannot reach MQTT broker at %s; retrying", self.where)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                self._session += 1
            was_connected, self._connected = self._connected, False
            self._disconnected.set()
            if reason.is_failure and self._started and was_connected:
                log.warning("lost the MQTT broker %s (%s); reconnecting", self.where, reason)
        except Exception:
            log.exception("error in the MQTT disconnect callback")

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            failed = [r for r in reasons if r.is_failure]
            if failed:
                self._call(
                    self._set_fatal,
                    MqttRefusedError(
                        f"MQTT broker {self.where} refused the subscription to "
                        f"{self._subscription}: {failed[0]} (check the broker's ACL)"
                    ),
                )
                return
            log.info("subscribed to %s at QoS 1", self._subscription)
            self._call(self._subscribed.set)
        except Exception:
            log.exception("error in the MQTT subscribe callback")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = "<topic is not UTF-8>"  # brokers refuse these; fails validation anyway
            incoming = Incoming(
                topic=topic,
                payload=bytes(message.payload),
                mid=message.mid,
                qos=message.qos,
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
                        self._config.receive_maximum,
                    )
            self._call(self._queue.put_nowait, incoming)
        except Exception:
            log.exception("error in the MQTT message callback")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self._call(self._publish_confirmed)

    # --- run in the event loop, scheduled from the network thread ---------------------------

    def _call(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to hand over
            loop.call_soon_threadsafe(callback, *args)

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
