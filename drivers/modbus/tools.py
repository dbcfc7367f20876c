"""``fieldlink modbus scan`` and ``fieldlink modbus probe``: installer tools on the agent's link.

``scan`` sweeps unit ids (and, on a serial line, line settings) and lists who answers, with
the FC43 device identification where the device has one. ``probe`` reads a window of
registers and shows every address decoded under every type and order, with the address in
each notation, marking what looks plausible, so the installer can match a datasheet.

Both talk through :class:`~drivers.modbus.link.ModbusLink`, the code the agent polls with, so
what works here works in the agent. Exit codes: 0 success (``scan``: some unit answered);
1 the device did not deliver (``scan``: no unit answered; ``probe``: timeout, exception or
frame error); 2 the bus cannot be reached (connection refused, no such port) or the arguments
are wrong. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Final, TextIO

from pydantic import ValidationError
from rich import box
from rich.columns import Columns
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from drivers.errors import ConnectError, DeviceError, DeviceException, DeviceTimeout
from drivers.modbus.address import AddressError, modicon, resolve
from drivers.modbus.address import Table as RegisterTable
from drivers.modbus.codec import RegisterType, WordOrder, decode, register_count
from drivers.modbus.config import SERIAL_TRANSPORTS, ModbusBus, Transport
from drivers.modbus.link import ModbusLink
from drivers.modbus.planner import ReadRequest

EXIT_OK: Final = 0
EXIT_NOTHING: Final = 1
EXIT_UNREACHABLE: Final = 2
#: Stopped with Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED: Final = 130

TRANSPORTS: Final[tuple[Transport, ...]] = ("tcp", "rtu-over-tcp", "rtu", "ascii")
#: Exception codes a gateway sends for a unit behind it that does not answer: the gateway
#: answered, not the unit.
GATEWAY_EXCEPTIONS: Final = frozenset({10, 11})
#: FC43 basic objects by id, as the tools name them.
IDENTITY_FIELDS: Final = {0x00: "vendor", 0x01: "product_code", 0x02: "revision"}
#: Reconnection attempts when a connection is lost in the middle of a scan.
RECONNECTS: Final = 3

#: Types probe shows, widest first; 16-bit types last, next to the raw register.
WIDE_TYPES: Final = (
    RegisterType.FLOAT32,
    RegisterType.INT32,
    RegisterType.UINT32,
    RegisterType.FLOAT64,
    RegisterType.INT64,
    RegisterType.UINT64,
)
NARROW_TYPES: Final = (RegisterType.INT16, RegisterType.UINT16)
FLOAT_TYPES: Final = frozenset({RegisterType.FLOAT32, RegisterType.FLOAT64})
ORDERS: Final = tuple(WordOrder)
#: For one register CDAB is ABCD and DCBA is BADC: only the byte order counts.
NARROW_ORDERS: Final = (WordOrder.ABCD, WordOrder.BADC)
#: Without --expect or --range, a float is plausible when finite with a magnitude in here.
PLAUSIBLE_MAGNITUDE: Final = (1e-3, 1e7)
#: --expect marks floats within this fraction of the expected value.
EXPECT_TOLERANCE: Final = 0.005
MARK: Final = "*"
MARK_STYLE: Final = "bold green"


class UsageError(Exception):
    """Arguments that do not make sense together; reported in one line, exit 2."""


# -- command line ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    modbus = subparsers.add_parser(
        "modbus", help="installer tools: find units on a bus, decode a register window"
    )
    sub = modbus.add_subparsers(dest="modbus_command", required=True, metavar="COMMAND")

    scan = sub.add_parser(
        "scan",
        help="sweep unit ids (and serial line settings) and list who answers",
        description=(
            "Sweep unit ids and list every unit that answers a one-register read (an "
            "exception answer counts: the unit is there), with its FC43 identification "
            "(vendor, product code, revision) where it has one. Exit 0 if any unit answered, "
            "1 if none, 2 if the bus cannot be reached."
        ),
    )
    _connection_arguments(scan, sweep=True, timeout=0.2)
    scan.add_argument(
        "--units",
        type=parse_units,
        default=None,
        metavar="LIST",
        help="unit ids to try, e.g. 1-20,100 (default 1-247)",
    )
    scan.add_argument(
        "--address",
        type=_register_address,
        default=0,
        metavar="A",
        help="0-based address of the register each unit is asked for (default 0)",
    )
    scan.add_argument(
        "--input", action="store_true", help="ask with FC4 (input register) instead of FC3"
    )
    scan.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    scan.set_defaults(handler=_scan_command)

    probe = sub.add_parser(
        "probe",
        help="read a register window and decode it under every type and order",
        description=(
            "Read COUNT registers from ADDRESS and show each address decoded as int16, "
            "uint16, int32, uint32, int64, uint64, float32, float64 and text, in every word/"
            "byte order, with the address in each notation (0-based, 1-based, Modicon). "
            "Plausible values are marked with '*'. Exit 0 on success, 1 if the device did not "
            "deliver the window, 2 if the bus cannot be reached."
        ),
    )
    _connection_arguments(probe, sweep=False, timeout=1.0)
    probe.add_argument("--unit", type=_unit_id, default=1, metavar="U", help="unit id (default 1)")
    probe.add_argument(
        "--address",
        type=_number,
        required=True,
        metavar="A",
        help="first register, written in the notation of --base",
    )
    probe.add_argument(
        "--count",
        type=_count,
        default=10,
        metavar="N",
        help="registers to read, 1..125 (default 10)",
    )
    probe.add_argument(
        "--input",
        action="store_true",
        help="read input registers (FC4) instead of holding registers (FC3)",
    )
    probe.add_argument(
        "--base",
        type=_base,
        default=0,
        metavar="0|1|modicon",
        help=(
            "how --address is written: 0 protocol address (default), 1 register number, "
            "modicon 40001/30001 (the table follows from the address)"
        ),
    )
    mark = probe.add_mutually_exclusive_group()
    mark.add_argument(
        "--expect",
        type=_finite,
        metavar="VALUE",
        help="a known value, e.g. 230.5: mark floats within ±0.5 %% of it and integers equal",
    )
    mark.add_argument(
        "--range",
        type=parse_range,
        metavar="LO:HI",
        help="mark values within LO..HI (either side may be left empty)",
    )
    probe.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    probe.set_defaults(handler=_probe_command)


def _connection_arguments(parser: argparse.ArgumentParser, *, sweep: bool, timeout: float) -> None:
    where = parser.add_argument_group("the bus (one of --host or --serial)")
    target = where.add_mutually_exclusive_group(required=True)
    target.add_argument("--host", help="device or gateway host name or address (TCP)")
    target.add_argument("--serial", metavar="DEV", help="serial device, e.g. /dev/ttyUSB0")
    where.add_argument(
        "--port", type=_tcp_port, default=None, metavar="P", help="TCP port (default 502)"
    )
    where.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="framing: default tcp with --host, rtu with --serial",
    )
    many = ", a comma-separated list to sweep" if sweep else ""
    where.add_argument(
        "--baud", default=None, metavar="B", help=f"serial bit/s (default 19200){many}"
    )
    where.add_argument(
        "--parity", default=None, metavar="N|E|O", help=f"serial parity (default E){many}"
    )
    where.add_argument(
        "--stopbits", default=None, metavar="1|2", help=f"serial stop bits (default 1){many}"
    )
    where.add_argument(
        "--bytesize",
        type=int,
        choices=(7, 8),
        default=None,
        help="serial data bits (default 8 for rtu, 7 for ascii)",
    )
    where.add_argument(
        "--timeout",
        type=_seconds,
        default=timeout,
        metavar="S",
        help=f"seconds to wait for each answer (default {timeout:g})",
    )
    where.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=3.0,
        metavar="S",
        help="seconds for the TCP connection to open (default 3)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``modbus scan|probe ...`` without the rest of the fieldlink CLI."""
    parser = argparse.ArgumentParser(prog="fieldlink")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


