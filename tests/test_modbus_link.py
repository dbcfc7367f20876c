"""The link of every transport: bus config validation, writes (FC5, FC6, FC15, FC16) read back
from the simulator, broadcasts, and cancellation of a request in flight, which must raise
CancelledError and leave the link closed and reopenable, on a serial port too. A serial port
that cannot be opened reads the same from the Modbus and the serial-instrument driver."""

from __future__ import annotations

import asyncio
import os
import termios
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import serial  # type: ignore[import-untyped]  # pyserial ships no type hints

from config.edge import validate_edge
from config.errors import ConfigError
from config.sim import SimConfig
from drivers.errors import ConnectError, DeviceException, DeviceTimeout, DriverError, FrameError
from drivers.modbus.config import ModbusBus, ModbusDevice
from drivers.modbus.link import ModbusLink
from drivers.modbus.planner import ReadRequest, WriteRequest, plan_coil_writes, plan_write
from drivers.modbus.program import ModbusProgram
from drivers.serial.config import SerialBus
from drivers.serial.link import SerialLink
from drivers.serialport import LineSettings, open_failure
from sim.server import SimPlant

SERIAL = {"parity": "N"}  # a pseudo-terminal takes no parity (see test_sim_rtu.py)
TRANSPORTS = ["tcp", "rtu-over-tcp", "rtu", "ascii"]


def bus_problems(**bus: Any) -> list[str]:
    doc = {
        "kind": "edge",
        "agent": {"id": "gw", "site": "lab"},
        "buses": [{"name": "line", "driver": "modbus", **bus}],
        "devices": [
            {"name": "d", "bus": "line", "points": [{"name": "p", "address": 0, "type": "uint16"}]}
        ],
    }
    try:
        validate_edge(doc, "t", env={})
    except ConfigError as exc:
        return [f"{p.path}: {p.message}" for p in exc.problems]
    return []


@pytest.mark.parametrize(
    ("bus", "problems"),
    [
        ({"host": "10.0.0.5"}, []),
        ({"transport": "rtu-over-tcp", "host": "10.0.0.5", "port": 4001}, []),
        ({"transport": "rtu", "serial_port": "/dev/ttyUSB0", "baudrate": 9600}, []),
        ({"transport": "ascii", "serial_port": "/dev/ttyS1", "bytesize": 7, "parity": "E"}, []),
        (
            {},
            [
                "buses[0].host: transport tcp needs the host name or address of the device or "
                "gateway"
            ],
        ),
        (
            {"transport": "rtu"},
            [
                "buses[0].serial_port: transport rtu needs the serial device, e.g. "
                "serial_port: /dev/ttyUSB0"
            ],
        ),
        (
            {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "host": "10.0.0.5"},
            [
                "buses[0].host: a rtu bus is a serial line and has no host; the device goes in "
                "`serial_port` (for a TCP serial server use transport rtu-over-tcp)"
            ],
        ),
        (
            {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "port": 502},
            [
                "buses[0].port: a rtu bus is a serial line and has no port; the device goes in "
                "`serial_port` (for a TCP serial server use transport rtu-over-tcp)"
            ],
        ),
        (
            {"host": "10.0.0.5", "baudrate": 9600},
            [
                "buses[0].baudrate: only serial buses (transport rtu or ascii) have a baudrate; "
                "this bus is tcp"
            ],
        ),
        (
            {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "bytesize": 7},
            ["buses[0].bytesize: RTU needs 8 data bits (7 is for ASCII)"],
        ),
        (
            {"transport": "rtu", "serial_port": "/dev/ttyUSB0", "parity": "X"},
            ["buses[0].parity: Input should be 'N', 'E' or 'O' (got 'X')"],
        ),
        (
            {"transport": "serial", "serial_port": "/dev/ttyUSB0"},
            [
                "buses[0].transport: Input should be 'tcp', 'rtu-over-tcp', 'rtu' or 'ascii' "
                "(got 'serial')"
            ],
        ),
    ],
)
def test_bus_fields_fit_the_transport(bus: dict[str, Any], problems: list[str]) -> None:
    assert bus_problems(**bus) == problems


