"""The Noise_IKpsk2 handshake of WireGuard, transcribed from whitepaper §5.4.2-§5.4.5.

Theory of operation
-------------------
One :class:`Handshake` per peer holds the chaining key ``C``, the hash ``H`` and the ephemeral
keys of the handshake in flight. Its :class:`HandshakeState` names follow wireguard-go
(``handshakeState``)::

    ZEROED --create_initiation--> INITIATION_CREATED --consume_response--> RESPONSE_CONSUMED
    any    --accept_initiation--> INITIATION_CONSUMED --create_response--> RESPONSE_CREATED
    RESPONSE_CREATED | RESPONSE_CONSUMED --derive_keys--> ZEROED   (returns SessionKeys)
    any    --clear--> ZEROED

``create_initiation`` is allowed in every state: a retry or a new handshake replaces whatever
was in flight, with a new ephemeral and a new index (spec §4.6). ``accept_initiation`` likewise
overwrites a pending initiation of ours (simultaneous initiation; wireguard-go does the same).

An incoming initiation names its sender only inside the encrypted static, so consuming one is
device-level: :func:`consume_initiation` decrypts it with the local identity and looks up the
peer's precomputed static-static DH; the device then hands the :class:`ConsumedInitiation` to
that peer's :meth:`Handshake.accept_initiation`, which applies the replay and flood rules (spec
§4.2 steps 5-7) and only then commits it.

Invariants:

- a failed ``consume_*`` (bad AEAD tag, low-order key, wrong state or index) changes nothing;
- the greatest accepted timestamp and the time of the last accepted initiation survive
  ``derive_keys`` and ``clear`` (they are replay protection, not key material);
- nothing here checks mac1/mac2 (``cookie.py`` does, before) or reads a clock: ``now`` is a
  monotonic time and ``unix_time`` a wall-clock time, both in seconds, both passed in.

Each step below carries the whitepaper line it implements (as boringtun ``handshake.rs``);
"spec" refers to the project notes ``spec/wireguard.md`` §4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from agentconn.errors import AgentConnError, InvalidKeyError
from agentconn.wg.constants import (
    C0,
    H0,
    HANDSHAKE_INITIATION_RATE,
    KEY_SIZE,
    MAC_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    TIMESTAMP_SIZE,
)
from agentconn.wg.crypto import (
    Buffer,
    aead_decrypt,
    aead_encrypt,
    clamp,
    dh,
    dh_generate,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    public_key,
    tai64n,
)
from agentconn.wg.keys import StaticIdentity
from agentconn.wg.messages import Initiation, Response, message_type

__all__ = [
    "ConsumedInitiation",
    "Handshake",
    "HandshakeState",
    "HandshakeStateError",
    "SessionKeys",
    "consume_initiation",
]

_ZERO_KEY = bytes(KEY_SIZE)
_ZERO_MAC = bytes(MAC_SIZE)
_ZERO_TIMESTAMP = bytes(TIMESTAMP_SIZE)


class HandshakeState(Enum):
    """Where a peer's handshake stands (wireguard-go ``handshakeState``)."""

    ZEROED = "zeroed"
    INITIATION_CREATED = "initiation created"
    INITIATION_CONSUMED = "initiation consumed"
    RESPONSE_CREATED = "response created"
    RESPONSE_CONSUMED = "response consumed"


class HandshakeStateError(AgentConnError, RuntimeError):
    """A handshake method was called in a state that does not allow it (an API misuse)."""


@dataclass(frozen=True)
class SessionKeys:
    """Transport keys from a completed handshake (whitepaper §5.4.5; spec §4.5).

    ``send_key``/``receive_key``: 32-byte ChaCha20-Poly1305 keys. ``local_index``: our index,
    which the peer puts in the transport messages it sends us. ``remote_index``: the peer's
    index, which we put in ours. ``is_initiator``: whether we sent the initiation (only the
    initiator rekeys on time, spec §7.3).
    """

    send_key: bytes
    receive_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool

    def __repr__(self) -> str:
        return (
            f"SessionKeys(local_index={self.local_index:#010x}, "
            f"remote_index={self.remote_index:#010x}, is_initiator={self.is_initiator})"
        )


