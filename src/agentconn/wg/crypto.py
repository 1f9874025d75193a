"""WireGuard's cryptographic primitives, as defined in whitepaper §5.4 and spec §1.

These are the control-path primitives (handshake, cookies) and the pure-Python reference for
the Cython data path: ``aead_encrypt``/``aead_decrypt`` are deliberately plain calls into
libsodium through pynacl, so ``_wgcore`` can be compared against them byte for byte.

All functions take and return ``bytes``; ``bytearray`` and ``memoryview`` inputs are accepted
where a buffer is read. Nothing here reads a clock or keeps state.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable
from typing import TypeAlias

import nacl.bindings
import nacl.exceptions

from agentconn.errors import InvalidKeyError
from agentconn.wg.constants import (
    KEY_SIZE,
    MAC_SIZE,
    TAG_SIZE,
    TAI64N_BASE,
    TAI64N_WHITENER_MASK,
)

__all__ = [
    "Buffer",
    "aead_decrypt",
    "aead_encrypt",
    "aead_nonce",
    "clamp",
    "dh",
    "dh_generate",
    "hash_",
    "hmac_",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "public_key",
    "tai64n",
    "xaead_decrypt",
    "xaead_encrypt",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Any contiguous byte buffer accepted as input."""

_ZERO_KEY = bytes(KEY_SIZE)
_AEAD_NONCE_PREFIX = bytes(4)


def hash_(data: Buffer) -> bytes:
    """Return HASH(data): unkeyed BLAKE2s-256, 32 bytes (spec §1)."""
    return hashlib.blake2s(data).digest()


def mac(key: Buffer, data: Buffer) -> bytes:
    """Return MAC(key, data): keyed BLAKE2s with a 16-byte digest (spec §1).

    This is not truncated BLAKE2s-256: the digest size is a BLAKE2 parameter. ``key`` is at
    most 32 bytes (32 for mac1/cookie secrets, 16 when keyed by a cookie).
    """
    return hashlib.blake2s(data, key=bytes(key), digest_size=MAC_SIZE).digest()


def hmac_(key: Buffer, data: Buffer) -> bytes:
    """Return HMAC(key, data): RFC 2104 HMAC over BLAKE2s-256, 32 bytes (spec §1)."""
    return hmac.new(bytes(key), bytes(data), hashlib.blake2s).digest()


def _kdf(key: Buffer, data: Buffer, n: int) -> tuple[bytes, ...]:
    # Whitepaper §5.4 KDF_n: τ0 = HMAC(key, input); τi = HMAC(τ0, τ(i-1) || i).
    prk = hmac_(key, data)
    outputs: list[bytes] = []
    previous = b""
    for i in range(1, n + 1):
        previous = hmac_(prk, previous + bytes([i]))
        outputs.append(previous)
    return tuple(outputs)


def kdf1(key: Buffer, data: Buffer) -> bytes:
    """Return KDF1(key, data): the first 32-byte HKDF-BLAKE2s output (spec §1)."""
    return _kdf(key, data, 1)[0]


def kdf2(key: Buffer, data: Buffer) -> tuple[bytes, bytes]:
    """Return KDF2(key, data): the first two 32-byte HKDF-BLAKE2s outputs (spec §1)."""
    t1, t2 = _kdf(key, data, 2)
    return t1, t2


def kdf3(key: Buffer, data: Buffer) -> tuple[bytes, bytes, bytes]:
    """Return KDF3(key, data): the three 32-byte HKDF-BLAKE2s outputs (spec §1)."""
    t1, t2, t3 = _kdf(key, data, 3)
    return t1, t2, t3


def aead_nonce(counter: int) -> bytes:
    """Return the 12-byte ChaCha20-Poly1305 nonce for ``counter``: 4 zero bytes || u64 LE.

    Raises ``OverflowError`` if ``counter`` is negative or does not fit in 64 bits.
    """
    return _AEAD_NONCE_PREFIX + counter.to_bytes(8, "little")


