"""Tests for agentconn.net.wire.tcp: header, options, checksum and sequence arithmetic.

Fuzz invariant for TcpRepr.parse: given any bytes it returns ``(TcpRepr, memoryview)`` or
raises WireError, and nothing else; and whatever it returns re-emits to bytes that parse to
the same TcpRepr.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import checksum, pseudo_header_ipv4, pseudo_header_ipv6, pseudo_sum
from agentconn.net.wire.ipv4 import Ipv4Repr
from agentconn.net.wire.ipv6 import Ipv6Repr
from agentconn.net.wire.tcp import (
    MAX_OPTIONS_LEN,
    PROTOCOL_TCP,
    SEQ_MODULUS,
    TcpFlags,
    TcpPacket,
    TcpRepr,
    seq_add,
    seq_ge,
    seq_gt,
    seq_le,
    seq_lt,
    seq_sub,
)

LOCAL4 = IPv4Address("127.0.0.1")
LOCAL6 = IPv6Address("::1")
Address = IPv4Address | IPv6Address

# --- captured packets ----------------------------------------------------------------------
# Captured from Linux 6.18 on loopback, in a fresh network namespace (`unshare -n`, lo up),
# with an AF_PACKET socket bound to lo (ETH_P_ALL, PACKET_AUXDATA on, keeping the PACKET_HOST
# copy of each frame and stripping the 14-byte Ethernet header). A Python client connected
# to a Python listener on 127.0.0.1 (then ::1), sent b"hello, agentconn\n", received a reply
# and closed; then it connected again to the closed port to draw a RST. Every segment is the
# kernel's own.
#
# lo offloads TCP checksums: the kernel marked most segments TP_STATUS_CSUMNOTREADY
# (CHECKSUM_PARTIAL), and their checksum field holds only the folded pseudo-header sum, which
# hardware would complete and on lo nothing ever does. `_complete` finishes them the way the
# kernel's skb_checksum_help does in software (checksum over the segment with that field in
# place). The TIME_WAIT ACK and the RST are built by ip_send_unicast_reply, which sums in
# software: those are kept exactly as captured and verify as they are.
V4_SYN = bytes.fromhex(
    "4500003c61da40004006dadf7f0000017f000001"  # IPv4
    "afa2e99d5d9449f700000000a002ffd7fe300000"  # TCP, checksum partial
    "0204ffd70402080a14d0043a000000000103030a"  # MSS 65495, SACK-perm, TS, NOP, WS 10
)
V4_SYN_ACK = bytes.fromhex(
    "4500003c0000400040063cba7f0000017f000001"
    "e99dafa264b32f825d9449f8a012ffcbfe300000"
    "0204ffd70402080a7f57a6b114d0043a0103030a"
)
V4_DATA = bytes.fromhex(
    "4500004561dc40004006dad47f0000017f000001"
    "afa2e99d5d9449f864b32f8380180040fe390000"
    "0101080a14d0043a7f57a6b1"  # NOP, NOP, TS
    "68656c6c6f2c206167656e74636f6e6e0a"  # b"hello, agentconn\n"
)
V4_TIME_WAIT_ACK = bytes.fromhex(  # software checksum 0x61e3
    "450000340000400040063cc27f0000017f000001"
    "e99dafa264b32f9a5d944a0a8010004061e30000"
    "0101080a7f57a7dd14d00566"
)
V4_RST = bytes.fromhex(  # software checksum 0x4f88
    "450000280000400040063cce7f0000017f000001e99dafaa00000000b80e10ef501400004f880000"
)
_LOOPBACK6 = "00000000000000000000000000000001"
V6_SYN = bytes.fromhex(
    "6001d08c00280640" + _LOOPBACK6 * 2 + "848697479d9461ee00000000a002ffc400300000"
    "0204ffc40402080aa07155a5000000000103030a"
)
V6_SYN_ACK = bytes.fromhex(
    "6000dbdb00280640" + _LOOPBACK6 * 2 + "97478486158973899d9461efa012ffb800300000"
    "0204ffc40402080aaed5d887a07155a50103030a"
)
V6_DATA = bytes.fromhex(
    "6001d08c00310640" + _LOOPBACK6 * 2 + "848697479d9461ef1589738a8018004000390000"
    "0101080aa07155a5aed5d887"
    "68656c6c6f2c206167656e74636f6e6e0a"
)
# SACK blocks, from the same kernel and set-up. Here the client side was a raw socket
# (AF_INET, SOCK_RAW, IPPROTO_TCP) sending segments built with TcpRepr.emit: SYN with
# SACK-permitted and timestamps from port 40000 (an nft rule in the namespace dropped the
# kernel's RSTs to that port), then 100-byte segments at ISS+101 and ISS+301, leaving holes.
# These are the kernel's duplicate ACKs (checksums partial, as above).
V4_SACK_ONE = bytes.fromhex(
    "450000402c164000400610a07f0000017f000001"
    "b4c39c4091ecc633000003e9b0100040fe340000"
    "0101080a82a5e84000000002"  # NOP, NOP, TS
    "0101050a0000044d000004b1"  # NOP, NOP, SACK [1101, 1201)
)
V4_SACK_TWO = bytes.fromhex(
    "450000482c174000400610977f0000017f000001"
    "b4c39c4091ecc633000003e9d0100040fe3c0000"
    "0101080a82a5e84000000002"
    "01010512"  # NOP, NOP, SACK of 18 bytes:
    "0000051500000579"  # [1301, 1401)
    "0000044d000004b1"  # [1101, 1201)
)

PARTIAL = [V4_SYN, V4_SYN_ACK, V4_DATA, V6_SYN, V6_SYN_ACK, V6_DATA, V4_SACK_ONE, V4_SACK_TWO]
SOFTWARE = [V4_TIME_WAIT_ACK, V4_RST]
PSH_ACK = TcpFlags.PSH | TcpFlags.ACK


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
    """The pseudo-header laid out by hand from RFC 9293 §3.1 and RFC 8200 §8.1."""
    if isinstance(src, IPv4Address):
        return src.packed + dst.packed + bytes([0, PROTOCOL_TCP]) + length.to_bytes(2, "big")
    return src.packed + dst.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, PROTOCOL_TCP])


def split(packet: bytes) -> tuple[bytes, Address, Address]:
    """The TCP segment of a captured IP packet, and its addresses."""
    if packet[0] >> 4 == 4:
        ip4, payload = Ipv4Repr.parse(packet)
        assert ip4.protocol == PROTOCOL_TCP
        return bytes(payload), ip4.src, ip4.dst
    ip6, payload = Ipv6Repr.parse(packet)
    assert ip6.next_header == PROTOCOL_TCP
    return bytes(payload), ip6.src, ip6.dst


def _complete(segment: bytes) -> bytes:
    """Finish a CHECKSUM_PARTIAL checksum as skb_checksum_help does."""
    return segment[:16] + reference_checksum(segment).to_bytes(2, "big") + segment[18:]


def captured(packet: bytes) -> tuple[bytes, Address, Address]:
    """The segment of a capture with its checksum completed if the kernel left it partial."""
    segment, src, dst = split(packet)
    return (_complete(segment) if packet in PARTIAL else segment), src, dst


def test_partial_checksums_hold_the_pseudo_header_sum() -> None:
    for packet in PARTIAL:
        segment, src, dst = split(packet)
        pseudo = reference_pseudo(src, dst, len(segment))
        assert int.from_bytes(segment[16:18], "big") == ~reference_checksum(pseudo) & 0xFFFF
        with pytest.raises(WireError, match="checksum"):
            TcpRepr.parse(segment, src, dst)


@pytest.mark.parametrize("packet", PARTIAL + SOFTWARE)
def test_captured_checksums_verify(packet: bytes) -> None:
    segment, src, dst = captured(packet)
    assert reference_checksum(reference_pseudo(src, dst, len(segment)) + segment) == 0
    assert checksum(segment, pseudo_sum(src, dst, PROTOCOL_TCP, len(segment))) == 0
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        assert reference_pseudo(src, dst, 40) == pseudo_header_ipv4(src, dst, PROTOCOL_TCP, 40)
    elif isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        assert reference_pseudo(src, dst, 40) == pseudo_header_ipv6(src, dst, PROTOCOL_TCP, 40)


def test_software_checksums_are_as_captured() -> None:
    segment, src, dst = split(V4_TIME_WAIT_ACK)
    assert int.from_bytes(segment[16:18], "big") == 0x61E3
    assert TcpRepr.parse(segment, src, dst)[0].flags == TcpFlags.ACK
    segment, src, dst = split(V4_RST)
    assert TcpRepr.parse(segment, src, dst)[0].flags == TcpFlags.RST | TcpFlags.ACK


@pytest.mark.parametrize("packet", PARTIAL + SOFTWARE)
def test_captured_reemit_is_identical(packet: bytes) -> None:
    segment, src, dst = captured(packet)
    tcp, payload = TcpRepr.parse(segment, src, dst)
    assert tcp.emit(payload, src, dst) == segment
    assert tcp.header_len() == len(segment) - len(payload)


def test_v4_syn() -> None:
    segment, src, dst = captured(V4_SYN)
    tcp, payload = TcpRepr.parse(segment, src, dst)
    assert tcp == TcpRepr(
        src_port=44962,
        dst_port=59805,
        seq=0x5D9449F7,
        ack=None,
        flags=TcpFlags.SYN,
        window=65495,
        mss=65495,
        window_scale=10,
        sack_permitted=True,
        timestamps=(0x14D0043A, 0),
    )
    assert bytes(payload) == b""


def test_v4_syn_ack() -> None:
    segment, src, dst = captured(V4_SYN_ACK)
    tcp, _ = TcpRepr.parse(segment, src, dst)
    assert tcp == TcpRepr(
        src_port=59805,
        dst_port=44962,
        seq=0x64B32F82,
        ack=0x5D9449F8,
        flags=TcpFlags.SYN | TcpFlags.ACK,
        window=65483,
        mss=65495,
        window_scale=10,
        sack_permitted=True,
        timestamps=(0x7F57A6B1, 0x14D0043A),
    )
    syn, _ = TcpRepr.parse(*captured(V4_SYN))
    # The handshake is consistent: SYN-ACK acknowledges ISS+1 and echoes the TSval.
    assert tcp.ack == seq_add(syn.seq, 1)
    assert tcp.timestamps is not None and syn.timestamps is not None
    assert tcp.timestamps[1] == syn.timestamps[0]


def test_v4_data_segment() -> None:
    segment, src, dst = captured(V4_DATA)
    tcp, payload = TcpRepr.parse(segment, src, dst)
    assert tcp == TcpRepr(
        src_port=44962,
        dst_port=59805,
        seq=0x5D9449F8,
        ack=0x64B32F83,
        flags=PSH_ACK,
        window=64,
        timestamps=(0x14D0043A, 0x7F57A6B1),
    )
    assert bytes(payload) == b"hello, agentconn\n"
    view = TcpPacket.new_checked(segment)
    assert (view.src_port, view.dst_port, view.header_len, view.reserved) == (44962, 59805, 32, 0)
    assert (view.seq_number, view.ack_number, view.flags) == (0x5D9449F8, 0x64B32F83, PSH_ACK)
    assert (view.window_len, view.urgent_pointer) == (64, 0)
    assert view.checksum == int.from_bytes(segment[16:18], "big")
    assert bytes(view.options) == bytes.fromhex("0101080a14d0043a7f57a6b1")
    assert [(k, bytes(v)) for k, v in view.option_items()] == [
        (8, bytes.fromhex("14d0043a7f57a6b1"))
    ]
    assert bytes(view.payload) == b"hello, agentconn\n"


def test_v4_rst_and_time_wait_ack() -> None:
    rst, payload = TcpRepr.parse(*captured(V4_RST))
    assert rst == TcpRepr(59805, 44970, 0, 0xB80E10EF, TcpFlags.RST | TcpFlags.ACK, 0)
    assert rst.header_len() == 20 and bytes(payload) == b""
    ack, _ = TcpRepr.parse(*captured(V4_TIME_WAIT_ACK))
    assert ack == TcpRepr(
        59805, 44962, 0x64B32F9A, 0x5D944A0A, TcpFlags.ACK, 64, timestamps=(0x7F57A7DD, 0x14D00566)
    )


def test_v6_handshake_and_data() -> None:
    syn, _ = TcpRepr.parse(*captured(V6_SYN))
    assert syn == TcpRepr(
        33926,
        38727,
        0x9D9461EE,
        None,
        TcpFlags.SYN,
        65476,
        mss=65476,
        window_scale=10,
        sack_permitted=True,
        timestamps=(0xA07155A5, 0),
    )
    syn_ack, _ = TcpRepr.parse(*captured(V6_SYN_ACK))
    assert (syn_ack.ack, syn_ack.mss, syn_ack.window) == (0x9D9461EF, 65476, 65464)
    data, payload = TcpRepr.parse(*captured(V6_DATA))
    assert (data.seq, data.ack, data.flags) == (0x9D9461EF, 0x1589738A, PSH_ACK)
    assert data.timestamps == (0xA07155A5, 0xAED5D887)
    assert bytes(payload) == b"hello, agentconn\n"


def test_v4_sack_blocks() -> None:
    one, _ = TcpRepr.parse(*captured(V4_SACK_ONE))
    assert one == TcpRepr(
        46275,
        40000,
        0x91ECC633,
        1001,
        TcpFlags.ACK,
        64,
        timestamps=(0x82A5E840, 2),
        sack_blocks=((1101, 1201),),
    )
    two, _ = TcpRepr.parse(*captured(V4_SACK_TWO))
    assert two.sack_blocks == ((1301, 1401), (1101, 1201))
    assert two.header_len() == 52


def test_checksum_covers_pseudo_header_and_data() -> None:
    segment, src, dst = captured(V4_DATA)
    with pytest.raises(WireError, match="checksum"):
        TcpRepr.parse(segment, src, IPv4Address("127.0.0.2"))
    corrupt = segment[:-1] + b"\x0b"
    with pytest.raises(WireError, match="checksum"):
        TcpRepr.parse(corrupt, src, dst)
    tcp, payload = TcpRepr.parse(corrupt, src, dst, verify_checksum=False)
    assert bytes(payload) == b"hello, agentconn\x0b" and tcp.seq == 0x5D9449F8
    segment6, src6, _ = captured(V6_DATA)
    with pytest.raises(WireError, match="checksum"):
        TcpRepr.parse(segment6, src6, IPv6Address("::2"))


def test_mixed_families_are_caller_errors() -> None:
    segment, _, _ = captured(V4_DATA)
    with pytest.raises(ValueError, match="mixed"):
        TcpRepr.parse(segment, LOCAL4, LOCAL6)
    with pytest.raises(ValueError, match="mixed"):
        TcpRepr(1, 2, 3, None, TcpFlags.SYN, 0).emit(b"", LOCAL6, LOCAL4)


# --- option layout -------------------------------------------------------------------------


def _options(tcp: TcpRepr) -> bytes:
    return tcp.emit(b"", LOCAL4, LOCAL4)[20:]


def _syn(**options: object) -> TcpRepr:
    return TcpRepr(1, 2, 3, None, TcpFlags.SYN, 1000, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "layout"),
    [
        ({}, ""),
        ({"mss": 1460}, "020405b4"),
        ({"sack_permitted": True}, "01010402"),
        ({"timestamps": (1, 2)}, "0101080a0000000100000002"),
        ({"sack_permitted": True, "timestamps": (1, 2)}, "0402080a0000000100000002"),
        ({"window_scale": 7}, "01030307"),
        ({"sack_blocks": ((1, 2),)}, "0101050a0000000100000002"),
        (
            {"mss": 1460, "sack_permitted": True, "timestamps": (1, 0), "window_scale": 7},
            "020405b4" + "0402080a0000000100000000" + "01030307",
        ),
        (
            {"timestamps": (5, 6), "sack_blocks": ((1, 2), (3, 4), (7, 8))},
            "0101080a0000000500000006"
            + "0101051a"
            + "000000010000000200000003000000040000000700000008",
        ),
        (
            {"sack_blocks": ((1, 2), (3, 4), (5, 6), (7, 8))},
            "01010522" + "".join(f"{n:08x}" for n in range(1, 9)),
        ),
    ],
)
def test_linux_option_layout(options: dict[str, object], layout: str) -> None:
    tcp = _syn(**options)
    assert _options(tcp).hex() == layout
    assert tcp.header_len() == 20 + len(layout) // 2
    assert TcpRepr.parse(tcp.emit(b"", LOCAL4, LOCAL4), LOCAL4, LOCAL4)[0] == tcp


def test_compact_layout_when_linux_layout_overflows() -> None:
    # Linux would need 4 + 12 + 28 = 44 bytes; without NOPs it is 4 + 10 + 26 = 40.
    tcp = _syn(mss=1460, timestamps=(5, 6), sack_blocks=((1, 2), (3, 4), (7, 8)))
    assert _options(tcp).hex() == (
        "020405b4"
        + "080a0000000500000006"
        + "051a"
        + "000000010000000200000003000000040000000700000008"
    )
    assert tcp.header_len() == 60
    assert TcpRepr.parse(tcp.emit(b"x", LOCAL4, LOCAL4), LOCAL4, LOCAL4)[0] == tcp
    # Odd raw lengths are padded with zeros (EOL) to a 32-bit boundary: 10 + 3 + 26 = 39.
    tcp = _syn(window_scale=3, timestamps=(5, 6), sack_blocks=((1, 2), (3, 4), (7, 8)))
    assert _options(tcp).hex() == (
        "080a0000000500000006"
        + "030303"
        + "051a"
        + "000000010000000200000003000000040000000700000008"
        + "00"
    )
    assert TcpRepr.parse(tcp.emit(b"", LOCAL4, LOCAL4), LOCAL4, LOCAL4)[0] == tcp


# --- malformed and unusual options ----------------------------------------------------------


def segment_with(
    options: bytes, *, flags: int = 0x02, payload: bytes = b"", data_offset: int | None = None
) -> bytes:
    """A segment 1 -> 2 with the given raw option bytes and a correct checksum over LOCAL4."""
    words = data_offset if data_offset is not None else 5 + (len(options) + 3) // 4
    options += bytes(-len(options) % 4)
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, words << 4, flags, 1000, 0, 0)
    body = header + options + payload
    pseudo = reference_pseudo(LOCAL4, LOCAL4, len(body))
    return body[:16] + reference_checksum(pseudo + body).to_bytes(2, "big") + body[18:]


def parse4(segment: bytes) -> TcpRepr:
    return TcpRepr.parse(segment, LOCAL4, LOCAL4)[0]


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        (b"", "truncated"),
        (segment_with(b"")[:19], "truncated"),
        (segment_with(b"", data_offset=4), "data offset 4"),
        (segment_with(b"", data_offset=0), "data offset 0"),
        (segment_with(b"", data_offset=6), "exceeds 20-byte"),
        (segment_with(b"\x01\x01\x01\x01", data_offset=15), "exceeds 24-byte"),
        (segment_with(b"\x02\x00\x05\xb4"), "kind 2 has length 0"),
        (segment_with(b"\x02\x01\x05\xb4"), "kind 2 has length 1"),
        (segment_with(b"\xfe\x00\x00\x00"), "kind 254 has length 0"),
        (segment_with(b"\x01\x01\x01\x02"), "kind 2 at offset 3 has no length byte"),
        (segment_with(b"\x01\x01\x01\xfe"), "kind 254 at offset 3 has no length byte"),
        (segment_with(b"\x02\x08\x05\xb4"), "overruns"),
        (segment_with(b"\xfe\x05\x00\x00"), "overruns"),
        (segment_with(b"\x01" * 36 + b"\x08\x0a\x00\x00"), "overruns"),
        (segment_with(b"\x02\x03\x05\x00"), "kind 2 has length 3, expected 4"),
        (segment_with(b"\x02\x05\x05\xb4\x00"), "kind 2 has length 5, expected 4"),
        (segment_with(b"\x03\x02\x01\x01"), "kind 3 has length 2, expected 3"),
        (segment_with(b"\x03\x04\x07\x00"), "kind 3 has length 4, expected 3"),
        (segment_with(b"\x04\x03\x00\x00"), "kind 4 has length 3, expected 2"),
        (segment_with(b"\x08\x08" + bytes(6)), "kind 8 has length 8, expected 10"),
        (segment_with(b"\x08\x0c" + bytes(10)), "kind 8 has length 12, expected 10"),
        (segment_with(b"\x05\x02\x01\x01"), "SACK option has length 2"),
        (segment_with(b"\x05\x0b" + bytes(9)), "SACK option has length 11"),
        (segment_with(b"\x05\x06" + bytes(4)), "SACK option has length 6"),
        (segment_with(b"\x05\x2a" + bytes(38)), "overruns"),  # five blocks cannot fit
        # A malformed option after a valid one still spoils the segment.
        (segment_with(b"\x02\x04\x05\xb4\x01\x01\x01\x03"), "kind 3 at offset 7"),
        (segment_with(b"\x02\x04\x05\xb4\x01\x01\x02\x04"), "offset 6 overruns"),
    ],
)
def test_malformed_segments_are_rejected(segment: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse4(segment)
    with pytest.raises(WireError, match=message):
        TcpPacket.new_checked(segment)


def test_too_long_segment_is_rejected() -> None:
    with pytest.raises(WireError, match="exceeds 65535"):
        TcpRepr.parse(segment_with(b"") + bytes(65516), LOCAL4, LOCAL4)
    with pytest.raises(ValueError, match="exceeds 65535"):
        _syn().emit(bytes(65516), LOCAL6, LOCAL6)
    assert len(_syn().emit(bytes(65515), LOCAL6, LOCAL6)) == 0xFFFF


def test_unknown_options_are_skipped() -> None:
    # Kind 30 (MPTCP, RFC 8684) and 34 (TFO cookie, RFC 7413) around an MSS.
    tcp = parse4(segment_with(b"\x1e\x04\x00\x01" + b"\x02\x04\x05\xb4" + b"\x22\x0a" + bytes(8)))
    assert tcp == _syn(mss=1460)
    view = TcpPacket.new_checked(segment_with(b"\x1e\x04\xab\xcd"))
    assert [(k, bytes(v)) for k, v in view.option_items()] == [(30, b"\xab\xcd")]


def test_nop_and_eol() -> None:
    assert parse4(segment_with(b"\x01" * 40)) == _syn()
    assert parse4(segment_with(b"\x00" * 40)) == _syn()
    # Anything after EOL is padding, even bytes that would be malformed as options.
    assert parse4(segment_with(b"\x02\x04\x05\xb4\x00\x02\x00\xff")) == _syn(mss=1460)
    assert parse4(segment_with(b"\x01\x02\x04\x05\xb4\x00")) == _syn(mss=1460)


def test_options_without_alignment_and_in_any_order() -> None:
    options = (
        b"\x03\x03\x0e"
        + b"\x04\x02"
        + b"\x08\x0a\x00\x00\x00\x09\x00\x00\x00\x0a"
        + b"\x02\x04\x01\x00"
    )
    tcp = parse4(segment_with(options))
    assert tcp == _syn(mss=256, window_scale=14, sack_permitted=True, timestamps=(9, 10))


@pytest.mark.parametrize("shift", [14, 15, 16, 100, 255])
def test_window_scale_above_14_is_clamped(shift: int) -> None:
    # RFC 7323 §2.3: "... MUST use 14 instead of the specified value".
    assert parse4(segment_with(bytes([3, 3, shift]))).window_scale == 14


def test_duplicate_option_last_wins() -> None:
    assert parse4(segment_with(b"\x02\x04\x05\xb4\x02\x04\x05\xdc")).mss == 1500


def test_ack_number_ignored_without_ack_flag() -> None:
    # segment_with stores ack number 4; with ACK clear the field carries no meaning.
    tcp = parse4(segment_with(b"", flags=0x02))
    assert tcp.ack is None
    assert parse4(segment_with(b"", flags=0x10)).ack == 4


def test_reserved_bits_are_ignored() -> None:
    segment = bytearray(segment_with(b""))
    segment[12] |= 0x0F
    segment[16:18] = b"\x00\x00"
    pseudo = reference_pseudo(LOCAL4, LOCAL4, len(segment))
    segment[16:18] = reference_checksum(pseudo + segment).to_bytes(2, "big")
    assert TcpPacket.new_checked(segment).reserved == 0x0F
    tcp = parse4(bytes(segment))
    assert tcp == _syn()
    assert tcp.emit(b"", LOCAL4, LOCAL4)[12] == 0x50


# --- Repr validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ack": None, "flags": TcpFlags.ACK}, "ack must be set"),
        ({"ack": 5, "flags": TcpFlags.SYN}, "ack must be set"),
        ({"ack": 1 << 32, "flags": TcpFlags.ACK}, "ack must be"),
        ({"src_port": 65536}, "src_port"),
        ({"dst_port": -1}, "dst_port"),
        ({"seq": 1 << 32}, "seq"),
        ({"window": 65536}, "window"),
        ({"urgent_pointer": 65536}, "urgent_pointer"),
        ({"flags": 256}, "flags"),
        ({"mss": 65536}, "mss"),
        ({"window_scale": 15}, "window_scale"),
        ({"window_scale": -1}, "window_scale"),
        ({"sack_blocks": ((1, 2),) * 5}, "at most 4 SACK blocks"),
        ({"sack_blocks": ((1, 1 << 32),)}, "SACK edges"),
        ({"timestamps": (-1, 0)}, "timestamps"),
        (
            {
                "mss": 1,
                "sack_permitted": True,
                "timestamps": (1, 2),
                "window_scale": 1,
                "sack_blocks": ((1, 2),) * 4,
            },
            "options need 56 bytes",
        ),
        ({"timestamps": (1, 2), "sack_blocks": ((1, 2),) * 4}, "options need 44 bytes"),
    ],
)
def test_repr_validation(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "src_port": 1,
        "dst_port": 2,
        "seq": 3,
        "ack": None,
        "flags": TcpFlags.SYN,
        "window": 0,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TcpRepr(**fields)  # type: ignore[arg-type]


def test_repr_normalises_containers() -> None:
    tcp = TcpRepr(1, 2, 3, None, 0x02, 0, sack_blocks=[[1, 2]], timestamps=[3, 4])  # type: ignore[arg-type]
    assert type(tcp.flags) is TcpFlags
    assert tcp.sack_blocks == ((1, 2),) and tcp.timestamps == (3, 4)
    assert tcp == TcpRepr(1, 2, 3, None, TcpFlags.SYN, 0, sack_blocks=((1, 2),), timestamps=(3, 4))
    hash(tcp)


# --- properties ----------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ipv4_addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv6_addresses = st.integers(0, 2**128 - 1).map(IPv6Address)


@st.composite
def tcp_reprs(draw: st.DrawFn) -> TcpRepr:
    """Any valid TcpRepr; SACK blocks are dropped until the options fit in 40 bytes."""
    flags = TcpFlags(draw(st.integers(0, 0xFF)))
    blocks = draw(st.lists(st.tuples(u32, u32), max_size=4))
    fields = {
        "src_port": draw(u16),
        "dst_port": draw(u16),
        "seq": draw(u32),
        "ack": draw(u32) if TcpFlags.ACK in flags else None,
        "flags": flags,
        "window": draw(u16),
        "urgent_pointer": draw(u16),
        "mss": draw(st.none() | u16),
        "window_scale": draw(st.none() | st.integers(0, 14)),
        "sack_permitted": draw(st.booleans()),
        "timestamps": draw(st.none() | st.tuples(u32, u32)),
    }
    while True:
        try:
            return TcpRepr(**fields, sack_blocks=tuple(blocks))  # type: ignore[arg-type]
        except ValueError:
            blocks.pop()


def check_round_trip(tcp: TcpRepr, payload: bytes, src: Address, dst: Address) -> None:
    segment = tcp.emit(payload, src, dst)
    assert len(segment) == tcp.header_len() + len(payload)
    assert tcp.header_len() % 4 == 0 and 20 <= tcp.header_len() <= 20 + MAX_OPTIONS_LEN
    assert reference_checksum(reference_pseudo(src, dst, len(segment)) + segment) == 0
    parsed, parsed_payload = TcpRepr.parse(segment, src, dst)
    assert parsed == tcp
    assert bytes(parsed_payload) == payload


@given(tcp_reprs(), st.binary(max_size=300), ipv4_addresses, ipv4_addresses)
def test_ipv4_parse_emit_round_trip(
    tcp: TcpRepr, payload: bytes, src: IPv4Address, dst: IPv4Address
) -> None:
    check_round_trip(tcp, payload, src, dst)


@given(tcp_reprs(), st.binary(max_size=300), ipv6_addresses, ipv6_addresses)
def test_ipv6_parse_emit_round_trip(
    tcp: TcpRepr, payload: bytes, src: IPv6Address, dst: IPv6Address
) -> None:
    check_round_trip(tcp, payload, src, dst)


def check_fuzz(data: bytes, verify: bool) -> None:
    try:
        tcp, payload = TcpRepr.parse(data, LOCAL4, LOCAL4, verify_checksum=verify)
    except WireError:
        return
    assert isinstance(tcp, TcpRepr)
    assert isinstance(payload, memoryview)
    again, again_payload = TcpRepr.parse(tcp.emit(payload, LOCAL4, LOCAL4), LOCAL4, LOCAL4)
    assert again == tcp
    assert bytes(again_payload) == bytes(payload)


@given(st.binary(max_size=120), st.booleans())
@example(segment_with(b"\x02\x04\x05\xb4", payload=b"x"), True)
@example(captured(V4_SACK_TWO)[0], True)
def test_random_bytes_parse_or_raise_wire_error(data: bytes, verify: bool) -> None:
    check_fuzz(data, verify)


@given(
    st.integers(0, 15),
    st.integers(0, 0xFF),
    st.binary(max_size=40),
    st.binary(max_size=20),
)
def test_random_option_areas_parse_or_raise_wire_error(
    data_offset: int, flags: int, options: bytes, payload: bytes
) -> None:
    # A header with a correct checksum, so the random option bytes are what gets judged.
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, data_offset << 4, flags, 5, 0, 6)
    body = header + options + payload
    pseudo = reference_pseudo(LOCAL4, LOCAL4, len(body))
    body = body[:16] + reference_checksum(pseudo + body).to_bytes(2, "big") + body[18:]
    check_fuzz(body, True)


# --- sequence numbers ----------------------------------------------------------------------


def test_sequence_wraparound_examples() -> None:
    top = SEQ_MODULUS - 1
    assert seq_add(top, 1) == 0
    assert seq_add(0, -1) == top
    assert seq_add(5, SEQ_MODULUS) == 5
    assert seq_sub(0, top) == 1 and seq_sub(top, 0) == -1
    assert seq_lt(top, 0) and seq_gt(0, top)
    assert seq_le(top, 0) and seq_ge(0, top)
    assert not seq_lt(0, top) and not seq_gt(top, 0)
    assert seq_le(7, 7) and seq_ge(7, 7) and not seq_lt(7, 7) and not seq_gt(7, 7)
    # Exactly half the circle apart: neither comes first (RFC 1982 §3.2: undefined).
    for a in (0, 1, top):
        b = seq_add(a, 1 << 31)
        assert not (seq_lt(a, b) or seq_gt(a, b) or seq_le(a, b) or seq_ge(a, b))
        assert seq_sub(b, a) == seq_sub(a, b) == -(1 << 31)


@given(u32, st.integers(-(2**31) + 1, 2**31 - 1))
def test_sequence_helpers_match_unwrapped_model(a: int, delta: int) -> None:
    # Model: the sequence space unwrapped to plain integers, where b really is a + delta.
    b = (a + delta) % SEQ_MODULUS
    assert seq_add(a, delta) == b
    assert seq_sub(b, a) == delta
    assert seq_sub(a, b) == -delta
    assert seq_lt(a, b) == (delta > 0) == seq_gt(b, a)
    assert seq_le(a, b) == (delta >= 0) == seq_ge(b, a)
    assert seq_gt(a, b) == (delta < 0)
    assert seq_ge(a, b) == (delta <= 0)


@given(u32, st.lists(st.integers(0, 2**31 - 1), min_size=2, max_size=20))
def test_sequence_order_matches_model_across_wrap(base: int, offsets: list[int]) -> None:
    # Points within half the circle of each other sort by seq_lt as their unwrapped values do.
    offsets = [o % (2**30) for o in offsets]
    wrapped = [(base + o) % SEQ_MODULUS for o in offsets]
    for x, wx in zip(offsets, wrapped):
        for y, wy in zip(offsets, wrapped):
            assert seq_lt(wx, wy) == (x < y)
            assert seq_le(wx, wy) == (x <= y)
            assert seq_sub(wy, wx) == y - x