# -- argument types ---------------------------------------------------------------------------


def _number(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, got {value}")
        return value

    return parse


_tcp_port = _in(1, 65535, "a TCP port")
_unit_id = _in(0, 255, "a unit id")
_count = _in(1, 125, "the register count")
_register_address = _in(0, 65535, "a protocol address")


def _seconds(text: str) -> float:
    value = _finite(text)
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"seconds must be above 0 and at most 60, got {text}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _base(text: str) -> int | str:
    if text in ("0", "1"):
        return int(text)
    if text.lower() == "modicon":
        return "modicon"
    raise argparse.ArgumentTypeError(f"--base is 0, 1 or modicon, not {text!r}")


def parse_units(text: str) -> list[int]:
    """``1-20,100`` → the sorted unit ids 1..20 and 100."""
    units: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a unit id or a range like 1-20"
            ) from None
        if not 0 <= low <= high <= 255:
            raise argparse.ArgumentTypeError(
                f"{part!r}: unit ids are 0..255, a range goes low-high"
            )
        units.update(range(low, high + 1))
    return sorted(units)


def parse_range(text: str) -> tuple[float, float]:
    """``200:250`` → (200, 250); ``:5`` and ``5:`` leave a side open."""
    low_text, colon, high_text = text.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"a range is LO:HI, e.g. 200:250, not {text!r}")
    low = _finite(low_text) if low_text.strip() else -math.inf
    high = _finite(high_text) if high_text.strip() else math.inf
    if low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: LO must not exceed HI")
    return low, high


