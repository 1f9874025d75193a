"""The Noise_IKpsk2 handshake: the deterministic vector of spec §14.3, both roles, and every way
a handshake message must be refused (spec §4, §9 step 5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentconn.errors import InvalidKeyError
from agentconn.wg import crypto
from agentconn.wg.constants import (
    C0,
    H0,
    HANDSHAKE_INITIATION_RATE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    OFFSET_INITIATION_MAC1,
    OFFSET_RESPONSE_MAC1,
)
from agentconn.wg.cookie import CookieChecker, CookieGenerator
from agentconn.wg.keys import StaticIdentity
from agentconn.wg.messages import Initiation, TransportHeader
from agentconn.wg.noise import (
    ConsumedInitiation,
    Handshake,
    HandshakeState,
    HandshakeStateError,
    consume_initiation,
)

VECTOR: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "wg_handshake.json").read_text()
)
INPUTS: dict[str, Any] = VECTOR["inputs"]
STEPS: dict[str, str] = VECTOR["intermediate"]
H = bytes.fromhex

UNIX_TIME = INPUTS["unix_seconds"] + INPUTS["nanoseconds"] / 1e9
I_INDEX = INPUTS["initiator_index"]
R_INDEX = INPUTS["responder_index"]
E_I = H(INPUTS["initiator_ephemeral_private"])
E_R = H(INPUTS["responder_ephemeral_private"])
MESSAGE1 = H(VECTOR["message1"])
MESSAGE2 = H(VECTOR["message2"])
# An order-8 point: X25519 with it is all zeros for every clamped scalar (RFC 7748 §7).
LOW_ORDER_POINT = H("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")

ALICE = StaticIdentity(H(INPUTS["initiator_static_private"]))
BOB = StaticIdentity(H(INPUTS["responder_static_private"]))


def lookup_for(*handshakes: Handshake) -> Callable[[bytes], bytes | None]:
    """The device's peer table, reduced to what consume_initiation needs."""
    table = {h.peer_public: h.precomputed_static_static for h in handshakes}
    return table.get


def vector_initiation(initiator: Handshake, unix_time: float = UNIX_TIME) -> bytearray:
    message = initiator.create_initiation(I_INDEX, unix_time, ephemeral_private=E_I)
    CookieGenerator(BOB.public).add_macs(message, now=0.0)
    return message


def vector_response(responder: Handshake) -> bytearray:
    message = responder.create_response(R_INDEX, ephemeral_private=E_R)
    CookieGenerator(ALICE.public).add_macs(message, now=0.0)
    return message


def responder_after_message1(now: float = 100.0) -> Handshake:
    responder = Handshake(BOB, ALICE.public)
    consumed = consume_initiation(BOB, MESSAGE1, lookup_for(responder))
    assert consumed is not None
    assert responder.accept_initiation(consumed, now)
    return responder


# --- the vector ------------------------------------------------------------------------------


def test_vector_cites_source_and_inputs_are_consistent() -> None:
    assert "§14.3" in VECTOR["source"]
    assert ALICE.public.hex() == INPUTS["initiator_static_public"]
    assert BOB.public.hex() == INPUTS["responder_static_public"]
    assert crypto.clamp(E_I).hex() == INPUTS["initiator_ephemeral_private_clamped"]
    assert crypto.public_key(crypto.clamp(E_I)).hex() == INPUTS["initiator_ephemeral_public"]
    assert crypto.public_key(E_R).hex() == INPUTS["responder_ephemeral_public"]
    assert crypto.tai64n(UNIX_TIME).hex() == INPUTS["timestamp"]
    assert len(MESSAGE1) == MESSAGE_INITIATION_SIZE and len(MESSAGE2) == MESSAGE_RESPONSE_SIZE


