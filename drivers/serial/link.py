"""The connection of one serial bus: a local port (pyserial) or a TCP serial device server.

The port is opened by :func:`drivers.serialport.open_port`, which the Modbus driver shares:
it translates pyserial's errors into :class:`~drivers.errors.ConnectError` with the same
reasons for both drivers. The OS errors of reads and writes are translated here, in
:meth:`_SerialPort._readable` and :meth:`_SerialPort.write`, and nowhere else.

Async I/O without pyserial-asyncio: pyserial only opens and configures the port (termios:
speed, parity, stop bits, data bits, flow control; ``exclusive`` so a second program cannot
read the same line). Its descriptor is non-blocking, and the event loop's ``add_reader``
calls :meth:`_SerialPort._readable` whenever bytes arrive (POSIX only, which is where
gateways run). No thread, no polling. A TCP serial server is an asyncio ``Protocol``. Both
put what they receive into one bounded buffer (:class:`_Inbox`), read by:

* ``receive()`` (streaming devices): the next bytes, as they came;
* ``execute(command)`` (polled devices): bytes left from before are discarded (they cannot be
  the reply to a command not yet sent), the command is written, and bytes are cut into frames
  with the device's framing until the first one arrives: that is the reply. No reply within
  the timeout raises :class:`~drivers.errors.DeviceTimeout`.

When the port vanishes (USB adapter unplugged, pseudo-terminal closed) the read ends with EOF
or EIO: the link closes and raises :class:`~drivers.errors.ConnectError`; the worker above
calls ``connect()`` again with backoff, which opens the port **by its path** again, so a
symlink re-pointed by udev (``/dev/serial/by-id/...``) is followed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Final

from drivers.errors import ConnectError, DeviceTimeout
from drivers.serial.config import SerialBus
from drivers.serial.program import SerialCommand
from drivers.serialport import LineSettings, OpenPort, open_port

log = logging.getLogger("fieldlink.drivers.serial")

#: Bytes kept unread at most; past it the oldest are dropped (and counted). A polled line
#: only keeps unsolicited bytes between two commands, a stream is read continuously.
INBOX_LIMIT: Final = 1 << 16
_READ_SIZE: Final = 4096


class _Inbox:
    """Received bytes waiting to be read, and the reason the link died, if it did."""

    def __init__(self, where: str = "") -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0
        self.error: ConnectError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._where = where

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        while self.size > INBOX_LIMIT and len(self.chunks) > 1:
            old = self.chunks.popleft()
            self.size -= len(old)
            if not self.dropped:
                # Once per connection: the agent is not reading as fast as the line delivers.
                log.warning(
                    "%s: more than %d KiB received and not read yet; dropping the oldest "
                    "bytes (the agent is overloaded, or a device floods the line)",
                    self._where,
                    INBOX_LIMIT >> 10,
                )
            self.dropped += len(old)
        self._wake()

    def fail(self, error: ConnectError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        return data

    async def get(self) -> bytes:
        """What has arrived, waiting for something if nothing has; raises the link's error."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take()


