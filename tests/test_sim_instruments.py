"""Simulated serial instruments on real pseudo-terminals, read the way a client reads a serial
port (``os.open`` of the pty or its symlink, or pyserial): stream frames and command replies
byte for byte, the checksum framing against the standard check values, every fault, the port
vanishing and coming back behind its symlink, and ``sim run`` serving instruments with the
ports file. Config errors of instruments are in the second half."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import serial
import yaml
from helpers import async_wait_for

from config.errors import ConfigError
from config.sim import SimConfig, load_sim_config, sim_json_schema
from sim.instruments import InstrumentRack

ROOT = Path(__file__).resolve().parents[1]

# The standard check input of CRC catalogues, and its check values.
CHECK = "123456789"
CHECK_FRAMES = {
    "none": b"123456789\r\n",
    "nmea": b"$123456789*31\r\n",  # XOR of 0x31..0x39
    "sum8": b"123456789*DD\r\n",  # 0x1DD mod 256
    "crc16-modbus": b"123456789*4B37\r\n",  # CRC-16/MODBUS check value
    "crc16-ccitt": b"123456789*29B1\r\n",  # CRC-16/CCITT-FALSE check value
}


def xor(body: bytes) -> int:
    return functools.reduce(lambda a, b: a ^ b, body, 0)


def nmea(body: str, *, corrupt: bool = False) -> bytes:
    """An NMEA sentence as the contract frames it, computed here independently."""
    check = xor(body.encode("ascii")) ^ (0xFF if corrupt else 0)
    return f"${body}*{check:02X}\r\n".encode("ascii")


def sim(*instruments: dict[str, Any], **extra: Any) -> SimConfig:
    return SimConfig.model_validate({"kind": "sim", "instruments": list(instruments), **extra})


def gps(**overrides: Any) -> dict[str, Any]:
    """A fast NMEA stream: two sentences every 50 ms, no timing emulation."""
    inst: dict[str, Any] = {
        "name": "gps",
        "mode": "stream",
        "interval": 0.05,
        "emulate_timing": False,
        "checksum": "nmea",
        "frames": [
            "GPGGA,{utc:%H%M%S.%2f},{lat:09.4f},N,{alt:.1f},M",
            "GPZDA,{utc:%H%M%S.%3f},{utc:%d,%m,%Y}",
        ],
        "values": {"lat": 4807.038, "alt": {"wave": "ramp", "start": 100, "slope": 1}},
    }
    inst.update(overrides)
    return inst


def probe(**overrides: Any) -> dict[str, Any]:
    """A polled instrument answering two commands."""
    inst: dict[str, Any] = {
        "name": "probe",
        "mode": "command",
        "emulate_timing": False,
        "checksum": "sum8",
        "commands": [
            {"request": "MEAS?", "reply": "T={temp:.2f};RH={rh:.1f}"},
            {"request": "ID?", "reply": "ACME,{serial}"},
        ],
        "values": {"temp": 21.5, "rh": 45.25, "serial": "SN-0042"},
    }
    inst.update(overrides)
    return inst


class Port:
    """The client side of a pty, opened as a serial client opens it, read without blocking
    the event loop. ``eof`` turns true when the port vanishes (read gives EOF or EIO)."""

    def __init__(self, path: str | Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.data = bytearray()
        self.eof = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            self.eof = True
            self._loop.remove_reader(self.fd)
            return
        self.data += chunk

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def lines(self, count: int, end: bytes = b"\n", within: float = 10) -> list[bytes]:
        """The next ``count`` lines (each with its terminator), consumed."""
        await async_wait_for(
            lambda: self.data.count(end) >= count,
            timeout=within,
            interval=0.01,
            message=f"{count} lines on the port",
        )
        out = []
        for _ in range(count):
            cut = self.data.index(end) + len(end)
            out.append(bytes(self.data[:cut]))
            del self.data[:cut]
        return out

    def close(self) -> None:
        if not self.eof:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)


def gone(path: str) -> bool:
    """Whether ``path`` no longer exists (a pty node vanishes with its master)."""
    return not os.path.lexists(path)


@asynccontextmanager
async def port(path: str | Path) -> AsyncIterator[Port]:
    client = Port(path)
    try:
        yield client
    finally:
        client.close()


# -- checksum framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("checksum", list(CHECK_FRAMES))
async def test_reply_framing_matches_the_standard_check_values(checksum: str) -> None:
    config = sim(probe(checksum=checksum, commands=[{"request": "C?", "reply": CHECK}], values={}))
    async with InstrumentRack(config) as rack, port(rack.path("probe")) as client:
        client.write(b"C?\r\n")
        assert await client.lines(1) == [CHECK_FRAMES[checksum]]
        assert rack.emitted("probe")[0].body == CHECK
        assert rack.sent("probe")[0].wire == CHECK_FRAMES[checksum]


# -- stream -------------------------------------------------------------------------------------


async def test_nmea_stream_frames_are_exact_and_in_order() -> None:
    async with InstrumentRack(sim(gps())) as rack, port(rack.path("gps")) as client:
        lines = await client.lines(6)
        sent = rack.sent("gps")[:6]
        assert lines == [s.wire for s in sent]
        for line, emission in zip(lines, rack.emitted("gps"), strict=False):
            assert line == nmea(emission.body)
        gga, zda = rack.emitted("gps")[0], rack.emitted("gps")[1]
        when = datetime.fromtimestamp(gga.time_ns / 1e9, UTC)
        hundredths = f"{gga.time_ns // 10_000_000 % 100:02d}"
        alt = gga.values["alt"]
        assert isinstance(alt, float)
        assert gga.body == f"GPGGA,{when:%H%M%S}.{hundredths},4807.0380,N,{alt:.1f},M"
        assert gga.values == {"lat": 4807.038, "alt": alt}
        when = datetime.fromtimestamp(zda.time_ns / 1e9, UTC)
        millis = f"{zda.time_ns // 1_000_000 % 1000:03d}"
        assert zda.body == f"GPZDA,{when:%H%M%S}.{millis},{when:%d,%m,%Y}"
        # Bursts come every interval, on a grid: the third frame is the next GGA.
        assert rack.emitted("gps")[2].body.startswith("GPGGA,")
        assert rack.emitted("gps")[2].time_ns - gga.time_ns >= 0.04e9


async def test_values_follow_the_injected_clock() -> None:
    now = [0.0]
    inst = gps(
        frames=["N,{n:d},{s:.3f},{c},{k:+.1f}"],
        checksum="none",
        values={
            "n": {"wave": "counter", "start": 10, "step": 5, "interval": 1},
            "s": {"wave": "sine", "amplitude": 2, "period": 4},
            "c": "text",
            "k": {"wave": "constant", "value": -3},
        },
    )
    async with InstrumentRack(sim(inst), clock=lambda: now[0]) as rack:
        async with port(rack.path("gps")) as client:
            assert await client.lines(1) == [b"N,10,0.000,text,-3.0\r\n"]
            now[0] = 3.0  # counter: 10 + 5·3; sine at 3/4 of its period: -2
            assert b"N,25,-2.000,text,-3.0\r\n" in await client.lines(3)
        assert rack.emitted("gps")[0].values == {"n": 10, "s": 0.0, "c": "text", "k": -3}


@pytest.mark.parametrize(
    ("wall_clock", "hhmmss", "date", "iso"),
    [
        (
            datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC),
            "010203.45",
            "30,11,2026",
            "2026-11-30T01:02:03.456789Z",
        ),
        # Epoch seconds; and a datetime in another zone is the same instant in UTC.
        (1_796_000_000.25, "005320.25", "30,11,2026", "2026-11-30T00:53:20.250000Z"),
        (
            datetime(2026, 11, 30, 2, 53, 20, 250000, tzinfo=timezone(timedelta(hours=2))),
            "005320.25",
            "30,11,2026",
            "2026-11-30T00:53:20.250000Z",
        ),
    ],
)
async def test_utc_fields_come_from_the_injected_wall_clock(
    wall_clock: float | datetime, hhmmss: str, date: str, iso: str
) -> None:
    inst = gps(frames=["GPZDA,{utc:%H%M%S.%2f},{utc:%d,%m,%Y},00,00", "GPTXT,{utc}"], values={})
    rack = InstrumentRack(sim(inst), wall_clock=lambda: wall_clock)
    async with rack, port(rack.path("gps")) as client:
        assert await client.lines(2) == [
            nmea(f"GPZDA,{hhmmss},{date},00,00"),
            nmea(f"GPTXT,{iso}"),
        ]
        # The records carry the same instant, to the nanosecond.
        instant = datetime.fromisoformat(iso)
        seconds = int(instant.replace(microsecond=0).timestamp())
        expected_ns = seconds * 10**9 + instant.microsecond * 1000
        assert {e.time_ns for e in rack.emitted("gps")} == {expected_ns}


async def test_each_frame_reads_the_wall_clock_when_it_is_sent() -> None:
    ticks = iter(range(1_796_000_000, 1_796_001_000))
    inst = gps(frames=["A,{utc:%H%M%S}", "B,{utc:%H%M%S}"], values={}, checksum="none")
    rack = InstrumentRack(sim(inst), wall_clock=lambda: next(ticks))
    async with rack, port(rack.path("gps")) as client:
        # The rack reads the clock once on entry (005320), then once per frame.
        assert await client.lines(3) == [b"A,005321\r\n", b"B,005322\r\n", b"A,005323\r\n"]


async def test_a_wall_clock_without_a_timezone_is_refused_on_entry() -> None:
    rack = InstrumentRack(sim(gps()), wall_clock=lambda: datetime(2026, 11, 30, 1, 2, 3))
    with pytest.raises(
        ValueError, match=r"naive datetime \(2026-11-30T01:02:03\); return an aware"
    ):
        async with rack:
            pass


def bits_per_character(line: dict[str, Any]) -> float:
    """Start bit, data bits, a parity bit unless none, stop bits (8N1 unless ``line`` says
    otherwise): what one character takes on a real line, computed here independently."""
    parity = 0 if line.get("parity", "N") == "N" else 1
    return 1 + line.get("bytesize", 8) + parity + line.get("stopbits", 1)


#: Line settings of an instrument, beyond its baud rate; {} is the default, 8N1.
LINE_SETTINGS: list[dict[str, Any]] = [
    {},
    {"parity": "E", "stopbits": 2},
    {"bytesize": 7, "parity": "O", "stopbits": 1},
    {"bytesize": 5, "stopbits": 1.5},
]


@pytest.mark.parametrize("line", LINE_SETTINGS, ids=lambda line: str(line or "8N1"))
async def test_a_reply_arrives_no_sooner_than_its_characters_take_on_the_line(
    line: dict[str, Any],
) -> None:
    # 200 characters and CR LF at 4800 bit/s: 0.42 s at 10 bits a character, 0.51 s at 12.
    # Timed from before the request is written until the whole reply is read, so the time
    # measured can only be longer than the time on the wire: a lower bound, never a flake.
    reply = "0123456789" * 20
    inst = probe(emulate_timing=True, baudrate=4800, checksum="none", values={}, **line)
    inst["commands"] = [{"request": "X", "reply": reply}]
    async with InstrumentRack(sim(inst)) as rack, port(rack.path("probe")) as client:
        started = time.monotonic()
        client.write(b"X\r")
        assert await client.lines(1) == [reply.encode() + b"\r\n"]
        elapsed = time.monotonic() - started
    assert elapsed >= (len(reply) + 2) * bits_per_character(line) / 4800


async def test_a_port_nobody_reads_does_not_store_old_frames() -> None:
    async with InstrumentRack(sim(gps(interval=0.02))) as rack:
        await async_wait_for(
            lambda: rack.stats("gps").discarded_bytes > 0, message="unread frames discarded"
        )
        before = len(rack.sent("gps"))
        async with port(rack.path("gps")) as client:
            [first] = await client.lines(1)
        # At most the last burst (two frames) before the port was opened is still there.
        index = [s.wire for s in rack.sent("gps")].index(first)
        assert index >= before - 4


async def test_pyserial_reads_the_stream_through_the_symlink(tmp_path: Path) -> None:
    link = tmp_path / "gps"
    async with InstrumentRack(sim(gps(serial_link=str(link)))) as rack:
        assert rack.link("gps") == str(link)
        assert os.readlink(link) == rack.path("gps")
        with serial.Serial(str(link), 4800, timeout=5) as client:
            client.reset_input_buffer()
            line = await asyncio.to_thread(client.readline)
        assert line in [s.wire for s in rack.sent("gps")]
    assert not link.exists() and not link.is_symlink()  # removed on exit


# -- command/response ---------------------------------------------------------------------------


async def test_two_commands_are_answered_and_requests_recorded() -> None:
    async with InstrumentRack(sim(probe())) as rack, port(rack.path("probe")) as client:
        client.write(b"MEAS?\r\n")
        client.write(b"ID?\n")
        client.write(b"ME")  # a request split over two writes, ended by a bare CR
        client.write(b"AS?\r")
        meas = b"T=21.50;RH=45.2"
        ident = b"ACME,SN-0042"
        assert await client.lines(3) == [
            meas + b"*%02X\r\n" % (sum(meas) % 256),
            ident + b"*%02X\r\n" % (sum(ident) % 256),
            meas + b"*%02X\r\n" % (sum(meas) % 256),
        ]
        assert rack.requests("probe") == ["MEAS?", "ID?", "MEAS?"]
        client.write(b"NOPE?\r\n")  # unknown: no answer; the next request still is
        client.write(b"ID?\r\n")
        assert await client.lines(1) == [ident + b"*%02X\r\n" % (sum(ident) % 256)]
        stats = rack.stats("probe")
        assert (stats.requests, stats.unknown_requests, stats.frames) == (5, 1, 4)


async def test_unknown_request_gets_the_unknown_reply() -> None:
    inst = probe(checksum="none", unknown_reply="ERR,{utc:%Y}")
    async with InstrumentRack(sim(inst)) as rack, port(rack.path("probe")) as client:
        client.write(b"WHAT\r")
        assert await client.lines(1) == [f"ERR,{datetime.now(UTC):%Y}\r\n".encode()]


async def test_a_silent_instrument_does_not_block_its_neighbour_on_a_shared_line() -> None:
    a = probe(name="a", line="rs485", commands=[{"request": "#1?", "reply": "A"}], values={})
    b = probe(name="b", line="rs485", commands=[{"request": "#2?", "reply": "B"}], values={})
    async with InstrumentRack(sim(a, b)) as rack:
        assert rack.path("a") == rack.path("b")
        async with port(rack.path("a")) as client:
            rack.set_silent("a", True)
            client.write(b"#1?\r#2?\r")
            assert await client.lines(1) == [b"B*42\r\n"]
            await async_wait_for(lambda: rack.stats("a").silenced == 1, message="a silenced")
            assert client.data == b""  # a never answered
            rack.set_silent("a", False)
            client.write(b"#1?\r")
            assert await client.lines(1) == [b"A*41\r\n"]
        assert rack.requests("b") == ["#1?", "#2?", "#1?"]


# -- faults -------------------------------------------------------------------------------------


async def test_bad_checksum_every_second_frame() -> None:
    inst = gps(frames=["GPTXT,{n:d}"], values={"n": {"wave": "counter", "interval": 0.001}})
    inst["faults"] = [{"bad_checksum": {"every": 2}}]
    async with InstrumentRack(sim(inst)) as rack, port(rack.path("gps")) as client:
        lines = await client.lines(4)
        bodies = [e.body for e in rack.emitted("gps")[:4]]
        assert lines == [nmea(b, corrupt=i % 2 == 1) for i, b in enumerate(bodies)]
        assert [s.fault for s in rack.sent("gps")[:4]] == [None, "bad_checksum"] * 2


async def test_corrupt_next_and_inject_garbage() -> None:
    async with (
        InstrumentRack(sim(probe(checksum="nmea"))) as rack,
        port(rack.path("probe")) as client,
    ):
        rack.corrupt_next("probe", 1)
        client.write(b"ID?\r")
        assert await client.lines(1) == [nmea("ACME,SN-0042", corrupt=True)]
        rack.inject_garbage("probe", b"\x00\xffnoise")
        client.write(b"ID?\r")
        assert await client.lines(1) == [b"\x00\xffnoise" + nmea("ACME,SN-0042")]
        assert rack.stats("probe").corrupted == 1
    with pytest.raises(ValueError, match="sends no checksum"):
        async with InstrumentRack(sim(probe(checksum="none"))) as rack:
            rack.corrupt_next("probe", 1)


async def test_garbage_is_a_line_of_noise_before_an_intact_frame() -> None:
    inst = gps(faults=[{"garbage": "always"}], fault_seed=3)
    async with InstrumentRack(sim(inst)) as rack, port(rack.path("gps")) as client:
        lines = await client.lines(6)
        wires = [s.wire for s in rack.sent("gps")]
        noise, frames = lines[0::2], lines[1::2]
        assert frames == wires[:3]
        for line in noise:
            assert line.endswith(b"\r\n")
            junk = line[:-2]
            assert 1 <= len(junk) <= 16
            assert not set(junk) & set(b"\r\n$*")
        assert rack.stats("gps").garbage >= 3


async def test_silence_leaves_requests_unanswered() -> None:
    inst = probe(faults=[{"silence": 0.5}], fault_seed=11)
    async with InstrumentRack(sim(inst)) as rack, port(rack.path("probe")) as client:
        for _ in range(20):
            client.write(b"ID?\r")
        await async_wait_for(
            lambda: rack.stats("probe").frames + rack.stats("probe").silenced == 20,
            message="20 requests handled",
        )
        stats = rack.stats("probe")
        assert 0 < stats.silenced < 20
        assert len(await client.lines(stats.frames)) == stats.frames
        assert client.data == b""


async def test_set_silent_stops_and_resumes_a_stream() -> None:
    async with InstrumentRack(sim(gps())) as rack, port(rack.path("gps")) as client:
        await client.lines(2)
        rack.set_silent("gps", True)
        await async_wait_for(lambda: rack.stats("gps").silenced >= 4, message="silenced frames")
        sent = len(rack.sent("gps"))
        await async_wait_for(lambda: rack.stats("gps").silenced >= 8, message="still silent")
        assert len(rack.sent("gps")) == sent
        rack.set_silent("gps", False)
        await async_wait_for(lambda: len(rack.sent("gps")) > sent, message="resumed")


# -- the port vanishing ------------------------------------------------------------------------


async def test_close_port_fault_repoints_the_symlink_to_a_new_pty(tmp_path: Path) -> None:
    link = tmp_path / "gps"
    inst = gps(serial_link=str(link), faults=[{"close_port": {"every": 5, "down_for": 0.3}}])
    async with InstrumentRack(sim(inst)) as rack:
        first = rack.path("gps")
        # The old client keeps its descriptor, as a driver does until it notices; so the
        # kernel cannot hand out the old pty number again and the new pty's differs.
        async with port(link) as client:
            await client.lines(4)
            await async_wait_for(lambda: client.eof, message="the port to vanish")
            assert rack.stats("gps").closes == 1
            assert gone(first)
            await async_wait_for(link.is_symlink, message="a new pty behind the link")
            assert os.readlink(link) == rack.path("gps") != first
        async with port(link) as client:
            [line] = await client.lines(1)
        assert line in [s.wire for s in rack.sent("gps")]


async def test_close_and_reopen_port(tmp_path: Path) -> None:
    link = tmp_path / "probe"
    async with InstrumentRack(sim(probe(serial_link=str(link)))) as rack:
        old = rack.path("probe")
        async with port(link) as client:
            rack.close_port("probe")
            assert not rack.is_open("probe")
            await async_wait_for(lambda: client.eof, message="EOF on the vanished port")
            assert gone(old)
            assert not link.is_symlink()  # like /dev/ttyUSB0 when the adapter is unplugged
            with pytest.raises(FileNotFoundError):
                Port(link)
        rack.reopen_port("probe")
        assert rack.is_open("probe")
        assert os.readlink(link) == rack.path("probe")
        async with port(link) as client:
            client.write(b"ID?\r")
            [reply] = await client.lines(1)
            assert reply.startswith(b"ACME,SN-0042*")
        assert rack.stats("probe").closes == 1


# -- sim run ------------------------------------------------------------------------------------


async def test_sim_run_serves_instruments_beside_devices(tmp_path: Path) -> None:
    link = tmp_path / "gps"
    doc = {
        "kind": "sim",
        "devices": [
            {"name": "meter-1", "registers": [{"address": 0, "type": "uint16", "value": 1}]}
        ],
        "instruments": [
            gps(serial_link=str(link), faults=[{"close_port": {"every": 20, "down_for": 0.2}}]),
            probe(),
        ],
    }
    config = tmp_path / "sim.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    ports_file = tmp_path / "ports.json"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sim", "run", str(config), "--ports-file", str(ports_file)),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await async_wait_for(ports_file.exists, timeout=15, message="ports file")
        ports = json.loads(ports_file.read_text())
        first = ports["gps"]["serial_port"]
        assert ports["gps"] == {
            "serial_port": first,
            "transport": "instrument",
            "mode": "stream",
            "serial_link": str(link),
        }
        assert ports["probe"] == {
            "serial_port": ports["probe"]["serial_port"],
            "transport": "instrument",
            "mode": "command",
        }
        assert ports["meter-1"]["transport"] == "tcp"
        assert os.readlink(link) == first
        async with port(ports["probe"]["serial_port"]) as client:
            client.write(b"ID?\r\n")
            assert await client.lines(1) == [
                b"ACME,SN-0042*%02X\r\n" % (sum(b"ACME,SN-0042") % 256)
            ]

        def repointed() -> bool:
            current = json.loads(ports_file.read_text())["gps"]["serial_port"]
            return current != first and link.is_symlink() and os.readlink(link) == current

        async with port(link) as client:
            line = (await client.lines(1))[0]
            assert line.startswith(b"$GP") and line.endswith(b"\r\n")
            # The port closes at every 20th frame: the file follows the new pty (held open
            # here, the old pty's number cannot be reused).
            await async_wait_for(lambda: client.eof, message="the port to vanish")
            await async_wait_for(repointed, timeout=15, message="ports file names the new pty")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    printed = stdout.decode().splitlines()
    assert f"sim: gps stream on {first} (9600 baud, nmea, link {link})" in printed
    assert any(p.startswith("sim: probe command on /dev/pts/") for p in printed)
    assert not ports_file.exists() and not link.is_symlink()


# -- config -------------------------------------------------------------------------------------


def problems(tmp_path: Path, doc: dict[str, Any]) -> list[str]:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_sim_config(path, env={})
    return [p.render() for p in caught.value.problems]


def instruments(*items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "sim", "instruments": list(items)}


def with_(base: Callable[..., dict[str, Any]], **changes: Any) -> dict[str, Any]:
    return base(**changes)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            instruments(gps(frames=["A,{lat}", "B,{alt:.1f},{speed}"])),
            "instruments[0].frames[1]: placeholder {speed} has no entry in values "
            "(values given: alt, lat)",
        ),
        (
            instruments(gps(values={"lat": 1, "alt": 2, "altt": 3})),
            "instruments[0].values.altt: not used by any frame or reply; remove it or write "
            "{altt} into a template",
        ),
        (
            instruments(probe(commands=[{"request": "A", "reply": "{n:d}"}], values={"n": 1.5})),
            "instruments[0].commands[0].reply: placeholder {n:d}: the format spec does not fit "
            "its value 1.5: Unknown format code 'd' for object of type 'float'",
        ),
        (
            instruments(gps(frames=["{lat} {}"])),
            "instruments[0].frames[0]: placeholders need a value name, e.g. {temp:.1f}; {} is "
            "not allowed",
        ),
        (
            instruments(gps(frames=["$GPGGA,{lat},{alt}"])),
            "instruments[0].frames[0]: leave out `$` and `*`: with checksum nmea the simulator "
            "writes $ + body + * + checksum",
        ),
        (
            instruments(probe(checksum="none", faults=[{"bad_checksum": 0.1}])),
            "instruments[0].faults[0].bad_checksum: this instrument sends no checksum "
            "(checksum: none); set `checksum` or remove the fault",
        ),
        (
            instruments(probe(interval=2)),
            "instruments[0].interval: not for mode command: only stream instruments have it",
        ),
        (
            instruments(gps(frames=[])),
            "instruments[0].frames: a stream instrument needs at least one frame template",
        ),
        (
            instruments(probe(commands=[{"request": "A\r", "reply": "x"}], values={})),
            "instruments[0].commands[0].request: a request is one line: leave out CR and LF "
            "(requests end at \\r, \\n or \\r\\n) (got 'A\\r')",
        ),
        (
            instruments(gps(values={"lat": 1, "alt": True})),
            "instruments[0].values.alt: expected a number, a text, or a waveform with `wave:` "
            "one of constant, sine, ramp, counter, random_walk (got True)",
        ),
        (
            instruments(gps(faults=[{"close_port": {"every": 0, "down_for": 1}}])),
            "instruments[0].faults[0].close_port.every: Input should be greater than or equal "
            "to 1 (got 0)",
        ),
        (
            instruments(
                probe(line="l"),
                probe(
                    name="p2",
                    line="l",
                    baudrate=1200,
                    commands=[{"request": "X", "reply": "{rh}"}],
                    values={"rh": 1},
                ),
            ),
            "instruments[1].baudrate: line 'l' is shared with instruments[0] (probe), which "
            "has baudrate 9600; instruments on one line must agree",
        ),
        (
            instruments(probe(line="l"), probe(name="p2", line="l")),
            "instruments[1].commands[0].request: 'MEAS?' is already answered by "
            "instruments[0] (probe) on line 'l'; both would reply at once",
        ),
        (
            {
                "kind": "sim",
                "devices": [
                    {"name": "probe", "registers": [{"address": 0, "type": "uint16", "value": 1}]}
                ],
                "instruments": [probe()],
            },
            "instruments[0].name: duplicate name 'probe' (first at devices[0]); devices and "
            "instruments share one name space",
        ),
        (
            instruments(gps(serial_link="/tmp/x"), probe(serial_link="/tmp/x")),
            "instruments[1].serial_link: /tmp/x is already the link of instruments[0]; each "
            "pseudo-terminal needs its own",
        ),
        (
            {"kind": "sim"},
            "nothing to serve: give `devices` (Modbus devices), `instruments` (serial "
            "instruments), or both",
        ),
        (
            instruments(gps(encoding="klingon")),
            "instruments[0].encoding: unknown encoding 'klingon'; e.g. ascii, latin-1, utf-8",
        ),
        (
            instruments(gps(frames=["Tö {lat} {alt}"], checksum="none")),
            "instruments[0].frames[0]: 'ö' cannot be encoded as ascii; set `encoding`",
        ),
    ],
)
def test_instrument_config_errors_are_located(
    tmp_path: Path, doc: dict[str, Any], message: str
) -> None:
    assert problems(tmp_path, doc) == [message]


def test_the_example_serves_three_instruments() -> None:
    config = load_sim_config(ROOT / "config" / "examples" / "sim-serial.yaml", env={})
    assert config.devices == []
    assert [(i.name, i.mode, i.checksum) for i in config.instruments] == [
        ("gps-1", "stream", "nmea"),
        ("analyser-1", "command", "crc16-ccitt"),
        ("logger-1", "stream", "none"),
    ]


def test_schema_has_the_instrument_models() -> None:
    defs = sim_json_schema()["$defs"]
    assert {"SimInstrument", "InstrumentCommand", "InstrumentFault", "ClosePort"} <= set(defs)
    assert defs["SimInstrument"]["additionalProperties"] is False
