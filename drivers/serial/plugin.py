"""Entry point of the serial driver (``fieldlink.drivers`` group, name ``serial``)."""

from __future__ import annotations

from config.device import BusBase, DeviceBase
from drivers.base import BusLink, DeviceProgram, StreamDecoder
from drivers.serial.config import SerialBus, SerialDevice


class SerialPlugin:
    name = "serial"
    bus_model: type[BusBase] = SerialBus
    device_model: type[DeviceBase] = SerialDevice

    def open_bus(self, bus: BusBase) -> BusLink:
        # Imported here so that validating a config does not need pyserial installed.
        from drivers.serial.link import SerialLink

        assert isinstance(bus, SerialBus)
        return SerialLink(bus)

    def is_streaming(self, device: DeviceBase) -> bool:
        return isinstance(device, SerialDevice) and device.mode == "stream"

    def compile_device(self, device: DeviceBase) -> DeviceProgram | StreamDecoder:
        from drivers.serial.program import PolledProgram, StreamProgram

        assert isinstance(device, SerialDevice)
        if device.mode == "stream":
            return StreamProgram(device)
        return PolledProgram(device)


PLUGIN = SerialPlugin()
