"""Parse and format WireGuard configuration files (``wg setconf`` and ``wg-quick`` syntax).

The grammar follows wireguard-tools ``config.c``:

- ``[Interface]`` (exactly one) and ``[Peer]`` (any number) sections, names case-insensitive;
- ``Key = Value`` lines, key names case-insensitive, whitespace around both ignored;
- ``#`` starts a comment that runs to the end of the line; blank lines are ignored;
- ``AllowedIPs`` and ``Address`` are comma-separated lists that may repeat across lines;
  every other key may appear once per section.

The wg-quick-only keys (``DNS``, ``Table``, ``PreUp``, ``PostUp``, ``PreDown``, ``PostDown``,
``SaveConfig``) and ``FwMark`` are accepted and ignored: a userspace peer has no routing table,
no firewall mark and no shell hooks. Endpoints keep their host as written; nothing here resolves
names. Every problem is reported as a :class:`~agentconn.errors.ConfigError` carrying the line
number, the key and the offending value (secret keys are never echoed back).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from agentconn.errors import ConfigError, InvalidKeyError
from agentconn.wg.keys import encode_key, parse_key

__all__ = [
    "InterfaceConfig",
    "PeerConfig",
    "format_config",
    "load_config",
    "parse_config",
]

MTU_MIN_IPV4 = 576
"""RFC 791: every IPv4 host must accept 576-byte datagrams."""

MTU_MIN_IPV6 = 1280
"""RFC 8200 §5: the IPv6 minimum link MTU."""

MTU_MAX = 65535

# Bounded so int() never meets a huge digit string (sys.int_info.str_digits_check_threshold).
_INTEGER = re.compile(r"[0-9]{1,16}")
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]+")

# Keys that only wg-quick reads (wg-quick(8)) plus FwMark, which has no meaning in userspace.
_IGNORED_INTERFACE_KEYS = frozenset(
    {"fwmark", "dns", "table", "preup", "postup", "predown", "postdown", "saveconfig"}
)

# Canonical spelling of each key, by its lower-case form, for messages.
_INTERFACE_KEYS = {
    "privatekey": "PrivateKey",
    "listenport": "ListenPort",
    "address": "Address",
    "mtu": "MTU",
    "fwmark": "FwMark",
    "dns": "DNS",
    "table": "Table",
    "preup": "PreUp",
    "postup": "PostUp",
    "predown": "PreDown",
    "postdown": "PostDown",
    "saveconfig": "SaveConfig",
}
_PEER_KEYS = {
    "publickey": "PublicKey",
    "presharedkey": "PresharedKey",
    "endpoint": "Endpoint",
    "allowedips": "AllowedIPs",
    "persistentkeepalive": "PersistentKeepalive",
}
_LIST_KEYS = frozenset({"address", "allowedips"})


@dataclass
class PeerConfig:
    """One ``[Peer]`` section.

    ``public_key`` and ``preshared_key`` are raw 32-byte keys (``None``: no pre-shared key).
    ``endpoint`` is ``(host, port)`` with the host exactly as written (an IPv6 literal without
    its brackets), or ``None``. ``persistent_keepalive`` is in seconds, 0 meaning off.
    """

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    allowed_ips: list[IPv4Network | IPv6Network] = field(default_factory=list)
    persistent_keepalive: int = 0


@dataclass
class InterfaceConfig:
    """The ``[Interface]`` section and the peers that follow it.

    ``private_key`` is the raw 32-byte static private key; ``listen_port`` is ``None`` when not
    given (pick a random port). ``addresses`` are the wg-quick ``Address`` entries with their
    prefix; ``mtu`` is ``None`` when not given.
    """

    private_key: bytes
    listen_port: int | None = None
    addresses: list[IPv4Interface | IPv6Interface] = field(default_factory=list)
    mtu: int | None = None
    peers: list[PeerConfig] = field(default_factory=list)


@dataclass
class _PeerState:
    """A ``[Peer]`` section while it is being read."""

    header_line: int
    config: PeerConfig
    key_line: int = 0  # line of PublicKey; 0 while not seen
    seen: dict[str, int] = field(default_factory=dict)


class _Parser:
    """Line-by-line state for :func:`parse_config`; one instance per call.

    Values are checked on the line they appear, so the first bad line is the one reported.
    What needs the whole file (required keys, MTU against the address families, duplicate
    peers) is checked by :meth:`finish`.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.section: str | None = None
        self.interface_line = 0  # 0 while no [Interface] was seen
        self.interface_seen: dict[str, int] = {}
        self.private_key: bytes | None = None
        self.listen_port: int | None = None
        self.addresses: list[IPv4Interface | IPv6Interface] = []
        self.mtu: tuple[int, int] | None = None  # (line, value)
        self.peers: list[_PeerState] = []

    def error(self, message: str, line: int | None) -> ConfigError:
        return ConfigError(message, line=line, source=self.source)

    def feed(self, lineno: int, raw: str) -> None:
        text = raw.split("#", 1)[0].strip()
        if not text:
            return
        if text.startswith("["):
            self.header(lineno, text)
            return
        if "=" not in text:
            raise self.error(f"expected 'Key = Value', got {text!r}", lineno)
        key, value = (part.strip() for part in text.split("=", 1))
        if not key:
            raise self.error(f"missing key name before '=' in {text!r}", lineno)
        lower = key.lower() if key.isascii() else key
        if self.section is None:
            raise self.error(
                f"{key}: key outside a section (expected [Interface] or [Peer] first)", lineno
            )
        known = _INTERFACE_KEYS if self.section == "interface" else _PEER_KEYS
        if lower not in known:
            section = "[Interface]" if self.section == "interface" else "[Peer]"
            raise self.error(f"{key}: unknown key in {section} (value {value!r})", lineno)
        if lower in _IGNORED_INTERFACE_KEYS:
            return  # wg-quick lets PostUp and friends repeat; none of them matter here
        seen = self.interface_seen if self.section == "interface" else self.peers[-1].seen
        if lower not in _LIST_KEYS:
            if lower in seen:
                raise self.error(
                    f"{known[lower]}: given twice (first on line {seen[lower]})", lineno
                )
            seen[lower] = lineno
        if self.section == "interface":
            self.interface_value(lower, value, lineno)
        else:
            self.peer_value(self.peers[-1], lower, value, lineno)

    def header(self, lineno: int, text: str) -> None:
        if not text.endswith("]"):
            raise self.error(f"malformed section header {text!r}", lineno)
        name = "".join(text[1:-1].split())
        lower = name.lower() if name.isascii() else name
        if lower == "interface":
            if self.interface_line:
                raise self.error(
                    f"duplicate [Interface] section (first on line {self.interface_line})", lineno
                )
            self.interface_line = lineno
        elif lower == "peer":
            self.peers.append(_PeerState(lineno, PeerConfig(b"")))
        else:
            raise self.error(f"unknown section [{name}] (expected [Interface] or [Peer])", lineno)
        self.section = lower

    def interface_value(self, key: str, value: str, lineno: int) -> None:
        if key == "privatekey":
            self.private_key = self.key("PrivateKey", value, lineno, secret=True)
        elif key == "listenport":
            self.listen_port = self.integer("ListenPort", value, lineno, 0, 65535)
        elif key == "address":
            for item in self.split_list("Address", value, lineno):
                self.addresses.append(self.address(item, lineno))
        elif key == "mtu":
            # The lower bound depends on the address families, known only at the end.
            self.mtu = (lineno, self.integer("MTU", value, lineno, MTU_MIN_IPV4, MTU_MAX))

    def peer_value(self, peer: _PeerState, key: str, value: str, lineno: int) -> None:
        config = peer.config
        if key == "publickey":
            config.public_key = self.key("PublicKey", value, lineno, secret=False)
            peer.key_line = lineno
        elif key == "presharedkey":
            config.preshared_key = self.key("PresharedKey", value, lineno, secret=True)
        elif key == "endpoint":
            config.endpoint = self.endpoint(value, lineno)
        elif key == "allowedips":
            for item in self.split_list("AllowedIPs", value, lineno, allow_empty=True):
                config.allowed_ips.append(self.network(item, lineno))
        elif key == "persistentkeepalive":
            if value.lower() == "off":
                config.persistent_keepalive = 0
            else:
                config.persistent_keepalive = self.integer(
                    "PersistentKeepalive", value, lineno, 0, 65535, extra=" or 'off'"
                )

    def finish(self) -> InterfaceConfig:
        if not self.interface_line:
            raise self.error("missing [Interface] section", None)
        if self.private_key is None:
            raise self.error("[Interface]: missing required key PrivateKey", self.interface_line)
        mtu = None
        if self.mtu is not None:
            lineno, mtu = self.mtu
            # RFC 8200 §5: a link carrying IPv6 needs an MTU of at least 1280.
            if mtu < MTU_MIN_IPV6 and any(a.version == 6 for a in self.addresses):
                raise self.error(
                    f"MTU: expected an integer {MTU_MIN_IPV6}-{MTU_MAX} with IPv6 addresses, "
                    f"got '{mtu}'",
                    lineno,
                )
        seen: dict[bytes, int] = {}
        for peer in self.peers:
            if not peer.key_line:
                raise self.error("[Peer]: missing required key PublicKey", peer.header_line)
            public_key = peer.config.public_key
            if public_key in seen:
                raise self.error(
                    f"PublicKey: duplicate peer {encode_key(public_key)!r} "
                    f"(first on line {seen[public_key]})",
                    peer.key_line,
                )
            seen[public_key] = peer.key_line
        return InterfaceConfig(
            self.private_key,
            self.listen_port,
            self.addresses,
            mtu,
            [peer.config for peer in self.peers],
        )

    def key(self, name: str, value: str, lineno: int, *, secret: bool) -> bytes:
        # Never echo a secret, even a mistyped one; parse_key's messages do not.
        shown = "" if secret else f" (value {value!r})"
        try:
            if not value.isascii():
                raise InvalidKeyError(f"{name}: expected base64 or hex, found non-ASCII characters")
            return parse_key(value, what=name)
        except ValueError as exc:  # InvalidKeyError, or any ValueError of the decoders
            raise InvalidKeyError(f"{exc}{shown}", line=lineno, source=self.source) from None

    def integer(
        self, name: str, value: str, lineno: int, low: int, high: int, *, extra: str = ""
    ) -> int:
        if _INTEGER.fullmatch(value) and low <= int(value) <= high:
            return int(value)
        raise self.error(f"{name}: expected an integer {low}-{high}{extra}, got {value!r}", lineno)

    def split_list(
        self, name: str, value: str, lineno: int, *, allow_empty: bool = False
    ) -> list[str]:
        # `AllowedIPs =` (empty) is how wg spells "none"; an empty item between commas is not.
        if not value and allow_empty:
            return []
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            raise self.error(f"{name}: empty entry in list {value!r}", lineno)
        return items

    def address(self, item: str, lineno: int) -> IPv4Interface | IPv6Interface:
        try:
            if "%" in item:
                raise ValueError(item)
            return ipaddress.ip_interface(item)
        except ValueError:
            raise self.error(
                f"Address: expected an IP address with optional /prefix, got {item!r}", lineno
            ) from None

    def network(self, item: str, lineno: int) -> IPv4Network | IPv6Network:
        try:
            if "%" in item:
                raise ValueError(item)
            # wg masks host bits (10.0.0.1/24 -> 10.0.0.0/24), hence strict=False.
            return ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise self.error(
                f"AllowedIPs: expected a CIDR like 10.0.0.0/24, got {item!r}", lineno
            ) from None

    def endpoint(self, value: str, lineno: int) -> tuple[str, int]:
        def bad(why: str) -> ConfigError:
            return self.error(f"Endpoint: {why}, got {value!r}", lineno)

        if value.startswith("["):
            close = value.find("]")
            if close < 0 or value[close + 1 : close + 2] != ":":
                raise bad("expected '[IPv6]:port'")
            host, port_text = value[1:close], value[close + 2 :]
            address, _, scope = host.partition("%")
            try:
                ipaddress.IPv6Address(address)
            except ValueError:
                raise bad("expected an IPv6 address inside brackets") from None
            if "%" in host and not _HOSTNAME.fullmatch(scope):
                raise bad("expected an interface name after '%'")
        else:
            host, sep, port_text = value.rpartition(":")
            if not sep or not host:
                raise bad("expected 'host:port'")
            if ":" in host:
                raise bad("IPv6 endpoints need brackets, as in '[fd00::1]:51820'")
            if not _HOSTNAME.fullmatch(host):
                raise bad("expected a host name or IPv4 address")
        if not _INTEGER.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise bad("expected a port 1-65535")
        return host, int(port_text)


