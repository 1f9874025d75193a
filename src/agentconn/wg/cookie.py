"""mac1, mac2, cookie replies and the handshake rate limiter (whitepaper §5.4.4, §5.4.7; spec §5).

Theory of operation
-------------------
Every handshake message carries ``mac1 = MAC(HASH(LABEL_MAC1 || P), msg[:off_mac1])``, keyed by
the static public key ``P`` of its *receiver*, so a responder can drop junk without doing any
Curve25519 work. Under load, the receiver also wants ``mac2 = MAC(cookie, msg[:off_mac2])``,
where ``cookie = MAC(secret, source address)`` proves the sender can receive at that address. A
sender without a valid cookie gets a cookie reply instead of a handshake; it stores the cookie
and puts it into the mac2 of its *next* (re)transmission.

- :class:`CookieGenerator` is the sender side, one per peer: fills mac1/mac2 of outgoing
  initiations and responses, and consumes cookie replies from that peer.
- :class:`CookieChecker` is the receiver side, one per device: checks mac1 and mac2 of incoming
  handshake messages and builds cookie replies. Its ``secret`` rotates every
  ``COOKIE_REFRESH_TIME`` (120 s), at the first reply after it expired.
- :class:`RateLimiter` limits handshakes per source IP once mac2 is valid under load.

Everything is sans-IO: ``now`` is monotonic time in seconds; randomness is injectable.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from _wgcore.cookie import CookieGate

from agentconn.errors import InvalidKeyError
from agentconn.wg.constants import (
    COOKIE_NONCE_SIZE,
    COOKIE_REFRESH_TIME,
    KEY_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    OFFSET_INITIATION_MAC1,
    OFFSET_INITIATION_MAC2,
    OFFSET_INITIATION_SENDER,
    OFFSET_RESPONSE_MAC1,
    OFFSET_RESPONSE_MAC2,
    OFFSET_RESPONSE_SENDER,
    RATE_LIMITER_GC_TIME,
    RATE_LIMITER_PACKETS_BURSTABLE,
    RATE_LIMITER_PACKETS_PER_SECOND,
)
from agentconn.wg.crypto import Buffer, hash_, mac, xaead_decrypt
from agentconn.wg.messages import CookieReply, MessageError, message_type

__all__ = ["CookieChecker", "CookieGenerator", "RateLimiter"]

_ZERO_MAC = bytes(MAC_SIZE)

# (mac1 offset, mac2 offset, sender index offset) per handshake message type, spec §3.1/§3.2.
_LAYOUT: dict[int, tuple[int, int, int]] = {
    MESSAGE_INITIATION: (OFFSET_INITIATION_MAC1, OFFSET_INITIATION_MAC2, OFFSET_INITIATION_SENDER),
    MESSAGE_RESPONSE: (OFFSET_RESPONSE_MAC1, OFFSET_RESPONSE_MAC2, OFFSET_RESPONSE_SENDER),
}


def _layout(message: Buffer) -> tuple[int, int, int] | None:
    kind = message_type(message)
    return None if kind is None else _LAYOUT.get(kind)


def _require_layout(message: Buffer) -> tuple[int, int, int]:
    layout = _layout(message)
    if layout is None:
        raise MessageError(
            f"expected a handshake initiation (148 bytes) or response (92 bytes), "
            f"got {len(message)} bytes starting {bytes(message[:4]).hex() or '(empty)'}"
        )
    return layout


def _check_public(public: bytes, what: str) -> bytes:
    if len(public) != KEY_SIZE:
        raise InvalidKeyError(f"{what} must be {KEY_SIZE} bytes, got {len(public)}")
    return bytes(public)


class CookieGenerator:
    """Sender side of mac1/mac2 for the handshake messages we send to one peer (spec §5).

    ``peer_public`` is the peer's static public key: the receiver of our messages, whose
    ``mac1_key`` and ``cookie_key`` we use. Raises :class:`InvalidKeyError` if it is not 32 bytes.
    """

    def __init__(self, peer_public: bytes) -> None:
        peer_public = _check_public(peer_public, "peer public key")
        self._mac1_key = hash_(LABEL_MAC1 + peer_public)
        self._cookie_key = hash_(LABEL_COOKIE + peer_public)
        self._last_mac1: bytes | None = None
        self._cookie: bytes | None = None
        self._cookie_received_at = 0.0

    def add_macs(self, message: bytearray, now: float) -> None:
        """Fill mac1 and mac2 of an outgoing initiation or response in place.

        mac1 is always computed and remembered for a cookie reply to it. mac2 uses the stored
        cookie if it was received less than ``COOKIE_REFRESH_TIME`` (120 s) before ``now``;
        otherwise it is 16 zero bytes. Raises :class:`MessageError` if ``message`` is neither a
        148-byte initiation nor a 92-byte response.
        """
        off_mac1, off_mac2, _ = _require_layout(message)
        # mac1 := MAC(HASH(LABEL_MAC1 || S_peer^pub), msg[0:off_mac1])
        mac1 = mac(self._mac1_key, message[:off_mac1])
        message[off_mac1:off_mac2] = mac1
        self._last_mac1 = mac1
        # mac2 := MAC(cookie, msg[0:off_mac2]) if the cookie is fresh, else zeros
        if self._cookie is not None and now - self._cookie_received_at < COOKIE_REFRESH_TIME:
            message[off_mac2 : off_mac2 + MAC_SIZE] = mac(self._cookie, message[:off_mac2])
        else:
            message[off_mac2 : off_mac2 + MAC_SIZE] = _ZERO_MAC

    def consume_reply(self, reply: Buffer, now: float) -> bool:
        """Store the cookie of a cookie reply from this peer; ``True`` if it was authentic.

        Needs the mac1 of a message we sent (the reply's AD). Returns ``False`` and keeps the
        old cookie if ``reply`` is not a 64-byte cookie reply, we have sent nothing yet, or it
        does not decrypt. Mapping the receiver index to this peer is the caller's job. The
        reply never triggers a resend (spec §5).
        """
        if self._last_mac1 is None:
            return False
        try:
            msg = CookieReply.parse(reply)
        except MessageError:
            return False
        # cookie := XAEAD-DECRYPT(HASH(LABEL_COOKIE || S_peer^pub), nonce, enc, last mac1)
        cookie = xaead_decrypt(self._cookie_key, msg.nonce, msg.encrypted_cookie, self._last_mac1)
        if cookie is None:
            return False
        self._cookie = cookie
        self._cookie_received_at = now
        return True


class CookieChecker:
    """Receiver side of mac1/mac2 for the whole device (spec §5).

    ``own_public`` is our static public key. ``random(n)`` supplies the cookie secret and reply
    nonces (``os.urandom`` by default). The secret starts expired, so the first
    :meth:`create_reply` draws one; :meth:`set_secret` injects one for test vectors.
    """

    def __init__(self, own_public: bytes, *, random: Callable[[int], bytes] = os.urandom) -> None:
        own_public = _check_public(own_public, "own public key")
        # The per-message work (mac1, mac2, the reply's AEAD) runs in C: _wgcore.cookie.
        self._gate = CookieGate(own_public)
        self._random = random
        self._secret = bytes(KEY_SIZE)
        self._secret_born_at: float | None = None

    def set_secret(self, secret: bytes, born_at: float) -> None:
        """Replace the 32-byte cookie secret, as if drawn at monotonic time ``born_at``.

        Meant for test vectors. Raises ``ValueError`` if ``secret`` is not 32 bytes.
        """
        if len(secret) != KEY_SIZE:
            raise ValueError(f"cookie secret must be {KEY_SIZE} bytes, got {len(secret)}")
        self._secret = bytes(secret)
        self._secret_born_at = born_at
        self._gate.set_secret(self._secret)

    def _secret_expired(self, now: float) -> bool:
        # wireguard-go cookie.go: the secret is stale once older than CookieRefreshTime.
        born = self._secret_born_at
        return born is None or now - born > COOKIE_REFRESH_TIME

    def screen(self, message: Buffer) -> int:
        """One C call for the receive path: the message's type (1, 2, 3) when its type,
        reserved bytes and length are right and, for an initiation (1) or response (2), its mac1
        is valid; ``-type`` for an initiation or response with a wrong mac1; 0 otherwise."""
        return int(self._gate.screen(message))

    def check_mac1(self, message: Buffer) -> bool:
        """Return whether ``message`` (an initiation or response) carries a valid mac1.

        Any other input, including a wrong size or type, returns ``False``. Never raises.
        """
        try:
            return self._gate.screen(message) in (MESSAGE_INITIATION, MESSAGE_RESPONSE)
        except (TypeError, ValueError, BufferError):
            return False

    def check_mac2(self, message: Buffer, source: bytes, now: float) -> bool:
        """Return whether ``message`` carries a valid mac2 for ``source`` at monotonic ``now``.

        ``source`` is the sender's address as bytes (any fixed encoding; it is local to us).
        A secret older than ``COOKIE_REFRESH_TIME`` makes every mac2 invalid. Call this only
        under load and after :meth:`check_mac1`. Never raises.
        """
        if self._secret_expired(now):
            return False
        try:
            return bool(self._gate.check_mac2(message, source))
        except (TypeError, ValueError, BufferError):
            return False

    def create_reply(self, message: Buffer, source: bytes, now: float) -> bytes:
        """Build the 64-byte cookie reply to a handshake message from ``source`` (spec §5).

        Rotates the secret first if it is older than ``COOKIE_REFRESH_TIME``. The reply's
        receiver index is the message's sender index and its AD the message's mac1. Raises
        :class:`MessageError` if ``message`` is neither a 148-byte initiation nor a 92-byte
        response.
        """
        _require_layout(message)
        if self._secret_expired(now):
            self.set_secret(self._random(KEY_SIZE), now)
        # msg.cookie := XAEAD(HASH(LABEL_COOKIE || S_own^pub), nonce, MAC(secret, source), mac1)
        return bytes(self._gate.reply(message, source, self._random(COOKIE_NONCE_SIZE)))


class _Bucket:
    __slots__ = ("last_at", "tokens")

    def __init__(self, tokens: int, last_at: float) -> None:
        self.tokens = tokens
        self.last_at = last_at


class RateLimiter:
    """Token bucket per source IP for handshake messages under load (spec §5).

    20 messages per second with a burst of 5 (wireguard-go ``ratelimiter.go``, kernel
    ``ratelimiter.c``). Tokens are counted in nanoseconds of credit: a message costs 50 ms, the
    bucket holds 250 ms. A new IP starts with ``max - cost`` and passes, so five messages in one
    instant pass and the sixth is refused (``tokens >= cost``, as the kernel compares). Entries
    idle for more than ``RATE_LIMITER_GC_TIME`` (1 s) are removed lazily, at most once a second.
    """

    _COST_NS = 1_000_000_000 // RATE_LIMITER_PACKETS_PER_SECOND
    _MAX_TOKENS_NS = _COST_NS * RATE_LIMITER_PACKETS_BURSTABLE

    def __init__(self) -> None:
        self._buckets: dict[bytes, _Bucket] = {}
        self._last_gc_at: float | None = None

    def allow(self, ip: bytes, now: float) -> bool:
        """Return whether a handshake message from address ``ip`` may be processed at ``now``.

        ``ip`` is the source address bytes (4 or 16; wireguard-go uses the full address).
        ``now`` is monotonic time in seconds.
        """
        self._collect_garbage(now)
        bucket = self._buckets.get(ip)
        if bucket is None:
            self._buckets[bytes(ip)] = _Bucket(self._MAX_TOKENS_NS - self._COST_NS, now)
            return True
        elapsed_ns = max(round((now - bucket.last_at) * 1e9), 0)
        bucket.tokens = min(bucket.tokens + elapsed_ns, self._MAX_TOKENS_NS)
        bucket.last_at = now
        if bucket.tokens >= self._COST_NS:
            bucket.tokens -= self._COST_NS
            return True
        return False

    def _collect_garbage(self, now: float) -> None:
        if self._last_gc_at is not None and now - self._last_gc_at < RATE_LIMITER_GC_TIME:
            return
        self._last_gc_at = now
        stale = [
            ip
            for ip, bucket in self._buckets.items()
            if now - bucket.last_at > RATE_LIMITER_GC_TIME
        ]
        for ip in stale:
            del self._buckets[ip]

    def __len__(self) -> int:
        """Return the number of source addresses currently tracked."""
        return len(self._buckets)
