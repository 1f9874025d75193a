"""Keypair.seal/open (_wgcore.keypair): spec vectors, and agreement with the pure-Python reference.

Vectors: spec/wireguard.md §14.3 via tests/vectors/wg_handshake.json (first keepalive from the
initiator, the 80-byte data message from the responder). Reference: agentconn.wg.crypto
``aead_encrypt``/``aead_decrypt`` (pynacl's own AEAD calls), compared byte for byte (STYLE §5).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _wgcore.keypair import Keypair
from agentconn.wg import crypto

VECTORS = json.loads(
    (Path(__file__).parent.parent / "vectors" / "wg_handshake.json").read_text())
INITIATOR_SEND = bytes.fromhex(VECTORS["initiator_send_key"])
INITIATOR_RECEIVE = bytes.fromhex(VECTORS["initiator_receive_key"])
INITIATOR_INDEX = VECTORS["inputs"]["initiator_index"]
RESPONDER_INDEX = VECTORS["inputs"]["responder_index"]
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
HEADER = struct.Struct("<IIQ")


def test_vector_inputs_are_the_spec_values() -> None:
    assert INITIATOR_SEND.hex() == (
        "5fe2f81f7ce2ce8bc9e3aad973312d721c7c36d77fd0c26342a45319c8069f89")
    assert INITIATOR_RECEIVE.hex() == (
        "e429173227a0a4509b3489e27f4a61d6d8e1ebc91761bb9cf48c647ba9fbde5a")
    assert (INITIATOR_INDEX, RESPONDER_INDEX) == (0x11223344, 0x55667788)


def initiator() -> Keypair:
    return Keypair(INITIATOR_SEND, INITIATOR_RECEIVE, INITIATOR_INDEX, RESPONDER_INDEX, True, 0.0)


def responder() -> Keypair:
    return Keypair(INITIATOR_RECEIVE, INITIATOR_SEND, RESPONDER_INDEX, INITIATOR_INDEX, False, 0.0)


def test_first_keepalive_vector() -> None:
    expected = bytes.fromhex("04000000" "88776655" "0000000000000000"
                             "e7efaeb1326c6f4c85ae4b89410363f6")
    assert expected.hex() == VECTORS["keepalive"]
    kp = initiator()
    assert kp.seal(b"") == expected
    assert kp.send_counter == 1
    receiver = responder()
    assert receiver.open(expected) == b""
    assert receiver.rx_packets == 1
    assert receiver.open(expected) is None          # replayed
    assert receiver.rx_packets == 1


def test_responder_data_vector() -> None:
    inner = bytes.fromhex(VECTORS["data_inner"])
    assert len(inner) == 40 and VECTORS["data_padded_length"] == 48
    padded = inner + bytes(8)
    expected = bytes.fromhex(VECTORS["data_message"])
    assert len(expected) == 80
    assert responder().seal(padded) == expected
    # Keypair.open returns the whole plaintext; trimming to the IP length is the datapath's job.
    assert initiator().open(expected) == padded


def test_vector_messages_agree_with_reference() -> None:
    keepalive = bytes.fromhex(VECTORS["keepalive"])
    assert keepalive[16:] == crypto.aead_encrypt(INITIATOR_SEND, 0, b"", b"")
    data = bytes.fromhex(VECTORS["data_message"])
    padded = bytes.fromhex(VECTORS["data_inner"]) + bytes(8)
    assert crypto.aead_decrypt(INITIATOR_RECEIVE, 0, data[16:], b"") == padded


def test_properties() -> None:
    kp = Keypair(bytes(range(32)), bytes(32), 7, 9, True, 12.5)
    assert (kp.local_index, kp.remote_index, kp.is_initiator, kp.created, kp.valid) == (
        7, 9, True, 12.5, True)
    assert (kp.send_counter, kp.rx_packets) == (0, 0)


@pytest.mark.parametrize("send,receive", [(bytes(31), bytes(32)), (bytes(32), bytes(33)),
                                          (b"", b"")])
def test_key_length_checked(send: bytes, receive: bytes) -> None:
    with pytest.raises(ValueError):
        Keypair(send, receive, 1, 2, False, 0.0)


keys = st.binary(min_size=32, max_size=32)
indices = st.integers(0, 2**32 - 1)
counters = st.one_of(st.integers(0, 2**16), st.integers(0, REJECT_AFTER_MESSAGES - 1),
                     st.integers(REJECT_AFTER_MESSAGES - 50, REJECT_AFTER_MESSAGES - 1))
plaintexts = st.one_of(st.binary(max_size=64), st.binary(min_size=1200, max_size=1500))


@settings(max_examples=150, deadline=None)
@given(send_key=keys, receive_key=keys, local=indices, remote=indices, counter=counters,
       plaintext=plaintexts)
def test_seal_equals_reference_and_opens(send_key: bytes, receive_key: bytes, local: int,
                                         remote: int, counter: int, plaintext: bytes) -> None:
    sender = Keypair(send_key, receive_key, local, remote, True, 0.0)
    sender.send_counter = counter
    sealed = sender.seal(plaintext)
    assert sealed == (HEADER.pack(4, remote, counter)
                      + crypto.aead_encrypt(send_key, counter, plaintext, b""))
    assert sender.send_counter == counter + 1
    receiver = Keypair(receive_key, send_key, remote, local, False, 0.0)
    assert receiver.open(sealed) == plaintext
    assert receiver.open(sealed) is None            # the same counter again: replay
    assert receiver.rx_packets == 1


@settings(max_examples=100, deadline=None)
@given(key=keys, counter=st.integers(0, 2**20), plaintext=st.binary(max_size=200),
       data=st.data())
def test_flipped_bit_after_header_fields_is_rejected(key: bytes, counter: int,
                                                      plaintext: bytes,
                                                      data: st.DataObject) -> None:
    # Everything from the counter on is authenticated (the counter is the nonce).
    sealed = bytearray(HEADER.pack(4, 1, counter)
                       + crypto.aead_encrypt(key, counter, plaintext, b""))
    bit = data.draw(st.integers(8 * 8, 8 * len(sealed) - 1), label="bit")
    sealed[bit // 8] ^= 1 << (bit % 8)
    receiver = Keypair(key, key, 1, 2, False, 0.0)
    assert receiver.open(bytes(sealed)) is None
    assert receiver.rx_packets == 0
    # A failed forgery does not touch the replay window: the genuine message still opens.
    sealed[bit // 8] ^= 1 << (bit % 8)
    assert receiver.open(bytes(sealed)) == plaintext


@pytest.mark.parametrize("length", [0, 1, 15, 16, 31])
def test_short_messages_are_rejected(length: int) -> None:
    sealed = initiator().seal(b"")
    assert responder().open(sealed[:length]) is None


def test_truncated_messages_are_rejected() -> None:
    sealed = initiator().seal(bytes(range(100)))
    receiver = responder()
    assert [n for n in range(len(sealed)) if receiver.open(sealed[:n]) is not None] == []
    assert receiver.open(sealed) == bytes(range(100))


def test_replay_and_reordering() -> None:
    sender, receiver = initiator(), responder()
    messages = [sender.seal(bytes([i]) * 16) for i in range(10)]
    assert [receiver.open(m) for m in reversed(messages)] == [
        bytes([i]) * 16 for i in reversed(range(10))]
    assert [receiver.open(m) for m in messages] == [None] * 10
    assert receiver.rx_packets == 10


def test_counter_at_reject_after_messages_is_refused_on_open() -> None:
    receiver = responder()
    for counter, expected in [(REJECT_AFTER_MESSAGES, None), (REJECT_AFTER_MESSAGES + 1, None),
                              (2**64 - 1, None), (REJECT_AFTER_MESSAGES - 1, b"ok")]:
        forged = HEADER.pack(4, RESPONDER_INDEX, counter) + crypto.aead_encrypt(
            INITIATOR_SEND, counter, b"ok", b"")
        assert receiver.open(forged) == expected, counter


def test_last_usable_counter_seals() -> None:
    sender = initiator()
    sender.send_counter = REJECT_AFTER_MESSAGES - 1
    sealed = sender.seal(b"last")
    assert sealed[8:16] == struct.pack("<Q", REJECT_AFTER_MESSAGES - 1)
    assert responder().open(sealed) == b"last"


@pytest.mark.parametrize("counter", [REJECT_AFTER_MESSAGES, 2**64 - 1])
def test_seal_refuses_counters_past_reject_after_messages(counter: int) -> None:
    # wireguard.md §6 step 1: never send with counter >= REJECT_AFTER_MESSAGES. At 2**64 - 1
    # the counter would also wrap to 0 and reuse nonce 0 with the same key.
    sender = initiator()
    sender.send_counter = counter
    with pytest.raises(ValueError):
        sender.seal(b"")
    assert sender.send_counter == counter


def test_zeroed_keypair_refuses() -> None:
    sender, receiver = initiator(), responder()
    message = sender.seal(b"x" * 16)
    receiver.zero()
    assert receiver.valid is False
    assert receiver.open(message) is None
    assert receiver.rx_packets == 0
    sender.zero()
    with pytest.raises(ValueError):
        sender.seal(b"")
    assert sender.send_counter == 1

