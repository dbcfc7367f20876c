"""A Modbus device's compiled poll: planned reads and the decoding of their registers."""

from __future__ import annotations

import math
from collections.abc import Sequence

from drivers.modbus.codec import CodecError, RegisterType, decode
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.planner import ReadRequest, plan_requests
from wire.model import Quality, Reading, Value


class ModbusProgram:
    def __init__(self, device: ModbusDevice) -> None:
        self._asset = device.asset_name
        self._device = device.name
        self._default_order = device.byte_order
        self._requests = plan_requests(device)
        self._digits = {p.name: d for p in device.points if (d := _decimals(p)) is not None}

    @property
    def requests(self) -> Sequence[ReadRequest]:
        return self._requests

    def decode(self, request: ReadRequest, answer: Sequence[int], ts_ns: int) -> list[Reading]:
        if len(answer) < request.count:
            return self.fail(
                request, f"short answer: {len(answer)} of {request.count} registers", ts_ns
            )
        out: list[Reading] = []
        for point in request.points:
            start = point.address - request.address
            registers = answer[start : start + point.count]
            out.append(self._reading(point, registers, ts_ns))
        return out

    def _reading(self, point: ModbusPoint, registers: Sequence[int], ts_ns: int) -> Reading:
        order = point.order or self._default_order
        try:
            raw = decode(point.type, order, registers)
        except (CodecError, UnicodeDecodeError) as exc:
            return self._bad(point, f"decode error: {exc}", ts_ns)
        value: Value = raw
        if point.type is not RegisterType.STRING and (point.scale != 1.0 or point.offset != 0.0):
            value = raw * point.scale + point.offset  # type: ignore[operator]
            digits = self._digits.get(point.name)
            if digits is not None:
                # 4998 × 0.01 is 49.980000000000004 in binary floating point; the datasheet
                # means 49.98. Round to the decimals that scale and offset are written with.
                value = round(value, digits)
        if isinstance(value, float) and not math.isfinite(value):
            # A float register holding NaN/Inf usually means "sensor not available"; it is not
            # a number InfluxDB can store, so it becomes a bad reading that says so.
            return self._bad(point, f"not a finite number ({value})", ts_ns)
        return Reading(
            self._asset, self._device, point.name, ts_ns, value, point.unit, Quality.GOOD
        )

    def fail(self, request: ReadRequest, reason: str, ts_ns: int) -> list[Reading]:
        return [self._bad(p, reason, ts_ns) for p in request.points]

    def _bad(self, point: ModbusPoint, reason: str, ts_ns: int) -> Reading:
        return Reading(
            self._asset, self._device, point.name, ts_ns, None, point.unit, Quality.BAD, reason
        )


def _decimals(point: ModbusPoint) -> int | None:
    """Decimal places a scaled value is rounded to, or None to keep full precision.

    Taken from how scale and offset are written (``0.01`` → 2, ``0.1`` with offset ``-40.5``
    → 1). A scale with no short decimal form (``1/3``) keeps the value unrounded, as does a
    float register: its own digits are measurement, not representation noise.
    """
    if point.type in (RegisterType.FLOAT32, RegisterType.FLOAT64, RegisterType.STRING):
        return None
    places = []
    for number in (point.scale, point.offset):
        text = repr(float(number))
        if "e" in text or "E" in text:
            mantissa, _, exponent = text.lower().partition("e")
            frac = mantissa.partition(".")[2].rstrip("0")
            places.append(max(0, len(frac) - int(exponent)))
        else:
            places.append(len(text.partition(".")[2].rstrip("0")))
    digits = max(places)
    return digits if digits <= 9 else None
