"""A serial line on a pseudo-terminal pair: the agent opens a real tty.

``os.openpty()`` gives a master and a slave side. The simulator owns the master: what the
agent writes to the slave (``/dev/pts/N``) is read from the master and answered there. The
slave is put in raw mode (no echo, no line editing, 8 bits through), and the simulator keeps
its own slave descriptor open so the line survives the agent closing and reopening the port
(with no slave open, reading the master fails with EIO).

Baud rate, parity and stop bits set on a pty are accepted and ignored by the kernel; the line
server emulates the time characters take (see ``line.py``).

What the agent writes goes to a :class:`Receiver`: the Modbus :class:`~sim.line.LineServer`, or
the request reader of a serial instrument (``instruments.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
import tty
from pathlib import Path
from typing import Protocol


class Receiver(Protocol):
    """Takes the bytes the agent writes to the line."""

    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class PtyLine:
    """One pseudo-terminal feeding one :class:`Receiver`; created by :func:`open_pty`."""

    def __init__(self, master: int, slave: int, link: Path | None) -> None:
        self._master = master
        self._slave = slave
        self._link = link
        self._pending = b""
        self._server: Receiver | None = None
        self._loop = asyncio.get_running_loop()
        self.path = os.ttyname(slave)

    def attach(self, server: Receiver) -> None:
        """Start reading: bytes from the agent go to ``server``."""
        self._server = server
        self._loop.add_reader(self._master, self._readable)

    def write(self, data: bytes) -> None:
        """Send bytes to the agent (buffered if the pty is full)."""
        if self._master < 0:
            return
        if self._pending:
            self._pending += data
            return
        try:
            sent = os.write(self._master, data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._pending = data[sent:]
            self._loop.add_writer(self._master, self._writable)

    def unread(self) -> int:
        """Bytes sent that the agent has not read yet (in the tty or still buffered here)."""
        if self._slave < 0:
            return 0
        raw = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        waiting: int = struct.unpack("i", raw)[0]
        return waiting + len(self._pending)

    def discard_unread(self) -> int:
        """Drop what the agent has not read (as a closed serial port loses what arrives);
        returns how many bytes were dropped."""
        dropped = self.unread()
        if self._slave >= 0:
            termios.tcflush(self._slave, termios.TCIFLUSH)
        if self._pending:
            self._pending = b""
            self._loop.remove_writer(self._master)
        return dropped

    def _writable(self) -> None:
        try:
            sent = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        self._pending = self._pending[sent:]
        if not self._pending:
            self._loop.remove_writer(self._master)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open; cannot happen while we hold one
                return
            raise
        if data and self._server is not None:
            self._server.feed(data)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._master >= 0:
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._link.is_symlink() and os.readlink(self._link) == self.path:
                    self._link.unlink()
            self._link = None


def open_pty(link: str | None = None) -> PtyLine:
    """A new pseudo-terminal pair, its slave in raw mode; with ``link``, a symlink of that
    name is made to point at the slave (an existing symlink there is replaced; any other file
    is left alone and an error raised)."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        os.set_blocking(master, False)
        line = PtyLine(master, slave, None)
        if link is not None:
            path = Path(link)
            if path.is_symlink():
                path.unlink()
            elif path.exists():
                raise FileExistsError(errno.EEXIST, "exists and is not a symlink", str(path))
            path.symlink_to(line.path)
            line._link = path
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return line
