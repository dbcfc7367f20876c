"""The one exception tree every driver raises; the scheduler turns it into quality reasons.

::

    DriverError                 anything a driver reports; ``reason`` is what operators see
    ├── LinkError               the bus itself is unusable: every device on it is affected
    │   └── ConnectError        cannot open or lost the connection/port    → "disconnected"
    └── DeviceError             one request to one device failed; the bus is fine
        ├── DeviceTimeout       no answer within the timeout               → "timeout"
        ├── DeviceException     the device answered with an exception code → "exception 2 (...)"
        └── FrameError          CRC, framing, or a malformed reply         → "frame error: ..."

Drivers translate their library's exceptions into this tree in exactly one place, with
``raise ... from exc``. ``asyncio.CancelledError`` is never translated: cancellation is not
an I/O error.
"""

from __future__ import annotations


class DriverError(Exception):
    reason = "driver error"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class LinkError(DriverError):
    reason = "disconnected"


class ConnectError(LinkError):
    reason = "disconnected"


class DeviceError(DriverError):
    reason = "device error"


class DeviceTimeout(DeviceError):
    reason = "timeout"


class DeviceException(DeviceError):
    """The device refused the request with a protocol exception code."""

    def __init__(self, code: int, name: str = "") -> None:
        self.code = code
        self.reason = f"exception {code}" + (f" ({name})" if name else "")
        super().__init__()


class FrameError(DeviceError):
    reason = "frame error"
