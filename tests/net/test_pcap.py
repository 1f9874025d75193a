"""The pcap writer's bytes: global header, record headers, exact lengths, snaplen, size bound."""
from __future__ import annotations

import io
import struct

import pytest

from agentconn.net.pcap import (
    GLOBAL_HEADER_LEN,
    LINKTYPE_RAW,
    MAGIC_NSEC,
    MAGIC_USEC,
    RECORD_HEADER_LEN,
    PcapWriter,
)

IPV4 = bytes.fromhex("4500001c000100004001f76d0a3700010a370002") + bytes(8)   # 28 bytes
IPV6 = bytes.fromhex("6000000000083a40") + bytes(32) + bytes(8)                   # 48 bytes


def test_global_header_exact_bytes() -> None:
    f = io.BytesIO()
    w = PcapWriter(f)
    assert f.getvalue() == (bytes.fromhex("d4c3b2a1") + b"\x02\x00\x04\x00" + bytes(8)
                            + b"\xff\xff\x00\x00" + b"\x65\x00\x00\x00")
    assert GLOBAL_HEADER_LEN == 24 and RECORD_HEADER_LEN == 16 and LINKTYPE_RAW == 101
    assert w.bytes_written == 24 and w.packets == 0


def test_nanosecond_magic_and_timestamp() -> None:
    f = io.BytesIO()
    w = PcapWriter(f, nanosecond=True)
    w.write(1700000000.123456789, IPV4)
    data = f.getvalue()
    assert struct.unpack_from("<I", data)[0] == MAGIC_NSEC
    sec, frac, incl, orig = struct.unpack_from("<IIII", data, 24)
    assert sec == 1700000000 and abs(frac - 123456789) < 1000 and incl == orig == len(IPV4)


def test_records_exact_bytes_and_lengths() -> None:
    f = io.BytesIO()
    w = PcapWriter(f)
    assert w.write(1700000000.25, IPV4)
    assert w.write_many(1700000001.9999996, [IPV6, b""]) == 2   # rounds up into the next second
    data = f.getvalue()
    assert len(data) == 24 + 16 + len(IPV4) + 16 + len(IPV6) + 16
    assert struct.unpack_from("<I", data)[0] == MAGIC_USEC
    off = 24
    assert data[off:off + 16] == struct.pack("<IIII", 1700000000, 250000, 28, 28)
    assert data[off + 16:off + 16 + 28] == IPV4
    off += 16 + 28
    assert data[off:off + 16] == struct.pack("<IIII", 1700000002, 0, 48, 48)
    assert data[off + 16:off + 16 + 48] == IPV6
    off += 16 + 48
    assert data[off:] == struct.pack("<IIII", 1700000002, 0, 0, 0)
    assert w.packets == 3 and w.dropped == 0 and w.bytes_written == len(data)


def test_snaplen_truncates_but_keeps_orig_len() -> None:
    f = io.BytesIO()
    w = PcapWriter(f, snaplen=20)
    w.write(1.0, IPV6)
    data = f.getvalue()
    assert struct.unpack_from("<I", data, 16)[0] == 20
    assert struct.unpack_from("<IIII", data, 24) == (1, 0, 20, 48)
    assert data[40:] == IPV6[:20] and len(data) == 24 + 16 + 20


def test_size_bound_stops_writing_and_counts() -> None:
    f = io.BytesIO()
    one = RECORD_HEADER_LEN + len(IPV4)
    w = PcapWriter(f, max_bytes=24 + 3 * one + one - 1)   # room for exactly three
    written = [w.write(float(i), IPV4) for i in range(5)]
    assert written == [True, True, True, False, False]
    # once full, even a packet that would fit is not written: the file has no gaps
    assert not w.write(9.0, b"")
    assert w.full and w.packets == 3 and w.dropped == 3
    assert len(f.getvalue()) == w.bytes_written == 24 + 3 * one
    assert w.stats() == {"packets": 3, "dropped": 3, "bytes": 24 + 3 * one, "full": True}


def test_bound_smaller_than_header_is_refused() -> None:
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), max_bytes=10)


def test_close_closes_file_and_later_packets_are_dropped() -> None:
    f = io.BytesIO()
    w = PcapWriter(f)
    w.close()
    w.close()
    assert f.closed
    assert not w.write(1.0, IPV4) and w.dropped == 1
