"""mac1/mac2, cookie replies and the rate limiter (spec §5, §14.4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentconn.wg import crypto
from agentconn.wg.constants import (
    COOKIE_REFRESH_TIME,
    OFFSET_INITIATION_MAC1,
    OFFSET_INITIATION_MAC2,
    OFFSET_INITIATION_TIMESTAMP,
)
from agentconn.wg.cookie import CookieChecker, CookieGenerator, RateLimiter
from agentconn.wg.keys import StaticIdentity
from agentconn.wg.messages import CookieReply, MessageError
from agentconn.wg.noise import Handshake, consume_initiation

VECTORS_DIR = Path(__file__).parent.parent / "vectors"
HANDSHAKE: dict[str, Any] = json.loads((VECTORS_DIR / "wg_handshake.json").read_text())
COOKIE: dict[str, Any] = json.loads((VECTORS_DIR / "wg_cookie.json").read_text())
H = bytes.fromhex

ALICE = StaticIdentity(H(HANDSHAKE["inputs"]["initiator_static_private"]))
BOB = StaticIdentity(H(HANDSHAKE["inputs"]["responder_static_private"]))
MESSAGE1 = H(HANDSHAKE["message1"])
MESSAGE2 = H(HANDSHAKE["message2"])
SOURCE = H(COOKIE["source_address"])


def fixed_random(data: bytes) -> Callable[[int], bytes]:
    def random(n: int) -> bytes:
        assert n == len(data), f"unexpected draw of {n} bytes"
        return data

    return random


def counting_random() -> Callable[[int], bytes]:
    """Distinct, reproducible 'random' draws."""
    state = [0]

    def random(n: int) -> bytes:
        state[0] += 1
        return bytes([state[0] % 256]) * n

    return random


def open_cookie(reply: bytes, own_public: bytes, mac1: bytes) -> bytes:
    msg = CookieReply.parse(reply)
    cookie = crypto.xaead_decrypt(
        crypto.hash_(b"cookie--" + own_public), msg.nonce, msg.encrypted_cookie, mac1
    )
    assert cookie is not None
    return cookie


# --- §14.4 vector ----------------------------------------------------------------------------


def test_cookie_vector() -> None:
    assert "§14.4" in COOKIE["source"]
    secret, nonce = H(COOKIE["secret"]), H(COOKIE["nonce"])
    assert crypto.mac(secret, SOURCE).hex() == COOKIE["cookie"]

    checker = CookieChecker(BOB.public, random=fixed_random(nonce))
    checker.set_secret(secret, born_at=1000.0)
    assert checker.check_mac1(MESSAGE1)
    assert not checker.check_mac2(MESSAGE1, SOURCE, now=1000.0)  # mac2 is zero
    reply = checker.create_reply(MESSAGE1, SOURCE, now=1000.0)
    assert reply.hex() == COOKIE["reply"]
    assert open_cookie(reply, BOB.public, MESSAGE1[116:132]).hex() == COOKIE["cookie"]

    # The initiator sent message 1 (remembering its mac1), then receives the reply.
    initiator = Handshake(ALICE, BOB.public)
    generator = CookieGenerator(BOB.public)
    first = initiator.create_initiation(
        HANDSHAKE["inputs"]["initiator_index"],
        HANDSHAKE["inputs"]["unix_seconds"] + HANDSHAKE["inputs"]["nanoseconds"] / 1e9,
        ephemeral_private=H(HANDSHAKE["inputs"]["initiator_ephemeral_private"]),
    )
    generator.add_macs(first, now=999.0)
    assert bytes(first) == MESSAGE1
    assert generator.consume_reply(reply, now=1000.0)

    # Its next initiation (same inputs, timestamp 1700000001 s) carries mac2.
    second = initiator.create_initiation(
        HANDSHAKE["inputs"]["initiator_index"],
        COOKIE["next_initiation_unix_seconds"],
        ephemeral_private=H(HANDSHAKE["inputs"]["initiator_ephemeral_private"]),
    )
    generator.add_macs(second, now=1005.0)
    assert (
        second[OFFSET_INITIATION_TIMESTAMP:OFFSET_INITIATION_MAC1].hex()
        == (COOKIE["next_initiation_encrypted_timestamp"])
    )
    assert (
        second[OFFSET_INITIATION_MAC1:OFFSET_INITIATION_MAC2].hex()
        == COOKIE["next_initiation_mac1"]
    )
    assert second[OFFSET_INITIATION_MAC2:].hex() == COOKIE["next_initiation_mac2"]
    assert checker.check_mac1(second)
    assert checker.check_mac2(second, SOURCE, now=1005.0)
    assert not checker.check_mac2(second, H("c0a80002ca6c"), now=1005.0)


# --- generator / checker round trip ----------------------------------------------------------


def random_pair() -> tuple[Handshake, StaticIdentity, StaticIdentity]:
    a = StaticIdentity(crypto.dh_generate())
    b = StaticIdentity(crypto.dh_generate())
    return Handshake(a, b.public), a, b


def test_round_trip_initiation_and_response() -> None:
    initiator, a, b = random_pair()
    responder = Handshake(b, a.public)
    to_b, to_a = CookieGenerator(b.public), CookieGenerator(a.public)
    checker_b = CookieChecker(b.public)
    checker_a = CookieChecker(a.public)

    message1 = initiator.create_initiation(7, 1_700_000_000.0)
    assert not checker_b.check_mac1(message1)  # macs still zero
    to_b.add_macs(message1, now=10.0)
    assert checker_b.check_mac1(message1)
    assert not checker_a.check_mac1(message1)  # keyed by the receiver's public key
    assert message1[OFFSET_INITIATION_MAC2:] == bytes(16)

    reply = checker_b.create_reply(message1, b"\x7f\x00\x00\x01\x00\x50", now=10.0)
    assert CookieReply.parse(reply).receiver_index == 7
    assert to_b.consume_reply(reply, now=10.1)
    message1 = initiator.create_initiation(8, 1_700_000_001.0)
    to_b.add_macs(message1, now=11.0)
    assert checker_b.check_mac1(message1)
    assert checker_b.check_mac2(message1, b"\x7f\x00\x00\x01\x00\x50", now=11.0)
    assert not checker_b.check_mac2(message1, b"\x7f\x00\x00\x01\x00\x51", now=11.0)

    consumed = consume_initiation(b, message1, {a.public: responder.precomputed_static_static}.get)
    assert consumed is not None and responder.accept_initiation(consumed, now=11.0)
    message2 = responder.create_response(9)
    to_a.add_macs(message2, now=11.0)
    assert checker_a.check_mac1(message2)
    assert not checker_b.check_mac1(message2)


def test_tampered_message_fails_mac1() -> None:
    checker = CookieChecker(BOB.public)
    for index in range(OFFSET_INITIATION_MAC2):
        message = bytearray(MESSAGE1)
        message[index] ^= 0x10
        assert not checker.check_mac1(message), index


def test_checker_never_raises_on_junk() -> None:
    checker = CookieChecker(BOB.public)
    checker.set_secret(bytes(32), born_at=0.0)
    for junk in (
        b"",
        b"\x01",
        MESSAGE1[:-1],
        bytes(148),
        b"\x03" + bytes(63),
        b"\x04" + bytes(100),
    ):
        assert not checker.check_mac1(junk)
        assert not checker.check_mac2(junk, SOURCE, now=0.0)


def test_add_macs_and_create_reply_reject_other_messages() -> None:
    with pytest.raises(MessageError):
        CookieGenerator(BOB.public).add_macs(bytearray(64), now=0.0)
    with pytest.raises(MessageError):
        CookieChecker(BOB.public).create_reply(b"\x03" + bytes(63), SOURCE, now=0.0)


def test_consume_reply_needs_a_sent_mac1() -> None:
    reply = H(COOKIE["reply"])
    generator = CookieGenerator(BOB.public)
    assert not generator.consume_reply(reply, now=0.0)  # nothing sent yet
    message = bytearray(MESSAGE1)
    generator.add_macs(message, now=0.0)
    assert not generator.consume_reply(reply[:-1], now=0.0)  # wrong size
    tampered = bytearray(reply)
    tampered[40] ^= 1
    assert not generator.consume_reply(bytes(tampered), now=0.0)
    assert generator.consume_reply(reply, now=0.0)


def test_reply_to_an_older_message_is_refused() -> None:
    """The reply's AD is the mac1 of the message it answers; once a newer message was sent,
    last mac1 changed and the old reply no longer opens."""
    checker = CookieChecker(BOB.public)
    generator = CookieGenerator(BOB.public)
    old = bytearray(MESSAGE1)
    generator.add_macs(old, now=0.0)
    reply = checker.create_reply(old, SOURCE, now=0.0)
    newer = Handshake(ALICE, BOB.public).create_initiation(5, 1_700_000_002.0)
    generator.add_macs(newer, now=1.0)
    assert not generator.consume_reply(reply, now=1.0)


def test_mac2_stops_after_cookie_expiry() -> None:
    checker = CookieChecker(BOB.public)
    generator = CookieGenerator(BOB.public)
    message = bytearray(MESSAGE1)
    generator.add_macs(message, now=0.0)
    assert generator.consume_reply(checker.create_reply(message, SOURCE, now=0.0), now=50.0)

    generator.add_macs(message, now=50.0 + COOKIE_REFRESH_TIME - 1)
    assert message[OFFSET_INITIATION_MAC2:] != bytes(16)
    generator.add_macs(message, now=50.0 + COOKIE_REFRESH_TIME)
    assert message[OFFSET_INITIATION_MAC2:] == bytes(16)
    assert checker.check_mac1(message)


def test_secret_rotates_after_120_seconds() -> None:
    checker = CookieChecker(BOB.public, random=counting_random())
    mac1 = MESSAGE1[OFFSET_INITIATION_MAC1:OFFSET_INITIATION_MAC2]
    first = open_cookie(checker.create_reply(MESSAGE1, SOURCE, now=0.0), BOB.public, mac1)
    same = open_cookie(
        checker.create_reply(MESSAGE1, SOURCE, now=COOKIE_REFRESH_TIME), BOB.public, mac1
    )
    assert same == first

    # mac2 made with the first cookie: valid while the secret is young, invalid once it is stale.
    generator = CookieGenerator(BOB.public)
    message = bytearray(MESSAGE1)
    generator.add_macs(message, now=0.0)
    assert generator.consume_reply(checker.create_reply(message, SOURCE, now=1.0), now=1.0)
    generator.add_macs(message, now=2.0)
    assert checker.check_mac2(message, SOURCE, now=COOKIE_REFRESH_TIME)
    assert not checker.check_mac2(message, SOURCE, now=COOKIE_REFRESH_TIME + 0.5)

    rotated = open_cookie(
        checker.create_reply(MESSAGE1, SOURCE, now=COOKIE_REFRESH_TIME + 1), BOB.public, mac1
    )
    assert rotated != first
    assert not checker.check_mac2(message, SOURCE, now=COOKIE_REFRESH_TIME + 1)


def test_fresh_checker_has_no_valid_mac2() -> None:
    checker = CookieChecker(BOB.public)
    assert not checker.check_mac2(MESSAGE1, SOURCE, now=0.0)
    with pytest.raises(ValueError):
        checker.set_secret(bytes(16), born_at=0.0)


# --- rate limiter ----------------------------------------------------------------------------

IP_A = bytes([192, 168, 0, 1])
IP_B = bytes([192, 168, 0, 2])


def test_rate_limiter_burst_then_refuse() -> None:
    limiter = RateLimiter()
    assert [limiter.allow(IP_A, 10.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow(IP_B, 10.0)  # other addresses have their own bucket
    assert not limiter.allow(IP_A, 10.0)


def test_rate_limiter_refills_at_20_per_second() -> None:
    limiter = RateLimiter()
    for _ in range(5):
        assert limiter.allow(IP_A, 10.0)
    assert not limiter.allow(IP_A, 10.049)
    assert limiter.allow(IP_A, 10.05)
    assert not limiter.allow(IP_A, 10.05)
    # Sustained: one message every 50 ms passes indefinitely.
    for step in range(2, 40):
        assert limiter.allow(IP_A, 10.0 + step * 0.05)
    # The bucket holds at most 5: after a long pause, the burst is 5 again.
    results = [limiter.allow(IP_A, 20.0) for _ in range(6)]
    assert results == [True] * 5 + [False]


def test_rate_limiter_collects_idle_entries() -> None:
    limiter = RateLimiter()
    limiter.allow(IP_A, 0.0)
    limiter.allow(IP_B, 0.5)
    assert len(limiter) == 2
    limiter.allow(IP_B, 1.2)  # A idle 1.2 s > 1 s: collected; B was just used
    assert len(limiter) == 1
    limiter.allow(IP_B, 1.5)  # no sweep within 1 s of the last one
    limiter.allow(IP_A, 1.6)
    assert len(limiter) == 2
    limiter.allow(bytes(16), 3.0)  # both idle > 1 s
    assert len(limiter) == 1