def test_serial_timing_follows_the_line_settings() -> None:
    bus = ModbusBus.model_validate(
        {
            "name": "b",
            "driver": "modbus",
            "transport": "rtu",
            "serial_port": "/dev/x",
            "baudrate": 9600,
        }
    )
    assert bus.parity == "E" and bus.data_bits == 8  # the Modbus serial-line defaults
    assert bus.char_time == pytest.approx(11 / 9600)  # start, 8 data, parity, stop
    assert bus.frame_gap == pytest.approx(3.5 * 11 / 9600)
    assert ModbusLink(bus).description == "modbus rtu /dev/x 9600 8E1"
    ascii_bus = bus.model_copy(update={"transport": "ascii", "bytesize": None})
    assert ascii_bus.data_bits == 7 and ascii_bus.frame_gap == 0.0
    tcp = ModbusBus.model_validate({"name": "b", "driver": "modbus", "host": "::1"})
    assert ModbusLink(tcp).description == "modbus tcp [::1]:502"


# -- a plant and a link of each transport ---------------------------------------------------

REGISTERS = [
    {"address": 10, "type": "int16", "scale": 0.1, "value": 0},
    {"address": 11, "type": "float32", "order": "CDAB", "value": 0},
    {"address": 13, "type": "string", "length": 2, "value": ""},
    *({"table": "coil", "address": a, "type": "bool", "value": False} for a in range(16)),
    {"table": "discrete", "address": 0, "type": "bool", "value": True},
]
POINTS = [
    {"name": "setpoint", "address": 10, "type": "int16", "scale": 0.1},
    {"name": "limit", "address": 11, "type": "float32", "order": "CDAB"},
    {"name": "label", "address": 13, "type": "string", "length": 2},
    *({"name": f"c{a}", "table": "coil", "address": a, "type": "bool"} for a in range(16)),
    {"name": "door", "table": "discrete", "address": 0, "type": "bool"},
]


def sim_device(name: str, unit: int, transport: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"gateway": "line"}
    if transport in ("rtu", "ascii"):
        extra.update(SERIAL)
    if transport == "ascii":
        extra["bytesize"] = 8
    return {"name": name, "unit_id": unit, "transport": transport, "registers": REGISTERS, **extra}


@asynccontextmanager
async def linked(
    transport: str, answer_timeout: float = 0.5
) -> AsyncIterator[tuple[SimPlant, ModbusLink]]:
    config = SimConfig.model_validate(
        {"kind": "sim", "devices": [sim_device("a", 1, transport), sim_device("b", 2, transport)]}
    )
    async with SimPlant(config) as plant:
        bus: dict[str, Any] = {
            "name": "b",
            "driver": "modbus",
            "transport": transport,
            "timeout": answer_timeout,
        }
        if transport in ("rtu", "ascii"):
            bus.update(serial_port=plant.serial_endpoints()["a"].path, **SERIAL)
            if transport == "ascii":
                bus["bytesize"] = 8
        else:
            host, port, _ = plant.endpoints()["a"]
            bus.update(host=host, port=port)
        link = ModbusLink(ModbusBus.model_validate(bus))
        await link.connect()
        try:
            yield plant, link
        finally:
            await link.close()


def device(unit: int = 1) -> ModbusDevice:
    return ModbusDevice.model_validate({"name": "d", "bus": "b", "unit_id": unit, "points": POINTS})


