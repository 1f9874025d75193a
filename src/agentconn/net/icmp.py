"""Echo logic on whole IP packets, sans-IO: answering pings and measuring our own.

Two pieces, both bytes in, bytes out, with time passed in as ``now`` (STYLE §3):

- :func:`answer` turns an ICMPv4/ICMPv6 echo request or a TSMP ping addressed to us into the
  reply packet. Coder clients wait for a TSMP pong before every connection
  (``AwaitReachable``, tailnet.md §4.1), so an agent must answer TSMP.
- :class:`Pinger` builds echo requests (ICMP or TSMP) and matches the replies to them,
  giving the round-trip time. A reply matches only an outstanding request of the same
  family and kind, with the same identifier and sequence number (ICMP) or data bytes (TSMP),
  coming from the address the request went to and addressed to the address it came from.

Malformed input is never raised: both functions return ``None`` for anything they do not
handle (STYLE §7).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, TypeAlias

from agentconn.net.wire import WireError, tsmp
from agentconn.net.wire.checksum import Buffer
from agentconn.net.wire.icmp import PROTOCOL_ICMPV4, PROTOCOL_ICMPV6, EchoRepr
from agentconn.net.wire.ipv4 import Ipv4Repr
from agentconn.net.wire.ipv6 import Ipv6Repr

__all__ = ["REPLY_HOP_LIMIT", "Pinger", "answer"]

Address: TypeAlias = IPv4Address | IPv6Address
IpRepr: TypeAlias = Ipv4Repr | Ipv6Repr

REPLY_HOP_LIMIT = 64
"""TTL / hop limit of the packets we originate; tailscale's TSMP pong uses 64 too."""


def _parse_ip(packet: Buffer) -> tuple[IpRepr, memoryview]:
    """Parse an IPv4 or IPv6 packet by its version nibble; raise :class:`WireError` otherwise."""
    if not packet:
        raise WireError("IP: empty packet")
    version = packet[0] >> 4
    if version == 4:
        return Ipv4Repr.parse(packet)
    if version == 6:
        return Ipv6Repr.parse(packet)
    raise WireError(f"IP: unknown version {version}")


def _protocol(ip: IpRepr) -> int:
    return ip.protocol if isinstance(ip, Ipv4Repr) else ip.next_header


def _icmp_protocol(version: int) -> int:
    return PROTOCOL_ICMPV4 if version == 4 else PROTOCOL_ICMPV6


def _emit_ip(src: Address, dst: Address, protocol: int, payload: bytes) -> bytes:
    """Wrap *payload* in an IP header from *src* to *dst* with our hop limit."""
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return Ipv4Repr(src, dst, protocol, len(payload), ttl=REPLY_HOP_LIMIT).emit(payload)
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return Ipv6Repr(src, dst, protocol, len(payload), hop_limit=REPLY_HOP_LIMIT).emit(payload)
    raise ValueError(f"mixed address families: {src} and {dst}")


def answer(packet: Buffer, local_addresses: Container[Address]) -> bytes | None:
    """Return the reply to an echo request addressed to one of *local_addresses*, or ``None``.

    Handles ICMPv4 echo requests (RFC 792), ICMPv6 echo requests (RFC 4443 §4.2) and TSMP
    pings (tailnet.md §4.3). The reply swaps source and destination, uses TTL/hop limit 64,
    echoes the identifier, sequence number and data (ICMP) or answers ``'o'`` + the ping's 8
    bytes + PeerAPI port 0 (TSMP). Anything else — another protocol, a malformed packet, a
    packet for another address, or one from a multicast or unspecified source — gives
    ``None``. Never raises on packet contents.
    """
    try:
        ip, payload = _parse_ip(packet)
    except WireError:
        return None
    if ip.dst not in local_addresses or ip.src.is_multicast or ip.src.is_unspecified:
        return None
    protocol = _protocol(ip)
    if protocol == _icmp_protocol(ip.src.version):
        try:
            echo = EchoRepr.parse(payload, ip.src, ip.dst)
        except WireError:
            return None
        if echo.kind != "request":
            return None
        reply = EchoRepr("reply", echo.ident, echo.seq, echo.data).emit(ip.dst, ip.src)
    elif protocol == tsmp.PROTOCOL_TSMP:
        try:
            message = tsmp.parse(payload)
        except WireError:
            return None
        if not isinstance(message, tsmp.TsmpPing):
            return None
        reply = tsmp.TsmpPong(message.data8, 0).emit()
    else:
        return None
    return _emit_ip(ip.dst, ip.src, protocol, reply)


@dataclass(frozen=True, slots=True)
class _Outstanding:
    """A request waiting for its reply."""

    token: int
    sent_at: float
    src: Address
    dst: Address
    data: bytes  # ICMP: the echo data the reply must carry back; TSMP: unused (in the key)


