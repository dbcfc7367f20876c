"""The agent's health endpoint: ``/metrics`` and ``/healthz`` (docs/health.md).

Imported only when ``health.listen`` is set. Every value is read when a scrape arrives from
what the agent keeps anyway: each device's :class:`~edge.scheduler.DeviceStats`, its
breaker and failure state, the frame counters of programs that keep them
(:class:`~drivers.base.FrameCounting`), the publisher's counters and its spool's.

``/healthz`` answers whether the agent keeps its promise that readings are not lost: 200
while the MQTT session is up, and while it is down as long as the spool takes the readings
(it is open and below 90 % of ``spool.max_bytes`` and of ``spool.max_age``); 503 when the
spool is not open (starting, stopping) or nearly full while the broker is away — the caps
are about to drop (or are dropping) the oldest readings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from config.edge import EdgeConfig
from drivers.base import FrameCounting
from edge.publisher import Publisher
from edge.scheduler import BusWorker, ScheduledDevice
from edge.streamer import StreamWorker
from fieldlink import __version__
from fieldlink.metrics import Family, ListenError, MetricsServer, Registry, counter, gauge

__all__ = ["NEARLY_FULL", "AgentHealth", "ListenError"]

#: Share of a spool cap (bytes or age) past which, with the broker away, /healthz says 503.
NEARLY_FULL = 0.9

DEVICE = ("device", "bus", "driver")
QUALITIES = ("good", "bad", "uncertain")


class AgentHealth:
    """The endpoint of one agent run: ``await start()`` (raises
    :class:`~fieldlink.metrics.ListenError`), ``await close()``."""

    def __init__(
        self,
        config: EdgeConfig,
        workers: Sequence[BusWorker | StreamWorker],
        publisher: Publisher,
    ) -> None:
        address = config.health.address
        assert address is not None, "health.listen is not set"
        self._config = config
        self._workers = workers
        self._publisher = publisher
        self._drivers = {bus.name: bus.driver for bus in config.buses}
        registry = Registry()
        registry.register(self.agent_families)
        registry.register(self.device_families)
        registry.register(self.publisher_families)
        self.server = MetricsServer(registry, *address, health=self.check)

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    # --- /metrics -------------------------------------------------------------------------------

    def agent_families(self) -> list[Family]:
        agent = self._config.agent
        info = gauge(
            "fieldlink_agent_info",
            "Always 1; the labels say which agent and version this is.",
            "version",
            "agent",
            "site",
        )
        return [info.add(1, __version__, agent.id, agent.site)]

    def device_families(self) -> list[Family]:
        up = gauge(
            "fieldlink_device_up",
            "1 while the device answers its polls (polled) or sends frames (streaming); 0 "
            "while it fails, and before its first success.",
            *DEVICE,
        )
        last_success = gauge(
            "fieldlink_device_last_success_timestamp_seconds",
            "Unix time of the device's last success (a poll fully answered, or a frame); 0 "
            "before the first.",
            *DEVICE,
        )
        readings = counter(
            "fieldlink_device_readings_total",
            "Readings the device yielded, by quality (bad ones carry their reason).",
            *DEVICE,
            "quality",
        )
        failures = counter(
            "fieldlink_device_failures_total",
            "Polls (polled) or watchdog reports (streaming: silence, lost link) that brought "
            "no data, by reason (timeout, disconnected, exception N, frame error, ...).",
            *DEVICE,
            "reason",
        )
        polls = counter(
            "fieldlink_device_polls_total",
            "Polls due (polled devices), those answered from an open breaker included.",
            *DEVICE,
        )
        requests = counter(
            "fieldlink_device_requests_total",
            "Requests sent to the device on its bus (polled devices).",
            *DEVICE,
        )
        missed = counter(
            "fieldlink_device_missed_polls_total",
            "Poll slots skipped because the bus was still busy (polled devices).",
            *DEVICE,
        )
        breaker = gauge(
            "fieldlink_device_breaker_open",
            "1 while the device's circuit breaker is open: it timed out and is asked again "
            "only once per backoff period (polled devices).",
            *DEVICE,
        )
        good_frames = counter(
            "fieldlink_device_good_frames_total",
            "Frames read and decoded without trouble (devices whose driver counts frames).",
            *DEVICE,
        )
        frame_errors = counter(
            "fieldlink_device_frame_errors_total",
            "Frames with trouble, by kind: checksum, parse (devices whose driver counts frames).",
            *DEVICE,
            "kind",
        )
        dropped_bytes = counter(
            "fieldlink_device_frame_dropped_bytes_total",
            "Bytes dropped outside frames, by kind: noise (between frames), overlong (a "
            "frame past max_length).",
            *DEVICE,
            "kind",
        )
        connected = gauge(
            "fieldlink_bus_connected",
            "1 while the bus's link (TCP connection, serial port) is open.",
            "bus",
            "driver",
        )
        for worker in self._workers:
            driver = self._drivers.get(worker.name, "")
            connected.add(int(worker.connected), worker.name, driver)
            for device in worker.devices:
                labels = (device.config.name, worker.name, driver)
                stats = device.stats
                up.add(int(device.failing is None and stats.last_success_ns > 0), *labels)
                last_success.add(stats.last_success_ns / 1e9, *labels)
                for quality in (*QUALITIES, *sorted(set(stats.readings) - set(QUALITIES))):
                    readings.add(stats.readings.get(quality, 0), *labels, quality)
                for reason, count in sorted(stats.failures.items()):
                    failures.add(count, *labels, reason)
                if isinstance(device, ScheduledDevice):
                    polls.add(stats.polls, *labels)
                    requests.add(stats.requests, *labels)
                    missed.add(stats.skipped_polls, *labels)
                    breaker.add(int(device.breaker.retry_at is not None), *labels)
                program = device.program
                if isinstance(program, FrameCounting):
                    counts = program.frame_counts()
                    good_frames.add(counts.good, *labels)
                    for wording, count in counts.trouble.items():
                        kind, in_bytes = frame_kind(wording)
                        (dropped_bytes if in_bytes else frame_errors).add(count, *labels, kind)
        return [
            up,
            last_success,
            readings,
            failures,
            polls,
            requests,
            missed,
            breaker,
            good_frames,
            frame_errors,
            dropped_bytes,
            connected,
        ]

    async def publisher_families(self) -> list[Family]:
        publisher = self._publisher
        stats = publisher.stats
        spool_cfg = self._config.spool
        out = [
            gauge(
                "fieldlink_mqtt_connected", "1 while the MQTT session with the broker is up."
            ).add(int(publisher.mqtt_connected)),
            counter(
                "fieldlink_mqtt_reconnects_total",
                "Connections the broker accepted after the first one.",
            ).add(publisher.mqtt_reconnects),
            counter(
                "fieldlink_publish_messages_total",
                "Messages the broker accepted (a positive PUBACK), republished ones included.",
            ).add(stats.messages),
            counter(
                "fieldlink_publish_readings_total", "Readings in the messages the broker accepted."
            ).add(stats.readings),
            counter(
                "fieldlink_publish_republished_total",
                "Messages published again (not confirmed by the cloud within "
                "spool.confirm_timeout).",
            ).add(stats.republished),
            counter(
                "fieldlink_publish_not_delivered_total",
                "Publishes without a positive PUBACK (refused, or the connection ended first); "
                "the messages stay spooled.",
            ).add(stats.not_delivered),
            counter(
                "fieldlink_publish_confirmed_total",
                "Messages the cloud confirmed stored, and so deleted from the spool.",
            ).add(stats.confirmed),
            gauge(
                "fieldlink_publish_queue_readings",
                "Readings in memory waiting to be written to the spool.",
            ).add(publisher.pending),
            counter(
                "fieldlink_publish_queue_dropped_readings_total",
                "Readings dropped from the in-memory queue because the spool (disk) could not "
                "keep up.",
            ).add(stats.dropped),
            counter(
                "fieldlink_spool_dropped_readings_total",
                "Readings the spool's caps (max_bytes, max_age) dropped; also reported to the "
                "cloud as a gap record.",
            ).add(stats.spool_dropped),
            gauge("fieldlink_spool_max_bytes", "The spool's size cap (spool.max_bytes).").add(
                spool_cfg.max_bytes
            ),
        ]
        refused = counter(
            "fieldlink_publish_refused_total",
            "Publishes the broker refused in its PUBACK, by reason code (0x87 not authorised, "
            "0x10 no subscribers, 0x97 quota exceeded).",
            "code",
        )
        for code, count in sorted(stats.refused.items()):
            refused.add(count, f"{code:#04x}")
        out.append(refused)
        spool = publisher.spool_stats
        if spool is not None:
            oldest = await publisher.spool_oldest_ns()
            age = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e9)
            out += [
                gauge(
                    "fieldlink_spool_messages",
                    "Messages in the spool: not yet confirmed stored by the cloud.",
                ).add(spool.entries),
                gauge("fieldlink_spool_readings", "Readings in the spooled messages.").add(
                    spool.readings
                ),
                gauge(
                    "fieldlink_spool_bytes",
                    "Payload bytes in the spool (what spool.max_bytes bounds).",
                ).add(spool.bytes),
                gauge(
                    "fieldlink_spool_oldest_age_seconds",
                    "Age of the oldest message in the spool (not yet confirmed by the cloud); "
                    "0 when it is empty.",
                ).add(age),
            ]
        return out

    # --- /healthz -------------------------------------------------------------------------------

    async def check(self) -> tuple[bool, str]:
        publisher = self._publisher
        spool = publisher.spool_stats
        if spool is None:
            return False, "failing: the spool is not open (the agent is starting or stopping)"
        mqtt = self._config.mqtt
        broker = f"MQTT broker {mqtt.host}:{mqtt.port}"
        if publisher.mqtt_connected:
            return True, f"ok: {broker} connected; {spool.entries} message(s) in the spool"
        why = publisher.connection_problem() or "not connected yet"
        cfg = self._config.spool
        if spool.bytes >= NEARLY_FULL * cfg.max_bytes:
            return False, (
                f"failing: {broker} not connected ({why}) and the spool is nearly full "
                f"({spool.bytes} of {cfg.max_bytes} bytes): the oldest readings are being "
                "dropped"
            )
        if cfg.max_age is not None:
            oldest = await publisher.spool_oldest_ns()
            age = 0.0 if oldest is None else time.time() - oldest / 1e9
            if age >= NEARLY_FULL * cfg.max_age:
                return False, (
                    f"failing: {broker} not connected ({why}) and the oldest spooled message "
                    f"is {age:.0f} s old, near spool.max_age ({cfg.max_age:g} s): the oldest "
                    "readings are being dropped"
                )
        return True, (
            f"spooling: {broker} not connected ({why}); {spool.entries} message(s) "
            f"({spool.bytes} of {cfg.max_bytes} bytes) wait in the spool"
        )


def frame_kind(wording: str) -> tuple[str, bool]:
    """A driver's kind of frame trouble (worded to follow a number: ``"checksum failures"``,
    ``"bytes of overlong frames dropped"``) as a short label value, and whether it counts
    bytes rather than frames."""
    words = wording.lower()
    in_bytes = "byte" in words
    for kind in ("checksum", "parse", "noise", "overlong"):
        if kind in words:
            return kind, in_bytes
    return re.sub(r"[^a-z0-9]+", "_", words).strip("_") or "other", in_bytes
