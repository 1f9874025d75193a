"""Disco messages and the DERP-only responder (coder-control-plane.md §6; Go ``disco``)."""
from __future__ import annotations

import hashlib
import ipaddress

import pytest
from derp_pair import TEST_NODE_PUB, agent_disco_key, agent_key, client_key, disco_key
from hypothesis import given
from hypothesis import strategies as st

from agentconn.coder.disco import (
    MAGIC,
    PADDED_PAYLOAD_LEN,
    CallMeMaybe,
    CallMeMaybeReceived,
    DiscoError,
    DiscoResponder,
    Ping,
    PingReceived,
    Pong,
    PongReceived,
    emit_message,
    looks_like_disco,
    open_packet,
    parse_message,
    seal_packet,
)
from agentconn.coder.keys import DiscoPrivate, NodePublic

H = bytes.fromhex
TXID = bytes(range(1, 13))
IP = ipaddress.ip_address


def test_magic_and_padding() -> None:
    assert MAGIC == H("5453f09f92ac")
    # disco_test.go (CODER): 1310 − magic − key − nonce − box overhead = 1232-byte plaintext.
    assert PADDED_PAYLOAD_LEN == 1230
    assert len(emit_message(Ping(TXID))) == 1310 - 6 - 32 - 24 - 16


_NODE_KEY = NodePublic(bytes({1: 1, 2: 2, 30: 30, 31: 31}.get(i, 0) for i in range(32)))


@pytest.mark.parametrize(
    ("msg", "prefix"),
    [
        # disco/disco_test.go TestMarshalAndParse
        (Ping(TXID), "0101 0102030405060708090a0b0c"),
        (Ping(TXID, _NODE_KEY), "0101 0102030405060708090a0b0c 000102" + "00" * 27 + "1e1f"),
        (Pong(TXID, (IP("2.3.4.5"), 1234)),
         "0201 0102030405060708090a0b0c " + "00" * 10 + "ffff02030405 04d2"),
        (Pong(TXID, (IP("fed0::12"), 6666)),
         "0201 0102030405060708090a0b0c fed0" + "00" * 13 + "12 1a0a"),
        (CallMeMaybe(), "0300"),
        (CallMeMaybe(((IP("1.2.3.4"), 567), (IP("2001::3456"), 789))),
         "0300 00000000000000000000ffff01020304 0237 20010000000000000000000000003456 0315"),
    ],
)
def test_marshal_and_parse(msg: object, prefix: str) -> None:
    raw = emit_message(msg)  # type: ignore[arg-type]
    want = H(prefix.replace(" ", ""))
    assert raw.startswith(want)
    if isinstance(msg, CallMeMaybe):
        assert raw == want  # unpadded
    else:
        assert len(raw) == 2 + PADDED_PAYLOAD_LEN and not any(raw[len(want):])
    assert parse_message(raw) == msg


@pytest.mark.parametrize(
    ("payload", "msg"),
    [
        # disco/disco_test.go TestParsePingPongV0: unpadded version-0 messages
        ("0100 0102030405060708090a0b0c", Ping(TXID)),
        ("0100 0102030405060708090a0b0c 000102" + "00" * 27 + "1e1f", Ping(TXID, _NODE_KEY)),
        ("0200 0102030405060708090a0b0c 00000000000000000000ffff02030405 04d2",
         Pong(TXID, (IP("2.3.4.5"), 1234))),
        ("0200 0102030405060708090a0b0c fed00000000000000000000000000012 1a0a",
         Pong(TXID, (IP("fed0::12"), 6666))),
    ],
)
def test_parse_v0(payload: str, msg: object) -> None:
    assert parse_message(H(payload.replace(" ", ""))) == msg


def test_parse_rules() -> None:
    with pytest.raises(DiscoError, match="short message"):
        parse_message(b"\x01")
    with pytest.raises(DiscoError, match="short message"):
        parse_message(b"\x01\x01" + bytes(11))
    with pytest.raises(DiscoError, match="short message"):
        parse_message(b"\x02\x01" + bytes(29))
    with pytest.raises(DiscoError, match="unknown message type 0x09"):
        parse_message(b"\x09\x00")
    # CallMeMaybe: a bad version or a length not a multiple of 18 parses as empty.
    assert parse_message(b"\x03\x01" + bytes(18)) == CallMeMaybe()
    assert parse_message(b"\x03\x00" + bytes(19)) == CallMeMaybe()


@given(st.binary(max_size=1400))
def test_parse_never_crashes(data: bytes) -> None:
    try:
        parse_message(data)
    except DiscoError:
        pass


