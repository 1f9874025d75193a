"""The sans-IO yamux core: header vectors, and two sessions back to back with a fake clock.

Vectors: hashicorp/yamux ``const_test.go`` (TestConst, TestEncodeDecode) and
coder-control-plane.md §8.3 (computed from the Go sources' layout).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.coder.errors import (
    YamuxError,
    YamuxGoAway,
    YamuxKeepaliveTimeout,
    YamuxProtocolError,
    YamuxSessionClosed,
    YamuxStreamClosed,
)
from agentconn.coder.yamux import (
    HEADER_SIZE,
    INITIAL_STREAM_WINDOW,
    Config,
    ConnectionTerminated,
    DataReceived,
    Event,
    Flag,
    FrameType,
    GoAwayCode,
    GoAwayReceived,
    Header,
    PingAcknowledged,
    PingTimedOut,
    Role,
    Session,
    StreamEnded,
    StreamEstablished,
    StreamOpened,
    StreamReset,
    StreamState,
)

# --- wire vectors ----------------------------------------------------------------------------


def test_constants_match_const_test_go() -> None:
    # hashicorp/yamux const_test.go TestConst
    assert [t.value for t in FrameType] == [0, 1, 2, 3]
    assert (Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST) == (1, 2, 4, 8)
    assert [c.value for c in GoAwayCode] == [0, 1, 2]
    assert HEADER_SIZE == 12
    assert INITIAL_STREAM_WINDOW == 256 * 1024


def test_encode_decode_const_test_go() -> None:
    # const_test.go TestEncodeDecode: encode(typeWindowUpdate, flagACK|flagRST, 1234, 4321);
    # bytes computed in coder-control-plane.md §8.3
    header = Header(FrameType.WINDOW_UPDATE, Flag.ACK | Flag.RST, 1234, 4321)
    raw = header.emit()
    assert raw == bytes.fromhex("0001000a000004d2000010e1")
    assert Header.parse(raw) == header


@pytest.mark.parametrize(
    ("type_", "flags"),
    list(itertools.product(FrameType, range(16))),
)
def test_header_every_type_and_flag_combination(type_: FrameType, flags: int) -> None:
    header = Header(type_, Flag(flags), 0x01020304, 0xA0B0C0D0)
    raw = header.emit()
    assert raw == bytes([0, type_, 0, flags, 1, 2, 3, 4, 0xA0, 0xB0, 0xC0, 0xD0])
    assert Header.parse(raw) == header


@pytest.mark.parametrize(
    ("name", "header", "hex_"),
    [  # coder-control-plane.md §8.3 "yamux" vectors
        ("open", Header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0), "000100010000000100000000"),
        ("ack", Header(FrameType.WINDOW_UPDATE, Flag.ACK, 1, 0), "000100020000000100000000"),
        ("fin", Header(FrameType.WINDOW_UPDATE, Flag.FIN, 1, 0), "000100040000000100000000"),
        ("ping", Header(FrameType.PING, Flag.SYN, 0, 0), "000200010000000000000000"),
        ("pong", Header(FrameType.PING, Flag.ACK, 0, 0), "000200020000000000000000"),
        ("goaway", Header(FrameType.GO_AWAY, Flag.NONE, 0, 0), "000300000000000000000000"),
        (
            "window+131072 s3",
            Header(FrameType.WINDOW_UPDATE, Flag.NONE, 3, 131072),
            "000100000000000300020000",
        ),
    ],
)
def test_spec_vectors(name: str, header: Header, hex_: str) -> None:
    assert header.emit().hex() == hex_
    assert Header.parse(bytes.fromhex(hex_)) == header


def test_parse_rejects_bad_version_and_type() -> None:
    with pytest.raises(YamuxProtocolError, match="invalid protocol version 1"):
        Header.parse(bytes.fromhex("010000000000000000000000"))
    with pytest.raises(YamuxProtocolError, match="invalid msg type 4"):
        Header.parse(bytes.fromhex("000400000000000000000000"))
    with pytest.raises(YamuxError):
        Header.parse(b"\x00" * 11)


@given(
    st.sampled_from(list(FrameType)),
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_header_roundtrip(type_: FrameType, flags: int, sid: int, length: int) -> None:
    header = Header(type_, Flag(flags), sid, length)
    assert Header.parse(header.emit()) == header


# --- a pair of cores -------------------------------------------------------------------------


class Pair:
    """Client and server cores joined in memory; ``now`` is shared and explicit."""

    def __init__(self, config: Config | None = None) -> None:
        self.now = 0.0
        self.client = Session(Role.CLIENT, config, now=self.now)
        self.server = Session(Role.SERVER, config, now=self.now)

    def deliver(self) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until quiet; return (client events, server events)."""
        client_events: list[Event] = []
        server_events: list[Event] = []
        while True:
            c2s = self.client.data_to_send()
            s2c = self.server.data_to_send()
            if not c2s and not s2c:
                break
            if c2s:
                self.server.receive_data(c2s)
            if s2c:
                self.client.receive_data(s2c)
            client_events += drain(self.client)
            server_events += drain(self.server)
        client_events += drain(self.client)
        server_events += drain(self.server)
        return client_events, server_events