def parse_config(text: str, *, source: str | None = None) -> InterfaceConfig:
    """Parse the text of a wg-quick or ``wg setconf`` configuration file.

    *source* (a file name) prefixes error messages. Raises :class:`ConfigError` (or its
    subclass :class:`InvalidKeyError` for a malformed key) with the 1-based line number for
    any syntax error, unknown section or key, missing required key, bad value or duplicate
    peer; nothing else is raised.
    """
    parser = _Parser(source)
    # Split on "\n" only (not str.splitlines' form feeds and separators) so line numbers
    # match what an editor shows; a trailing "\r" is whitespace to strip.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        parser.feed(lineno, raw)
    return parser.finish()


def load_config(path_or_text: str | os.PathLike[str]) -> InterfaceConfig:
    """Load a configuration from a file, or from text that contains ``[Interface]``.

    A path-like object, or a string naming an existing file, is read as UTF-8 and parsed with
    the file name in error messages. Any other string containing ``[Interface]`` is parsed as
    the configuration text itself. Raises :class:`ConfigError` when the file cannot be read,
    is not UTF-8, does not exist, or does not parse.
    """
    if isinstance(path_or_text, str) and not os.path.isfile(path_or_text):
        if "[interface]" in path_or_text.lower():
            return parse_config(path_or_text)
        shown = path_or_text if len(path_or_text) <= 200 else path_or_text[:200] + "..."
        raise ConfigError(f"no such file: {shown!r}")
    path = os.fspath(path_or_text)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path!r}: {exc}") from None
    return parse_config(text, source=path)


def _format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_config(cfg: InterfaceConfig) -> str:
    """Render *cfg* in wg-quick syntax; :func:`parse_config` of the result equals *cfg*.

    The output contains the private and pre-shared keys: treat it as a secret.
    """
    lines = ["[Interface]", f"PrivateKey = {encode_key(cfg.private_key)}"]
    if cfg.listen_port is not None:
        lines.append(f"ListenPort = {cfg.listen_port}")
    if cfg.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in cfg.addresses))
    if cfg.mtu is not None:
        lines.append(f"MTU = {cfg.mtu}")
    for peer in cfg.peers:
        lines += ["", "[Peer]", f"PublicKey = {encode_key(peer.public_key)}"]
        if peer.preshared_key is not None:
            lines.append(f"PresharedKey = {encode_key(peer.preshared_key)}")
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {_format_endpoint(peer.endpoint)}")
        if peer.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"
