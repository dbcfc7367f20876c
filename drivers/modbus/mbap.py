"""Modbus TCP (MBAP framing) without pymodbus: the agent's read path for ``transport: tcp``.

Why not pymodbus here: reading is the agent's hot path, and pymodbus's client builds a
request object, a framer pass, a transaction-manager round and a response object per
request (19 % of the agent's CPU at 60,000 points/s, issue 7). A Modbus TCP exchange is a
7-byte header and a PDU; :class:`MbapProtocol` frames and matches them by transaction id,
:mod:`drivers.modbus.pdu` builds and parses the PDUs. pymodbus stays the client for the
serial framings (RTU over TCP, RTU, ASCII; :mod:`drivers.modbus.link`).

The MBAP header is transaction id (u16), protocol id (u16, 0), length (u16: the bytes that
follow, unit id + PDU) and unit id (u8). Answers are matched to requests by transaction id,
so an answer that arrives after its request timed out is recognised and dropped instead of
being taken for the next request's (pymodbus closes the connection after a timeout for this
reason; here the connection stays). Behaviour the scheduler relies on, the same as the
pymodbus link's (``drivers/modbus/README.md``):

* no answer within the bus ``timeout`` → :class:`~drivers.errors.DeviceTimeout`; after
  :data:`SILENT_LIMIT` unanswered requests in a row the next request first reconnects;
* the peer closes the connection while a request waits → ``ConnectError`` at once;
* cancelling a request in flight raises ``CancelledError`` and closes the link (the caller
  abandoned the transaction; the scheduler reopens the link);
* an exception answer → :class:`~drivers.errors.DeviceException` with the code's name.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Final

from drivers.errors import ConnectError, DeviceTimeout
from drivers.modbus import pdu
from drivers.modbus.config import ModbusBus
from drivers.modbus.planner import ReadRequest, WriteRequest

log = logging.getLogger("fieldlink.drivers.modbus")

#: Unanswered requests in a row after which a TCP link is closed (and reopened by the
#: scheduler): nothing on the other end answers any unit, the connection is probably dead.
SILENT_LIMIT: Final = 3
#: Planned reads whose PDU is kept packed; the agent has a few per device, tools make a new
#: request for every read, so the cache starts over when full.
MAX_CACHED_PDUS: Final = 4096
#: Most identification answers followed for one FC43 read ("more follows").
MAX_IDENTIFICATION_READS: Final = 8

_HEADER = struct.Struct(">HHHB")
#: Valid MBAP ``length`` values: unit id + at least a function code, at most a 253-byte PDU.
_MIN_LENGTH: Final = 2
_MAX_LENGTH: Final = 254


class _Lost(Exception):
    """Set on the requests waiting when the connection goes away."""


class MbapProtocol(asyncio.Protocol):
    """One Modbus TCP connection: sends requests, hands each answer to its waiter."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._tail = b""
        #: transaction id → the future of the request waiting for that answer.
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next_tid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_Lost())

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, unit: int, request: bytes, future: asyncio.Future[bytes] | None) -> int:
        """Send ``request`` (a PDU) to ``unit``; its answer will complete ``future`` (None: a
        broadcast, no answer). Returns the transaction id."""
        transport = self.transport
        if transport is None:
            raise _Lost()
        tid = self._next_tid = (self._next_tid + 1) & 0xFFFF
        if future is not None:
            self._waiting[tid] = future
        transport.write(_HEADER.pack(tid, 0, len(request) + 1, unit) + request)
        return tid

    def forget(self, tid: int) -> None:
        self._waiting.pop(tid, None)

    def data_received(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
        size = len(data)
        at = 0
        waiting = self._waiting
        while size - at >= 8:
            tid, protocol, length, _unit = _HEADER.unpack_from(data, at)
            if protocol != 0 or not _MIN_LENGTH <= length <= _MAX_LENGTH:
                # Not Modbus TCP (or a stream out of step): nothing after this can be
                # trusted. Dropping the connection fails the waiting request at once.
                log.debug("garbage on a Modbus TCP connection (header %r)", data[at : at + 7])
                self._tail = b""
                if self.transport is not None:
                    self.transport.close()
                return
            end = at + 6 + length
            if end > size:
                break
            future = waiting.pop(tid, None)
            if future is not None and not future.done():
                future.set_result(data[at + 7 : end])
            at = end
        self._tail = data[at:] if at < size else b""


class MbapLink:
    """One Modbus TCP connection shared by the units behind it (see the module docstring).

    The public methods are those of :class:`drivers.modbus.link.ModbusLink`, which hands its
    ``tcp`` buses to this class.
    """

    def __init__(self, bus: ModbusBus, description: str, *, reconnect_when_silent: bool) -> None:
        self._bus = bus
        self._description = description
        self._reconnect_when_silent = reconnect_when_silent
        self._client: MbapProtocol | None = None
        self._silent = 0
        #: id(request) → (request, PDU): a planned read's PDU is packed once.
        self._pdus: dict[int, tuple[ReadRequest, bytes]] = {}

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        bus = self._bus
        try:
            async with asyncio.timeout(bus.connect_timeout):
                _transport, protocol = await loop.create_connection(
                    MbapProtocol, str(bus.host), bus.port
                )
        except (TimeoutError, OSError) as exc:
            raise ConnectError(f"{self._description}: connection refused or timed out") from exc
        self._client = protocol
        self._silent = 0

    async def close(self) -> None:
        protocol, self._client = self._client, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    async def execute(self, request: ReadRequest) -> list[int] | list[bool]:
        """Read ``request``: register words (FC3/FC4) or one bool per address (FC1/FC2)."""
        known = self._pdus.get(id(request))
        if known is not None and known[0] is request:
            message = known[1]
        else:
            message = pdu.read_pdu(request.function_code, request.address, request.count)
            if len(self._pdus) >= MAX_CACHED_PDUS:  # tools make a new request per read
                self._pdus.clear()
            self._pdus[id(request)] = (request, message)
        answer = await self._exchange(request.unit_id, message)
        fc = message[0]
        if fc >= 3:
            return pdu.parse_registers(answer, fc)
        return pdu.parse_bits(answer, fc, request.count)

    async def write(self, request: WriteRequest) -> None:
        """Perform one write (FC5, FC6, FC15 or FC16). Unit 0 is a broadcast: no answer."""
        fc = request.function_code
        message = pdu.write_pdu(fc, request.address, request.values)
        if request.unit_id == 0:
            (await self._ready()).send(0, message, None)
            return
        answer = await self._exchange(request.unit_id, message)
        pdu.check_write_echo(answer, fc, request.address)

    async def read_identification(self, unit_id: int) -> dict[int, str]:
        """FC43 / MEI 14 basic identification, following "more follows"; see
        :meth:`drivers.modbus.link.ModbusLink.read_identification`."""
        objects: dict[int, str] = {}
        first = 0
        for _ in range(MAX_IDENTIFICATION_READS):
            answer = await self._exchange(unit_id, pdu.identification_pdu(first))
            found, follows, following = pdu.parse_identification(answer)
            for object_id, value in found.items():
                objects[object_id] = value.decode("latin-1").rstrip("\0 ")
            if not follows or following <= first:
                break
            first = following
        return objects

    def _ready_protocol(self) -> MbapProtocol:
        protocol = self._client
        if protocol is None or not protocol.connected:
            raise ConnectError(f"{self._description}: not connected")
        return protocol

    async def _ready(self) -> MbapProtocol:
        """The connection to send on; one gone silent is replaced first."""
        if self._reconnect_when_silent and self._silent >= SILENT_LIMIT and self._client:
            log.info(
                "%s: no answer from any unit %d times in a row; reconnecting",
                self._description,
                self._silent,
            )
            await self.connect()  # raises ConnectError if the endpoint is gone for real
        return self._ready_protocol()

    async def _exchange(self, unit: int, message: bytes) -> bytes:
        """Send one request PDU and return the answer PDU; the one place where what happens
        on the connection becomes a driver error."""
        if self._silent >= SILENT_LIMIT:
            protocol = await self._ready()
        else:
            protocol = self._ready_protocol()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        tid = protocol.send(unit, message, future)
        timer = loop.call_later(self._bus.timeout, _expire, future)
        try:
            answer = await future
        except TimeoutError:
            protocol.forget(tid)  # a late answer is recognised by its id and dropped
            self._silent += 1
            raise DeviceTimeout(f"unit {unit} did not answer") from None
        except _Lost:
            await self.close()
            raise ConnectError(f"{self._description}: connection lost") from None
        except asyncio.CancelledError:
            protocol.forget(tid)
            # The caller abandoned the transaction: the link closes, as on every transport
            # (drivers/base.py: closed or usable, never half-way); the scheduler reopens it.
            await self.close()
            raise
        finally:
            timer.cancel()
        self._silent = 0
        return answer


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