# ("icmp", IP version, ident, seq) or ("tsmp", IP version, data8)
_Key: TypeAlias = tuple[str, int, int, int] | tuple[str, int, bytes]


class Pinger:
    """Builds echo requests and matches their replies to measure round-trip times.

    Call :meth:`request` to get a packet to send into the tunnel, feed every received IP
    packet to :meth:`receive`, and call :meth:`expire` periodically to forget requests
    whose replies never came. *random_bytes* supplies randomness (``os.urandom`` by
    default; pass a seeded source in tests). Times are ``now`` floats in seconds.
    """

    __slots__ = ("_ident", "_next_token", "_outstanding", "_random_bytes", "_seq")

    def __init__(self, *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._random_bytes = random_bytes
        self._ident = int.from_bytes(random_bytes(2), "big")
        self._seq = 0
        self._next_token = 1
        self._outstanding: dict[_Key, _Outstanding] = {}

    @property
    def ident(self) -> int:
        """The ICMP identifier of this pinger's echo requests (random per pinger)."""
        return self._ident

    def __len__(self) -> int:
        """Number of requests still waiting for a reply."""
        return len(self._outstanding)

    def request(
        self,
        src: Address,
        dst: Address,
        *,
        kind: Literal["icmp", "tsmp"] = "icmp",
        now: float,
        payload_size: int = 0,
    ) -> tuple[int, bytes]:
        """Build an echo request from *src* to *dst*; return ``(token, ip_packet)``.

        ``kind="icmp"`` sends an ICMP echo request with this pinger's identifier, the next
        sequence number and *payload_size* random data bytes. ``kind="tsmp"`` sends a TSMP
        ping with 8 random bytes followed by *payload_size* zero bytes of padding (which
        responders ignore). The token identifies the request in :meth:`receive` and
        :meth:`expire`. Raises :class:`ValueError` for mixed address families, an unknown
        kind, or a payload too large for one IP packet.
        """
        if src.version != dst.version:
            raise ValueError(f"Pinger.request: mixed address families {src} and {dst}")
        if payload_size < 0:
            raise ValueError(f"Pinger.request: payload_size must be >= 0, got {payload_size}")
        token = self._next_token
        key: _Key
        if kind == "icmp":
            seq = self._seq
            data = self._random_bytes(payload_size)
            payload = EchoRepr("request", self._ident, seq, data).emit(src, dst)
            protocol = _icmp_protocol(src.version)
            key = ("icmp", src.version, self._ident, seq)
        elif kind == "tsmp":
            data = b""
            data8 = self._random_bytes(tsmp.DATA_LEN)
            payload = tsmp.TsmpPing(data8).emit() + bytes(payload_size)
            protocol = tsmp.PROTOCOL_TSMP
            key = ("tsmp", src.version, data8)
        else:
            raise ValueError(f"Pinger.request: kind must be 'icmp' or 'tsmp', got {kind!r}")
        packet = _emit_ip(src, dst, protocol, payload)
        if kind == "icmp":
            self._seq = (self._seq + 1) & 0xFFFF
        self._next_token += 1
        self._outstanding[key] = _Outstanding(token, now, src, dst, data)
        return token, packet

    def receive(self, packet: Buffer, now: float) -> tuple[int, float] | None:
        """Match *packet* against the outstanding requests.

        Returns ``(token, rtt)`` (seconds, never negative) for the first reply to a request,
        and forgets that request; returns ``None`` for anything else, including malformed
        packets, duplicates, and replies from the wrong address. Never raises on packet
        contents.
        """
        try:
            ip, payload = _parse_ip(packet)
            protocol = _protocol(ip)
            key: _Key
            echo_data = b""
            if protocol == _icmp_protocol(ip.src.version):
                echo = EchoRepr.parse(payload, ip.src, ip.dst)
                if echo.kind != "reply":
                    return None
                key = ("icmp", ip.src.version, echo.ident, echo.seq)
                echo_data = echo.data
            elif protocol == tsmp.PROTOCOL_TSMP:
                message = tsmp.parse(payload)
                if not isinstance(message, tsmp.TsmpPong):
                    return None
                key = ("tsmp", ip.src.version, message.data8)
            else:
                return None
        except WireError:
            return None
        entry = self._outstanding.get(key)
        if entry is None or entry.dst != ip.src or entry.src != ip.dst or entry.data != echo_data:
            return None
        del self._outstanding[key]
        return entry.token, max(0.0, now - entry.sent_at)

    def expire(self, now: float, timeout: float) -> list[int]:
        """Forget requests sent at least *timeout* seconds before *now*; return their tokens."""
        expired = [k for k, e in self._outstanding.items() if e.sent_at + timeout <= now]
        return [self._outstanding.pop(k).token for k in expired]
