"""The agent: one publisher and one worker per bus, owned by one task group.

A bus's worker is a :class:`~edge.scheduler.BusWorker` (request/response: the driver's
programs are :class:`~drivers.base.DeviceProgram`) or, when its devices push data by
themselves (their programs are :class:`~drivers.base.StreamDecoder`), a
:class:`~edge.streamer.StreamWorker`. A bus carries one kind or the other. Beside them a
:class:`~edge.framewatch.FrameWatch` logs the frame troubles of devices that count them, and
their totals when the agent stops. With ``health.listen`` set, an
:class:`~edge.health.AgentHealth` endpoint serves the counters of all of them as Prometheus
metrics, and ``/healthz`` (docs/health.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from config.edge import EdgeConfig, mixed_bus
from config.errors import ConfigError, Problem
from drivers.base import DeviceProgram, FrameCounting, StreamDecoder, StreamLink
from drivers.registry import DriverRegistry
from edge.framewatch import FrameWatch
from edge.publisher import Publisher
from edge.scheduler import BusWorker, ScheduledDevice, Sink
from edge.streamer import StreamDevice, StreamWorker
from wire.model import Group

log = logging.getLogger("fieldlink.edge")

#: Exit code of a start refused for a config or resource problem (like `fieldlink check`).
EXIT_CONFIG = 2

Worker = BusWorker | StreamWorker


@dataclass
class AgentPlan:
    workers: list[Worker]
    publisher: Publisher


def build_agent(config: EdgeConfig, registry: DriverRegistry | None = None) -> AgentPlan:
    publisher = Publisher(config)
    return AgentPlan(build_workers(config, publisher.submit, registry), publisher)


def build_workers(
    config: EdgeConfig, sink: Sink, registry: DriverRegistry | None = None
) -> list[Worker]:
    """One worker per bus that has enabled devices, each owning its bus's link.

    Raises :class:`ConfigError` for a bus that mixes streaming and polled devices (one task
    cannot both wait for what devices push and ask), naming the devices to move.
    """
    registry = registry or DriverRegistry()
    workers: list[Worker] = []
    problems: list[Problem] = []
    for bus_index, bus in enumerate(config.buses):
        plugin = registry.get(bus.driver)
        polled: list[ScheduledDevice] = []
        streams: list[StreamDevice] = []
        for device in config.devices:
            if device.bus != bus.name or not device.enabled:
                continue
            program = plugin.compile_device(device)
            if isinstance(program, StreamDecoder):
                streams.append(StreamDevice(device, program))
            else:
                polled.append(ScheduledDevice(device, _polled(program)))
        if not polled and not streams:
            log.info("bus %s has no enabled devices; not opened", bus.name)
            continue
        if polled and streams:
            # `fieldlink check` finds this already for drivers with an `is_streaming` hook;
            # this is the net for drivers without one.
            problems.append(
                Problem(
                    f"buses[{bus_index}].name",
                    mixed_bus(
                        bus.name,
                        [d.config.name for d in streams],
                        [d.config.name for d in polled],
                    ),
                )
            )
            continue
        link = plugin.open_bus(bus)
        if streams:
            if not isinstance(link, StreamLink):
                raise TypeError(
                    f"driver {bus.driver!r} compiles stream devices but its link cannot receive"
                )
            workers.append(StreamWorker(bus.name, link, streams, sink))
            continue
        workers.append(
            BusWorker(
                bus.name,
                link,
                polled,
                sink,
                request_gap=bus.request_gap,
                connect_delay=bus.connect_delay,
            )
        )
    if problems:
        raise ConfigError(config.source, problems)
    return workers


def frame_watch(workers: list[Worker]) -> FrameWatch:
    """A watch over the frame counters of every device whose program keeps them."""
    return FrameWatch(
        [
            (device.config.name, device.program)
            for worker in workers
            for device in worker.devices
            if isinstance(device.program, FrameCounting)
        ]
    )


def _polled(program: DeviceProgram | StreamDecoder) -> DeviceProgram:
    assert not isinstance(program, StreamDecoder)
    return program


async def poll_once(config: EdgeConfig, registry: DriverRegistry | None = None) -> list[Group]:
    """Poll every enabled device once (buses side by side, devices of a bus in turn) and
    return the readings, without MQTT: the installer's `--once --dry-run`. A streaming bus
    waits for one frame of each device (at most its ``stale_after``)."""
    groups: list[Group] = []
    workers = build_workers(config, groups.extend, registry)

    async def one_bus(worker: Worker) -> None:
        if isinstance(worker, StreamWorker):
            await worker.once()
            return
        try:
            for device in worker.devices:
                await worker.poll(device)
        finally:
            await worker.close()

    async with asyncio.TaskGroup() as group:
        for worker in workers:
            group.create_task(one_bus(worker), name=f"bus-{worker.name}")
    return groups


async def run_agent(
    config: EdgeConfig,
    *,
    stop: asyncio.Event,
    registry: DriverRegistry | None = None,
    ready: Callable[[], None] | None = None,
    drain_timeout: float = 5.0,
) -> int:
    """Run until ``stop`` is set; then stop polling, flush what is queued, and return 0.
    Returns :data:`EXIT_CONFIG` without starting when the health endpoint cannot listen on
    ``health.listen`` (logged in one line: the address, the field, the fix)."""
    plan = build_agent(config, registry)
    if config.health.listen is None:
        return await _run(config, plan, stop=stop, ready=ready, drain_timeout=drain_timeout)
    # Only now: the endpoint's code is not loaded by an agent that does not serve it.
    from edge.health import AgentHealth, ListenError

    health = AgentHealth(config, plan.workers, plan.publisher)
    try:
        await health.start()
    except ListenError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        return await _run(config, plan, stop=stop, ready=ready, drain_timeout=drain_timeout)
    finally:
        await health.close()


async def _run(
    config: EdgeConfig,
    plan: AgentPlan,
    *,
    stop: asyncio.Event,
    ready: Callable[[], None] | None,
    drain_timeout: float,
) -> int:
    devices = sum(len(w.devices) for w in plan.workers)
    log.info(
        "agent %s/%s: %d device(s) on %d bus(es), publishing to %s on %s:%d",
        config.agent.site,
        config.agent.id,
        devices,
        len(plan.workers),
        plan.publisher.topic,
        config.mqtt.host,
        config.mqtt.port,
    )
    frames = frame_watch(plan.workers)
    async with asyncio.TaskGroup() as group:
        publish_task = group.create_task(plan.publisher.run(), name="mqtt-publisher")
        pollers = [group.create_task(w.run(), name=f"bus-{w.name}") for w in plan.workers]
        if len(frames):
            pollers.append(group.create_task(frames.run(), name="frame-watch"))
        if ready is not None:
            ready()
        await stop.wait()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        try:
            async with asyncio.timeout(drain_timeout):
                await plan.publisher.drain()
        except TimeoutError:
            # Nothing is lost: what is spooled and not confirmed goes out on the next start.
            log.warning(
                "shutdown: the broker did not take everything within %.0f s; unconfirmed "
                "messages stay in the spool for the next start",
                drain_timeout,
            )
        publish_task.cancel()
    frames.summary()
    stats = plan.publisher.stats
    log.info(
        "agent stopped: %d reading(s) in %d message(s) published (%d republished), "
        "%d confirmed message(s) removed from the spool, %d reading(s) dropped",
        stats.readings,
        stats.messages,
        stats.republished,
        stats.confirmed,
        stats.dropped + stats.spool_dropped,
    )
    return 0
