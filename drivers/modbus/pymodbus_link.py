"""The serial framings through pymodbus: RTU over TCP, RTU and ASCII (Modbus TCP: mbap.py).

This is the only module that imports pymodbus; :class:`drivers.modbus.link.ModbusLink` loads
it only for a bus that needs it, so an agent with Modbus TCP buses alone never imports it.
pymodbus's exceptions are translated into :mod:`drivers.errors` here, in
:meth:`PymodbusLink._transact`, and nowhere else.

=================  ==========================================  ===========================
transport          pymodbus client                             framing
=================  ==========================================  ===========================
``rtu-over-tcp``   ``AsyncModbusTcpClient``                    RTU (``FramerType.RTU``)
``rtu``            ``AsyncModbusSerialClient``                 RTU
``ascii``          ``AsyncModbusSerialClient``                 ASCII
``tcp``            ``AsyncModbusTcpClient`` (not used by        MBAP (``FramerType.SOCKET``)
                   ModbusLink: see mbap.py)
=================  ==========================================  ===========================

What pymodbus 3.16 does and does not do, and what this module adds (see README.md):

* Its reconnect loop is off (``reconnect_delay=0``) and its retries are off: the scheduler owns
  backoff and budgets one timeout per request.
* Its "close the connection after retries+3 unanswered requests" is off: it turned the 4th
  timeout into a lost connection and so reported ``disconnected`` for a silent unit behind a
  working gateway. Instead, after :data:`SILENT_LIMIT` unanswered requests in a row on a TCP
  link (no unit answers at all: perhaps a connection a NAT or firewall silently forgot), the
  next request first opens a fresh connection; the timeouts still report ``timeout``.
* It does not keep the RTU inter-frame silence (3.5 character times): it sends as soon as it is
  asked. This link waits until the line has been quiet for :attr:`ModbusBus.frame_gap` after
  the last byte sent or received before it sends the next frame.
* A reply with a bad CRC (RTU) or LRC (ASCII) is silently dropped by its framer, which then
  waits for the full timeout. This link checks the checksum of the answer it waits for as the
  bytes arrive (through pymodbus's ``trace_packet`` hook) and fails the request at once with
  :class:`~drivers.errors.FrameError`, reason ``frame error: bad CRC`` (or ``bad LRC``).
* When the peer closes the connection while a request waits, pymodbus lets the request run
  into its timeout; this link fails it at once with ``disconnected`` (``trace_connect`` hook).
* Cancelling a request in flight raises ``CancelledError`` to the caller (the pymodbus call
  runs as its own task); the transaction is abandoned, so the link closes: a late answer would
  otherwise be taken for the next request's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType

from drivers.errors import ConnectError, DeviceException, DeviceTimeout
from drivers.modbus.config import SERIAL_TRANSPORTS, ModbusBus
from drivers.modbus.mbap import SILENT_LIMIT
from drivers.modbus.pdu import EXCEPTION_NAMES, frame_error
from drivers.modbus.planner import ReadRequest, WriteRequest
from drivers.serialport import LineSettings, open_port

#: After a broadcast (unit 0) write no answer comes; devices need this long to act on it
#: before the line may carry the next request (Modbus over serial line, 2.4.1).
BROADCAST_TURNAROUND: Final = 0.1

log = logging.getLogger("fieldlink.drivers.modbus")

# pymodbus logs every timeout at ERROR level; the scheduler reports state changes instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


class PymodbusLink:
    """One bus: one TCP connection or one open serial port, shared by its units."""

    def __init__(self, bus: ModbusBus, *, reconnect_when_silent: bool = True) -> None:
        """``reconnect_when_silent=False`` keeps the TCP connection however many requests go
        unanswered in a row: for a unit-id scan, where silence is the expected answer."""
        self._bus = bus
        self._reconnect_when_silent = reconnect_when_silent
        self._serial = bus.transport in SERIAL_TRANSPORTS
        self._line = LineSettings(bus.baudrate, bus.data_bits, bus.parity, bus.stopbits)
        self._client: Client | None = None
        self._check: Callable[[bytes, int, int], str | None] | None = {
            "rtu": check_rtu,
            "rtu-over-tcp": check_rtu,
            "ascii": check_ascii,
        }.get(bus.transport)
        self._char_time = bus.char_time if self._serial else 0.0
        self._gap = bus.frame_gap
        #: Loop time from which the line counts as idle (end of the last byte on it).
        self._idle_since = 0.0
        #: The answer being waited for: (unit id, function code), and how a bad one is told.
        self._expect: tuple[int, int] | None = None
        self._alarm: asyncio.Future[str] | None = None
        self._silent = 0

    @property
    def description(self) -> str:
        bus = self._bus
        if self._serial:
            framing = self._line.framing
            return f"modbus {bus.transport} {bus.serial_port} {bus.baudrate} {framing}"
        return f"modbus {bus.transport} {bus.endpoint}"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    # -- lifecycle ---------------------------------------------------------------------

    def _new_client(self) -> Client:
        bus = self._bus
        if self._serial:
            return AsyncModbusSerialClient(
                str(bus.serial_port),
                framer=FramerType.ASCII if bus.transport == "ascii" else FramerType.RTU,
                **self._line.serial_kwargs(),  # as connect() tried them
                timeout=bus.timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
                trace_connect=self._on_connection,
            )
        return AsyncModbusTcpClient(
            str(bus.host),
            port=bus.port,
            framer=FramerType.RTU if bus.transport == "rtu-over-tcp" else FramerType.SOCKET,
            timeout=bus.timeout,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
            trace_connect=self._on_connection,
        )

    async def connect(self) -> None:
        await self.close()
        if self._serial and os.name == "posix":
            # pymodbus opens the port and then sets its timeout outside any clean-up: when the
            # port refuses the settings at that step (a Linux pseudo-terminal refuses parity and
            # 7 data bits) a ``termios.error`` escapes its ``connect()`` and the half-open port
            # stays open and locked (``exclusive``) for the life of the process. So the port is
            # tried here first, its settings applied twice as pymodbus does, closed whatever
            # happens, and pymodbus opens it only when this succeeded. Raises ConnectError with
            # the reason (drivers/serialport.py).
            open_port(str(self._bus.serial_port), self._line, where=self.description).close()
        client = self._new_client()
        # See the module docstring: unanswered requests never close the connection by
        # themselves (pymodbus counts them down from this number, reset by any answer).
        client.set_max_no_responses(1 << 30)
        # pymodbus uses the request timeout for connecting too; cap it with ours.
        try:
            async with asyncio.timeout(self._bus.connect_timeout):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        except Exception as exc:  # OSError, or whatever pyserial raises on odd settings
            client.close()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConnectError(f"{self.description}: {detail}") from exc
        if not ok:
            client.close()
            why = "cannot open the port" if self._serial else "connection refused or timed out"
            raise ConnectError(f"{self.description}: {why}")
        self._client = client
        self._silent = 0
        self._idle_since = asyncio.get_running_loop().time()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- requests ----------------------------------------------------------------------

    async def execute(self, request: ReadRequest) -> list[int] | list[bool]:
        """Read ``request``: register words (FC3/FC4) or one bool per address (FC1/FC2)."""
        client = await self._ready()
        fc = request.function_code
        reader = {
            1: client.read_coils,
            2: client.read_discrete_inputs,
            3: client.read_holding_registers,
            4: client.read_input_registers,
        }[fc]

        def call() -> Awaitable[Any]:
            return reader(request.address, count=request.count, device_id=request.unit_id)

        result = await self._transact(request.unit_id, fc, call)
        if request.is_bits:
            # pymodbus pads the bits to whole bytes; a short answer stays short and the
            # program reports it as a frame error.
            bits: list[bool] = [bool(b) for b in result.bits[: request.count]]
            return bits
        registers: list[int] = list(result.registers)
        return registers

    async def write(self, request: WriteRequest) -> None:
        """Perform one write (FC5, FC6, FC15 or FC16). Unit 0 is a broadcast: no answer."""
        client = await self._ready()
        fc = request.function_code
        unit, address, values = request.unit_id, request.address, request.values
        silent = unit == 0

        def call() -> Awaitable[Any]:
            if fc == 5:
                coro = client.write_coil(
                    address, bool(values[0]), device_id=unit, no_response_expected=silent
                )
            elif fc == 15:
                coro = client.write_coils(
                    address, [bool(v) for v in values], device_id=unit, no_response_expected=silent
                )
            elif fc == 6:
                coro = client.write_register(
                    address, values[0], device_id=unit, no_response_expected=silent
                )
            else:
                coro = client.write_registers(
                    address, list(values), device_id=unit, no_response_expected=silent
                )
            return coro

        await self._transact(unit, fc, call)
        if silent:
            loop = asyncio.get_running_loop()
            self._idle_since = max(self._idle_since, loop.time() + BROADCAST_TURNAROUND)

    async def read_identification(self, unit_id: int) -> dict[int, str]:
        """FC43 / MEI type 14, read device identification, basic category (stream access):
        object id → text, e.g. ``{0: "ACME", 1: "EM-340", 2: "1.04"}`` (VendorName,
        ProductCode, MajorMinorRevision). Follows "more follows" for devices that split the
        answer. A device without identification answers exception 1 (illegal function):
        :class:`~drivers.errors.DeviceException`; the other errors are those of
        :meth:`execute`."""
        client = await self._ready()
        objects: dict[int, str] = {}
        first = 0
        for _ in range(_MAX_IDENTIFICATION_READS):
            call = functools.partial(
                client.read_device_information,
                read_code=_BASIC_IDENTIFICATION,
                object_id=first,
                device_id=unit_id,
            )
            result = await self._transact(unit_id, _READ_DEVICE_ID, call)
            information: dict[int, Any] = dict(getattr(result, "information", {}) or {})
            for object_id, value in information.items():
                parts = value if isinstance(value, list) else [value]
                text = b"".join(bytes(p) for p in parts).decode("latin-1")
                objects[int(object_id)] = text.rstrip("\0 ")
            follows = getattr(result, "more_follows", 0) == _MORE_FOLLOWS
            following = int(getattr(result, "next_object_id", 0))
            if not follows or following <= first:
                break
            first = following
        return objects

    async def _ready(self) -> Client:
        """The client to send with; a TCP connection gone silent is replaced first."""
        silent = self._reconnect_when_silent and self._silent >= SILENT_LIMIT
        if silent and self._client is not None:
            log.info(
                "%s: no answer from any unit %d times in a row; reconnecting",
                self.description,
                self._silent,
            )
            await self.connect()  # raises ConnectError if the endpoint is gone for real
        return self._require()

    def _require(self) -> Client:
        client = self._client
        if client is None or not client.connected:
            raise ConnectError(f"{self.description}: not connected")
        return client

    async def _transact(self, unit: int, fc: int, start: Callable[[], Awaitable[Any]]) -> Any:
        """Run one pymodbus request; the one place its outcomes become driver errors."""
        client = self._require()
        loop = asyncio.get_running_loop()
        if self._gap > 0:
            wait = self._idle_since + self._gap - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        # Set by _trace (a bad checksum) or _on_connection (the connection dropped) while the
        # request waits: pymodbus itself would only notice at the timeout.
        alarm: asyncio.Future[str] = loop.create_future()
        self._expect, self._alarm = (unit, fc), alarm
        # pymodbus may turn a cancellation inside its transaction into an I/O error; running
        # the call as its own task lets a cancelled caller see CancelledError, as it must.
        call = asyncio.ensure_future(start())
        try:
            await asyncio.wait((call, alarm), return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                _abandon(call)
                problem = alarm.result()
                if problem is _LOST:
                    await self.close()
                    raise ConnectError(f"{self.description}: connection lost")
                self._silent = 0
                raise frame_error(problem)
            result = call.result()
        except asyncio.CancelledError:
            _abandon(call)
            # The transaction was abandoned mid-flight; a late answer would be misread as the
            # next one's, so the connection is dropped and reopened by the scheduler.
            await self.close()
            raise
        except ConnectionException as exc:
            await self.close()
            raise ConnectError(f"{self.description}: {exc}") from exc
        except ModbusIOException as exc:
            if not client.connected:
                await self.close()
                raise ConnectError(f"{self.description}: connection lost") from exc
            if not self._serial:
                self._silent += 1  # the next request reconnects at the limit (see above)
            raise DeviceTimeout(f"unit {unit} did not answer") from exc
        except ModbusException as exc:
            raise frame_error(str(exc)) from exc
        finally:
            self._expect = self._alarm = None
            if not alarm.done():
                alarm.cancel()
        self._silent = 0
        if result is None:  # a broadcast: nothing comes back
            return None
        if result.isError():
            code = int(getattr(result, "exception_code", 0))
            raise DeviceException(code, EXCEPTION_NAMES.get(code, ""))
        return result

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's packet hook: keeps the line's idle time, and checks the checksum of the
        answer being waited for as soon as it is complete. Never changes the data."""
        now = asyncio.get_running_loop().time()
        if sending:
            # Our frame leaves the UART byte by byte; the line is busy until its end.
            self._idle_since = now + len(data) * self._char_time
            return data
        self._idle_since = max(self._idle_since, now)
        alarm, expect, check = self._alarm, self._expect, self._check
        if alarm is not None and expect is not None and check is not None and not alarm.done():
            problem = check(data, *expect)
            if problem is not None:
                log.debug("%s: %s", self.description, problem)
                alarm.set_result(problem)
        return data

    def _on_connection(self, connected: bool) -> None:
        """pymodbus's connection hook: a connection lost while a request waits fails it now
        (pymodbus would let it run into its timeout)."""
        alarm = self._alarm
        if not connected and alarm is not None and not alarm.done():
            alarm.set_result(_LOST)


