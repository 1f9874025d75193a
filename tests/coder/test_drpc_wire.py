"""DRPC wire: varints, frames, packet assembly, errors, metadata (storj/drpc drpcwire).

Vectors: ``drpcwire/varint_test.go`` TestVarint values, ``drpcwire/error_test.go`` TestError
(bytes computed in coder-control-plane.md §8.3), the worked bytes of §3.2/§3.7.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.coder.drpc import (
    DEFAULT_SPLIT_SIZE,
    Frame,
    Kind,
    Packet,
    PacketReader,
    append_varint,
    decode_metadata,
    encode_metadata,
    encode_varint,
    go_quote,
    marshal_error,
    read_varint,
    split_packet,
    unmarshal_error,
)
from agentconn.coder.errors import DrpcProtocolError

# drpcwire/varint_test.go TestVarint "Round Trip" values, plus the 64 all-ones prefixes
GO_VARINT_VALUES = [
    0, 1, 2,
    *[v for s in range(7, 64, 7) for v in ((1 << s) - 1, 1 << s, (1 << s) + 1)],
    (1 << 63) - 1, 1 << 63, (1 << 63) + 1, (1 << 64) - 1,
    *[(1 << (i + 1)) - 1 for i in range(64)],
]  # fmt: skip


@pytest.mark.parametrize("value", GO_VARINT_VALUES)
def test_varint_round_trip_go_values(value: int) -> None:
    raw = encode_varint(value)
    assert len(raw) == max(1, -(-value.bit_length() // 7))  # size follows the bits set
    assert read_varint(raw) == (value, len(raw))


def test_varint_vectors_and_errors() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    assert encode_varint((1 << 64) - 1) == b"\xff" * 9 + b"\x01"
    assert read_varint(b"\x80") is None  # incomplete: need more bytes
    assert read_varint(b"") is None
    with pytest.raises(DrpcProtocolError, match="varint too long"):
        read_varint(b"\xff" * 10)
    with pytest.raises(ValueError):
        append_varint(bytearray(), -1)


@pytest.mark.parametrize(
    ("kind", "control_byte"),
    [  # §3.2: done=1 control bytes per kind
        (Kind.INVOKE, 0x03),
        (Kind.MESSAGE, 0x05),
        (Kind.ERROR, 0x07),
        (Kind.CLOSE, 0x0B),
        (Kind.CLOSE_SEND, 0x0D),
        (Kind.INVOKE_METADATA, 0x0F),
    ],
)
def test_control_byte_per_kind(kind: Kind, control_byte: int) -> None:
    assert Frame(kind, 1, 1).emit()[0] == control_byte
    assert Frame(kind, 1, 1, done=False).emit()[0] == control_byte & ~1


def test_cancel_is_sent_with_the_control_bit() -> None:
    assert Frame(Kind.CANCEL, 1, 4, control=True).emit() == bytes.fromhex("89010400")


def test_worked_bytes_of_spec_3_7() -> None:
    invoke = Frame(Kind.INVOKE, 1, 1, b"/coder.tailnet.v2.Tailnet/StreamDERPMaps").emit()
    assert invoke.hex() == ("03010128" + b"/coder.tailnet.v2.Tailnet/StreamDERPMaps".hex())
    assert Frame(Kind.MESSAGE, 1, 2).emit().hex() == "05010200"
    assert Frame(Kind.CLOSE_SEND, 1, 3).emit().hex() == "0d010300"
    assert Frame(Kind.CLOSE, 1, 2).emit().hex() == "0b010200"
    coordinate = Frame(Kind.INVOKE, 1, 1, b"/coder.tailnet.v2.Tailnet/Coordinate").emit()
    assert coordinate.hex() == (
        "030101242f636f6465722e7461696c6e65742e76322e5461696c6e65742f436f6f7264696e617465"
    )
    add_tunnel = bytes.fromhex("1a120a10123456789abcdef0123456789abcdef0")
    assert Frame(Kind.MESSAGE, 1, 2, add_tunnel).emit().hex() == "05010214" + add_tunnel.hex()
    error = Frame(Kind.ERROR, 1, 2, marshal_error("Unimplemented", 12)).emit()
    assert error.hex() == "07010215000000000000000c556e696d706c656d656e746564"


def test_error_data_go_vectors() -> None:
    # drpcwire/error_test.go TestError: MarshalError(WithCode(errors.New("test"), 5))
    data = marshal_error("test", 5)
    assert data.hex() == "0000000000000005" + "74657374"
    assert unmarshal_error(data) == (5, "test")
    # shorter than 8 bytes: Go's note
    assert unmarshal_error(b"oops") == (0, "oops (drpcwire note: invalid error data)")
    assert unmarshal_error(b"") == (0, " (drpcwire note: invalid error data)")


def test_go_quote_matches_percent_q() -> None:
    assert go_quote("/a/B") == '"/a/B"'
    assert go_quote('x"y\\z') == '"x\\"y\\\\z"'
    assert go_quote("\n\t\x00\x7f") == '"\\n\\t\\x00\\x7f"'
    assert go_quote("é") == '"é"'


def test_frame_parse_incomplete_and_complete() -> None:
    raw = Frame(Kind.MESSAGE, 300, 2, b"hello").emit()
    for i in range(len(raw)):
        assert Frame.parse(raw[:i]) is None
    frame, end = Frame.parse(raw + b"next")  # type: ignore[misc]
    assert end == len(raw)
    assert frame == Frame(Kind.MESSAGE, 300, 2, b"hello")


def test_unknown_kind_is_kept_as_int() -> None:
    raw = bytes([(42 << 1) | 1, 1, 1, 0])
    frame, _ = Frame.parse(raw)  # type: ignore[misc]
    assert frame.kind == 42 and not isinstance(frame.kind, Kind)


def test_split_packet_like_splitn() -> None:
    packet = Packet(Kind.MESSAGE, 1, 2, bytes(150_000))
    frames = split_packet(packet)
    assert [len(f.data) for f in frames] == [
        DEFAULT_SPLIT_SIZE,
        DEFAULT_SPLIT_SIZE,
        150_000 - 2 * DEFAULT_SPLIT_SIZE,
    ]
    assert [f.done for f in frames] == [False, False, True]
    assert len(split_packet(packet, -1)) == 1
    assert split_packet(Packet(Kind.CLOSE, 1, 3)) == [Frame(Kind.CLOSE, 1, 3)]


def _wire(*frames: Frame) -> bytes:
    return b"".join(f.emit() for f in frames)


def test_reader_assembles_split_packets() -> None:
    reader = PacketReader()
    reader.receive_data(
        _wire(
            Frame(Kind.INVOKE, 1, 1, b"/svc/M"),
            Frame(Kind.MESSAGE, 1, 2, b"ab", done=False),
            Frame(Kind.MESSAGE, 1, 2, b"cd", done=False),
            Frame(Kind.MESSAGE, 1, 2, b"ef"),
        )
    )
    assert reader.next_packet() == Packet(Kind.INVOKE, 1, 1, b"/svc/M")
    assert reader.next_packet() == Packet(Kind.MESSAGE, 1, 2, b"abcdef")
    assert reader.next_packet() is None


def test_reader_rules() -> None:
    reader = PacketReader()
    reader.receive_data(_wire(Frame(Kind.MESSAGE, 1, 2), Frame(Kind.MESSAGE, 1, 1)))
    reader.next_packet()
    with pytest.raises(DrpcProtocolError, match="id monotonicity violation"):
        reader.next_packet()

    reader = PacketReader()  # starts at <1,1>: stream 0 is "less"
    reader.receive_data(_wire(Frame(Kind.MESSAGE, 0, 5)))
    with pytest.raises(DrpcProtocolError, match="monotonicity"):
        reader.next_packet()

    reader = PacketReader()
    reader.receive_data(
        _wire(Frame(Kind.MESSAGE, 1, 1, b"x", done=False), Frame(Kind.ERROR, 1, 1, b"y"))
    )
    with pytest.raises(DrpcProtocolError, match="packet kind change"):
        reader.next_packet()

    reader = PacketReader(max_buffer_size=10)
    reader.receive_data(
        _wire(Frame(Kind.MESSAGE, 1, 1, b"x" * 8, done=False), Frame(Kind.MESSAGE, 1, 1, b"y" * 8))
    )
    with pytest.raises(DrpcProtocolError, match="data overflow"):
        reader.next_packet()

    reader = PacketReader(max_buffer_size=10)
    reader.receive_data(bytes([0x05, 1, 1]) + encode_varint(1000) + bytes(100))
    with pytest.raises(DrpcProtocolError, match="data overflow"):
        reader.next_packet()  # an incomplete frame already larger than allowed


def test_reader_skips_control_frames_and_restarts_on_new_id() -> None:
    reader = PacketReader()
    reader.receive_data(
        _wire(
            Frame(Kind.CANCEL, 1, 1, control=True),
            Frame(Kind.MESSAGE, 1, 2, b"partial", done=False),
            Frame(Kind.CLOSE, 1, 3),  # a new id: the half packet is dropped (reader.go)
        )
    )
    assert reader.next_packet() == Packet(Kind.CLOSE, 1, 3)


def test_metadata_round_trip_and_bytes() -> None:
    raw = encode_metadata({"k": "v"})
    assert raw.hex() == "0a06" + "0a016b" + "120176"
    assert decode_metadata(raw) == {"k": "v"}
    assert decode_metadata(b"") == {}
    with pytest.raises(DrpcProtocolError):
        decode_metadata(b"\x0a\x05\x0a")


# --- properties --------------------------------------------------------------------------------

frames_strategy = st.builds(
    Frame,
    kind=st.integers(0, 63),
    stream_id=st.integers(0, 2**64 - 1),
    message_id=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=300),
    done=st.booleans(),
    control=st.booleans(),
)


@given(frames_strategy)
def test_frame_parse_emit_round_trip(frame: Frame) -> None:
    # drpcwire/packet_test.go TestAppendParse, with hypothesis instead of RandFrame
    parsed = Frame.parse(frame.emit())
    assert parsed is not None
    assert parsed[0] == frame


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    assert read_varint(encode_varint(value)) == (value, len(encode_varint(value)))


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=3000), max_size=6),
    split=st.integers(1, 500),
    cut=st.integers(1, 64),
)
def test_packets_survive_any_split_and_feed(messages: list[bytes], split: int, cut: int) -> None:
    packets = [Packet(Kind.MESSAGE, 1, i + 1, m) for i, m in enumerate(messages)]
    wire = b"".join(f.emit() for p in packets for f in split_packet(p, split))
    reader = PacketReader()
    got = []
    for i in range(0, len(wire), cut):
        reader.receive_data(wire[i : i + cut])
        while (packet := reader.next_packet()) is not None:
            got.append(packet)
    assert got == packets


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_reader_garbage_gives_packets_or_protocol_error(raw: bytes) -> None:
    """Invariant: a packet, None, or DrpcProtocolError — nothing else, never a hang."""
    reader = PacketReader(max_buffer_size=1024)
    reader.receive_data(raw)
    try:
        for _ in range(len(raw) + 1):
            if reader.next_packet() is None:
                break
    except DrpcProtocolError:
        pass
