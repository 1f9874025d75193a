"""_wgcore.cookie: BLAKE2s written from RFC 7693 against hashlib, and the C handshake screen
against the Python definitions of mac1, mac2 and the cookie reply (wireguard.md §5)."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _wgcore.cookie import BAD_MAC1_INITIATION, BAD_MAC1_RESPONSE, NOT_HANDSHAKE, CookieGate, blake2s
from agentconn.wg.cookie import CookieChecker, CookieGenerator
from agentconn.wg.crypto import hash_, mac, xaead_decrypt

OWN_PUBLIC = bytes(range(32))
SOURCE = b"\x7f\x00\x00\x01\x39\x30"


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300), key=st.binary(max_size=32),
       size=st.integers(min_value=1, max_value=32))
def test_blake2s_matches_hashlib(data: bytes, key: bytes, size: int) -> None:
    expected = hashlib.blake2s(data, key=key, digest_size=size).digest()
    assert blake2s(data, key or None, size) == expected


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 127, 128, 129, 1000])
def test_blake2s_block_boundaries(n: int) -> None:
    data = bytes(i & 0xFF for i in range(n))
    assert blake2s(data) == hashlib.blake2s(data).digest()
    assert blake2s(data, b"k" * 32, 16) == hashlib.blake2s(data, key=b"k" * 32,
                                                          digest_size=16).digest()


def test_blake2s_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        blake2s(b"x", None, 33)
    with pytest.raises(ValueError):
        blake2s(b"x", b"k" * 33)


def _initiation(gen: CookieGenerator, body: bytes = b"\x11" * 112) -> bytearray:
    m = bytearray(148)
    m[0] = 1
    m[4:116] = body
    gen.add_macs(m, 0.0)
    return m


def _response(gen: CookieGenerator) -> bytearray:
    m = bytearray(92)
    m[0] = 2
    m[4:60] = b"\x22" * 56
    gen.add_macs(m, 0.0)
    return m


def test_screen_types_and_mac1() -> None:
    gate = CookieGate(OWN_PUBLIC)
    gen = CookieGenerator(OWN_PUBLIC)
    init, resp = _initiation(gen), _response(gen)
    assert gate.screen(init) == 1
    assert gate.screen(resp) == 2
    assert gate.screen(b"\x03\x00\x00\x00" + bytes(60)) == 3
    bad = bytearray(init)
    bad[120] ^= 1                                   # mac1 flipped
    assert gate.screen(bad) == BAD_MAC1_INITIATION
    bad = bytearray(resp)
    bad[10] ^= 1                                    # covered by mac1
    assert gate.screen(bad) == BAD_MAC1_RESPONSE
    # wrong length, reserved bytes, type, empty: not a handshake message, never an exception
    for junk in (b"", b"\x01", bytes(init[:147]), bytes(init) + b"\x00",
                 b"\x01\x01\x00\x00" + bytes(init[4:]), b"\x04" + bytes(147),
                 b"\x03\x00\x00\x00" + bytes(59)):
        assert gate.screen(junk) == NOT_HANDSHAKE
    # another key's mac1 is wrong here
    assert CookieGate(bytes(32)).screen(init) == BAD_MAC1_INITIATION


def test_mac2_and_reply_match_the_definitions() -> None:
    gate = CookieGate(OWN_PUBLIC)
    gen = CookieGenerator(OWN_PUBLIC)
    init = _initiation(gen)
    assert not gate.check_mac2(init, SOURCE)        # no secret yet
    with pytest.raises(ValueError):
        gate.reply(init, SOURCE, bytes(24))
    secret, nonce = bytes(range(100, 132)), bytes(range(24))
    gate.set_secret(secret)
    reply = gate.reply(init, SOURCE, nonce)
    # cookie reply (§5): type 3, receiver = the initiation's sender, nonce, XAEAD(cookie)
    assert len(reply) == 64 and reply[:4] == b"\x03\x00\x00\x00"
    assert reply[4:8] == init[4:8] and reply[8:32] == nonce
    cookie = mac(secret, SOURCE)
    assert xaead_decrypt(hash_(b"cookie--" + OWN_PUBLIC), nonce, reply[32:], init[116:132]) \
        == cookie
    # the initiator takes the cookie; its next initiation carries a mac2 the gate accepts
    assert gen.consume_reply(reply, 1.0)
    init2 = _initiation(gen, b"\x33" * 112)
    assert init2[132:148] == mac(cookie, bytes(init2[:132]))
    assert gate.check_mac2(init2, SOURCE)
    assert not gate.check_mac2(init2, SOURCE[:-1] + b"\x00")   # another source port
    gate.clear_secret()
    assert not gate.check_mac2(init2, SOURCE)
    with pytest.raises(ValueError):
        gate.reply(b"\x01" + bytes(10), SOURCE, nonce)
    with pytest.raises(ValueError):
        gate.set_secret(bytes(31))


def test_checker_uses_the_gate_with_the_same_answers() -> None:
    """CookieChecker's public API is unchanged: the same vectors as the pure definitions."""
    checker = CookieChecker(OWN_PUBLIC, random=lambda n: bytes(n))
    gen = CookieGenerator(OWN_PUBLIC)
    init = _initiation(gen)
    assert checker.check_mac1(init) and not checker.check_mac1(b"\x03" + bytes(63))
    assert not checker.check_mac1(b"")
    reply = checker.create_reply(init, SOURCE, now=5.0)
    assert reply[8:32] == bytes(24)
    assert checker.screen(init) == 1
