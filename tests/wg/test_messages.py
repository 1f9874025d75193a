"""Wire formats (spec §3): parse(emit(r)) == r, and matching by (type, exact length)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentconn.wg.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)
from agentconn.wg.messages import (
    CookieReply,
    Initiation,
    MessageError,
    Response,
    TransportHeader,
    message_type,
)

u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)


def exactly(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


initiations = st.builds(
    Initiation,
    sender_index=u32,
    ephemeral=exactly(32),
    encrypted_static=exactly(48),
    encrypted_timestamp=exactly(28),
    mac1=exactly(16),
    mac2=exactly(16),
)
responses = st.builds(
    Response,
    sender_index=u32,
    receiver_index=u32,
    ephemeral=exactly(32),
    encrypted_nothing=exactly(16),
    mac1=exactly(16),
    mac2=exactly(16),
)
cookie_replies = st.builds(
    CookieReply, receiver_index=u32, nonce=exactly(24), encrypted_cookie=exactly(32)
)
transport_headers = st.builds(TransportHeader, receiver_index=u32, counter=u64)


@given(initiations)
def test_initiation_round_trip(message: Initiation) -> None:
    data = message.emit()
    assert len(data) == message.buffer_len() == 148
    assert message_type(data) == MESSAGE_INITIATION
    assert Initiation.parse(data) == message
    assert Initiation.parse(bytearray(data)) == message
    assert Initiation.parse(memoryview(data)) == message


@given(responses)
def test_response_round_trip(message: Response) -> None:
    data = message.emit()
    assert len(data) == message.buffer_len() == 92
    assert message_type(data) == MESSAGE_RESPONSE
    assert Response.parse(data) == message


@given(cookie_replies)
def test_cookie_reply_round_trip(message: CookieReply) -> None:
    data = message.emit()
    assert len(data) == message.buffer_len() == 64
    assert message_type(data) == MESSAGE_COOKIE_REPLY
    assert CookieReply.parse(data) == message


@given(transport_headers, st.binary(min_size=16, max_size=100))
def test_transport_header_round_trip(header: TransportHeader, content: bytes) -> None:
    data = header.emit()
    assert len(data) == header.buffer_len() == 16
    assert TransportHeader.parse(data) == header
    assert message_type(data + content) == MESSAGE_TRANSPORT
    assert TransportHeader.parse(data + content) == header


def test_field_layout_is_little_endian_at_spec_offsets() -> None:
    data = Response(
        sender_index=0x11223344,
        receiver_index=0x55667788,
        ephemeral=b"E" * 32,
        encrypted_nothing=b"N" * 16,
        mac1=b"1" * 16,
        mac2=b"2" * 16,
    ).emit()
    assert data[:12].hex() == "020000004433221188776655"
    assert data[12:44] == b"E" * 32 and data[44:60] == b"N" * 16
    assert data[60:76] == b"1" * 16 and data[76:] == b"2" * 16
    header = TransportHeader(0x01020304, 0x0A0B0C0D0E0F1011).emit()
    assert header.hex() == "040000000403020111100f0e0d0c0b0a"


@pytest.mark.parametrize(
    ("kind", "size"),
    [(MESSAGE_INITIATION, 148), (MESSAGE_RESPONSE, 92), (MESSAGE_COOKIE_REPLY, 64)],
)
def test_fixed_size_messages_need_exact_length(kind: int, size: int) -> None:
    header = bytes([kind, 0, 0, 0])
    assert message_type(header + bytes(size - 4)) == kind
    for wrong in (size - 1, size + 1, 32, 4, 65535):
        assert message_type(header + bytes(wrong - 4)) is None


def test_transport_needs_32_bytes() -> None:
    header = bytes([MESSAGE_TRANSPORT, 0, 0, 0])
    assert message_type(header + bytes(27)) is None
    assert message_type(header + bytes(28)) == MESSAGE_TRANSPORT
    assert message_type(header + bytes(65531)) == MESSAGE_TRANSPORT


@pytest.mark.parametrize("reserved", [1, 2, 3])
def test_nonzero_reserved_byte_is_unknown(reserved: int) -> None:
    for kind, size in ((1, 148), (2, 92), (3, 64), (4, 32)):
        data = bytearray([kind]) + bytes(size - 1)
        assert message_type(data) == kind
        data[reserved] = 1
        assert message_type(data) is None
    with pytest.raises(MessageError):
        TransportHeader.parse(bytes([4, 0, 1, 0]) + bytes(28))


def test_unknown_types_and_short_input() -> None:
    for data in (b"", b"\x01", b"\x01\x00\x00", bytes(148), b"\x05" + bytes(147)):
        assert message_type(data) is None


@given(st.binary(max_size=200))
def test_message_type_never_raises_and_follows_the_rule(data: bytes) -> None:
    kind = message_type(data)
    assert kind in (None, 1, 2, 3, 4)
    if kind is not None:
        assert data[1:4] == bytes(3)
        assert (kind == 4 and len(data) >= 32) or len(data) == {1: 148, 2: 92, 3: 64}[kind]


@given(st.binary(max_size=200))
def test_parse_raises_only_message_error(data: bytes) -> None:
    for parser in (Initiation.parse, Response.parse, CookieReply.parse, TransportHeader.parse):
        try:
            parser(data)
        except MessageError:
            pass


def test_parse_rejects_other_types() -> None:
    initiation = bytes([1, 0, 0, 0]) + bytes(144)
    with pytest.raises(MessageError, match="handshake response"):
        Response.parse(initiation)
    with pytest.raises(MessageError, match="cookie reply"):
        CookieReply.parse(initiation)
    with pytest.raises(MessageError, match="148 bytes"):
        Initiation.parse(initiation[:-1])
    with pytest.raises(MessageError, match="16 bytes"):
        TransportHeader.parse(bytes([4, 0, 0, 0]))
    assert issubclass(MessageError, ValueError)


def test_constructor_rejects_unemittable_fields() -> None:
    with pytest.raises(MessageError, match="sender_index"):
        Initiation(2**32, bytes(32), bytes(48), bytes(28), bytes(16), bytes(16))
    with pytest.raises(MessageError, match="ephemeral"):
        Initiation(0, bytes(31), bytes(48), bytes(28), bytes(16), bytes(16))
    with pytest.raises(MessageError, match="receiver_index"):
        Response(0, -1, bytes(32), bytes(16), bytes(16), bytes(16))
    with pytest.raises(MessageError, match="nonce"):
        CookieReply(0, bytes(12), bytes(32))
    with pytest.raises(MessageError, match="counter"):
        TransportHeader(0, 2**64)
