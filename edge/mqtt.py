"""The agent's MQTT session: one paho client in its network thread, bridged to asyncio.

What it adds to a bare client, and why:

* **Delivery is a PUBACK with a success code.** :meth:`AgentSession.publish` returns a future
  that resolves only on the broker's PUBACK. Under MQTT 5 a PUBACK can still say no: 0x87
  (not authorised — Mosquitto acknowledges publishes its ACL denied), 0x97 (quota exceeded),
  0x10 (no matching subscribers, so nobody will store it). Those fail the future with
  :class:`NotDelivered` (its ``code``, and a text naming the topic and the fix), and the
  spool keeps the message.
* **Refused connections say why.** A CONNACK refusal (bad user name or password, not
  authorised, protocol version) is logged once, as an error naming the broker and what to
  change, until a connection succeeds; a TLS failure after the handshake (a broker that
  demands a client certificate) is named too (``last_error``).
* **A fixed client id and a persistent session** (clean start off, session expiry), so the
  confirmations the ingesters publish while the agent is away wait for it at the broker.
* **Birth and death.** A retained ``online`` status (version, config hash) is published on
  every connect, and the broker publishes the retained ``offline`` will when the agent
  vanishes, on ``<root>/v1/<site>/<agent>/status``.
* **TLS without fallback.** With ``mqtt.tls`` set the broker's certificate and host name are
  verified; a failed handshake is retried with backoff, never in plain TCP.
* **Reconnect** with capped exponential backoff *with jitter* (:class:`edge.backoff.Backoff`,
  ``mqtt.reconnect_initial`` doubling up to ``mqtt.reconnect_max``, each wait drawn between
  half and all of it). paho's own backoff has no jitter: agents restarted together (a site
  power cut, a broker restart) would all come back in step. So before each of paho's waits
  (it always calls ``on_disconnect`` or ``on_connect_fail`` first) the next jittered delay
  is set as both paho's minimum and maximum. The backoff restarts only after a connection
  that lasted ``STABLE_CONNECTION_S``: a broker that accepts and then drops the agent at
  once (a duplicate client id) keeps backing off.

The client, its callbacks and the connection-state logging are the shared
:class:`fieldlink.mqtt_session.PahoSession` (also the ingester's); this module adds the rest
above. paho's types and errors do not leave these modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import paho.mqtt.client as paho

from config.edge import MqttSection
from edge.backoff import Backoff
from fieldlink.mqtt_session import PahoSession, SendRefused

log = logging.getLogger("fieldlink.edge.mqtt")

#: PUBACK codes below 0x80 that still mean "nobody got it" for our purpose.
NOT_STORED = frozenset({0x10})
NO_SUBSCRIBERS = 0x10
NOT_AUTHORISED = 0x87
QUOTA_EXCEEDED = 0x97

#: A connection lasting this long restarts the reconnect backoff at its first step.
STABLE_CONNECTION_S = 10.0


class NotDelivered(Exception):
    """The broker did not take responsibility for a message: a negative PUBACK (``code``
    is its reason code) or the connection closed before the PUBACK (``code`` is ``None``).
    The text names the topic and what to change."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def refusal_text(code: int, reason: str, topic: str, who: str) -> str:
    """Why a PUBACK with ``code`` means not delivered, and the fix, in one line."""
    head = f"PUBACK {code:#04x} ({reason}) for {topic}"
    if code == NOT_AUTHORISED:
        return (
            f"{head}: the broker's ACL does not let {who} publish to {topic}; grant it write "
            "access in the broker's ACL (Mosquitto: acl_file, then reload the broker with "
            "SIGHUP)"
        )
    if code == NO_SUBSCRIBERS:
        return (
            f"{head}: no ingester is subscribed to it, so nobody will store it; start an "
            "ingester (with a persistent session, so the broker keeps its messages while it "
            "is away)"
        )
    if code == QUOTA_EXCEEDED:
        return f"{head}: the broker refuses more messages from {who} for now (its quota)"
    return f"{head}: the broker refused the message"


