"""ServerFrameReader (the fast path's sans-IO frame reader, RFC 6455 §5): every framing rule,
whatever the chunking, checked against frames built by hand and by wsproto."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from agentconn.web.wsframes import Close, Data, Failure, Ping, Pong, ServerFrameReader

BIN, TEXT, CONT, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = None, form: int | None = None) -> bytes:
    """A frame as a server (or a broken server) would send it. ``form`` forces the length
    encoding: 7 (7-bit), 16 or 64."""
    n = len(payload)
    if form is None:
        form = 7 if n < 126 else 16 if n < 1 << 16 else 64
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    m = 0x80 if mask is not None else 0
    if form == 7:
        head += bytes([m | n])
    elif form == 16:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def events(*chunks: bytes) -> list[object]:
    """Feed ``chunks`` one by one; every event, with Data payloads as bytes."""
    r = ServerFrameReader()
    out: list[object] = []
    for c in chunks:
        r.receive_data(c)
        while (e := r.next_event()) is not None:
            out.append(Data(bytes(e.payload), e.text, e.fin) if isinstance(e, Data) else e)
    return out


def payload(evs: list[object]) -> bytes:
    return b"".join(bytes(e.payload) for e in evs if isinstance(e, Data))


def test_one_binary_frame_of_each_length_class() -> None:
    for n in (0, 1, 125, 126, 65535, 65536, 1 << 20):
        body = os.urandom(n)
        evs = events(frame(BIN, body))
        assert payload(evs) == body and evs[-1] == Data(body[-n:] if n else b"", False, True)


def test_pieces_are_views_of_the_chunk_not_copies() -> None:
    r = ServerFrameReader()
    chunk = frame(BIN, b"a" * 1000) + frame(BIN, b"b" * 10)
    r.receive_data(chunk)
    first = r.next_event()
    assert isinstance(first, Data) and first.payload.obj is chunk
    assert bytes(first.payload) == b"a" * 1000
    assert bytes(r.next_event().payload) == b"b" * 10  # type: ignore[union-attr]
    assert r.next_event() is None


def test_fragmented_message_with_control_frames_between_fragments() -> None:
    stream = (frame(BIN, b"ab", fin=False) + frame(PING, b"p1") + frame(CONT, b"cd", fin=False)
              + frame(PONG, b"q") + frame(CONT, b"", fin=False) + frame(CONT, b"ef")
              + frame(BIN, b"next"))
    assert events(stream) == [
        Data(b"ab", False, False), Ping(b"p1"), Data(b"cd", False, False), Pong(b"q"),
        Data(b"ef", False, True), Data(b"next", False, True)]


def test_every_split_point_gives_the_same_events() -> None:
    stream = (frame(BIN, b"x" * 300, fin=False) + frame(PING, b"ping!") +
              frame(CONT, os.urandom(70000)) + frame(CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    whole = events(stream)
    for cut in range(0, len(stream), 7):
        for cut2 in (cut + 1, cut + 13, cut + 70100):
            evs = events(stream[:cut], stream[cut:cut2], stream[cut2:])
            assert payload(evs) == payload(whole)
            assert [e for e in evs if not isinstance(e, Data)] == [Ping(b"ping!"),
                                                                   Close(1000, "bye")]


def test_byte_by_byte() -> None:
    stream = frame(BIN, b"hello", fin=False) + frame(PING, b"") + frame(CONT, b"!" * 200)
    evs = events(*(stream[i:i + 1] for i in range(len(stream))))
    assert payload(evs) == b"hello" + b"!" * 200 and Ping(b"") in evs
    assert evs[-1] == Data(b"!", False, True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["data", "ping", "pong"]), st.binary(max_size=300),
                          st.booleans()), max_size=12),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_random_frames_random_chunking(frames: list[tuple[str, bytes, bool]],
                                       cuts: list[int]) -> None:
    stream, want, controls, open_message = b"", b"", [], False
    for kind, body, fin in frames:
        if kind == "data":
            stream += frame(CONT if open_message else BIN, body, fin=fin)
            want += body
            open_message = not fin
        else:
            body = body[:125]
            stream += frame(PING if kind == "ping" else PONG, body)
            controls.append(Ping(body) if kind == "ping" else Pong(body))
    points = sorted(c % (len(stream) + 1) for c in cuts)
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    evs = events(*chunks)
    assert payload(evs) == want
    assert [e for e in evs if not isinstance(e, Data)] == controls


def test_a_64_bit_length_streams_without_holding_the_frame() -> None:
    """A frame announcing 1 TiB: its payload comes out piece by piece, each a view of its
    chunk, so memory is one chunk whatever the announced length."""
    r = ServerFrameReader()
    r.receive_data(b"\x82\x7f" + (1 << 40).to_bytes(8, "big"))
    assert r.next_event() is None
    chunk = bytes(1 << 20)
    for _ in range(8):
        r.receive_data(chunk)
        e = r.next_event()
        assert isinstance(e, Data) and e.payload.obj is chunk and len(e.payload) == 1 << 20
        assert not e.fin and r.next_event() is None


def test_wsproto_built_frames_parse() -> None:
    server = FrameProtocol(client=False, extensions=[])
    stream = (bytes(server.send_data(b"one", fin=False)) + bytes(server.ping(b"x")) +
              bytes(server.send_data(b"two" * 50000, fin=True)) +
              bytes(server.close(1001, "going away")))
    evs = events(stream)
    assert payload(evs) == b"one" + b"two" * 50000
    assert evs[-1] == Close(1001, "going away") and Ping(b"x") in evs


def _failure(*chunks: bytes) -> Failure:
    evs = events(*chunks)
    assert isinstance(evs[-1], Failure), evs
    return evs[-1]


def test_protocol_errors() -> None:
    cases = {
        "masked": frame(BIN, b"abc", mask=b"\x01\x02\x03\x04"),
        "reserved": frame(BIN, b"abc", rsv=4),
        "opcode 3": frame(3, b""),
        "opcode 0xB": frame(0xB, b""),
        "fragmented control": frame(PING, b"", fin=False),
        "long control": frame(PING, b"p" * 126),
        "continuation first": frame(CONT, b"x"),
        "new message inside": frame(BIN, b"a", fin=False) + frame(TEXT, b"b"),
        "16-bit not minimal": frame(BIN, b"abc", form=16),
        "64-bit not minimal": frame(BIN, b"abc" * 100, form=64),
        "64-bit top bit": b"\x82\x7f" + (1 << 63).to_bytes(8, "big"),
        "1-byte close": frame(CLOSE, b"\x03"),
        "close 1005 on the wire": frame(CLOSE, (1005).to_bytes(2, "big")),
        "close 999": frame(CLOSE, (999).to_bytes(2, "big")),
        "close 2000": frame(CLOSE, (2000).to_bytes(2, "big")),
    }
    for name, data in cases.items():
        f = _failure(data)
        assert f.code == 1002, name
    assert _failure(frame(CLOSE, (1000).to_bytes(2, "big") + b"\xff\xfe")).code == 1007
    # after a failure the reader says nothing more
    r = ServerFrameReader()
    r.receive_data(frame(BIN, b"x", mask=b"abcd") + frame(BIN, b"more"))
    assert isinstance(r.next_event(), Failure) and r.next_event() is None


def test_close_frames() -> None:
    assert events(frame(CLOSE)) == [Close(1005, "")]
    assert events(frame(CLOSE, (1000).to_bytes(2, "big"))) == [Close(1000, "")]
    assert events(frame(CLOSE, (4000).to_bytes(2, "big") + "é".encode())) == [
        Close(4000, "é")]
    # nothing is read after a close frame (RFC 6455 §5.5.1)
    assert events(frame(BIN, b"a") + frame(CLOSE) + frame(BIN, b"late")) == [
        Data(b"a", False, True), Close(1005, "")]


def test_text_pieces_are_marked() -> None:
    assert events(frame(TEXT, b"hi", fin=False) + frame(CONT, b"!")) == [
        Data(b"hi", True, False), Data(b"!", True, True)]
