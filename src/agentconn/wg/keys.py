"""Curve25519 keys: text encodings and the local static identity.

``wg`` and wg-quick write keys as 44-character base64; the UAPI (``IpcSet``) uses 64-character
lowercase hex (spec §1 notes). Both are accepted when parsing; base64 is emitted.
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass, field

from agentconn.errors import InvalidKeyError
from agentconn.wg.constants import KEY_SIZE, LABEL_COOKIE, LABEL_MAC1
from agentconn.wg.crypto import clamp, dh_generate, hash_, public_key

__all__ = ["StaticIdentity", "encode_key", "generate_private_key", "parse_key"]

_BASE64_LENGTH = 44  # 32 bytes -> 43 characters + one "=" of padding
_HEX_LENGTH = 2 * KEY_SIZE
_HEX_DIGITS = frozenset(string.hexdigits)


def parse_key(text: str, *, what: str = "key") -> bytes:
    """Decode a 32-byte key written as base64 (44 characters, as ``wg`` prints) or 64 hex digits.

    Surrounding whitespace is ignored. ``what`` names the key in error messages (for example
    ``"PrivateKey"`` or ``"peer public key"``). Raises :class:`InvalidKeyError` saying what was
    expected and what was found.
    """
    stripped = text.strip()
    if not stripped.isascii():
        raise InvalidKeyError(f"{what}: keys are ASCII (base64 or hex); found other characters")
    if len(stripped) == _HEX_LENGTH:
        return _parse_hex(stripped, what)
    if len(stripped) == _BASE64_LENGTH:
        return _parse_base64(stripped, what)
    raise InvalidKeyError(
        f"{what}: expected 44 base64 characters or 64 hex digits, got {len(stripped)} characters"
    )


def _parse_hex(text: str, what: str) -> bytes:
    if not _HEX_DIGITS.issuperset(text):
        raise InvalidKeyError(f"{what}: 64 characters long but not hexadecimal")
    return bytes.fromhex(text)


def _parse_base64(text: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise InvalidKeyError(f"{what}: not valid base64 ({exc})") from None
    if len(decoded) != KEY_SIZE:
        raise InvalidKeyError(f"{what}: base64 decodes to {len(decoded)} bytes, expected 32")
    # Reject non-canonical encodings (stray low bits before the padding) like wg does.
    if base64.b64encode(decoded).decode("ascii") != text:
        raise InvalidKeyError(f"{what}: non-canonical base64 encoding")
    return decoded


def encode_key(key: bytes) -> str:
    """Return the 44-character base64 form of a 32-byte key, as ``wg`` prints it.

    Raises :class:`InvalidKeyError` if ``key`` is not 32 bytes.
    """
    if len(key) != KEY_SIZE:
        raise InvalidKeyError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    return base64.b64encode(key).decode("ascii")


def generate_private_key() -> bytes:
    """Return a fresh random, clamped Curve25519 private key (``wg genkey``)."""
    return dh_generate()


@dataclass(frozen=True, slots=True)
class StaticIdentity:
    """The local static key pair and the values derived from it once (spec §5).

    ``private`` is stored clamped. ``mac1_key`` = HASH(LABEL_MAC1 || public) checks mac1 on
    handshake messages sent to us; ``cookie_key`` = HASH(LABEL_COOKIE || public) encrypts the
    cookie replies we send. Raises :class:`InvalidKeyError` if the key is not 32 bytes.
    """

    private: bytes = field(repr=False)
    public: bytes = field(init=False)
    mac1_key: bytes = field(init=False, repr=False)
    cookie_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        private = clamp(self.private)
        public = public_key(private)
        object.__setattr__(self, "private", private)
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "mac1_key", hash_(LABEL_MAC1 + public))
        object.__setattr__(self, "cookie_key", hash_(LABEL_COOKIE + public))