def drain(session: Session) -> list[Event]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def frames(raw: bytes) -> list[Header]:
    out, pos = [], 0
    while pos < len(raw):
        header = Header.parse(raw[pos:])
        pos += HEADER_SIZE + (header.length if header.type is FrameType.DATA else 0)
        out.append(header)
    return out


def test_open_accept_bytes_and_events() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    assert sid == 1
    syn = pair.client.data_to_send()
    assert syn.hex() == "000100010000000100000000"  # Go OpenStream: WindowUpdate|SYN, delta 0
    pair.server.receive_data(syn)
    assert drain(pair.server) == [StreamOpened(1)]
    pair.server.accept_stream(1)
    ack = pair.server.data_to_send()
    assert ack.hex() == "000100020000000100000000"  # Go AcceptStream: WindowUpdate|ACK
    pair.client.receive_data(ack)
    assert drain(pair.client) == [StreamEstablished(1)]
    assert pair.client.stream_state(1) is StreamState.ESTABLISHED
    assert pair.client.open_stream() == 3
    assert pair.server.open_stream() == 2


def test_data_may_precede_ack_and_fin_follows_data() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"hello")
    pair.client.send_eof(sid)
    raw = pair.client.data_to_send()
    assert [(h.type, h.flags, h.length) for h in frames(raw)] == [
        (FrameType.WINDOW_UPDATE, Flag.SYN, 0),
        (FrameType.DATA, Flag.NONE, 5),
        (FrameType.WINDOW_UPDATE, Flag.FIN, 0),
    ]
    pair.server.receive_data(raw)
    assert drain(pair.server) == [StreamOpened(1), DataReceived(1, b"hello"), StreamEnded(1)]
    pair.server.accept_stream(1)
    pair.server.send_eof(1)
    raw = pair.server.data_to_send()
    assert frames(raw) == [
        Header(FrameType.WINDOW_UPDATE, Flag.ACK, 1, 0),
        Header(FrameType.WINDOW_UPDATE, Flag.FIN, 1, 0),
    ]
    pair.client.receive_data(raw)
    assert drain(pair.client) == [StreamEstablished(1), StreamEnded(1)]
    assert pair.client.stream_state(1) is None and pair.server.stream_state(1) is None


def test_first_frame_of_an_unaccepted_stream_carries_ack() -> None:
    # Go sendFlags: whatever frame a SYN_RECEIVED stream sends first gets ACK
    pair = Pair()
    sid = pair.client.open_stream()
    pair.deliver()
    pair.server.send_data(sid, b"hi")
    raw = pair.server.data_to_send()
    assert frames(raw) == [Header(FrameType.DATA, Flag.ACK, sid, 2)]
    pair.client.receive_data(raw)
    assert drain(pair.client) == [StreamEstablished(sid), DataReceived(sid, b"hi")]
    assert pair.server.stream_state(sid) is StreamState.ESTABLISHED


def test_half_close_keeps_the_other_direction() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_eof(sid)
    _, server_events = pair.deliver()
    assert server_events == [StreamOpened(1), StreamEnded(1)]
    pair.server.accept_stream(1)
    pair.server.send_data(1, b"still flowing")
    client_events, _ = pair.deliver()
    assert DataReceived(1, b"still flowing") in client_events
    with pytest.raises(YamuxStreamClosed):
        pair.client.send_data(sid, b"after eof")