def format_units(units: Sequence[int]) -> str:
    """The inverse of :func:`parse_units`: ``[1, 2, 3, 7]`` → ``1-3,7``."""
    parts: list[str] = []
    index = 0
    while index < len(units):
        end = index
        while end + 1 < len(units) and units[end + 1] == units[end] + 1:
            end += 1
        first, last = units[index], units[end]
        parts.append(str(first) if first == last else f"{first}-{last}")
        index = end + 1
    return ",".join(parts)


# -- buses ------------------------------------------------------------------------------------


def _values(text: str | None, default: str, option: str, sweep: bool) -> list[str]:
    items = [v.strip() for v in (text or default).split(",") if v.strip()]
    if not items:
        raise UsageError(f"{option} needs a value")
    if len(items) > 1 and not sweep:
        raise UsageError(f"{option} takes one value here (only scan sweeps a list)")
    return list(dict.fromkeys(items))


def build_buses(args: argparse.Namespace, *, sweep: bool) -> list[ModbusBus]:
    """The bus of the arguments; on a serial line one per combination of the listed line
    settings (``--baud 9600,19200 --parity N,E``), in that order."""
    serial = args.serial is not None
    transport: Transport = args.transport or ("rtu" if serial else "tcp")
    common: dict[str, Any] = {
        "name": "tool",
        "driver": "modbus",
        "transport": transport,
        "timeout": args.timeout,
    }
    if serial:
        if transport not in SERIAL_TRANSPORTS:
            raise UsageError(
                f"--transport {transport} runs over TCP: give --host H --port P instead of --serial"
            )
        if args.port is not None:
            raise UsageError("--port is for TCP (--host); a serial line is named by --serial")
        bauds = [_setting(v, "--baud") for v in _values(args.baud, "19200", "--baud", sweep)]
        parities = [p.upper() for p in _values(args.parity, "E", "--parity", sweep)]
        for parity in parities:
            if parity not in ("N", "E", "O"):
                raise UsageError(f"--parity is N, E or O, not {parity!r}")
        stops = [
            _setting(v, "--stopbits") for v in _values(args.stopbits, "1", "--stopbits", sweep)
        ]
        docs = [
            {
                **common,
                "serial_port": args.serial,
                "baudrate": baud,
                "parity": parity,
                "stopbits": stop,
                **({"bytesize": args.bytesize} if args.bytesize is not None else {}),
            }
            for baud, parity, stop in product(bauds, parities, stops)
        ]
    else:
        if transport in SERIAL_TRANSPORTS:
            raise UsageError(
                f"--transport {transport} is a serial line: give --serial DEV (for a TCP "
                "serial server use --transport rtu-over-tcp)"
            )
        for option, value in (
            ("--baud", args.baud),
            ("--parity", args.parity),
            ("--stopbits", args.stopbits),
            ("--bytesize", args.bytesize),
        ):
            if value is not None:
                raise UsageError(f"{option} is for serial lines (--serial), not for --host")
        docs = [
            {
                **common,
                "host": args.host,
                "port": args.port or 502,
                "connect_timeout": args.connect_timeout,
            }
        ]
    buses: list[ModbusBus] = []
    for doc in docs:
        try:
            buses.append(ModbusBus.model_validate(doc))
        except ValidationError as exc:
            raise UsageError(_validation_message(exc)) from None
    return buses


_OPTIONS: Final = {
    "baudrate": "--baud",
    "parity": "--parity",
    "stopbits": "--stopbits",
    "bytesize": "--bytesize",
    "serial_port": "--serial",
    "host": "--host",
    "port": "--port",
    "timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
}


def _validation_message(exc: ValidationError) -> str:
    messages = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        location = [str(part) for part in error["loc"]]
        if message.startswith("@"):
            name, _, message = message[1:].partition(": ")
            location = [name]
        option = _OPTIONS.get(location[-1], location[-1]) if location else ""
        messages.append(f"{option}: {message}" if option else message)
    return "; ".join(messages)


def _setting(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option}: not a whole number: {text!r}") from None


def line_setting(bus: ModbusBus) -> str | None:
    """``9600 8N1`` for a serial bus, None for TCP."""
    if bus.transport not in SERIAL_TRANSPORTS:
        return None
    return f"{bus.baudrate} {bus.data_bits}{bus.parity}{bus.stopbits}"


def _quiet_link_log() -> None:
    # A scan leaves most unit ids unanswered; the link's notes about that are noise here.
    logger = logging.getLogger("fieldlink.drivers.modbus")
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)


