"""Frame trouble in the agent's log: a kind logged when it begins and when it stops, never per
frame, and every device's totals when the agent stops — against the simulator's injected
faults (bad checksums, garbage bytes, a runaway line) on real pseudo-terminals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from pathlib import Path

import pytest
from helpers import async_wait_for, start_edge
from test_serial_driver import (
    GGA_FIXED,
    agent_running,
    edge,
    gps_device,
    gps_sim,
    of,
    polled_device,
    probe,
    serial_bus,
    serial_server,
)

from config.sim import SimConfig
from drivers.base import StreamLink
from drivers.registry import DriverRegistry
from drivers.serial.checksum import Checksum
from drivers.serial.config import SerialDevice
from drivers.serial.program import StreamProgram
from edge.framewatch import FrameWatch
from edge.streamer import StreamDevice, StreamWorker
from fieldlink.localstack import Mosquitto
from sim.instruments import InstrumentRack
from wire.model import Group, Quality, point_entry


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fieldlink.edge" and (level is None or r.levelno == level)
    ]


def matching(lines: list[str], pattern: str) -> list[str]:
    return [line for line in lines if re.search(pattern, line)]


async def test_stream_frame_trouble_is_logged_when_it_begins_and_stops_and_summed_at_stop(
    tmp_path: Path, mosquitto: Mosquitto, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldlink.edge")
    link = tmp_path / "gps"
    config = edge(
        mosquitto,
        f"agent-{unique_id}"[:60],
        [serial_bus("gps", link, baudrate=38400)],
        [gps_device(stale_after=2.0, interval=0.05)],
    )
    async with (
        InstrumentRack(gps_sim(link, interval=0.05)) as rack,
        agent_running(config, mosquitto) as recorder,
    ):
        await async_wait_for(
            lambda: len(of(recorder.snapshot(), "gps-1", "altitude")) >= 5,
            timeout=20,
            message="sentences read",
        )
        # Three corrupted sentences in a row: one warning, not three (nor a flap each).
        rack.corrupt_next("gps-1", 3)
        began = "device gps-1: checksum failures ("
        await async_wait_for(
            lambda: matching(messages(caplog), "no more checksum failures"),
            timeout=20,
            message="checksum failures began and stopped",
        )
        # A line of noise, then a runaway line: 5000 bytes without a line end.
        rack.inject_garbage("gps-1", b"\x00\x13 noise on the line\r\n")
        rack.inject_garbage("gps-1", b"x" * 5000)
        await async_wait_for(
            lambda: (
                matching(messages(caplog), "no more noise bytes dropped")
                and matching(messages(caplog), "no more bytes of overlong frames dropped")
            ),
            timeout=20,
            message="noise and overflow began and stopped",
        )
        bad = [r for r in recorder.snapshot() if r.quality is Quality.BAD]
    lines = messages(caplog)
    warnings = messages(caplog, logging.WARNING)

    (warning,) = matching(warnings, re.escape(began))
    assert re.fullmatch(
        r"device gps-1: checksum failures \((\d) so far; latest: checksum mismatch: "
        r"frame says '[0-9A-F]{2}', computed '[0-9A-F]{2}'\); counted, not logged each time, "
        r"until 20 good frames in a row",
        warning,
    ), warning
    (stopped,) = matching(lines, "no more checksum failures")
    assert re.fullmatch(
        r"device gps-1: no more checksum failures \(\d+ good frames since the last; 3 in all\)",
        stopped,
    ), stopped
    (noise,) = matching(warnings, r"noise bytes dropped \(")
    assert "latest: bytes outside any frame" in noise
    (overflow,) = matching(warnings, r"overlong frames dropped \(")
    assert "latest: no frame end within max_length (4096 bytes)" in overflow
    # The bad sentences themselves were bad readings, and the streamer did not log them
    # frame by frame (no "failing"/"recovered" flapping for frame content).
    assert {r.reason for r in bad} == {"checksum mismatch"}
    assert not matching(lines, r"device gps-1: (failing|recovered|now failing)")

    # At stop: the totals, after the agent's own summary of what it published.
    (summary,) = matching(lines, r"^device gps-1: \d+ good frames")
    match = re.fullmatch(
        r"device gps-1: (\d+) good frames, 3 checksum failures, 0 parse failures, "
        r"(\d+) noise bytes dropped, (\d+) bytes of overlong frames dropped",
        summary,
    )
    assert match, summary
    good, noise_bytes, overflow_bytes = (int(g) for g in match.groups())
    assert good >= 45
    # All 5000 runaway bytes are gone, split between overflow (past 4096) and noise (the rest
    # of that line before the next sentence's `$`), plus the noise line's 21 bytes.
    assert overflow_bytes >= 4096
    assert noise_bytes + overflow_bytes == 5000 + len(b"\x00\x13 noise on the line")
    assert lines.index(summary) > lines.index(stopped)
    assert lines.index(summary) == next(i for i, x in enumerate(lines) if "agent stopped" in x) - 1


async def test_polled_checksum_failures_are_logged_by_a_real_agent_process(
    tmp_path: Path, mosquitto: Mosquitto, unique_id: str
) -> None:
    link = tmp_path / "rs485"
    sim = SimConfig.model_validate({"kind": "sim", "instruments": [probe("p1", "01", link)]})
    doc = {
        "kind": "edge",
        "agent": {"id": f"agent-{unique_id}"[:60], "site": "serial-site"},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "spool": {"path": str(tmp_path / "agent.spool")},
        "buses": [serial_bus("rs485", link, baudrate=38400, timeout=0.5)],
        "devices": [polled_device("probe-1", "01", 0.05)],
    }
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(json.dumps(doc))  # JSON is YAML
    lines: list[str] = []
    async with InstrumentRack(sim) as rack:
        process = await start_edge(
            config_file,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        stderr = process.stderr

        async def read() -> None:
            while line := await stderr.readline():
                lines.append(line.decode().rstrip("\n"))

        reader = asyncio.create_task(read())
        try:
            await async_wait_for(
                lambda: len(rack.requests("p1")) >= 10, timeout=20, message="polls"
            )
            rack.corrupt_next("p1", 2)
            await async_wait_for(
                lambda: matching(lines, "probe-1: no more checksum failures"),
                timeout=20,
                message="checksum failures began and stopped, in the agent's log",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 30)
            await asyncio.wait_for(reader, 10)
    assert code == 0, "\n".join(lines)
    (began,) = matching(lines, r"WARNING .*checksum failures \(")
    assert re.search(
        r"WARNING fieldlink.edge: device probe-1: checksum failures \([12] so far; "
        r"latest: checksum mismatch: frame says '[0-9A-F]{4}', computed '[0-9A-F]{4}'\)",
        began,
    ), began
    assert matching(lines, r"device probe-1: no more checksum failures \(.*; 2 in all\)")
    (summary,) = matching(lines, r"device probe-1: \d+ good frames")
    assert re.search(
        r"INFO    fieldlink.edge: device probe-1: \d+ good frames, 2 checksum failures, "
        r"0 parse failures, 0 noise bytes dropped, 0 bytes of overlong frames dropped$",
        summary,
    ), summary
    assert lines.index(summary) < next(i for i, x in enumerate(lines) if "agent stopped" in x)


def test_an_intermittent_fault_stays_one_warning_until_twenty_good_frames_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The watch samples the real program's counters: a corrupted sentence every 10th frame
    is one warning for as long as it lasts (not a flap per bad frame); the warning names the
    first bad point, and 20 clean frames after the last one end it."""
    caplog.set_level(logging.INFO, logger="fieldlink.edge")
    config = edge(None, "gw", [serial_bus("gps", Path("/dev/null"))], [gps_device()])
    device = config.devices[0]
    assert isinstance(device, SerialDevice)
    program = StreamProgram(device)
    watch = FrameWatch([("gps-1", program)])
    nmea = Checksum("nmea")
    good = nmea.append(GGA_FIXED.format(n=8).encode()) + b"\r\n"
    right = good[-4:-2].decode()
    wrong = f"{int(right, 16) ^ 0xFF:02X}"  # every bit of the checksum inverted
    corrupt = good[:-4] + wrong.encode() + b"\r\n"
    empty = nmea.append(GGA_FIXED.format(n=8).replace(",545.4,", ",,").encode()) + b"\r\n"
    for frame in range(60):
        program.feed(corrupt if frame % 10 == 9 else good, frame)
        watch.sample()
    program.feed(empty, 60)
    watch.sample()
    assert messages(caplog, logging.WARNING) == [
        "device gps-1: checksum failures (1 so far; latest: checksum mismatch: frame says "
        f"'{wrong}', computed '{right}'); counted, not logged each time, until 20 good frames "
        "in a row",
        "device gps-1: parse failures (1 so far; latest: point altitude: parse error: field 9 "
        "is empty); counted, not logged each time, until 20 good frames in a row",
    ]
    assert messages(caplog, logging.INFO) == []
    for frame in range(61, 81):
        program.feed(good, frame)
        watch.sample()
    assert messages(caplog, logging.INFO) == [
        "device gps-1: no more checksum failures (20 good frames since the last; 6 in all)",
        "device gps-1: no more parse failures (20 good frames since the last; 1 in all)",
    ]
    caplog.clear()
    watch.summary()
    assert messages(caplog) == [
        "device gps-1: 74 good frames, 6 checksum failures, 1 parse failures, "
        "0 noise bytes dropped, 0 bytes of overlong frames dropped"
    ]


