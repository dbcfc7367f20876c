"""Register codec: values ⇄ 16-bit registers, for every type and the four word/byte orders.

Orders are named by where the bytes of the big-endian value ``A B C D`` end up, as
installers know them from datasheets:

========  ==============================  =====================================
``ABCD``  big-endian words, big-endian    the Modbus default
``CDAB``  low word first ("word swap")    many PLCs and energy meters
``BADC``  bytes swapped within each word  some loggers
``DCBA``  fully little-endian             a few transmitters
========  ==============================  =====================================

For values wider than 32 bits the same rule holds per pair of bytes / per word.
One module does both directions so the simulator and the agent can never disagree.

Bits have their own helpers: ``bool`` is one coil or discrete input (FC1/FC2/FC5/FC15, packed
eight to a byte, least significant bit first, as the protocol sends them), and
:func:`register_bit` reads bit *n* (0 = least significant) of a register as a device with the
given byte order stores it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence


class RegisterType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    #: One coil or discrete input (not a register type: a point of table coil/discrete).
    BOOL = "bool"


class WordOrder(enum.StrEnum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def swaps_words(self) -> bool:
        return self in (WordOrder.CDAB, WordOrder.DCBA)

    @property
    def swaps_bytes(self) -> bool:
        return self in (WordOrder.BADC, WordOrder.DCBA)


_STRUCT = {
    RegisterType.INT16: ">h",
    RegisterType.UINT16: ">H",
    RegisterType.INT32: ">i",
    RegisterType.UINT32: ">I",
    RegisterType.INT64: ">q",
    RegisterType.UINT64: ">Q",
    RegisterType.FLOAT32: ">f",
    RegisterType.FLOAT64: ">d",
}


class CodecError(ValueError):
    """Registers that cannot be decoded as asked, or a value that cannot be encoded."""


def register_count(kind: RegisterType, length: int | None = None) -> int:
    """How many 16-bit registers a value of ``kind`` occupies (``length`` for strings); a
    ``bool`` occupies one coil or discrete input."""
    if kind is RegisterType.BOOL:
        return 1
    if kind is RegisterType.STRING:
        if length is None or length < 1:
            raise CodecError("a string needs a length of at least one register")
        return length
    return struct.calcsize(_STRUCT[kind]) // 2


def decode(
    kind: RegisterType, order: WordOrder, registers: Sequence[int]
) -> int | float | str | bool:
    if kind is RegisterType.BOOL:
        # A bool travels as a bit, not a register; as a "register" it is 0 or 1 (FC5 sends
        # 0xFF00 for on, see coil_word).
        if len(registers) != 1:
            raise CodecError(f"bool needs 1 value, got {len(registers)}")
        return bool(registers[0])
    raw = _to_bytes(order, registers)
    if kind is RegisterType.STRING:
        # Devices pad fixed-width strings with NULs or spaces; neither is part of the value.
        return raw.split(b"\0", 1)[0].decode("latin-1").rstrip(" ")
    fmt = _STRUCT[kind]
    if len(raw) != struct.calcsize(fmt):
        raise CodecError(
            f"{kind.value} needs {struct.calcsize(fmt) // 2} registers, got {len(registers)}"
        )
    value: int | float = struct.unpack(fmt, raw)[0]
    return value


def encode(
    kind: RegisterType,
    order: WordOrder,
    value: int | float | str | bool,
    length: int | None = None,
) -> list[int]:
    if kind is RegisterType.BOOL:
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise CodecError(f"a bool needs true or false, got {value!r}")
        return [int(value)]
    if isinstance(value, bool):
        raise CodecError(f"{kind.value} needs a number, not {value}")
    if kind is RegisterType.STRING:
        if not isinstance(value, str):
            raise CodecError(f"a string point needs text, got {value!r}")
        count = register_count(kind, length)
        data = value.encode("latin-1")
        if len(data) > count * 2:
            raise CodecError(f"{value!r} does not fit in {count} registers")
        raw = data.ljust(count * 2, b"\0")
    else:
        fmt = _STRUCT[kind]
        try:
            raw = struct.pack(fmt, value)
        except (struct.error, OverflowError) as exc:
            raise CodecError(f"{value!r} does not fit {kind.value}: {exc}") from exc
    return _from_bytes(order, raw)


def _to_bytes(order: WordOrder, registers: Sequence[int]) -> bytes:
    words = list(reversed(registers)) if order.swaps_words else list(registers)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return _swap_pairs(raw) if order.swaps_bytes else raw


def _from_bytes(order: WordOrder, raw: bytes) -> list[int]:
    if order.swaps_bytes:
        raw = _swap_pairs(raw)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(words)) if order.swaps_words else words


def _swap_pairs(raw: bytes) -> bytes:
    swapped = bytearray(len(raw))
    swapped[0::2] = raw[1::2]
    swapped[1::2] = raw[0::2]
    return bytes(swapped)


def pack_bits(bits: Sequence[bool | int]) -> bytes:
    """Coils or discrete inputs as the protocol sends them: eight per byte, the first bit in
    the least significant position of the first byte, the last byte padded with zeros."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    """The first ``count`` bits of ``data`` packed as by :func:`pack_bits`."""
    if count > len(data) * 8:
        raise CodecError(f"{count} bits asked, {len(data) * 8} present")
    return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(count)]


def register_bit(word: int, bit: int, order: WordOrder = WordOrder.ABCD) -> bool:
    """Bit ``bit`` (0 = least significant) of a 16-bit register as read off the wire; with a
    byte-swapping order (BADC, DCBA) the register's bytes are swapped first."""
    return bool(word >> bit_position(bit, order) & 1)


def bit_position(bit: int, order: WordOrder = WordOrder.ABCD) -> int:
    """Where bit ``bit`` of the value sits in the register as it travels: swapping the two
    bytes of a register moves bit n to bit n ^ 8."""
    if not 0 <= bit <= 15:
        raise CodecError(f"a register has bits 0..15, not {bit}")
    return bit ^ 8 if order.swaps_bytes else bit


#: FC5 (write single coil) value words: on and off; any other word is refused by devices.
COIL_ON = 0xFF00
COIL_OFF = 0x0000


def coil_word(value: bool) -> int:
    return COIL_ON if value else COIL_OFF
