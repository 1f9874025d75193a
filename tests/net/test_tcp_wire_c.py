"""The C TCP parser (_wgcore.tcpip.wire) against the pure-Python reference (net/wire/tcp.py).

``parse_segment`` runs the stack's own per-packet parse (``parse_ip`` then ``parse_tcp``) and
returns its fields in C's encodings: ``mss`` 0 and ``window_scale`` -1 for "absent", ``ack`` as
the raw field, ``flags`` the six RFC 9293 bits (ECE/CWR masked off).

Law 1 (agreement): every segment the reference emits from a TcpRepr (any flags, sequence and
  acknowledgment numbers, window, options MSS / window scale / SACK-permitted / SACK blocks /
  timestamps, payload), over IPv4 or IPv6, parses in C to exactly what the reference parses.
Law 2 (truncation): a segment cut inside its header (checksum made valid again, so only the
  length checks can catch it) is rejected by both.
Law 3 (corruption): a segment with any one byte changed is rejected by both (a one-byte change
  always breaks the RFC 1071 checksum); an IPv4 header with any one byte changed is not taken
  as TCP by either.
Law 4 (garbage, checksum valid): the C parser is never stricter than the reference: whatever
  the reference accepts, C accepts with the same header fields and payload. (It is more lenient
  on purpose in one case: a known option kind with an unexpected length is skipped by its length,
  as RFC 9293 §3.2 asks of options it "does not implement", where the reference rejects it.)
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from _wgcore.tcpip.wire import parse_segment
from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import checksum, pseudo_sum
from agentconn.net.wire.ipv4 import Ipv4Repr
from agentconn.net.wire.ipv6 import Ipv6Repr
from agentconn.net.wire.tcp import MAX_OPTIONS_LEN, PROTOCOL_TCP, TcpFlags, TcpRepr

Address = IPv4Address | IPv6Address

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
v4 = st.builds(IPv4Address, u32)
v6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
address_pairs = st.one_of(st.tuples(v4, v4), st.tuples(v6, v6))


def _options_fit(r: dict[str, Any]) -> bool:
    try:
        TcpRepr(**r)
    except ValueError:
        return False
    return True


@st.composite
def tcp_reprs(draw: st.DrawFn) -> TcpRepr:
    flags = TcpFlags(draw(st.integers(0, 0xFF)))
    fields: dict[str, Any] = draw(st.fixed_dictionaries({
        "src_port": u16, "dst_port": u16, "seq": u32, "window": u16, "urgent_pointer": u16,
        "mss": st.none() | u16,
        "window_scale": st.none() | st.integers(0, 14),
        "sack_permitted": st.booleans(),
        "sack_blocks": st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
        "timestamps": st.none() | st.tuples(u32, u32),
    }).filter(lambda r: _options_fit({**r, "ack": None, "flags": TcpFlags(0)})))
    ack = draw(u32) if TcpFlags.ACK in flags else None
    return TcpRepr(flags=flags, ack=ack, **fields)


def wrap(segment: bytes, src: Address, dst: Address) -> bytes:
    """The IP packet carrying `segment` (a valid IPv4 header checksum; no IPv6 one exists)."""
    if isinstance(src, IPv4Address):
        assert isinstance(dst, IPv4Address)
        return Ipv4Repr(src, dst, PROTOCOL_TCP, len(segment)).emit(segment)
    assert isinstance(dst, IPv6Address)
    return Ipv6Repr(src, dst, PROTOCOL_TCP, len(segment)).emit(segment)


def with_checksum(segment: bytes, src: Address, dst: Address) -> bytes:
    """`segment` with its checksum field (if it has one) made valid for these addresses."""
    if len(segment) < 18:
        return segment
    zeroed = segment[:16] + b"\0\0" + segment[18:]
    total = checksum(zeroed, pseudo_sum(src, dst, PROTOCOL_TCP, len(segment)))
    return segment[:16] + struct.pack("!H", total) + segment[18:]


def reference(segment: bytes, src: Address, dst: Address) -> tuple[TcpRepr, bytes] | None:
    try:
        r, payload = TcpRepr.parse(segment, src, dst)
    except WireError:
        return None
    return r, bytes(payload)


def c_fields(segment: bytes, r: TcpRepr, payload: bytes, src: Address,
             dst: Address) -> dict[str, Any]:
    """What parse_segment must return for `segment`, which the reference parsed to `r`
    (C's encodings; without the ACK flag the acknowledgment field is reported as sent)."""
    return {
        "family": 4 if isinstance(src, IPv4Address) else 6,
        "src": src.packed, "dst": dst.packed,
        "src_port": r.src_port, "dst_port": r.dst_port, "seq": r.seq,
        "ack": int.from_bytes(segment[8:12], "big") if r.ack is None else r.ack,
        "flags": int(r.flags) & 0x3F,
        "window": r.window,
        "mss": r.mss or 0,
        "window_scale": -1 if r.window_scale is None else r.window_scale,
        "sack_permitted": r.sack_permitted,
        "sack_blocks": r.sack_blocks,
        "timestamps": r.timestamps,
        "payload": payload,
    }


HEADER_FIELDS = ("family", "src", "dst", "src_port", "dst_port", "seq", "ack", "flags",
                 "window", "payload")


@settings(max_examples=400)
@given(r=tcp_reprs(), addresses=address_pairs, payload=st.binary(max_size=300))
def test_c_parser_agrees_with_reference(r: TcpRepr, addresses: tuple[Address, Address],
                                        payload: bytes) -> None:
    src, dst = addresses
    segment = r.emit(payload, src, dst)
    ref = reference(segment, src, dst)
    assert ref is not None and ref[0] == r          # the reference's own round trip
    assert parse_segment(wrap(segment, src, dst)) == c_fields(segment, *ref, src, dst)


@given(r=tcp_reprs(), addresses=address_pairs, payload=st.binary(max_size=64),
       data=st.data())
def test_truncated_header_rejected_by_both(r: TcpRepr, addresses: tuple[Address, Address],
                                           payload: bytes, data: st.DataObject) -> None:
    src, dst = addresses
    segment = r.emit(payload, src, dst)
    cut = with_checksum(segment[:data.draw(st.integers(0, r.header_len() - 1))], src, dst)
    assert reference(cut, src, dst) is None
    assert parse_segment(wrap(cut, src, dst)) is None


@given(r=tcp_reprs(), addresses=address_pairs, payload=st.binary(max_size=64),
       data=st.data())
def test_one_changed_byte_rejected_by_both(r: TcpRepr, addresses: tuple[Address, Address],
                                           payload: bytes, data: st.DataObject) -> None:
    src, dst = addresses
    segment = bytearray(r.emit(payload, src, dst))
    segment[data.draw(st.integers(0, len(segment) - 1))] ^= data.draw(st.integers(1, 0xFF))
    assert reference(bytes(segment), src, dst) is None
    assert parse_segment(wrap(bytes(segment), src, dst)) is None


@given(r=tcp_reprs(), addresses=st.tuples(v4, v4), data=st.data())
def test_ipv4_header_change_rejected_by_both(r: TcpRepr, addresses: tuple[Address, Address],
                                             data: st.DataObject) -> None:
    src, dst = addresses
    packet = bytearray(wrap(r.emit(b"x", src, dst), src, dst))
    packet[data.draw(st.integers(0, 19))] ^= data.draw(st.integers(1, 0xFF))
    try:
        Ipv4Repr.parse(packet)
    except WireError:
        pass
    else:
        raise AssertionError("the reference took a corrupted IPv4 header")
    assert parse_segment(bytes(packet)) is None


@st.composite
def garbage_segments(draw: st.DrawFn) -> bytes:
    """A 20-byte header of random fields whose data offset covers a random option area (or,
    sometimes, any data offset at all), then a random payload."""
    words = draw(st.integers(0, MAX_OPTIONS_LEN // 4))
    options = draw(st.binary(min_size=4 * words, max_size=4 * words))
    offset = draw(st.just(5 + words) | st.integers(0, 15))
    header = struct.pack("!HHIIBBHHH", draw(u16), draw(u16), draw(u32), draw(u32),
                         offset << 4 | draw(st.integers(0, 15)), draw(st.integers(0, 0xFF)),
                         draw(u16), 0, draw(u16))
    return header + options + draw(st.binary(max_size=32))


@settings(max_examples=400)
@given(raw=garbage_segments() | st.binary(max_size=80), addresses=address_pairs)
def test_c_parser_never_stricter_than_reference(raw: bytes,
                                                addresses: tuple[Address, Address]) -> None:
    src, dst = addresses
    segment = with_checksum(raw, src, dst)
    ref = reference(segment, src, dst)
    got = parse_segment(wrap(segment, src, dst))
    if ref is None:
        return                     # C may accept what the reference rejects (see Law 4)
    assert got is not None, ref
    expected = c_fields(segment, *ref, src, dst)
    assert {k: got[k] for k in HEADER_FIELDS} == {k: expected[k] for k in HEADER_FIELDS}
