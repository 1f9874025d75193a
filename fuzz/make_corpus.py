"""Regenerate the seed corpus ``fuzz/corpus/TARGET/`` (small, real inputs; checked in).

``PYTHONPATH=src python fuzz/make_corpus.py``. Seeds come from the test vectors
(tests/vectors/wg_handshake.json) and from our own emitters (the same bytes the peer sends).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(proto: int, payload_fn) -> bytes:
    src, dst = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    payload = payload_fn(struct.pack("!4s4sBBH", src, dst, 0, proto, 0))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(proto: int, payload_fn) -> bytes:
    src = socket.inet_pton(socket.AF_INET6, "fd00::1")
    dst = socket.inet_pton(socket.AF_INET6, "fd00::2")
    payload = payload_fn(src + dst + struct.pack("!I3xB", 0, proto))
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, 64, src, dst) + payload


def tcp_syn(pseudo: bytes) -> bytes:
    opts = bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10]) + bytes(8) + bytes([1, 3, 3, 7])
    seg = struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, (5 + len(opts) // 4) << 4, 0x02,
                      65535, 0, 0) + opts
    ps = bytearray(pseudo)
    ps[-2:] = struct.pack("!H", len(seg)) if len(ps) == 12 else ps[-2:]
    if len(ps) == 40:
        ps[32:36] = struct.pack("!I", len(seg))
    c = csum(bytes(ps) + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp_dgram(pseudo: bytes) -> bytes:
    data = b"hello"
    d = struct.pack("!HHHH", 5000, 53, 8 + len(data), 0) + data
    ps = bytearray(pseudo)
    if len(ps) == 12:
        ps[-2:] = struct.pack("!H", len(d))
    else:
        ps[32:36] = struct.pack("!I", len(d))
    c = csum(bytes(ps) + d) or 0xFFFF
    return d[:6] + struct.pack("!H", c) + d[8:]


def icmp_echo(pseudo: bytes) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"ping"
    return body[:2] + struct.pack("!H", csum(body)) + body[4:]


def seeds() -> dict[str, list[bytes]]:
    from agentconn.coder import drpc, tailnet_pb
    from agentconn.coder.derp import frames as derp
    from agentconn.proto import rpty

    vec = json.load(open(os.path.join(ROOT, "tests/vectors/wg_handshake.json")))
    wg = [bytes.fromhex(vec[k]) if isinstance(vec[k], str) else bytes.fromhex(vec[k]["bytes"])
          for k in ("message1", "message2", "keepalive") if k in vec and _hexish(vec[k])]
    wg.append(struct.pack("<I", 4) + struct.pack("<IQ", 0x0B0B0B0B, 0) + bytes(16))
    wg.append(struct.pack("<I", 3) + bytes(60))
    pkts = [ipv4(6, tcp_syn), ipv6(6, tcp_syn), ipv4(17, udp_dgram), ipv6(17, udp_dgram),
            ipv4(1, icmp_echo)]
    http = [b"GET /api/v0/info HTTP/1.1\r\nHost: agent\r\nUser-Agent: fuzz\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"]
    from wsproto import ConnectionType
    from wsproto.connection import Connection
    from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
    c = Connection(ConnectionType.CLIENT)
    ws = [c.send(TextMessage("hello")) + c.send(BytesMessage(b"\x00\x01\x02")),
          c.send(Ping(b"p")) + c.send(TextMessage("frag", message_finished=False))
          + c.send(TextMessage("ment")) + c.send(CloseConnection(1000, "bye"))]
    body = (b'{"ID":"0b6a4b1e-3b8c-4f2e-9d7a-5b1c2d3e4f50","Height":24,"Width":80,'
            b'"Command":"bash","Container":"","ContainerUser":"","BackendType":""}')
    rp = [len(body).to_bytes(2, "little") + body, body,
          b'{"data":"ls\\n"}{"height":40,"width":120} null {"data":"\\u00e9"}']
    st = [b'{"version":1,"direction":"push","duration":5000000000}\n',
          b'{"Version":1,"Direction":"pull","Duration":1e9}',
          b'{"error":""}\n', b'{"error":"bad direction"}\n']
    key = bytes(range(32))
    dp = [derp.emit_frame(derp.FrameType.SERVER_KEY, b"DERP\xf0\x9f\x94\x91" + key),
          derp.emit_frame(derp.FrameType.RECV_PACKET, key + b"payload")
          + derp.emit_frame(derp.FrameType.KEEP_ALIVE)
          + derp.emit_frame(derp.FrameType.PING, b"12345678"),
          derp.emit_frame(derp.FrameType.PEER_GONE, key + b"\x01")
          + derp.emit_frame(derp.FrameType.SERVER_INFO, bytes(24) + b"{}")]
    ym = [struct.pack(">BBHII", 0, 1, 1, 1, 0),  # window update SYN stream 1
          struct.pack(">BBHII", 0, 0, 0, 2, 5) + b"hello" + struct.pack(">BBHII", 0, 2, 1, 0, 7),
          struct.pack(">BBHII", 0, 1, 2, 2, 0) + struct.pack(">BBHII", 0, 3, 0, 0, 0)]
    conn = drpc.Connection(drpc.Role.CLIENT)
    sid = conn.invoke("/coder.tailnet.v2.Tailnet/Coordinate", {"k": "v"})
    conn.send_message(sid, b"\x0a\x00")
    conn.close_send(sid)
    dr = [conn.data_to_send(),
          drpc.Frame(drpc.Kind.MESSAGE, 1, 1, b"\x12\x03abc").emit()
          + drpc.Frame(drpc.Kind.ERROR, 1, 2, drpc.marshal_error("boom", 3)).emit()
          + drpc.Frame(drpc.Kind.CLOSE, 1, 3).emit()]
    pb = [tailnet_pb.Timestamp(seconds=1700000000, nanos=5).encode(),
          tailnet_pb.CoordinateRequest().encode() + b"\x12\x02\x08\x01",
          b"\x0a\x10" + bytes(16) + b"\x12\x04\x08\x02\x10\x03"]
    return {
        "wg_messages": wg, "wg_datapath": wg, "net_wire": pkts, "tcpip_parse_segment": pkts,
        "http_server": http, "websocket_frames": ws, "rpty_frames": rp, "speedtest_config": st,
        "derp_frames": dp, "yamux_session": ym, "drpc_connection": dr, "tailnet_protobuf": pb,
    }


def _hexish(v) -> bool:
    return isinstance(v, str) or (isinstance(v, dict) and "bytes" in v)


def main() -> None:
    for name, items in seeds().items():
        d = os.path.join(HERE, "corpus", name)
        os.makedirs(d, exist_ok=True)
        for item in items:
            with open(os.path.join(d, hashlib.sha1(item).hexdigest()[:16]), "wb") as f:
                f.write(item)


if __name__ == "__main__":
    main()
