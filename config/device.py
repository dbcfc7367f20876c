"""What every bus and device has, whatever its driver. Drivers subclass these."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from config.base import Ident, StrictModel
from wire.topics import UNIT_PATTERN


class BusBase(StrictModel):
    """A line or endpoint owned by one task of the agent; devices on it take turns."""

    name: Ident = Field(description="Unique bus name, referenced by devices[].bus.")
    driver: str = Field(description="Driver that speaks on this bus, e.g. `modbus`.")
    request_gap: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description=(
            "Seconds of quiet between the end of one request and the next on this bus (slow "
            "gateways, RS-485 turnaround)."
        ),
    )
    connect_delay: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Seconds to wait after (re)connecting before the first request.",
    )


class PointBase(StrictModel):
    name: Ident = Field(description="Point name, unique within its device; the `point` tag.")
    unit: Annotated[str, Field(pattern=UNIT_PATTERN)] | None = Field(
        default=None,
        description=(
            "Engineering unit stored with every reading, e.g. `V`, `degC`, `m3/h`: 1 to 32 "
            "characters, no backslash or control characters (an InfluxDB tag cannot carry them)."
        ),
    )


class DeviceBase(StrictModel):
    name: Ident = Field(description="Unique device name within the agent; the `device` tag.")
    bus: Ident = Field(description="Name of the bus (buses[].name) this device is reached on.")
    asset: Ident | None = Field(
        default=None,
        description="Asset the device measures (the `asset` tag); defaults to the device name.",
    )
    interval: float = Field(
        default=1.0, gt=0, le=86_400, description="Seconds between polls, measured without drift."
    )
    enabled: bool = Field(default=True, description="A disabled device is validated, not polled.")

    @property
    def asset_name(self) -> str:
        return self.asset or self.name
