"""SimPlant on real sockets, talked to by pymodbus's client (what the agent uses) and by
hand-made frames where the client would hide what we want to check."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.codec import RegisterType, WordOrder, decode
from sim import DeviceStats, SimConfig, SimPlant, SimStartError

DEADLINE = 5.0  # seconds any single network step may take before the test fails


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plant_config(*devices: dict[str, Any]) -> SimConfig:
    return SimConfig.model_validate({"kind": "sim", "devices": list(devices)})


@asynccontextmanager
async def modbus_client(endpoint: tuple[str, int, int]) -> AsyncIterator[AsyncModbusTcpClient]:
    host, port, _ = endpoint
    client = AsyncModbusTcpClient(host, port=port, timeout=DEADLINE, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def read_holding(client: AsyncModbusTcpClient, unit: int, address: int, count: int) -> Any:
    result = await client.read_holding_registers(address, count=count, device_id=unit)
    assert not result.isError(), result
    return result.registers


def frame(transaction: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", transaction, protocol, len(pdu) + 1, unit) + pdu


def read_pdu(function: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function, address, count)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(transaction id, unit id, PDU) of the next answer."""
    header = await asyncio.wait_for(reader.readexactly(7), DEADLINE)
    transaction, protocol, length, unit = struct.unpack(">HHHB", header)
    assert protocol == 0
    pdu = await asyncio.wait_for(reader.readexactly(length - 1), DEADLINE)
    return transaction, unit, pdu


