"""Tailscale key types and their text forms, and the addresses a Coder client gives itself.

Spec: coder-control-plane.md §7 (keys, addresses, IDs); Go: ``types/key/{node,disco,util}.go``
of coder/tailscale.

Every public key is a ``bytes`` subclass holding the 32 raw bytes, so it hashes and compares as
those bytes (it can key a dict next to plain ``bytes``), and ``str()`` gives the Go text form:

=========================  ==========================  ===================================
type                       text                        Go
=========================  ==========================  ===================================
:class:`NodePublic`        ``nodekey:`` + 64 hex       ``key.NodePublic`` (``MarshalText``)
:class:`NodePrivate`       ``privkey:`` + 64 hex       ``key.NodePrivate``
:class:`DiscoPublic`       ``discokey:`` + 64 hex      ``key.DiscoPublic``
:class:`DiscoPrivate`      (none)                      ``key.DiscoPrivate``
=========================  ==========================  ===================================

A node key is the WireGuard static key and the DERP identity; a disco key is a second X25519
pair used only by disco (§6). Private keys are clamped at creation (``clamp25519Private``),
which NaCl box use needs. Parsing accepts exactly the prefix and 64 hex digits (either case)
and fails with Go's messages, wrapped in :class:`~agentconn.errors.InvalidKeyError`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import string
import uuid
from typing import ClassVar, Self

from nacl.bindings import crypto_scalarmult_base

from ..errors import InvalidKeyError
from ..proto.ports import CODER_SERVICE_PREFIX, TAILSCALE_SERVICE_PREFIX, addr_from_uuid

__all__ = [
    "DERP_MAGIC_IP",
    "KEY_LEN",
    "NODE_PUBLIC_BINARY_PREFIX",
    "DiscoPrivate",
    "DiscoPublic",
    "NodePrivate",
    "NodePublic",
    "derp_magic_endpoint",
    "parse_untyped_hex",
    "random_client_address",
    "random_node_id",
]

KEY_LEN = 32
#: ``nodePublicBinaryPrefix``: the protobuf ``Node.key`` form is ``"np"`` + 32 raw bytes.
NODE_PUBLIC_BINARY_PREFIX = b"np"
#: ``tailcfg.DerpMagicIP``: disco sees a DERP path as ``127.3.3.40:<region id>`` (§7).
DERP_MAGIC_IP = ipaddress.IPv4Address("127.3.3.40")

_HEX_DIGITS = frozenset(string.hexdigits)


def _clamp(raw: bytes) -> bytes:
    """``clamp25519Private``: b[0] &= 248; b[31] = (b[31] & 127) | 64."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def _parse_hex(text: str | bytes, prefix: str) -> bytes:
    """``parseHex``: ``prefix`` then exactly 64 hex digits; Go's error texts (no key echoed)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("latin-1")
    if not text.startswith(prefix):
        raise InvalidKeyError(f"key hex string doesn't have expected type prefix {prefix}")
    digits = text[len(prefix):]
    if len(digits) != 2 * KEY_LEN:
        raise InvalidKeyError(f"key hex has the wrong size, got {len(digits)} want {2 * KEY_LEN}")
    if not _HEX_DIGITS.issuperset(digits):
        raise InvalidKeyError("invalid hex character in key")
    return bytes.fromhex(digits)


def parse_untyped_hex(text: str | bytes) -> bytes:
    """Decode a bare 64-hex-digit key (``ParseNodePublicUntyped``, the ``Derp-Public-Key``
    header form). Raises :class:`InvalidKeyError`."""
    return _parse_hex(text, "")


class _PublicKey(bytes):
    """32 raw bytes with a typed text form; see the module docstring."""

    PREFIX: ClassVar[str] = ""

    def __new__(cls, raw: bytes | bytearray | memoryview) -> Self:
        if len(raw) != KEY_LEN:
            raise InvalidKeyError(
                f"{cls.__name__} must be {KEY_LEN} bytes, got {len(raw)}"
            )
        return super().__new__(cls, raw)

    @classmethod
    def parse(cls, text: str | bytes) -> Self:
        """Parse the text form (``MarshalText``/``UnmarshalText``); raises
        :class:`InvalidKeyError` with Go's message."""
        return cls(_parse_hex(text, cls.PREFIX))

    def __str__(self) -> str:
        return self.PREFIX + self.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def untyped_hex(self) -> str:
        """The 64 hex digits without the prefix (``UntypedHexString``)."""
        return self.hex()

    def short_string(self) -> str:
        """``ShortString``: the first five base64 digits in brackets, for logs; ``""`` if zero."""
        if not any(self):
            return ""
        return "[" + base64.b64encode(self[:4]).decode("ascii")[:5] + "]"

    @property
    def is_zero(self) -> bool:
        """True for the all-zero key (Go's zero value)."""
        return not any(self)

    def __reduce__(self) -> tuple[type[Self], tuple[bytes]]:
        return (type(self), (bytes(self),))


