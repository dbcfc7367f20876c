"""One paho MQTT client in its network thread, bridged to asyncio: the plumbing the agent's
session (``edge/mqtt.py``) and the ingester's link (``cloud/mqtt.py``) share.

:class:`PahoSession` builds the client (MQTT 5 or 3.1.1, a fixed client id, credentials,
verified TLS without plain-TCP fallback), connects with a persistent session (clean start off,
session expiry), runs paho's network thread, and owns paho's callbacks. Each callback catches
everything and logs it — paho lets an exception escape a callback and end its network thread —
logs the connection state (connected, unreachable once until connected, lost), and hands plain
values (reason codes as ``int`` and text, payloads as ``bytes``) to a hook that the subclass
overrides. The hooks run in paho's thread; :meth:`PahoSession._call` hands work over to the
event loop.

What each side adds stays with it: the agent its birth/will, jittered reconnect, PUBACK reason
codes and paho's log; the ingester manual acknowledgement, the shared subscription and its
bounded hand-over queue.

paho is imported only here and in those two modules; its types and errors do not leave them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from config.mqtt import BrokerSection


class SendRefused(Exception):
    """paho did not keep a message for sending (the text is paho's reason)."""


class PahoSession:
    """Owns the paho client. Public methods run in the event loop; the ``_on_*`` hooks in
    paho's network thread (each is called inside the callback's catch-all)."""

    #: What the "cannot reach" warning says happens meanwhile.
    retry_note = "retrying"

    def __init__(
        self,
        config: BrokerSection,
        *,
        client_id: str,
        logger: logging.Logger,
        v5: bool = True,
        manual_ack: bool = False,
    ) -> None:
        self._config = config
        self._client_id = client_id
        self._log = logger
        self._v5 = v5
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set by the subclass's close(): a disconnect then is not "lost".
        self._closing = False
        #: "Cannot reach" is logged once until a connection succeeds.
        self._unreachable_logged = False
        #: Monotonic time of the last successful CONNACK; None while not connected.
        self._connected_at: float | None = None
        #: Connections the broker accepted since start (written in paho's thread; an int
        #: store is atomic, and readers only report it).
        self.connections = 0
        self._disconnected = threading.Event()

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=manual_ack,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            # Verified TLS (certificate and host name; check_hostname stays on, there is no
            # insecure mode); a failed handshake is retried, never replaced by plain TCP.
            client.tls_set_context(config.tls.ssl_context())
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_subscribe = self._paho_subscribe
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        self._client = client

    @property
    def is_connected(self) -> bool:
        """True from the broker's CONNACK until the connection closes."""
        return self._connected_at is not None

    @property
    def where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    # --- event loop ---------------------------------------------------------------------------

    def _start(self, *, session_expiry: int, receive_maximum: int | None = None) -> None:
        """Start connecting in paho's thread; returns at once (the broker may be down).
        A ``ValueError`` means paho cannot use the settings (the caller words it)."""
        self._loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {"keepalive": self._config.keepalive}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
            # The session (subscriptions, unacknowledged and queued messages) survives a
            # restart for this long; clean_start=False resumes it.
            props.SessionExpiryInterval = session_expiry
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            kwargs.update(clean_start=False, properties=props)
        self._client.connect_async(self._config.host, self._config.port, **kwargs)
        self._client.loop_start()

    def _send(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the message id. paho keeps the message (and sends it
        on reconnect when not connected) unless this raises :class:`SendRefused`; paho's
        ``ValueError`` (a bad topic) passes through."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise SendRefused(paho.error_string(info.rc))
        return info.mid

    def _ack(self, mid: int, qos: int) -> bool:
        """Acknowledge a received message (with ``manual_ack``); False if paho could not."""
        return self._client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _subscribe(self, topic: str) -> None:
        self._client.subscribe(topic, qos=1)

    async def _disconnect(self, grace: float) -> None:
        """Disconnect cleanly (the will is not sent then), wait (bounded) for paho to see
        it, and stop paho's thread."""
        self._disconnected.clear()
        rc = self._client.disconnect()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.to_thread(self._disconnected.wait, grace)
        await asyncio.to_thread(self._client.loop_stop)

    def _call(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` in the event loop, from paho's thread (in order)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to hand over
            loop.call_soon_threadsafe(callback, *args)

    def _warn_once(self, message: str, *args: object) -> None:
        """Log a "cannot connect" warning once until a connection succeeds."""
        if not self._unreachable_logged:
            self._unreachable_logged = True
            self._log.warning(message, *args)

    # --- hooks (paho's thread), overridden by the subclass ----------------------------------

    def _on_accepted(self, session_present: bool, receive_maximum: int | None) -> None:
        """CONNACK success; ``receive_maximum`` is the broker's (MQTT 5), if it named one."""

    def _on_refused(self, code: int, reason: str) -> None:
        """CONNACK failure ``code`` (paho retries unless the session stops)."""

    def _on_unreachable(self, cause: str) -> None:
        """A connection attempt failed before MQTT (refused socket, TLS handshake)."""

    def _on_closed(self, connected_at: float | None) -> None:
        """The connection ended; ``connected_at`` is when it was accepted (None: never)."""

    def _on_subscribed(self, refusals: list[str]) -> None:
        """SUBACK; ``refusals`` are the failure reasons it carries."""

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """A message arrived."""

    def _on_published(self, mid: int, code: int, reason: str) -> None:
        """PUBACK of ``mid``: its reason ``code`` (0 under MQTT 3.1.1) and text."""

    # --- paho callbacks (paho's thread) -----------------------------------------------------

    def _paho_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                self._on_refused(reason.value, str(reason))
                return
            self._unreachable_logged = False
            self._connected_at = time.monotonic()
            self.connections += 1
            self._log.info(
                "connected to MQTT broker %s as %r (session %s)",
                self.where,
                self._client_id,
                "resumed" if flags.session_present else "new",
            )
            maximum = getattr(properties, "ReceiveMaximum", None) if properties else None
            self._on_accepted(flags.session_present, int(maximum) if maximum else None)
        except Exception:
            self._log.exception("error in the MQTT connect callback")

    def _paho_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        try:
            # paho calls this from inside its `except OSError:`, so the cause is still at hand.
            error = sys.exc_info()[1]
            if isinstance(error, ssl.SSLError):
                cause = f"TLS handshake failed: {error}"
            elif error is not None:
                cause = str(error) or type(error).__name__
            else:
                cause = "connection failed"
            self._warn_once(
                "cannot reach MQTT broker at %s (%s); %s", self.where, cause, self.retry_note
            )
            self._on_unreachable(cause)
        except Exception:
            self._log.exception("error in the MQTT connect callback")

    def _paho_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            connected_at, self._connected_at = self._connected_at, None
            self._disconnected.set()
            if reason.is_failure and connected_at is not None and not self._closing:
                self._log.warning("lost MQTT broker %s (%s); reconnecting", self.where, reason)
            self._on_closed(connected_at)
        except Exception:
            self._log.exception("error in the MQTT disconnect callback")

    def _paho_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            self._on_subscribed([str(r) for r in reasons if r.is_failure])
        except Exception:
            self._log.exception("error in the MQTT subscribe callback")

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = "<topic is not UTF-8>"  # brokers refuse these; fails validation anyway
            self._on_message(topic, bytes(message.payload), message.mid, message.qos)
        except Exception:
            self._log.exception("error in the MQTT message callback")

    def _paho_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            code = reason.value if isinstance(reason, ReasonCode) else 0
            self._on_published(mid, code, str(reason))
        except Exception:
            self._log.exception("error in the MQTT publish callback")