async def read_back(link: ModbusLink, dev: ModbusDevice) -> dict[str, Any]:
    program = ModbusProgram(dev)
    out: dict[str, Any] = {}
    for request in program.requests:
        answer = await link.execute(request)
        out.update(
            {e["p"]: e.get("v", e.get("r")) for e in program.decode(request, answer, 0).points}
        )
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_writes_of_every_function_read_back(transport: str) -> None:
    dev = device()
    point = {p.name: p for p in dev.points}
    async with linked(transport) as (_plant, link):
        writes = [
            plan_write(dev, point["setpoint"], -12.3),  # FC6
            plan_write(dev, point["limit"], 49.5),  # FC16, words swapped
            plan_write(dev, point["label"], "OK"),  # FC16
            plan_write(dev, point["c3"], True),  # FC5
            *plan_coil_writes(dev, 8, [True, False, True, True]),  # FC15
        ]
        assert [w.function_code for w in writes] == [6, 16, 16, 5, 15]
        for write in writes:
            await link.write(write)
        got = await read_back(link, dev)
        other = await read_back(link, device(unit=2))
        # A write to a read-only table or an address the device lacks is refused by it.
        with pytest.raises(DeviceException, match="exception 2") as refused:
            await link.write(WriteRequest(1, "coil", 100, (True,), single=True))
        assert refused.value.reason == "exception 2 (illegal data address)"
    assert got["setpoint"] == -12.3 and got["limit"] == 49.5 and got["label"] == "OK"
    coils = [got[f"c{a}"] for a in range(16)]
    assert coils == [a in (3, 8, 10, 11) for a in range(16)]
    assert got["door"] is True
    assert other["setpoint"] == 0 and not any(other[f"c{a}"] for a in range(16))  # unit 2 untouched


@pytest.mark.parametrize("transport", ["rtu", "ascii"])
async def test_broadcast_write_reaches_every_unit_without_an_answer(transport: str) -> None:
    async with linked(transport) as (plant, link):
        write = plan_write(device(unit=0), device(unit=0).points[0], 7.5)
        assert write.unit_id == 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        await link.write(write)  # returns without waiting for an answer that never comes
        assert loop.time() - started < 0.2
        first, second = await read_back(link, device(1)), await read_back(link, device(2))
        assert plant.bus_stats("a").broadcasts == 1
    assert first["setpoint"] == second["setpoint"] == 7.5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_a_read_in_flight_raises_cancelled_error(transport: str) -> None:
    async with linked(transport, answer_timeout=30.0) as (_plant, link):
        silent = ModbusDevice.model_validate(
            {"name": "x", "bus": "b", "unit_id": 9, "points": POINTS[:1]}  # nobody is unit 9
        )
        request = ModbusProgram(silent).requests[0]
        task = asyncio.create_task(link.execute(request))
        await asyncio.sleep(0.05)  # the request is out, the link waits for the answer
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Abandoned mid-transaction: the link is closed, never half-way...
        assert not link.connected
        with pytest.raises(ConnectError, match="not connected"):
            await link.execute(request)
        # ...and opens again (a serial port is not left locked).
        await link.connect()
        assert (await read_back(link, device()))["door"] is True


