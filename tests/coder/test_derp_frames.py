"""DERP wire format: byte-exact vectors (Go tests and the spec's computed §8.3 vectors) and
parse/emit laws (coder-control-plane.md §5.3, §5.4)."""
from __future__ import annotations

import pytest
from derp_pair import (
    AGENT_PUB,
    SERVER_PUB,
    TEST_NODE_PUB,
    client_key,
    server_key,
)
from hypothesis import given
from hypothesis import strategies as st

from agentconn.coder.derp.errors import DerpProtocolError
from agentconn.coder.derp.frames import (
    MAGIC,
    ClientInfo,
    ClientInfoFrame,
    FrameReader,
    FrameType,
    HealthFrame,
    KeepAliveFrame,
    NotePreferredFrame,
    PeerGoneFrame,
    PeerGoneReason,
    PeerPresentFrame,
    PingFrame,
    PongFrame,
    RecvPacketFrame,
    RestartingFrame,
    SendPacketFrame,
    ServerInfo,
    ServerInfoFrame,
    ServerKeyFrame,
    emit_frame,
)
from agentconn.coder.keys import NodePublic

H = bytes.fromhex
WG_PREFIX = H("0100000011223344")  # the first 8 bytes of a WireGuard initiation (§8.3)


def test_magic() -> None:
    # derp/derp.go: magic = "DERP🔑" = 44 45 52 50 f0 9f 94 91
    assert MAGIC == H("44455250f09f9491")


def test_server_key_frame_vector() -> None:
    # §8.3 computed: ServerKey = 01 00000028 magic ‖ server public key
    want = H("0100000028" "44455250f09f9491" + SERVER_PUB)
    frame = ServerKeyFrame(server_key().public)
    assert frame.emit() == want
    assert ServerKeyFrame.parse(want[5:]) == frame
    # recvServerKey accepts (and ignores) extra future bytes after the key.
    assert ServerKeyFrame.parse(want[5:] + b"future").server_key == frame.server_key
    for bad in (want[5:-1], b"X" + want[6:]):
        with pytest.raises(DerpProtocolError, match="invalid server greeting"):
            ServerKeyFrame.parse(bad)


def test_client_info_vector() -> None:
    # §8.3 computed: ClientInfo of {"version":2,"CanAckPings":true}, nonce 00 01 … 17.
    assert ClientInfo().to_json() == b'{"version":2,"CanAckPings":true}'
    nonce = bytes(range(24))
    frame = ClientInfoFrame.create(client_key(), server_key().public, ClientInfo(), nonce=nonce)
    want = H(
        "0200000068" + TEST_NODE_PUB.removeprefix("nodekey:")
        + "000102030405060708090a0b0c0d0e0f1011121314151617"
        + "6c77511c27ce3a8fc07350e769b0b22fe94d787a450da5e5ef27180546dfe129"
        + "ad13f15d8ad11ce8f8073e97d85a4bc5"
    )
    assert frame.emit() == want
    parsed = ClientInfoFrame.parse(want[5:])
    assert parsed == frame
    assert parsed.open(server_key()) == ClientInfo(version=2, can_ack_pings=True)


def test_server_info_vector() -> None:
    # §8.3 computed: ServerInfo of {"version":2}, nonce 64 65 … 7b.
    assert ServerInfo().to_json() == b'{"version":2}'
    nonce = bytes(range(0x64, 0x7C))
    frame = ServerInfoFrame.create(server_key(), client_key().public, ServerInfo(), nonce=nonce)
    want = H(
        "0300000035" "6465666768696a6b6c6d6e6f707172737475767778797a7b"
        "ef68bdaa3dedc5ad0c2fa2ce7f7e115a6ed1d6582802e4331db6c03ae2"
    )
    assert frame.emit() == want
    assert ServerInfoFrame.parse(want[5:]).open(client_key(), server_key().public) == ServerInfo()


def test_info_json_like_go() -> None:
    # Go omitempty: meshKey, version, IsProber, TokenBucket*; CanAckPings always.
    assert ClientInfo(can_ack_pings=False).to_json() == b'{"version":2,"CanAckPings":false}'
    assert ClientInfo(mesh_key="k", is_prober=True).to_json() == (
        b'{"meshKey":"k","version":2,"CanAckPings":true,"IsProber":true}'
    )
    assert ServerInfo(2, 100, 200).to_json() == (
        b'{"version":2,"TokenBucketBytesPerSecond":100,"TokenBucketBytesBurst":200}'
    )
    # encoding/json: unknown fields ignored, names case-insensitive, null is empty.
    assert ClientInfo.from_json(b'{"VERSION":2,"canackpings":true,"x":1}') == ClientInfo()
    assert ServerInfo.from_json(b"null") == ServerInfo(version=0)
    for bad in (b"[1]", b"{", b'{"version":"2"}'):
        with pytest.raises(DerpProtocolError):
            ClientInfo.from_json(bad)


def test_box_from_the_wrong_key_does_not_open() -> None:
    frame = ClientInfoFrame.create(client_key(), server_key().public, ClientInfo())
    forged = ClientInfoFrame(NodePublic(bytes.fromhex(AGENT_PUB)), frame.box)
    with pytest.raises(DerpProtocolError, match=r"msgbox: cannot open len=72 with client key"):
        forged.open(server_key())
    with pytest.raises(DerpProtocolError, match="failed to open naclbox"):
        ServerInfoFrame(b"\x00" * 40).open(client_key(), server_key().public)