def test_sender_respects_window_and_window_update_arithmetic() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.deliver()
    pair.server.accept_stream(sid)
    pair.deliver()
    payload = bytes(300_000)
    pair.client.send_data(sid, payload)
    raw = pair.client.data_to_send()
    sent = sum(h.length for h in frames(raw) if h.type is FrameType.DATA)
    assert sent == INITIAL_STREAM_WINDOW  # never more than the peer's window
    assert pair.client.send_window(sid) == 0
    assert pair.client.buffered_amount(sid) == 300_000 - INITIAL_STREAM_WINDOW
    pair.server.receive_data(raw)
    received = sum(len(e.data) for e in drain(pair.server) if isinstance(e, DataReceived))
    assert received == INITIAL_STREAM_WINDOW
    assert pair.server.receive_window(sid) == 0
    # Go sendWindowUpdate: delta = (max - buffered) - recvWindow, sent once >= max/2
    pair.server.acknowledge_received_data(sid, 131_071)
    assert pair.server.data_to_send() == b""
    pair.server.acknowledge_received_data(sid, 1)
    update = pair.server.data_to_send()
    assert update.hex() == "000100000000000100020000"  # +131072 on stream 1
    pair.client.receive_data(update)
    assert pair.client.send_window(sid) == 131_072
    rest = pair.client.data_to_send()
    assert sum(h.length for h in frames(rest) if h.type is FrameType.DATA) == 300_000 - 262_144


def test_larger_max_window_is_announced_on_open() -> None:
    config = Config(max_stream_window=1 << 20)
    session = Session(Role.CLIENT, config)
    session.open_stream()
    assert frames(session.data_to_send()) == [
        Header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, (1 << 20) - INITIAL_STREAM_WINDOW)
    ]
    assert session.receive_window(1) == 1 << 20


def test_window_exceeded_is_a_protocol_error_with_go_away_1() -> None:
    server = Session(Role.SERVER)
    server.receive_data(Header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0).emit())
    assert drain(server) == [StreamOpened(1)]
    server.receive_data(Header(FrameType.DATA, Flag.NONE, 1, INITIAL_STREAM_WINDOW + 1).emit())
    (event,) = drain(server)
    assert isinstance(event, ConnectionTerminated)
    assert isinstance(event.error, YamuxProtocolError)
    assert "recv window exceeded" in str(event.error)
    assert server.data_to_send().hex() == "000300000000000000000001"  # GoAway(1)
    assert server.stats.protocol_errors == 1
    server.receive_data(b"more garbage")  # ignored, counted, never raises
    assert server.stats.ignored_bytes == len(b"more garbage")
    assert drain(server) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("010000000000000000000000", "invalid protocol version"),
        ("000500000000000000000000", "invalid msg type"),
        ("000000010000000200000000", "parity"),  # SYN on an even id, sent to a server
    ],
)
def test_protocol_errors_end_the_session(raw: str, message: str) -> None:
    session = Session(Role.SERVER)  # a server expects odd ids from the client
    session.receive_data(bytes.fromhex(raw))
    (event,) = drain(session)
    assert isinstance(event, ConnectionTerminated)
    assert isinstance(event.error, YamuxProtocolError)
    assert message in str(event.error)
    assert session.data_to_send().endswith(bytes.fromhex("000300000000000000000001"))


def test_duplicate_syn_and_unexpected_fin() -> None:
    server = Session(Role.SERVER)
    syn = Header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0).emit()
    server.receive_data(syn + syn)
    events = drain(server)
    assert events[0] == StreamOpened(1)
    assert isinstance(events[1], ConnectionTerminated)
    assert "duplicate stream" in str(events[1].error)

    server = Session(Role.SERVER)
    fin = Header(FrameType.WINDOW_UPDATE, Flag.FIN, 1, 0).emit()
    server.receive_data(syn + fin + fin)
    events = drain(server)
    assert events[:2] == [StreamOpened(1), StreamEnded(1)]
    assert "unexpected FIN" in str(events[2].error)  # type: ignore[union-attr]


