"""``fieldlink modbus scan`` and ``fieldlink modbus probe`` (drivers/modbus/tools.py).

The commands run as separate processes (``main`` of the module, so the tests do not depend
on fieldlink/cli.py) against real simulators served by this test's event loop: a Modbus TCP
gateway with several unit ids, and an RTU line on a pseudo-terminal. Then the pieces in
process: FC43 in the simulator, ``ModbusLink.read_identification``, argument parsing and the
decoding and marking of a window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.sim import SimConfig, SimDevice
from drivers.errors import DeviceException
from drivers.modbus.codec import RegisterType, WordOrder, encode
from drivers.modbus.config import ModbusBus
from drivers.modbus.link import ModbusLink
from drivers.modbus.tools import (
    Marker,
    decode_window,
    format_units,
    format_value,
    main,
    parse_range,
    parse_units,
    register,
    text_runs,
)
from sim.image import RegisterImage
from sim.pdu import handle_pdu
from sim.server import SimPlant

ROOT = Path(__file__).resolve().parents[1]
TOOL = [
    sys.executable,
    "-c",
    "import sys; from drivers.modbus.tools import main; sys.exit(main(sys.argv[1:]))",
]
#: A Linux pseudo-terminal refuses parity: serial sims and tools run 8N1.
LINE = {"parity": "N", "stopbits": 1}
IDENTITY = {"vendor": "ACME Metering", "product_code": "EM-340", "revision": "1.04"}

#: A meter whose map has no holes from 0 to 15: every window in it reads in one request.
METER_MAP: list[dict[str, Any]] = [
    {"address": 0, "type": "float32", "value": 230.5},
    {"address": 2, "type": "float32", "order": "CDAB", "value": 49.95},
    {"address": 4, "type": "int16", "value": 230},
    {"address": 5, "type": "uint16", "value": 2305},
    {"address": 6, "type": "string", "length": 3, "value": "EM-340"},
    {"address": 9, "type": "uint32", "order": "CDAB", "value": 123456},
    {"address": 11, "type": "float64", "value": 1013.25},
    {"address": 15, "type": "uint16", "value": 0},
    {"table": "input", "address": 0, "type": "int16", "scale": 0.1, "value": -12.5},
]


def gateway_plant() -> SimConfig:
    """Units 1, 2, 7 and 9 behind one Modbus TCP port: 1 has identification, 2 a sparse map
    without address 0 (it answers exception 2), 7 is plain, and for 9 the gateway answers
    exception 11 (target device failed to respond), as a gateway does for an absent unit."""
    devices: list[dict[str, Any]] = [
        {"name": "meter", "unit_id": 1, "identity": IDENTITY, "registers": METER_MAP},
        {
            "name": "sparse",
            "unit_id": 2,
            "registers": [
                {"address": 1, "type": "uint16", "value": 1},
                {"address": 10, "type": "uint32", "value": (3 << 16) | 4},
            ],
        },
        {"name": "pump", "unit_id": 7, "registers": [{"address": 0, "type": "int16", "value": -7}]},
        {
            "name": "ghost",
            "unit_id": 9,
            "faults": [{"exception": 11}],
            "registers": [{"address": 0, "type": "uint16", "value": 0}],
        },
    ]
    for device in devices:
        device["gateway"] = "gw"
    return SimConfig.model_validate({"kind": "sim", "devices": devices})


def rtu_plant() -> SimConfig:
    """Units 1 and 3 on one RTU line; 3 has identification and no holding register 0."""
    common = {"transport": "rtu", "gateway": "rs485", "baudrate": 19200, **LINE}
    return SimConfig.model_validate(
        {
            "kind": "sim",
            "devices": [
                {
                    **common,
                    "name": "m1",
                    "unit_id": 1,
                    "registers": [{"address": 0, "type": "uint16", "value": 1}],
                },
                {
                    **common,
                    "name": "m3",
                    "unit_id": 3,
                    "identity": {"vendor": "Lumen", "product_code": "LX-9", "revision": "2.1"},
                    "registers": [{"table": "input", "address": 0, "type": "uint16", "value": 3}],
                },
            ],
        }
    )


@dataclass
class Run:
    code: int
    out: str
    err: str

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def tool(*args: str) -> Run:
    """``modbus ARGS`` in a process of its own, served by this loop's simulators meanwhile."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    process = await asyncio.create_subprocess_exec(
        *TOOL,
        "modbus",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    run = Run(process.returncode, out.decode(), err.decode())
    assert "Traceback" not in run.err, run.err
    return run


