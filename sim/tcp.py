"""TCP listeners: Modbus TCP (MBAP header + PDU) and RTU over TCP, several unit ids each.

The MBAP header is transaction id (u16), protocol id (u16, 0 for Modbus), length (u16,
bytes that follow: unit id + PDU) and unit id (u8). TCP is a byte stream, so a read may
hold part of a frame or several frames; :class:`ModbusTcpProtocol` keeps the unfinished
tail and answers every complete frame, in order, with one write per read.

RTU over TCP (a serial server, "transparent" gateway) carries plain RTU frames with their
CRC on the connection; :class:`LineTcpProtocol` hands the stream to a
:class:`sim.line.LineServer`, exactly as a pseudo-terminal does.

A unit with faults answers with a :class:`sim.faults.Reply` instead of bytes: its answer may
be delayed (later answers on the connection wait behind it, keeping the order), left out, or
replaced by closing the connection.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Final

from sim.faults import Reply
from sim.line import Framing, LineServer, LineStats, Outbox

#: Answers one request PDU for one unit (see :func:`sim.pdu.handle_pdu`); a unit with
#: faults answers with a Reply.
PduHandler = Callable[[bytes], bytes | Reply]

_MBAP = struct.Struct(">HHHB")
_HEADER: Final = 6  # the MBAP bytes before the unit id; `length` counts from the unit id
#: Valid `length` values: unit id + at least a function code, at most a 253-byte PDU.
_MIN_LENGTH: Final = 2
_MAX_LENGTH: Final = 254


class _ListenerConnection(asyncio.Protocol):
    """One client connection of a listener: counted in ``connections`` while open (so
    closing the listener can drop it), or closed on arrival when ``limit`` is full.
    Subclasses add what they serve in :meth:`_opened` and :meth:`_closed`."""

    def __init__(self, connections: set[asyncio.Transport], limit: ConnectionLimit | None) -> None:
        self._connections = connections
        self._limit = limit
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._limit is not None and not self._limit.admit(self._connections):
            transport.close()
            return
        self._transport = transport
        self._connections.add(transport)
        self._opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()
        if self._transport is not None:
            self._connections.discard(self._transport)
            self._transport = None

    def _opened(self, transport: asyncio.Transport) -> None:
        """An admitted connection starts."""

    def _closed(self) -> None:
        """The connection ended (admitted or not)."""


class ModbusTcpProtocol(_ListenerConnection):
    """One Modbus TCP client connection."""

    def __init__(
        self,
        units: Mapping[int, PduHandler],
        connections: set[asyncio.Transport],
        limit: ConnectionLimit | None = None,
    ) -> None:
        super().__init__(connections, limit)
        self._units = units
        self._tail = b""
        #: Created at the first delayed answer; while it holds answers, all answers queue.
        self._outbox: Outbox | None = None

    def _closed(self) -> None:
        if self._outbox is not None:
            self._outbox.close()

    # A client that sends faster than it reads would grow our write buffer without bound;
    # stop reading until it catches up, as TCP flow control intends.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._tail:
            data = self._tail + data  # only after a partial frame; usually nothing is copied
        units, unpack, pack = self._units, _MBAP.unpack_from, _MBAP.pack
        answers: list[bytes] = []
        pos, end = 0, len(data)
        while end - pos >= _HEADER + 1:
            transaction, protocol, length, unit = unpack(data, pos)
            if not _MIN_LENGTH <= length <= _MAX_LENGTH:
                # Not Modbus, or out of step: there is no way to find the next frame.
                transport.close()
                self._tail = b""
                return
            stop = pos + _HEADER + length
            if stop > end:
                break
            handler = units.get(unit) if protocol == 0 else None
            if handler is not None:
                answer = handler(data[pos + _HEADER + 1 : stop])
                if type(answer) is bytes and self._outbox is None:
                    answers.append(pack(transaction, 0, len(answer) + 1, unit))
                    answers.append(answer)
                elif not self._later(transport, answers, transaction, unit, answer):
                    return  # the connection was dropped
            # Else: no such unit behind this port (a gateway with nothing there stays
            # silent and the client times out), or not the Modbus protocol: ignored.
            pos = stop
        self._tail = data[pos:] if pos < end else b""
        if answers:
            transport.write(b"".join(answers))

    def _later(
        self,
        transport: asyncio.Transport,
        answers: list[bytes],
        transaction: int,
        unit: int,
        answer: bytes | Reply,
    ) -> bool:
        """The slow path: an answer with faults, or any answer queued behind a delayed one.
        Returns False when the connection was dropped."""
        if answers:  # what came before goes out first, in order
            self._send(transport, b"".join(answers), 0.0)
            answers.clear()
        delay = 0.0
        if type(answer) is not bytes:
            assert isinstance(answer, Reply)
            if answer.drop:
                self._tail = b""
                transport.close()
                return False
            if answer.pdu is None:
                return True
            delay, answer = answer.delay, answer.pdu
        header = _MBAP.pack(transaction, 0, len(answer) + 1, unit)
        self._send(transport, header + answer, delay)
        return True

    def _send(self, transport: asyncio.Transport, frame: bytes, delay: float) -> None:
        if self._outbox is None:
            self._outbox = Outbox(transport.write)
        self._outbox.send(frame, delay)


class ConnectionLimit:
    """At most ``most`` connections at once; later ones are closed on arrival and counted."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.refused = 0

    def admit(self, connections: set[asyncio.Transport]) -> bool:
        if len(connections) < self.most:
            return True
        self.refused += 1
        return False


