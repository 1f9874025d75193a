"""The sans-IO DERP cores back to back with a fake clock: login, frames, deadlines, bad
input, and the relay's forwarding rules (coder-control-plane.md §5.4–§5.7)."""
from __future__ import annotations

import pytest
from derp_pair import AGENT_PUB, DerpPair, agent_key, client_key, server_key
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.coder.derp.clientconn import ClientState, DerpClientConnection
from agentconn.coder.derp.errors import DerpLoginError, DerpProtocolError, DerpSendError
from agentconn.coder.derp.events import (
    ClientAuthenticated,
    Connected,
    ConnectionTerminated,
    Health,
    KeepAlive,
    NotePreferred,
    PacketReceived,
    PacketToForward,
    PeerGone,
    Ping,
    Pong,
    Restarting,
)
from agentconn.coder.derp.frames import (
    ClientInfo,
    ClientInfoFrame,
    FrameType,
    ServerInfo,
    emit_frame,
    emit_header,
)
from agentconn.coder.derp.serverconn import DerpServerConnection, Relay, ServerConnState
from agentconn.coder.disco import Ping as DiscoPing
from agentconn.coder.disco import seal_packet
from agentconn.coder.keys import DiscoPrivate, NodePrivate, NodePublic

H = bytes.fromhex


def logged_in(**kw: object) -> DerpPair:
    pair = DerpPair(**kw)  # type: ignore[arg-type]
    pair.pump()
    assert pair.client.state is ClientState.CONNECTED
    assert pair.server.state is ServerConnState.SERVING
    return pair


def test_login() -> None:
    pair = logged_in()
    assert pair.client_events == [Connected(server_key().public)]
    assert pair.server_events == [ClientAuthenticated(client_key().public, ClientInfo())]
    assert pair.server.key == client_key().public
    assert pair.client.server_key == server_key().public


def test_sends_before_the_greeting_wait_behind_client_info() -> None:
    pair = DerpPair()
    pair.client.note_preferred(True)
    pair.client.send_packet(H(AGENT_PUB), b"early", pair.now)
    assert pair.client.data_to_send() == b""  # nothing until the ServerKey arrived
    pair.pump()
    assert pair.server_events[1:] == [
        NotePreferred(True), PacketToForward(NodePublic(H(AGENT_PUB)), b"early")]


def test_server_ping_is_answered_and_client_ping_gets_pong() -> None:
    pair = logged_in()
    # derp_test.go TestClientRecv "ping": the client echoes 01..08 in a Pong.
    pair.client.receive_data(H("12000000080102030405060708"), pair.now)
    assert pair.client.data_to_send() == H("13000000080102030405060708")
    assert pair.client.next_event() == Ping(bytes(range(1, 9)))
    pair.client.send_ping(b"abcdefgh")
    pair.pump()
    assert pair.client_events[-1] == Pong(b"abcdefgh")
    assert Ping(b"abcdefgh") in pair.server_events


def test_server_ignores_pings_while_a_pong_is_pending() -> None:
    pair = logged_in()
    pair.server.receive_data(emit_frame(FrameType.PING, b"11111111") * 2, pair.now)
    assert pair.server.data_to_send() == emit_frame(FrameType.PONG, b"11111111")
    assert pair.server.drops["ping_while_pong_pending"] == 1


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        # derp/derp_test.go TestClientRecv
        ("13000000080102030405060708", Pong(bytes(range(1, 9)))),
        ("1400000003424144", Health("BAD")),
        ("1400000000", Health("")),
        ("15000000080000000100000002", Restarting(0.001, 0.002)),
        ("0600000000", KeepAlive()),
        ("0800000020" + AGENT_PUB, PeerGone(NodePublic(H(AGENT_PUB)), 0)),
        ("0800000021" + AGENT_PUB + "01", PeerGone(NodePublic(H(AGENT_PUB)), 1)),
        ("0500000021" + AGENT_PUB + "ff", PacketReceived(NodePublic(H(AGENT_PUB)), b"\xff")),
    ],
)
def test_client_receives(frame: str, event: object) -> None:
    pair = logged_in()
    pair.client.receive_data(H(frame), pair.now)
    assert pair.client.next_event() == event


