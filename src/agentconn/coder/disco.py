"""Disco (magicsock discovery) messages, and the responder a DERP-only client needs.

Spec: coder-control-plane.md §6; Go: ``disco/disco.go`` of coder/tailscale, receiver rules from
``wgengine/magicsock/magicsock.go handleDiscoMessage``.

Wire layout (the packet of a DERP SendPacket/RecvPacket, or a UDP datagram)::

    magic "TS💬" (6) | sender disco public key (32) | nonce (24) | NaCl box (16-byte tag + body)
    body = type (1) | version (1) | payload

The box is ``crypto_box`` from the sender's disco private key to the recipient's disco public
key. Coder pads Ping and Pong (version 1) to a 1230-byte payload so the sealed packet is 1310
bytes (coder/coder#15523); CallMeMaybe stays version 0, unpadded.

:class:`DiscoResponder` is a sans-IO core: DERP packets in (with the region they came from),
replies out through :meth:`DiscoResponder.packets_to_send`, events out through
:meth:`DiscoResponder.next_event`. Input from the network never raises: a packet that is not
from a known peer, does not open, or does not parse is dropped and counted in ``drops``.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter, deque
from dataclasses import dataclass

from nacl.bindings import crypto_box_afternm, crypto_box_beforenm, crypto_box_open_afternm
from nacl.exceptions import CryptoError

from ..errors import AgentConnError
from .keys import DiscoPrivate, DiscoPublic, NodePublic, derp_magic_endpoint

__all__ = [
    "CALL_ME_MAYBE",
    "MAGIC",
    "NONCE_LEN",
    "PADDED_PAYLOAD_LEN",
    "PING",
    "PONG",
    "CallMeMaybe",
    "CallMeMaybeReceived",
    "DiscoError",
    "DiscoMessage",
    "DiscoResponder",
    "Ping",
    "PingReceived",
    "Pong",
    "PongReceived",
    "emit_message",
    "looks_like_disco",
    "open_packet",
    "parse_message",
    "seal_packet",
]

#: ``disco.Magic``: "TS💬" = 54 53 f0 9f 92 ac.
MAGIC = "TS💬".encode()
KEY_LEN = 32
NONCE_LEN = 24
BOX_OVERHEAD = 16
HEADER_LEN = len(MAGIC) + KEY_LEN + NONCE_LEN  # 62: LooksLikeDiscoWrapper's minimum
#: ``paddedPayloadLen()`` with the default inner MTU: 1280 + 30 − (6 + 32 + 24 + 16 + 2).
PADDED_PAYLOAD_LEN = 1280 + 30 - (len(MAGIC) + KEY_LEN + NONCE_LEN + BOX_OVERHEAD + 2)

PING = 0x01  #: ``TypePing``
PONG = 0x02  #: ``TypePong``
CALL_ME_MAYBE = 0x03  #: ``TypeCallMeMaybe``
_V0 = 0
_V1 = 1  # Coder fork: padded Ping and Pong
_TXID_LEN = 12
_ENDPOINT_LEN = 16 + 2
_PONG_LEN = _TXID_LEN + _ENDPOINT_LEN

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]


class DiscoError(AgentConnError, ValueError):
    """A disco packet or message is malformed (raised by the parse helpers only)."""


@dataclass(frozen=True, slots=True)
class Ping:
    """``disco.Ping``: ``tx_id`` (12 random bytes) and the sender's node key (``None`` when
    absent, as old clients send it, or all zero)."""

    tx_id: bytes
    node_key: NodePublic | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """``disco.Pong``: the ``tx_id`` of the ping, and ``src``, where that ping came from
    (``127.3.3.40:<region>`` for a ping through DERP)."""

    tx_id: bytes
    src: Endpoint


@dataclass(frozen=True, slots=True)
class CallMeMaybe:
    """``disco.CallMeMaybe``: the sender's endpoints (empty means "forget my endpoints")."""

    endpoints: tuple[Endpoint, ...] = ()