@dataclass(frozen=True)
class ConsumedInitiation:
    """An authenticated initiation, decrypted but not yet accepted (spec §4.2 steps 1-4).

    ``peer_public``: the initiator's static public key. ``timestamp``: its 12-byte TAI64N.
    ``sender_index``: its u32 index. ``remote_ephemeral``: its ephemeral public key.
    ``chaining_key``/``hash``: ``C`` and ``H`` after the message, to continue from.
    """

    peer_public: bytes
    timestamp: bytes
    sender_index: int
    remote_ephemeral: bytes
    chaining_key: bytes
    hash: bytes

    def __repr__(self) -> str:
        return (
            f"ConsumedInitiation(peer_public={self.peer_public.hex()}, "
            f"timestamp={self.timestamp.hex()}, sender_index={self.sender_index:#010x})"
        )


def consume_initiation(
    identity: StaticIdentity,
    message: Buffer,
    precomputed: Callable[[bytes], bytes | None],
) -> ConsumedInitiation | None:
    """Decrypt a handshake initiation addressed to ``identity`` (spec §4.2 steps 1-4).

    ``precomputed(peer_public)`` returns the precomputed static-static DH of a configured peer,
    or ``None`` if the peer is unknown. Returns ``None`` if the message is not a 148-byte
    initiation, its ephemeral is a low-order point, a decryption fails or the peer is unknown.
    Does not check mac1/mac2 (the cookie checker does, before) nor the replay and flood rules
    (:meth:`Handshake.accept_initiation` does, after). Never raises on network input.
    """
    if message_type(message) != MESSAGE_INITIATION:
        return None
    msg = Initiation.parse(message)
    # C_r := HASH(CONSTRUCTION); H_r := HASH(C_r || IDENTIFIER)   (C0, H0)
    # H_r := HASH(H_r || S_r^pub)
    hash_value = hash_(H0 + identity.public)
    # C_r := KDF1(C_r, msg.ephemeral)
    chaining_key = kdf1(C0, msg.ephemeral)
    # H_r := HASH(H_r || msg.ephemeral)
    hash_value = hash_(hash_value + msg.ephemeral)
    # (C_r, κ) := KDF2(C_r, DH(S_r^priv, msg.ephemeral))
    try:
        ephemeral_static = dh(identity.private, msg.ephemeral)
    except InvalidKeyError:
        return None
    chaining_key, key = kdf2(chaining_key, ephemeral_static)
    # S_i^pub := AEAD-DECRYPT(κ, 0, msg.static, H_r)
    peer_public = aead_decrypt(key, 0, msg.encrypted_static, hash_value)
    if peer_public is None:
        return None
    # H_r := HASH(H_r || msg.static)
    hash_value = hash_(hash_value + msg.encrypted_static)
    # spec §4.2 step 3: look the peer up by S_i^pub; unknown -> drop
    static_static = precomputed(peer_public)
    if static_static is None:
        return None
    # (C_r, κ) := KDF2(C_r, DH(S_r^priv, S_i^pub))   (precomputed)
    chaining_key, key = kdf2(chaining_key, static_static)
    # timestamp := AEAD-DECRYPT(κ, 0, msg.timestamp, H_r)
    timestamp = aead_decrypt(key, 0, msg.encrypted_timestamp, hash_value)
    if timestamp is None:
        return None
    # H_r := HASH(H_r || msg.timestamp)
    hash_value = hash_(hash_value + msg.encrypted_timestamp)
    return ConsumedInitiation(
        peer_public=peer_public,
        timestamp=timestamp,
        sender_index=msg.sender_index,
        remote_ephemeral=msg.ephemeral,
        chaining_key=chaining_key,
        hash=hash_value,
    )


