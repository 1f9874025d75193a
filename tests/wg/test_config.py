"""Tests for agentconn.wg.config: wg-quick / wg setconf parsing, errors, formatting."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.errors import ConfigError, InvalidKeyError
from agentconn.wg.config import (
    InterfaceConfig,
    PeerConfig,
    format_config,
    load_config,
    parse_config,
)

# Keys from the EXAMPLE section of wg(8).
PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUB1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PSK1 = "/UwcSPg38hW/D9Y3tcS1FOV0K1wuURMbS0sesJEP5ak="
PUB2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
PUB3 = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="


def b64(key: str) -> bytes:
    return base64.b64decode(key)


# A full-featured file of the kind wg-quick users write (wg(8) and wg-quick(8) examples).
REAL_FILE = f"""\
# wg0 on the laptop
[Interface]
PrivateKey = {PRIV}
ListenPort = 51820
Address = 10.192.122.1/24, fd42:42:42::1/64
Address = 10.10.0.1/16
DNS = 10.192.122.254, example.internal
MTU = 1420
Table = off
FwMark = 0x1234
PreUp = true
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostUp = echo up
PreDown = true
PostDown = iptables -D FORWARD -i %i -j ACCEPT
SaveConfig = false

[Peer]
PublicKey = {PUB1}
PresharedKey = {PSK1}
Endpoint = 192.95.5.67:1234
AllowedIPs = 10.192.122.3/32, 10.192.124.1/24
PersistentKeepalive = 25

[Peer]
# a road warrior with an IPv6 endpoint
PublicKey = {PUB2}
Endpoint = [2607:5300:60:6b0::c05f:543]:2468
AllowedIPs = 10.192.122.4/32
AllowedIPs = 192.168.0.0/16, fd42:42:42::4
PersistentKeepalive = off

