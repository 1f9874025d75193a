"""Primitive vectors for agentconn.wg.crypto and agentconn.wg.keys (spec §1, §14.2).

The data lives in tests/vectors/wg_primitives.json; each entry cites its source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.errors import InvalidKeyError
from agentconn.wg import constants, crypto
from agentconn.wg.keys import StaticIdentity, encode_key, generate_private_key, parse_key

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "wg_primitives.json").read_text()
)
H = bytes.fromhex


def test_every_vector_cites_a_source() -> None:
    for entry in VECTORS.values():
        for item in entry if isinstance(entry, list) else [entry]:
            assert item["source"]


# --- constants (spec §2) ---------------------------------------------------------------------


def test_c0_and_h0_match_spec() -> None:
    assert constants.C0.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    assert constants.H0.hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


def test_string_lengths() -> None:
    assert len(constants.CONSTRUCTION) == 37
    assert len(constants.IDENTIFIER) == 34
    assert len(constants.LABEL_MAC1) == len(constants.LABEL_COOKIE) == 8


def test_layout_constants_add_up() -> None:
    c = constants
    assert c.OFFSET_INITIATION_MAC2 + c.MAC_SIZE == c.MESSAGE_INITIATION_SIZE
    assert c.OFFSET_INITIATION_TIMESTAMP + c.ENCRYPTED_TIMESTAMP_SIZE == c.OFFSET_INITIATION_MAC1
    assert c.OFFSET_RESPONSE_MAC2 + c.MAC_SIZE == c.MESSAGE_RESPONSE_SIZE
    assert c.OFFSET_RESPONSE_EMPTY + c.ENCRYPTED_NOTHING_SIZE == c.OFFSET_RESPONSE_MAC1
    assert c.OFFSET_COOKIE_ENCRYPTED + c.ENCRYPTED_COOKIE_SIZE == c.MESSAGE_COOKIE_REPLY_SIZE
    assert c.MESSAGE_TRANSPORT_MIN_SIZE == 32
    assert c.REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1
    assert c.REPLAY_WINDOW == 8128
    assert c.ZERO_KEY_MATERIAL_AFTER == 540
    assert c.MAX_TIMER_HANDSHAKES == c.REKEY_ATTEMPT_TIME / c.REKEY_TIMEOUT


# --- X25519 (RFC 7748) -----------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["x25519"], ids=lambda v: v["source"])
def test_x25519_rfc7748_5_2(vector: dict[str, str]) -> None:
    assert crypto.dh(H(vector["scalar"]), H(vector["u"])).hex() == vector["output"]


@pytest.mark.parametrize("vector", VECTORS["x25519_iterated"], ids=lambda v: str(v["iterations"]))
def test_x25519_rfc7748_5_2_iterated(vector: dict[str, Any]) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(vector["iterations"]):
        k, u = crypto.dh(k, u), k
    assert k.hex() == vector["output"]


def test_x25519_rfc7748_6_1() -> None:
    v = VECTORS["x25519_dh"]
    assert crypto.public_key(H(v["alice_private"])).hex() == v["alice_public"]
    assert crypto.public_key(H(v["bob_private"])).hex() == v["bob_public"]
    assert crypto.dh(H(v["alice_private"]), H(v["bob_public"])).hex() == v["shared"]
    assert crypto.dh(H(v["bob_private"]), H(v["alice_public"])).hex() == v["shared"]


@pytest.mark.parametrize(
    "low_order_point",
    [
        bytes(32),
        (1).to_bytes(32, "little"),
        # order-8 point (RFC 7748 §7 and libsodium's blocklist)
        H("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ],
)
def test_dh_rejects_all_zero_result(low_order_point: bytes) -> None:
    with pytest.raises(InvalidKeyError, match="all-zero"):
        crypto.dh(crypto.dh_generate(), low_order_point)


def test_dh_rejects_wrong_lengths() -> None:
    with pytest.raises(InvalidKeyError, match="31"):
        crypto.dh(bytes(31), bytes(32))
    with pytest.raises(InvalidKeyError, match="33"):
        crypto.dh(crypto.dh_generate(), bytes(33))


def test_clamp_and_generate() -> None:
    assert crypto.clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert crypto.clamp(bytes(32)) == bytes(31) + b"\x40"
    assert crypto.dh_generate(lambda n: b"\xff" * n) == crypto.clamp(b"\xff" * 32)
    key = generate_private_key()
    assert key == crypto.clamp(key)


# --- ChaCha20-Poly1305 (RFC 8439) and the WireGuard nonce ------------------------------------


def test_chacha20poly1305_rfc8439_2_8_2() -> None:
    v = VECTORS["chacha20poly1305"]
    assert len(H(v["plaintext"])) == 114
    assert v["ciphertext"].startswith("d31a8d34648e60db7b86afbc53ef7ec2")
    assert v["tag"] == "1ae10b594f09e26a7e902ecbd0600691"
    sealed = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        H(v["plaintext"]), H(v["ad"]), H(v["nonce"]), H(v["key"])
    )
    assert sealed.hex() == v["ciphertext"] + v["tag"]


def test_aead_uses_wireguard_nonce_layout() -> None:
    v = VECTORS["chacha20poly1305_wireguard_nonce"]
    assert crypto.aead_nonce(v["counter"]).hex() == v["nonce"]
    assert crypto.aead_nonce(1) == bytes(4) + b"\x01" + bytes(7)
    sealed = crypto.aead_encrypt(H(v["key"]), v["counter"], H(v["plaintext"]), H(v["ad"]))
    assert sealed.hex() == v["sealed"]
    raw = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        H(v["plaintext"]), H(v["ad"]), H(v["nonce"]), H(v["key"])
    )
    assert sealed == raw
    assert crypto.aead_decrypt(H(v["key"]), v["counter"], sealed, H(v["ad"])) == H(v["plaintext"])


def test_aead_decrypt_failures_return_none() -> None:
    key = bytes(32)
    sealed = crypto.aead_encrypt(key, 7, b"hello", b"ad")
    assert crypto.aead_decrypt(key, 8, sealed, b"ad") is None
    assert crypto.aead_decrypt(key, 7, sealed, b"other") is None
    assert crypto.aead_decrypt(key, 7, sealed[:15], b"ad") is None
    assert crypto.aead_decrypt(key, 7, b"", b"ad") is None


def test_aead_counter_out_of_range() -> None:
    with pytest.raises(OverflowError):
        crypto.aead_encrypt(bytes(32), 2**64, b"", b"")


@given(
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(min_value=0, max_value=2**64 - 1),
    plaintext=st.binary(max_size=300),
    ad=st.binary(max_size=64),
)
def test_aead_round_trip(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> None:
    sealed = crypto.aead_encrypt(key, counter, plaintext, ad)
    assert len(sealed) == len(plaintext) + constants.TAG_SIZE
    assert crypto.aead_decrypt(key, counter, sealed, ad) == plaintext


@given(
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(min_value=0, max_value=2**64 - 1),
    plaintext=st.binary(max_size=300),
    data=st.data(),
)
def test_aead_flipped_bit_fails(
    key: bytes, counter: int, plaintext: bytes, data: st.DataObject
) -> None:
    sealed = bytearray(crypto.aead_encrypt(key, counter, plaintext, b""))
    bit = data.draw(st.integers(min_value=0, max_value=len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    assert crypto.aead_decrypt(key, counter, sealed, b"") is None


# --- XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03) -----------------------------------------


def test_xchacha20poly1305_draft_a_3_1() -> None:
    v = VECTORS["xchacha20poly1305"]
    assert v["ciphertext"].startswith("bd6d179d3e83d43b9576579493c0e939")
    assert v["tag"] == "c0875924c1c7987947deafd8780acf49"
    sealed = crypto.xaead_encrypt(H(v["key"]), H(v["nonce"]), H(v["plaintext"]), H(v["ad"]))
    assert sealed.hex() == v["ciphertext"] + v["tag"]
    opened = crypto.xaead_decrypt(H(v["key"]), H(v["nonce"]), sealed, H(v["ad"]))
    assert opened == H(v["plaintext"])
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert crypto.xaead_decrypt(H(v["key"]), H(v["nonce"]), tampered, H(v["ad"])) is None
    assert crypto.xaead_decrypt(H(v["key"]), H(v["nonce"]), sealed[:10], H(v["ad"])) is None


# --- BLAKE2s, MAC, HMAC, KDF -----------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["blake2s"], ids=lambda v: v["input"] or "empty")
def test_blake2s(vector: dict[str, str]) -> None:
    assert crypto.hash_(H(vector["input"])).hex() == vector["digest"]


def test_blake2s_spec_values() -> None:
    digests = {v["input"]: v["digest"] for v in VECTORS["blake2s"]}
    assert digests[""] == "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9"
    assert digests[b"abc".hex()] == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )


def test_mac_is_keyed_16_byte_blake2s_not_truncation() -> None:
    key = bytes(range(32))
    tag = crypto.mac(key, b"abc")
    assert len(tag) == 16
    assert tag != crypto.hash_(b"abc")[:16]


@pytest.mark.parametrize("vector", VECTORS["kdf"], ids=lambda v: v["key"] or "empty")
def test_kdf(vector: dict[str, str]) -> None:
    key, data = H(vector["key"]), H(vector["input"])
    t1, t2, t3 = vector["t1"], vector["t2"], vector["t3"]
    assert crypto.kdf1(key, data).hex() == t1
    assert [t.hex() for t in crypto.kdf2(key, data)] == [t1, t2]
    assert [t.hex() for t in crypto.kdf3(key, data)] == [t1, t2, t3]


def test_kdf_spec_values() -> None:
    by_key = {v["key"]: v for v in VECTORS["kdf"]}
    assert by_key[b"test-key".hex()]["t1"] == (
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633"
    )
    assert by_key[b"wireguard".hex()]["t3"] == (
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160"
    )
    assert by_key[""]["t2"] == "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e"


# --- TAI64N ----------------------------------------------------------------------------------


def test_tai64n_vector() -> None:
    v = VECTORS["tai64n"]
    when = v["unix_seconds"] + v["nanoseconds"] / 1e9
    assert crypto.tai64n(when).hex() == v["timestamp"]


def test_tai64n_whole_seconds_and_order() -> None:
    assert crypto.tai64n(0).hex() == "400000000000000a00000000"
    assert crypto.tai64n(1700000001).hex() == "400000006553f10b00000000"
    # Whitening: times within one 2^24 ns step share a timestamp; later steps compare greater.
    assert crypto.tai64n(100.001) == crypto.tai64n(100.0)
    assert crypto.tai64n(100.02) > crypto.tai64n(100.0)
    assert crypto.tai64n(101.0) > crypto.tai64n(100.99)


# --- keys ------------------------------------------------------------------------------------


def test_mac1_and_cookie_keys_for_bob() -> None:
    v = VECTORS["mac_keys"]
    bob = StaticIdentity(H(VECTORS["x25519_dh"]["bob_private"]))
    assert bob.public.hex() == v["public"]
    assert bob.mac1_key.hex() == v["mac1_key"]
    assert bob.cookie_key.hex() == v["cookie_key"]


def test_static_identity_clamps_and_hides_private() -> None:
    identity = StaticIdentity(b"\xff" * 32)
    assert identity.private == crypto.clamp(b"\xff" * 32)
    assert identity.public == crypto.public_key(identity.private)
    assert identity.private.hex() not in repr(identity)
    with pytest.raises(InvalidKeyError):
        StaticIdentity(bytes(16))


def test_parse_key_base64_and_hex() -> None:
    public = H(VECTORS["x25519_dh"]["bob_public"])
    text = encode_key(public)
    assert len(text) == 44
    assert parse_key(text) == public
    assert parse_key(f"  {text}\n") == public
    assert parse_key(public.hex()) == public
    assert parse_key(public.hex().upper()) == public


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "got 0 characters"),
        ("abc", "got 3 characters"),
        ("z" * 64, "not hexadecimal"),
        ("!" * 43 + "=", "not valid base64"),
        ("A" * 44, "decodes to 33 bytes"),
        # Canonical key ends in "...E=": stray low bits before the padding are refused.
        ("A" * 42 + "B=", "non-canonical"),
    ],
)
def test_parse_key_errors_name_what_and_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidKeyError, match=reason) as info:
        parse_key(text, what="PrivateKey")
    assert "PrivateKey" in str(info.value)


def test_encode_key_rejects_wrong_length() -> None:
    with pytest.raises(InvalidKeyError):
        encode_key(bytes(31))
