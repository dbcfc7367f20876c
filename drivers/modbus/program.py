"""A Modbus device's compiled poll: planned reads and the decoding of their registers.

Decoding is the agent's hot path (one step per point per poll), so everything that does not
depend on the answer is worked out once at start. For each request:

* one ``struct`` format that unpacks every number of the request in a single C call;
* if any point is stored in another word order (CDAB, BADC, DCBA), a register permutation
  (with byte swaps) applied first, so that every point reads as big-endian ABCD;
* per point, a small tuple of what to do with the raw number (scale, offset, rounding,
  finiteness check) and the unit, so the loop touches no config objects.

Strings are rare and decoded separately through the general codec. Bit points of a register
(``bit: n``) are a mask test on the answer's word each. A coil/discrete read arrives as one
list of bools (unpacked once per request by the link); each point is an index into it.
"""

from __future__ import annotations

import logging
import math
import operator
import struct
from collections.abc import Callable, Sequence

from drivers.errors import DeviceException, DriverError
from drivers.modbus.codec import CodecError, RegisterType, WordOrder, bit_position, decode
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.planner import ReadRequest, plan_requests
from wire.model import Group, PointEntry, Quality, Value, point_entry

log = logging.getLogger("fieldlink.drivers.modbus")

_FORMAT_CHARS = {
    RegisterType.INT16: "h",
    RegisterType.UINT16: "H",
    RegisterType.INT32: "i",
    RegisterType.UINT32: "I",
    RegisterType.INT64: "q",
    RegisterType.UINT64: "Q",
    RegisterType.FLOAT32: "f",
    RegisterType.FLOAT64: "d",
}
_FLOATS = (RegisterType.FLOAT32, RegisterType.FLOAT64)

#: What the decode loop needs of a numeric point:
#: (name, unit, divisor, scale, offset, digits, check_finite). ``divisor`` is used instead of
#: ``scale`` when the scale is 10^-k, because raw / 10^k is the correctly rounded decimal
#: (4998 / 100 == 49.98, while 4998 * 0.01 == 49.980000000000004).
_Spec = tuple[str, str | None, float | None, float | None, float, int | None, bool]


#: A bit point of a register: (name, unit, index of the register in the answer, mask).
_BitSpec = tuple[str, str | None, int, int]


class _RequestPlan:
    __slots__ = (
        "bits",
        "checked",
        "fast",
        "names",
        "permutation",
        "scaled",
        "specs",
        "strings",
        "units",
        "words",
    )

    def __init__(self, request: ReadRequest, device: ModbusDevice) -> None:
        self.words = struct.Struct(f">{request.count}H")
        numeric = sorted(
            (p for p in request.points if p.type is not RegisterType.STRING and p.bit is None),
            key=lambda p: p.protocol_address,
        )
        self.strings = [p for p in request.points if p.type is RegisterType.STRING]
        self.bits: list[_BitSpec] = [
            (
                p.name,
                p.unit,
                p.protocol_address - request.address,
                1 << bit_position(p.bit, p.order or device.byte_order),
            )
            for p in request.points
            if p.bit is not None
        ]
        self.permutation = _permutation(request, numeric, device)
        fmt = [">"]
        position = 0
        specs: list[_Spec] = []
        for point in numeric:
            start = (point.protocol_address - request.address) * 2
            if start < position:
                raise _Overlap(point.name)
            if start > position:
                fmt.append(f"{start - position}x")
            fmt.append(_FORMAT_CHARS[point.type])
            position = start + point.count * 2
            specs.append(_spec(point))
        self.fast = struct.Struct("".join(fmt))
        self.specs = specs
        # The common case in one comprehension (ModbusProgram.decode): every numeric point has
        # a unit, scaled values are fixed up by index first, and the values that could be NaN
        # or infinite (floats, scaled values) are checked with one sum: finite iff the sum is.
        self.names: list[str] | None = None
        self.units: list[str] = []
        self.scaled: list[tuple[int, float | None, float | None, float, int | None]] = []
        self.checked: Callable[[Sequence[float]], Sequence[float]] | None = None
        units = [spec[1] for spec in specs]
        if all(unit is not None for unit in units):
            self.names = [spec[0] for spec in specs]
            self.units = [unit for unit in units if unit is not None]
            self.scaled = [
                (i, divisor, scale, offset, digits)
                for i, (_n, _u, divisor, scale, offset, digits, _c) in enumerate(specs)
                if scale is not None
            ]
            checked = [i for i, spec in enumerate(specs) if spec[6]]
            if checked:
                pick = operator.itemgetter(*checked)
                self.checked = pick if len(checked) > 1 else lambda values: (pick(values),)


