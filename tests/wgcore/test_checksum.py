"""_wgcore.checksum (C) against agentconn.net.wire.checksum (the pure-Python reference).

RFC 1071: the one's-complement sum of big-endian 16-bit words, an odd trailing byte padded
with zero on the right (§4.1), complemented. Known values: RFC 1071 §3's worked example and a
real IPv4 header (RFC 791 layout; the classic 0xb861 example).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _wgcore.checksum import internet_checksum, partial_sum
from agentconn.net.wire.checksum import checksum, ones_sum

# A captured IPv4 header with its checksum field zeroed; the checksum is 0xb861.
IPV4_HEADER = bytes.fromhex("45000073000040004011" "0000" "c0a80001c0a800c7")


def test_known_values() -> None:
    # RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is 0xddf2, so the checksum is 0x220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert partial_sum(data) == ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == checksum(data) == 0x220D
    assert internet_checksum(IPV4_HEADER) == checksum(IPV4_HEADER) == 0xB861
    filled = IPV4_HEADER[:10] + b"\xb8\x61" + IPV4_HEADER[12:]
    assert internet_checksum(filled) == checksum(filled) == 0


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff", b"\x00\x00", b"\xff\xff", b"\xff" * 3,
                                  b"\xff\xff" * 1000, b"\x00" * 1001, b"\x01", b"\x12\x34\x56",
                                  b"\xff\xfe\x00\x01", bytes(range(256)) * 257])
def test_edge_cases(data: bytes) -> None:
    assert internet_checksum(data) == checksum(data)
    assert partial_sum(data) == ones_sum(data)


def test_empty() -> None:
    assert internet_checksum(b"") == checksum(b"") == 0xFFFF
    assert partial_sum(b"") == ones_sum(b"") == 0
    assert internet_checksum(b"", 0x1234) == checksum(b"", 0x1234) == 0xEDCB


@pytest.mark.parametrize("length", range(12))
def test_every_short_length_and_alignment(length: int) -> None:
    data = bytes((0x9D * i + 0x31) & 0xFF for i in range(40))
    for start in range(8):
        piece = data[start:start + length]
        assert internet_checksum(piece) == checksum(piece), (start, length)


def test_accepts_bytearray_and_memoryview() -> None:
    data = bytearray(range(1, 60))
    assert internet_checksum(data) == internet_checksum(memoryview(data)) == checksum(data)
    assert internet_checksum(memoryview(data)[3:]) == checksum(data[3:])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), initial=st.integers(0, 0xFFFF))
def test_agrees_with_reference(data: bytes, initial: int) -> None:
    assert internet_checksum(data, initial) == checksum(data, initial)
    assert partial_sum(data, initial) == ones_sum(data, initial)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200), initial=st.integers(0, 2**32 - 1))
def test_any_32_bit_initial_sum(data: bytes, initial: int) -> None:
    assert internet_checksum(data, initial) == checksum(data, initial)


@settings(max_examples=100, deadline=None)
@given(head=st.binary(max_size=100), tail=st.binary(max_size=100))
def test_sums_chain_over_even_pieces(head: bytes, tail: bytes) -> None:
    if len(head) % 2:
        head += b"\0"
    assert internet_checksum(tail, partial_sum(head)) == checksum(head + tail)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=2, max_size=400).filter(lambda b: len(b) % 2 == 0),
       where=st.integers(0, 199))
def test_filled_in_checksum_verifies_to_zero(data: bytes, where: int) -> None:
    at = 2 * (where % (len(data) // 2))
    zeroed = data[:at] + b"\0\0" + data[at + 2:]
    value = internet_checksum(zeroed)
    filled = zeroed[:at] + value.to_bytes(2, "big") + zeroed[at + 2:]
    assert internet_checksum(filled) == checksum(filled) == 0