@asynccontextmanager
async def raw_connection(
    endpoint: tuple[str, int, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(endpoint[0], endpoint[1])
    try:
        yield reader, writer
    finally:
        writer.close()
        # The server may already have dropped the connection (that is what some tests check).
        with suppress(ConnectionError):
            await writer.wait_closed()


# --- values, types and orders ----------------------------------------------------------

TYPED = plant_config(
    {
        "name": "typed",
        "unit_id": 7,
        "registers": [
            {"address": 0, "type": "float32", "value": 230.5},
            {"address": 2, "type": "float32", "order": "CDAB", "value": 230.5},
            {"address": 4, "type": "float32", "order": "BADC", "value": 230.5},
            {"address": 6, "type": "float32", "order": "DCBA", "value": 230.5},
            {"address": 8, "type": "int32", "value": -123456},
            {"address": 10, "type": "int32", "order": "CDAB", "value": -123456},
            {"address": 12, "type": "uint32", "value": 4_000_000_000},
            {"address": 14, "type": "int64", "value": -(2**62) - 3},
            {"address": 18, "type": "uint64", "order": "CDAB", "value": 2**64 - 2},
            {"address": 22, "type": "float64", "order": "DCBA", "value": -1.0e-3},
            {"address": 26, "type": "int16", "value": -2},
            {"address": 27, "type": "uint16", "value": 65535},
            {"address": 28, "type": "string", "length": 4, "value": "SN-42"},
            {"address": 32, "type": "string", "order": "BADC", "length": 2, "value": "AB"},
            # scale/offset: the register holds round((value - offset) / scale)
            {"address": 34, "type": "int16", "scale": 0.1, "value": -12.34},
            {"address": 35, "type": "uint16", "scale": 0.01, "offset": -40, "value": 21.5},
            {"address": 36, "type": "float32", "scale": 2, "offset": 1, "value": 10},
            # clamping and rounding of integer types
            {"address": 38, "type": "int16", "value": 40000},
            {"address": 39, "type": "uint16", "value": -5},
            {"address": 40, "type": "uint16", "value": 2.6},
            {"address": 41, "type": "float32", "value": 1e300},
            {"table": "input", "address": 0, "type": "int16", "value": 99},
        ],
    }
)


async def test_types_and_orders_decode() -> None:
    async with SimPlant(TYPED) as plant:
        endpoint = plant.endpoints()["typed"]
        unit = endpoint[2]
        assert unit == 7
        async with modbus_client(endpoint) as client:
            regs: list[int] = await read_holding(client, unit, 0, 43)

    def value(kind: str, order: str, start: int, count: int) -> int | float | str:
        return decode(RegisterType(kind), WordOrder(order), regs[start : start + count])

    # Raw words checked by hand, not only through the codec the simulator shares.
    assert regs[0:8] == [0x4366, 0x8000, 0x8000, 0x4366, 0x6643, 0x0080, 0x0080, 0x6643]
    assert value("int32", "ABCD", 8, 2) == -123456
    assert regs[8:10] == [0xFFFE, 0x1DC0]
    assert regs[10:12] == [0x1DC0, 0xFFFE]
    assert value("uint32", "ABCD", 12, 2) == 4_000_000_000
    assert value("int64", "ABCD", 14, 4) == -(2**62) - 3
    assert value("uint64", "CDAB", 18, 4) == 2**64 - 2
    assert value("float64", "DCBA", 22, 4) == -1.0e-3
    assert regs[26:28] == [0xFFFE, 0xFFFF]
    assert regs[28:32] == [0x534E, 0x2D34, 0x3200, 0x0000]  # "SN-42", NUL padded
    assert value("string", "ABCD", 28, 4) == "SN-42"
    assert regs[32:34] == [0x4241, 0x0000]
    assert value("string", "BADC", 32, 2) == "AB"
    assert value("int16", "ABCD", 34, 1) == -123
    assert regs[35] == 6150  # (21.5 + 40) / 0.01
    assert value("float32", "ABCD", 36, 2) == 4.5  # (10 - 1) / 2
    assert regs[38:41] == [32767, 0, 3]
    assert value("float32", "ABCD", 41, 2) == pytest.approx(3.4028234663852886e38)


async def test_input_and_holding_are_separate_tables() -> None:
    async with SimPlant(TYPED) as plant:
        endpoint = plant.endpoints()["typed"]
        async with modbus_client(endpoint) as client:
            result = await client.read_input_registers(0, count=1, device_id=7)
            assert result.registers == [99]
            result = await client.read_input_registers(1, count=1, device_id=7)
            assert result.isError()
            assert result.exception_code == 2


# --- exceptions ------------------------------------------------------------------------


async def test_exceptions() -> None:
    config = plant_config(
        {
            "name": "d",
            "registers": [
                {"address": 0, "type": "uint16", "value": 1},
                {"address": 2, "type": "uint16", "value": 2},
            ],
        }
    )
    async with SimPlant(config) as plant:
        endpoint = plant.endpoints()["d"]
        async with modbus_client(endpoint) as client:
            hole = await client.read_holding_registers(0, count=3, device_id=1)
            assert hole.isError()
            assert hole.exception_code == 2
            coils = await client.read_coils(0, count=1, device_id=1)
            assert coils.isError()
            assert coils.exception_code == 1
            write = await client.write_register(1, 5, device_id=1)
            assert write.isError()
            assert write.exception_code == 2
        # pymodbus refuses to send a count of 0 or 126, so send those by hand.
        async with raw_connection(endpoint) as (reader, writer):
            writer.write(frame(1, 1, read_pdu(3, 0, 0)) + frame(2, 1, read_pdu(3, 0, 126)))
            assert await read_frame(reader) == (1, 1, b"\x83\x03")
            assert await read_frame(reader) == (2, 1, b"\x83\x03")
        assert plant.stats() == {"d": DeviceStats(requests=5, exceptions=5)}


# --- writes ----------------------------------------------------------------------------


async def test_writes_read_back() -> None:
    config = plant_config(
        {
            "name": "d",
            "registers": [
                {"address": 0, "type": "uint16", "value": 1},
                {"address": 1, "type": "float32", "value": 0.0},
            ],
        }
    )
    async with SimPlant(config) as plant, modbus_client(plant.endpoints()["d"]) as client:
        assert not (await client.write_register(0, 1234, device_id=1)).isError()
        assert not (await client.write_registers(1, [0x4366, 0x8000], device_id=1)).isError()
        regs = await read_holding(client, 1, 0, 3)
    assert regs[0] == 1234
    assert decode(RegisterType.FLOAT32, WordOrder.ABCD, regs[1:]) == 230.5


# --- several units behind one port -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unit_device(name: str, unit: int, value: int, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "unit_id": unit,
        "registers": [{"address": 0, "type": "uint16", "value": value}],
        **fields,
    }


async def test_gateway_serves_several_units_on_one_port() -> None:
    config = plant_config(
        unit_device("a", 1, 100, gateway="gw"),
        unit_device("b", 2, 200, gateway="gw"),
        unit_device("c", 1, 300),  # port 0 without a gateway: a port of its own
    )
    async with SimPlant(config) as plant:
        ends = plant.endpoints()
        assert list(ends) == ["a", "b", "c"]
        assert ends["a"][:2] == ends["b"][:2]
        assert ends["c"][1] != ends["a"][1]
        assert ends["a"][1] > 0
        async with modbus_client(ends["a"]) as client:
            assert await read_holding(client, 1, 0, 1) == [100]
            assert await read_holding(client, 2, 0, 1) == [200]
        async with modbus_client(ends["c"]) as client:
            assert await read_holding(client, 1, 0, 1) == [300]


async def test_devices_on_the_same_fixed_port_share_it() -> None:
    port = free_port()
    config = plant_config(unit_device("a", 1, 100, port=port), unit_device("b", 5, 500, port=port))
    async with SimPlant(config) as plant:
        assert plant.endpoints() == {"a": ("127.0.0.1", port, 1), "b": ("127.0.0.1", port, 5)}
        async with modbus_client(plant.endpoints()["a"]) as client:
            assert await read_holding(client, 5, 0, 1) == [500]
            assert await read_holding(client, 1, 0, 1) == [100]


async def test_unknown_unit_gets_no_answer() -> None:
    async with SimPlant(plant_config(unit_device("a", 1, 100))) as plant:
        async with raw_connection(plant.endpoints()["a"]) as (reader, writer):
            # Answers come in request order, so if the first answer is to transaction 2,
            # the request to unit 9 was not answered (and no timeout is needed to tell).
            writer.write(frame(1, 9, read_pdu(3, 0, 1)) + frame(2, 1, read_pdu(3, 0, 1)))
            assert await read_frame(reader) == (2, 1, b"\x03\x02\x00\x64")
        assert plant.stats()["a"].requests == 1


# --- framing ---------------------------------------------------------------------------


async def test_frame_split_across_writes() -> None:
    async with (
        SimPlant(plant_config(unit_device("a", 1, 100))) as plant,
        raw_connection(plant.endpoints()["a"]) as (reader, writer),
    ):
        request = frame(0x1234, 1, read_pdu(3, 0, 1))
        # Split inside the header, then inside the PDU.
        for part in (request[:3], request[3:9], request[9:]):
            writer.write(part)
            await writer.drain()
        assert await read_frame(reader) == (0x1234, 1, b"\x03\x02\x00\x64")
        # One byte per write.
        for byte in frame(0x1235, 1, read_pdu(3, 0, 1)):
            writer.write(bytes([byte]))
            await writer.drain()
        assert await read_frame(reader) == (0x1235, 1, b"\x03\x02\x00\x64")


async def test_several_frames_in_one_write_and_a_partial_tail() -> None:
    async with (
        SimPlant(plant_config(unit_device("a", 1, 100))) as plant,
        raw_connection(plant.endpoints()["a"]) as (reader, writer),
    ):
        frames = b"".join(frame(t, 1, read_pdu(3, 0, 1)) for t in range(1, 4))
        tail = frame(4, 1, read_pdu(3, 0, 1))
        writer.write(frames + tail[:8])
        await writer.drain()
        for t in range(1, 4):
            assert await read_frame(reader) == (t, 1, b"\x03\x02\x00\x64")
        writer.write(tail[8:])
        assert await read_frame(reader) == (4, 1, b"\x03\x02\x00\x64")


async def test_other_protocol_ids_are_ignored() -> None:
    async with (
        SimPlant(plant_config(unit_device("a", 1, 100))) as plant,
        raw_connection(plant.endpoints()["a"]) as (reader, writer),
    ):
        writer.write(frame(1, 1, read_pdu(3, 0, 1), protocol=7) + frame(2, 1, read_pdu(3, 0, 1)))
        assert (await read_frame(reader))[0] == 2


@pytest.mark.parametrize("length", [0, 1, 255, 0xFFFF])
async def test_impossible_length_drops_the_connection(length: int) -> None:
    async with (
        SimPlant(plant_config(unit_device("a", 1, 100))) as plant,
        raw_connection(plant.endpoints()["a"]) as (reader, writer),
    ):
        writer.write(struct.pack(">HHHB", 1, 0, length, 1) + b"\x03\x00\x00\x00\x01")
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""


async def test_pipelined_requests_all_answered_in_order() -> None:
    async with SimPlant(plant_config(unit_device("a", 1, 100))) as plant:
        async with raw_connection(plant.endpoints()["a"]) as (reader, writer):
            count = 5000
            writer.write(b"".join(frame(t, 1, read_pdu(3, 0, 1)) for t in range(count)))
            for t in range(count):
                assert (await read_frame(reader))[0] == t
        assert plant.stats()["a"] == DeviceStats(requests=count, exceptions=0)


# --- waveforms under an injected clock -------------------------------------------------


async def test_waveforms_follow_the_clock() -> None:
    clock = FakeClock()
    config = plant_config(
        {
            "name": "w",
            "registers": [
                {
                    "table": "input",
                    "address": 0,
                    "type": "int16",
                    "scale": 0.1,
                    "value": {"wave": "sine", "amplitude": 10, "period": 60, "offset": 20},
                },
                {
                    "table": "input",
                    "address": 1,
                    "type": "int16",
                    "value": {"wave": "sine", "amplitude": 10, "period": 60, "phase": 90},
                },
                {
                    "table": "input",
                    "address": 2,
                    "type": "float32",
                    "value": {"wave": "ramp", "start": 1, "slope": 2, "max": 11},
                },
                {
                    "table": "input",
                    "address": 4,
                    "type": "uint16",
                    "value": {"wave": "counter", "start": 65534, "step": 1},
                },
                {
                    "table": "input",
                    "address": 5,
                    "type": "uint32",
                    "value": {"wave": "counter", "start": 10, "step": 3, "interval": 10},
                },
                {
                    "table": "input",
                    "address": 7,
                    "type": "float32",
                    "value": {"wave": "constant", "value": 5},
                },
            ],
        }
    )
    async with (
        SimPlant(config, clock=clock) as plant,
        modbus_client(plant.endpoints()["w"]) as client,
    ):

        async def sample() -> tuple[int | float | str, ...]:
            result = await client.read_input_registers(0, count=9, device_id=1)
            regs = result.registers
            return (
                decode(RegisterType.INT16, WordOrder.ABCD, regs[0:1]),
                decode(RegisterType.INT16, WordOrder.ABCD, regs[1:2]),
                decode(RegisterType.FLOAT32, WordOrder.ABCD, regs[2:4]),
                regs[4],
                decode(RegisterType.UINT32, WordOrder.ABCD, regs[5:7]),
                decode(RegisterType.FLOAT32, WordOrder.ABCD, regs[7:9]),
            )

        assert await sample() == (200, 10, 1.0, 65534, 10, 5.0)
        clock.now = 15.0
        # The ramp reached 31 and restarted twice at 11 (saw-tooth); the 16-bit counter
        # went 65534, 65535, 0, ... and is at 13.
        assert await sample() == (300, 0, 1.0, 13, 13, 5.0)
        clock.now = 45.0
        assert await sample() == (100, 0, 1.0, 43, 22, 5.0)
        clock.now = 46.25
        # 20 + 10·sin(2π·46.25/60) = 10.09 → 101 tenths; 10·cos(…) = 1.3 → 1
        assert await sample() == (101, 1, 3.5, 44, 22, 5.0)


RANDOM_WALK = {
    "name": "r",
    "registers": [
        {
            "table": "input",
            "address": 0,
            "type": "float32",
            "value": {
                "wave": "random_walk",
                "start": 50,
                "step": 5,
                "min": 40,
                "max": 60,
                "seed": 42,
            },
        },
    ],
}


async def walk(times: list[float], reads_per_time: int) -> list[int | float | str]:
    """The random walk sampled at ``times``, reading each sample ``reads_per_time`` times."""
    clock = FakeClock()
    values: list[int | float | str] = []
    async with (
        SimPlant(plant_config(RANDOM_WALK), clock=clock) as plant,
        modbus_client(plant.endpoints()["r"]) as client,
    ):
        for now in times:
            clock.now = now
            for _ in range(reads_per_time):
                result = await client.read_input_registers(0, count=2, device_id=1)
                value = decode(RegisterType.FLOAT32, WordOrder.ABCD, result.registers)
            values.append(value)
    return values


async def test_random_walk_is_reproducible_and_bounded() -> None:
    times = [0.0, 1.0, 2.5, 10.0, 100.0, 1000.0]
    first = await walk(times, reads_per_time=1)
    # How often it is read does not change the walk, only the seed and the time do.
    assert await walk(times, reads_per_time=3) == first
    assert first[0] == 50.0
    assert len(set(first)) > 3
    assert all(isinstance(v, float) and 40.0 <= v <= 60.0 for v in first)


# --- lifecycle -------------------------------------------------------------------------


async def test_port_in_use_is_reported_and_nothing_is_left_bound() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = plant_config(unit_device("first", 1, 1), unit_device("second", 1, 1, port=port))
        plant = SimPlant(config)
        expected = rf"cannot listen on 127\.0\.0\.1:{port} for second: "
        with pytest.raises(SimStartError, match=expected):
            await plant.__aenter__()
        assert plant.endpoints() == {}


async def test_exit_closes_open_connections() -> None:
    plant = SimPlant(plant_config(unit_device("a", 1, 100)))
    async with plant:
        endpoint = plant.endpoints()["a"]
        reader, writer = await asyncio.open_connection(endpoint[0], endpoint[1])
    try:
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
    except ConnectionResetError:
        pass  # the connection is aborted, which some platforms report as a reset
    finally:
        writer.close()
    with pytest.raises(OSError):  # noqa: PT011 - refused: the port is no longer listening
        await asyncio.open_connection(endpoint[0], endpoint[1])


# --- framing, without a socket: exact control over how the bytes arrive ---------------


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_protocol_answers_each_complete_frame_exactly_once() -> None:
    from sim.tcp import ModbusTcpProtocol

    seen: list[bytes] = []

    def echo_unit(pdu: bytes) -> bytes:
        seen.append(pdu)
        return b"\x03\x02\x00" + bytes([len(seen)])

    transport = RecordingTransport()
    connections: set[asyncio.Transport] = set()
    protocol = ModbusTcpProtocol({1: echo_unit}, connections)
    protocol.connection_made(transport)
    assert connections == {transport}

    stream = b"".join(frame(t, 1, read_pdu(3, t, 1)) for t in range(1, 4))
    for byte in stream[:-1]:  # all but the last byte: frames 1 and 2 are complete
        protocol.data_received(bytes([byte]))
    assert seen == [read_pdu(3, 1, 1), read_pdu(3, 2, 1)]
    protocol.data_received(stream[-1:])
    assert seen == [read_pdu(3, t, 1) for t in range(1, 4)]
    assert transport.written == [frame(t, 1, b"\x03\x02\x00" + bytes([t])) for t in range(1, 4)]

    # Two frames and a half in one read: one write for both answers, the half is kept.
    transport.written.clear()
    more = b"".join(frame(t, 1, read_pdu(3, 0, 1)) for t in range(4, 7))
    protocol.data_received(more[:-2])
    answers = frame(4, 1, b"\x03\x02\x00\x04") + frame(5, 1, b"\x03\x02\x00\x05")
    assert transport.written == [answers]
    protocol.data_received(more[-2:])
    assert transport.written[-1] == frame(6, 1, b"\x03\x02\x00\x06")

    protocol.connection_lost(None)
    assert connections == set()
    assert not transport.closed