def test_frames_for_unknown_streams_are_drained() -> None:
    server = Session(Role.SERVER)
    data = Header(FrameType.DATA, Flag.NONE, 7, 5).emit() + b"12345"
    update = Header(FrameType.WINDOW_UPDATE, Flag.NONE, 9, 100).emit()
    ping = Header(FrameType.PING, Flag.SYN, 0, 42).emit()
    raw = data + update + ping
    for i in range(1, len(raw)):  # split anywhere: same outcome
        s = Session(Role.SERVER)
        s.receive_data(raw[:i])
        s.receive_data(raw[i:])
        assert drain(s) == []
        assert s.stats.unknown_stream_frames == 2 and s.stats.discarded_bytes == 5
        assert s.data_to_send() == Header(FrameType.PING, Flag.ACK, 0, 42).emit()
    assert server.stats.protocol_errors == 0


def test_accept_backlog_overflow_is_reset() -> None:
    server = Session(Role.SERVER, Config(accept_backlog=256))
    raw = b"".join(
        Header(FrameType.WINDOW_UPDATE, Flag.SYN, 2 * i + 1, 0).emit() for i in range(258)
    )
    server.receive_data(raw)
    assert len(drain(server)) == 256
    resets = frames(server.data_to_send())
    assert resets == [
        Header(FrameType.WINDOW_UPDATE, Flag.RST, 513, 0),
        Header(FrameType.WINDOW_UPDATE, Flag.RST, 515, 0),
    ]
    assert server.stats.streams_refused == 2
    server.accept_stream(1)  # room again
    server.receive_data(Header(FrameType.WINDOW_UPDATE, Flag.SYN, 517, 0).emit())
    assert drain(server) == [StreamOpened(517)]


def test_reset_both_ways() -> None:
    pair = Pair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"x" * 10)
    pair.deliver()
    pair.server.accept_stream(sid)
    pair.server.reset_stream(sid)
    raw = pair.server.data_to_send()
    assert frames(raw)[-1] == Header(FrameType.WINDOW_UPDATE, Flag.RST, sid, 0)
    pair.client.receive_data(raw)
    assert StreamReset(sid) in drain(pair.client)
    assert pair.client.stream_state(sid) is None
    with pytest.raises(YamuxStreamClosed):
        pair.client.send_data(sid, b"more")
    # data that was in flight for the reset stream is drained, not delivered
    pair.server.receive_data(Header(FrameType.DATA, Flag.NONE, sid, 3).emit() + b"abc")
    assert drain(pair.server) == [] and pair.server.stats.discarded_bytes == 3


def test_ping_answered_and_user_ping_acknowledged_or_timed_out() -> None:
    pair = Pair()
    ping_id = pair.client.ping(now=0.0)
    request = pair.client.data_to_send()
    assert request == Header(FrameType.PING, Flag.SYN, 0, ping_id).emit()
    pair.server.receive_data(request)
    reply = pair.server.data_to_send()
    assert reply == Header(FrameType.PING, Flag.ACK, 0, ping_id).emit()  # same opaque value
    pair.client.receive_data(reply)
    client_events = drain(pair.client)
    assert client_events == [PingAcknowledged(ping_id)]
    lost = pair.client.ping(now=1.0)
    pair.client.data_to_send()  # the ping is "lost"
    assert pair.client.get_timer() == 11.0
    pair.client.handle_timer(11.0)
    assert drain(pair.client) == [PingTimedOut(lost)]
    assert not pair.client.terminated


def test_keepalive_every_30s_and_10s_timeout() -> None:
    client = Session(Role.CLIENT, now=100.0)
    assert client.get_timer() == 130.0
    client.handle_timer(129.9)
    assert client.data_to_send() == b""
    client.handle_timer(130.0)
    assert client.data_to_send() == Header(FrameType.PING, Flag.SYN, 0, 0).emit()
    assert client.get_timer() == 140.0  # ping timeout (Go ConnectionWriteTimeout)
    client.receive_data(Header(FrameType.PING, Flag.ACK, 0, 0).emit())
    assert drain(client) == []  # keepalive replies are not events
    assert client.get_timer() == 160.0
    client.handle_timer(160.0)
    assert client.data_to_send() == Header(FrameType.PING, Flag.SYN, 0, 1).emit()
    client.handle_timer(170.0)
    (event,) = drain(client)
    assert isinstance(event, ConnectionTerminated)
    assert isinstance(event.error, YamuxKeepaliveTimeout)
    assert client.get_timer() is None


