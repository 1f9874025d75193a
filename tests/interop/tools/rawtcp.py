"""Hand-made IPv4/IPv6 TCP packets sent from inside a test namespace (`ip netns exec`, root).

usage: python rawtcp.py garbage  '<json spec>'
       python rawtcp.py synflood '<json spec>'

Packets go out of raw sockets (AF_INET/IPPROTO_RAW with IP_HDRINCL; AF_INET6/IPPROTO_RAW,
which on Linux implies a complete IPv6 header), so the kernel routes them like its own: to the
peer behind the WireGuard interface that owns the destination. Linux fills in the IPv4 total
length, header checksum and ID, and the IPv6 payload length; everything else is ours.

garbage spec: {"seed": int, "count": int, "src4": str, "dst4": str, "src6": str, "dst6": str,
               "ports": [int, ...],            # listening ports on dst to aim at (plus random)
               "conn": [sport, dport] | null,  # an established IPv4 connection seen from src:
                                               # only bad-checksum segments are aimed at it
               "batch": 32, "pause": 0.002}
  Every packet is one of these kinds (counted in the report):
    bad_checksum     well-formed segment (any flags, maybe payload), wrong TCP checksum
    short_header     fewer than 20 bytes of TCP
    bad_data_offset  data offset < 5 words, or beyond the segment; checksum correct
    bad_options      SYN with malformed options (zero/overrunning lengths, wrong sizes)
    random_valid     random flags/seq/ack/window/urgent/payload, checksum correct
    ipv4_options     IPv4 header with 4-40 bytes of random options, wrong TCP checksum
    ipv4_fragment    IPv4 fragment (MF set or non-zero offset)
    ipv6_ext         IPv6 extension header(s) before TCP, wrong TCP checksum
  The first three can only be dropped by a correct TCP; the others may be dropped or answered.

synflood spec: {"seed": int, "count": int, "src": str, "dst": str, "dport": int,
                "batch": 64, "pause": 0.001}
  SYNs with random source ports and ISNs and usual options (MSS, SACK-permitted, window
  scale, timestamps), correct checksums.

Prints one JSON line: {"sent": n, "kinds": {kind: n}, "enobufs_retries": n}.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: str, dst: str, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, socket.IPPROTO_TCP)


def tcp_segment(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = SYN,
    window: int = 65535,
    urgent: int = 0,
    options: bytes = b"",
    payload: bytes = b"",
    data_offset: int | None = None,
    bad_checksum: random.Random | None = None,
) -> bytes:
    """A TCP segment with a correct checksum (or, given a Random, a wrong one)."""
    if data_offset is None:
        options += b"\x01" * (-len(options) % 4)  # pad with NOPs
        data_offset = 5 + len(options) // 4
    header = struct.pack(
        "!HHIIBBHHH",
        sport,
        dport,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        (data_offset & 0xF) << 4,
        flags & 0xFF,
        window,
        0,
        urgent,
    )
    segment = header + options + payload
    good = checksum(pseudo_header(src, dst, len(segment)) + segment)
    value = good
    if bad_checksum is not None:
        # any other value, except the one's-complement twin of a zero (0x0000 vs 0xFFFF)
        while value == good or (value in (0, 0xFFFF) and good in (0, 0xFFFF)):
            value = bad_checksum.randrange(0x10000)
    return segment[:16] + struct.pack("!H", value) + segment[18:]


def ipv4_packet(
    src: str, dst: str, payload: bytes, *, options: bytes = b"", frag: int = 0x4000
) -> bytes:
    """IPv4 header (+ options) + payload; frag = flags << 13 | offset (default: DF)."""
    ihl = 5 + len(options) // 4
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            20 + len(options) + len(payload),  # Linux rewrites it anyway
            0,
            frag,
            64,
            socket.IPPROTO_TCP,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + options
        + payload
    )


def ipv6_packet(src: str, dst: str, payload: bytes, *, next_header: int = 6) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


class Sender:
    """Raw IPv4 and IPv6 sockets; paces batches and retries on ENOBUFS (a full queue)."""

    def __init__(self, batch: int, pause: float) -> None:
        self.v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.v4.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.batch, self.pause = batch, pause
        self.sent = 0
        self.enobufs_retries = 0

    def send(self, packet: bytes, dst: str) -> None:
        sock = self.v4 if ipaddress.ip_address(dst).version == 4 else self.v6
        while True:
            try:
                sock.sendto(packet, (dst, 0))
                break
            except OSError as e:
                if e.errno != 105:  # ENOBUFS
                    raise
                self.enobufs_retries += 1
                time.sleep(0.01)
        self.sent += 1
        if self.sent % self.batch == 0:
            time.sleep(self.pause)

    def close(self) -> None:
        self.v4.close()
        self.v6.close()


def _random_flags(rnd: random.Random) -> int:
    return rnd.choice([SYN, ACK, RST, RST | ACK, FIN | ACK, PSH | ACK, SYN | ACK, FIN, 0])


def _malformed_options(rnd: random.Random) -> bytes:
    return rnd.choice(
        [
            b"\x02\x00\x05\xb4",  # MSS with length 0
            b"\x02\x04\x05",  # MSS cut short by the end of the header
            b"\x02\x03\x05\xb4",  # MSS with length 3
            b"\x03\x03\xff",  # window scale 255
            b"\x03\x02",  # window scale with length 2
            b"\x08\x0a\x00\x00",  # timestamps running past the header
            b"\x08\x06\x00\x00\x00\x01",  # timestamps with length 6
            b"\x04\x03\x00",  # SACK-permitted with length 3
            b"\x05\x03\x00\x00",  # SACK with a partial block
            b"\xfe\x01",  # an unknown option with length 1
            b"\x02\xff" + bytes(38),  # length 255 in a 40-byte option space
            bytes([rnd.randrange(256) for _ in range(rnd.randrange(1, 41))]),
        ]
    )


def garbage(spec: dict[str, Any]) -> dict[str, Any]:
    rnd = random.Random(spec["seed"])
    sender = Sender(spec.get("batch", 32), spec.get("pause", 0.002))
    kinds: Counter[str] = Counter()
    ports = list(spec.get("ports", [])) or [rnd.randrange(1, 65536)]
    conn = spec.get("conn")
    choices = ["bad_checksum"] * 4 + [
        "short_header",
        "bad_data_offset",
        "bad_options",
        "random_valid",
        "ipv4_options",
        "ipv4_fragment",
        "ipv6_ext",
    ]
    try:
        for _ in range(spec["count"]):
            kind = rnd.choice(choices)
            v6 = kind == "ipv6_ext" or (not kind.startswith("ipv4") and rnd.random() < 0.5)
            src, dst = (spec["src6"], spec["dst6"]) if v6 else (spec["src4"], spec["dst4"])
            sport = rnd.randrange(1, 65536)
            dport = rnd.choice(ports) if rnd.random() < 0.6 else rnd.randrange(1, 65536)
            seq, ack = rnd.getrandbits(32), rnd.getrandbits(32)
            payload = rnd.randbytes(rnd.choice([0, 0, 1, 100, 1000]))
            if kind == "bad_checksum":
                if conn and not v6 and rnd.random() < 0.5:
                    sport, dport = conn  # at the live connection: must not disturb it
                seg = tcp_segment(
                    src,
                    dst,
                    sport,
                    dport,
                    seq=seq,
                    ack=ack,
                    flags=_random_flags(rnd),
                    payload=payload,
                    bad_checksum=rnd,
                )
            elif kind == "short_header":
                seg = rnd.randbytes(rnd.randrange(0, 20))
            elif kind == "bad_data_offset":
                if rnd.random() < 0.5:
                    offset = rnd.randrange(0, 5)
                else:
                    offset = rnd.randrange(6, 16)
                    payload = payload[: max(0, offset * 4 - 21)]  # the offset overruns
                seg = tcp_segment(
                    src,
                    dst,
                    sport,
                    dport,
                    seq=seq,
                    ack=ack,
                    flags=_random_flags(rnd),
                    payload=payload,
                    data_offset=offset,
                )
            elif kind == "bad_options":
                options = _malformed_options(rnd)[:40]
                options += b"\x00" * (-len(options) % 4)
                seg = tcp_segment(
                    src,
                    dst,
                    sport,
                    rnd.choice(ports),
                    seq=seq,
                    flags=SYN,
                    data_offset=5 + len(options) // 4,
                    options=options,
                )
            elif kind == "random_valid":
                seg = tcp_segment(
                    src,
                    dst,
                    sport,
                    dport,
                    seq=seq,
                    ack=ack,
                    flags=rnd.randrange(256),
                    window=rnd.randrange(65536),
                    urgent=rnd.randrange(65536),
                    payload=payload,
                )
            else:
                seg = tcp_segment(
                    src,
                    dst,
                    sport,
                    dport,
                    seq=seq,
                    ack=ack,
                    flags=_random_flags(rnd),
                    payload=payload,
                    bad_checksum=rnd,
                )
            if kind == "ipv4_options":
                options = rnd.randbytes(4 * rnd.randrange(1, 11))
                packet = ipv4_packet(src, dst, seg, options=options)
            elif kind == "ipv4_fragment":
                frag = rnd.choice(
                    [0x2000, 0x2000 | rnd.randrange(1, 0x2000), rnd.randrange(1, 0x2000)]
                )
                packet = ipv4_packet(src, dst, seg, frag=frag)
            elif kind == "ipv6_ext":
                # hop-by-hop (PadN) or destination options, then TCP
                ext = bytes([6, 0, 1, 4, 0, 0, 0, 0])
                packet = ipv6_packet(src, dst, ext + seg, next_header=rnd.choice([0, 60]))
            elif v6:
                packet = ipv6_packet(src, dst, seg)
            else:
                packet = ipv4_packet(src, dst, seg)
            sender.send(packet, dst)
            kinds[kind] += 1
    finally:
        sender.close()
    return {"sent": sender.sent, "kinds": dict(kinds), "enobufs_retries": sender.enobufs_retries}


def synflood(spec: dict[str, Any]) -> dict[str, Any]:
    rnd = random.Random(spec["seed"])
    sender = Sender(spec.get("batch", 64), spec.get("pause", 0.001))
    src, dst, dport = spec["src"], spec["dst"], spec["dport"]
    try:
        for _ in range(spec["count"]):
            options = (
                struct.pack("!BBH", 2, 4, 1240)  # MSS
                + b"\x04\x02"  # SACK permitted
                + struct.pack("!BBII", 8, 10, rnd.getrandbits(32), 0)  # timestamps
                + b"\x01\x03\x03\x07"  # NOP, window scale 7
            )
            seg = tcp_segment(
                src,
                dst,
                rnd.randrange(1024, 65536),
                dport,
                seq=rnd.getrandbits(32),
                flags=SYN,
                window=64240,
                options=options,
            )
            packet = ipv4_packet(src, dst, seg) if ":" not in dst else ipv6_packet(src, dst, seg)
            sender.send(packet, dst)
    finally:
        sender.close()
    return {
        "sent": sender.sent,
        "kinds": {"syn": sender.sent},
        "enobufs_retries": sender.enobufs_retries,
    }


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    result = {"garbage": garbage, "synflood": synflood}[mode](spec)
    print(json.dumps(result), flush=True)
