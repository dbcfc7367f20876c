"""Modbus TCP framing: MBAP header + PDU, several unit ids behind one listener.

The MBAP header is transaction id (u16), protocol id (u16, 0 for Modbus), length (u16,
bytes that follow: unit id + PDU) and unit id (u8). TCP is a byte stream, so a read may
hold part of a frame or several frames; :class:`ModbusTcpProtocol` keeps the unfinished
tail and answers every complete frame, in order, with one write per read.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Final

#: Answers one request PDU for one unit (see :func:`sim.pdu.handle_pdu`).
PduHandler = Callable[[bytes], bytes]

_MBAP = struct.Struct(">HHHB")
_HEADER: Final = 6  # the MBAP bytes before the unit id; `length` counts from the unit id
#: Valid `length` values: unit id + at least a function code, at most a 253-byte PDU.
_MIN_LENGTH: Final = 2
_MAX_LENGTH: Final = 254


class ModbusTcpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(
        self, units: Mapping[int, PduHandler], connections: set[asyncio.Transport]
    ) -> None:
        self._units = units
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._connections.discard(self._transport)
            self._transport = None

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
                answers.append(pack(transaction, 0, len(answer) + 1, unit))
                answers.append(answer)
            # Else: no such unit behind this port (a gateway with nothing there stays
            # silent and the client times out), or not the Modbus protocol: ignored.
            pos = stop
        self._tail = data[pos:] if pos < end else b""
        if answers:
            transport.write(b"".join(answers))


class TcpListener:
    """One bound TCP port serving the units in ``units``."""

    def __init__(self, server: asyncio.Server, connections: set[asyncio.Transport]) -> None:
        self._server = server
        self._connections = connections

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


async def listen_tcp(host: str, port: int, units: Mapping[int, PduHandler]) -> TcpListener:
    """Bind ``host:port`` and serve ``units`` (unit id → PDU handler) on it.

    With port 0 only the first address ``host`` resolves to is bound: binding each address
    family separately would give each its own random port, and a device must have one.
    """
    loop = asyncio.get_running_loop()
    connections: set[asyncio.Transport] = set()
    bind_host: str | None = host
    if port == 0:
        infos = await loop.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if infos:
            bind_host = str(infos[0][4][0])
    server = await loop.create_server(
        lambda: ModbusTcpProtocol(units, connections), bind_host or None, port, reuse_address=True
    )
    return TcpListener(server, connections)
