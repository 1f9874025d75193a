"""Fuzz targets: one per parser that sees network bytes (issue 14 item 9).

Each target is a function ``(data: bytes) -> None`` whose docstring states its invariant. A
target catches exactly the exceptions its parser documents; anything else escaping (or an
assertion failing, or a crash/hang) is a finding. ``fuzz/run.py TARGET`` drives one target
under atheris (libFuzzer); ``tests/test_fuzz_targets.py`` runs every target for a few seconds
on its seed corpus ``fuzz/corpus/TARGET/``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Callable

from agentconn.coder import drpc, protobuf, tailnet_pb, yamux
from agentconn.coder.derp import frames as derp
from agentconn.coder.derp.errors import DerpProtocolError
from agentconn.coder.errors import ProtobufError, YamuxError
from agentconn.net.wire import WireError, icmp, ipv4, ipv6, tcp, tsmp, udp
from agentconn.proto import rpty, speedtest
from agentconn.proto.errors import ProtocolError
from agentconn.wg import messages
from agentconn.web.errors import ConnectionClosed

TARGETS: dict[str, Callable[[bytes], None]] = {}


def target(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
    TARGETS[fn.__name__] = fn
    return fn


# ----- WireGuard -------------------------------------------------------------------------------


@target
def wg_messages(data: bytes) -> None:
    """Each ``agentconn.wg.messages`` parser returns its message or raises MessageError, and
    nothing else; ``message_type`` returns an int or None."""
    kind = messages.message_type(data)
    assert kind is None or isinstance(kind, int)
    for cls in (messages.Initiation, messages.Response, messages.CookieReply,
                messages.TransportHeader):
        try:
            msg = cls.parse(data)
        except messages.MessageError:
            continue
        assert isinstance(msg, cls)


_DP = None


def _datapath():  # built once per process: a live session, B's receive side is fuzzed
    global _DP
    if _DP is None:
        from _wgcore.datapath import RESULT, Datapath, PeerSlot
        from _wgcore.keypair import Keypair
        k1, k2 = bytes(range(32)), bytes(range(32, 64))
        a, b = Datapath(1420), Datapath(1420)
        slot_a = PeerSlot(1)
        kp_b = Keypair(k2, k1, 0x0B0B0B0B, 0x0A0A0A0A, False, 500.0)
        b.add_keypair(kp_b, slot_a)
        slot_a.set_current(kp_b)
        addr = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51820)
                + socket.inet_aton("127.0.0.1") + bytes(8))
        slot_a.endpoint = addr
        b.set_routes([(socket.inet_aton("10.0.0.1"), 32, slot_a)])
        rx = {RESULT[n] for n in ("DATA", "KEEPALIVE", "HANDSHAKE")} | {
            v for n, v in RESULT.items() if n.startswith("DROP_")}
        _DP = (b, addr, rx)
    return _DP


@target
def wg_datapath(data: bytes) -> None:
    """``Datapath.decrypt`` of a batch holding one random datagram (up to 64 KiB) never raises,
    sets a receive result code, and never authenticates forged input (0 data packets)."""
    from _wgcore.datapath import PacketBatch
    dp, addr, rx = _datapath()
    batch = PacketBatch(1, 65536)
    batch.add_datagram(data[:65536], addr)
    n = dp.decrypt(batch, 500.0)
    assert n == 0, n
    assert batch.results()[0] in rx, batch.results()


# ----- IP / TCP / UDP / ICMP wire ----------------------------------------------------------------

_V4 = (ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2"))
_V6 = (ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2"))


@target
def net_wire(data: bytes) -> None:
    """``Ipv4Repr``/``Ipv6Repr``/``TcpRepr``/``UdpRepr``/``EchoRepr``.parse and ``tsmp.parse``
    return a Repr (and payload view) or raise WireError, and nothing else; the payload view
    lies within the input."""
    for cls in (ipv4.Ipv4Repr, ipv6.Ipv6Repr):
        try:
            repr_, payload = cls.parse(data)
        except WireError:
            continue
        assert len(payload) <= len(data)
        src, dst = repr_.src, repr_.dst
        for l4 in (tcp.TcpRepr, udp.UdpRepr):
            try:
                l4.parse(payload, src, dst)
            except WireError:
                pass
    for src, dst in (_V4, _V6):
        for l4 in (tcp.TcpRepr, udp.UdpRepr):
            for verify in (True, False):
                try:
                    _, payload = l4.parse(data, src, dst, verify_checksum=verify)
                except WireError:
                    continue
                assert len(payload) <= len(data)
        try:
            icmp.EchoRepr.parse(data, src, dst)
        except WireError:
            pass
    try:
        tsmp.parse(data)
    except WireError:
        pass


@target
def tcpip_parse_segment(data: bytes) -> None:
    """``_wgcore.tcpip.wire.parse_segment`` returns None or a dict whose payload is a part of
    the input; it never raises and never crashes."""
    from _wgcore.tcpip.wire import parse_segment
    seg = parse_segment(data)
    if seg is not None:
        assert seg["family"] in (4, 6)
        assert len(seg["payload"]) <= len(data)
        assert len(seg["sack_blocks"]) <= 4


# ----- HTTP server and websockets --------------------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default=None):
        return ("198.51.100.1", 4242) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0


class _Writer:
    """Stands in for asyncio.StreamWriter; collects what is written."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.out = bytearray()

    def write(self, data) -> None:
        self.out += data

    def writelines(self, items) -> None:
        for item in items:
            self.out += item

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.closing

    async def wait_closed(self) -> None:
        return None

    def get_extra_info(self, name: str, default=None):
        return self.transport.get_extra_info(name, default)