def test_vector_step_by_step_with_primitives() -> None:
    """Replay the whitepaper's lines with crypto.* and compare every intermediate value."""
    s_r_pub, s_i_pub = BOB.public, ALICE.public
    e_i, e_r = crypto.clamp(E_I), E_R
    e_i_pub, e_r_pub = crypto.public_key(e_i), crypto.public_key(e_r)
    h = crypto.hash_(H0 + s_r_pub)
    assert h.hex() == STEPS["h_after_responder_static"]
    c = crypto.kdf1(C0, e_i_pub)
    h = crypto.hash_(h + e_i_pub)
    assert (c.hex(), h.hex()) == (
        STEPS["c_after_initiator_ephemeral"],
        STEPS["h_after_initiator_ephemeral"],
    )
    dh_es = crypto.dh(e_i, s_r_pub)
    assert dh_es.hex() == STEPS["dh_ei_sr"]
    c, k = crypto.kdf2(c, dh_es)
    assert (c.hex(), k.hex()) == (STEPS["c_after_es"], STEPS["k_es"])
    static = crypto.aead_encrypt(k, 0, s_i_pub, h)
    h = crypto.hash_(h + static)
    assert h.hex() == STEPS["h_after_static"]
    dh_ss = crypto.dh(ALICE.private, s_r_pub)
    assert dh_ss.hex() == STEPS["dh_si_sr"]
    c, k = crypto.kdf2(c, dh_ss)
    assert (c.hex(), k.hex()) == (STEPS["c_after_ss"], STEPS["k_ss"])
    timestamp = crypto.aead_encrypt(k, 0, H(INPUTS["timestamp"]), h)
    h = crypto.hash_(h + timestamp)
    assert h.hex() == STEPS["h_after_timestamp"]
    c = crypto.kdf1(c, e_r_pub)
    h = crypto.hash_(h + e_r_pub)
    assert (c.hex(), h.hex()) == (
        STEPS["c_after_responder_ephemeral"],
        STEPS["h_after_responder_ephemeral"],
    )
    dh_ee = crypto.dh(e_r, e_i_pub)
    assert dh_ee.hex() == STEPS["dh_er_ei"]
    c = crypto.kdf1(c, dh_ee)
    assert c.hex() == STEPS["c_after_ee"]
    dh_se = crypto.dh(e_r, s_i_pub)
    assert dh_se.hex() == STEPS["dh_er_si"]
    c = crypto.kdf1(c, dh_se)
    assert c.hex() == STEPS["c_after_se"]
    c, tau, k = crypto.kdf3(c, H(INPUTS["preshared_key"]))
    assert (c.hex(), tau.hex(), k.hex()) == (STEPS["c_after_psk"], STEPS["tau"], STEPS["k_psk"])
    h = crypto.hash_(h + tau)
    assert h.hex() == STEPS["h_after_tau"]
    empty = crypto.aead_encrypt(k, 0, b"", h)
    h = crypto.hash_(h + empty)
    assert h.hex() == STEPS["handshake_hash"]
    t1, t2 = crypto.kdf2(c, b"")
    assert (t1.hex(), t2.hex()) == (VECTOR["initiator_send_key"], VECTOR["initiator_receive_key"])


def test_initiator_creates_message1() -> None:
    initiator = Handshake(ALICE, BOB.public)
    message = vector_initiation(initiator)
    assert isinstance(message, bytearray)
    assert message.hex() == VECTOR["message1"]
    assert initiator.state is HandshakeState.INITIATION_CREATED
    assert initiator.local_index == I_INDEX
    assert initiator.handshake_hash.hex() == STEPS["h_after_timestamp"]


def test_create_initiation_leaves_macs_zero() -> None:
    message = Handshake(ALICE, BOB.public).create_initiation(
        I_INDEX, UNIX_TIME, ephemeral_private=E_I
    )
    assert message[:OFFSET_INITIATION_MAC1] == MESSAGE1[:OFFSET_INITIATION_MAC1]
    assert message[OFFSET_INITIATION_MAC1:] == bytes(32)


def test_responder_consumes_message1_and_creates_message2() -> None:
    responder = Handshake(BOB, ALICE.public)
    consumed = consume_initiation(BOB, MESSAGE1, lookup_for(responder))
    assert consumed == ConsumedInitiation(
        peer_public=ALICE.public,
        timestamp=H(INPUTS["timestamp"]),
        sender_index=I_INDEX,
        remote_ephemeral=H(INPUTS["initiator_ephemeral_public"]),
        chaining_key=H(STEPS["c_after_ss"]),
        hash=H(STEPS["h_after_timestamp"]),
    )
    assert responder.state is HandshakeState.ZEROED
    assert responder.accept_initiation(consumed, now=100.0)
    assert responder.state is HandshakeState.INITIATION_CONSUMED
    assert responder.remote_index == I_INDEX

    response = vector_response(responder)
    assert response.hex() == VECTOR["message2"]
    assert responder.state is HandshakeState.RESPONSE_CREATED
    assert responder.handshake_hash.hex() == STEPS["handshake_hash"]

    keys = responder.derive_keys()
    assert keys.send_key.hex() == VECTOR["initiator_receive_key"]
    assert keys.receive_key.hex() == VECTOR["initiator_send_key"]
    assert (keys.local_index, keys.remote_index, keys.is_initiator) == (R_INDEX, I_INDEX, False)
    assert responder.state is HandshakeState.ZEROED
    assert responder.handshake_hash == bytes(32)