def test_keepalive_disabled() -> None:
    assert Session(Role.CLIENT, Config(enable_keepalive=False)).get_timer() is None


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (1, "yamux protocol error"),
        (2, "remote yamux internal error"),
        (7, "unexpected go away received"),
    ],
)
def test_go_away_error_codes_end_the_session(code: int, text: str) -> None:
    client = Session(Role.CLIENT)
    client.receive_data(Header(FrameType.GO_AWAY, Flag.NONE, 0, code).emit())
    (event,) = drain(client)
    assert isinstance(event, ConnectionTerminated)
    assert isinstance(event.error, YamuxGoAway) and event.error.code == code
    assert text in str(event.error)
    assert client.data_to_send() == b""  # nothing answered to a GoAway


def test_go_away_normal_both_directions() -> None:
    pair = Pair()
    pair.server.go_away()
    assert pair.server.data_to_send().hex() == "000300000000000000000000"
    pair.client.receive_data(bytes.fromhex("000300000000000000000000"))
    assert drain(pair.client) == [GoAwayReceived(0)]
    with pytest.raises(YamuxError, match="remote end is not accepting connections"):
        pair.client.open_stream()
    # after our GoAway, new streams from the peer are refused with RST
    pair.server.receive_data(Header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0).emit())
    assert drain(pair.server) == []
    assert frames(pair.server.data_to_send()) == [Header(FrameType.WINDOW_UPDATE, Flag.RST, 1, 0)]


def test_eof_and_close() -> None:
    client = Session(Role.CLIENT)
    client.receive_data(b"")
    (event,) = drain(client)
    assert isinstance(event, ConnectionTerminated) and isinstance(event.error, YamuxSessionClosed)
    with pytest.raises(YamuxSessionClosed):
        client.open_stream()
    other = Session(Role.CLIENT)
    other.close()
    assert drain(other) == [ConnectionTerminated(None)]
    assert other.data_to_send() == b""  # Go's Close sends no GoAway


def test_frames_interleave_round_robin() -> None:
    session = Session(Role.CLIENT, Config(max_frame_size=1000))
    a, b = session.open_stream(), session.open_stream()
    session.send_data(a, b"a" * 2500)
    session.send_data(b, b"b" * 1500)
    data = [(h.stream_id, h.length) for h in frames(session.data_to_send()) if h.type == 0]
    assert data == [(a, 1000), (b, 1000), (a, 1000), (b, 500), (a, 500)]


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=70_000), min_size=1, max_size=6),
    cut=st.integers(1, 40),
)
def test_bytes_whole_or_split_give_the_same_events(chunks: list[bytes], cut: int) -> None:
    """h11's fuzz idea: feeding the wire whole or in small pieces yields the same stream."""
    sender = Session(Role.CLIENT, Config(enable_keepalive=False))
    sid = sender.open_stream()
    for chunk in chunks:
        sender.send_data(sid, chunk)
    sender.send_eof(sid)
    raw = sender.data_to_send()

    def collect(pieces: list[bytes]) -> tuple[bytes, list[type]]:
        receiver = Session(Role.SERVER, Config(max_stream_window=8 << 20))
        for piece in pieces:
            receiver.receive_data(piece)
        events = drain(receiver)
        data = b"".join(e.data for e in events if isinstance(e, DataReceived))
        kinds = [type(e) for e in events if not isinstance(e, DataReceived)]
        return data, kinds

    whole = collect([raw])
    split = collect([raw[i : i + cut] for i in range(0, len(raw), cut)])
    sent = b"".join(chunks)[:INITIAL_STREAM_WINDOW]
    assert whole == split
    assert whole[0] == sent
    if len(b"".join(chunks)) <= INITIAL_STREAM_WINDOW:
        assert whole[1] == [StreamOpened, StreamEnded]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_garbage_never_raises(raw: bytes) -> None:
    """Invariant: any input yields events (possibly ConnectionTerminated), never an exception."""
    for role in Role:
        session = Session(role)
        session.receive_data(raw)
        events = drain(session)
        terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert len(terminated) <= 1
        if terminated:
            assert isinstance(terminated[0].error, (YamuxProtocolError, YamuxGoAway))
        session.data_to_send()
