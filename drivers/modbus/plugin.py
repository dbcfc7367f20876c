"""Entry point of the Modbus driver (``fieldlink.drivers`` group, name ``modbus``)."""

from __future__ import annotations

from config.device import BusBase, DeviceBase
from drivers.base import BusLink, DeviceProgram
from drivers.modbus.config import ModbusBus, ModbusDevice


class ModbusPlugin:
    name = "modbus"
    bus_model: type[BusBase] = ModbusBus
    device_model: type[DeviceBase] = ModbusDevice

    def open_bus(self, bus: BusBase) -> BusLink:
        # Imported here so that validating a config does not need pymodbus installed.
        from drivers.modbus.link import ModbusLink

        assert isinstance(bus, ModbusBus)
        return ModbusLink(bus)

    def compile_device(self, device: DeviceBase) -> DeviceProgram:
        from drivers.modbus.program import ModbusProgram

        assert isinstance(device, ModbusDevice)
        return ModbusProgram(device)


PLUGIN = ModbusPlugin()
