"""Tests for agentconn.net.wire: checksum, IPv4, IPv6, ICMP echo and TSMP wire formats.

Fuzz invariant for every parser here: given any bytes it returns a Repr or raises WireError,
and nothing else.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agentconn.net.wire import WireError, tsmp
from agentconn.net.wire.checksum import (
    checksum,
    ones_sum,
    pseudo_header_ipv4,
    pseudo_header_ipv6,
    pseudo_sum,
)
from agentconn.net.wire.icmp import PROTOCOL_ICMPV4, PROTOCOL_ICMPV6, EchoRepr
from agentconn.net.wire.ipv4 import Ipv4Packet, Ipv4Repr
from agentconn.net.wire.ipv6 import EXTENSION_HEADERS, Ipv6Packet, Ipv6Repr

# --- captured packets ----------------------------------------------------------------------
# Captured with an AF_PACKET socket on Linux loopback while running iputils
# `ping -c1 127.0.0.1` and `ping -6 -c1 ::1` (56 data bytes: 16-byte timestamp, then 0x10..0x37).
# The replies are the kernel's own.
_PING_DATA = "d34e066b0000000018c1000000000000" + bytes(range(0x10, 0x38)).hex()
V4_REQUEST = bytes.fromhex("450000544b6540004001f1417f0000017f00000108003a630c4e0001" + _PING_DATA)
V4_REPLY = bytes.fromhex("450000544b660000400131417f0000017f000001000042630c4e0001" + _PING_DATA)
_PING6_DATA = "d34e066b00000000c985020000000000" + bytes(range(0x10, 0x38)).hex()
_LOOPBACK6 = "00000000000000000000000000000001"
V6_REQUEST = bytes.fromhex("6009c20200403a40" + _LOOPBACK6 * 2 + "80000ef80c780001" + _PING6_DATA)
V6_REPLY = bytes.fromhex("600fbfc600403a40" + _LOOPBACK6 * 2 + "81000df80c780001" + _PING6_DATA)
# tailnet.md §4.3: client fd7a:115c:a1e0:1111:2222:3333:4444:5555 -> agent of UUID
# aaaaaaaa-aaaa-aaaa-aaaa-123456789abc, data 0102030405060708.
CLIENT = IPv6Address("fd7a:115c:a1e0:1111:2222:3333:4444:5555")
AGENT = IPv6Address("fd7a:115c:a1e0:aaaa:aaaa:1234:5678:9abc")
TSMP_REQUEST = bytes.fromhex(
    "6000000000096340"
    "fd7a115ca1e011112222333344445555"
    "fd7a115ca1e0aaaaaaaa123456789abc"
    "700102030405060708"
)
LOCAL4 = IPv4Address("127.0.0.1")
LOCAL6 = IPv6Address("::1")


# --- checksum ------------------------------------------------------------------------------


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word with an explicit end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


def test_checksum_edge_values() -> None:
    assert checksum(b"") == 0xFFFF
    assert checksum(bytes(10)) == 0xFFFF
    assert checksum(b"\xff\xff") == 0x0000
    assert checksum(b"\x01") == reference_checksum(b"\x01") == 0xFEFF


@given(st.binary(max_size=2000))
def test_checksum_matches_reference(data: bytes) -> None:
    assert checksum(data) == reference_checksum(data)
    assert checksum(memoryview(data)) == checksum(bytearray(data)) == checksum(data)


@given(st.binary(max_size=200).map(lambda b: b[: len(b) // 2 * 2]), st.binary(max_size=200))
def test_checksum_sums_combine(head: bytes, tail: bytes) -> None:
    assert checksum(tail, ones_sum(head)) == reference_checksum(head + tail)


@given(st.binary(min_size=2, max_size=300))
def test_checksum_verifies_to_zero(data: bytes) -> None:
    # Fill a checksum field at offset 0 and check the whole verifies, as receivers do.
    body = b"\x00\x00" + data
    value = checksum(body)
    assert checksum(value.to_bytes(2, "big") + data) == 0


def test_captured_checksums_verify() -> None:
    assert checksum(V4_REQUEST[:20]) == 0
    assert checksum(V4_REQUEST[20:]) == 0
    assert reference_checksum(V4_REQUEST[20:]) == 0
    icmp6 = V6_REQUEST[40:]
    pseudo = pseudo_header_ipv6(LOCAL6, LOCAL6, 58, len(icmp6))
    assert reference_checksum(pseudo + icmp6) == 0
    assert checksum(icmp6, pseudo_sum(LOCAL6, LOCAL6, 58, len(icmp6))) == 0


def test_pseudo_headers() -> None:
    a, b = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    assert pseudo_header_ipv4(a, b, 6, 0x1234) == a.packed + b.packed + bytes([0, 6, 0x12, 0x34])
    header6 = pseudo_header_ipv6(CLIENT, AGENT, 58, 0x10203)
    assert header6 == CLIENT.packed + AGENT.packed + bytes([0, 1, 2, 3, 0, 0, 0, 58])
    with pytest.raises(ValueError, match="mixed"):
        pseudo_sum(a, AGENT, 58, 0)


# --- IPv4 ----------------------------------------------------------------------------------


def test_ipv4_captured_request_both_directions() -> None:
    ip, payload = Ipv4Repr.parse(V4_REQUEST)
    assert ip == Ipv4Repr(
        src=LOCAL4,
        dst=LOCAL4,
        protocol=1,
        payload_len=64,
        ttl=64,
        ident=0x4B65,
        dscp_ecn=0,
        dont_fragment=True,
    )
    assert bytes(payload) == V4_REQUEST[20:]
    assert ip.emit(payload) == V4_REQUEST
    assert ip.buffer_len() == len(V4_REQUEST)
    view = Ipv4Packet.new_checked(V4_REQUEST)
    assert (view.version, view.header_len, view.total_len, view.header_checksum) == (
        4,
        20,
        84,
        0xF141,
    )
    assert (view.more_fragments, view.frag_offset) == (False, 0)


def test_ipv4_trailing_bytes_are_trimmed() -> None:
    ip, payload = Ipv4Repr.parse(V4_REQUEST + b"\x00" * 12)
    assert ip.payload_len == 64 and bytes(payload) == V4_REQUEST[20:]


def _with_header(data: bytes, **fields: int) -> bytes:
    """V4 header bytes edited at the given offsets, checksum recomputed."""
    header = bytearray(data[:20])
    for offset, value in fields.items():
        header[int(offset[1:])] = value
    header[10:12] = b"\x00\x00"
    header[10:12] = checksum(header).to_bytes(2, "big")
    return bytes(header) + data[20:]


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "truncated"),
        (V4_REQUEST[:19], "truncated"),
        (_with_header(V4_REQUEST, o0=0x65), "version"),
        (_with_header(V4_REQUEST, o0=0x44), "IHL"),
        (_with_header(V4_REQUEST, o0=0x46), "options"),
        (_with_header(V4_REQUEST, o2=0, o3=19), "total length"),
        (_with_header(V4_REQUEST, o2=0, o3=85), "total length"),
        (V4_REQUEST[:83], "total length"),
        (V4_REQUEST[:10] + b"\x00\x00" + V4_REQUEST[12:], "checksum"),
        (_with_header(V4_REQUEST, o6=0x20), "fragments"),
        (_with_header(V4_REQUEST, o6=0x40, o7=1), "fragments"),
        (_with_header(V4_REQUEST, o6=0x00, o7=0x10), "fragments"),
    ],
)
def test_ipv4_rejects(packet: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Ipv4Repr.parse(packet)


ipv4_addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv6_addresses = st.integers(0, 2**128 - 1).map(IPv6Address)

ipv4_reprs = st.builds(
    Ipv4Repr,
    src=ipv4_addresses,
    dst=ipv4_addresses,
    protocol=st.integers(0, 255),
    payload_len=st.integers(0, 300),
    ttl=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    dscp_ecn=st.integers(0, 255),
    dont_fragment=st.booleans(),
)
ipv6_reprs = st.builds(
    Ipv6Repr,
    src=ipv6_addresses,
    dst=ipv6_addresses,
    next_header=st.integers(0, 255).filter(lambda n: n not in EXTENSION_HEADERS),
    payload_len=st.integers(0, 300),
    hop_limit=st.integers(0, 255),
    traffic_class=st.integers(0, 255),
    flow_label=st.integers(0, 0xFFFFF),
)


@given(ipv4_reprs, st.data())
def test_ipv4_parse_emit_round_trip(ip: Ipv4Repr, data: st.DataObject) -> None:
    payload = data.draw(st.binary(min_size=ip.payload_len, max_size=ip.payload_len))
    packet = ip.emit(payload)
    assert len(packet) == ip.buffer_len()
    parsed, parsed_payload = Ipv4Repr.parse(packet)
    assert parsed == ip
    assert bytes(parsed_payload) == payload
    assert reference_checksum(packet[:20]) == 0


def test_ipv4_repr_validation() -> None:
    with pytest.raises(ValueError, match="ttl"):
        Ipv4Repr(LOCAL4, LOCAL4, 1, 0, ttl=256)
    with pytest.raises(ValueError, match="payload_len"):
        Ipv4Repr(LOCAL4, LOCAL4, 1, 65516)
    with pytest.raises(TypeError, match="IPv4Address"):
        Ipv4Repr(LOCAL6, LOCAL4, 1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="payload"):
        Ipv4Repr(LOCAL4, LOCAL4, 1, 3).emit(b"ab")


# --- IPv6 ----------------------------------------------------------------------------------


def test_ipv6_captured_request_both_directions() -> None:
    ip, payload = Ipv6Repr.parse(V6_REQUEST)
    assert ip == Ipv6Repr(
        src=LOCAL6,
        dst=LOCAL6,
        next_header=58,
        payload_len=64,
        hop_limit=64,
        traffic_class=0,
        flow_label=0x9C202,
    )
    assert bytes(payload) == V6_REQUEST[40:]
    assert ip.emit(payload) == V6_REQUEST
    view = Ipv6Packet.new_checked(V6_REQUEST)
    assert (view.version, view.payload_len, view.next_header) == (6, 64, 58)


def test_ipv6_tsmp_example_both_directions() -> None:
    ip, payload = Ipv6Repr.parse(TSMP_REQUEST)
    assert ip == Ipv6Repr(src=CLIENT, dst=AGENT, next_header=99, payload_len=9, hop_limit=64)
    assert tsmp.parse(payload) == tsmp.TsmpPing(bytes.fromhex("0102030405060708"))
    assert ip.emit(tsmp.TsmpPing(bytes.fromhex("0102030405060708")).emit()) == TSMP_REQUEST


def test_ipv6_trailing_bytes_are_trimmed() -> None:
    ip, payload = Ipv6Repr.parse(TSMP_REQUEST + b"\x00" * 7)
    assert ip.payload_len == 9 and bytes(payload) == TSMP_REQUEST[40:]


def _v6_with(next_header: int | None = None, first: int | None = None) -> bytes:
    packet = bytearray(TSMP_REQUEST)
    if next_header is not None:
        packet[6] = next_header
    if first is not None:
        packet[0] = first
    return bytes(packet)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (b"", "truncated"),
        (TSMP_REQUEST[:39], "truncated"),
        (TSMP_REQUEST[:48], "payload length"),
        (_v6_with(first=0x40), "version"),
        *[(_v6_with(next_header=n), "extension header") for n in sorted(EXTENSION_HEADERS)],
    ],
)
def test_ipv6_rejects(packet: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Ipv6Repr.parse(packet)


@given(ipv6_reprs, st.data())
def test_ipv6_parse_emit_round_trip(ip: Ipv6Repr, data: st.DataObject) -> None:
    payload = data.draw(st.binary(min_size=ip.payload_len, max_size=ip.payload_len))
    packet = ip.emit(payload)
    assert len(packet) == ip.buffer_len()
    parsed, parsed_payload = Ipv6Repr.parse(packet)
    assert parsed == ip
    assert bytes(parsed_payload) == payload


def test_ipv6_repr_validation() -> None:
    with pytest.raises(ValueError, match="extension header"):
        Ipv6Repr(LOCAL6, LOCAL6, 44, 0)
    with pytest.raises(ValueError, match="flow_label"):
        Ipv6Repr(LOCAL6, LOCAL6, 58, 0, flow_label=1 << 20)
    with pytest.raises(ValueError, match="payload"):
        Ipv6Repr(LOCAL6, LOCAL6, 58, 1).emit(b"")


# --- ICMP echo -----------------------------------------------------------------------------


def test_icmpv4_captured_both_directions() -> None:
    echo = EchoRepr.parse(V4_REQUEST[20:], LOCAL4, LOCAL4)
    assert echo == EchoRepr("request", 0x0C4E, 1, bytes.fromhex(_PING_DATA))
    assert echo.emit(LOCAL4, LOCAL4) == V4_REQUEST[20:]
    reply = EchoRepr.parse(V4_REPLY[20:], LOCAL4, LOCAL4)
    assert reply == EchoRepr("reply", 0x0C4E, 1, bytes.fromhex(_PING_DATA))
    assert reply.emit(LOCAL4, LOCAL4) == V4_REPLY[20:]


def test_icmpv6_captured_both_directions() -> None:
    echo = EchoRepr.parse(V6_REQUEST[40:], LOCAL6, LOCAL6)
    assert echo == EchoRepr("request", 0x0C78, 1, bytes.fromhex(_PING6_DATA))
    assert echo.emit(LOCAL6, LOCAL6) == V6_REQUEST[40:]
    reply = EchoRepr.parse(V6_REPLY[40:], LOCAL6, LOCAL6)
    assert reply.kind == "reply"
    assert reply.emit(LOCAL6, LOCAL6) == V6_REPLY[40:]


def test_icmpv6_checksum_covers_pseudo_header() -> None:
    other = IPv6Address("::2")
    with pytest.raises(WireError, match="checksum"):
        EchoRepr.parse(V6_REQUEST[40:], LOCAL6, other)
    # ICMPv4 does not use one: any addresses verify.
    EchoRepr.parse(V4_REQUEST[20:], LOCAL4, IPv4Address("10.9.9.9"))


@pytest.mark.parametrize(
    ("message", "src", "error"),
    [
        (b"", LOCAL4, "truncated"),
        (V4_REQUEST[20:27], LOCAL4, "truncated"),
        (b"\x03\x03" + V4_REQUEST[22:], LOCAL4, "unsupported type 3"),  # port unreachable
        (b"\x08\x01" + V4_REQUEST[22:], LOCAL4, "unsupported type 8 code 1"),
        (b"\x80" + V4_REQUEST[21:], LOCAL4, "unsupported type 128"),  # ICMPv6 type in v4
        (b"\x08" + V6_REQUEST[41:], LOCAL6, "unsupported type 8"),  # ICMPv4 type in v6
        (b"\x87" + V6_REQUEST[41:], LOCAL6, "unsupported type 135"),  # neighbour solicitation
        (V4_REQUEST[20:-1] + b"\x00", LOCAL4, "checksum"),
        (V6_REQUEST[40:-1] + b"\x00", LOCAL6, "checksum"),
    ],
)
def test_icmp_rejects(message: bytes, src: IPv4Address | IPv6Address, error: str) -> None:
    with pytest.raises(WireError, match=error):
        EchoRepr.parse(message, src, src)


def test_icmp_mixed_families_are_caller_errors() -> None:
    with pytest.raises(ValueError, match="mixed"):
        EchoRepr("request", 1, 1).emit(LOCAL4, LOCAL6)


echo_reprs = st.builds(
    EchoRepr,
    kind=st.sampled_from(["request", "reply"]),
    ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    data=st.binary(max_size=200),
)


@given(echo_reprs, ipv4_addresses, ipv4_addresses)
def test_icmpv4_parse_emit_round_trip(echo: EchoRepr, src: IPv4Address, dst: IPv4Address) -> None:
    message = echo.emit(src, dst)
    assert len(message) == echo.buffer_len()
    assert reference_checksum(message) == 0
    assert EchoRepr.parse(message, src, dst) == echo


@given(echo_reprs, ipv6_addresses, ipv6_addresses)
def test_icmpv6_parse_emit_round_trip(echo: EchoRepr, src: IPv6Address, dst: IPv6Address) -> None:
    message = echo.emit(src, dst)
    pseudo = pseudo_header_ipv6(src, dst, PROTOCOL_ICMPV6, len(message))
    assert reference_checksum(pseudo + message) == 0
    assert EchoRepr.parse(message, src, dst) == echo


# --- TSMP ----------------------------------------------------------------------------------


def test_tsmp_layouts() -> None:
    data8 = bytes.fromhex("0102030405060708")
    assert tsmp.TsmpPing(data8).emit() == bytes.fromhex("700102030405060708")
    assert tsmp.TsmpPong(data8).emit() == bytes.fromhex("6f01020304050607080000")
    assert tsmp.TsmpPong(data8, 0x1234).emit() == bytes.fromhex("6f01020304050607081234")
    # tailscale reads the port only when present, and ignores anything after it.
    assert tsmp.parse(bytes.fromhex("6f0102030405060708")) == tsmp.TsmpPong(data8, 0)
    assert tsmp.parse(bytes.fromhex("6f01020304050607081234ffff")) == tsmp.TsmpPong(data8, 0x1234)
    assert tsmp.parse(bytes.fromhex("700102030405060708") + bytes(100)) == tsmp.TsmpPing(data8)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", "truncated"),
        (bytes.fromhex("7001020304050607"), "truncated"),
        (b"!" + bytes(10), "unsupported type 0x21"),
        (b"a" + bytes(33), "unsupported type 0x61"),
    ],
)
def test_tsmp_rejects(payload: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        tsmp.parse(payload)


@given(st.binary(min_size=8, max_size=8), st.integers(0, 0xFFFF))
def test_tsmp_parse_emit_round_trip(data8: bytes, port: int) -> None:
    assert tsmp.parse(tsmp.TsmpPing(data8).emit()) == tsmp.TsmpPing(data8)
    assert tsmp.parse(tsmp.TsmpPong(data8, port).emit()) == tsmp.TsmpPong(data8, port)


def test_tsmp_repr_validation() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        tsmp.TsmpPing(b"short")
    with pytest.raises(ValueError, match="peerapi_port"):
        tsmp.TsmpPong(bytes(8), 70000)


# --- fuzz: WireError or a Repr, nothing else -----------------------------------------------


def _parse_everything(data: bytes) -> None:
    for parse_ip in (Ipv4Repr.parse, Ipv6Repr.parse):
        try:
            parse_ip(data)
        except WireError:
            pass
    for src in (LOCAL4, LOCAL6):
        try:
            EchoRepr.parse(data, src, src)
        except WireError:
            pass
    try:
        tsmp.parse(data)
    except WireError:
        pass


@given(st.binary(max_size=120))
@example(b"\x45" + bytes(19))
@example(b"\x60" + bytes(39))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    _parse_everything(data)


SEEDS = [V4_REQUEST, V4_REPLY, V6_REQUEST, V6_REPLY, TSMP_REQUEST]


@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 103), st.integers(0, 255)), max_size=4),
    st.integers(0, 110),
)
def test_mutated_packets_raise_only_wire_error(
    seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    packet = bytearray(seed[:cut] if cut < len(seed) else seed)
    for offset, value in edits:
        if offset < len(packet):
            packet[offset] = value
    data = bytes(packet)
    _parse_everything(data)
    _parse_everything(data[20:])
    _parse_everything(data[40:])


def test_protocol_constants() -> None:
    assert (PROTOCOL_ICMPV4, PROTOCOL_ICMPV6, tsmp.PROTOCOL_TSMP) == (1, 58, 99)
