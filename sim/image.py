"""A device's register map at run time: configured registers → big-endian register bytes.

Reads are the hot path (benchmarks poll thousands of times a second), so:

* a register whose value never changes is encoded once, at start-up;
* the slots a request touches are looked up once per distinct ``(address, count)`` and
  the lookup ("plan") is cached; a request touching only constants is answered with
  cached bytes;
* a waveform is evaluated only when a request covers it, with one clock read per request.
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Final

from config.sim import INTEGER_TYPES, ConstantWave, CounterWave, SimDevice, SimRegister
from drivers.modbus.codec import RegisterType, WordOrder, encode, pack_bits
from sim.waves import ValueAt, value_function

Clock = Callable[[], float]

_INT_RANGE: Final = {
    RegisterType.INT16: (-(1 << 15), (1 << 15) - 1),
    RegisterType.UINT16: (0, (1 << 16) - 1),
    RegisterType.INT32: (-(1 << 31), (1 << 31) - 1),
    RegisterType.UINT32: (0, (1 << 32) - 1),
    RegisterType.INT64: (-(1 << 63), (1 << 63) - 1),
    RegisterType.UINT64: (0, (1 << 64) - 1),
}
#: Largest finite float32; larger values are clamped rather than failing to pack.
_FLOAT32_MAX: Final = 3.4028234663852886e38
_FLOAT64_MAX: Final = sys.float_info.max

#: Plan cache entries per table before it is dropped; bounds memory under address scans.
_PLAN_CACHE_SIZE: Final = 4096
#: Cached plan of a request that touches an undefined address. Real data is never empty.
_HOLE: Final = b""

Encoder = Callable[[int | float], bytes]
Segment = tuple["Slot", int, int]
Plan = bytes | tuple[Segment, ...]


class Slot:
    """One configured register (one value, ``stop - start`` registers) at run time."""

    __slots__ = ("encode", "start", "static", "stop", "value_at")

    def __init__(
        self,
        start: int,
        stop: int,
        static: bytes | None,
        value_at: ValueAt | None,
        encoder: Encoder | None,
    ) -> None:
        self.start = start
        self.stop = stop
        #: The register bytes when they do not depend on time (a constant, or written).
        self.static = static
        self.value_at = value_at
        self.encode = encoder

    def data_at(self, t: float) -> bytes:
        static = self.static
        if static is not None:
            return static
        value_at, encoder = self.value_at, self.encode
        assert value_at is not None
        assert encoder is not None
        return encoder(value_at(t))


def build_slot(reg: SimRegister) -> Slot:
    """Encode a constant now, or prepare the waveform and encoder for request time."""
    start, stop = reg.address, reg.address + reg.count
    value = reg.value
    if reg.type is RegisterType.STRING:
        text = value.value if isinstance(value, ConstantWave) else value
        assert isinstance(text, str)  # guaranteed by SimRegister validation
        data = _pack_words(encode(reg.type, reg.order, text, reg.length))
        return Slot(start, stop, data, None, None)
    wrap = isinstance(value, CounterWave)
    encoder = make_encoder(reg.type, reg.order, reg.scale, reg.offset, wrap=wrap)
    value_at = value_function(value)  # type: ignore[arg-type]  # text excluded by validation
    if value_at is None:
        constant = value.value if isinstance(value, ConstantWave) else value
        assert isinstance(constant, int | float)
        return Slot(start, stop, encoder(constant), None, None)
    return Slot(start, stop, None, value_at, encoder)


def make_encoder(
    kind: RegisterType, order: WordOrder, scale: float, offset: float, *, wrap: bool = False
) -> Encoder:
    """value → register bytes: ``raw = (value - offset) / scale``, then the register codec.

    Integer types get ``raw`` rounded and clamped to the type's range (or, for a counter,
    wrapped past its maximum back to 0, as real counters do). Float types are clamped to
    the largest finite value so a runaway ramp never fails a request.
    """
    identity = scale == 1.0 and offset == 0.0
    if kind in INTEGER_TYPES:
        lo, hi = _INT_RANGE[kind]
        modulus = hi + 1

        def encode_int(value: int | float) -> bytes:
            # An int passed through untouched stays exact, even beyond 2**53.
            exact = identity and isinstance(value, int)
            raw = value if exact else round((value - offset) / scale)
            raw = raw % modulus if wrap else min(hi, max(lo, raw))
            return _pack_words(encode(kind, order, raw))

        return encode_int

    limit = _FLOAT32_MAX if kind is RegisterType.FLOAT32 else _FLOAT64_MAX

    def encode_float(value: int | float) -> bytes:
        raw = float(value) if identity else (value - offset) / scale
        raw = min(limit, max(-limit, raw))
        return _pack_words(encode(kind, order, raw))

    return encode_float


_WORD_STRUCTS: dict[int, struct.Struct] = {}


def _pack_words(words: Sequence[int]) -> bytes:
    packer = _WORD_STRUCTS.get(len(words))
    if packer is None:
        packer = _WORD_STRUCTS[len(words)] = struct.Struct(f">{len(words)}H")
    return packer.pack(*words)


class Table:
    """The holding or the input registers of one device."""

    __slots__ = ("_clock", "_plans", "_slots", "_starts")

    def __init__(self, slots: list[Slot], clock: Clock) -> None:
        self._slots = sorted(slots, key=lambda s: s.start)
        self._starts = [s.start for s in self._slots]
        self._plans: dict[int, Plan] = {}
        self._clock = clock

    def read(self, address: int, count: int) -> bytes | None:
        """Big-endian bytes of ``count`` registers from ``address``; None if any is undefined."""
        key = (address << 8) | count  # count ≤ 255 always (checked by the PDU layer)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(address, count)
        if isinstance(plan, bytes):
            return plan or None  # _HOLE is the empty bytes
        t = self._clock()
        # Slicing a whole bytes object returns it unchanged, without a copy.
        return b"".join([slot.data_at(t)[lo:hi] for slot, lo, hi in plan])

    def write(self, address: int, data: bytes) -> bool:
        """Overwrite registers from ``address``; False (nothing written) if any is undefined.

        A written value freezes: a waveform register stops changing and holds the written
        words (merged into its current value when only some of its registers are written),
        like a setpoint on a real device.
        """
        segments = self._segments(address, len(data) // 2)
        if segments is None:
            return False
        t = self._clock()
        pos = 0
        for slot, lo, hi in segments:
            current = bytearray(slot.data_at(t))
            current[lo:hi] = data[pos : pos + hi - lo]
            pos += hi - lo
            slot.static = bytes(current)
            slot.value_at = None
        self._plans.clear()  # cached answers may hold the old values
        return True

    def _plan(self, address: int, count: int) -> Plan:
        segments = self._segments(address, count)
        plan: Plan
        if segments is None:
            plan = _HOLE
        elif all(slot.static is not None for slot, _, _ in segments):
            plan = b"".join([slot.data_at(0.0)[lo:hi] for slot, lo, hi in segments])
        else:
            plan = tuple(segments)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[(address << 8) | count] = plan
        return plan

    def _segments(self, address: int, count: int) -> list[Segment] | None:
        """(slot, first byte, end byte) per slot covering the range, or None on a hole."""
        slots = self._slots
        index = bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        pos, end = address, address + count
        segments: list[Segment] = []
        while pos < end:
            if index >= len(slots):
                return None
            slot = slots[index]
            if not slot.start <= pos < slot.stop:
                return None
            stop = min(slot.stop, end)
            segments.append((slot, 2 * (pos - slot.start), 2 * (stop - slot.start)))
            pos = stop
            index += 1
        return segments


BitValue = Callable[[float], bool]


def bit_function(reg: SimRegister) -> bool | BitValue:
    """A bool register's constant, or its value as a function of time: a waveform is read
    as ``value > 0`` (a sine around 0 is a square wave), a counter as its lowest bit (it
    toggles every interval, like a pulse input)."""
    value = reg.value
    constant = value.value if isinstance(value, ConstantWave) else value
    at = value_function(value)  # type: ignore[arg-type]  # text excluded by validation
    if at is None:
        return bool(constant)
    if isinstance(value, CounterWave):
        return lambda t: bool(int(at(t)) & 1)
    return lambda t: at(t) > 0


class BitTable:
    """The coils or the discrete inputs of one device: one bool per address."""

    __slots__ = ("_bits", "_clock")

    def __init__(self, registers: list[SimRegister], clock: Clock) -> None:
        self._bits: dict[int, bool | BitValue] = {r.address: bit_function(r) for r in registers}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._bits)

    def read(self, address: int, count: int) -> bytes | None:
        """The bits packed as the protocol sends them; None if any address is undefined."""
        bits = self._bits
        t: float | None = None
        out: list[bool] = []
        for addr in range(address, address + count):
            bit = bits.get(addr)
            if bit is None:
                return None
            if not isinstance(bit, bool):
                if t is None:
                    t = self._clock()
                bit = bit(t)
            out.append(bit)
        return pack_bits(out)

    def write(self, address: int, values: list[bool]) -> bool:
        """Set coils from ``address``; False (nothing written) if any is undefined. A written
        coil holds its value from then on, even if it followed a waveform."""
        if any(a not in self._bits for a in range(address, address + len(values))):
            return False
        for offset, value in enumerate(values):
            self._bits[address + offset] = bool(value)
        return True


class RegisterImage:
    """All registers of one device; implements :class:`sim.pdu.RegisterSpace`."""

    __slots__ = ("coils", "discrete", "holding", "identity", "input")

    def __init__(self, device: SimDevice, clock: Clock) -> None:
        #: FC43 identification objects (object id → bytes), None without `identity:`.
        self.identity = device.identity.objects() if device.identity is not None else None
        holding = [build_slot(r) for r in device.registers if r.table == "holding"]
        inputs = [build_slot(r) for r in device.registers if r.table == "input"]
        self.holding = Table(holding, clock)
        self.input = Table(inputs, clock)
        self.coils = BitTable([r for r in device.registers if r.table == "coil"], clock)
        self.discrete = BitTable([r for r in device.registers if r.table == "discrete"], clock)

    def read_coils(self, address: int, count: int) -> bytes | None:
        return self.coils.read(address, count)

    def read_discrete(self, address: int, count: int) -> bytes | None:
        return self.discrete.read(address, count)

    def write_coils(self, address: int, bits: list[bool]) -> bool:
        return self.coils.write(address, bits)

    def has_table(self, table: str) -> bool:
        bits = self.coils if table == "coil" else self.discrete
        return bool(bits)

    def read_holding(self, address: int, count: int) -> bytes | None:
        return self.holding.read(address, count)

    def read_input(self, address: int, count: int) -> bytes | None:
        return self.input.read(address, count)

    def write_holding(self, address: int, data: bytes) -> bool:
        return self.holding.write(address, data)

    def device_identity(self) -> dict[int, bytes] | None:
        return self.identity