def test_client_drops_short_frames_and_skips_unknown_ones() -> None:
    pair = logged_in()
    bad = (emit_frame(FrameType.RECV_PACKET, b"short") + emit_frame(FrameType.PING, b"1")
           + emit_frame(FrameType.PEER_GONE, b"x") + emit_frame(0x7E, b"unknown")
           + emit_frame(FrameType.RESTARTING, b"1234"))
    pair.client.receive_data(bad, pair.now)
    assert pair.client.next_event() is None
    assert pair.client.state is ClientState.CONNECTED
    assert dict(pair.client.drops) == {
        "short_recv_packet": 1, "short_ping": 1, "short_peer_gone": 1, "unknown_frame": 1,
        "short_restarting": 1}


def test_client_rejects_an_unexpectedly_large_frame() -> None:
    pair = logged_in()
    pair.client.receive_data(emit_header(FrameType.RECV_PACKET, (1 << 20) + 1), pair.now)
    term = pair.client.next_event()
    assert isinstance(term, ConnectionTerminated)
    assert isinstance(term.error, DerpProtocolError)
    assert "unexpectedly large frame (type 0x5) of 1048577 bytes" in term.reason
    assert pair.client.state is ClientState.CLOSED


@pytest.mark.parametrize(
    "greeting",
    [
        emit_frame(FrameType.SERVER_INFO, bytes(40)),  # wrong type
        emit_frame(FrameType.SERVER_KEY, b"DERP\xf0\x9f\x94\x92" + bytes(32)),  # bad magic
        emit_frame(FrameType.SERVER_KEY, bytes(39)),  # short
        emit_header(FrameType.SERVER_KEY, 2000),  # over the 1 KiB read limit
    ],
)
def test_client_rejects_a_bad_greeting(greeting: bytes) -> None:
    client = DerpClientConnection(client_key(), 0.0)
    client.receive_data(greeting, 0.0)
    term = client.next_event()
    assert isinstance(term, ConnectionTerminated) and isinstance(term.error, DerpLoginError)
    assert client.data_to_send() == b""  # no ClientInfo to a server we did not recognise


def test_client_rejects_a_server_info_it_cannot_open() -> None:
    pair = DerpPair()
    pair.client.receive_data(pair.server.data_to_send(), pair.now)  # ServerKey
    pair.client.receive_data(emit_frame(FrameType.SERVER_INFO, bytes(60)), pair.now)
    term = pair.client.next_event()
    assert isinstance(term, ConnectionTerminated) and isinstance(term.error, DerpLoginError)
    assert "invalid server info frame: failed to open naclbox" in term.reason


def test_client_deadlines() -> None:
    client = DerpClientConnection(client_key(), 0.0)
    assert client.get_timer() == 10.0
    client.handle_timer(9.9)
    assert client.state is ClientState.AWAIT_SERVER_KEY
    client.handle_timer(10.0)
    term = client.next_event()
    assert isinstance(term, ConnectionTerminated) and isinstance(term.error, DerpLoginError)
    # Connected: 120 s without any frame ends the connection (Go's read deadline).
    pair = logged_in()
    assert pair.client.get_timer() == pair.now + 120.0
    pair.now += 100
    pair.client.receive_data(H("0600000000"), pair.now)  # a keepalive moves it
    assert pair.client.get_timer() == pair.now + 120.0
    pair.advance(120.0)
    assert isinstance(pair.client_events[-1], ConnectionTerminated)
    assert "no frame from the server for 120.0 s" in pair.client_events[-1].reason


def test_server_keepalive_ticks() -> None:
    pair = logged_in(keepalive=60.0, keepalive_jitter=2.5)
    assert pair.server.get_timer() == pair.now + 62.5
    pair.advance(62.5)
    assert pair.client_events[-1] == KeepAlive()
    pair.advance(62.5)
    assert pair.client_events[-2:] == [KeepAlive(), KeepAlive()]
    # A late timer sends one keepalive and skips the ticks it missed.
    pair.server.handle_timer(pair.now + 62.5 * 3)
    assert pair.server.data_to_send() == bytes.fromhex("0600000000")
    assert pair.server.get_timer() == pair.now + 62.5 * 4


