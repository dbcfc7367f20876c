"""Opening and closing a local serial port (pyserial), and why it cannot be opened, in words.

Both serial drivers open ports here: ``drivers/serial/link.py`` keeps the port open and
reads its descriptor on the event loop; ``drivers/modbus/pymodbus_link.py`` tries the port
before pymodbus opens it (see there why). Whichever driver opens the port, the same fault
reads the same: pyserial's errors (``SerialException``, ``ValueError`` for settings it
refuses itself, ``termios.error`` for settings the port refuses) are translated into
:class:`~drivers.errors.ConnectError` here, in :func:`open_port`, and nowhere else:

==============================  ==================================================================
fault                           reason (after the caller's ``where: ``)
==============================  ==================================================================
no such device (ENOENT)         ``no such port (unplugged? check the path, or /dev/serial/by-id/)``
no permission (EACCES)          ``permission denied (add the agent's user to the `dialout` group)``
another program holds the port  ``in use by another program (the port is locked)``
the port refuses the settings   ``the port refuses 8E1 at 9600 bit/s`` (and on a pseudo-terminal:
(EINVAL)                        ``; a pseudo-terminal takes only 8 data bits and no parity``)
pyserial refuses a setting      ``the port refuses the settings: <pyserial's text>``
anything else                   ``cannot open: <the OS's text>``
==============================  ==================================================================

The port is opened exclusively (pyserial's ``flock``), so a second program cannot read the
same line, and non-blocking. A port driver may *silently* ignore a setting: Linux applies
what it can of a ``tcsetattr`` and reports success (a pseudo-terminal drops parity at the
first one). So after opening, the settings are applied a second time: the port, now holding
what it really took, refuses the difference with EINVAL, and the open fails with the reason
above instead of a line that garbles every character.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import Any, Self

from drivers.errors import ConnectError

#: ``errno`` values recognised in pyserial's text when its exception carries none.
_KNOWN_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EBUSY, errno.ENODEV, errno.EIO)


@dataclass(frozen=True, slots=True)
class LineSettings:
    """How a serial line is set: speed, character format and flow control."""

    baudrate: int
    bytesize: int
    parity: str
    #: 1, 1.5 or 2.
    stopbits: float
    rtscts: bool = False
    xonxoff: bool = False

    @property
    def framing(self) -> str:
        """Data bits, parity and stop bits the usual short way: ``8N1``, ``7E2``."""
        return f"{self.bytesize}{self.parity}{self.stopbits:g}"

    def serial_kwargs(self) -> dict[str, Any]:
        """Speed and character format as pyserial's ``Serial`` takes them, and so pymodbus's
        serial client too: a port tried here is opened there with the very same settings."""
        return {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": self.parity,
            "stopbits": self.stopbits,
        }


class OpenPort:
    """An open serial port: its non-blocking descriptor, and :meth:`close`."""

    def __init__(self, port: Any) -> None:
        self._port = port  # the pyserial object: keeps the descriptor (and its lock) alive
        self.fd: int = port.fileno()

    def close(self) -> None:
        """Close the port (releasing its lock); closing twice, or a vanished port, is fine."""
        with contextlib.suppress(Exception):
            self._port.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_port(path: str, line: LineSettings, *, where: str) -> OpenPort:
    """Open ``path`` with ``line``'s settings, exclusively and non-blocking; on failure raise
    :class:`~drivers.errors.ConnectError` ``"{where}: {reason}"`` (the reasons: see above)."""
    import termios  # POSIX only, which is where the serial drivers run

    import serial  # type: ignore[import-untyped]  # pyserial ships no type hints

    try:
        port = serial.Serial(
            path,
            **line.serial_kwargs(),
            rtscts=line.rtscts,
            xonxoff=line.xonxoff,
            timeout=0,
            exclusive=True,
        )
    except (OSError, ValueError, termios.error) as exc:
        raise ConnectError(f"{where}: {open_failure(path, line, exc)}") from exc
    try:
        # Setting the timeout makes pyserial apply every setting again (see the docstring).
        port.timeout = 0
        opened = OpenPort(port)
        os.set_blocking(opened.fd, False)
    except (OSError, ValueError, termios.error) as exc:
        port.close()
        raise ConnectError(f"{where}: {open_failure(path, line, exc)}") from exc
    return opened


def open_failure(path: str, line: LineSettings, exc: Exception) -> str:
    """Why opening ``path`` failed with ``exc``, and what to do about it (see the table)."""
    # termios.error carries (errno, text) in its args; pyserial's SerialException is an
    # OSError, sometimes without errno but with "[Errno N]" in its text.
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if isinstance(exc, OSError):
        code = exc.errno or code
        text = str(exc)
        if "exclusively lock" in text:  # pyserial's flock failed: someone holds the port
            return "in use by another program (the port is locked)"
        for known in _KNOWN_ERRNOS:
            if f"[Errno {known}]" in text:
                code = known
    if code == errno.ENOENT:
        return "no such port (unplugged? check the path, or /dev/serial/by-id/)"
    if code == errno.EACCES:
        return "permission denied (add the agent's user to the `dialout` group)"
    if code == errno.EINVAL:
        hint = (
            "; a pseudo-terminal takes only 8 data bits and no parity"
            if os.path.realpath(path).startswith("/dev/pts/")
            else ""
        )
        return f"the port refuses {line.framing} at {line.baudrate} bit/s{hint}"
    if isinstance(exc, ValueError):
        return f"the port refuses the settings: {exc}"
    if code:
        return f"cannot open: {os.strerror(code)}"
    return f"cannot open: {exc}"