class _SerialPort:
    def __init__(self, port: OpenPort, inbox: _Inbox, where: str) -> None:
        self._port = port
        self._fd = port.fd
        self._inbox = inbox
        self._where = where
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        self._closed = False

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EIO: the other side of a pseudo-terminal closed, or the USB adapter vanished.
            self._dead(f"{self._where}: read failed: {exc.strerror or exc}")
            return
        if not data:
            self._dead(f"{self._where}: the port was closed (end of file)")
            return
        self._inbox.put(data)

    def _dead(self, detail: str) -> None:
        self._stop_reading()
        self._inbox.fail(ConnectError(detail))

    def _stop_reading(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._inbox.error is not None:
                raise self._inbox.error
            try:
                sent = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._dead(f"{self._where}: write failed: {exc.strerror or exc}")
                assert self._inbox.error is not None
                raise self._inbox.error from exc
            view = view[sent:]
            if view:
                # The port's output buffer is full (slow line, flow control holding it).
                ready = self._loop.create_future()
                self._loop.add_writer(self._fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    self._loop.remove_writer(self._fd)

    def close(self) -> None:
        self._stop_reading()
        self._port.close()


class _TcpPort(asyncio.Protocol):
    def __init__(self, inbox: _Inbox, where: str) -> None:
        self._inbox = inbox
        self._where = where
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._inbox.put(data)

    def eof_received(self) -> bool | None:
        self._inbox.fail(ConnectError(f"{self._where}: the server closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else ""
        self._inbox.fail(ConnectError(f"{self._where}: connection lost{why}"))

    async def write(self, data: bytes) -> None:
        if self._inbox.error is not None:
            raise self._inbox.error
        assert self._transport is not None
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class SerialLink:
    """One bus: its port or TCP connection, shared by its devices (see module docstring)."""

    def __init__(self, bus: SerialBus) -> None:
        self._bus = bus
        self._port: _SerialPort | _TcpPort | None = None
        self._inbox = _Inbox()

    def _line(self) -> LineSettings:
        bus = self._bus
        return LineSettings(
            bus.baudrate, bus.bytesize, bus.parity, bus.stopbits, bus.rtscts, bus.xonxoff
        )

    @property
    def description(self) -> str:
        bus = self._bus
        if bus.transport == "serial":
            return f"serial {bus.serial_port} {bus.baudrate} {self._line().framing}"
        return f"serial over tcp {bus.endpoint}"

    @property
    def connected(self) -> bool:
        return self._port is not None and self._inbox.error is None

    @property
    def dropped_bytes(self) -> int:
        """Received bytes dropped unread because the inbox was full."""
        return self._inbox.dropped

    async def connect(self) -> None:
        await self.close()
        inbox = _Inbox(self.description)
        if self._bus.transport == "serial":
            path = str(self._bus.serial_port)
            port = open_port(path, self._line(), where=path)
            self._port = _SerialPort(port, inbox, path)
        else:
            self._port = await self._open_tcp(inbox)
        self._inbox = inbox

    async def _open_tcp(self, inbox: _Inbox) -> _TcpPort:
        bus = self._bus
        loop = asyncio.get_running_loop()
        where = bus.endpoint
        try:
            async with asyncio.timeout(bus.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _TcpPort(inbox, where), str(bus.host), int(bus.port or 0)
                )
        except TimeoutError:
            raise ConnectError(
                f"{self.description}: no connection within {bus.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise ConnectError(f"{self.description}: {exc.strerror or exc}") from exc
        return protocol

    async def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def _require(self) -> _SerialPort | _TcpPort:
        if self._port is None:
            raise ConnectError(f"{self.description}: not connected")
        if self._inbox.error is not None:
            error = self._inbox.error
            self._port.close()
            self._port = None
            raise error
        return self._port

    async def receive(self) -> bytes:
        self._require()
        try:
            return await self._inbox.get()
        except ConnectError:
            await self.close()
            raise

    async def execute(self, request: SerialCommand) -> bytes:
        """Send one command and return its reply frame (without framing bytes)."""
        port = self._require()
        stale = self._inbox.take()
        if stale:
            log.debug(
                "%s: %d unsolicited byte(s) discarded before %r",
                self.description,
                len(stale),
                request.text,
            )
        deframer = request.new_deframer()
        timeout = request.timeout if request.timeout is not None else self._bus.timeout
        sent = False
        try:
            async with asyncio.timeout(timeout):
                # Inside the timeout: with flow control holding the line (rtscts and CTS
                # never raised) the write would otherwise wait for ever, and the bus with it.
                await port.write(request.payload)
                sent = True
                while True:
                    for frame in deframer.feed(await self._inbox.get()):
                        if request.accepts(frame):
                            return frame
                        log.debug(
                            "%s: skipped %r waiting for the reply to %r",
                            self.description,
                            frame[:80],
                            request.text,
                        )
        except TimeoutError:
            if not sent:
                raise DeviceTimeout(
                    f"{request.text!r} could not be sent within {timeout:g} s: the port does "
                    "not take it (flow control holding it? check rtscts/xonxoff and the cable)"
                ) from None
            raise DeviceTimeout(f"no reply to {request.text!r} within {timeout:g} s") from None
        except ConnectError:
            await self.close()
            raise
        finally:
            request.count_dropped(deframer)
