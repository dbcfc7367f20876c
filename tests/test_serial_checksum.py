"""Checksums of serial frames: known answers from the specs, and verify(append(x)) == x."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.checksum import (
    MISMATCH,
    MISSING,
    Checksum,
    ChecksumError,
    crc16_ccitt_false,
    crc16_modbus,
    sum8,
    xor8,
)

NAMES = ["nmea", "sum8", "crc16-modbus", "crc16-ccitt"]
FORMATS = ["hex", "binary-be", "binary-le"]


def test_check_values_of_the_crc_catalogue() -> None:
    # The "check" column of the CRC catalogue (reveng): the CRC of the ASCII digits 1..9.
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert sum8(b"123456789") == 0xDD  # 477 mod 256
    assert xor8(b"123456789") == 0x31


def test_crc16_modbus_of_a_real_request() -> None:
    # Read 10 holding registers of unit 1: the frame ends in C5 CD (CRC low byte first).
    assert crc16_modbus(bytes.fromhex("01030000000A")) == 0xCDC5
    assert Checksum("crc16-modbus", b"", "binary-le").verify(
        bytes.fromhex("01030000000AC5CD")
    ) == bytes.fromhex("01030000000A")


@pytest.mark.parametrize(
    ("sentence", "body"),
    [
        # The classic examples of the NMEA 0183 reference (GGA fix data, RMC minimum data).
        (
            b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
            b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        ),
        (
            b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
            b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",
        ),
        # AIS sentences start with ! and use the same XOR.
        (
            b"!AIVDM,1,1,,B,177KQJ5000G?tO`K>RA1wUbN0TKH,0*5C",
            b"AIVDM,1,1,,B,177KQJ5000G?tO`K>RA1wUbN0TKH,0",
        ),
    ],
)
def test_nmea_sentences_from_the_spec(sentence: bytes, body: bytes) -> None:
    nmea = Checksum("nmea")
    assert nmea.verify(sentence) == body
    # Without the leading $ (a line framing with start "$" removes it) the same holds.
    assert nmea.verify(sentence[1:]) == body
    # Lower-case hex digits are accepted too.
    assert nmea.verify(sentence[:-2] + sentence[-2:].lower()) == body


def test_a_wrong_checksum_is_a_mismatch_naming_both_values() -> None:
    with pytest.raises(ChecksumError) as caught:
        Checksum("nmea").verify(b"$GPGGA,123519,4807.038,N*00")
    assert caught.value.reason == MISMATCH
    assert "computed" in caught.value.detail


@pytest.mark.parametrize(
    "frame", [b"GPGGA,123519", b"GPGGA,123519*4", b"", b"*", b"T=21.5;RH=45.0"]
)
def test_a_frame_without_its_checksum_is_missing(frame: bytes) -> None:
    with pytest.raises(ChecksumError) as caught:
        Checksum("crc16-ccitt").verify(frame)
    assert caught.value.reason == MISSING


def test_non_hex_checksum_digits_are_a_mismatch() -> None:
    with pytest.raises(ChecksumError) as caught:
        Checksum("sum8").verify(b"ABC*G1")
    assert caught.value.reason == MISMATCH


def test_the_contract_forms() -> None:
    """What the simulator sends (sim/README.md, "Checksum framing")."""
    body = b"T=21.50;RH=45.0"
    assert Checksum("sum8").append(body) == body + b"*" + f"{sum(body) % 256:02X}".encode()
    assert Checksum("crc16-modbus").append(body) == body + f"*{crc16_modbus(body):04X}".encode()
    assert Checksum("crc16-ccitt").append(body) == body + f"*{crc16_ccitt_false(body):04X}".encode()
    assert Checksum("nmea").append(b"GPGLL") == b"$GPGLL*" + f"{xor8(b'GPGLL'):02X}".encode()
    assert Checksum("none").append(body) == body
    assert Checksum("none").verify(b"anything*00") == b"anything*00"


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=200),
    name=st.sampled_from(NAMES),
    fmt=st.sampled_from(FORMATS),
    separator=st.sampled_from([b"*", b"", b",", b"#*"]),
)
def test_round_trip(body: bytes, name: str, fmt: str, separator: bytes) -> None:
    checksum = Checksum(name, separator, fmt)  # type: ignore[arg-type]
    assert checksum.verify(checksum.append(body)) == body


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=100),
    name=st.sampled_from(NAMES),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_a_corrupted_body_byte_is_always_detected(
    body: bytes, name: str, position: int, flip: int
) -> None:
    """A single corrupted byte changes every one of these checksums (XOR, sum and CRC all
    detect any one-byte error)."""
    checksum = Checksum(name)  # type: ignore[arg-type]
    frame = bytearray(checksum.append(body))
    start = 1 if name == "nmea" else 0  # the $ is not covered
    frame[start + position % len(body)] ^= flip
    with pytest.raises(ChecksumError):
        checksum.verify(bytes(frame))
