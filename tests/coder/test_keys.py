"""Key text forms and client addresses (coder-control-plane.md §7; Go ``types/key``)."""
from __future__ import annotations

import ipaddress
import pickle

import pytest
from derp_pair import DISCO_PRIV, DISCO_PUB, TEST_NODE_PRIV, TEST_NODE_PUB
from hypothesis import given
from hypothesis import strategies as st

from agentconn.coder.keys import (
    DiscoPrivate,
    DiscoPublic,
    NodePrivate,
    NodePublic,
    derp_magic_endpoint,
    parse_untyped_hex,
    random_client_address,
    random_node_id,
)
from agentconn.errors import AgentConnError, InvalidKeyError
from agentconn.proto.ports import CODER_SERVICE_NETWORK, TAILSCALE_SERVICE_NETWORK


def test_node_serialization_vector() -> None:
    # types/key/node_test.go TestNodeSerialization: privkey:40ab… ↔ nodekey:50d2…
    priv = NodePrivate.parse(TEST_NODE_PRIV)
    assert str(priv) == TEST_NODE_PRIV
    assert priv.public == NodePublic.parse(TEST_NODE_PUB)
    assert str(priv.public) == TEST_NODE_PUB
    assert priv.public.untyped_hex() == TEST_NODE_PUB.removeprefix("nodekey:")
    assert "40ab1b58" not in repr(priv)  # private bytes stay out of repr


def test_disco_key_round_trip() -> None:
    # types/key/disco_test.go: discokey:<hex> round-trips through the text form.
    text = "discokey:50d20b455ecf12bc453f83c2cfdb2a24925d06cf2598dcaa54e91af82ce9f765"
    assert str(DiscoPublic.parse(text)) == text
    # §8.3 computed: disco private a0d8… → public e9c7…
    assert DiscoPrivate(bytes.fromhex(DISCO_PRIV)).public.hex() == DISCO_PUB


def test_node_key_binary_form() -> None:
    # types/key/node_test.go TestNodeKey: MarshalBinary = "np" ‖ 32 raw bytes.
    pub = NodePublic.parse(TEST_NODE_PUB)
    assert pub.to_binary() == b"np" + bytes(pub)
    assert NodePublic.from_binary(pub.to_binary()) == pub
    with pytest.raises(InvalidKeyError, match="missing/incorrect type prefix np"):
        NodePublic.from_binary(b"xx" + bytes(pub))
    with pytest.raises(InvalidKeyError, match=r"incorrect len for NodePublic \(33 != 34\)"):
        NodePublic.from_binary(b"np" + bytes(31))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("discokey:" + "00" * 32, "key hex string doesn't have expected type prefix nodekey:"),
        ("nodekey:" + "00" * 31, "key hex has the wrong size, got 62 want 64"),
        ("nodekey:" + "0g" * 32, "invalid hex character in key"),
        ("nodekey:" + "0 " * 32, "invalid hex character in key"),  # no whitespace slips through
    ],
)
def test_parse_errors_match_go(text: str, message: str) -> None:
    # types/key/util.go parseHex errors (never echo the key).
    with pytest.raises(InvalidKeyError) as info:
        NodePublic.parse(text)
    assert str(info.value) == message
    assert isinstance(info.value, AgentConnError)


def test_uppercase_hex_accepted_lowercase_emitted() -> None:
    pub = NodePublic.parse(TEST_NODE_PUB.upper().replace("NODEKEY:", "nodekey:"))
    assert str(pub) == TEST_NODE_PUB


def test_untyped_hex_and_short_string() -> None:
    pub = NodePublic.parse(TEST_NODE_PUB)
    assert parse_untyped_hex(pub.hex()) == bytes(pub)
    assert pub.short_string() == "[UNILR]"  # base64(50 d2 0b 45)[:5] = "UNILR"
    assert NodePublic(bytes(32)).short_string() == ""
    assert NodePublic(bytes(32)).is_zero


def test_public_key_is_its_bytes() -> None:
    pub = NodePublic.parse(TEST_NODE_PUB)
    raw = bytes(pub)
    assert pub == raw and hash(pub) == hash(raw)
    assert {raw: 1}[pub] == 1
    assert pickle.loads(pickle.dumps(pub)) == pub
    with pytest.raises(InvalidKeyError):
        NodePublic(b"short")


def test_generated_private_keys_are_clamped() -> None:
    for _ in range(8):
        raw = NodePrivate.generate().raw
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
    with pytest.raises(InvalidKeyError):
        NodePrivate(bytes(32))


@given(st.binary(min_size=32, max_size=32))
def test_text_form_round_trips(raw: bytes) -> None:
    for cls in (NodePublic, DiscoPublic):
        key = cls(raw)
        assert cls.parse(str(key)) == key


def test_client_address_and_node_id() -> None:
    # §1.6/§8.1: a DERP-only client picks a random /128 under fd7a:115c:a1e0::/48.
    addrs = {random_client_address() for _ in range(16)}
    assert len(addrs) == 16
    assert all(a in TAILSCALE_SERVICE_NETWORK for a in addrs)
    assert random_client_address(coder_prefix=True) in CODER_SERVICE_NETWORK
    ids = [random_node_id() for _ in range(16)]
    assert all(0 < i < 2**63 for i in ids)


def test_derp_magic_endpoint() -> None:
    # §6.3: a path through DERP region 999 is 127.3.3.40:999.
    assert derp_magic_endpoint(999) == (ipaddress.IPv4Address("127.3.3.40"), 999)