class _BitPlan:
    """A coil/discrete read: (index in the answer, name, unit) per point."""

    __slots__ = ("entries",)

    def __init__(self, request: ReadRequest) -> None:
        self.entries = [
            (p.protocol_address - request.address, p.name, p.unit) for p in request.points
        ]


def _request_for(original: ReadRequest, points: list[ModbusPoint]) -> ReadRequest:
    start = min(p.protocol_address for p in points)
    end = max(p.protocol_address + p.count for p in points)
    return ReadRequest(original.unit_id, original.table, start, end - start, tuple(points))


class _Overlap(Exception):
    """Two points share registers; then each decodes on its own (see ModbusProgram)."""


def _permutation(
    request: ReadRequest, numeric: list[ModbusPoint], device: ModbusDevice
) -> list[tuple[int, bool]] | None:
    """Source register and byte swap for each register of the answer, so that every point
    reads as ABCD; None when all points already are ABCD."""
    perm = [(i, False) for i in range(request.count)]
    changed = False
    for point in numeric:
        order = point.order or device.byte_order
        if order is WordOrder.ABCD:
            continue
        changed = True
        first = point.protocol_address - request.address
        indices = list(range(first, first + point.count))
        sources = list(reversed(indices)) if order.swaps_words else indices
        for target, source in zip(indices, sources, strict=True):
            perm[target] = (source, order.swaps_bytes)
    return perm if changed else None


def _spec(point: ModbusPoint) -> _Spec:
    is_float = point.type in _FLOATS
    if point.scale == 1.0 and point.offset == 0.0:
        return (point.name, point.unit, None, None, 0.0, None, is_float)
    exponent = -math.log10(point.scale) if point.scale > 0 else 0.0
    power_of_ten = exponent >= 1 and exponent == round(exponent) and not is_float
    divisor = 10.0 ** round(exponent) if power_of_ten else None
    digits = None if power_of_ten and point.offset == 0.0 else _decimals(point)
    return (point.name, point.unit, divisor, point.scale, point.offset, digits, True)