def tcp_args(plant: SimPlant, name: str = "meter") -> list[str]:
    host, port, _ = plant.endpoints()[name]
    return ["--host", host, "--port", str(port)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- scan ---------------------------------------------------------------------------------------


async def test_scan_finds_exactly_the_units_behind_one_gateway() -> None:
    async with SimPlant(gateway_plant()) as plant:
        where = tcp_args(plant)
        found = await tool("scan", *where, "--units", "1-10", "--json")
        table = await tool("scan", *where, "--units", "1-3,7,9")
    assert found.code == 0, found.err
    rows = found.rows()
    # Exactly the configured units; 9 only got exception 11 from the gateway: not there.
    assert [r["unit"] for r in rows] == [1, 2, 7]
    by_unit = {r["unit"]: r for r in rows}
    assert by_unit[1]["answer"] == "ok"
    assert by_unit[1]["identity"] == IDENTITY
    assert by_unit[1]["transport"] == "tcp" and by_unit[1]["line"] is None
    # An exception answer proves the unit is there.
    assert by_unit[2]["answer"] == "exception 2 (illegal data address)"
    assert by_unit[7]["identity"] is None
    assert by_unit[7]["identity_note"] == "exception 1 (illegal function)"

    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert "3 of 5 unit ids answered" in lines[0]
    row = {line.split()[0]: line for line in lines[3:] if line.strip()}
    assert set(row) == {"1", "2", "7"}
    assert all(text in row["1"] for text in ("ok", "ACME Metering", "EM-340", "1.04"))
    assert "exception 2 (illegal data address)" in row["2"]
    assert "(no FC43 identification)" in row["7"]


async def test_scan_sweeps_line_settings_on_an_rtu_line() -> None:
    async with SimPlant(rtu_plant()) as plant:
        path = plant.serial_endpoints()["m1"].path
        run = await tool(
            "scan",
            *("--serial", path, "--baud", "9600,19200", "--parity", "E,N"),
            *("--units", "1-4", "--timeout", "0.5", "--json"),
        )
        served = plant.stats()
        line = plant.bus_stats("m1")
    assert run.code == 0, run.err
    rows = run.rows()
    assert [(r["unit"], r["line"]) for r in rows] == [(1, "9600 8N1"), (3, "9600 8N1")]
    assert rows[0]["answer"] == "ok"
    assert rows[1]["answer"] == "exception 2 (illegal data address)"
    assert rows[1]["identity"] == {"vendor": "Lumen", "product_code": "LX-9", "revision": "2.1"}
    assert rows[0]["transport"] == "rtu" and rows[0]["endpoint"] == path
    # The pty refuses even parity; those settings are skipped with the reason, the rest swept.
    assert run.err.splitlines() == [
        f"note: skipped {baud} 8E1: the port refuses 8E1 at {baud} bit/s; a pseudo-terminal "
        "takes only 8 data bits and no parity"
        for baud in (9600, 19200)
    ]
    # A unit found on one setting is not asked again on the next: one read and one FC43.
    assert served["m1"].requests == served["m3"].requests == 2
    assert line.crc_errors == line.collisions == 0
    # Units 2 and 4 were asked on both settings that opened; nobody is either.
    assert line.foreign == 4


async def test_scan_exits_1_when_no_unit_answers() -> None:
    async with SimPlant(gateway_plant()) as plant:
        run = await tool("scan", *tcp_args(plant), "--units", "3-4", "--timeout", "0.1")
    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith("no unit answered on tcp 127.0.0.1:")
    assert run.err.rstrip().endswith("unit ids 3-4, timeout 0.1 s")


async def test_nothing_listening_is_one_line_and_exit_2() -> None:
    port = free_port()
    where = ("--host", "127.0.0.1", "--port", str(port))
    missing = "/dev/does-not-exist"
    runs = await asyncio.gather(
        tool("scan", *where, "--units", "1-3"),
        tool("probe", *where, "--address", "0"),
        tool("scan", "--serial", missing, "--baud", "9600,19200", "--parity", "N"),
        tool("probe", "--serial", missing, "--parity", "N", "--address", "0"),
    )
    refused = f"error: modbus tcp 127.0.0.1:{port}: connection refused or timed out\n"
    no_port = "no such port (unplugged? check the path, or /dev/serial/by-id/)\n"
    assert [(r.code, r.out) for r in runs] == [(2, "")] * 4
    assert runs[0].err == runs[1].err == refused
    # One line, not one per line setting: the port is missing whatever the setting.
    assert runs[2].err == f"error: modbus rtu {missing} 9600 8N1: {no_port}"
    assert runs[3].err == f"error: modbus rtu {missing} 19200 8N1: {no_port}"


async def test_wrong_arguments_are_one_line_and_exit_2() -> None:
    runs = await asyncio.gather(
        tool("scan", "--serial", "/dev/ttyUSB0", "--transport", "tcp"),
        tool("scan", "--host", "gw", "--baud", "9600"),
        tool("scan", "--serial", "/dev/ttyUSB0", "--units", "0-3"),
        tool("probe", "--host", "gw", "--address", "40001", "--base", "modicon", "--input"),
        tool("probe", "--host", "gw", "--address", "10001", "--base", "modicon"),
        tool("probe", "--serial", "/dev/x", "--address", "0", "--baud", "9600,19200"),
    )
    assert [r.code for r in runs] == [2] * len(runs)
    assert [r.err for r in runs] == [
        "error: --transport tcp runs over TCP: give --host H --port P instead of --serial\n",
        "error: --baud is for serial lines (--serial), not for --host\n",
        "error: --units: on a serial line unit ids are 1..247 (0 is the broadcast address, "
        "nobody answers it)\n",
        "error: --input: 40001 is not an input register in Modicon notation (3xxxx); leave out "
        "--input, a Modicon address names its table\n",
        "error: --address 10001 is a discrete input in Modicon notation; probe reads "
        "registers (4xxxx holding, 3xxxx input)\n",
        "error: --baud takes one value here (only scan sweeps a list)\n",
    ]


# -- probe --------------------------------------------------------------------------------------


def marks(rows: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {(r["address"], label) for r in rows for label in r["plausible"]}


async def test_probe_marks_the_float32_stored_cdab() -> None:
    async with SimPlant(gateway_plant()) as plant:
        where = tcp_args(plant)
        window = ("--address", "40001", "--base", "modicon", "--count", "16")
        run = await tool("probe", *where, *window, "--expect", "49.95", "--json")
        shown = await tool("probe", *where, *window, "--expect", "49.95")
        tight = await tool("probe", *where, "--address", "2", "--count", "2", "--expect", "49.95")
    assert run.code == 0, run.err
    rows = run.rows()
    assert [r["address"] for r in rows] == list(range(16))
    row = rows[2]
    assert (row["address"], row["address_1"], row["modicon"]) == (2, 3, "40003")
    assert row["table"] == "holding" and row["unit"] == 1
    assert row["values"]["float32"]["CDAB"] == 49.95  # shortest float32 digits
    assert row["values"]["float32"]["ABCD"] != pytest.approx(49.95, rel=0.005)
    assert row["plausible"] == ["float32 CDAB"]
    # The only other mark: ABCD one register on, which starts with the same high word
    # (0x4247: 49.75..50.0, always within ±0.5 % of 49.95). The summary ranks it second.
    assert marks(rows) == {(2, "float32 CDAB"), (3, "float32 ABCD")}

    assert shown.code == 0, shown.err
    summary = shown.out[shown.out.index("* plausible") :].splitlines()
    assert summary[:2] == [
        "* plausible: within ±0.5 % of 49.95 (integers: equal)",
        "  float32 CDAB at 40003 (0-based 2, 1-based 3): 49.95 (+0.000 %)",
    ]
    assert summary[2].startswith("  float32 ABCD at 40004 (0-based 3, 1-based 4): 49.75")
    assert len(summary) == 3
    assert "49.95*" in shown.out
    assert "text AB: 'EM-340' at 40007" in shown.out
    # A window that ends with the value has no neighbour to confuse it with.
    assert tight.code == 0, tight.err
    assert "  float32 CDAB at 40003 (0-based 2, 1-based 3): 49.95 (+0.000 %)" in tight.out
    assert "float32 ABCD at" not in tight.out


async def test_probe_marks_a_range_and_by_default_plausible_floats() -> None:
    async with SimPlant(gateway_plant()) as plant:
        where = (*tcp_args(plant), "--address", "0", "--count", "16", "--json")
        ranged = await tool("probe", *where, "--range", "229:232")
        default = await tool("probe", *where)
        exact = await tool("probe", *where, "--expect", "2305")
    assert ranged.code == default.code == exact.code == 0
    assert marks(ranged.rows()) == {
        (0, "float32 ABCD"),
        (4, "int16 AB"),
        (4, "uint16 AB"),
    }
    found = marks(default.rows())
    assert {(0, "float32 ABCD"), (2, "float32 CDAB"), (11, "float64 ABCD")} <= found
    assert all(label.startswith("float") for _, label in found)  # integers are not guessed
    # Integers match --expect exactly.
    assert marks(exact.rows()) == {(5, "int16 AB"), (5, "uint16 AB")}
    rows = default.rows()
    assert rows[11]["values"]["float64"]["ABCD"] == 1013.25
    assert rows[9]["values"]["uint32"]["CDAB"] == 123456
    # Text runs from its register to the first NUL (or the window's end): here past the
    # string, which fills its three registers without a NUL.
    text = rows[6]["values"]["string"]
    assert text["ABCD"].startswith("EM-340") and text["BADC"].startswith("ME3-04")


async def test_probe_input_registers_in_every_notation() -> None:
    async with SimPlant(gateway_plant()) as plant:
        where = tcp_args(plant)
        one_based = await tool(
            "probe", *where, "--address", "1", "--base", "1", "--input", "--count", "1", "--json"
        )
        modicon = await tool(
            "probe", *where, "--address", "30001", "--base", "modicon", "--count", "1", "--json"
        )
    assert one_based.code == modicon.code == 0
    assert one_based.rows() == modicon.rows()
    row = one_based.rows()[0]
    assert (row["table"], row["address"], row["address_1"], row["modicon"]) == (
        "input",
        0,
        1,
        "30001",
    )
    assert row["values"]["int16"]["ABCD"] == -125
    assert row["hex"] == "FF83"


async def test_probe_reads_around_addresses_the_device_lacks() -> None:
    async with SimPlant(gateway_plant()) as plant:
        where = (*tcp_args(plant), "--unit", "2")
        holes = await tool("probe", *where, "--address", "1", "--count", "11", "--json")
        shown = await tool("probe", *where, "--address", "1", "--count", "11")
        none = await tool("probe", *where, "--address", "3", "--count", "4")
        datasheet = await tool("probe", *tcp_args(plant), "--address", "40001")
    assert holes.code == 0, holes.err
    rows = holes.rows()
    assert [r["register"] is not None for r in rows] == [True] + [False] * 8 + [True] * 2
    assert rows[1]["values"] == {} and rows[1]["hex"] is None
    assert rows[0]["values"]["uint16"]["ABCD"] == 1
    assert "int32" not in rows[0]["values"]  # it would cross the missing register 2
    assert rows[9]["values"]["uint32"]["ABCD"] == (3 << 16) | 4
    assert shown.code == 0, shown.err
    assert "refused the window as a whole (exception 2 (illegal data address))" in shown.out
    assert "it has no register at 2-9 (0-based)" in shown.out
    assert none.code == 1
    assert none.err == (
        f"error: unit 2 on modbus tcp {where[1]}:{where[3]}, holding registers 3..6 "
        "(40004..40007): exception 2 (illegal data address); the device has no register at "
        "these addresses: try another --address, or with --input\n"
    )
    # A datasheet address given as a protocol address gets a hint.
    assert datasheet.code == 1
    assert datasheet.err.endswith("40001 looks like a Modicon address: try --base modicon\n")


async def test_probe_of_a_silent_unit_exits_1() -> None:
    async with SimPlant(gateway_plant()) as plant:
        where = tcp_args(plant)
        run = await tool("probe", *where, "--unit", "5", "--address", "0", "--timeout", "0.2")
    assert run.code == 1
    assert run.out == ""
    assert run.err.endswith(
        "holding registers 0..9 (40001..40010): no answer within 0.2 s (check --unit and the "
        "line settings)\n"
    )


async def test_probe_over_rtu() -> None:
    async with SimPlant(rtu_plant()) as plant:
        path = plant.serial_endpoints()["m3"].path
        run = await tool(
            "probe",
            *("--serial", path, "--parity", "N", "--unit", "3"),
            *("--address", "30001", "--base", "modicon", "--count", "1", "--json"),
        )
    assert run.code == 0, run.err
    assert run.rows()[0]["register"] == 3


# -- FC43 in the simulator and the link ---------------------------------------------------------


def sim_image(identity: dict[str, str] | None) -> RegisterImage:
    device = SimDevice.model_validate(
        {
            "name": "d",
            "identity": identity,
            "registers": [{"address": 0, "type": "uint16", "value": 1}],
        }
    )
    return RegisterImage(device, lambda: 0.0)


def fc43(code: int, object_id: int) -> bytes:
    return bytes((0x2B, 0x0E, code, object_id))


def objects(*items: tuple[int, bytes]) -> bytes:
    return b"".join(bytes((oid, len(v))) + v for oid, v in items)


BASIC = ((0, b"ACME Metering"), (1, b"EM-340"), (2, b"1.04"))


@pytest.mark.parametrize(
    ("request_pdu", "answer"),
    [
        # Stream access to the basic objects, from object 0; from 1; from an unknown id (0).
        (fc43(1, 0), bytes((0x2B, 0x0E, 1, 0x81, 0, 0, 3)) + objects(*BASIC)),
        (fc43(1, 1), bytes((0x2B, 0x0E, 1, 0x81, 0, 0, 2)) + objects(*BASIC[1:])),
        (fc43(1, 0x55), bytes((0x2B, 0x0E, 1, 0x81, 0, 0, 3)) + objects(*BASIC)),
        # Regular (2) asked of a basic device: answered at its own level.
        (fc43(2, 0), bytes((0x2B, 0x0E, 2, 0x81, 0, 0, 3)) + objects(*BASIC)),
        # Individual access.
        (fc43(4, 2), bytes((0x2B, 0x0E, 4, 0x81, 0, 0, 1)) + objects(BASIC[2])),
        (fc43(4, 3), b"\xab\x02"),  # no such object
        (fc43(5, 0), b"\xab\x03"),  # no such read code
        (b"\x2b\x0e\x01", b"\xab\x03"),  # truncated
        (b"\x2b\x0d\x01\x00", b"\xab\x01"),  # CANopen general reference: not served
    ],
)
def test_sim_answers_device_identification(request_pdu: bytes, answer: bytes) -> None:
    assert handle_pdu(sim_image(IDENTITY), request_pdu) == answer


def test_sim_without_identity_refuses_fc43() -> None:
    assert handle_pdu(sim_image(None), fc43(1, 0)) == b"\xab\x01"


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        ({**IDENTITY, "vendor": "Müller"}, "must be printable ASCII"),
        ({**IDENTITY, "revision": "x" * 81}, "at most 80 characters"),
        ({"vendor": "ACME", "product_code": "EM"}, "revision"),
    ],
)
def test_sim_identity_is_checked(identity: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        sim_image(identity)


async def test_link_reads_the_identification_over_tcp_and_rtu_over_tcp() -> None:
    doc = gateway_plant().model_dump(exclude_unset=True)
    over_tcp = SimConfig.model_validate(doc)
    for device in doc["devices"]:
        device["transport"] = "rtu-over-tcp"
    rtu_over_tcp = SimConfig.model_validate(doc)
    for config, transport in ((over_tcp, "tcp"), (rtu_over_tcp, "rtu-over-tcp")):
        async with SimPlant(config) as plant:
            host, port, _ = plant.endpoints()["meter"]
            bus = ModbusBus.model_validate(
                {
                    "name": "b",
                    "driver": "modbus",
                    "transport": transport,
                    "host": host,
                    "port": port,
                    "timeout": 2,
                }
            )
            link = ModbusLink(bus)
            await link.connect()
            try:
                assert await link.read_identification(1) == {
                    0: "ACME Metering",
                    1: "EM-340",
                    2: "1.04",
                }
                with pytest.raises(DeviceException, match=r"exception 1 \(illegal function\)"):
                    await link.read_identification(7)
            finally:
                await link.close()


# -- pieces -------------------------------------------------------------------------------------


def test_unit_lists() -> None:
    assert parse_units("1-3,7, 5,2") == [1, 2, 3, 5, 7]
    assert format_units([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert format_units(parse_units("1-247")) == "1-247"
    for bad in ("3-1", "1-300", "x", "1-"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_units(bad)


def test_ranges() -> None:
    assert parse_range("200:250") == (200, 250)
    assert parse_range(":5") == (-math.inf, 5)
    assert parse_range("-5:") == (-5, math.inf)
    for bad in ("5", "5:1", "a:b", "nan:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_range(bad)


def test_decode_window_every_type_and_order() -> None:
    words = encode(RegisterType.FLOAT64, WordOrder.DCBA, -2.5)
    decoded = decode_window(words, 100, Marker(expect=-2.5))
    assert sorted(decoded) == [100, 101, 102, 103]
    first = {c.label: c for c in decoded[100]}
    # 3 types × 4 orders at 32 and 64 bits, 2 types × 2 byte orders at 16 bits.
    assert len(first) == 6 * 4 + 2 * 2
    assert first["float64 DCBA"].value == -2.5
    assert [c.label for c in decoded[100] if c.marked] == ["float64 DCBA"]
    assert {c.kind for c in decoded[103]} == {RegisterType.INT16, RegisterType.UINT16}
    # A missing register ends every value that would cross it.
    holes = decode_window([1, None, 2, 3], 0, Marker())
    assert {c.kind.value for c in holes[0]} == {"int16", "uint16"}
    assert holes[1] == []
    assert {c.label for c in holes[2]} >= {"float32 CDAB", "int16 AB"}


def test_marks() -> None:
    default = Marker()
    assert default(RegisterType.FLOAT32, 0.5) and default(RegisterType.FLOAT64, -9e6)
    assert not default(RegisterType.FLOAT32, 1e-5) and not default(RegisterType.FLOAT32, 2e7)
    assert not default(RegisterType.FLOAT32, math.nan) and not default(RegisterType.UINT16, 5)
    expect = Marker(expect=230.5)
    assert expect(RegisterType.FLOAT32, 231.6) and not expect(RegisterType.FLOAT32, 231.7)
    assert not expect(RegisterType.INT32, 230) and Marker(expect=230)(RegisterType.INT32, 230)
    ranged = Marker(range=(-1, 1))
    assert ranged(RegisterType.INT16, -1) and not ranged(RegisterType.FLOAT32, math.inf)


def test_values_read_as_the_datasheet_writes_them() -> None:
    (as_float32,) = struct.unpack(">f", struct.pack(">f", 49.95))
    assert format_value(RegisterType.FLOAT32, as_float32) == "49.95"
    assert format_value(RegisterType.FLOAT64, 0.1) == "0.1"
    assert format_value(RegisterType.FLOAT32, math.inf) == "inf"
    words = encode(RegisterType.STRING, WordOrder.ABCD, "xSN-42", 4)
    assert text_runs([0x0102, *words, None, 0x4142, 0x4344], 10, WordOrder.ABCD) == [
        (11, "xSN-42"),
        (16, "ABCD"),
    ]
    assert text_runs(words, 0, WordOrder.BADC) == [(0, "Sx-N24")]


def test_register_mounts_on_the_fieldlink_parser() -> None:
    parser = argparse.ArgumentParser(prog="fieldlink")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["modbus", "scan", "--host", "gw", "--units", "1-3"])
    assert (args.command, args.modbus_command, args.units, args.timeout) == (
        "modbus",
        "scan",
        [1, 2, 3],
        0.2,
    )
    args = parser.parse_args(["modbus", "probe", "--serial", "/dev/x", "--address", "1"])
    assert (args.timeout, args.count, args.base, args.unit) == (1.0, 10, 0, 1)
    with pytest.raises(SystemExit):
        main(["modbus", "probe", "--host", "gw", "--serial", "/dev/x", "--address", "0"])