#: FC43 (encapsulated interface transport) and its read code for the basic identification
#: objects; "more follows" as the device sets it; most follow-up reads of one identification.
_READ_DEVICE_ID: Final = 0x2B
_BASIC_IDENTIFICATION: Final = 1
_MORE_FOLLOWS: Final = 0xFF
_MAX_IDENTIFICATION_READS: Final = 8

#: What _on_connection puts in the alarm (compared by identity).
_LOST: Final = "connection lost"


def _abandon(call: asyncio.Future[Any]) -> None:
    call.cancel()
    # Its outcome is of no interest any more; retrieve it so asyncio does not log it.
    call.add_done_callback(lambda f: f.cancelled() or f.exception())


def check_rtu(data: bytes, unit: int, function: int) -> str | None:
    """The problem with an RTU answer of ``unit`` to ``function`` at the start of ``data``, or
    None while it is fine, incomplete, or not that answer (pymodbus then hunts for a frame)."""
    if len(data) < 5 or data[0] != unit:
        return None
    fc = data[1]
    if fc == function | 0x80:
        size = 5
    elif fc != function:
        return None
    elif fc <= 4:
        size = 5 + data[2]
    elif fc in (5, 6, 15, 16):
        size = 8
    else:
        return None
    if len(data) < size:
        return None
    carried = (data[size - 2] << 8) | data[size - 1]
    if FramerRTU.compute_CRC(data[: size - 2]) == carried:
        return None
    return "bad CRC"


def check_ascii(data: bytes, unit: int, function: int) -> str | None:
    """Like :func:`check_rtu` for an ASCII answer (``:`` hex digits LRC CR LF)."""
    start = data.find(b":")
    if start < 0:
        return None
    end = data.find(b"\r\n", start)
    if end < 0:
        return None
    try:
        raw = bytes.fromhex(data[start + 1 : end].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return "not an ASCII frame (non-hex characters)"
    if len(raw) < 3 or raw[0] != unit or raw[1] not in (function, function | 0x80):
        return None
    if (-sum(raw[:-1])) & 0xFF != raw[-1]:
        return "bad LRC"
    return None
