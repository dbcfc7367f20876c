"""The register codec against an independent reference built from ``struct``: every type in
every order encodes to the registers the reference predicts and decodes back to the value,
and the agent's fast decode path (``ModbusProgram``) agrees with both."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import (
    CodecError,
    RegisterType,
    WordOrder,
    bit_position,
    decode,
    encode,
    pack_bits,
    register_bit,
    register_count,
    unpack_bits,
)
from drivers.modbus.config import ModbusDevice
from drivers.modbus.program import ModbusProgram

FORMATS = {
    RegisterType.INT16: ">h",
    RegisterType.UINT16: ">H",
    RegisterType.INT32: ">i",
    RegisterType.UINT32: ">I",
    RegisterType.INT64: ">q",
    RegisterType.UINT64: ">Q",
    RegisterType.FLOAT32: ">f",
    RegisterType.FLOAT64: ">d",
}
NUMERIC = list(FORMATS)
ORDERS = list(WordOrder)


def reference_registers(order: WordOrder, big_endian: bytes) -> list[int]:
    """Registers of a big-endian value ``A B C D ...`` as a device in ``order`` holds them,
    spelled out per order rather than computed the way the codec does it."""
    pairs = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if order is WordOrder.ABCD:
        words = pairs
    elif order is WordOrder.CDAB:  # words reversed, bytes kept
        words = pairs[::-1]
    elif order is WordOrder.BADC:  # words kept, bytes swapped in each
        words = [p[::-1] for p in pairs]
    else:  # DCBA: the whole value little-endian
        words = [p[::-1] for p in pairs[::-1]]
    return [int.from_bytes(w, "big") for w in words]


def values_of(kind: RegisterType) -> st.SearchStrategy[Any]:
    fmt = FORMATS[kind]
    if kind is RegisterType.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if kind is RegisterType.FLOAT64:
        return st.floats(allow_nan=False)
    bits = struct.calcsize(fmt) * 8
    if fmt[1].isupper():
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[RegisterType, WordOrder, Any]:
    kind = draw(st.sampled_from(NUMERIC))
    return kind, draw(st.sampled_from(ORDERS)), draw(values_of(kind))


def same(a: Any, b: Any) -> bool:
    """Equal, with -0.0 and 0.0 told apart (a float register keeps the sign)."""
    if isinstance(a, float) or isinstance(b, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    return bool(a == b) and type(a) is type(b)


@settings(max_examples=600, deadline=None)
@given(typed_values())
def test_encode_matches_reference_and_decodes_back(
    case: tuple[RegisterType, WordOrder, Any],
) -> None:
    kind, order, value = case
    expected = reference_registers(order, struct.pack(FORMATS[kind], value))
    registers = encode(kind, order, value)
    assert registers == expected
    assert len(registers) == register_count(kind)
    assert same(decode(kind, order, registers), value)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([RegisterType.FLOAT32, RegisterType.FLOAT64]),
    st.sampled_from(ORDERS),
    st.integers(0, 2**52 - 1),
)
def test_nan_payloads_survive_every_order(
    kind: RegisterType, order: WordOrder, payload: int
) -> None:
    if kind is RegisterType.FLOAT32:
        raw = struct.pack(">I", 0x7F800000 | (payload & 0x7FFFFF) | 1)
    else:
        raw = struct.pack(">Q", 0x7FF0000000000000 | payload | 1)
    registers = reference_registers(order, raw)
    value = decode(kind, order, registers)
    # Any NaN ("sensor not available") decodes as NaN; its payload is not kept (widening a
    # float32 signalling NaN to a Python float quiets it), nor is it needed.
    assert isinstance(value, float) and math.isnan(value)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 8),
    st.sampled_from(ORDERS),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=16),
)
def test_strings_against_reference(length: int, order: WordOrder, text: str) -> None:
    raw = text.encode("latin-1")
    if len(raw) > 2 * length:
        with pytest.raises(CodecError):
            encode(RegisterType.STRING, order, text, length)
        return
    expected = reference_registers(order, raw.ljust(2 * length, b"\0"))
    assert encode(RegisterType.STRING, order, text, length) == expected
    assert decode(RegisterType.STRING, order, expected) == text


@given(st.lists(st.booleans(), max_size=2000))
def test_bits_pack_as_the_protocol_sends_them(bits: list[bool]) -> None:
    packed = pack_bits(bits)
    assert len(packed) == (len(bits) + 7) // 8
    # Reference: bit i is bit (i % 8) of byte (i // 8), least significant first.
    assert all(bool(packed[i // 8] & (1 << (i % 8))) is b for i, b in enumerate(bits))
    assert unpack_bits(packed, len(bits)) == bits
    assert decode(
        RegisterType.BOOL, WordOrder.ABCD, encode(RegisterType.BOOL, WordOrder.ABCD, True)
    )


@given(st.integers(0, 0xFFFF), st.integers(0, 15), st.sampled_from(ORDERS))
def test_register_bit_reads_the_bit_of_the_value(word: int, bit: int, order: WordOrder) -> None:
    # The value the device meant is the word decoded as uint16 in its order.
    value = decode(RegisterType.UINT16, order, [word])
    assert isinstance(value, int)
    assert register_bit(word, bit, order) is bool(value >> bit & 1)
    assert bit_position(bit, order) == (bit ^ 8 if order.swaps_bytes else bit)


def test_codec_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(CodecError):
        encode(RegisterType.INT16, WordOrder.ABCD, 40000)
    with pytest.raises(CodecError):
        encode(RegisterType.FLOAT32, WordOrder.ABCD, 1e39)
    with pytest.raises(CodecError):
        encode(RegisterType.UINT16, WordOrder.ABCD, True)
    with pytest.raises(CodecError):
        encode(RegisterType.BOOL, WordOrder.ABCD, 2)
    with pytest.raises(CodecError):
        decode(RegisterType.UINT32, WordOrder.ABCD, [1])
    with pytest.raises(CodecError):
        unpack_bits(b"\x01", 9)


@st.composite
def packed_points(draw: st.DrawFn) -> list[tuple[RegisterType, WordOrder, Any]]:
    return draw(st.lists(typed_values(), min_size=1, max_size=12))


@settings(max_examples=300, deadline=None)
@given(packed_points(), st.sampled_from(ORDERS), st.integers(0, 3))
def test_fast_decode_path_agrees_with_reference(
    points: list[tuple[RegisterType, WordOrder, Any]], default: WordOrder, gap: int
) -> None:
    """Points of mixed types and orders laid out with holes; the program decodes the device's
    answer (one request, one struct unpack) into exactly the values encoded by the reference."""
    specs = []
    answer: list[int] = []
    expected = {}
    for index, (kind, order, value) in enumerate(points):
        answer.extend([0xABCD] * (gap if index else 0))
        spec: dict[str, Any] = {"name": f"p{index}", "address": len(answer), "type": kind.value}
        if order is not default or index % 2:
            spec["order"] = order.value
        else:
            order = default
        specs.append(spec)
        answer.extend(reference_registers(order, struct.pack(FORMATS[kind], value)))
        expected[f"p{index}"] = value
    device = ModbusDevice.model_validate(
        {"name": "d", "bus": "b", "byte_order": default.value, "max_gap": 3, "points": specs}
    )
    program = ModbusProgram(device)
    got = {}
    for request in program.requests:
        words = answer[request.address : request.address + request.count]
        for entry in program.decode(request, words, 0).points:
            got[entry["p"]] = entry.get("v", entry.get("r"))
    for name, value in expected.items():
        if isinstance(value, float) and math.isinf(value):
            assert got[name] == f"not a finite number ({value})"
        else:
            assert same(got[name], value), (name, got[name], value)


@settings(max_examples=300, deadline=None)
@given(packed_points(), st.sampled_from(ORDERS), st.booleans(), st.data())
def test_decode_with_units_and_scales_agrees_with_the_general_path(
    points: list[tuple[RegisterType, WordOrder, Any]],
    default: WordOrder,
    all_units: bool,
    data: st.DataObject,
) -> None:
    """The program's one-comprehension path (every point has a unit; scaled values fixed up
    by index; NaN/inf found by one sum) gives exactly the entries of decoding each point on
    its own through the codec, including bad readings for values that are not finite."""
    specs = []
    answer: list[int] = []
    for index, (kind, order, value) in enumerate(points):
        spec: dict[str, Any] = {"name": f"p{index}", "address": len(answer), "type": kind.value}
        spec["order"] = order.value
        if all_units or index % 2:
            spec["unit"] = "V"
        if kind is not RegisterType.STRING and data.draw(st.booleans()):
            spec["scale"] = data.draw(st.sampled_from([0.1, 0.01, 2.5, 1 / 3]))
            spec["offset"] = data.draw(st.sampled_from([0.0, -40.5, 1000.0]))
        specs.append(spec)
        answer.extend(reference_registers(order, struct.pack(FORMATS[kind], value)))
    device = ModbusDevice.model_validate(
        {"name": "d", "bus": "b", "byte_order": default.value, "points": specs}
    )
    program = ModbusProgram(device)
    for request in program.requests:
        words = answer[request.address : request.address + request.count]
        got = {e["p"]: e for e in program.decode(request, words, 0).points}
        alone = {p.name: program._one(p, request, words) for p in request.points}
        assert got.keys() == alone.keys()
        for name, entry in alone.items():
            assert got[name].keys() == entry.keys(), (name, got[name], entry)
            if "v" in entry:
                assert same(got[name]["v"], entry["v"]), (name, got[name], entry)
            else:
                assert got[name] == entry