def test_send_limits() -> None:
    pair = logged_in()
    with pytest.raises(DerpSendError, match="packet too big: 65537"):
        pair.client.send_packet(H(AGENT_PUB), bytes(65537), pair.now)
    with pytest.raises(DerpSendError):
        pair.client.send_packet(b"short", b"", pair.now)
    assert pair.client.send_packet(H(AGENT_PUB), bytes(65536), pair.now)


def test_client_token_bucket() -> None:
    pair = DerpPair(server_info=ServerInfo(2, 1000, 200))
    pair.pump()
    assert pair.client_events[0] == Connected(server_key().public, 1, 1000, 200)
    frame = 5 + 32 + 63  # 100 bytes on the wire
    assert pair.client.send_packet(H(AGENT_PUB), bytes(63), pair.now)
    assert pair.client.send_packet(H(AGENT_PUB), bytes(63), pair.now)
    assert not pair.client.send_packet(H(AGENT_PUB), bytes(63), pair.now)
    assert pair.client.drops["rate_limited"] == 1
    assert pair.client.send_packet(H(AGENT_PUB), bytes(63), pair.now + frame / 1000)


# ----- the server core against bad clients ------------------------------------------------


def server_core(**kw: object) -> DerpServerConnection:
    core = DerpServerConnection(server_key(), 0.0, **kw)  # type: ignore[arg-type]
    core.data_to_send()
    return core


def login_bytes(private: NodePrivate | None = None) -> bytes:
    return ClientInfoFrame.create(private or client_key(), server_key().public,
                                  ClientInfo()).emit()


def terminated(core: DerpServerConnection) -> ConnectionTerminated:
    events = []
    while (ev := core.next_event()) is not None:
        events.append(ev)
    assert isinstance(events[-1], ConnectionTerminated), events
    assert core.state is ServerConnState.CLOSED
    return events[-1]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (emit_frame(FrameType.SEND_PACKET, bytes(40)), "bad frame type 0x4, want 0x2"),
        (emit_frame(FrameType.CLIENT_INFO, bytes(55)), "short client info"),
        (emit_header(FrameType.CLIENT_INFO, (256 << 10) + 1), "long client info"),
        (emit_frame(FrameType.CLIENT_INFO, bytes(100)), "msgbox: cannot open len=68"),
    ],
)
def test_server_rejects_a_bad_login(data: bytes, reason: str) -> None:
    core = server_core()
    core.receive_data(data, 0.0)
    term = terminated(core)
    assert isinstance(term.error, DerpLoginError) and reason in term.reason
    assert core.data_to_send() == b""  # no ServerInfo, no error frame


def test_server_rejects_a_box_sealed_by_another_key() -> None:
    # The claimed key is the agent's, the box was sealed with the client's private key.
    frame = ClientInfoFrame.create(client_key(), server_key().public, ClientInfo())
    forged = ClientInfoFrame(agent_key().public, frame.box)
    core = server_core()
    core.receive_data(forged.emit(), 0.0)
    assert "msgbox: cannot open len=72 with client key nodekey:1f0403c2" in terminated(core).reason


def test_server_login_deadline() -> None:
    core = server_core()
    assert core.get_timer() == 10.0
    core.handle_timer(10.0)
    assert "no client info within 10.0 s" in str(terminated(core).error)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (emit_header(FrameType.SEND_PACKET, 32 + 65537), "data packet longer (65537) than max"),
        (emit_frame(FrameType.SEND_PACKET, bytes(31)), "short send packet frame"),
        (emit_frame(FrameType.NOTE_PREFERRED, b"\x01\x01"), "frameNotePreferred wrong size"),
        (emit_frame(FrameType.PING, bytes(7)), "short ping: 7"),
        (emit_header(FrameType.PING, 1001), "ping body too large: 1001"),
        (emit_frame(FrameType.FORWARD_PACKET, bytes(64)), "insufficient permissions"),
        (emit_frame(FrameType.WATCH_CONNS, b""), "insufficient permissions"),
        (emit_frame(FrameType.CLOSE_PEER, bytes(32)), "insufficient permissions"),
    ],
)
def test_server_closes_on_bad_frames(data: bytes, reason: str) -> None:
    core = server_core()
    core.receive_data(login_bytes() + data, 0.0)
    term = terminated(core)
    assert isinstance(term.error, DerpProtocolError) and reason in term.reason


