"""WireGuard wire formats (spec §3): matching by (type, exact length), parse and emit.

Each message has a ``Repr``: a frozen, slotted dataclass whose ``parse`` accepts exactly one
well-formed message and whose ``emit`` returns its bytes. A ``Repr`` validates its fields when
constructed, so one that exists can always be emitted, and ``parse(r.emit()) == r``.

Matching happens before any cryptography (boringtun ``parse_incoming_packet``, wireguard-go
``RoutineReceiveIncoming``): :func:`message_type` reads the first four bytes as one u32 LE, so a
non-zero reserved byte makes the type unknown, and handshake messages must have their exact
size. Nothing here authenticates anything: mac1, mac2 and AEAD tags are opaque bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from agentconn.wg.constants import (
    COOKIE_NONCE_SIZE,
    ENCRYPTED_COOKIE_SIZE,
    ENCRYPTED_NOTHING_SIZE,
    ENCRYPTED_STATIC_SIZE,
    ENCRYPTED_TIMESTAMP_SIZE,
    KEY_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_MIN_SIZE,
    OFFSET_COOKIE_ENCRYPTED,
    OFFSET_COOKIE_NONCE,
    OFFSET_COOKIE_RECEIVER,
    OFFSET_INITIATION_EPHEMERAL,
    OFFSET_INITIATION_MAC1,
    OFFSET_INITIATION_MAC2,
    OFFSET_INITIATION_SENDER,
    OFFSET_INITIATION_STATIC,
    OFFSET_INITIATION_TIMESTAMP,
    OFFSET_RESPONSE_EMPTY,
    OFFSET_RESPONSE_EPHEMERAL,
    OFFSET_RESPONSE_MAC1,
    OFFSET_RESPONSE_MAC2,
    OFFSET_RESPONSE_RECEIVER,
    OFFSET_RESPONSE_SENDER,
    OFFSET_TRANSPORT_COUNTER,
    OFFSET_TRANSPORT_RECEIVER,
    TRANSPORT_HEADER_SIZE,
)
from agentconn.wg.crypto import Buffer

__all__ = [
    "CookieReply",
    "Initiation",
    "MessageError",
    "Response",
    "TransportHeader",
    "message_type",
]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

# (type, exact size) of the fixed-size messages, spec §3.1-§3.3.
_FIXED_SIZES: dict[int, int] = {
    MESSAGE_INITIATION: MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE: MESSAGE_RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: MESSAGE_COOKIE_REPLY_SIZE,
}


class MessageError(ValueError):
    """Bytes are not a well-formed message of the expected type, or a field is out of range."""


def message_type(data: Buffer) -> int | None:
    """Return the WireGuard message type of a datagram, or ``None`` if it matches no message.

    The first four bytes are read as one u32 LE (type plus three reserved zero bytes, spec §3).
    Types 1-3 need their exact size (148, 92, 64); type 4 needs at least 32 bytes. Never raises.
    """
    if len(data) < 4:
        return None
    kind: int = _U32.unpack_from(data, 0)[0]
    size = _FIXED_SIZES.get(kind)
    if size is not None:
        return kind if len(data) == size else None
    if kind == MESSAGE_TRANSPORT and len(data) >= MESSAGE_TRANSPORT_MIN_SIZE:
        return kind
    return None


def _expect_type(data: Buffer, kind: int, name: str) -> None:
    if message_type(data) != kind:
        raise MessageError(
            f"not a {name} message: expected type {kind} and {_FIXED_SIZES[kind]} bytes, "
            f"got {len(data)} bytes starting {bytes(data[:4]).hex() or '(empty)'}"
        )


def _check_index(value: int, name: str) -> None:
    if not 0 <= value <= _U32_MAX:
        raise MessageError(f"{name} must be a u32, got {value}")


def _check_size(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise MessageError(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation, type 1, 148 bytes (spec §3.1).

    ``sender_index``: the initiator's u32 index. ``ephemeral``: its 32-byte ephemeral public
    key. ``encrypted_static``: AEAD of its static public key (48 bytes). ``encrypted_timestamp``:
    AEAD of a TAI64N timestamp (28 bytes). ``mac1``/``mac2``: 16 bytes each (spec §5).
    """

    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    SIZE: ClassVar[int] = MESSAGE_INITIATION_SIZE

    def __post_init__(self) -> None:
        _check_index(self.sender_index, "sender_index")
        _check_size(self.ephemeral, KEY_SIZE, "ephemeral")
        _check_size(self.encrypted_static, ENCRYPTED_STATIC_SIZE, "encrypted_static")
        _check_size(self.encrypted_timestamp, ENCRYPTED_TIMESTAMP_SIZE, "encrypted_timestamp")
        _check_size(self.mac1, MAC_SIZE, "mac1")
        _check_size(self.mac2, MAC_SIZE, "mac2")

    @classmethod
    def parse(cls, data: Buffer) -> Initiation:
        """Parse a 148-byte initiation. Raises :class:`MessageError` on any other input."""
        _expect_type(data, MESSAGE_INITIATION, "handshake initiation")
        raw = bytes(data)
        return cls(
            sender_index=_U32.unpack_from(raw, OFFSET_INITIATION_SENDER)[0],
            ephemeral=raw[OFFSET_INITIATION_EPHEMERAL:OFFSET_INITIATION_STATIC],
            encrypted_static=raw[OFFSET_INITIATION_STATIC:OFFSET_INITIATION_TIMESTAMP],
            encrypted_timestamp=raw[OFFSET_INITIATION_TIMESTAMP:OFFSET_INITIATION_MAC1],
            mac1=raw[OFFSET_INITIATION_MAC1:OFFSET_INITIATION_MAC2],
            mac2=raw[OFFSET_INITIATION_MAC2:],
        )

    def emit(self) -> bytes:
        """Return the 148 bytes of this message."""
        return b"".join(
            (
                _U32.pack(MESSAGE_INITIATION),
                _U32.pack(self.sender_index),
                self.ephemeral,
                self.encrypted_static,
                self.encrypted_timestamp,
                self.mac1,
                self.mac2,
            )
        )

    def buffer_len(self) -> int:
        """Return the emitted size in bytes (148)."""
        return self.SIZE


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response, type 2, 92 bytes (spec §3.2).

    ``sender_index``: the responder's u32 index. ``receiver_index``: the initiation's sender
    index. ``ephemeral``: the responder's 32-byte ephemeral public key. ``encrypted_nothing``:
    AEAD of the empty string (the 16-byte tag). ``mac1``/``mac2``: 16 bytes each (spec §5).
    """

    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    SIZE: ClassVar[int] = MESSAGE_RESPONSE_SIZE

    def __post_init__(self) -> None:
        _check_index(self.sender_index, "sender_index")
        _check_index(self.receiver_index, "receiver_index")
        _check_size(self.ephemeral, KEY_SIZE, "ephemeral")
        _check_size(self.encrypted_nothing, ENCRYPTED_NOTHING_SIZE, "encrypted_nothing")
        _check_size(self.mac1, MAC_SIZE, "mac1")
        _check_size(self.mac2, MAC_SIZE, "mac2")

    @classmethod
    def parse(cls, data: Buffer) -> Response:
        """Parse a 92-byte response. Raises :class:`MessageError` on any other input."""
        _expect_type(data, MESSAGE_RESPONSE, "handshake response")
        raw = bytes(data)
        return cls(
            sender_index=_U32.unpack_from(raw, OFFSET_RESPONSE_SENDER)[0],
            receiver_index=_U32.unpack_from(raw, OFFSET_RESPONSE_RECEIVER)[0],
            ephemeral=raw[OFFSET_RESPONSE_EPHEMERAL:OFFSET_RESPONSE_EMPTY],
            encrypted_nothing=raw[OFFSET_RESPONSE_EMPTY:OFFSET_RESPONSE_MAC1],
            mac1=raw[OFFSET_RESPONSE_MAC1:OFFSET_RESPONSE_MAC2],
            mac2=raw[OFFSET_RESPONSE_MAC2:],
        )

    def emit(self) -> bytes:
        """Return the 92 bytes of this message."""
        return b"".join(
            (
                _U32.pack(MESSAGE_RESPONSE),
                _U32.pack(self.sender_index),
                _U32.pack(self.receiver_index),
                self.ephemeral,
                self.encrypted_nothing,
                self.mac1,
                self.mac2,
            )
        )

    def buffer_len(self) -> int:
        """Return the emitted size in bytes (92)."""
        return self.SIZE


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply, type 3, 64 bytes (spec §3.3).

    ``receiver_index``: the sender index of the handshake message being answered. ``nonce``:
    24 random bytes. ``encrypted_cookie``: XAEAD of the 16-byte cookie (32 bytes).
    """

    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    SIZE: ClassVar[int] = MESSAGE_COOKIE_REPLY_SIZE

    def __post_init__(self) -> None:
        _check_index(self.receiver_index, "receiver_index")
        _check_size(self.nonce, COOKIE_NONCE_SIZE, "nonce")
        _check_size(self.encrypted_cookie, ENCRYPTED_COOKIE_SIZE, "encrypted_cookie")

    @classmethod
    def parse(cls, data: Buffer) -> CookieReply:
        """Parse a 64-byte cookie reply. Raises :class:`MessageError` on any other input."""
        _expect_type(data, MESSAGE_COOKIE_REPLY, "cookie reply")
        raw = bytes(data)
        return cls(
            receiver_index=_U32.unpack_from(raw, OFFSET_COOKIE_RECEIVER)[0],
            nonce=raw[OFFSET_COOKIE_NONCE:OFFSET_COOKIE_ENCRYPTED],
            encrypted_cookie=raw[OFFSET_COOKIE_ENCRYPTED:],
        )

    def emit(self) -> bytes:
        """Return the 64 bytes of this message."""
        return b"".join(
            (
                _U32.pack(MESSAGE_COOKIE_REPLY),
                _U32.pack(self.receiver_index),
                self.nonce,
                self.encrypted_cookie,
            )
        )

    def buffer_len(self) -> int:
        """Return the emitted size in bytes (64)."""
        return self.SIZE


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The 16-byte header of a transport data message, type 4 (spec §3.4).

    ``receiver_index``: the *peer's* u32 index of the keypair. ``counter``: the u64 send
    counter, also the AEAD nonce. The encrypted content that follows is not part of the Repr
    (the data path handles it without Python objects, STYLE §4).
    """

    receiver_index: int
    counter: int

    SIZE: ClassVar[int] = TRANSPORT_HEADER_SIZE

    def __post_init__(self) -> None:
        _check_index(self.receiver_index, "receiver_index")
        if not 0 <= self.counter <= _U64_MAX:
            raise MessageError(f"counter must be a u64, got {self.counter}")

    @classmethod
    def parse(cls, data: Buffer) -> TransportHeader:
        """Parse the header at the start of ``data``.

        ``data`` is a whole transport message (at least 32 bytes, see :func:`message_type`) or
        just the 16-byte header that :meth:`emit` returns. Raises :class:`MessageError` if the
        type is not 4, a reserved byte is set, or fewer than 16 bytes are given.
        """
        if len(data) < TRANSPORT_HEADER_SIZE:
            raise MessageError(
                f"transport header needs {TRANSPORT_HEADER_SIZE} bytes, got {len(data)}"
            )
        (kind,) = _U32.unpack_from(data, 0)
        if kind != MESSAGE_TRANSPORT:
            raise MessageError(f"not a transport message: type field {kind:#010x}")
        return cls(
            receiver_index=_U32.unpack_from(data, OFFSET_TRANSPORT_RECEIVER)[0],
            counter=_U64.unpack_from(data, OFFSET_TRANSPORT_COUNTER)[0],
        )

    def emit(self) -> bytes:
        """Return the 16 header bytes; the AEAD content is appended by the caller."""
        return (
            _U32.pack(MESSAGE_TRANSPORT) + _U32.pack(self.receiver_index) + _U64.pack(self.counter)
        )

    def buffer_len(self) -> int:
        """Return the emitted header size in bytes (16)."""
        return self.SIZE
