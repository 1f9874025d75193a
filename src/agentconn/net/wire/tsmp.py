"""TSMP ping and pong: Tailscale's ICMP-like messages on IP protocol 99 (tailnet.md §4.3).

TSMP has no checksum of its own (WireGuard authenticates the packet). Layout after the IP
header, from tailscale ``net/packet/tsmp.go``:

- ping: ``'p'`` (0x70) || 8 opaque bytes — 9 bytes; longer payloads are accepted and the
  extra bytes ignored (``AsTSMPPing`` checks ``len >= 9``).
- pong: ``'o'`` (0x6f) || the ping's 8 bytes || PeerAPI port (u16 BE) — 11 bytes; a 9- or
  10-byte pong means port 0 (``AsTSMPPong`` reads the port only when ``len >= 11``).

Other TSMP types (``'!'`` rejected connection, ``'a'`` disco key advertisement, …) are
rejected as unsupported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agentconn.net.wire import WireError
from agentconn.net.wire.checksum import Buffer

__all__ = ["PROTOCOL_TSMP", "TsmpPing", "TsmpPong", "parse"]

PROTOCOL_TSMP = 99
"""IP protocol number TSMP uses ("any private encryption scheme", IANA)."""

TYPE_PING = 0x70  # 'p'
TYPE_PONG = 0x6F  # 'o'
DATA_LEN = 8
PING_LEN = 1 + DATA_LEN
PONG_LEN = 1 + DATA_LEN + 2


@dataclass(frozen=True, slots=True)
class TsmpPing:
    """A TSMP ping request carrying 8 opaque bytes that the pong copies back."""

    data8: bytes

    def __post_init__(self) -> None:
        if len(self.data8) != DATA_LEN:
            raise ValueError(f"TsmpPing: data8 must be 8 bytes, got {len(self.data8)}")

    def buffer_len(self) -> int:
        """Length of the emitted payload (9)."""
        return PING_LEN

    def emit(self) -> bytes:
        """The IP payload: ``'p'`` followed by the 8 data bytes."""
        return bytes((TYPE_PING,)) + self.data8


@dataclass(frozen=True, slots=True)
class TsmpPong:
    """A TSMP pong: the ping's 8 bytes and the responder's PeerAPI port (0 for Coder agents)."""

    data8: bytes
    peerapi_port: int = 0

    def __post_init__(self) -> None:
        if len(self.data8) != DATA_LEN:
            raise ValueError(f"TsmpPong: data8 must be 8 bytes, got {len(self.data8)}")
        if not 0 <= self.peerapi_port <= 0xFFFF:
            raise ValueError(f"TsmpPong: peerapi_port must be 0..65535, got {self.peerapi_port}")

    def buffer_len(self) -> int:
        """Length of the emitted payload (11)."""
        return PONG_LEN

    def emit(self) -> bytes:
        """The IP payload: ``'o'``, the 8 data bytes, the port as u16 big-endian."""
        return bytes((TYPE_PONG,)) + self.data8 + struct.pack("!H", self.peerapi_port)


def parse(payload: Buffer) -> TsmpPing | TsmpPong:
    """Parse the payload of an IP packet with protocol 99.

    Raises :class:`WireError` if it is shorter than 9 bytes or of a type other than ping or
    pong. Trailing bytes are ignored, as tailscale does.
    """
    if len(payload) < PING_LEN:
        raise WireError(f"TSMP: truncated ({len(payload)} < {PING_LEN} bytes)")
    kind = payload[0]
    data8 = bytes(payload[1:PING_LEN])
    if kind == TYPE_PING:
        return TsmpPing(data8)
    if kind == TYPE_PONG:
        port = int.from_bytes(payload[PING_LEN:PONG_LEN], "big") if len(payload) >= PONG_LEN else 0
        return TsmpPong(data8, port)
    raise WireError(f"TSMP: unsupported type {kind:#04x}")