def _console() -> Console:
    """Standard output; 120 columns when it is not a terminal (a file, a pipe) and COLUMNS
    does not say otherwise, so the 64-bit columns are not folded."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# -- scan -------------------------------------------------------------------------------------


@dataclass
class Found:
    """A unit that answered a scan."""

    unit: int
    #: The line setting it answered on (serial), e.g. ``9600 8N1``; None on TCP.
    line: str | None
    #: ``ok``, or the exception / frame error it answered with.
    answer: str
    #: Milliseconds the answer took.
    ms: float
    #: FC43 objects by name (vendor, product_code, revision, or ``object_N``).
    identity: dict[str, str] | None = None
    #: Why there is no identity: ``exception 1 (illegal function)`` (the device has none),
    #: ``timeout``, ...
    identity_note: str | None = None

    def as_json(self, bus: ModbusBus) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "transport": bus.transport,
            "endpoint": bus.endpoint,
            "line": self.line,
            "answer": self.answer,
            "ms": round(self.ms, 1),
            "identity": self.identity,
            "identity_note": self.identity_note,
        }


class ScanAborted(Exception):
    """The connection was lost mid-scan and could not be reopened."""


@dataclass
class ScanResult:
    found: list[Found] = field(default_factory=list)
    #: Line settings that could not be opened: setting → (the link's description, why).
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Line settings swept.
    opened: list[str] = field(default_factory=list)
    #: Why the scan stopped early (connection lost for good), or None.
    aborted: str | None = None


async def scan(
    buses: Sequence[ModbusBus],
    units: Sequence[int],
    *,
    table: str = "holding",
    address: int = 0,
    on_found: Callable[[Found, ModbusBus], None] | None = None,
    on_unit: Callable[[int, ModbusBus], None] | None = None,
    result: ScanResult | None = None,
) -> ScanResult:
    """Ask every unit id for one register on each bus (line setting) in turn; a unit found
    on one setting is not asked again on the next. A unit counts as present when it answers
    at all, an exception included, except exceptions 10/11 (the gateway answering for a unit
    that is not there); then its FC43 identification is asked for. Findings go into
    ``result`` as they come, so an interrupted scan still has them."""
    result = result if result is not None else ScanResult()
    seen: set[int] = set()
    for bus in buses:
        setting = line_setting(bus) or bus.endpoint
        link = ModbusLink(bus, reconnect_when_silent=False)
        try:
            await link.connect()
        except ConnectError as exc:
            prefix = f"{link.description}: "
            result.skipped[setting] = (link.description, exc.detail.removeprefix(prefix))
            continue
        result.opened.append(setting)
        try:
            for unit in units:
                if unit in seen:
                    continue
                if on_unit is not None:
                    on_unit(unit, bus)
                found = await _ask_unit(link, bus, unit, table, address)
                if found is None:
                    continue
                seen.add(unit)
                result.found.append(found)
                if on_found is not None:
                    on_found(found, bus)
        except ScanAborted as exc:
            result.aborted = str(exc)
            return result
        finally:
            await link.close()
    return result


async def _ask_unit(
    link: ModbusLink, bus: ModbusBus, unit: int, table: str, address: int
) -> Found | None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await _again_if_lost(link, lambda: link.execute(ReadRequest(unit, table, address, 1, ())))
        reply = "ok"
    except DeviceException as exc:
        if exc.code in GATEWAY_EXCEPTIONS:
            return None
        reply = exc.reason
    except DeviceTimeout:
        return None
    except DeviceError as exc:  # a frame error: garbled, but it carried the unit's id
        reply = exc.reason
    found = Found(unit, line_setting(bus), reply, (loop.time() - started) * 1000)
    try:
        objects = await _again_if_lost(link, lambda: link.read_identification(unit))
    except DeviceError as exc:
        found.identity_note = exc.reason
    else:
        found.identity = {IDENTITY_FIELDS.get(k, f"object_{k}"): v for k, v in objects.items()}
    return found


async def _again_if_lost(link: ModbusLink, call: Callable[[], Any]) -> Any:
    """``call()``; when the connection is lost (some gateways close it on an unknown unit
    id), reopen it and report the unit as silent."""
    try:
        return await call()
    except ConnectError as lost:
        for attempt in range(RECONNECTS):
            try:
                await link.connect()
            except ConnectError as exc:
                if attempt == RECONNECTS - 1:
                    raise ScanAborted(f"{lost.detail}; reconnecting failed: {exc.detail}") from exc
            else:
                break
        raise DeviceTimeout("connection lost during the request") from lost


def _scan_command(args: argparse.Namespace) -> int:
    _quiet_link_log()
    try:
        buses = build_buses(args, sweep=True)
        units: list[int] = args.units or list(range(1, 248))
        if buses[0].transport in SERIAL_TRANSPORTS and (units[0] == 0 or units[-1] > 247):
            raise UsageError(
                "--units: on a serial line unit ids are 1..247 (0 is the broadcast address, "
                "nobody answers it)"
            )
    except UsageError as exc:
        _error(str(exc))
        return EXIT_UNREACHABLE
    table = "input" if args.input else "holding"
    status = Console(stderr=True)
    progress = status.status("scanning") if status.is_terminal else None

    def on_unit(unit: int, bus: ModbusBus) -> None:
        if progress is not None:
            progress.update(f"unit {unit} on {line_setting(bus) or bus.endpoint}")

    def on_found(found: Found, bus: ModbusBus) -> None:
        if args.json:
            print(json.dumps(found.as_json(bus)), flush=True)

    result = ScanResult()
    if progress is not None:
        progress.start()
    try:
        asyncio.run(
            scan(
                buses,
                units,
                table=table,
                address=args.address,
                on_found=on_found,
                on_unit=on_unit,
                result=result,
            )
        )
    except KeyboardInterrupt:
        result.aborted = "interrupted"
    finally:
        if progress is not None:
            progress.stop()
    if not result.opened:
        # One line per distinct reason: a missing port fails every setting the same way.
        reasons: dict[str, str] = {}
        for description, problem in result.skipped.values():
            reasons.setdefault(problem, description)
        for problem, description in reasons.items():
            _error(f"{description}: {problem}")
        return EXIT_UNREACHABLE
    for setting, (_, problem) in result.skipped.items():
        print(f"note: skipped {setting}: {problem}", file=sys.stderr)
    if not args.json and result.found:
        _console().print(_scan_table(result, buses[0], units))
    if result.aborted == "interrupted":
        print("interrupted: the units above answered before the scan was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.aborted is not None:
        _error(result.aborted)
        return EXIT_UNREACHABLE
    if not result.found:
        tried = ", ".join(result.opened)
        where = (
            f"{buses[0].transport} {buses[0].endpoint} ({tried})"
            if buses[0].transport in SERIAL_TRANSPORTS
            else f"{buses[0].transport} {tried}"
        )
        print(
            f"no unit answered on {where}: unit ids {format_units(units)}, timeout "
            f"{args.timeout:g} s",
            file=sys.stderr,
        )
        return EXIT_NOTHING
    return EXIT_OK


def _scan_table(result: ScanResult, bus: ModbusBus, units: Sequence[int]) -> Table:
    serial = bus.transport in SERIAL_TRANSPORTS
    where = f"modbus {bus.transport} {bus.endpoint}"
    title = (
        f"{where}: {len(result.found)} of {len(units)} unit ids answered "
        f"(units {format_units(units)}"
        + (f"; line settings {', '.join(result.opened)})" if serial else ")")
        + (", stopped early" if result.aborted is not None else "")
    )
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    table.add_column("unit", justify="right")
    if serial:
        table.add_column("line")
    table.add_column("answer", no_wrap=True)
    table.add_column("ms", justify="right")
    for name in ("vendor", "product code", "revision"):
        table.add_column(name)
    for found in sorted(result.found, key=lambda f: f.unit):
        cells: list[RenderableType] = [str(found.unit)]
        if serial:
            cells.append(found.line or "")
        cells += [found.answer, f"{found.ms:.1f}"]
        if found.identity is not None:
            cells += [found.identity.get(k, "") for k in ("vendor", "product_code", "revision")]
        else:
            note = found.identity_note or ""
            if note.startswith("exception 1 "):
                note = "no FC43 identification"  # illegal function: the device has none
            cells += [Text(f"({note})", style="dim"), "", ""]
        table.add_row(*cells)
    return table


# -- probe ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """One register window position decoded as one type in one order."""

    address: int
    kind: RegisterType
    order: WordOrder
    value: int | float
    marked: bool

    @property
    def label(self) -> str:
        order = self.order.value[:2] if self.kind in NARROW_TYPES else self.order.value
        return f"{self.kind.value} {order}"


@dataclass(frozen=True)
class Marker:
    """What counts as plausible: --expect, --range, or the default for floats."""

    expect: float | None = None
    range: tuple[float, float] | None = None

    def __call__(self, kind: RegisterType, value: int | float) -> bool:
        is_float = kind in FLOAT_TYPES
        if is_float and not math.isfinite(value):
            return False
        if self.expect is not None:
            if is_float:
                return abs(value - self.expect) <= EXPECT_TOLERANCE * abs(self.expect)
            return value == self.expect
        if self.range is not None:
            low, high = self.range
            return low <= value <= high
        low, high = PLAUSIBLE_MAGNITUDE
        return is_float and low <= abs(value) <= high

    def describe(self) -> str:
        if self.expect is not None:
            return f"within ±0.5 % of {self.expect:g} (integers: equal)"
        if self.range is not None:
            low, high = self.range
            return f"within {low:g}..{high:g}"
        low, high = PLAUSIBLE_MAGNITUDE
        return f"floats with a magnitude within {low:g}..{high:g}"

    def deviation(self, value: int | float) -> str:
        """How far a marked value is from --expect, for the summary: ``exact``, ``-0.27 %``."""
        if self.expect is None:
            return ""
        if value == self.expect:
            return "exact"
        if self.expect == 0:
            return f"{value - self.expect:+g}"
        return f"{(value - self.expect) / abs(self.expect) * 100:+.3f} %"


#: A register of the window: its word, or None when the device has no such address.
Word = int | None


def decode_window(
    registers: Sequence[Word], start: int, marker: Marker
) -> dict[int, list[Decoded]]:
    """Protocol address → every type and order that fits in the window from there (and does
    not cross an address the device lacks)."""
    out: dict[int, list[Decoded]] = {}
    for offset in range(len(registers)):
        cells: list[Decoded] = []
        for kind in (*WIDE_TYPES, *NARROW_TYPES):
            size = register_count(kind)
            words = registers[offset : offset + size]
            if len(words) < size or None in words:
                continue
            for order in NARROW_ORDERS if size == 1 else ORDERS:
                value = decode(kind, order, [w for w in words if w is not None])
                assert isinstance(value, int | float)
                cells.append(Decoded(start + offset, kind, order, value, marker(kind, value)))
        out[start + offset] = cells
    return out


def format_value(kind: RegisterType, value: int | float) -> str:
    """A value as the installer reads it: float32 with the shortest digits that give the same
    float32 back (49.95, not 49.95000076293945)."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if kind is RegisterType.FLOAT32:
        for digits in range(6, 10):
            text = f"{value:.{digits}g}"
            if _float32(float(text)) == value:
                return text
    return repr(value)