DiscoMessage = Ping | Pong | CallMeMaybe


def _ip16(ip: IPAddress) -> bytes:
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + ip.packed  # As16: IPv4-mapped
    return ip.packed


def _unmap(raw: bytes) -> IPAddress:
    ip = ipaddress.IPv6Address(raw)
    return ip.ipv4_mapped or ip


def emit_message(msg: DiscoMessage) -> bytes:
    """The plaintext of ``msg`` (``AppendMarshal``): type, version, payload; Ping and Pong are
    padded with zeros to :data:`PADDED_PAYLOAD_LEN`. Raises :class:`ValueError` on a bad field."""
    if isinstance(msg, Ping):
        if len(msg.tx_id) != _TXID_LEN:
            raise ValueError(f"disco ping tx_id must be 12 bytes, got {len(msg.tx_id)}")
        body = bytearray(PADDED_PAYLOAD_LEN)
        body[:_TXID_LEN] = msg.tx_id
        if msg.node_key is not None and any(msg.node_key):
            body[_TXID_LEN:_TXID_LEN + KEY_LEN] = msg.node_key
        return bytes((PING, _V1)) + bytes(body)
    if isinstance(msg, Pong):
        if len(msg.tx_id) != _TXID_LEN:
            raise ValueError(f"disco pong tx_id must be 12 bytes, got {len(msg.tx_id)}")
        body = bytearray(PADDED_PAYLOAD_LEN)
        ip, port = msg.src
        body[:_PONG_LEN] = msg.tx_id + _ip16(ip) + port.to_bytes(2, "big")
        return bytes((PONG, _V1)) + bytes(body)
    out = bytearray((CALL_ME_MAYBE, _V0))
    for ip, port in msg.endpoints:
        out += _ip16(ip) + port.to_bytes(2, "big")
    return bytes(out)


def parse_message(plaintext: bytes) -> DiscoMessage:
    """Parse a box's plaintext (``disco.Parse``). Trailing bytes are ignored (any version);
    a CallMeMaybe with version ≠ 0 or a length not a multiple of 18 parses as empty.
    Raises :class:`DiscoError` for a short message or an unknown type."""
    if len(plaintext) < 2:
        raise DiscoError("short message")
    mtype, version, p = plaintext[0], plaintext[1], plaintext[2:]
    if mtype == PING:
        if len(p) < _TXID_LEN:
            raise DiscoError("short message")
        key_bytes = p[_TXID_LEN:_TXID_LEN + KEY_LEN]
        node_key = NodePublic(key_bytes) if len(key_bytes) == KEY_LEN and any(key_bytes) else None
        return Ping(bytes(p[:_TXID_LEN]), node_key)
    if mtype == PONG:
        if len(p) < _PONG_LEN:
            raise DiscoError("short message")
        ip = _unmap(bytes(p[_TXID_LEN:_TXID_LEN + 16]))
        port = int.from_bytes(p[_TXID_LEN + 16:_PONG_LEN], "big")
        return Pong(bytes(p[:_TXID_LEN]), (ip, port))
    if mtype == CALL_ME_MAYBE:
        if version != _V0 or not p or len(p) % _ENDPOINT_LEN:
            return CallMeMaybe()
        eps = tuple(
            (_unmap(bytes(p[i:i + 16])), int.from_bytes(p[i + 16:i + 18], "big"))
            for i in range(0, len(p), _ENDPOINT_LEN)
        )
        return CallMeMaybe(eps)
    raise DiscoError(f"unknown message type 0x{mtype:02x}")


def looks_like_disco(packet: bytes | bytearray | memoryview) -> bool:
    """``LooksLikeDiscoWrapper``: at least 62 bytes and starts with the disco magic."""
    return len(packet) >= HEADER_LEN and bytes(packet[:len(MAGIC)]) == MAGIC