class ModbusProgram:
    """Requests of one device and their decoding; learns from refused requests.

    Learning: a merged request the device refuses with exception 2 (illegal data address)
    usually spans a register the device does not have. :meth:`refine` splits it into two
    halves, which the scheduler runs at once; halves that are refused again split again, down
    to single points. Halves that succeed stay merged, single points that are refused stay on
    their own (reported bad with the exception each cycle), and the device's request list is
    replaced by these leaves, so later cycles issue the learned requests directly.
    """

    def __init__(self, device: ModbusDevice) -> None:
        self._config = device
        self._asset = device.asset_name
        self._device = device.name
        self._byte_order = device.byte_order
        self._requests: list[ReadRequest] = plan_requests(device)
        # id(request) → (request, plan). The request is kept with its plan so that a new
        # request can never pick up the plan of a dead one whose id was reused.
        self._plans: dict[int, tuple[ReadRequest, _RequestPlan | _BitPlan | None]] = {}

    @property
    def requests(self) -> Sequence[ReadRequest]:
        return self._requests

    def refine(self, request: ReadRequest, error: DriverError) -> list[ReadRequest] | None:
        """Smaller requests to run instead of a refused one, now and in later cycles."""
        if not (isinstance(error, DeviceException) and error.code == 2 and len(request.points) > 1):
            return None
        points = sorted(request.points, key=lambda p: p.protocol_address)
        halves = [
            _request_for(request, points[: len(points) // 2]),
            _request_for(request, points[len(points) // 2 :]),
        ]
        if request in self._requests:
            index = self._requests.index(request)
            # A new list: a poll iterating over the old one is not disturbed.
            self._requests = [*self._requests[:index], *halves, *self._requests[index + 1 :]]
        self._plans.pop(id(request), None)
        log.info(
            "device %s: %s %d..%d refused with exception 2; split into %s",
            self._device,
            request.table,
            request.address,
            request.address + request.count - 1,
            " and ".join(f"{h.address}..{h.address + h.count - 1}" for h in halves),
        )
        return halves

    def _plan_of(self, request: ReadRequest) -> _RequestPlan | _BitPlan | None:
        known = self._plans.get(id(request))
        if known is not None and known[0] is request:
            return known[1]
        plan: _RequestPlan | _BitPlan | None
        if request.is_bits:
            plan = _BitPlan(request)
        else:
            try:
                plan = _RequestPlan(request, self._config)
            except _Overlap:
                plan = None  # points share registers: decoded one by one
        self._plans[id(request)] = (request, plan)
        return plan

    def decode(self, request: ReadRequest, answer: Sequence[int], ts_ns: int) -> Group:
        """Readings from a read's answer: register words, or bools for a coil/discrete read."""
        if len(answer) != request.count:
            what = "bits" if request.is_bits else "registers"
            reason = f"frame error: {len(answer)} {what} in answer, {request.count} asked"
            return self.fail(request, reason, ts_ns)
        plan = self._plan_of(request)
        if plan is None:
            return self._decode_each(request, answer, ts_ns)
        if isinstance(plan, _BitPlan):
            return self._decode_bits(plan, answer, ts_ns)
        words = answer
        if plan.permutation is not None:
            words = [
                ((answer[i] & 0xFF) << 8) | (answer[i] >> 8) if swap else answer[i]
                for i, swap in plan.permutation
            ]
        try:
            numbers = plan.fast.unpack_from(plan.words.pack(*words))
        except struct.error as exc:  # a register outside 0..65535: a broken answer
            return self.fail(request, f"frame error: {exc}", ts_ns)
        if plan.names is not None:
            entries = _fast_entries(plan, numbers)
            if entries is not None:
                return self._finish(plan, request, answer, entries, ts_ns)
        entries = []
        append = entries.append
        for value, (name, unit, divisor, scale, offset, digits, check) in zip(
            numbers, plan.specs, strict=True
        ):
            if divisor is not None:
                value = value / divisor + offset
            elif scale is not None:
                value = value * scale + offset
            if digits is not None:
                value = round(value, digits)
            if check and value - value != 0.0:
                # NaN or ±inf (x - x is NaN for both): usually "sensor not available", and
                # not a number InfluxDB can store: a bad reading that says so.
                append(point_entry(name, None, unit, Quality.BAD, f"not a finite number ({value})"))
            elif unit is None:
                append({"p": name, "v": value})
            else:
                append({"p": name, "v": value, "u": unit})
        return self._finish(plan, request, answer, entries, ts_ns)

    def _finish(
        self,
        plan: _RequestPlan,
        request: ReadRequest,
        answer: Sequence[int],
        entries: list[PointEntry],
        ts_ns: int,
    ) -> Group:
        """Add the string and bit points (usually none) and make the group."""
        append = entries.append
        for point in plan.strings:
            append(self._one(point, request, answer))
        for name, unit, index, mask in plan.bits:
            if unit is None:
                append({"p": name, "v": answer[index] & mask != 0})
            else:
                append({"p": name, "v": answer[index] & mask != 0, "u": unit})
        return Group(self._asset, self._device, ts_ns, entries)

    def _decode_bits(self, plan: _BitPlan, answer: Sequence[int], ts_ns: int) -> Group:
        entries = [
            {"p": name, "v": bool(answer[i])}
            if unit is None
            else {"p": name, "v": bool(answer[i]), "u": unit}
            for i, name, unit in plan.entries
        ]
        return Group(self._asset, self._device, ts_ns, entries)

    def _decode_each(self, request: ReadRequest, answer: Sequence[int], ts_ns: int) -> Group:
        points = [self._one(p, request, answer) for p in request.points]
        return Group(self._asset, self._device, ts_ns, points)

    def _one(self, point: ModbusPoint, request: ReadRequest, answer: Sequence[int]) -> PointEntry:
        """The general, slower path: one point through the codec."""
        start = point.protocol_address - request.address
        order = point.order or self._byte_order
        if point.bit is not None:
            mask = 1 << bit_position(point.bit, order)
            return point_entry(point.name, answer[start] & mask != 0, point.unit)
        try:
            value: Value = decode(point.type, order, answer[start : start + point.count])
        except (CodecError, UnicodeDecodeError) as exc:
            return _bad(point, f"decode error: {exc}")
        if point.type is RegisterType.BOOL:
            return point_entry(point.name, value, point.unit)
        if point.type is not RegisterType.STRING:
            _name, _unit, divisor, scale, offset, digits, check = _spec(point)
            if divisor is not None:
                value = value / divisor + offset  # type: ignore[operator]
            elif scale is not None:
                value = value * scale + offset  # type: ignore[operator]
            if digits is not None:
                value = round(value, digits)  # type: ignore[arg-type]
            if check and value - value != 0.0:  # type: ignore[operator]
                return _bad(point, f"not a finite number ({value})")
        return point_entry(point.name, value, point.unit)

    def fail(self, request: ReadRequest, reason: str, ts_ns: int) -> Group:
        return Group(self._asset, self._device, ts_ns, [_bad(p, reason) for p in request.points])


def _fast_entries(plan: _RequestPlan, numbers: tuple[int | float, ...]) -> list[PointEntry] | None:
    """The entries of a request whose numeric points all have units, or None when a value is
    not finite (the general loop then reports it). Same values as the general loop."""
    values: Sequence[int | float] = numbers
    if plan.scaled:
        scaled = list(numbers)
        for i, divisor, scale, offset, digits in plan.scaled:
            value = scaled[i]
            if divisor is not None:
                value = value / divisor + offset
            elif scale is not None:
                value = value * scale + offset
            if digits is not None:
                value = round(value, digits)
            scaled[i] = value
        values = scaled
    if plan.checked is not None:
        total = sum(plan.checked(values))
        if total - total != 0.0:  # NaN or ±inf somewhere (or an overflowing sum): one by one
            return None
    return [
        {"p": name, "v": value, "u": unit}
        for name, unit, value in zip(plan.names or (), plan.units, values, strict=True)
    ]


def _bad(point: ModbusPoint, reason: str) -> PointEntry:
    return point_entry(point.name, None, point.unit, Quality.BAD, reason)


def _decimals(point: ModbusPoint) -> int | None:
    """Decimal places a scaled value is rounded to, or None to keep full precision.

    Taken from how scale and offset are written (``0.01`` → 2, ``0.1`` with offset ``-40.5``
    → 1). A scale with no short decimal form (``1/3``) keeps the value unrounded, as does a
    float register: its own digits are measurement, not representation noise.
    """
    if point.type in _FLOATS or point.type in (RegisterType.STRING, RegisterType.BOOL):
        return None
    places = []
    for number in (point.scale, point.offset):
        text = repr(float(number))
        if "e" in text:
            mantissa, _, exponent = text.partition("e")
            frac = mantissa.partition(".")[2].rstrip("0")
            places.append(max(0, len(frac) - int(exponent)))
        else:
            places.append(len(text.partition(".")[2].rstrip("0")))
    digits = max(places)
    return digits if digits <= 9 else None