async def _echo(request):
    body = await request.body(max_size=1 << 16)
    return body


@target
def http_server(data: bytes) -> None:
    """``HttpServer.serve_connection`` over a stream fed ``data`` then EOF returns (it never
    raises: bad requests get a 4xx, errors are logged) within 5 s; a handler reading the body
    (capped at 64 KiB) answers well-formed requests."""
    from agentconn.web.server import HttpServer
    server = HttpServer(_echo, max_header_size=8192, header_timeout=1.0,
                        keep_alive_timeout=1.0, body_timeout=1.0, write_timeout=1.0)

    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        await asyncio.wait_for(server.serve_connection(reader, _Writer()), 5.0)

    _loop().run_until_complete(run())


@target
def websocket_frames(data: bytes) -> None:
    """``WebSocket.receive`` on an open server-side connection fed ``data`` then EOF returns
    messages (str or bytes) until it raises ConnectionClosed, and nothing else, within 5 s."""
    from wsproto import ConnectionType
    from wsproto.connection import Connection

    from agentconn.web.websocket import WebSocket

    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        ws = WebSocket(reader, _Writer(), Connection(ConnectionType.SERVER),
                       max_message_size=1 << 16, close_timeout=0.5)
        for _ in range(10000):
            try:
                msg = await ws.receive()
            except ConnectionClosed:
                return
            assert isinstance(msg, (str, bytes))
        raise AssertionError("no end of stream")

    _loop().run_until_complete(asyncio.wait_for(run(), 5.0))


# ----- agent protocols ---------------------------------------------------------------------------


@target
def rpty_frames(data: bytes) -> None:
    """``ReconnectingPtyInit.parse_length``/``parse`` and ``RequestDecoder`` return values or
    raise ProtocolError, and nothing else; once the decoder failed it keeps raising."""
    try:
        rpty.ReconnectingPtyInit.parse_length(data[:2])
    except ProtocolError:
        pass
    try:
        init = rpty.ReconnectingPtyInit.parse(data)
        assert isinstance(init, rpty.ReconnectingPtyInit)
    except ProtocolError:
        pass
    dec = rpty.RequestDecoder(max_size=4096)
    try:
        for i in range(0, len(data), 7):  # arbitrary chunking
            dec.receive_data(data[i:i + 7])
            while (req := dec.next_request()) is not None:
                assert isinstance(req, rpty.ReconnectingPtyRequest)
    except ProtocolError:
        try:
            dec.next_request()
        except ProtocolError:
            return
        raise AssertionError("decoder usable after an error")