class LineTcpProtocol(_ListenerConnection):
    """One RTU-over-TCP (or ASCII-over-TCP) connection: the stream goes to a LineServer."""

    def __init__(
        self,
        framing: Framing,
        units: Mapping[int, PduHandler],
        stats: LineStats,
        connections: set[asyncio.Transport],
        limit: ConnectionLimit | None = None,
    ) -> None:
        super().__init__(connections, limit)
        self._framing = framing
        self._units = units
        self._stats = stats
        self._line: LineServer | None = None

    def _opened(self, transport: asyncio.Transport) -> None:
        self._line = LineServer(
            self._framing, self._units, self._stats, transport.write, drop=transport.close
        )

    def _closed(self) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None

    def data_received(self, data: bytes) -> None:
        if self._line is not None:
            self._line.feed(data)


class TcpListener:
    """One bound TCP port serving the units in ``units``."""

    def __init__(
        self,
        server: asyncio.Server,
        connections: set[asyncio.Transport],
        limit: ConnectionLimit | None = None,
    ) -> None:
        self._server = server
        self._connections = connections
        self.limit = limit

    @property
    def port(self) -> int:
        """The bound port (the one picked by the OS when 0 was asked)."""
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting, drop every open connection, and wait until the port is released."""
        self._server.close()
        for transport in list(self._connections):
            transport.abort()  # clients get a reset, like a device powering off
        await self._server.wait_closed()


async def listen_tcp(
    host: str,
    port: int,
    units: Mapping[int, PduHandler],
    *,
    framing: Framing | None = None,
    stats: LineStats | None = None,
    max_connections: int | None = None,
) -> TcpListener:
    """Bind ``host:port`` and serve ``units`` (unit id → PDU handler) on it: Modbus TCP, or
    with ``framing`` RTU/ASCII frames over TCP (counted in ``stats``).

    With port 0 only the first address ``host`` resolves to is bound: binding each address
    family separately would give each its own random port, and a device must have one.
    """
    loop = asyncio.get_running_loop()
    connections: set[asyncio.Transport] = set()
    limit = ConnectionLimit(max_connections) if max_connections is not None else None
    factory: Callable[[], asyncio.Protocol]
    if framing is None:
        factory = lambda: ModbusTcpProtocol(units, connections, limit)  # noqa: E731
    else:
        line_stats = stats if stats is not None else LineStats()
        factory = lambda: LineTcpProtocol(framing, units, line_stats, connections, limit)  # noqa: E731
    bind_host: str | None = host
    if port == 0:
        infos = await loop.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if infos:
            bind_host = str(infos[0][4][0])
    server = await loop.create_server(factory, bind_host or None, port, reuse_address=True)
    return TcpListener(server, connections, limit)
