"""STUN (RFC 5389) binding request and response bytes, pinned against RFC 5769's test vectors
and the layout Tailscale's ``net/stun`` sends."""
from __future__ import annotations

import binascii
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from agentconn.coder import stun

TX = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.2: sample IPv4 response (SOFTWARE, XOR-MAPPED-ADDRESS 192.0.2.1:32853,
# MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96")
# RFC 5769 §2.3: sample IPv6 response (2001:db8:1234:5678:11:2233:4455:6677 port 32853).
RFC5769_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c")


def test_rfc5769_fingerprints_check_out() -> None:
    for vector in (RFC5769_V4, RFC5769_V6):
        crc = binascii.crc32(vector[:-8]) ^ 0x5354554E
        assert vector[-4:] == crc.to_bytes(4, "big")


def test_parse_rfc5769_ipv4_response() -> None:
    assert stun.parse_response(RFC5769_V4) == (TX, (ipaddress.ip_address("192.0.2.1"), 32853))


def test_parse_rfc5769_ipv6_response() -> None:
    assert stun.parse_response(RFC5769_V6) == (
        TX, (ipaddress.ip_address("2001:db8:1234:5678:11:2233:4455:6677"), 32853))


def test_binding_request_bytes() -> None:
    req = stun.binding_request(TX)
    # type 0x0001, length 20, magic cookie 0x2112A442, transaction id
    assert req[:20] == bytes.fromhex("000100142112a442") + TX
    # SOFTWARE "tailnode", then FINGERPRINT = CRC-32 of what precedes XOR 0x5354554e
    assert req[20:32] == bytes.fromhex("80220008") + b"tailnode"
    assert req[32:36] == bytes.fromhex("80280004")
    assert req[36:] == (binascii.crc32(req[:32]) ^ 0x5354554E).to_bytes(4, "big")
    assert len(req) == 40
    assert stun.parse_request(req) == TX and stun.is_binding_request(req)


def test_binding_response_round_trip_and_xor_layout() -> None:
    resp = stun.binding_response(TX, (ipaddress.ip_address("192.0.2.1"), 32853))
    assert resp[:2] == b"\x01\x01" and resp[4:8] == bytes.fromhex("2112a442")
    # the XOR-MAPPED-ADDRESS value is the RFC 5769 one for the same address and port
    assert bytes.fromhex("002000080001a147e112a643") in resp
    assert stun.parse_response(resp) == (TX, (ipaddress.ip_address("192.0.2.1"), 32853))
    v6 = ipaddress.ip_address("2001:db8:1234:5678:11:2233:4455:6677")
    resp6 = stun.binding_response(TX, (v6, 32853))
    assert bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9") in resp6
    assert stun.parse_response(resp6) == (TX, (v6, 32853))


def test_mapped_address_fallback() -> None:
    body = bytes.fromhex("00010008") + bytes.fromhex("00011f90") + bytes([10, 0, 0, 1])
    msg = bytes.fromhex("0101000c2112a442") + TX + body
    assert stun.parse_response(msg) == (TX, (ipaddress.ip_address("10.0.0.1"), 8080))


@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    stun.parse_response(data)
    stun.parse_request(data)
    stun.parse_response(RFC5769_V4[:len(data) % len(RFC5769_V4)])