@target
def speedtest_config(data: bytes) -> None:
    """``parse_config_prefix`` returns (config, consumed ≤ len) or None (not at EOF) or raises
    SpeedtestConfigError; ``parse_response`` returns str/None or raises SpeedtestError."""
    for eof in (False, True):
        try:
            res = speedtest.parse_config_prefix(data, eof)
        except speedtest.SpeedtestConfigError:
            continue
        if res is None:
            assert not eof
        else:
            assert isinstance(res[0], speedtest.SpeedtestConfig) and 0 < res[1] <= len(data)
    try:
        out = speedtest.parse_response(data)
        assert out is None or isinstance(out, str)
    except speedtest.SpeedtestError:
        pass


# ----- Coder control plane -------------------------------------------------------------------------

_DERP_PARSERS = {
    derp.FrameType.SERVER_KEY: derp.ServerKeyFrame,
    derp.FrameType.CLIENT_INFO: derp.ClientInfoFrame,
    derp.FrameType.SERVER_INFO: derp.ServerInfoFrame,
    derp.FrameType.SEND_PACKET: derp.SendPacketFrame,
    derp.FrameType.RECV_PACKET: derp.RecvPacketFrame,
    derp.FrameType.NOTE_PREFERRED: derp.NotePreferredFrame,
    derp.FrameType.PEER_GONE: derp.PeerGoneFrame,
    derp.FrameType.PEER_PRESENT: derp.PeerPresentFrame,
    derp.FrameType.PING: derp.PingFrame,
    derp.FrameType.PONG: derp.PongFrame,
    derp.FrameType.HEALTH: derp.HealthFrame,
    derp.FrameType.RESTARTING: derp.RestartingFrame,
}


@target
def derp_frames(data: bytes) -> None:
    """``FrameReader`` cuts any byte stream into (type, length) frames without losing or
    inventing bytes; each known frame's ``parse`` returns its frame or raises
    DerpProtocolError; payloads above 64 KiB are discarded, not buffered."""
    reader = derp.FrameReader()
    for i in range(0, len(data), 13):
        reader.feed(data[i:i + 13])
        while (hdr := reader.header()) is not None:
            ftype, length = hdr
            if length > 65536 or ftype not in _DERP_PARSERS:
                reader.discard()
                continue
            payload = reader.payload()
            if payload is None:
                break
            assert len(payload) == length
            try:
                _DERP_PARSERS[ftype].parse(payload)
            except DerpProtocolError:
                pass
    assert reader.bytes_received == len(data)
    assert reader.buffered <= len(data)


@target
def yamux_session(data: bytes) -> None:
    """``Session.receive_data`` never raises for bad input (it ends the session with a
    ConnectionTerminated event); ``Header.parse`` returns a Header or raises YamuxError."""
    try:
        yamux.Header.parse(data)
    except YamuxError:
        pass
    for role in (yamux.Role.CLIENT, yamux.Role.SERVER):
        s = yamux.Session(role)
        for i in range(0, len(data), 17):
            s.receive_data(data[i:i + 17])
        s.receive_data(b"")
        while s.next_event() is not None:
            pass
        s.data_to_send()


@target
def drpc_connection(data: bytes) -> None:
    """``drpc.Connection.receive_data`` never raises (broken input ends the connection with an
    event); ``decode_metadata``/``unmarshal_error`` return or raise DrpcProtocolError/ProtobufError."""
    from agentconn.coder.errors import DrpcError
    for role in (drpc.Role.CLIENT, drpc.Role.SERVER):
        conn = drpc.Connection(role, max_buffer_size=1 << 16)
        conn.receive_data(data)
        while conn.next_event() is not None:
            pass
        conn.data_to_send()
    for fn in (drpc.decode_metadata, drpc.unmarshal_error):
        try:
            fn(data)
        except (DrpcError, ProtobufError):
            pass


_PB = [v for v in vars(tailnet_pb).values()
       if isinstance(v, type) and issubclass(v, protobuf.Message) and v is not protobuf.Message]


@target
def tailnet_protobuf(data: bytes) -> None:
    """``Message.decode`` of every tailnet_pb message returns an instance or raises
    ProtobufError, and nothing else; a decoded message re-encodes."""
    for cls in _PB:
        try:
            msg = cls.decode(data)
        except ProtobufError:
            continue
        assert isinstance(msg, cls)
        msg.encode()