def test_initiator_consumes_message2_and_derives_keys() -> None:
    initiator = Handshake(ALICE, BOB.public)
    vector_initiation(initiator)
    assert initiator.consume_response(MESSAGE2)
    assert initiator.state is HandshakeState.RESPONSE_CONSUMED
    assert initiator.remote_index == R_INDEX
    assert initiator.handshake_hash.hex() == STEPS["handshake_hash"]
    keys = initiator.derive_keys()
    assert keys.send_key.hex() == VECTOR["initiator_send_key"]
    assert keys.receive_key.hex() == VECTOR["initiator_receive_key"]
    assert (keys.local_index, keys.remote_index, keys.is_initiator) == (I_INDEX, R_INDEX, True)
    assert initiator.state is HandshakeState.ZEROED
    assert keys.send_key.hex() not in repr(keys)


def test_first_keepalive_and_data_message() -> None:
    initiator = Handshake(ALICE, BOB.public)
    vector_initiation(initiator)
    assert initiator.consume_response(MESSAGE2)
    initiator_keys = initiator.derive_keys()
    responder = responder_after_message1()
    vector_response(responder)
    responder_keys = responder.derive_keys()

    keepalive = TransportHeader(initiator_keys.remote_index, 0).emit() + crypto.aead_encrypt(
        initiator_keys.send_key, 0, b"", b""
    )
    assert keepalive.hex() == VECTOR["keepalive"]
    header = TransportHeader.parse(keepalive)
    assert header.receiver_index == responder_keys.local_index
    assert (
        crypto.aead_decrypt(responder_keys.receive_key, header.counter, keepalive[16:], b"") == b""
    )

    inner = H(VECTOR["data_inner"])
    padded = inner + bytes(VECTOR["data_padded_length"] - len(inner))
    data = TransportHeader(responder_keys.remote_index, 0).emit() + crypto.aead_encrypt(
        responder_keys.send_key, 0, padded, b""
    )
    assert data.hex() == VECTOR["data_message"]
    assert len(data) == 80
    assert crypto.aead_decrypt(initiator_keys.receive_key, 0, data[16:], b"") == padded


def test_cookie_checker_accepts_vector_mac1() -> None:
    assert CookieChecker(BOB.public).check_mac1(MESSAGE1)
    assert CookieChecker(ALICE.public).check_mac1(MESSAGE2)


# --- random keys, both roles -----------------------------------------------------------------


def handshake_pair(
    psk_i: bytes | None = None, psk_r: bytes | None = None
) -> tuple[Handshake, Handshake, StaticIdentity, StaticIdentity]:
    a = StaticIdentity(crypto.dh_generate())
    b = StaticIdentity(crypto.dh_generate())
    return Handshake(a, b.public, psk_i), Handshake(b, a.public, psk_r), a, b


@pytest.mark.parametrize("psk", [None, bytes(range(32))])
def test_random_handshake_agrees(psk: bytes | None) -> None:
    initiator, responder, _, b = handshake_pair(psk, psk)
    message1 = initiator.create_initiation(1, 1_700_000_000.0)
    consumed = consume_initiation(b, message1, lookup_for(responder))
    assert consumed is not None and responder.accept_initiation(consumed, now=5.0)
    message2 = responder.create_response(2)
    assert initiator.consume_response(message2)
    assert initiator.handshake_hash == responder.handshake_hash
    ki, kr = initiator.derive_keys(), responder.derive_keys()
    assert (ki.send_key, ki.receive_key) == (kr.receive_key, kr.send_key)
    assert ki.send_key != ki.receive_key


def test_psk_mismatch_fails_response() -> None:
    initiator, responder, _, b = handshake_pair(None, bytes(range(32)))
    message1 = initiator.create_initiation(1, 1_700_000_000.0)
    consumed = consume_initiation(b, message1, lookup_for(responder))
    assert consumed is not None and responder.accept_initiation(consumed, now=5.0)
    assert not initiator.consume_response(responder.create_response(2))
    assert initiator.state is HandshakeState.INITIATION_CREATED


def test_new_initiation_replaces_old_one() -> None:
    initiator, responder, _, b = handshake_pair()
    initiator.create_initiation(1, 1_700_000_000.0)
    message1 = initiator.create_initiation(2, 1_700_000_005.0)
    assert initiator.local_index == 2
    consumed = consume_initiation(b, message1, lookup_for(responder))
    assert consumed is not None and responder.accept_initiation(consumed, now=5.0)
    assert initiator.consume_response(responder.create_response(3))


