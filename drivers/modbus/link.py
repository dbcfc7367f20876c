"""The connection of one Modbus bus: TCP, RTU over TCP, RTU and ASCII.

:class:`ModbusLink` is what the agent, the tools and the tests open. It hands the bus to the
client that serves its transport:

=================  =================================================  ==================
transport          client                                             framing
=================  =================================================  ==================
``tcp``            :class:`drivers.modbus.mbap.MbapLink` (our own)     MBAP
``rtu-over-tcp``   :class:`drivers.modbus.pymodbus_link.PymodbusLink`  RTU on TCP
``rtu``            ``PymodbusLink``, serial port                      RTU
``ascii``          ``PymodbusLink``, serial port                      ASCII
=================  =================================================  ==================

Modbus TCP, the agent's common and hot case, is served by a lean client of our own (one
header and one PDU per request, answers matched by transaction id); pymodbus, imported only
when a bus needs it, serves the serial framings, whose timing and checksum handling it does
well with the fixes in ``pymodbus_link.py``. Both raise :mod:`drivers.errors` and behave the
same to the scheduler: see ``drivers/modbus/README.md``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from drivers.modbus.config import SERIAL_TRANSPORTS, ModbusBus
from drivers.modbus.mbap import MbapLink
from drivers.modbus.planner import ReadRequest, WriteRequest

if TYPE_CHECKING:
    from drivers.modbus.pymodbus_link import PymodbusLink


class ModbusLink:
    """One bus: one TCP connection or one open serial port, shared by its units."""

    def __init__(self, bus: ModbusBus, *, reconnect_when_silent: bool = True) -> None:
        """``reconnect_when_silent=False`` keeps the TCP connection however many requests go
        unanswered in a row: for a unit-id scan, where silence is the expected answer."""
        self._bus = bus
        self._impl: MbapLink | PymodbusLink
        if bus.transport == "tcp":
            self._impl = MbapLink(
                bus, self.description, reconnect_when_silent=reconnect_when_silent
            )
        else:
            from drivers.modbus.pymodbus_link import PymodbusLink

            self._impl = PymodbusLink(bus, reconnect_when_silent=reconnect_when_silent)

    @property
    def description(self) -> str:
        bus = self._bus
        if bus.transport in SERIAL_TRANSPORTS:
            framing = f"{bus.data_bits}{bus.parity}{bus.stopbits}"
            return f"modbus {bus.transport} {bus.serial_port} {bus.baudrate} {framing}"
        return f"modbus {bus.transport} {bus.endpoint}"

    @property
    def connected(self) -> bool:
        return self._impl.connected

    if not TYPE_CHECKING:
        # Private state (``_client``, the current connection; ``_gap``, ``_check``) belongs to
        # the client; tests of the transports' timing and checksums reach it through the link
        # they poll with. Hidden from the type checker, so typos in our own code still fail.
        def __getattr__(self, name: str) -> Any:
            if name == "_impl":  # not set yet
                raise AttributeError(name)
            return getattr(self._impl, name)

        def __setattr__(self, name: str, value: Any) -> None:
            if name in ("_bus", "_impl"):
                object.__setattr__(self, name, value)
            else:
                setattr(self._impl, name, value)

    async def connect(self) -> None:
        await self._impl.connect()

    async def close(self) -> None:
        await self._impl.close()

    def execute(self, request: ReadRequest) -> Coroutine[Any, Any, list[int] | list[bool]]:
        """Read ``request``: register words (FC3/FC4) or one bool per address (FC1/FC2)."""
        # The client's coroutine itself, not one more frame around it: this is the hot path.
        return self._impl.execute(request)

    async def write(self, request: WriteRequest) -> None:
        """Perform one write (FC5, FC6, FC15 or FC16). Unit 0 is a broadcast: no answer."""
        await self._impl.write(request)

    async def read_identification(self, unit_id: int) -> dict[int, str]:
        """FC43 / MEI type 14, read device identification, basic category (stream access):
        object id → text, e.g. ``{0: "ACME", 1: "EM-340", 2: "1.04"}`` (VendorName,
        ProductCode, MajorMinorRevision). Follows "more follows" for devices that split the
        answer. A device without identification answers exception 1 (illegal function):
        :class:`~drivers.errors.DeviceException`; the other errors are those of
        :meth:`execute`."""
        return await self._impl.read_identification(unit_id)