def test_server_skips_unknown_frames_of_any_size_unbuffered() -> None:
    core = server_core()
    core.receive_data(login_bytes() + emit_header(0x7F, 50 << 20), 0.0)
    for _ in range(50 * 16):
        core.receive_data(bytes(65536), 0.0)
    core.receive_data(emit_frame(FrameType.NOTE_PREFERRED, b"\x01"), 0.0)
    assert core.state is ServerConnState.SERVING
    assert core.preferred and core.drops["unknown_frame"] == 1
    assert core._reader.buffered == 0


# ----- relay ------------------------------------------------------------------------------


def connect(relay: Relay, private: NodePrivate, **kw: object) -> DerpServerConnection:
    core = server_core(**kw)
    core.receive_data(login_bytes(private), 0.0)
    assert isinstance(core.next_event(), ClientAuthenticated)
    relay.register(core)
    core.data_to_send()  # ServerInfo
    return core


def test_relay_forwards_and_drops_unknown_destinations() -> None:
    relay = Relay()
    a, b = NodePrivate.generate(), NodePrivate.generate()
    ca, cb = connect(relay, a), connect(relay, b)
    assert relay.forward(ca, b.public, b"hi", 0.0) is cb
    assert cb.data_to_send() == emit_header(FrameType.RECV_PACKET, 34) + a.public + b"hi"
    nobody = NodePrivate.generate().public
    assert relay.forward(ca, nobody, b"wireguard", 0.0) is None
    assert relay.stats["dropped_unknown_dest"] == 1
    assert ca.data_to_send() == b""  # no PeerGone for non-disco packets


def test_relay_not_here_only_for_disco_and_rate_limited() -> None:
    relay = Relay()
    a = NodePrivate.generate()
    ca = connect(relay, a)
    nobody = NodePrivate.generate().public
    disco = seal_packet(DiscoPrivate.generate(), DiscoPrivate.generate().public,
                        DiscoPing(bytes(12)))
    for _ in range(5):
        relay.forward(ca, nobody, disco, 0.0)
    not_here = emit_frame(FrameType.PEER_GONE, bytes(nobody) + b"\x01")
    assert ca.data_to_send() == not_here * 3  # burst 3
    relay.forward(ca, nobody, disco, 1.0)  # one token a second
    assert ca.data_to_send() == not_here


def test_peer_gone_goes_to_the_receivers_of_the_departed_key() -> None:
    relay = Relay()
    a, b, c = (NodePrivate.generate() for _ in range(3))
    ca, cb, cc = connect(relay, a), connect(relay, b), connect(relay, c)
    relay.forward(ca, b.public, b"x", 0.0)  # a sent to b; nobody sent to c
    cb.data_to_send()
    woken = relay.unregister(ca)
    assert woken == [cb]
    assert cb.data_to_send() == emit_frame(FrameType.PEER_GONE, bytes(a.public) + b"\x00")
    assert cc.data_to_send() == b""
    assert relay.unregister(cb) == []  # b never sent to anyone


def test_peer_gone_skips_a_receiver_replaced_since() -> None:
    relay = Relay()
    a, b = NodePrivate.generate(), NodePrivate.generate()
    ca, cb1 = connect(relay, a), connect(relay, b)
    relay.forward(ca, b.public, b"x", 0.0)
    relay.unregister(cb1)
    cb2 = connect(relay, b)  # b reconnected: a newer connection number
    assert relay.unregister(ca) == []
    assert cb2.data_to_send() == b""