def _shared_key(private: DiscoPrivate, peer: DiscoPublic) -> bytes:
    return crypto_box_beforenm(bytes(peer), private.raw)  # box.Precompute(peer, own)


def seal_packet(
    private: DiscoPrivate, peer: DiscoPublic, msg: DiscoMessage, *, nonce: bytes | None = None
) -> bytes:
    """A whole disco packet from ``private`` to ``peer``: magic, our disco public key, a
    random (or the given 24-byte) nonce, and the box of :func:`emit_message`."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"disco nonce must be 24 bytes, got {len(nonce)}")
    box = crypto_box_afternm(emit_message(msg), nonce, _shared_key(private, peer))
    return MAGIC + bytes(private.public) + nonce + box


def open_packet(private: DiscoPrivate, packet: bytes) -> tuple[DiscoPublic, DiscoMessage]:
    """Open a disco packet addressed to ``private``: (sender disco key, message).

    Raises :class:`DiscoError` if it is not disco-looking, the box does not open, or the
    plaintext does not parse."""
    if not looks_like_disco(packet):
        raise DiscoError("not a disco packet")
    sender = DiscoPublic(packet[len(MAGIC):len(MAGIC) + KEY_LEN])
    nonce = bytes(packet[len(MAGIC) + KEY_LEN:HEADER_LEN])
    try:
        plain = crypto_box_open_afternm(bytes(packet[HEADER_LEN:]), nonce, _shared_key(private, sender))
    except CryptoError:
        raise DiscoError(f"box from {sender} does not open") from None
    return sender, parse_message(plain)


# ----- events of the responder ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A peer disco-pinged us over DERP region ``region_id``; a Pong was queued."""

    peer: DiscoPublic
    node_key: NodePublic
    region_id: int
    tx_id: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A Pong answered one of our pings: ``latency`` seconds after we sent it; ``src`` is
    where the peer saw our ping come from."""

    peer: DiscoPublic
    node_key: NodePublic
    region_id: int
    tx_id: bytes
    src: Endpoint
    latency: float


@dataclass(frozen=True, slots=True)
class CallMeMaybeReceived:
    """A peer offered UDP endpoints (a DERP-only client ignores them, §6.4)."""

    peer: DiscoPublic
    node_key: NodePublic
    endpoints: tuple[Endpoint, ...]


DiscoEvent = PingReceived | PongReceived | CallMeMaybeReceived

#: ``pingTimeoutDuration``: an outstanding ping is forgotten after this long (§6.4).
PING_TIMEOUT = 5.0


class DiscoResponder:
    """Answers disco Pings that arrive over DERP, as a DERP-only client must (§6.3, §6.4).

    Register the peers we may talk to with :meth:`add_peer` (disco key → node key, from the
    coordinator's node updates). Feed every DERP packet with :meth:`receive_derp_packet`;
    it returns False for non-disco packets (hand those to WireGuard) and True when it consumed
    the packet. Send what :meth:`packets_to_send` returns as DERP SendPacket frames to
    ``dst`` on region ``region_id`` (the region the ping came from). :meth:`ping` disco-pings a
    peer over DERP, which makes an agent treat our DERP region as a candidate path.

    Drop reasons counted in ``drops``: ``unknown_peer``, ``node_key_mismatch``, ``bad_box``,
    ``bad_message``, ``unsolicited_pong``.
    """

    def __init__(self, private: DiscoPrivate, node_key: NodePublic) -> None:
        self.private = private
        self.public = private.public
        self.node_key = node_key
        self._peers: dict[DiscoPublic, NodePublic] = {}
        self._shared: dict[DiscoPublic, bytes] = {}
        self._out: deque[tuple[int, NodePublic, bytes]] = deque()
        self._events: deque[DiscoEvent] = deque()
        self._pings: dict[bytes, tuple[DiscoPublic, float]] = {}
        self.drops: Counter[str] = Counter()
        self.received = 0

    def add_peer(self, disco_key: DiscoPublic, node_key: NodePublic) -> None:
        """Trust disco messages from ``disco_key`` arriving from DERP source ``node_key``."""
        self._peers[DiscoPublic(disco_key)] = NodePublic(node_key)

    def remove_peer(self, disco_key: DiscoPublic) -> None:
        """Forget a peer (no-op if unknown)."""
        self._peers.pop(disco_key, None)
        self._shared.pop(disco_key, None)

    def _key(self, peer: DiscoPublic) -> bytes:
        key = self._shared.get(peer)
        if key is None:
            key = self._shared[peer] = _shared_key(self.private, peer)
        return key

    def _seal(self, peer: DiscoPublic, msg: DiscoMessage) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return MAGIC + bytes(self.public) + nonce + crypto_box_afternm(
            emit_message(msg), nonce, self._key(peer)
        )

    def receive_derp_packet(
        self, src: NodePublic, data: bytes, region_id: int, now: float
    ) -> bool:
        """Handle a packet received from DERP node key ``src`` on region ``region_id``.

        Returns False when ``data`` is not disco-looking (it is WireGuard); True otherwise,
        whether it was answered or dropped. Never raises on bad input.
        """
        if not looks_like_disco(data):
            return False
        self.received += 1
        sender = DiscoPublic(data[len(MAGIC):len(MAGIC) + KEY_LEN])
        expected = self._peers.get(sender)
        if expected is None:
            self.drops["unknown_peer"] += 1
            return True
        if expected != src:
            self.drops["node_key_mismatch"] += 1
            return True
        nonce = bytes(data[len(MAGIC) + KEY_LEN:HEADER_LEN])
        try:
            plain = crypto_box_open_afternm(bytes(data[HEADER_LEN:]), nonce, self._key(sender))
        except CryptoError:
            self.drops["bad_box"] += 1
            return True
        try:
            msg = parse_message(plain)
        except DiscoError:
            self.drops["bad_message"] += 1
            return True
        if isinstance(msg, Ping):
            # Reply over DERP to the sending node; Src = the DERP magic address (§6.3).
            pong = Pong(msg.tx_id, derp_magic_endpoint(region_id))
            self._out.append((region_id, src, self._seal(sender, pong)))
            self._events.append(PingReceived(sender, src, region_id, msg.tx_id))
        elif isinstance(msg, Pong):
            sent = self._pings.pop(msg.tx_id, None)
            if sent is None or sent[0] != sender:
                self.drops["unsolicited_pong"] += 1
                return True
            self._events.append(
                PongReceived(sender, src, region_id, msg.tx_id, msg.src, now - sent[1])
            )
        else:
            self._events.append(CallMeMaybeReceived(sender, src, msg.endpoints))
        return True

    def ping(self, peer: DiscoPublic, region_id: int, now: float) -> bytes:
        """Queue a disco Ping (carrying our node key) to a registered ``peer`` over DERP
        region ``region_id``; returns its tx id. Raises :class:`KeyError` for an unknown peer."""
        node_key = self._peers[peer]
        tx_id = os.urandom(_TXID_LEN)
        self._pings[tx_id] = (peer, now)
        self._out.append((region_id, node_key, self._seal(peer, Ping(tx_id, self.node_key))))
        return tx_id

    def handle_timer(self, now: float) -> None:
        """Forget pings older than :data:`PING_TIMEOUT`."""
        for tx_id, (_, sent_at) in list(self._pings.items()):
            if now - sent_at >= PING_TIMEOUT:
                del self._pings[tx_id]

    def get_timer(self) -> float | None:
        """When the oldest outstanding ping expires (``None`` without one)."""
        if not self._pings:
            return None
        return min(sent_at for _, sent_at in self._pings.values()) + PING_TIMEOUT

    def packets_to_send(self) -> list[tuple[int, NodePublic, bytes]]:
        """Drain the replies: ``(region_id, destination node key, packet)`` each."""
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> DiscoEvent | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None