class Handshake:
    """The handshake state of one peer: both roles, one message at a time (see module doc).

    ``state`` is a :class:`HandshakeState`. ``local_index`` is the index we put in our last
    handshake message; ``remote_index`` the peer's index from its last one. Both are meaningful
    only while ``state`` is not ``ZEROED``; :meth:`derive_keys` hands them to the keypair.
    """

    def __init__(
        self,
        identity: StaticIdentity,
        peer_public: bytes,
        preshared_key: bytes | None = None,
    ) -> None:
        """Prepare a handshake between ``identity`` and the peer with static key ``peer_public``.

        ``preshared_key`` is the 32-byte PSK ``Q``; ``None`` means 32 zero bytes. Raises
        :class:`InvalidKeyError` if a key has the wrong length or the static-static DH is all
        zeros (a low-order peer key: such a peer can never complete a handshake, spec §1).
        """
        if len(peer_public) != KEY_SIZE:
            raise InvalidKeyError(f"peer public key must be 32 bytes, got {len(peer_public)}")
        if preshared_key is not None and len(preshared_key) != KEY_SIZE:
            raise InvalidKeyError(f"preshared key must be 32 bytes, got {len(preshared_key)}")
        self.identity = identity
        self.peer_public = bytes(peer_public)
        self._preshared_key = _ZERO_KEY if preshared_key is None else bytes(preshared_key)
        # spec §1: DH(S_priv_local, S_pub_peer) is computed once, when the peer is configured.
        self._static_static = dh(identity.private, self.peer_public)
        # H := HASH(H0 || S_r^pub) when we initiate towards this peer; also fixed per peer.
        self._initiator_hash_base = hash_(H0 + self.peer_public)
        self.state = HandshakeState.ZEROED
        self.local_index = 0
        self.remote_index = 0
        self._chaining_key = _ZERO_KEY
        self._hash = _ZERO_KEY
        self._local_ephemeral = _ZERO_KEY
        self._remote_ephemeral = _ZERO_KEY
        self._greatest_timestamp = _ZERO_TIMESTAMP
        self._last_initiation_consumed_at: float | None = None

    @property
    def precomputed_static_static(self) -> bytes:
        """DH(our static private, peer static public); what :func:`consume_initiation` looks up."""
        return self._static_static

    @property
    def handshake_hash(self) -> bytes:
        """The current ``H`` (after message 2 this is the Noise handshake hash); zeros if ZEROED."""
        return self._hash

    # --- message 1 ------------------------------------------------------------------------------

    def create_initiation(
        self,
        sender_index: int,
        unix_time: float,
        *,
        ephemeral_private: bytes | None = None,
    ) -> bytearray:
        """Build a 148-byte handshake initiation (spec §4.1; whitepaper §5.4.2).

        ``sender_index`` is our fresh u32 index; ``unix_time`` the wall-clock time in seconds for
        the TAI64N timestamp. mac1 and mac2 are left zero for :class:`CookieGenerator` to fill.
        ``ephemeral_private`` fixes the ephemeral key for test vectors only. Any handshake in
        flight is replaced; the state becomes ``INITIATION_CREATED``.
        """
        # C_i := HASH(CONSTRUCTION); H_i := HASH(C_i || IDENTIFIER)   (C0, H0)
        # H_i := HASH(H_i || S_r^pub)
        hash_value = self._initiator_hash_base
        # (E_i^priv, E_i^pub) := DH-GENERATE()
        ephemeral = dh_generate() if ephemeral_private is None else clamp(ephemeral_private)
        ephemeral_public = public_key(ephemeral)
        # C_i := KDF1(C_i, E_i^pub)
        chaining_key = kdf1(C0, ephemeral_public)
        # msg.ephemeral := E_i^pub; H_i := HASH(H_i || msg.ephemeral)
        hash_value = hash_(hash_value + ephemeral_public)
        # (C_i, κ) := KDF2(C_i, DH(E_i^priv, S_r^pub))
        chaining_key, key = kdf2(chaining_key, dh(ephemeral, self.peer_public))
        # msg.static := AEAD(κ, 0, S_i^pub, H_i)
        encrypted_static = aead_encrypt(key, 0, self.identity.public, hash_value)
        # H_i := HASH(H_i || msg.static)
        hash_value = hash_(hash_value + encrypted_static)
        # (C_i, κ) := KDF2(C_i, DH(S_i^priv, S_r^pub))   (precomputed)
        chaining_key, key = kdf2(chaining_key, self._static_static)
        # msg.timestamp := AEAD(κ, 0, TIMESTAMP(), H_i)
        encrypted_timestamp = aead_encrypt(key, 0, tai64n(unix_time), hash_value)
        # H_i := HASH(H_i || msg.timestamp)
        hash_value = hash_(hash_value + encrypted_timestamp)
        # msg.sender := I_i
        message = Initiation(
            sender_index=sender_index,
            ephemeral=ephemeral_public,
            encrypted_static=encrypted_static,
            encrypted_timestamp=encrypted_timestamp,
            mac1=_ZERO_MAC,
            mac2=_ZERO_MAC,
        ).emit()
        # spec §4.1 step 8: keep C, H, E_i^priv and the index.
        self._chaining_key = chaining_key
        self._hash = hash_value
        self._local_ephemeral = ephemeral
        self._remote_ephemeral = _ZERO_KEY
        self.local_index = sender_index
        self.state = HandshakeState.INITIATION_CREATED
        return bytearray(message)

    def accept_initiation(self, consumed: ConsumedInitiation, now: float) -> bool:
        """Apply the replay and flood rules to a consumed initiation, then commit it.

        Spec §4.2 steps 5-7. ``now`` is monotonic time in seconds. Returns ``False`` (and
        changes nothing) if the initiation is from another peer, its timestamp is not strictly
        greater than the greatest accepted one, or the previous accepted initiation was less
        than ``HANDSHAKE_INITIATION_RATE`` (20 ms) ago. On success the state becomes
        ``INITIATION_CONSUMED`` and ``remote_index`` the initiator's index.
        """
        if consumed.peer_public != self.peer_public:
            return False
        # spec §4.2 step 5 (replay): timestamps compare bytewise, i.e. as big-endian numbers.
        if consumed.timestamp <= self._greatest_timestamp:
            return False
        # spec §4.2 step 6 (flood): at most one accepted initiation per 20 ms. wireguard-go and
        # the kernel also refuse at exactly 20 ms; with float clocks that instant is moot.
        last = self._last_initiation_consumed_at
        if last is not None and now - last < HANDSHAKE_INITIATION_RATE:
            return False
        # spec §4.2 step 7: commit.
        self._chaining_key = consumed.chaining_key
        self._hash = consumed.hash
        self._local_ephemeral = _ZERO_KEY
        self._remote_ephemeral = consumed.remote_ephemeral
        self.remote_index = consumed.sender_index
        self._greatest_timestamp = consumed.timestamp
        self._last_initiation_consumed_at = now
        self.state = HandshakeState.INITIATION_CONSUMED
        return True

    # --- message 2 ------------------------------------------------------------------------------

    def create_response(
        self, sender_index: int, *, ephemeral_private: bytes | None = None
    ) -> bytearray:
        """Build a 92-byte handshake response to the accepted initiation (spec §4.3).

        ``sender_index`` is our fresh u32 index. mac1 and mac2 are left zero. The state becomes
        ``RESPONSE_CREATED``; call :meth:`derive_keys` next. ``ephemeral_private`` is for test
        vectors only. Raises :class:`HandshakeStateError` unless the state is
        ``INITIATION_CONSUMED``.
        """
        self._require(HandshakeState.INITIATION_CONSUMED, "create_response")
        chaining_key, hash_value = self._chaining_key, self._hash
        # (E_r^priv, E_r^pub) := DH-GENERATE()
        ephemeral = dh_generate() if ephemeral_private is None else clamp(ephemeral_private)
        ephemeral_public = public_key(ephemeral)
        # C_r := KDF1(C_r, E_r^pub)
        chaining_key = kdf1(chaining_key, ephemeral_public)
        # msg.ephemeral := E_r^pub; H_r := HASH(H_r || msg.ephemeral)
        hash_value = hash_(hash_value + ephemeral_public)
        # C_r := KDF1(C_r, DH(E_r^priv, E_i^pub))
        chaining_key = kdf1(chaining_key, dh(ephemeral, self._remote_ephemeral))
        # C_r := KDF1(C_r, DH(E_r^priv, S_i^pub))
        chaining_key = kdf1(chaining_key, dh(ephemeral, self.peer_public))
        # (C_r, τ, κ) := KDF3(C_r, Q)
        chaining_key, tau, key = kdf3(chaining_key, self._preshared_key)
        # H_r := HASH(H_r || τ)
        hash_value = hash_(hash_value + tau)
        # msg.empty := AEAD(κ, 0, ε, H_r)
        encrypted_nothing = aead_encrypt(key, 0, b"", hash_value)
        # H_r := HASH(H_r || msg.empty)
        hash_value = hash_(hash_value + encrypted_nothing)
        # msg.sender := I_r; msg.receiver := I_i
        message = Response(
            sender_index=sender_index,
            receiver_index=self.remote_index,
            ephemeral=ephemeral_public,
            encrypted_nothing=encrypted_nothing,
            mac1=_ZERO_MAC,
            mac2=_ZERO_MAC,
        ).emit()
        self._chaining_key = chaining_key
        self._hash = hash_value
        self._local_ephemeral = ephemeral
        self.local_index = sender_index
        self.state = HandshakeState.RESPONSE_CREATED
        return bytearray(message)

    def consume_response(self, message: Buffer) -> bool:
        """Authenticate a handshake response to our initiation (spec §4.4).

        Returns ``False`` and changes nothing if ``message`` is not a 92-byte response, its
        receiver index is not ``local_index``, the state is not ``INITIATION_CREATED``, the
        responder's ephemeral is a low-order point or the empty AEAD does not open. On success
        the state becomes ``RESPONSE_CONSUMED``; call :meth:`derive_keys` next. mac1 is not
        checked here.
        """
        if message_type(message) != MESSAGE_RESPONSE:
            return False
        msg = Response.parse(message)
        if self.state is not HandshakeState.INITIATION_CREATED:
            return False
        if msg.receiver_index != self.local_index:
            return False
        chaining_key, hash_value = self._chaining_key, self._hash
        # C_i := KDF1(C_i, msg.ephemeral)
        chaining_key = kdf1(chaining_key, msg.ephemeral)
        # H_i := HASH(H_i || msg.ephemeral)
        hash_value = hash_(hash_value + msg.ephemeral)
        try:
            # C_i := KDF1(C_i, DH(E_i^priv, msg.ephemeral))
            chaining_key = kdf1(chaining_key, dh(self._local_ephemeral, msg.ephemeral))
            # C_i := KDF1(C_i, DH(S_i^priv, msg.ephemeral))
            chaining_key = kdf1(chaining_key, dh(self.identity.private, msg.ephemeral))
        except InvalidKeyError:
            return False
        # (C_i, τ, κ) := KDF3(C_i, Q)
        chaining_key, tau, key = kdf3(chaining_key, self._preshared_key)
        # H_i := HASH(H_i || τ)
        hash_value = hash_(hash_value + tau)
        # AEAD-DECRYPT(κ, 0, msg.empty, H_i) must open to ε
        if aead_decrypt(key, 0, msg.encrypted_nothing, hash_value) is None:
            return False
        # H_i := HASH(H_i || msg.empty)
        hash_value = hash_(hash_value + msg.encrypted_nothing)
        self._chaining_key = chaining_key
        self._hash = hash_value
        self._remote_ephemeral = msg.ephemeral
        self.remote_index = msg.sender_index
        self.state = HandshakeState.RESPONSE_CONSUMED
        return True

    # --- transport keys -------------------------------------------------------------------------

    def derive_keys(self) -> SessionKeys:
        """Derive the transport keys and forget the handshake secrets (spec §4.5).

        Valid in ``RESPONSE_CREATED`` (we are the responder) or ``RESPONSE_CONSUMED`` (we are
        the initiator); afterwards ``C``, ``H`` and the ephemerals are zeroed and the state is
        ``ZEROED``. Raises :class:`HandshakeStateError` in any other state.
        """
        if self.state is HandshakeState.RESPONSE_CONSUMED:
            is_initiator = True
        elif self.state is HandshakeState.RESPONSE_CREATED:
            is_initiator = False
        else:
            raise HandshakeStateError(
                f"derive_keys needs state RESPONSE_CREATED or RESPONSE_CONSUMED, "
                f"not {self.state.name} (peer {self.peer_public.hex()})"
            )
        # (T_i^send = T_r^recv, T_i^recv = T_r^send) := KDF2(C_i = C_r, ε)
        first, second = kdf2(self._chaining_key, b"")
        send_key, receive_key = (first, second) if is_initiator else (second, first)
        keys = SessionKeys(
            send_key=send_key,
            receive_key=receive_key,
            local_index=self.local_index,
            remote_index=self.remote_index,
            is_initiator=is_initiator,
        )
        # spec §4.5: zero C, H and the local ephemeral; the state returns to "zeroed".
        self._forget_secrets()
        return keys

    def clear(self) -> None:
        """Drop any handshake in flight and return to ``ZEROED`` (wireguard-go ``Clear``).

        Replay protection (greatest timestamp, last accepted initiation time) is kept.
        """
        self._forget_secrets()
        self.local_index = 0
        self.remote_index = 0

    def _forget_secrets(self) -> None:
        self._chaining_key = _ZERO_KEY
        self._hash = _ZERO_KEY
        self._local_ephemeral = _ZERO_KEY
        self._remote_ephemeral = _ZERO_KEY
        self.state = HandshakeState.ZEROED

    def _require(self, state: HandshakeState, operation: str) -> None:
        if self.state is not state:
            raise HandshakeStateError(
                f"{operation} needs state {state.name}, not {self.state.name} "
                f"(peer {self.peer_public.hex()})"
            )

    def __repr__(self) -> str:
        return (
            f"Handshake(peer_public={self.peer_public.hex()}, state={self.state.name}, "
            f"local_index={self.local_index:#010x}, remote_index={self.remote_index:#010x})"
        )