class NodePublic(_PublicKey):
    """A node (WireGuard/DERP) public key; ``str()`` is ``nodekey:<64 hex>``."""

    PREFIX = "nodekey:"

    def to_binary(self) -> bytes:
        """``MarshalBinary``: ``"np"`` + the 32 raw bytes (the protobuf ``Node.key`` field)."""
        return NODE_PUBLIC_BINARY_PREFIX + bytes(self)

    @classmethod
    def from_binary(cls, data: bytes) -> NodePublic:
        """``UnmarshalBinary``; raises :class:`InvalidKeyError` with Go's message."""
        if not data.startswith(NODE_PUBLIC_BINARY_PREFIX):
            raise InvalidKeyError("missing/incorrect type prefix np")
        want = len(NODE_PUBLIC_BINARY_PREFIX) + KEY_LEN
        if len(data) != want:
            raise InvalidKeyError(f"incorrect len for NodePublic ({len(data)} != {want})")
        return cls(data[len(NODE_PUBLIC_BINARY_PREFIX):])


class DiscoPublic(_PublicKey):
    """A disco public key; ``str()`` is ``discokey:<64 hex>`` (protobuf ``Node.disco``)."""

    PREFIX = "discokey:"


class _PrivateKey:
    """A clamped X25519 private key; the raw bytes never appear in ``repr``."""

    __slots__ = ("_public", "_raw")

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        if len(raw) != KEY_LEN:
            raise InvalidKeyError(f"{type(self).__name__} must be {KEY_LEN} bytes, got {len(raw)}")
        if not any(raw):
            raise InvalidKeyError(f"{type(self).__name__} is all zero")
        self._raw = bytes(raw)
        self._public: _PublicKey | None = None

    @classmethod
    def generate(cls) -> Self:
        """A fresh random key, clamped (``NewNode``/``NewDisco``)."""
        return cls(_clamp(os.urandom(KEY_LEN)))

    @property
    def raw(self) -> bytes:
        """The 32 private bytes (pass to ``nacl.public.PrivateKey`` or WireGuard)."""
        return self._raw

    def __bytes__(self) -> bytes:
        return self._raw

    @property
    def public(self) -> _PublicKey:
        """The public key (overridden with the precise type by each subclass)."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _PrivateKey)
            and type(other) is type(self)
            and secrets.compare_digest(self._raw, other._raw)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.public))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(public={self.public!s})"


class NodePrivate(_PrivateKey):
    """A node private key: the WireGuard static key and the DERP identity.

    ``str()`` is ``privkey:<64 hex>`` (Go's ``MarshalText``; it reveals the key).
    """

    PREFIX: ClassVar[str] = "privkey:"

    @property
    def public(self) -> NodePublic:
        """X25519(private, basepoint) as a :class:`NodePublic` (computed once)."""
        if self._public is None:
            self._public = NodePublic(crypto_scalarmult_base(self._raw))
        assert isinstance(self._public, NodePublic)
        return self._public

    @classmethod
    def parse(cls, text: str | bytes) -> NodePrivate:
        """Parse ``privkey:<64 hex>``; raises :class:`InvalidKeyError` with Go's message."""
        return cls(_parse_hex(text, cls.PREFIX))

    def __str__(self) -> str:
        return self.PREFIX + self._raw.hex()


class DiscoPrivate(_PrivateKey):
    """A disco private key (no text form in Go)."""

    @property
    def public(self) -> DiscoPublic:
        """X25519(private, basepoint) as a :class:`DiscoPublic` (computed once)."""
        if self._public is None:
            self._public = DiscoPublic(crypto_scalarmult_base(self._raw))
        assert isinstance(self._public, DiscoPublic)
        return self._public


def random_client_address(coder_prefix: bool = False) -> ipaddress.IPv6Address:
    """A random client ``/128`` address (``RandomAddr``): a fresh UUIDv4 under the Tailscale
    service prefix ``fd7a:115c:a1e0::/48`` (what DERP-only Coder clients use, §1.6/§8.1), or
    under ``fd60:627a:a42b::/48`` with ``coder_prefix``."""
    prefix = CODER_SERVICE_PREFIX if coder_prefix else TAILSCALE_SERVICE_PREFIX
    return addr_from_uuid(prefix, uuid.uuid4())


def random_node_id() -> int:
    """A random positive int63 for ``Node.id`` (§7: informational for the agent)."""
    return secrets.randbits(63) or 1


def derp_magic_endpoint(region_id: int) -> tuple[ipaddress.IPv4Address, int]:
    """The address disco reports for a path through DERP region ``region_id``:
    ``127.3.3.40:<region id>`` (§6.3)."""
    return DERP_MAGIC_IP, region_id