def aead_encrypt(key: Buffer, counter: int, plaintext: Buffer, ad: Buffer) -> bytes:
    """Return AEAD(key, counter, plaintext, ad) = ciphertext || 16-byte tag (spec §1).

    ChaCha20-Poly1305 (RFC 8439) with the WireGuard nonce of :func:`aead_nonce`.
    """
    return nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(ad), aead_nonce(counter), bytes(key)
    )


def aead_decrypt(key: Buffer, counter: int, ciphertext: Buffer, ad: Buffer) -> bytes | None:
    """Open ``ciphertext || tag`` sealed by :func:`aead_encrypt`; ``None`` if it is not authentic.

    A ciphertext shorter than the 16-byte tag is not authentic either.
    """
    if len(ciphertext) < TAG_SIZE:
        return None
    try:
        return nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            bytes(ciphertext), bytes(ad), aead_nonce(counter), bytes(key)
        )
    except nacl.exceptions.CryptoError:
        return None


def xaead_encrypt(key: Buffer, nonce: Buffer, plaintext: Buffer, ad: Buffer) -> bytes:
    """Return XAEAD(key, nonce, plaintext, ad): XChaCha20-Poly1305 with a 24-byte nonce (spec §1)."""
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(ad), bytes(nonce), bytes(key)
    )


def xaead_decrypt(key: Buffer, nonce: Buffer, ciphertext: Buffer, ad: Buffer) -> bytes | None:
    """Open an :func:`xaead_encrypt` ciphertext; ``None`` if it is not authentic."""
    if len(ciphertext) < TAG_SIZE:
        return None
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(ciphertext), bytes(ad), bytes(nonce), bytes(key)
        )
    except nacl.exceptions.CryptoError:
        return None


def _check_key(key: Buffer, what: str) -> bytes:
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")
    return bytes(key)


def dh(private: Buffer, public: Buffer) -> bytes:
    """Return DH(private, public): the X25519 shared secret (spec §1).

    Raises :class:`InvalidKeyError` if a key is not 32 bytes, or if the result is all zeros
    (``public`` is a low-order point), as wireguard-go and the kernel refuse such a secret.
    """
    private_bytes = _check_key(private, "private key")
    public_bytes = _check_key(public, "public key")
    try:
        shared = nacl.bindings.crypto_scalarmult(private_bytes, public_bytes)
    except RuntimeError:
        # libsodium itself refuses an all-zero result.
        shared = _ZERO_KEY
    if hmac.compare_digest(shared, _ZERO_KEY):
        raise InvalidKeyError(
            f"X25519 with public key {public_bytes.hex()} gives an all-zero secret "
            "(low-order point)"
        )
    return shared


def clamp(private: Buffer) -> bytes:
    """Return the Curve25519-clamped form of a 32-byte private key (spec §1 DH_GENERATE).

    Raises :class:`InvalidKeyError` if ``private`` is not 32 bytes.
    """
    clamped = bytearray(_check_key(private, "private key"))
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    return bytes(clamped)


def dh_generate(random: Callable[[int], bytes] = os.urandom) -> bytes:
    """Return a fresh clamped X25519 private key drawn from ``random`` (spec §1 DH_GENERATE)."""
    return clamp(random(KEY_SIZE))


def public_key(private: Buffer) -> bytes:
    """Return the X25519 public key of ``private``.

    Raises :class:`InvalidKeyError` if ``private`` is not 32 bytes.
    """
    return nacl.bindings.crypto_scalarmult_base(_check_key(private, "private key"))


def tai64n(unix_seconds: float) -> bytes:
    """Return the 12-byte TAI64N timestamp of a wall-clock time in Unix seconds (spec §1).

    u64 BE ``0x400000000000000a + seconds``, then u32 BE nanoseconds with the low 24 bits
    cleared, as wireguard-go and the kernel do (``tai64n.go``). ``unix_seconds`` must not be
    negative.
    """
    seconds = math.floor(unix_seconds)
    nanoseconds = min(max(int((unix_seconds - seconds) * 1e9), 0), 999_999_999)
    return struct.pack(
        ">QI", TAI64N_BASE + seconds, nanoseconds & ~TAI64N_WHITENER_MASK & 0xFFFFFFFF
    )