def display_value(kind: RegisterType, value: int | float) -> str:
    """:func:`format_value`, with float64 cut to 10 significant digits to fit a table."""
    if kind is RegisterType.FLOAT64 and isinstance(value, float) and math.isfinite(value):
        return f"{value:.10g}"
    return format_value(kind, value)


def _float32(value: float) -> float:
    try:
        result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:
        return math.inf
    return result


def _json_value(kind: RegisterType, value: int | float) -> int | float | None:
    if isinstance(value, int):
        return value
    if not math.isfinite(value):
        return None
    return float(format_value(kind, value))


@dataclass(frozen=True)
class Window:
    unit: int
    table: str
    address: int
    count: int

    def names(self, address: int) -> dict[str, Any]:
        """The address in every notation."""
        return {
            "address": address,
            "address_1": address + 1,
            "modicon": modicon_name(self.table, address),
        }


def modicon_name(table: str, address: int) -> str:
    """``40001`` (5-digit form while it reaches) or ``465536``."""
    width = 5 if address < 9999 else 6
    return modicon("input" if table == "input" else "holding", address, width)


def _text(words: Sequence[Word], order: WordOrder) -> str:
    """The text from the first register up to the first missing one (or NUL)."""
    present: list[int] = []
    for word in words:
        if word is None:
            break
        present.append(word)
    if not present:
        return ""
    value = decode(RegisterType.STRING, order, present)
    assert isinstance(value, str)
    return value