def test_packet_frame_vectors() -> None:
    # §8.3 computed: SendPacket to the agent, RecvPacket from the client, and friends.
    agent = NodePublic(H(AGENT_PUB))
    client = NodePublic.parse(TEST_NODE_PUB)
    send = H("0400000028" + AGENT_PUB) + WG_PREFIX
    recv = H("0500000028" + client.hex()) + WG_PREFIX
    assert SendPacketFrame(agent, WG_PREFIX).emit() == send
    assert SendPacketFrame.parse(send[5:]) == SendPacketFrame(agent, WG_PREFIX)
    assert RecvPacketFrame(client, WG_PREFIX).emit() == recv
    assert RecvPacketFrame.parse(recv[5:]) == RecvPacketFrame(client, WG_PREFIX)
    assert KeepAliveFrame().emit() == H("0600000000")
    assert NotePreferredFrame(True).emit() == H("070000000101")
    assert NotePreferredFrame(False).emit() == H("070000000100")
    gone = H("0800000021" + AGENT_PUB + "01")
    assert PeerGoneFrame(agent, PeerGoneReason.NOT_HERE).emit() == gone
    assert PeerGoneFrame.parse(gone[5:]) == PeerGoneFrame(agent, PeerGoneReason.NOT_HERE)
    # Old servers send a key-only PeerGone: that means Disconnected.
    assert PeerGoneFrame.parse(bytes(agent)).reason == PeerGoneReason.DISCONNECTED


def test_ping_pong_health_restarting_vectors() -> None:
    # derp/derp_test.go TestClientRecv and TestClientSendPing.
    data = bytes(range(1, 9))
    assert PingFrame(data).emit() == H("12000000080102030405060708")
    assert PongFrame(data).emit() == H("13000000080102030405060708")
    assert HealthFrame("BAD").emit() == H("1400000003424144")
    assert HealthFrame.parse(b"") == HealthFrame("")
    restarting = H("15000000080000000100000002")
    assert RestartingFrame.parse(restarting[5:]) == RestartingFrame(1, 2)
    assert RestartingFrame(1, 2).emit() == restarting


def test_peer_present_layouts() -> None:
    # derp_client.go: key only (old), + IP/port, + flags.
    import ipaddress

    key = NodePublic(H(AGENT_PUB))
    assert PeerPresentFrame.parse(bytes(key)) == PeerPresentFrame(key)
    frame = PeerPresentFrame(key, (ipaddress.IPv4Address("1.2.3.4"), 567), 1)
    assert PeerPresentFrame.parse(frame.emit()[5:]) == frame


def test_send_packet_limits() -> None:
    # derp_server.go recvPacket: short frame, and at most MaxPacketSize after the key.
    with pytest.raises(DerpProtocolError, match="short send packet frame"):
        SendPacketFrame.parse(b"x" * 31)
    with pytest.raises(DerpProtocolError, match=r"data packet longer \(65537\) than max of 65536"):
        SendPacketFrame.parse(bytes(32 + 65537))
    assert len(SendPacketFrame.parse(bytes(32 + 65536)).data) == 65536


_frames = st.one_of(
    st.builds(lambda k, d: SendPacketFrame(NodePublic(k), d), st.binary(min_size=32, max_size=32),
              st.binary(max_size=200)),
    st.builds(lambda k, d: RecvPacketFrame(NodePublic(k), d), st.binary(min_size=32, max_size=32),
              st.binary(max_size=200)),
    st.builds(lambda k, r: PeerGoneFrame(NodePublic(k), PeerGoneReason(r)),
              st.binary(min_size=32, max_size=32), st.sampled_from([0, 1])),
    st.builds(PingFrame, st.binary(min_size=8, max_size=8)),
    st.builds(PongFrame, st.binary(min_size=8, max_size=8)),
    st.builds(NotePreferredFrame, st.booleans()),
    st.builds(HealthFrame, st.text(max_size=40)),
    st.builds(RestartingFrame, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)


@given(_frames)
def test_parse_emit_round_trip(frame: object) -> None:
    raw = frame.emit()  # type: ignore[attr-defined]
    reader = FrameReader()
    reader.feed(raw)
    ftype, length = reader.header()  # type: ignore[misc]
    assert length == len(raw) - 5
    payload = reader.payload()
    assert payload is not None and reader.buffered == 0
    assert type(frame).parse(payload) == frame  # type: ignore[attr-defined]
    assert FrameType(ftype)


@given(st.lists(st.binary(max_size=300), max_size=12), st.integers(1, 64))
def test_reader_whole_or_split_gives_the_same_frames(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(emit_frame(0x40 + (i % 3), p) for i, p in enumerate(payloads))

    def frames(step: int) -> list[tuple[int, bytes]]:
        reader = FrameReader()
        out = []
        for i in range(0, len(stream), step):
            reader.feed(stream[i:i + step])
            while (hdr := reader.header()) is not None:
                if hdr[0] == 0x41:  # discard one type as it arrives
                    reader.discard()
                    out.append((hdr[0], b""))
                    continue
                payload = reader.payload()
                if payload is None:
                    break
                out.append((hdr[0], payload))
        return out

    assert frames(len(stream) or 1) == frames(chunk)


def test_reader_discards_without_buffering() -> None:
    reader = FrameReader()
    reader.feed(emit_frame(0x7F, b"")[:5] .replace(b"\x00\x00\x00\x00", (10**7).to_bytes(4, "big")))
    assert reader.header() == (0x7F, 10**7)
    reader.discard()
    for _ in range(152):
        reader.feed(bytes(65536))
        assert reader.buffered == 0
    reader.feed(bytes(10**7 - 152 * 65536) + KeepAliveFrame().emit())
    assert reader.header() == (FrameType.KEEP_ALIVE, 0)
    assert reader.payload() == b""
