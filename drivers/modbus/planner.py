"""Request planning: group a device's points into the fewest reads the device accepts."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.modbus.config import ModbusDevice, ModbusPoint

#: Modbus function code of each readable register table.
FUNCTION_CODES = {"holding": 3, "input": 4}


@dataclass(frozen=True, slots=True)
class ReadRequest:
    unit_id: int
    table: str
    address: int
    count: int
    #: The points this request covers, in address order.
    points: tuple[ModbusPoint, ...]

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.table]


def plan_requests(device: ModbusDevice) -> list[ReadRequest]:
    """Merge points of one table while the span stays within ``max_registers`` and the hole
    between neighbours within ``max_gap``. Every point lands in exactly one request."""
    requests: list[ReadRequest] = []
    for table in ("holding", "input"):
        points = sorted((p for p in device.points if p.table == table), key=lambda p: p.address)
        group: list[ModbusPoint] = []
        start = end = 0
        for point in points:
            p_end = point.address + point.count
            fits = (
                group
                and point.address - end <= device.max_gap
                and max(end, p_end) - start <= device.max_registers
            )
            if fits:
                group.append(point)
                end = max(end, p_end)
                continue
            if group:
                requests.append(
                    ReadRequest(device.unit_id, table, start, end - start, tuple(group))
                )
            group, start, end = [point], point.address, p_end
        if group:
            requests.append(ReadRequest(device.unit_id, table, start, end - start, tuple(group)))
    return requests