async def test_cancelled_write_too() -> None:
    async with linked("rtu", answer_timeout=30.0) as (_plant, link):
        task = asyncio.create_task(link.write(WriteRequest(9, "holding", 10, (1,), single=True)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not link.connected


# -- Modbus TCP: our own MBAP client (drivers/modbus/mbap.py) -----------------------------------


async def test_tcp_answer_arriving_after_its_timeout_is_not_taken_for_the_next() -> None:
    """The answer to a timed-out read arrives while the next read waits; the transaction id
    tells them apart, so the next read gets its own registers and the connection stays."""
    config = SimConfig.model_validate(
        {
            "kind": "sim",
            "devices": [
                {
                    "name": "a",
                    "unit_id": 1,
                    "registers": REGISTERS,
                    "faults": [{"latency": 0.7, "table": "discrete"}],
                }
            ],
        }
    )
    async with SimPlant(config) as plant:
        host, port, _ = plant.endpoints()["a"]
        bus = ModbusBus.model_validate(
            {"name": "b", "driver": "modbus", "host": host, "port": port, "timeout": 0.5}
        )
        link = ModbusLink(bus)
        await link.connect()
        try:
            program = ModbusProgram(device())
            by_table = {r.table: r for r in program.requests}
            with pytest.raises(DeviceTimeout):
                await link.execute(by_table["discrete"])  # answered 0.7 s after it was sent
            connection = link._client  # type: ignore[attr-defined]
            # Sent at 0.5 s while the late answer is on its way; the simulator answers in order,
            # so this one comes right after it, ~0.2 s after being sent (timeout 0.5 s).
            words = await link.execute(by_table["holding"])
            assert link._client is connection  # type: ignore[attr-defined]
        finally:
            await link.close()
    got = program.decode(by_table["holding"], words, 0).points
    assert {e["p"]: e["v"] for e in got} == {"setpoint": 0.0, "limit": 0.0, "label": ""}


@asynccontextmanager
async def gateway(
    answer: Callable[[bytes], list[bytes]],
) -> AsyncIterator[ModbusLink]:
    """A Modbus TCP peer over a real socket that answers each request frame with the chunks
    ``answer`` returns, each sent on its own (a gateway that writes in pieces, or garbage)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(7)
                body = await reader.readexactly(int.from_bytes(header[4:6], "big") - 1)
                for chunk in answer(header + body):
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.005)  # separate TCP segments
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bus = ModbusBus.model_validate(
        {"name": "b", "driver": "modbus", "host": "127.0.0.1", "port": port, "timeout": 2.0}
    )
    link = ModbusLink(bus)
    await link.connect()
    try:
        yield link
    finally:
        await link.close()
        server.close()
        await server.wait_closed()


def registers_answer(request: bytes, words: list[int]) -> bytes:
    """The MBAP answer to an FC3 request frame carrying ``words``."""
    data = b"".join(w.to_bytes(2, "big") for w in words)
    pdu = bytes((3, len(data))) + data
    return request[:4] + (len(pdu) + 1).to_bytes(2, "big") + request[6:7] + pdu


async def test_tcp_answer_split_across_segments_and_two_in_one() -> None:
    request = ReadRequest(1, "holding", 10, 3, ())

    def byte_by_byte(frame: bytes) -> list[bytes]:
        raw = registers_answer(frame, [1, 2, 0xFFFF])
        return [raw[i : i + 1] for i in range(len(raw))]

    async with gateway(byte_by_byte) as link:
        assert await link.execute(request) == [1, 2, 0xFFFF]
        assert await link.execute(request) == [1, 2, 0xFFFF]

    def duplicated(frame: bytes) -> list[bytes]:
        # The same answer twice in one segment: the second has no waiter and is dropped.
        raw = registers_answer(frame, [7, 8, 9])
        return [raw + raw]

    async with gateway(duplicated) as link:
        assert await link.execute(request) == [7, 8, 9]
        assert await link.execute(request) == [7, 8, 9]


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        # Not Modbus TCP (protocol id 1): the stream cannot be trusted; the link drops it.
        (lambda f: [f[:2] + b"\x00\x01" + f[4:]], ConnectError, "disconnected"),
        # An exception answer of a gateway: the unit behind it does not answer.
        (lambda f: [f[:4] + b"\x00\x03" + f[6:7] + b"\x83\x0b"], DeviceException, "exception 11"),
        # A byte count that does not match the data.
        (lambda f: [f[:4] + b"\x00\x05" + f[6:7] + b"\x03\x04\x00\x01"], FrameError, "frame error"),
    ],
)
async def test_tcp_broken_answers_are_named(
    answer: Callable[[bytes], list[bytes]], error: type[Exception], reason: str
) -> None:
    async with gateway(answer) as link:
        with pytest.raises(error) as raised:
            await link.execute(ReadRequest(1, "holding", 0, 2, ()))
        assert isinstance(raised.value, DriverError)
        assert raised.value.reason.startswith(reason)


# -- a serial port that cannot be opened: the same words from both serial drivers ------------

NO_PORT = "no such port (unplugged? check the path, or /dev/serial/by-id/)"
IN_USE = "in use by another program (the port is locked)"
PTY_REFUSES_8E1 = (
    "the port refuses 8E1 at 9600 bit/s; a pseudo-terminal takes only 8 data bits and no parity"
)


def serial_links(path: str, **line: Any) -> tuple[ModbusLink, SerialLink]:
    """A Modbus RTU link and a serial-instrument link on one port, with the same settings."""
    settings = {"serial_port": path, "baudrate": 9600, "parity": "N", **line}
    modbus = ModbusBus.model_validate(
        {"name": "m", "driver": "modbus", "transport": "rtu"} | settings
    )
    instrument = SerialBus.model_validate({"name": "s", "driver": "serial"} | settings)
    return ModbusLink(modbus), SerialLink(instrument)


async def refusal(link: ModbusLink | SerialLink) -> str:
    with pytest.raises(ConnectError) as caught:
        await link.connect()
    return str(caught.value)


@contextmanager
def pseudo_terminal() -> Iterator[str]:
    """A pty's slave path, which a serial driver opens like a real port; ours stays open, so
    the line exists whoever opens and closes it."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


async def test_a_missing_port_reads_the_same_in_both_serial_drivers() -> None:
    missing = "/dev/does-not-exist"
    modbus, instrument = serial_links(missing)
    assert await refusal(modbus) == f"disconnected: modbus rtu {missing} 9600 8N1: {NO_PORT}"
    assert await refusal(instrument) == f"disconnected: {missing}: {NO_PORT}"


async def test_a_port_in_use_reads_the_same_in_both_serial_drivers() -> None:
    with pseudo_terminal() as path:
        modbus, instrument = serial_links(path)
        await modbus.connect()
        try:
            assert await refusal(instrument) == f"disconnected: {path}: {IN_USE}"
        finally:
            await modbus.close()
        await instrument.connect()
        try:
            assert await refusal(modbus) == f"disconnected: modbus rtu {path} 9600 8N1: {IN_USE}"
        finally:
            await instrument.close()
        # Free again once its owner closed it.
        await modbus.connect()
        await modbus.close()


@pytest.mark.parametrize("driver", ["modbus", "serial"])
async def test_settings_the_port_silently_drops_are_refused_by_both_serial_drivers(
    driver: str,
) -> None:
    # A fresh pty takes the first tcsetattr and drops the parity bit without a word; the
    # drivers apply the settings twice and so see the refusal instead of opening a line
    # whose every character would be wrong.
    with pseudo_terminal() as path:
        modbus, instrument = serial_links(path, parity="E")
        link, where = (modbus, modbus.description) if driver == "modbus" else (instrument, path)
        assert await refusal(link) == f"disconnected: {where}: {PTY_REFUSES_8E1}"
        # The refused attempt left nothing locked behind: 8N1 opens the port.
        good = serial_links(path)[1]
        await good.connect()
        await good.close()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        # What pyserial 3.5 raises for os.open's errors and a failed flock, and what termios
        # raises for settings a driver refuses.
        (
            serial.SerialException(
                13, "could not open port /dev/ttyS3: [Errno 13] Permission denied"
            ),
            "permission denied (add the agent's user to the `dialout` group)",
        ),
        (
            serial.SerialException(2, "could not open port /dev/ttyS3: [Errno 2] No such file"),
            NO_PORT,
        ),
        (
            serial.SerialException(11, "Could not exclusively lock port /dev/ttyS3: [Errno 11]"),
            IN_USE,
        ),
        (
            serial.SerialException("could not open port: [Errno 16] Device busy"),
            "cannot open: Device or resource busy",
        ),
        (termios.error(22, "Invalid argument"), "the port refuses 7O2 at 1200 bit/s"),
        (
            ValueError("Not a valid baudrate: 7"),
            "the port refuses the settings: Not a valid baudrate: 7",
        ),
    ],
)
def test_what_each_open_failure_says(error: Exception, reason: str) -> None:
    line = LineSettings(baudrate=1200, bytesize=7, parity="O", stopbits=2)
    assert open_failure("/dev/ttyS3", line, error) == reason