# --- refusals --------------------------------------------------------------------------------


def tampered(message: bytes, index: int, mask: int) -> bytes:
    out = bytearray(message)
    out[index] ^= mask
    return bytes(out)


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_tampered_message1_is_refused(mask: int) -> None:
    """Bytes 8..116 are covered by the AEADs (via H); 0..4 by the type match; 4..8 and 116..132
    only by mac1, which the cookie checker verifies before consume_initiation runs."""
    responder = Handshake(BOB, ALICE.public)
    checker = CookieChecker(BOB.public)
    for index in range(MESSAGE_INITIATION_SIZE - 16):  # mac2 is only checked under load
        message = tampered(MESSAGE1, index, mask)
        accepted = checker.check_mac1(message) and (
            consume_initiation(BOB, message, lookup_for(responder)) is not None
        )
        assert not accepted, f"byte {index} ^ {mask:#x}"
        if 8 <= index < OFFSET_INITIATION_MAC1 or index < 4:
            assert consume_initiation(BOB, message, lookup_for(responder)) is None, index


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_tampered_message2_is_refused(mask: int) -> None:
    """Bytes 8..60 are covered by the index check and the AEAD; 4..8 and 60..76 by mac1."""
    checker = CookieChecker(ALICE.public)
    for index in range(MESSAGE_RESPONSE_SIZE - 16):
        initiator = Handshake(ALICE, BOB.public)
        vector_initiation(initiator)
        message = tampered(MESSAGE2, index, mask)
        accepted = checker.check_mac1(message) and initiator.consume_response(message)
        assert not accepted, f"byte {index} ^ {mask:#x}"
        if 8 <= index < OFFSET_RESPONSE_MAC1 or index < 4:
            assert not initiator.consume_response(message), index
            assert initiator.state is HandshakeState.INITIATION_CREATED


def test_failed_response_leaves_state_for_the_genuine_one() -> None:
    initiator = Handshake(ALICE, BOB.public)
    vector_initiation(initiator)
    assert not initiator.consume_response(tampered(MESSAGE2, 50, 1))
    assert initiator.state is HandshakeState.INITIATION_CREATED
    assert initiator.handshake_hash.hex() == STEPS["h_after_timestamp"]
    assert initiator.consume_response(MESSAGE2)


def test_wrong_receiver_index_is_refused() -> None:
    initiator = Handshake(ALICE, BOB.public)
    message = initiator.create_initiation(I_INDEX + 1, UNIX_TIME, ephemeral_private=E_I)
    assert message[4:8] != MESSAGE1[4:8]
    assert not initiator.consume_response(MESSAGE2)
    assert initiator.state is HandshakeState.INITIATION_CREATED


def test_response_in_wrong_state_is_refused() -> None:
    initiator = Handshake(ALICE, BOB.public)
    assert not initiator.consume_response(MESSAGE2)  # ZEROED
    vector_initiation(initiator)
    assert initiator.consume_response(MESSAGE2)
    assert not initiator.consume_response(MESSAGE2)  # RESPONSE_CONSUMED: no second time
    initiator.derive_keys()
    assert not initiator.consume_response(MESSAGE2)  # ZEROED again


def test_non_messages_are_refused() -> None:
    responder = Handshake(BOB, ALICE.public)
    initiator = Handshake(ALICE, BOB.public)
    vector_initiation(initiator)
    for junk in (b"", MESSAGE1[:-1], MESSAGE1 + b"\0", MESSAGE2, bytes(148)):
        assert consume_initiation(BOB, junk, lookup_for(responder)) is None
    for junk in (b"", MESSAGE2[:-1], MESSAGE1, b"\x02\x01\x00\x00" + MESSAGE2[4:]):
        assert not initiator.consume_response(junk)


def test_unknown_peer_is_refused() -> None:
    stranger = Handshake(BOB, crypto.public_key(crypto.dh_generate()))
    assert consume_initiation(BOB, MESSAGE1, lookup_for(stranger)) is None
    assert consume_initiation(BOB, MESSAGE1, lambda public: None) is None


def test_initiation_for_someone_else_is_refused() -> None:
    carol = StaticIdentity(crypto.dh_generate())
    responder = Handshake(carol, ALICE.public)
    assert consume_initiation(carol, MESSAGE1, lookup_for(responder)) is None


