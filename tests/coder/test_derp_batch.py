"""Batched DERP data path: ``FrameReader.packets`` (a run of SendPacket/RecvPacket frames in
one pass), the client and server cores' fast paths built on it, ``DerpClient.send_packets`` /
``DerpPool.send_batch`` and the pool's packet sink (coder-control-plane.md §5.3, §5.6).

The fast paths must give exactly what the frame-at-a-time path gives, for any split of the
input: same events in the same order, same drops, same termination."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from derp_pair import DerpPair
from hypothesis import given, settings
from hypothesis import strategies as st

from agentconn.coder.derp import (
    DerpClient,
    DerpPool,
    DerpServer,
    PacketReceived,
)
from agentconn.coder.derp.clientconn import ClientState
from agentconn.coder.derp.events import ConnectionTerminated
from agentconn.coder.derp.frames import (
    CLIENT_MAX_FRAME_LEN,
    FrameReader,
    FrameType,
    emit_frame,
)
from agentconn.coder.derp.serverconn import DerpServerConnection, ServerConnState
from agentconn.coder.keys import NodePrivate, NodePublic

TIMEOUT = 10.0
KEYS = [bytes([i]) * 32 for i in range(1, 4)]

# Frames as (type, payload): packets of the type under test (long enough or short), other
# types, and bounds the fast path must leave to the general path.
_frame = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.binary(max_size=80)).map(
        lambda t: (int(FrameType.RECV_PACKET), t[0] + t[1])),
    st.tuples(st.just(int(FrameType.RECV_PACKET)), st.binary(max_size=31)),
    st.tuples(st.sampled_from([int(FrameType.KEEP_ALIVE), 0x7E, int(FrameType.SEND_PACKET)]),
              st.binary(max_size=40)),
)


def _reference(stream: bytes, step: int) -> list[tuple[int, bytes]]:
    reader, out = FrameReader(), []
    for i in range(0, len(stream), step):
        reader.feed(stream[i:i + step])
        while (hdr := reader.header()) is not None:
            payload = reader.payload()
            if payload is None:
                break
            out.append((hdr[0], payload))
    return out


def _batched(chunks: list[bytes], max_len: int = 200) -> list[tuple[int, bytes]]:
    reader, out = FrameReader(), []
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            for key, data in reader.packets(FrameType.RECV_PACKET, max_len):
                assert len(key) == 32
                out.append((int(FrameType.RECV_PACKET), key + data))
            hdr = reader.header()
            if hdr is None:
                break
            payload = reader.payload()
            if payload is None:
                break
            out.append((hdr[0], payload))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(_frame, max_size=10))
def test_packets_split_at_every_byte_boundary(frames: list[tuple[int, bytes]]) -> None:
    stream = b"".join(emit_frame(t, p) for t, p in frames)
    want = [(t, p) for t, p in frames]
    assert _reference(stream, len(stream) or 1) == want
    assert _batched([stream]) == want
    for cut in range(len(stream) + 1):
        assert _batched([stream[:cut], stream[cut:]]) == want


@settings(max_examples=60, deadline=None)
@given(st.lists(_frame, max_size=10), st.integers(1, 17))
def test_packets_in_small_chunks(frames: list[tuple[int, bytes]], step: int) -> None:
    stream = b"".join(emit_frame(t, p) for t, p in frames)
    chunks = [stream[i:i + step] for i in range(0, len(stream), step)]
    assert _batched(chunks) == frames


def test_packets_leaves_oversize_and_skipped_frames_to_the_general_path() -> None:
    reader = FrameReader()
    big = emit_frame(FrameType.RECV_PACKET, KEYS[0] + bytes(100))
    reader.feed(emit_frame(FrameType.RECV_PACKET, KEYS[0] + b"a") + big)
    assert reader.packets(FrameType.RECV_PACKET, 64) == [(KEYS[0], b"a")]
    assert reader.header() == (FrameType.RECV_PACKET, 132)
    assert reader.packets(FrameType.RECV_PACKET, 64) == []
    reader.discard()
    assert reader.buffered == 0
    # While a discard is still skipping bytes, nothing is parsed.
    reader.feed(emit_frame(0x7E, bytes(50))[:10])
    reader.discard()
    reader.feed(bytes(45) + emit_frame(FrameType.RECV_PACKET, KEYS[1]))
    assert reader.packets(FrameType.RECV_PACKET, 64) == [(KEYS[1], b"")]


def _client_events(pair: DerpPair, chunks: list[bytes]) -> tuple[list[object], dict[str, int]]:
    for chunk in chunks:
        if chunk:  # b"" would be EOF
            pair.client.receive_data(chunk, pair.now)
    events = []
    while (ev := pair.client.next_event()) is not None:
        events.append(ev)
    return events, dict(pair.client.drops)


@settings(max_examples=25, deadline=None)
@given(st.lists(_frame, min_size=1, max_size=6))
def test_client_core_same_events_for_any_split(frames: list[tuple[int, bytes]]) -> None:
    stream = b"".join(emit_frame(t, p) for t, p in frames)
    expected = []
    for t, p in frames:
        if t == FrameType.RECV_PACKET and len(p) >= 32:
            expected.append(PacketReceived(NodePublic(p[:32]), p[32:]))
    whole = None
    for cut in range(len(stream) + 1):
        pair = DerpPair()
        pair.pump()
        assert pair.client.state is ClientState.CONNECTED
        got = _client_events(pair, [stream[:cut], stream[cut:]])
        packets = [ev for ev in got[0] if isinstance(ev, PacketReceived)]
        assert packets == expected
        assert pair.client.packets_received == len(expected)
        if whole is None:
            whole = got
        assert got == whole


def test_client_core_counts_short_packets_between_good_ones() -> None:
    pair = DerpPair()
    pair.pump()
    stream = (emit_frame(FrameType.RECV_PACKET, KEYS[0] + b"1")
              + emit_frame(FrameType.RECV_PACKET, b"short")
              + emit_frame(FrameType.RECV_PACKET, KEYS[1] + b"2"))
    events, drops = _client_events(pair, [stream])
    assert events == [PacketReceived(NodePublic(KEYS[0]), b"1"),
                      PacketReceived(NodePublic(KEYS[1]), b"2")]
    assert drops == {"short_recv_packet": 1}
    # Too large for a client ends the connection, even after a run of good packets.
    pair = DerpPair()
    pair.pump()
    huge = emit_frame(FrameType.RECV_PACKET, KEYS[0]).replace(
        (32).to_bytes(4, "big"), (CLIENT_MAX_FRAME_LEN + 1).to_bytes(4, "big"))
    events, _ = _client_events(pair, [emit_frame(FrameType.RECV_PACKET, KEYS[0] + b"x"), huge])
    assert events[0] == PacketReceived(NodePublic(KEYS[0]), b"x")
    assert isinstance(events[-1], ConnectionTerminated)
    assert pair.client.state is ClientState.CLOSED


def _server_serving() -> DerpServerConnection:
    pair = DerpPair()
    pair.pump()
    assert pair.server.state is ServerConnState.SERVING
    while pair.server.next_event() is not None:
        pass
    return pair.server


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.binary(max_size=60)), max_size=5))
def test_server_core_forwards_runs_for_any_split(packets: list[tuple[bytes, bytes]]) -> None:
    stream = b"".join(emit_frame(FrameType.SEND_PACKET, k + d) for k, d in packets)
    stream += emit_frame(FrameType.NOTE_PREFERRED, b"\x01")
    for cut in range(len(stream) + 1):
        core = _server_serving()
        before = core.frames_received
        for chunk in (stream[:cut], stream[cut:]):
            if chunk:  # b"" would be EOF
                core.receive_data(chunk, 0.0)
        events = []
        while (ev := core.next_event()) is not None:
            events.append(ev)
        got = [(bytes(ev.dst), ev.data) for ev in events if hasattr(ev, "dst")]
        assert got == packets
        assert core.frames_received - before == len(packets) + 1
        assert core.preferred is True and core.state is ServerConnState.SERVING


def test_server_core_still_rejects_a_short_send_packet_after_a_run() -> None:
    core = _server_serving()
    core.receive_data(emit_frame(FrameType.SEND_PACKET, KEYS[0] + b"ok")
                      + emit_frame(FrameType.SEND_PACKET, b"short"), 0.0)
    events = []
    while (ev := core.next_event()) is not None:
        events.append(ev)
    assert [(bytes(ev.dst), ev.data) for ev in events if hasattr(ev, "dst")] == [(KEYS[0], b"ok")]
    assert isinstance(events[-1], ConnectionTerminated)
    assert "short send packet frame" in events[-1].reason


# ----- the asyncio client: batched sends, packet sink ---------------------------------------

@pytest.fixture
async def server() -> AsyncIterator[DerpServer]:
    srv = DerpServer()
    await srv.start()
    yield srv
    await srv.close()


async def test_send_packets_and_packet_sink(server: DerpServer) -> None:
    a = DerpClient(NodePrivate.generate(), server.derp_map().regions[1])
    b = DerpClient(NodePrivate.generate(), server.derp_map().regions[1])
    got: list[PacketReceived] = []
    calls = []
    done = asyncio.Event()

    def sink(packets: list[PacketReceived]) -> None:
        calls.append(len(packets))
        got.extend(packets)
        if len(got) >= 200:
            done.set()

    b.packet_sink = sink
    await a.connect()
    await b.connect()
    try:
        datagrams = [i.to_bytes(2, "big") * 300 for i in range(200)]
        too_big = bytes(65 * 1024)
        assert await a.send_packets(b.public_key, [*datagrams[:100], too_big,
                                                   *datagrams[100:]]) == 200
        assert a.drops["too_big"] == 1
        async with asyncio.timeout(TIMEOUT):
            await done.wait()
        assert [p.data for p in got] == datagrams
        assert all(p.src == a.public_key for p in got)
        assert len(calls) < 200  # batched per read, not one call per packet
    finally:
        await a.close()
        await b.close()


async def test_pool_send_batch_and_sink(server: DerpServer) -> None:
    derp_map = server.derp_map()
    a = DerpPool(NodePrivate.generate(), derp_map)
    b = DerpPool(NodePrivate.generate(), derp_map)
    got: list[tuple[int, bytes]] = []
    done = asyncio.Event()

    def sink(region: int, packets: list[PacketReceived]) -> None:
        got.extend((region, p.data) for p in packets)
        if len(got) >= 50:
            done.set()

    b.packet_sink = sink
    await a.start()
    await b.start()
    try:
        datagrams = [bytes([i]) * 100 for i in range(50)]
        dst = bytes(b.private_key.public)
        assert await a.send_batch(1, dst, datagrams) == 50
        async with asyncio.timeout(TIMEOUT):
            await done.wait()
        assert got == [(1, d) for d in datagrams]
    finally:
        await a.close()
        await b.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=8))
def test_core_send_packets_is_send_packet_in_a_loop(datagrams: list[bytes]) -> None:
    one, many = DerpPair(), DerpPair()
    one.pump()
    many.pump()
    for data in datagrams:
        assert one.client.send_packet(KEYS[0], data, one.now)
    assert many.client.send_packets(KEYS[0], datagrams, many.now) == len(datagrams)
    assert one.client.data_to_send() == many.client.data_to_send()
    assert one.client.packets_sent == many.client.packets_sent == len(datagrams)