#: Shortest run of printable characters probe reports as text.
TEXT_RUN: Final = 3


def text_runs(registers: Sequence[Word], start: int, order: WordOrder) -> list[tuple[int, str]]:
    """Runs of printable ASCII in the window read in ``order`` (AB or BA per register), each
    with the protocol address of the register it starts in: where a string may be."""
    runs: list[tuple[int, str]] = []
    current: list[str] = []
    first = 0
    swap = order.swaps_bytes
    for offset, word in enumerate([*registers, None]):
        data = b"" if word is None else word.to_bytes(2, "little" if swap else "big")
        for index in range(2):
            byte = data[index] if data else None
            if byte is not None and 32 <= byte < 127:
                if not current:
                    first = start + offset
                current.append(chr(byte))
                continue
            if len(current) >= TEXT_RUN:
                runs.append((first, "".join(current).rstrip(" ")))
            current = []
            if byte is None:
                break
    return runs


def _chars(word: Word) -> str:
    if word is None:
        return ""
    return "".join(chr(b) if 32 <= b < 127 else "·" for b in word.to_bytes(2, "big"))


@dataclass
class Reading:
    """What probe read: the window's registers, how long it took, and, when the device
    refused the window as a whole, why (then each register was read on its own)."""

    registers: list[Word]
    ms: float
    refused: str | None = None

    @property
    def missing(self) -> list[int]:
        """Offsets of the registers the device does not have."""
        return [i for i, word in enumerate(self.registers) if word is None]


