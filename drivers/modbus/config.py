"""Config models of the Modbus driver: a bus is one endpoint, a device one unit id on it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from config.device import BusBase, DeviceBase, PointBase
from drivers.modbus.codec import RegisterType, WordOrder, register_count


class ModbusBus(BusBase):
    driver: Literal["modbus"] = Field(description="`modbus` for this driver.")
    transport: Literal["tcp"] = Field(
        default="tcp", description="How the bus is reached; `tcp` is Modbus TCP (port 502)."
    )
    host: str = Field(description="Host name or address of the device or gateway.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")
    timeout: float = Field(
        default=1.0, gt=0, le=60, description="Seconds to wait for an answer to one request."
    )
    connect_timeout: float = Field(
        default=3.0, gt=0, le=60, description="Seconds to wait for the TCP connection to open."
    )


class ModbusPoint(PointBase):
    table: Literal["holding", "input"] = Field(
        default="holding", description="Register table: `holding` (FC3) or `input` (FC4)."
    )
    address: int = Field(
        ge=0, le=65535, description="Protocol address (0-based) of the first register."
    )
    type: RegisterType = Field(description="How the registers are interpreted.")
    order: WordOrder | None = Field(
        default=None, description="Word/byte order for this point; defaults to the device's."
    )
    length: int | None = Field(
        default=None, ge=1, le=125, description="Registers a `string` occupies (strings only)."
    )
    scale: float = Field(default=1.0, description="value = raw × scale + offset.")
    offset: float = Field(default=0.0, description="value = raw × scale + offset.")

    @model_validator(mode="after")
    def _length_fits(self) -> ModbusPoint:
        if self.type is RegisterType.STRING:
            if self.length is None:
                raise ValueError("@length: a string point needs `length` (registers it occupies)")
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("@scale: a string point cannot have scale or offset")
        elif self.length is not None:
            raise ValueError(
                f"@length: only string points have a length; {self.type.value} has a fixed size"
            )
        end = self.address + register_count(self.type, self.length)
        if end > 65536:
            raise ValueError(
                f"@address: {self.type.value} at {self.address} runs past the last register (65535)"
            )
        return self

    @property
    def count(self) -> int:
        return register_count(self.type, self.length)


class ModbusDevice(DeviceBase):
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    byte_order: WordOrder = Field(
        default=WordOrder.ABCD, description="Default word/byte order of the device's points."
    )
    max_registers: int = Field(
        default=125, ge=1, le=125, description="Most registers the device returns in one request."
    )
    max_gap: int = Field(
        default=10,
        ge=0,
        le=124,
        description="Unused registers a merged request may span between two points.",
    )
    points: list[ModbusPoint] = Field(min_length=1, description="Points read from the device.")