def test_duplicate_keys_last_writer_is_active() -> None:
    relay = Relay()
    a, b = NodePrivate.generate(), NodePrivate.generate()
    ca = connect(relay, a)
    cb1, cb2 = connect(relay, b), connect(relay, b)
    relay.forward(ca, b.public, b"1", 0.0)
    assert cb2.queued_packets == 1 and cb1.queued_packets == 0  # newest is active
    relay.note_activity(cb1)  # the old one speaks: it becomes active
    relay.forward(ca, b.public, b"2", 0.0)
    assert cb1.queued_packets == 1
    relay.unregister(cb1)  # back to the one that remains
    relay.forward(ca, b.public, b"3", 0.0)
    assert cb2.queued_packets == 2
    assert relay.is_connected(b.public)


def test_queue_is_bounded_with_head_drop() -> None:
    relay = Relay()
    a, b = NodePrivate.generate(), NodePrivate.generate()
    ca, cb = connect(relay, a), connect(relay, b, queue_depth=4)
    for i in range(10):
        relay.forward(ca, b.public, bytes([i]), 0.0)
    assert cb.queued_packets == 4 and cb.drops["queue_head"] == 6
    assert relay.stats["dropped_queue_head"] == 6
    out = cb.data_to_send()
    assert [out[i * 38 + 37] for i in range(4)] == [6, 7, 8, 9]  # the freshest survive
    # Disco has its own queue of the same depth, and goes first.
    disco = seal_packet(DiscoPrivate.generate(), DiscoPrivate.generate().public,
                        DiscoPing(bytes(12)))
    relay.forward(ca, b.public, b"wg", 0.0)
    relay.forward(ca, b.public, disco, 0.0)
    out = cb.data_to_send()
    assert out.index(disco) < out.index(b"wg")


def test_closing_drops_and_counts_queued_packets() -> None:
    relay = Relay()
    a, b = NodePrivate.generate(), NodePrivate.generate()
    ca, cb = connect(relay, a), connect(relay, b)
    relay.forward(ca, b.public, b"x", 0.0)
    cb.close()
    assert cb.drops["gone_disconnected"] == 1 and cb.data_to_send() == b""
    assert cb.enqueue_packet(a.public, b"late")


# ----- fuzz: network input never raises -----------------------------------------------------

_chunks = st.lists(st.binary(max_size=200), max_size=8)
_frames = st.lists(
    st.tuples(st.integers(0, 0x20), st.binary(max_size=120)).map(lambda t: emit_frame(*t)),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(_frames, _chunks)
def test_client_core_never_raises_on_input(frames: list[bytes], junk: list[bytes]) -> None:
    # Invariant: after login, any bytes yield events or a ConnectionTerminated; never an
    # exception, and nothing after the termination.
    pair = logged_in()
    for data in [*frames, *junk]:
        pair.client.receive_data(data, pair.now)
    events = []
    while (ev := pair.client.next_event()) is not None:
        events.append(ev)
    terms = [i for i, ev in enumerate(events) if isinstance(ev, ConnectionTerminated)]
    assert terms in ([], [len(events) - 1])


@settings(max_examples=150, deadline=None)
@given(st.booleans(), _frames, _chunks)
def test_server_core_never_raises_on_input(login: bool, frames: list[bytes],
                                           junk: list[bytes]) -> None:
    core = server_core()
    if login:
        core.receive_data(login_bytes(), 0.0)
    for data in [*frames, *junk]:
        core.receive_data(data, 0.0)
    events = []
    while (ev := core.next_event()) is not None:
        events.append(ev)
    terms = [i for i, ev in enumerate(events) if isinstance(ev, ConnectionTerminated)]
    assert terms in ([], [len(events) - 1])
    assert core._reader.buffered <= (256 << 10) + 5  # never more than one ClientInfo


def test_relay_drops_for_a_connection_closed_but_not_yet_unregistered() -> None:
    relay = Relay()
    a, b = NodePrivate.generate(), NodePrivate.generate()
    ca, cb = connect(relay, a), connect(relay, b)
    cb.close("write timeout")
    assert relay.forward(ca, b.public, b"x", 0.0) is None
    assert relay.stats["dropped_gone_disconnected"] == 1
