"""The Modbus TCP connection of one bus, wrapping pymodbus.

This is the only module that imports pymodbus. Its exceptions are translated into
:mod:`drivers.errors` here and nowhere else. pymodbus's own reconnect loop is switched off
(``reconnect_delay=0``) because the agent's scheduler owns backoff; its retries are off because
one timeout per request is what the scheduler budgets for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.errors import ConnectError, DeviceException, DeviceTimeout, FrameError
from drivers.modbus.config import ModbusBus
from drivers.modbus.planner import ReadRequest

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# pymodbus logs every timeout at ERROR level; the scheduler reports state changes instead.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class ModbusTcpLink:
    def __init__(self, bus: ModbusBus) -> None:
        self._bus = bus
        self._client: AsyncModbusTcpClient | None = None

    @property
    def description(self) -> str:
        return f"modbus tcp {self._bus.host}:{self._bus.port}"

    async def connect(self) -> None:
        await self.close()
        client = AsyncModbusTcpClient(
            self._bus.host,
            port=self._bus.port,
            timeout=self._bus.timeout,
            retries=0,
            reconnect_delay=0,
        )
        # pymodbus uses the request timeout for connecting too; cap it with ours.
        try:
            async with asyncio.timeout(self._bus.connect_timeout):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        except OSError as exc:
            client.close()
            raise ConnectError(f"{self.description}: {exc.strerror or exc}") from exc
        if not ok:
            client.close()
            raise ConnectError(f"{self.description}: connection refused or timed out")
        self._client = client

    async def execute(self, request: ReadRequest) -> list[int]:
        client = self._client
        if client is None or not client.connected:
            raise ConnectError(f"{self.description}: not connected")
        reader = (
            client.read_holding_registers
            if request.table == "holding"
            else client.read_input_registers
        )
        # pymodbus turns a cancellation inside its transaction into an I/O error; running the
        # call as its own task lets a cancelled caller see CancelledError, as it must.
        call = asyncio.ensure_future(
            reader(request.address, count=request.count, device_id=request.unit_id)
        )
        try:
            result: Any = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.cancel()
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
            raise DeviceTimeout(f"unit {request.unit_id} did not answer") from exc
        except ModbusException as exc:
            raise FrameError(str(exc)) from exc
        if result.isError():
            code = int(getattr(result, "exception_code", 0))
            raise DeviceException(code, EXCEPTION_NAMES.get(code, ""))
        registers: list[int] = list(result.registers)
        return registers

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
