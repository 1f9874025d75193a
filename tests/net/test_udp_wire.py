"""Tests for agentconn.net.wire.udp.

Fuzz invariant for UdpRepr.parse: given any bytes it returns ``(UdpRepr, memoryview)`` or
raises WireError, and nothing else.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.net.wire import WireError
from agentconn.net.wire.ipv4 import Ipv4Repr
from agentconn.net.wire.ipv6 import Ipv6Repr
from agentconn.net.wire.udp import MAX_PAYLOAD_LEN, PROTOCOL_UDP, UdpPacket, UdpRepr

LOCAL4 = IPv4Address("127.0.0.1")
LOCAL6 = IPv6Address("::1")
Address = IPv4Address | IPv6Address

# --- captured packets ----------------------------------------------------------------------
# Captured from Linux 6.18 on loopback, in a fresh network namespace (`unshare -n`, lo up),
# with an AF_PACKET socket bound to lo (PACKET_AUXDATA on, PACKET_HOST copies, Ethernet
# header stripped), while one Python UDP socket sent to another on 127.0.0.1 and then ::1:
# - "corked": sendto(b"agentconn ", MSG_MORE) then sendto(b"udp\n"). A corked datagram is not
#   offloaded, so the kernel computed the checksum in software (udp_csum).
# - "offloaded": a plain sendto(b"offloaded\n"). lo offloads it (TP_STATUS_CSUMNOTREADY), so
#   the field holds only the pseudo-header sum; `_complete` finishes it as skb_checksum_help.
# - "no check": after setsockopt(SOL_SOCKET, SO_NO_CHECK, 1), IPv4 only: checksum field 0.
_LOOPBACK6 = "00000000000000000000000000000001"
V4_CORKED = bytes.fromhex(
    "4500002a784540004011c47b7f0000017f000001" + "86acac540016d087" + "6167656e74636f6e6e207564700a"
)
V4_OFFLOADED = bytes.fromhex(
    "45000026784640004011c47e7f0000017f000001" + "86acac540012fe25" + "6f66666c6f616465640a"
)
V4_NO_CHECK = bytes.fromhex(
    "45000028784740004011c47b7f0000017f000001" + "86acac5400140000" + "6e6f20636865636b73756d0a"
)
V6_CORKED = bytes.fromhex(
    "6003d6e400161140" + _LOOPBACK6 * 2 + "94008bdc0016e1ac" + "6167656e74636f6e6e207564700a"
)
V6_OFFLOADED = bytes.fromhex(
    "6003d6e400121140" + _LOOPBACK6 * 2 + "94008bdc00120025" + "6f66666c6f616465640a"
)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word with an explicit end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def reference_pseudo(src: Address, dst: Address, length: int) -> bytes:
    """The pseudo-header laid out by hand from RFC 768 and RFC 8200 §8.1."""
    if isinstance(src, IPv4Address):
        return src.packed + dst.packed + bytes([0, PROTOCOL_UDP]) + length.to_bytes(2, "big")
    return src.packed + dst.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, PROTOCOL_UDP])


def split(packet: bytes) -> tuple[bytes, Address, Address]:
    """The UDP datagram of a captured IP packet, and its addresses."""
    if packet[0] >> 4 == 4:
        ip4, payload = Ipv4Repr.parse(packet)
        assert ip4.protocol == PROTOCOL_UDP
        return bytes(payload), ip4.src, ip4.dst
    ip6, payload = Ipv6Repr.parse(packet)
    assert ip6.next_header == PROTOCOL_UDP
    return bytes(payload), ip6.src, ip6.dst


def _complete(datagram: bytes) -> bytes:
    """Finish a CHECKSUM_PARTIAL checksum as skb_checksum_help does."""
    return datagram[:6] + reference_checksum(datagram).to_bytes(2, "big") + datagram[8:]


def with_checksum(datagram: bytes, src: Address, dst: Address, value: int | None = None) -> bytes:
    """*datagram* with its checksum field set to *value*, or computed by the reference."""
    body = datagram[:6] + b"\x00\x00" + datagram[8:]
    if value is None:
        length = int.from_bytes(body[4:6], "big")
        value = reference_checksum(reference_pseudo(src, dst, length) + body[:length])
    return body[:6] + value.to_bytes(2, "big") + body[8:]


@pytest.mark.parametrize(
    ("packet", "ports", "payload"),
    [
        (V4_CORKED, (34476, 44116), b"agentconn udp\n"),
        (V6_CORKED, (37888, 35804), b"agentconn udp\n"),
    ],
)
def test_captured_software_checksums(packet: bytes, ports: tuple[int, int], payload: bytes) -> None:
    datagram, src, dst = split(packet)
    assert reference_checksum(reference_pseudo(src, dst, len(datagram)) + datagram) == 0
    udp, data = UdpRepr.parse(datagram, src, dst)
    assert udp == UdpRepr(*ports, len(payload))
    assert bytes(data) == payload
    assert udp.emit(data, src, dst) == datagram
    assert udp.buffer_len() == len(datagram)
    view = UdpPacket.new_checked(datagram)
    assert (view.src_port, view.dst_port, view.length) == (*ports, len(datagram))
    assert view.checksum == int.from_bytes(datagram[6:8], "big")


@pytest.mark.parametrize("packet", [V4_OFFLOADED, V6_OFFLOADED])
def test_captured_offloaded_checksums(packet: bytes) -> None:
    datagram, src, dst = split(packet)
    pseudo = reference_pseudo(src, dst, len(datagram))
    assert int.from_bytes(datagram[6:8], "big") == ~reference_checksum(pseudo) & 0xFFFF
    with pytest.raises(WireError, match="checksum"):
        UdpRepr.parse(datagram, src, dst)
    complete = _complete(datagram)
    udp, data = UdpRepr.parse(complete, src, dst)
    assert bytes(data) == b"offloaded\n"
    assert udp.emit(data, src, dst) == complete


def test_ipv4_zero_checksum_means_none() -> None:
    datagram, src, dst = split(V4_NO_CHECK)
    udp, data = UdpRepr.parse(datagram, src, dst)
    assert udp == UdpRepr(34476, 44116, 12) and bytes(data) == b"no checksum\n"
    # Nothing is verified: any addresses and any data pass.
    UdpRepr.parse(datagram[:-1] + b"?", IPv4Address("10.1.2.3"), dst)
    # We always send a checksum; it differs from the capture only in that field.
    emitted = udp.emit(data, src, dst)
    assert emitted[:6] == datagram[:6] and emitted[8:] == datagram[8:]
    assert reference_checksum(reference_pseudo(src, dst, len(emitted)) + emitted) == 0


def test_ipv6_zero_checksum_is_invalid() -> None:
    datagram, src, dst = split(V6_CORKED)
    zero = with_checksum(datagram, src, dst, 0)
    with pytest.raises(WireError, match="zero checksum over IPv6"):
        UdpRepr.parse(zero, src, dst)
    udp, _ = UdpRepr.parse(zero, src, dst, verify_checksum=False)
    assert udp.payload_len == 14


@pytest.mark.parametrize(("src", "dst"), [(LOCAL4, LOCAL4), (LOCAL6, LOCAL6)])
def test_computed_zero_is_sent_as_all_ones(src: Address, dst: Address) -> None:
    # Choose the two data bytes so that the one's-complement sum is 0xFFFF: the checksum
    # computes to 0, which RFC 768 transmits as 0xFFFF.
    udp = UdpRepr(1000, 2000, 2)
    word = with_checksum(udp.emit(b"\x00\x00", src, dst), src, dst)[6:8]
    datagram = udp.emit(word, src, dst)
    assert datagram[6:8] == b"\xff\xff"
    assert reference_checksum(reference_pseudo(src, dst, 10) + datagram[:6] + datagram[8:]) == 0
    assert UdpRepr.parse(datagram, src, dst) == (udp, memoryview(word))


def test_checksum_covers_pseudo_header_and_data() -> None:
    datagram, src, dst = split(V4_CORKED)
    with pytest.raises(WireError, match="bad checksum 0xd087"):
        UdpRepr.parse(datagram, src, IPv4Address("127.0.0.2"))
    with pytest.raises(WireError, match="bad checksum"):
        UdpRepr.parse(datagram[:-1] + b"?", src, dst)
    _, data = UdpRepr.parse(datagram[:-1] + b"?", src, dst, verify_checksum=False)
    assert bytes(data) == b"agentconn udp?"
    datagram6, src6, _ = split(V6_CORKED)
    with pytest.raises(WireError, match="bad checksum"):
        UdpRepr.parse(datagram6, src6, IPv6Address("::2"))


def test_trailing_bytes_are_trimmed() -> None:
    datagram, src, dst = split(V4_CORKED)
    udp, data = UdpRepr.parse(datagram + b"\x00junk", src, dst)
    assert udp.payload_len == 14 and bytes(data) == b"agentconn udp\n"
    assert bytes(UdpPacket.new_checked(datagram + b"junk").payload) == b"agentconn udp\n"


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"", "truncated"),
        (bytes(7), "truncated"),
        (struct.pack("!HHHH", 1, 2, 0, 0), "bad length 0 for 8"),
        (struct.pack("!HHHH", 1, 2, 7, 0) + b"x", "bad length 7 for 9"),
        (struct.pack("!HHHH", 1, 2, 10, 0) + b"x", "bad length 10 for 9"),
    ],
)
def test_rejects(datagram: bytes, message: str) -> None:
    for src in (LOCAL4, LOCAL6):
        with pytest.raises(WireError, match=message):
            UdpRepr.parse(datagram, src, src, verify_checksum=False)
        with pytest.raises(WireError, match=message):
            UdpPacket.new_checked(datagram)


def test_repr_validation() -> None:
    with pytest.raises(ValueError, match="src_port"):
        UdpRepr(65536, 1, 0)
    with pytest.raises(ValueError, match="dst_port"):
        UdpRepr(1, -1, 0)
    with pytest.raises(ValueError, match="payload_len"):
        UdpRepr(1, 1, MAX_PAYLOAD_LEN + 1)
    with pytest.raises(ValueError, match="payload is 2 bytes, header says 3"):
        UdpRepr(1, 1, 3).emit(b"ab", LOCAL4, LOCAL4)
    with pytest.raises(ValueError, match="mixed"):
        UdpRepr(1, 1, 0).emit(b"", LOCAL4, LOCAL6)
    with pytest.raises(ValueError, match="mixed"):
        UdpRepr.parse(split(V4_CORKED)[0], LOCAL6, LOCAL4)
    assert (
        len(UdpRepr(1, 1, MAX_PAYLOAD_LEN).emit(bytes(MAX_PAYLOAD_LEN), LOCAL6, LOCAL6)) == 0xFFFF
    )


# --- properties ----------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
ipv4_addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv6_addresses = st.integers(0, 2**128 - 1).map(IPv6Address)
datagrams = st.tuples(u16, u16, st.binary(max_size=300))


def check_round_trip(ports_data: tuple[int, int, bytes], src: Address, dst: Address) -> None:
    src_port, dst_port, payload = ports_data
    udp = UdpRepr(src_port, dst_port, len(payload))
    datagram = udp.emit(payload, src, dst)
    assert len(datagram) == udp.buffer_len()
    assert datagram[6:8] != b"\x00\x00"
    assert reference_checksum(reference_pseudo(src, dst, len(datagram)) + datagram) == 0
    parsed, parsed_payload = UdpRepr.parse(datagram, src, dst)
    assert parsed == udp
    assert bytes(parsed_payload) == payload


@given(datagrams, ipv4_addresses, ipv4_addresses)
def test_ipv4_parse_emit_round_trip(
    ports_data: tuple[int, int, bytes], src: IPv4Address, dst: IPv4Address
) -> None:
    check_round_trip(ports_data, src, dst)


@given(datagrams, ipv6_addresses, ipv6_addresses)
def test_ipv6_parse_emit_round_trip(
    ports_data: tuple[int, int, bytes], src: IPv6Address, dst: IPv6Address
) -> None:
    check_round_trip(ports_data, src, dst)


@given(st.binary(max_size=60), st.sampled_from([LOCAL4, LOCAL6]), st.booleans())
def test_random_bytes_parse_or_raise_wire_error(data: bytes, src: Address, verify: bool) -> None:
    try:
        udp, payload = UdpRepr.parse(data, src, src, verify_checksum=verify)
    except WireError:
        return
    assert isinstance(udp, UdpRepr)
    assert bytes(payload) == data[8 : 8 + udp.payload_len]