def connack_text(code: int, reason: str, where: str, username: str | None) -> str:
    """A refused connection in one line: the broker, its reason and what to change."""
    head = f"MQTT broker {where} refused the connection ({reason}, CONNACK {code:#04x})"
    if code in (0x86, 0x87, 0x04, 0x05):
        if username is None:
            fix = "it requires a user name: set mqtt.username and mqtt.password"
        else:
            fix = (
                f"check mqtt.username ({username!r}) and mqtt.password against the broker's "
                "password file (Mosquitto: password_file)"
            )
        # Mosquitto 2 answers 0x87 "not authorised" (not 0x86) to a wrong password.
        return f"{head}: bad user name or password, or a client it does not allow; {fix}"
    if code in (0x84, 0x01):
        return f'{head}: set mqtt.protocol to "3.1.1" for this broker'
    if code in (0x85, 0x02):
        return f"{head}: it does not accept the client id; set mqtt.client_id"
    return head


class AgentSession(PahoSession):
    """The agent's session. Public methods run in the event loop; the ``_on_*`` hooks in
    paho's thread."""

    retry_note = "readings stay spooled, retrying"

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
        super().__init__(config, client_id=client_id, logger=log, v5=config.protocol == "5")
        self._settings = config
        self._status_topic = status_topic
        self._confirm_topic = confirm_topic
        self._birth = orjson.dumps({"state": "online", **birth})
        self._confirm_handler = on_confirm
        #: mid → (future, topic) until its PUBACK; touched only in the event loop.
        self._pending: dict[int, tuple[asyncio.Future[None], str]] = {}
        self.connected = asyncio.Event()
        #: The broker's Receive Maximum (MQTT 5 CONNACK), 65535 if it named none.
        self.receive_maximum = 65535
        #: The last CONNACK refusal logged (logged once until a connection succeeds).
        self._refusal_logged: str | None = None
        #: Why the last connection attempt failed (for tools that wait on a connection).
        self.last_error: str | None = None
        #: paho's last transport error (a TLS alert after the handshake), from its log.
        self._transport_error: str | None = None
        self._backoff = Backoff(initial=config.reconnect_initial, maximum=config.reconnect_max)

        client = self._client
        will = orjson.dumps({"state": "offline"})
        client.will_set(status_topic, will, qos=1, retain=True)
        # Replaced before every wait (_set_next_delay); this only bounds a wait paho might
        # make without telling us first.
        _apply_delay(client, config.reconnect_max)
        client.max_inflight_messages_set(config.max_inflight)
        client.on_log = self._on_log

    @property
    def who(self) -> str:
        """This client as the broker's ACL sees it."""
        user = self._config.username
        return f"client {self._client_id}" + (f" (user {user})" if user is not None else "")

    def start(self) -> None:
        """Start connecting in paho's thread; returns at once (the broker may be down)."""
        self._start(session_expiry=self._settings.session_expiry)

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Publish at QoS 1; the future resolves on a successful PUBACK."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        # Fix (issue 4): no lock held around paho's publish(). It takes paho's
        # _out_message_mutex, which paho's network thread holds while it calls the publish
        # callback; that callback used to take our lock, publish() held it around the paho
        # call: the two threads deadlocked as soon as a PUBACK arrived during a publish (seen
        # while a backlog drained: the agent froze for good). _pending is now touched only in
        # the event loop thread, and _on_published hands the PUBACK over to it (_settle),
        # which runs after this registration since the loop is busy here.
        try:
            mid = self._send(topic, payload)
        except SendRefused as exc:
            future.set_exception(NotDelivered(str(exc)))
            return future
        self._pending[mid] = (future, topic)
        return future

    async def close(self, grace: float = 5.0) -> None:
        """Disconnect cleanly (the will is not sent then) and stop paho's thread."""
        if self._loop is None:
            return
        self._closing = True
        if self._client.is_connected():
            offline = orjson.dumps({"state": "offline"})
            info = self._client.publish(self._status_topic, offline, qos=1, retain=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, grace), grace + 1)
        await self._disconnect(grace)
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(NotDelivered("the session was closed"))
        self._loop = None

    # --- hooks (paho's network thread) ------------------------------------------------------

    def _on_refused(self, code: int, reason: str) -> None:
        text = connack_text(code, reason, self.where, self._config.username)
        self.last_error = text
        if self._refusal_logged != text:
            self._refusal_logged = text
            log.error(
                "%s; readings stay spooled, retrying with backoff (up to %g s; logged "
                "once until connected)",
                text,
                self._settings.reconnect_max,
            )

    def _on_accepted(self, session_present: bool, receive_maximum: int | None) -> None:
        self.receive_maximum = receive_maximum or 65535
        self._refusal_logged = None
        self.last_error = self._transport_error = None
        self._client.publish(self._status_topic, self._birth, qos=1, retain=True)
        self._subscribe(self._confirm_topic)
        self._call(self.connected.set)

    def _on_unreachable(self, cause: str) -> None:
        self.last_error = cause
        self._set_next_delay()

    def _on_closed(self, connected_at: float | None) -> None:
        self._call(self.connected.clear)
        if self._closing:
            return
        if connected_at is None:
            # Refused or cut before a CONNACK: the CONNACK text is logged already; else
            # what paho logged (a broker demanding a client certificate fails after the
            # TLS handshake, at the first read).
            if self._refusal_logged is None:
                self.last_error = (
                    self._transport_error or "the broker closed the connection before accepting it"
                )
                self._warn_once(
                    "MQTT broker %s closed the connection before accepting it (%s); "
                    "readings stay spooled, retrying",
                    self.where,
                    self.last_error,
                )
        elif time.monotonic() - connected_at >= STABLE_CONNECTION_S:
            self._backoff.reset()
        self._set_next_delay()

    def _set_next_delay(self) -> None:
        """Set paho's next reconnect wait to a jittered step of our backoff (paho waits
        after every on_disconnect/on_connect_fail of a connection it will retry)."""
        delay = self._backoff.next_delay()
        _apply_delay(self._client, delay)
        log.debug("MQTT broker %s: next connection attempt in %.2f s", self.where, delay)

    def _on_log(self, client: paho.Client, userdata: Any, level: int, buf: str) -> None:
        # paho reports a failed socket read (e.g. a TLS alert from a broker that wants a
        # client certificate) only here; keep it for last_error.
        if level == paho.MQTT_LOG_ERR:
            if "certificate required" in buf.lower():
                buf += (
                    "; the broker requires a client certificate (mutual TLS): set "
                    "mqtt.tls.cert_file and mqtt.tls.key_file"
                )
            self._transport_error = buf

    def _on_published(self, mid: int, code: int, reason: str) -> None:
        # Settled in the event loop (see publish() for why not here under a lock).
        self._call(self._settle, mid, code, reason)

    def _settle(self, mid: int, code: int, reason: str) -> None:
        """In the event loop: resolve the future of ``mid`` from its PUBACK's code."""
        pending = self._pending.pop(mid, None)
        if pending is None:
            return
        future, topic = pending
        if code >= 0x80 or code in NOT_STORED:
            text = refusal_text(code, reason, topic, self.who)
            _fail(future, NotDelivered(text, code))
        else:
            _succeed(future)

    def _on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self._call(self._confirm_handler, payload)


def _apply_delay(client: paho.Client, delay: float) -> None:
    """Make paho's next reconnect wait exactly ``delay`` seconds. paho annotates the delays
    as int but only adds and compares them (paho 2.2 ``_reconnect_wait``), so fractions of
    a second work."""
    client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]


def _succeed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