def test_accept_refuses_consumed_initiation_of_another_peer() -> None:
    responder = Handshake(BOB, ALICE.public)
    consumed = consume_initiation(BOB, MESSAGE1, lookup_for(responder))
    assert consumed is not None
    other = Handshake(BOB, crypto.public_key(crypto.dh_generate()))
    assert not other.accept_initiation(consumed, now=1.0)
    assert other.state is HandshakeState.ZEROED


def test_replayed_initiation_is_refused() -> None:
    responder = responder_after_message1(now=100.0)
    consumed = consume_initiation(BOB, MESSAGE1, lookup_for(responder))
    assert consumed is not None  # it decrypts, but it is a replay
    assert not responder.accept_initiation(consumed, now=200.0)
    # An older timestamp too, and clear() does not forget the greatest one.
    older = vector_initiation(Handshake(ALICE, BOB.public), UNIX_TIME - 10)
    consumed_older = consume_initiation(BOB, older, lookup_for(responder))
    assert consumed_older is not None
    responder.clear()
    assert not responder.accept_initiation(consumed_older, now=300.0)
    assert not responder.accept_initiation(consumed, now=300.0)
    assert responder.state is HandshakeState.ZEROED


def test_initiation_flood_is_refused() -> None:
    responder = responder_after_message1(now=100.0)
    newer = vector_initiation(Handshake(ALICE, BOB.public), UNIX_TIME + 1)
    consumed = consume_initiation(BOB, newer, lookup_for(responder))
    assert consumed is not None
    assert not responder.accept_initiation(consumed, now=100.0 + HANDSHAKE_INITIATION_RATE / 2)
    assert not responder.accept_initiation(consumed, now=100.019)
    # A refused initiation does not move the flood stamp; 20 ms after the accepted one passes.
    assert responder.accept_initiation(consumed, now=100.0 + HANDSHAKE_INITIATION_RATE + 0.001)
    assert responder.remote_index == I_INDEX


def test_refused_initiation_keeps_pending_state() -> None:
    responder = responder_after_message1(now=100.0)
    consumed = consume_initiation(BOB, MESSAGE1, lookup_for(responder))
    assert consumed is not None
    assert not responder.accept_initiation(consumed, now=200.0)
    assert responder.state is HandshakeState.INITIATION_CONSUMED
    assert vector_response(responder).hex() == VECTOR["message2"]


def test_all_zero_static_static_is_refused() -> None:
    with pytest.raises(InvalidKeyError, match="all-zero"):
        Handshake(ALICE, LOW_ORDER_POINT)
    with pytest.raises(InvalidKeyError):
        Handshake(ALICE, bytes(31))
    with pytest.raises(InvalidKeyError):
        Handshake(ALICE, BOB.public, preshared_key=bytes(16))


def test_low_order_ephemerals_are_refused() -> None:
    responder = Handshake(BOB, ALICE.public)
    bad1 = Initiation.parse(MESSAGE1)
    forged = Initiation(
        bad1.sender_index,
        LOW_ORDER_POINT,
        bad1.encrypted_static,
        bad1.encrypted_timestamp,
        bad1.mac1,
        bad1.mac2,
    ).emit()
    assert consume_initiation(BOB, forged, lookup_for(responder)) is None

    initiator = Handshake(ALICE, BOB.public)
    vector_initiation(initiator)
    forged2 = MESSAGE2[:12] + LOW_ORDER_POINT + MESSAGE2[44:]
    assert not initiator.consume_response(forged2)
    assert initiator.state is HandshakeState.INITIATION_CREATED


def test_api_misuse_raises() -> None:
    handshake = Handshake(ALICE, BOB.public)
    with pytest.raises(HandshakeStateError, match="ZEROED"):
        handshake.create_response(1)
    with pytest.raises(HandshakeStateError, match="ZEROED"):
        handshake.derive_keys()
    vector_initiation(handshake)
    with pytest.raises(HandshakeStateError, match="INITIATION_CREATED"):
        handshake.derive_keys()
    responder = responder_after_message1()
    with pytest.raises(HandshakeStateError, match="INITIATION_CONSUMED"):
        responder.derive_keys()


def test_clear_returns_to_zeroed() -> None:
    initiator = Handshake(ALICE, BOB.public)
    vector_initiation(initiator)
    initiator.clear()
    assert initiator.state is HandshakeState.ZEROED
    assert initiator.handshake_hash == bytes(32)
    assert (initiator.local_index, initiator.remote_index) == (0, 0)
    assert not initiator.consume_response(MESSAGE2)