class Broken:
    """A stream decoder with a bug: every chunk raises."""

    stale_after = 0.5
    interval = 0.5
    points = ("x",)

    def feed(self, data: bytes, ts_ns: int) -> list[Group]:
        raise RuntimeError("a bug")

    def stale(self, reason: str, ts_ns: int) -> Group:
        return Group("a", "broken", ts_ns, [point_entry("x", None, None, Quality.BAD, reason)])

    def reset(self) -> None:
        pass


async def test_a_decoder_bug_is_logged_once_and_its_points_go_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fieldlink.edge")

    finished = asyncio.Event()

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A line every 10 ms until the agent hangs up; then the connection is closed."""
        try:
            while True:
                writer.write(b"line\r\n")
                await writer.drain()
                try:
                    async with asyncio.timeout(0.01):
                        if not await reader.read(1):
                            return  # the agent closed the link
                except TimeoutError:
                    pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            finished.set()

    groups: list[Group] = []
    async with serial_server(chatty) as port:
        bus = {"name": "gps", "driver": "serial", "transport": "tcp", "host": "127.0.0.1"}
        config = edge(None, "gw", [{**bus, "port": port}], [gps_device()])
        link = DriverRegistry().get("serial").open_bus(config.buses[0])
        assert isinstance(link, StreamLink)
        worker = StreamWorker(
            "gps", link, [StreamDevice(config.devices[0], Broken())], groups.extend
        )
        task = asyncio.create_task(worker.run())
        try:
            await async_wait_for(
                lambda: (
                    worker.devices[0].stats.decode_crashes >= 5
                    and any(g.points[0].get("r") == "timeout" for g in groups)
                ),
                timeout=10,
                message="several crashing chunks, then timeout readings",
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(finished.wait(), 10)  # the server side closed too
    crashes = [r for r in caplog.records if "decoding failed unexpectedly" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None
