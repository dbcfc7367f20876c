"""The agent's MQTT session: one paho client in its network thread, bridged to asyncio.

What it adds to a bare client, and why:

* **Delivery is a PUBACK with a success code.** :meth:`AgentSession.publish` returns a future
  that resolves only on the broker's PUBACK. Under MQTT 5 a PUBACK can still say no: 0x87
  (not authorised — Mosquitto acknowledges publishes its ACL denied), 0x97 (quota exceeded),
  0x10 (no matching subscribers, so nobody will store it). Those fail the future with
  :class:`NotDelivered`, and the spool keeps the message.
* **A fixed client id and a persistent session** (clean start off, session expiry), so the
  confirmations the ingesters publish while the agent is away wait for it at the broker.
* **Birth and death.** A retained ``online`` status (version, config hash) is published on
  every connect, and the broker publishes the retained ``offline`` will when the agent
  vanishes, on ``<root>/v1/<site>/<agent>/status``.
* **TLS without fallback.** With ``mqtt.tls`` set the broker's certificate and host name are
  verified; a failed handshake is retried with backoff, never in plain TCP.
* **Reconnect** with capped exponential backoff (paho's, 1 → 30 s).

This is the only module of the agent that imports paho; its types and errors stay here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from config.edge import MqttSection

log = logging.getLogger("fieldlink.edge.mqtt")

#: PUBACK codes below 0x80 that still mean "nobody got it" for our purpose.
_NOT_STORED = {0x10: "no matching subscribers: no ingester is subscribed to the data topic"}


class NotDelivered(Exception):
    """The broker did not take responsibility for a message (negative PUBACK, or the
    connection was closed before the PUBACK)."""


class AgentSession:
    """Owns the paho client. Public methods run in the event loop; callbacks in paho's thread."""

    def __init__(
        self,
        config: MqttSection,
        *,
        client_id: str,
        status_topic: str,
        confirm_topic: str,
        birth: dict[str, Any],
        on_confirm: Callable[[bytes], None],
    ) -> None:
        self._config = config
        self._status_topic = status_topic
        self._confirm_topic = confirm_topic
        self._birth = orjson.dumps({"state": "online", **birth})
        self._on_confirm = on_confirm
        self._v5 = config.protocol == "5"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._lock = threading.Lock()  # (close() only: _pending lives in the event loop)
        self.connected = asyncio.Event()
        #: The broker's Receive Maximum (MQTT 5 CONNACK), 65535 if it named none.
        self.receive_maximum = 65535
        self._unreachable_logged = False
        #: Why the last connection attempt failed (for tools that wait on a connection).
        self.last_error: str | None = None

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            # check_hostname stays on: there is no insecure mode.
            client.tls_set_context(config.tls.ssl_context())
        will = orjson.dumps({"state": "offline"})
        client.will_set(status_topic, will, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(config.max_inflight)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

    @property
    def where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    def start(self) -> None:
        """Start connecting in paho's thread; returns at once (the broker may be down)."""
        self._loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {"keepalive": self._config.keepalive}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._config.session_expiry
            kwargs.update(clean_start=False, properties=props)
        self._client.connect_async(self._config.host, self._config.port, **kwargs)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Publish at QoS 1; the future resolves on a successful PUBACK."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        # Fix (issue 4): no lock held around paho's publish(). It takes paho's
        # _out_message_mutex, which paho's network thread holds while it calls _on_publish;
        # _on_publish used to take our lock, publish() held it around the paho call: the two
        # threads deadlocked as soon as a PUBACK arrived during a publish (seen while a backlog
        # drained: the agent froze for good). _pending is now touched only in the event loop
        # thread, and _on_publish hands the PUBACK over to it (_settle), which runs after this
        # registration since the loop is busy here.
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            future.set_exception(NotDelivered(paho.error_string(info.rc)))
            return future
        self._pending[info.mid] = future
        return future

    async def close(self, grace: float = 5.0) -> None:
        """Disconnect cleanly (the will is not sent then) and stop paho's thread."""
        if self._loop is None:
            return
        if self._client.is_connected():
            offline = orjson.dumps({"state": "offline"})
            info = self._client.publish(self._status_topic, offline, qos=1, retain=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, grace), grace + 1)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(NotDelivered("the session was closed"))
        self._loop = None

    # --- paho callbacks (network thread); each catches everything, as paho's thread dies on
    # an exception escaping a callback.

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
                log.warning(
                    "MQTT broker %s refused the connection: %s; retrying", self.where, reason
                )
                return
            maximum = getattr(properties, "ReceiveMaximum", None) if properties else None
            self.receive_maximum = int(maximum) if maximum else 65535
            self._unreachable_logged = False
            log.info(
                "connected to MQTT broker %s (session %s)",
                self.where,
                "resumed" if flags.session_present else "new",
            )
            client.publish(self._status_topic, self._birth, qos=1, retain=True)
            client.subscribe(self._confirm_topic, qos=1)
            self._call(self.connected.set)
        except Exception:
            log.exception("error in the MQTT connect callback")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:`, so the cause is still at hand.
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError):
            self.last_error = f"TLS handshake failed: {error}"
        elif error is not None:
            self.last_error = str(error) or type(error).__name__
        else:
            self.last_error = "connection failed"
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning(
                "cannot reach MQTT broker at %s (%s); readings stay spooled, retrying",
                self.where,
                self.last_error,
            )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            self._call(self.connected.clear)
            if reason.is_failure:
                log.warning("lost MQTT broker %s (%s); reconnecting", self.where, reason)
        except Exception:
            log.exception("error in the MQTT disconnect callback")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            # Settled in the event loop (see publish() for why not here under a lock).
            code = reason.value if isinstance(reason, ReasonCode) else 0
            self._call(self._settle, mid, code, str(reason))
        except Exception:
            log.exception("error in the MQTT publish callback")

    def _settle(self, mid: int, code: int, reason: str) -> None:
        """In the event loop: resolve the future of ``mid`` from its PUBACK's code."""
        future = self._pending.pop(mid, None)
        if future is None:
            return
        if code >= 0x80 or code in _NOT_STORED:
            detail = _NOT_STORED.get(code) or reason
            _fail(future, NotDelivered(f"PUBACK {code:#04x}: {detail}"))
        else:
            _succeed(future)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._call(self._on_confirm, bytes(message.payload))
        except Exception:
            log.exception("error in the MQTT message callback")

    def _call(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)


def _succeed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