[Peer]
PublicKey = {PUB3}
Endpoint = test.wireguard.com:18981
AllowedIPs = 10.10.10.230/32
"""


def test_real_file() -> None:
    cfg = parse_config(REAL_FILE)
    assert cfg.private_key == b64(PRIV)
    assert cfg.listen_port == 51820
    assert cfg.addresses == [
        ipaddress.IPv4Interface("10.192.122.1/24"),
        ipaddress.IPv6Interface("fd42:42:42::1/64"),
        ipaddress.IPv4Interface("10.10.0.1/16"),
    ]
    assert cfg.mtu == 1420
    assert [p.public_key for p in cfg.peers] == [b64(PUB1), b64(PUB2), b64(PUB3)]
    p1, p2, p3 = cfg.peers
    assert p1.preshared_key == b64(PSK1)
    assert p1.endpoint == ("192.95.5.67", 1234)
    # Host bits are masked, as wg does: 10.192.124.1/24 -> 10.192.124.0/24.
    assert p1.allowed_ips == [
        ipaddress.ip_network("10.192.122.3/32"),
        ipaddress.ip_network("10.192.124.0/24"),
    ]
    assert p1.persistent_keepalive == 25
    assert p2.preshared_key is None
    assert p2.endpoint == ("2607:5300:60:6b0::c05f:543", 2468)
    assert p2.allowed_ips == [
        ipaddress.ip_network("10.192.122.4/32"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("fd42:42:42::4/128"),
    ]
    assert p2.persistent_keepalive == 0
    assert p3.endpoint == ("test.wireguard.com", 18981)
    assert p3.persistent_keepalive == 0


def test_real_file_round_trip() -> None:
    cfg = parse_config(REAL_FILE)
    assert parse_config(format_config(cfg)) == cfg


def test_minimal_and_defaults() -> None:
    cfg = parse_config(f"[Interface]\nPrivateKey={PRIV}\n")
    assert cfg == InterfaceConfig(b64(PRIV), None, [], None, [])
    assert format_config(cfg) == f"[Interface]\nPrivateKey = {PRIV}\n"


def test_case_insensitive_keys_and_sections() -> None:
    text = (
        f"[interface]\nprivatekey = {PRIV}\nLISTENPORT = 1\nmtu = 1400\n"
        f"[ PEER ]\npublickey = {PUB1}\nallowedips = 10.0.0.0/8\npersistentKEEPALIVE = 5\n"
    )
    cfg = parse_config(text)
    assert cfg.listen_port == 1
    assert cfg.mtu == 1400
    assert cfg.peers[0].allowed_ips == [ipaddress.ip_network("10.0.0.0/8")]
    assert cfg.peers[0].persistent_keepalive == 5


def test_comments_whitespace_crlf() -> None:
    text = (
        f"  # comment\r\n\r\n[Interface]   # trailing\r\n\tPrivateKey\t=\t{PRIV}  # c\r\n"
        "ListenPort=0\r\n"
    )
    cfg = parse_config(text)
    assert cfg.private_key == b64(PRIV)
    assert cfg.listen_port == 0


def test_empty_allowed_ips_means_none() -> None:
    cfg = parse_config(f"[Interface]\nPrivateKey={PRIV}\n[Peer]\nPublicKey={PUB1}\nAllowedIPs =\n")
    assert cfg.peers[0].allowed_ips == []


def test_bare_addresses_are_host_routes() -> None:
    text = (
        f"[Interface]\nPrivateKey={PRIV}\nAddress = 10.0.0.2, fd00::2\n"
        f"[Peer]\nPublicKey={PUB1}\nAllowedIPs = 10.0.0.1, fd00::1\n"
    )
    cfg = parse_config(text)
    assert cfg.addresses == [
        ipaddress.ip_interface("10.0.0.2/32"),
        ipaddress.ip_interface("fd00::2/128"),
    ]
    assert cfg.peers[0].allowed_ips == [
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("fd00::1/128"),
    ]


def test_peers_may_precede_interface() -> None:
    cfg = parse_config(f"[Peer]\nPublicKey={PUB1}\n[Interface]\nPrivateKey={PRIV}\n")
    assert cfg.peers[0].public_key == b64(PUB1)


@pytest.mark.parametrize(
    ("mtu", "address", "ok"),
    [
        ("576", "10.0.0.1/24", True),
        ("575", "10.0.0.1/24", False),
        ("1279", "10.0.0.1/24", True),
        ("1279", "fd00::1/64", False),
        ("1280", "fd00::1/64", True),
        ("65535", "fd00::1/64", True),
        ("65536", "10.0.0.1/24", False),
    ],
)
def test_mtu_bounds(mtu: str, address: str, ok: bool) -> None:
    text = f"[Interface]\nPrivateKey = {PRIV}\nMTU = {mtu}\nAddress = {address}\n"
    if ok:
        assert parse_config(text).mtu == int(mtu)
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(text)
        assert info.value.line == 3
        assert "MTU" in str(info.value) and mtu in str(info.value)


# (text, line, words that must appear in the message). The interface header and key are
# lines 1-2 unless a case changes them.
HEAD = f"[Interface]\nPrivateKey = {PRIV}\n"
ERROR_CASES = [
    pytest.param(
        HEAD + "ListenPort = abc\n", 3, ["ListenPort", "'abc'", "0-65535"], id="listenport-abc"
    ),
    pytest.param(HEAD + "ListenPort = 65536\n", 3, ["ListenPort", "65536"], id="listenport-big"),
    pytest.param(HEAD + "ListenPort = -1\n", 3, ["ListenPort", "-1"], id="listenport-neg"),
    pytest.param(HEAD + "ListenPort = ١٢\n", 3, ["ListenPort"], id="listenport-unicode-digits"),
    pytest.param(HEAD + "MTU = big\n", 3, ["MTU", "big"], id="mtu-nan"),
    pytest.param(HEAD + "MTU = " + "9" * 5000 + "\n", 3, ["MTU"], id="mtu-huge"),
    pytest.param(HEAD + "[Peers]\n", 3, ["Peers", "unknown section"], id="unknown-section"),
    pytest.param(HEAD + "[Interface\n", 3, ["[Interface"], id="malformed-header"),
    pytest.param(HEAD + "Frobnicate = 1\n", 3, ["Frobnicate", "unknown key"], id="unknown-key"),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nListenPort = 1\n",
        5,
        ["ListenPort", "unknown key"],
        id="interface-key-in-peer",
    ),
    pytest.param(
        HEAD + f"PublicKey = {PUB1}\n", 3, ["PublicKey", "unknown key"], id="peer-key-in-interface"
    ),
    pytest.param(
        f"# hi\nPrivateKey = {PRIV}\n[Interface]\n",
        2,
        ["PrivateKey", "outside a section"],
        id="outside-section",
    ),
    pytest.param(
        HEAD + "ListenPort 51820\n", 3, ["ListenPort 51820", "Key = Value"], id="missing-equals"
    ),
    pytest.param(HEAD + "= 5\n", 3, ["missing key name"], id="missing-key"),
    pytest.param(
        HEAD + "ListenPort = 1\nlistenport = 2\n",
        4,
        ["ListenPort", "given twice", "line 3"],
        id="duplicate-key",
    ),
    pytest.param(HEAD + "[Interface]\n", 3, ["duplicate [Interface]"], id="duplicate-interface"),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\n[Peer]\nPublicKey = {PUB1}\n",
        6,
        ["PublicKey", "duplicate peer", PUB1, "line 4"],
        id="duplicate-public-key",
    ),
    pytest.param(
        "# x\n[Interface]\nListenPort = 1\n", 2, ["PrivateKey", "missing"], id="missing-private-key"
    ),
    pytest.param(
        HEAD + "\n[Peer]\nAllowedIPs = 10.0.0.0/8\n",
        4,
        ["PublicKey", "missing"],
        id="missing-public-key",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1[:-2]}=\n",
        4,
        ["PublicKey", repr(PUB1[:-2] + "=")],
        id="short-public-key",
    ),
    pytest.param(
        HEAD + "[Peer]\nPublicKey = " + "!" * 43 + "=\n",
        4,
        ["PublicKey", "base64"],
        id="bad-base64-public-key",
    ),
    pytest.param(
        HEAD + "[Peer]\nPublicKey = " + "A" * 44 + "\n",
        4,
        ["PublicKey"],
        id="no-padding-public-key",
    ),
    pytest.param(
        f"[Interface]\nPrivateKey = {PRIV[:20]}\n", 2, ["PrivateKey"], id="short-private-key"
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nPresharedKey = abc\n",
        5,
        ["PresharedKey"],
        id="bad-psk",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.0/33\n",
        5,
        ["AllowedIPs", "10.0.0.0/33"],
        id="cidr-prefix",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.0/8, banana\n",
        5,
        ["AllowedIPs", "banana"],
        id="cidr-word",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.0.0.0/8,,10.1.0.0/16\n",
        5,
        ["AllowedIPs", "empty entry"],
        id="cidr-empty-item",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nAllowedIPs = fe80::1%eth0/128\n",
        5,
        ["AllowedIPs", "fe80::1%eth0"],
        id="cidr-zone",
    ),
    pytest.param(
        HEAD + "Address = 10.0.0.256/24\n", 3, ["Address", "10.0.0.256/24"], id="bad-address"
    ),
    pytest.param(HEAD + "Address =\n", 3, ["Address"], id="empty-address"),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = example.com\n",
        5,
        ["Endpoint", "example.com"],
        id="endpoint-no-port",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = :51820\n",
        5,
        ["Endpoint", ":51820"],
        id="endpoint-no-host",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = fd00::1:51820\n",
        5,
        ["Endpoint", "brackets"],
        id="endpoint-v6-unbracketed",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = [fd00::1]51820\n",
        5,
        ["Endpoint", "[fd00::1]51820"],
        id="endpoint-v6-no-colon",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = [fd00::1:51820\n",
        5,
        ["Endpoint"],
        id="endpoint-v6-unclosed",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = [example.com]:1\n",
        5,
        ["Endpoint", "IPv6"],
        id="endpoint-bracketed-name",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = example.com:0\n",
        5,
        ["Endpoint", "port"],
        id="endpoint-port-0",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = example.com:70000\n",
        5,
        ["Endpoint", "70000"],
        id="endpoint-port-big",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nEndpoint = exa mple.com:1\n",
        5,
        ["Endpoint", "exa mple.com"],
        id="endpoint-space",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nPersistentKeepalive = soon\n",
        5,
        ["PersistentKeepalive", "soon"],
        id="keepalive-word",
    ),
    pytest.param(
        HEAD + f"[Peer]\nPublicKey = {PUB1}\nPersistentKeepalive = 65536\n",
        5,
        ["PersistentKeepalive", "65536"],
        id="keepalive-big",
    ),
    pytest.param(
        HEAD + "DNS = 1.1.1.1\n[Peer]\nPublicKey = " + PUB1 + "\nDNS = 1.1.1.1\n",
        6,
        ["DNS", "unknown key"],
        id="dns-in-peer",
    ),
]


@pytest.mark.parametrize(("text", "line", "words"), ERROR_CASES)
def test_errors_name_line_key_and_value(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.line == line
    message = str(info.value)
    assert message.startswith(f"line {line}: ")
    for word in words:
        assert word in message


def test_error_carries_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + "ListenPort = x\n", source="wg0.conf")
    assert str(info.value).startswith("wg0.conf:3: ListenPort")
    assert info.value.source == "wg0.conf"


def test_missing_interface_section() -> None:
    with pytest.raises(ConfigError, match=r"missing \[Interface\]"):
        parse_config(f"[Peer]\nPublicKey = {PUB1}\n")
    with pytest.raises(ConfigError, match=r"missing \[Interface\]"):
        parse_config("")


def test_bad_keys_raise_invalid_key_error_without_echoing_secrets() -> None:
    secret = PRIV[:-3] + "=="  # 43 characters: wrong length
    with pytest.raises(InvalidKeyError) as info:
        parse_config(f"[Interface]\nPrivateKey = {secret}\n")
    assert info.value.line == 2
    assert secret not in str(info.value) and PRIV[:10] not in str(info.value)
    bad_psk = "Z" * 44  # right length, no padding
    with pytest.raises(InvalidKeyError) as info:
        parse_config(HEAD + f"[Peer]\nPublicKey = {PUB1}\nPresharedKey = {bad_psk}\n")
    assert bad_psk not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("é" * 44, id="non-ascii"),
        pytest.param(PUB1[:42] + "h=", id="non-canonical"),  # stray low bits before '='
        pytest.param("g" * 64, id="not-hex"),
    ],
)
def test_more_bad_public_keys(value: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        parse_config(HEAD + f"[Peer]\nPublicKey = {value}\n")
    assert info.value.line == 4
    assert "PublicKey" in str(info.value) and repr(value) in str(info.value)


def test_hex_keys_are_accepted_too() -> None:
    # wg prints base64; the UAPI uses hex. agentconn.wg.keys.parse_key takes both.
    cfg = parse_config(f"[Interface]\nPrivateKey = {b64(PRIV).hex()}\n")
    assert cfg.private_key == b64(PRIV)


def test_first_bad_line_is_reported() -> None:
    # Both ListenPort and PrivateKey are bad: the earlier line wins.
    with pytest.raises(ConfigError) as info:
        parse_config("[Interface]\nListenPort = x\nPrivateKey = y\n")
    assert info.value.line == 2


def test_load_config_from_path_str_and_text(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(REAL_FILE)
    expected = parse_config(REAL_FILE)
    assert load_config(path) == expected
    assert load_config(str(path)) == expected
    assert load_config(REAL_FILE) == expected


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.conf")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory
    bad = tmp_path / "bad.conf"
    bad.write_text(HEAD + "MTU = x\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}:3: MTU")
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"\xff\xfe[Interface]\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)


# --- properties -------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
v4_nets = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_nets = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
v4_ifaces = st.builds(
    lambda a, p: ipaddress.IPv4Interface((a, p)), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
v6_ifaces = st.builds(
    lambda a, p: ipaddress.IPv6Interface((a, p)), st.integers(0, 2**128 - 1), st.integers(0, 128)
)
hosts = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
endpoints = st.tuples(hosts, st.integers(1, 65535))
peers = st.builds(
    PeerConfig,
    public_key=keys,
    preshared_key=st.none() | keys,
    endpoint=st.none() | endpoints,
    allowed_ips=st.lists(st.one_of(v4_nets, v6_nets), max_size=4),
    persistent_keepalive=st.integers(0, 65535),
)


@st.composite
def configs(draw: st.DrawFn) -> InterfaceConfig:
    addresses = draw(st.lists(st.one_of(v4_ifaces, v6_ifaces), max_size=4))
    low = 1280 if any(a.version == 6 for a in addresses) else 576
    return InterfaceConfig(
        private_key=draw(keys),
        listen_port=draw(st.none() | st.integers(0, 65535)),
        addresses=addresses,
        mtu=draw(st.none() | st.integers(low, 65535)),
        peers=draw(st.lists(peers, max_size=4, unique_by=lambda p: p.public_key)),
    )


@given(configs())
def test_format_parse_round_trip(cfg: InterfaceConfig) -> None:
    assert parse_config(format_config(cfg)) == cfg


KEY_NAMES = [
    "PrivateKey",
    "ListenPort",
    "Address",
    "MTU",
    "FwMark",
    "DNS",
    "PostUp",
    "PublicKey",
    "PresharedKey",
    "Endpoint",
    "AllowedIPs",
    "PersistentKeepalive",
    "Bogus",
]
VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            PRIV,
            PUB1,
            "0",
            "65535",
            "65536",
            "off",
            "10.0.0.0/8",
            "fd00::/8",
            "[::1]:1",
            "a:1",
            "::",
            "",
            "=",
            "#",
        ]
    ),
)
LINES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["[Interface]", "[Peer]", "[peer]", "[", "]", "[]", "#", "="]),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEY_NAMES), VALUES),
)


@given(st.lists(LINES, max_size=12))
def test_random_text_only_raises_config_error(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        cfg = parse_config(text)
    except ConfigError:
        return
    assert isinstance(cfg, InterfaceConfig)
    # Whatever parses also formats and parses back to the same thing.
    assert parse_config(format_config(cfg)) == cfg


@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    try:
        parse_config(HEAD + text)
    except ConfigError:
        pass