def test_sealed_ping_vector() -> None:
    # §8.3 computed: client→agent ping over DERP; TxID 01..0c, node key = test pub,
    # nonce c8..df; 1310 bytes.
    nonce = bytes(range(0xC8, 0xE0))
    packet = seal_packet(disco_key(), agent_disco_key().public,
                         Ping(TXID, NodePublic.parse(TEST_NODE_PUB)), nonce=nonce)
    assert len(packet) == 1310
    assert packet.startswith(
        H("5453f09f92ac" "e9c708de3be9cc95d079153cceaf5ffce8aa7fb218522ef826fbfb8ac2fc0b34")
        + nonce + H("3cf13ba6959d17fcefcc1f9cffd553ae5498"))
    assert hashlib.sha256(packet).hexdigest() == (
        "1e6973987c92666fa2484958bf58bbd99bde8e393d8081de678890e8ab4c1696")
    sender, msg = open_packet(agent_disco_key(), packet)
    assert sender == disco_key().public and msg == Ping(TXID, NodePublic.parse(TEST_NODE_PUB))


def test_pong_over_derp_plaintext() -> None:
    # §8.3 computed: the Pong for a ping over DERP region 999 says Src = 127.3.3.40:999.
    raw = emit_message(Pong(TXID, (IP("127.3.3.40"), 999)))
    assert raw.startswith(H("0201" "0102030405060708090a0b0c" + "00" * 10 + "ffff7f03032803e7"))


def test_open_rejects() -> None:
    assert not looks_like_disco(MAGIC + bytes(55))
    with pytest.raises(DiscoError, match="not a disco packet"):
        open_packet(disco_key(), b"\x01" * 100)
    packet = seal_packet(disco_key(), agent_disco_key().public, Ping(TXID))
    with pytest.raises(DiscoError, match="does not open"):
        open_packet(DiscoPrivate.generate(), packet)


def responders() -> tuple[DiscoResponder, DiscoResponder]:
    ours = DiscoResponder(disco_key(), client_key().public)
    agent = DiscoResponder(agent_disco_key(), agent_key().public)
    ours.add_peer(agent_disco_key().public, agent_key().public)
    agent.add_peer(disco_key().public, client_key().public)
    return ours, agent


def test_responder_answers_a_ping_over_derp() -> None:
    ours, agent = responders()
    tx = agent.ping(disco_key().public, 999, now=10.0)
    [(region, dst, packet)] = agent.packets_to_send()
    assert (region, dst, len(packet)) == (999, client_key().public, 1310)
    assert ours.receive_derp_packet(agent_key().public, packet, 999, now=10.0)
    assert ours.next_event() == PingReceived(agent_disco_key().public, agent_key().public, 999, tx)
    [(region, dst, pong)] = ours.packets_to_send()
    assert (region, dst) == (999, agent_key().public)
    _, msg = open_packet(agent_disco_key(), pong)
    assert msg == Pong(tx, (IP("127.3.3.40"), 999))
    assert agent.receive_derp_packet(client_key().public, pong, 999, now=10.25)
    assert agent.next_event() == PongReceived(
        disco_key().public, client_key().public, 999, tx, (IP("127.3.3.40"), 999), 0.25)


def test_responder_passes_wireguard_and_drops_bad_disco() -> None:
    ours, _ = responders()
    assert not ours.receive_derp_packet(agent_key().public, H("01000000") + bytes(144), 1, 0.0)
    stranger = DiscoPrivate.generate()
    ping = seal_packet(stranger, disco_key().public, Ping(TXID))
    assert ours.receive_derp_packet(agent_key().public, ping, 1, 0.0)
    good = seal_packet(agent_disco_key(), disco_key().public, Ping(TXID))
    assert ours.receive_derp_packet(NodePublic(bytes(32)), good, 1, 0.0)  # wrong DERP source
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    assert ours.receive_derp_packet(agent_key().public, tampered, 1, 0.0)
    bad_msg = seal_packet(agent_disco_key(), disco_key().public, Ping(TXID))
    assert ours.receive_derp_packet(agent_key().public, bad_msg, 1, 0.0)  # fine, answered
    unsolicited = seal_packet(agent_disco_key(), disco_key().public, Pong(TXID, (IP("1.1.1.1"), 1)))
    assert ours.receive_derp_packet(agent_key().public, unsolicited, 1, 0.0)
    assert dict(ours.drops) == {"unknown_peer": 1, "node_key_mismatch": 1, "bad_box": 1,
                                "unsolicited_pong": 1}
    assert len(ours.packets_to_send()) == 1


def test_responder_reports_call_me_maybe_and_expires_pings() -> None:
    ours, _ = responders()
    cmm = seal_packet(agent_disco_key(), disco_key().public,
                      CallMeMaybe(((IP("10.0.0.1"), 41641),)))
    ours.receive_derp_packet(agent_key().public, cmm, 1, 0.0)
    assert ours.next_event() == CallMeMaybeReceived(
        agent_disco_key().public, agent_key().public, ((IP("10.0.0.1"), 41641),))
    assert ours.packets_to_send() == []  # a DERP-only client ignores CallMeMaybe
    ours.ping(agent_disco_key().public, 1, now=0.0)
    assert ours.get_timer() == 5.0
    ours.handle_timer(5.0)
    assert ours.get_timer() is None