async def read_window(bus: ModbusBus, window: Window) -> Reading:
    """Read the window in one request. A device refusing it with exception 2 (a window
    across addresses it does not have) is asked register by register, so what it has is
    still shown; only when it has none of them is the exception raised."""
    link = ModbusLink(bus)
    await link.connect()
    try:
        started = time.monotonic()
        request = ReadRequest(window.unit, window.table, window.address, window.count, ())
        try:
            words = await link.execute(request)
        except DeviceException as exc:
            if exc.code != 2 or window.count == 1:
                raise
            registers = await _one_by_one(link, window)
            if all(word is None for word in registers):
                raise
            return Reading(registers, (time.monotonic() - started) * 1000, exc.reason)
        elapsed = (time.monotonic() - started) * 1000
    finally:
        await link.close()
    return Reading([int(w) for w in words], elapsed)


async def _one_by_one(link: ModbusLink, window: Window) -> list[Word]:
    registers: list[Word] = []
    for address in range(window.address, window.address + window.count):
        try:
            words = await link.execute(ReadRequest(window.unit, window.table, address, 1, ()))
        except DeviceException:
            registers.append(None)
        else:
            registers.append(int(words[0]))
    return registers


def _probe_command(args: argparse.Namespace) -> int:
    try:
        bus = build_buses(args, sweep=False)[0]
        window = _window(args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_UNREACHABLE
    try:
        reading = asyncio.run(read_window(bus, window))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConnectError as exc:
        _error(exc.detail)
        return EXIT_UNREACHABLE
    except DeviceError as exc:
        _error(_probe_failure(bus, window, exc, args.base))
        return EXIT_NOTHING
    marker = Marker(expect=args.expect, range=args.range)
    decoded = decode_window(reading.registers, window.address, marker)
    if args.json:
        _print_probe_json(sys.stdout, window, reading.registers, decoded)
    else:
        _print_probe_tables(_console(), bus, window, reading, decoded, marker, args.base)
    return EXIT_OK


def _window(args: argparse.Namespace) -> Window:
    base = args.base
    asked: RegisterTable | None = (
        "input" if args.input else ("holding" if base != "modicon" else None)
    )
    try:
        table, address = resolve(base, args.address, asked, args.count, f"{args.count} registers")
    except AddressError as exc:
        if exc.field == "table":
            raise UsageError(
                f"--input: {args.address} is not an input register in Modicon notation "
                "(3xxxx); leave out --input, a Modicon address names its table"
            ) from None
        raise UsageError(f"--address: {exc}") from None
    if table not in ("holding", "input"):
        name = "coil" if table == "coil" else "discrete input"
        raise UsageError(
            f"--address {args.address} is a {name} in Modicon notation; probe reads registers "
            "(4xxxx holding, 3xxxx input)"
        )
    return Window(args.unit, table, address, args.count)


def _probe_failure(bus: ModbusBus, window: Window, exc: DeviceError, base: int | str) -> str:
    first, last = window.address, window.address + window.count - 1
    what = (
        f"unit {window.unit} on modbus {bus.transport} {bus.endpoint}, {window.table} "
        f"registers {first}..{last} ({modicon_name(window.table, first)}.."
        f"{modicon_name(window.table, last)})"
    )
    if isinstance(exc, DeviceTimeout):
        return f"{what}: no answer within {bus.timeout:g} s (check --unit and the line settings)"
    hint = ""
    if isinstance(exc, DeviceException):
        written = window.address + (1 if base == 1 else 0)
        modicon_like = 30001 <= written <= 49999 or 300001 <= written <= 465536
        if exc.code == 2 and base != "modicon" and modicon_like:
            hint = f"; {written} looks like a Modicon address: try --base modicon"
        elif exc.code == 2:
            other = "without --input" if window.table == "input" else "with --input"
            hint = "; the device has no register at these addresses: try another --address, "
            hint += f"or {other}"
        elif exc.code == 1:
            other = "without --input" if window.table == "input" else "with --input"
            hint = f"; the device does not serve this function: try {other}"
    return f"{what}: {exc.reason}{hint}"


def _print_probe_json(
    out: TextIO, window: Window, registers: Sequence[Word], decoded: dict[int, list[Decoded]]
) -> None:
    for offset, word in enumerate(registers):
        address = window.address + offset
        values: dict[str, dict[str, int | float | str | None]] = {}
        for cell in decoded[address]:
            order = cell.order.value
            values.setdefault(cell.kind.value, {})[order] = _json_value(cell.kind, cell.value)
        if word is not None:
            rest = registers[offset:]
            values["string"] = {o.value: _text(rest, o) for o in NARROW_ORDERS}
        row = {
            "unit": window.unit,
            "table": window.table,
            **window.names(address),
            "register": word,
            "hex": None if word is None else f"{word:04X}",
            "values": values,
            "plausible": [c.label for c in decoded[address] if c.marked],
        }
        print(json.dumps(row), file=out)


def _address_in_base(window: Window, address: int, base: int | str) -> str:
    if base == "modicon":
        return modicon_name(window.table, address)
    return str(address + (1 if base == 1 else 0))


def _cell(cell: Decoded | None) -> Text:
    if cell is None:
        return Text("")
    text = display_value(cell.kind, cell.value)
    if cell.marked:
        return Text(f"{text}{MARK}", style=MARK_STYLE)
    return Text(f"{text} ")


def _print_probe_tables(
    console: Console,
    bus: ModbusBus,
    window: Window,
    reading: Reading,
    decoded: dict[int, list[Decoded]],
    marker: Marker,
    base: int | str,
) -> None:
    registers = reading.registers
    first, last = window.address, window.address + window.count - 1
    console.print(
        f"unit {window.unit} on modbus {bus.transport} {bus.endpoint}: {window.table} "
        f"registers {first}..{last} (1-based {first + 1}..{last + 1}, Modicon "
        f"{modicon_name(window.table, first)}..{modicon_name(window.table, last)}), "
        f"read in {reading.ms:.1f} ms"
    )
    if reading.refused is not None:
        gaps = format_units([first + i for i in reading.missing])
        console.print(
            f"the device refused the window as a whole ({reading.refused}); read register by "
            f"register, it has no register at {gaps} (0-based)"
        )
    by_key = {(c.address, c.kind, c.order): c for cells in decoded.values() for c in cells}

    words = Table(
        title="registers",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for name in ("0-based", "1-based", "Modicon", "hex"):
        words.add_column(name, justify="right")
    for order in NARROW_ORDERS:
        for kind in NARROW_TYPES:
            suffix = "" if order is WordOrder.ABCD else " BA"
            words.add_column(f"{kind.value}{suffix}", justify="right")
    words.add_column("text")
    for offset, word in enumerate(registers):
        address = first + offset
        names = window.names(address)
        cells: list[RenderableType] = [
            str(address),
            str(names["address_1"]),
            names["modicon"],
            Text("none", style="dim") if word is None else f"{word:04X}",
        ]
        for order in NARROW_ORDERS:
            for kind in NARROW_TYPES:
                cells.append(_cell(by_key.get((address, kind, order))))
        cells.append(_chars(word))
        words.add_row(*cells)
    console.print(words)

    wide: list[Table] = []
    label = "Modicon" if base == "modicon" else f"{base}-based"
    for kind in WIDE_TYPES:
        size = register_count(kind)
        rows = [
            first + offset
            for offset in range(len(registers) - size + 1)
            if (first + offset, kind, WordOrder.ABCD) in by_key
        ]
        if not rows:
            continue
        table = Table(
            title=kind.value,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
        )
        table.add_column(label, justify="right")
        for order in ORDERS:
            table.add_column(order.value, justify="right", overflow="fold")
        for address in rows:
            row: list[RenderableType] = [_address_in_base(window, address, base)]
            row += [_cell(by_key.get((address, kind, order))) for order in ORDERS]
            table.add_row(*row)
        wide.append(table)
    console.print(Columns(wide))

    for order in NARROW_ORDERS:
        runs = [
            f"{text!r} at {modicon_name(window.table, address)}"
            for address, text in text_runs(registers, first, order)
        ]
        found = ", ".join(runs) if runs else f"none ({TEXT_RUN}+ printable characters in a row)"
        console.print(f"text {order.value[:2]}: {found}")
    marked = [c for cells in decoded.values() for c in cells if c.marked]
    if marker.expect is not None:
        expect = marker.expect
        marked.sort(key=lambda c: abs(c.value - expect))
    console.print(f"{MARK} plausible: {marker.describe()}")
    if not marked:
        console.print(
            "  nothing in this window; widen it (--address, --count) or check --unit and --input"
        )
    for cell in marked:
        names = window.names(cell.address)
        off = marker.deviation(cell.value)
        console.print(
            f"  {cell.label} at {names['modicon']} (0-based {cell.address}, 1-based "
            f"{names['address_1']}): {format_value(cell.kind, cell.value)}"
            + (f" ({off})" if off else "")
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
