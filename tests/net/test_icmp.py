"""Tests for agentconn.net.icmp: answering echo requests and the Pinger."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.net.icmp import Pinger, answer
from agentconn.net.wire import tsmp
from agentconn.net.wire.checksum import checksum, pseudo_sum
from agentconn.net.wire.icmp import PROTOCOL_ICMPV4, PROTOCOL_ICMPV6, EchoRepr
from agentconn.net.wire.ipv4 import Ipv4Repr
from agentconn.net.wire.ipv6 import Ipv6Repr

# The same captured packets and TSMP example as tests/net/test_wire.py (sources cited there).
_PING_DATA = "d34e066b0000000018c1000000000000" + bytes(range(0x10, 0x38)).hex()
V4_REQUEST = bytes.fromhex("450000544b6540004001f1417f0000017f00000108003a630c4e0001" + _PING_DATA)
V4_KERNEL_REPLY = bytes.fromhex(
    "450000544b660000400131417f0000017f000001000042630c4e0001" + _PING_DATA
)
_PING6_DATA = "d34e066b00000000c985020000000000" + bytes(range(0x10, 0x38)).hex()
_LOOPBACK6 = "00000000000000000000000000000001"
V6_REQUEST = bytes.fromhex("6009c20200403a40" + _LOOPBACK6 * 2 + "80000ef80c780001" + _PING6_DATA)
V6_KERNEL_REPLY = bytes.fromhex(
    "600fbfc600403a40" + _LOOPBACK6 * 2 + "81000df80c780001" + _PING6_DATA
)
CLIENT = IPv6Address("fd7a:115c:a1e0:1111:2222:3333:4444:5555")
AGENT = IPv6Address("fd7a:115c:a1e0:aaaa:aaaa:1234:5678:9abc")
TSMP_REQUEST = bytes.fromhex(
    "6000000000096340fd7a115ca1e011112222333344445555fd7a115ca1e0aaaaaaaa123456789abc"
    "700102030405060708"
)
TSMP_REPLY = bytes.fromhex(  # tailnet.md §4.3, with flow label 0
    "60000000000b6340fd7a115ca1e0aaaaaaaa123456789abcfd7a115ca1e011112222333344445555"
    "6f01020304050607080000"
)
LOCAL4 = IPv4Address("127.0.0.1")
LOCAL6 = IPv6Address("::1")
V4_A, V4_B, V4_C = IPv4Address("100.64.0.1"), IPv4Address("100.64.0.2"), IPv4Address("100.64.0.3")
V6_C = IPv6Address("fd7a:115c:a1e0::c")


def _verify_icmp(packet: bytes) -> EchoRepr:
    """Parse a reply fully, checking both checksums by hand as well."""
    if packet[0] >> 4 == 4:
        ip4, payload = Ipv4Repr.parse(packet)
        assert checksum(packet[:20]) == 0 and checksum(payload) == 0
        return EchoRepr.parse(payload, ip4.src, ip4.dst)
    ip6, payload = Ipv6Repr.parse(packet)
    assert checksum(payload, pseudo_sum(ip6.src, ip6.dst, PROTOCOL_ICMPV6, len(payload))) == 0
    return EchoRepr.parse(payload, ip6.src, ip6.dst)


# --- answer() ------------------------------------------------------------------------------


def test_answer_icmpv4_matches_kernel_reply() -> None:
    reply = answer(V4_REQUEST, {LOCAL4})
    assert reply is not None
    ip, payload = Ipv4Repr.parse(reply)
    kernel_ip, kernel_payload = Ipv4Repr.parse(V4_KERNEL_REPLY)
    # The kernel picks its own IP identification; everything else is the same.
    assert ip == dataclasses.replace(kernel_ip, ident=0)
    assert bytes(payload) == bytes(kernel_payload)
    assert _verify_icmp(reply) == EchoRepr("reply", 0x0C4E, 1, bytes.fromhex(_PING_DATA))


def test_answer_icmpv6_matches_kernel_reply() -> None:
    reply = answer(V6_REQUEST, {LOCAL6})
    assert reply is not None
    # The kernel sets a flow label; we leave it 0. The rest is byte-identical.
    assert reply[:1] == V6_KERNEL_REPLY[:1]
    assert reply[1:4] == b"\x00\x00\x00"
    assert reply[4:] == V6_KERNEL_REPLY[4:]
    assert _verify_icmp(reply).kind == "reply"


def test_answer_tsmp_matches_spec_example() -> None:
    assert answer(TSMP_REQUEST, {AGENT}) == TSMP_REPLY


def test_answer_tsmp_v4_and_padded_ping() -> None:
    ping = Ipv4Repr(V4_A, V4_B, tsmp.PROTOCOL_TSMP, 20, ttl=3).emit(
        tsmp.TsmpPing(b"12345678").emit() + bytes(11)
    )
    reply = answer(ping, [V4_B])
    assert reply is not None
    ip, payload = Ipv4Repr.parse(reply)
    assert ip == Ipv4Repr(V4_B, V4_A, tsmp.PROTOCOL_TSMP, 11, ttl=64)
    assert tsmp.parse(payload) == tsmp.TsmpPong(b"12345678", 0)


def test_answer_sets_hop_limit_64() -> None:
    request = Ipv6Repr(CLIENT, AGENT, PROTOCOL_ICMPV6, 8, hop_limit=1).emit(
        EchoRepr("request", 7, 9).emit(CLIENT, AGENT)
    )
    reply = answer(request, {AGENT})
    assert reply is not None
    ip, _ = Ipv6Repr.parse(reply)
    assert (ip.src, ip.dst, ip.hop_limit) == (AGENT, CLIENT, 64)
    assert _verify_icmp(reply) == EchoRepr("reply", 7, 9)


def _icmp4(src: IPv4Address, dst: IPv4Address, echo: EchoRepr) -> bytes:
    message = echo.emit(src, dst)
    return Ipv4Repr(src, dst, PROTOCOL_ICMPV4, len(message)).emit(message)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 60, id="version-0"),
        pytest.param(V4_REQUEST[:30], id="truncated"),
        pytest.param(V4_KERNEL_REPLY, id="echo-reply"),
        pytest.param(_icmp4(V4_A, V4_C, EchoRepr("request", 1, 1)), id="not-our-address"),
        pytest.param(
            _icmp4(IPv4Address("224.0.0.1"), V4_B, EchoRepr("request", 1, 1)), id="multicast-source"
        ),
        pytest.param(
            _icmp4(IPv4Address("0.0.0.0"), V4_B, EchoRepr("request", 1, 1)), id="unspecified-source"
        ),
        pytest.param(V4_REQUEST[:-1] + b"\x00", id="bad-icmp-checksum"),
        pytest.param(Ipv4Repr(V4_A, V4_B, 17, 8).emit(bytes(8)), id="udp"),
        pytest.param(Ipv4Repr(V4_A, V4_B, PROTOCOL_ICMPV4, 4).emit(bytes(4)), id="short-icmp"),
        pytest.param(
            Ipv4Repr(V4_A, V4_B, tsmp.PROTOCOL_TSMP, 11).emit(tsmp.TsmpPong(bytes(8)).emit()),
            id="tsmp-pong",
        ),
        pytest.param(Ipv4Repr(V4_A, V4_B, tsmp.PROTOCOL_TSMP, 3).emit(b"p12"), id="tsmp-short"),
        pytest.param(
            Ipv6Repr(CLIENT, AGENT, PROTOCOL_ICMPV4, 8).emit(
                EchoRepr("request", 1, 1).emit(V4_A, V4_B)
            ),
            id="icmpv4-in-ipv6",
        ),
    ],
)
def test_answer_ignores(packet: bytes) -> None:
    assert answer(packet, {LOCAL4, LOCAL6, V4_B, AGENT}) is None


@given(st.binary(max_size=100))
def test_answer_never_raises(data: bytes) -> None:
    answer(data, {LOCAL4, LOCAL6})
    answer(b"\x45" + data, {LOCAL4, LOCAL6})
    answer(b"\x60" + data, {LOCAL4, LOCAL6})


@given(
    st.sampled_from([V4_REQUEST, V6_REQUEST, TSMP_REQUEST]),
    st.lists(st.tuples(st.integers(0, 103), st.integers(0, 255)), max_size=3),
)
def test_answer_never_raises_on_mutations(seed: bytes, edits: list[tuple[int, int]]) -> None:
    packet = bytearray(seed)
    for offset, value in edits:
        if offset < len(packet):
            packet[offset] = value
    reply = answer(bytes(packet), {LOCAL4, LOCAL6, AGENT})
    if reply is not None:
        assert reply[0] >> 4 in (4, 6)


# --- Pinger --------------------------------------------------------------------------------


def seeded(seed: int) -> Pinger:
    return Pinger(random_bytes=random.Random(seed).randbytes)


@pytest.mark.parametrize(
    ("src", "dst", "kind"),
    [
        (V4_A, V4_B, "icmp"),
        (CLIENT, AGENT, "icmp"),
        (V4_A, V4_B, "tsmp"),
        (CLIENT, AGENT, "tsmp"),
    ],
)
def test_pinger_round_trip_with_answer(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, kind: Literal["icmp", "tsmp"]
) -> None:
    pinger = seeded(1)
    token, request = pinger.request(src, dst, kind=kind, now=10.0, payload_size=24)
    assert len(pinger) == 1
    reply = answer(request, {dst})
    assert reply is not None
    assert pinger.receive(request, now=10.1) is None  # our own request is not a reply
    result = pinger.receive(reply, now=10.25)
    assert result is not None
    assert result[0] == token
    assert result[1] == pytest.approx(0.25)
    assert len(pinger) == 0
    assert pinger.receive(reply, now=10.3) is None  # duplicates are ignored


def test_pinger_icmp_request_layout() -> None:
    pinger = seeded(2)
    tokens = []
    seqs = []
    for i in range(3):
        token, packet = pinger.request(V4_A, V4_B, now=float(i), payload_size=5)
        ip, payload = Ipv4Repr.parse(packet)
        assert (ip.src, ip.dst, ip.protocol, ip.ttl) == (V4_A, V4_B, PROTOCOL_ICMPV4, 64)
        echo = EchoRepr.parse(payload, ip.src, ip.dst)
        assert echo.kind == "request" and echo.ident == pinger.ident and len(echo.data) == 5
        tokens.append(token)
        seqs.append(echo.seq)
    assert len(set(tokens)) == 3
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]


def test_pinger_tsmp_request_layout() -> None:
    pinger = seeded(3)
    _, packet = pinger.request(CLIENT, AGENT, kind="tsmp", now=0.0)
    ip, payload = Ipv6Repr.parse(packet)
    assert (ip.next_header, ip.payload_len, ip.hop_limit) == (tsmp.PROTOCOL_TSMP, 9, 64)
    assert isinstance(tsmp.parse(payload), tsmp.TsmpPing)


def test_pinger_answers_match_their_own_requests() -> None:
    pinger = seeded(4)
    t1, r1 = pinger.request(V4_A, V4_B, now=0.0)
    t2, r2 = pinger.request(V4_A, V4_C, now=1.0)
    t3, r3 = pinger.request(CLIENT, AGENT, kind="tsmp", now=2.0)
    local: set[IPv4Address | IPv6Address] = {V4_B, V4_C, AGENT}
    a1, a2, a3 = (answer(r, local) for r in (r1, r2, r3))
    assert a1 is not None and a2 is not None and a3 is not None
    assert pinger.receive(a3, now=5.0) == (t3, 3.0)
    assert pinger.receive(a2, now=5.0) == (t2, 4.0)
    assert pinger.receive(a1, now=5.0) == (t1, 5.0)


def _forge_icmp_reply(reply: bytes, new_src: IPv4Address | IPv6Address) -> bytes:
    """Re-emit a reply as if it came from *new_src*, with valid checksums."""
    if reply[0] >> 4 == 4:
        ip4, payload = Ipv4Repr.parse(reply)
        assert isinstance(new_src, IPv4Address)
        echo = EchoRepr.parse(payload, ip4.src, ip4.dst)
        return Ipv4Repr(new_src, ip4.dst, ip4.protocol, ip4.payload_len).emit(
            echo.emit(new_src, ip4.dst)
        )
    ip6, payload = Ipv6Repr.parse(reply)
    assert isinstance(new_src, IPv6Address)
    if ip6.next_header == tsmp.PROTOCOL_TSMP:
        return dataclasses.replace(ip6, src=new_src).emit(payload)
    echo = EchoRepr.parse(payload, ip6.src, ip6.dst)
    return dataclasses.replace(ip6, src=new_src).emit(echo.emit(new_src, ip6.dst))


@pytest.mark.parametrize(
    ("dst", "impostor", "kind"),
    [(V4_B, V4_C, "icmp"), (AGENT, V6_C, "icmp"), (AGENT, V6_C, "tsmp")],
)
def test_pinger_ignores_reply_from_wrong_address(
    dst: IPv4Address | IPv6Address,
    impostor: IPv4Address | IPv6Address,
    kind: Literal["icmp", "tsmp"],
) -> None:
    src = V4_A if dst.version == 4 else CLIENT
    pinger = seeded(5)
    token, request = pinger.request(src, dst, kind=kind, now=0.0)
    reply = answer(request, {dst})
    assert reply is not None
    forged = _forge_icmp_reply(reply, impostor)
    assert pinger.receive(forged, now=1.0) is None
    assert pinger.receive(reply, now=1.0) == (token, 1.0)


def test_pinger_ignores_unknown_ident_and_seq() -> None:
    mine, theirs = seeded(6), seeded(7)
    assert mine.ident != theirs.ident
    mine.request(V4_A, V4_B, now=0.0)
    _, their_request = theirs.request(V4_A, V4_B, now=0.0)
    their_reply = answer(their_request, {V4_B})
    assert their_reply is not None
    assert mine.receive(their_reply, now=1.0) is None
    # Right ident, sequence number never sent.
    stray = _icmp4(V4_B, V4_A, EchoRepr("reply", mine.ident, 999))
    assert mine.receive(stray, now=1.0) is None
    assert len(mine) == 1


def test_pinger_ignores_reply_with_changed_data() -> None:
    pinger = seeded(8)
    _, request = pinger.request(V4_A, V4_B, now=0.0, payload_size=8)
    reply = answer(request, {V4_B})
    assert reply is not None
    ip, payload = Ipv4Repr.parse(reply)
    echo = EchoRepr.parse(payload, ip.src, ip.dst)
    tampered = _icmp4(ip.src, ip.dst, dataclasses.replace(echo, data=bytes(8)))
    assert pinger.receive(tampered, now=1.0) is None


def test_pinger_ignores_wrong_family() -> None:
    pinger = seeded(9)
    _, request = pinger.request(V4_A, V4_B, now=0.0)
    _, payload = Ipv4Repr.parse(request)
    echo = EchoRepr.parse(payload, V4_A, V4_B)
    v6_reply = Ipv6Repr(AGENT, CLIENT, PROTOCOL_ICMPV6, len(payload)).emit(
        dataclasses.replace(echo, kind="reply").emit(AGENT, CLIENT)
    )
    assert pinger.receive(v6_reply, now=1.0) is None


def test_pinger_expire() -> None:
    pinger = seeded(10)
    t1, r1 = pinger.request(V4_A, V4_B, now=0.0)
    t2, _ = pinger.request(V4_A, V4_B, kind="tsmp", now=4.0)
    assert pinger.expire(now=9.0, timeout=10.0) == []
    assert pinger.expire(now=10.0, timeout=10.0) == [t1]
    late = answer(r1, {V4_B})
    assert late is not None
    assert pinger.receive(late, now=10.5) is None
    assert pinger.expire(now=20.0, timeout=10.0) == [t2]
    assert len(pinger) == 0


def test_pinger_rtt_never_negative() -> None:
    pinger = seeded(11)
    token, request = pinger.request(V4_A, V4_B, now=5.0)
    reply = answer(request, {V4_B})
    assert reply is not None
    assert pinger.receive(reply, now=4.0) == (token, 0.0)


def test_pinger_request_errors() -> None:
    pinger = seeded(12)
    with pytest.raises(ValueError, match="mixed"):
        pinger.request(V4_A, AGENT, now=0.0)
    with pytest.raises(ValueError, match="kind"):
        pinger.request(V4_A, V4_B, kind="udp", now=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="payload_size"):
        pinger.request(V4_A, V4_B, now=0.0, payload_size=-1)
    with pytest.raises(ValueError):
        pinger.request(V4_A, V4_B, now=0.0, payload_size=70000)
    assert len(pinger) == 0
    # A failed request does not use up a sequence number.
    _, packet = pinger.request(V4_A, V4_B, now=0.0)
    _, payload = Ipv4Repr.parse(packet)
    assert EchoRepr.parse(payload, V4_A, V4_B).seq == 0


def test_pinger_sequence_wraps() -> None:
    pinger = seeded(13)
    pinger._seq = 0xFFFF  # jump to the end instead of sending 65535 requests first
    _, p1 = pinger.request(V4_A, V4_B, now=0.0)
    _, p2 = pinger.request(V4_A, V4_B, now=0.0)
    seqs = [EchoRepr.parse(Ipv4Repr.parse(p)[1], V4_A, V4_B).seq for p in (p1, p2)]
    assert seqs == [0xFFFF, 0]


@given(st.binary(max_size=100))
def test_pinger_receive_never_raises(data: bytes) -> None:
    pinger = seeded(14)
    pinger.request(V4_A, V4_B, now=0.0)
    pinger.request(CLIENT, AGENT, kind="tsmp", now=0.0)
    for packet in (data, b"\x45" + data, b"\x60" + data):
        assert pinger.receive(packet, now=1.0) is None or len(pinger) < 2
