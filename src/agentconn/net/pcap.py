"""Packet capture files (libpcap format), sans-IO: inner IP packets to a binary file object.

The format (https://www.tcpdump.org/manpages/pcap-savefile.5.html), as ``tcpdump -w`` writes
it and ``tcpdump -r``, Wireshark and scapy read it:

* a 24-byte global header: magic ``0xa1b2c3d4`` (microsecond timestamps; ``0xa1b23c4d`` for
  nanoseconds) in our byte order (little-endian), version 2.4, thiszone 0, sigfigs 0, snaplen,
  link type 101 (``LINKTYPE_RAW``: each packet starts with its IPv4 or IPv6 header, the
  type told by the version nibble — what a WireGuard interface carries);
* per packet a 16-byte record header (ts_sec, ts_usec or ts_nsec, incl_len, orig_len) and
  the first ``incl_len`` = min(orig_len, snaplen) bytes of the packet.

:class:`PcapWriter` takes the file object and the wall-clock time of each packet from its
caller (STYLE §3: no clock, no open). Its size bound counts the header too: once a packet
would take the file past ``max_bytes``, it and every later packet are counted in
:attr:`~PcapWriter.dropped` instead of being written, so the file always ends on a whole
record and its beginning is kept (the handshake of what went wrong is usually the part that
matters).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

__all__ = ["GLOBAL_HEADER_LEN", "LINKTYPE_RAW", "MAGIC_NSEC", "MAGIC_USEC", "RECORD_HEADER_LEN",
           "SNAPLEN", "PcapWriter"]

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
VERSION = (2, 4)
SNAPLEN = 65535
LINKTYPE_RAW = 101
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
GLOBAL_HEADER_LEN = _GLOBAL.size   # 24
RECORD_HEADER_LEN = _RECORD.size   # 16


class PcapWriter:
    """Writes a pcap file of raw IP packets to ``file`` (opened for binary writing).

    The global header is written at once. ``max_bytes`` (None: unbounded) bounds the file's
    size, header included; ``nanosecond`` selects nanosecond timestamps. The writer never
    closes or flushes ``file`` on its own except in :meth:`close`.
    """

    def __init__(self, file: BinaryIO, *, max_bytes: int | None = None, snaplen: int = SNAPLEN,
                 nanosecond: bool = False) -> None:
        if not 1 <= snaplen <= 0x3FFFFFFF:
            raise ValueError(f"snaplen {snaplen} out of range")
        if max_bytes is not None and max_bytes < GLOBAL_HEADER_LEN:
            raise ValueError(f"max_bytes {max_bytes} is smaller than the {GLOBAL_HEADER_LEN}-byte "
                             "file header")
        self.file = file
        self.max_bytes = max_bytes
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        #: packets written, packets not written because of the size bound, bytes written
        self.packets = 0
        self.dropped = 0
        self.bytes_written = 0
        #: True once the size bound was reached (nothing more is written)
        self.full = False
        self.closed = False
        header = _GLOBAL.pack(MAGIC_NSEC if nanosecond else MAGIC_USEC, *VERSION, 0, 0, snaplen,
                              LINKTYPE_RAW)
        file.write(header)
        self.bytes_written = len(header)

    def write(self, wall: float, packet: bytes | bytearray | memoryview) -> bool:
        """Append one packet seen at Unix time ``wall``. False if it was dropped (bound
        reached or writer closed)."""
        if self.full or self.closed:
            self.dropped += 1
            return False
        orig = len(packet)
        incl = min(orig, self.snaplen)
        size = RECORD_HEADER_LEN + incl
        if self.max_bytes is not None and self.bytes_written + size > self.max_bytes:
            self.full = True
            self.dropped += 1
            return False
        sec, frac = divmod(round(wall * self._scale), self._scale)
        file = self.file
        file.write(_RECORD.pack(sec & 0xFFFFFFFF, frac, incl, orig))
        file.write(packet if incl == orig else memoryview(packet)[:incl])
        self.bytes_written += size
        self.packets += 1
        return True

    def write_many(self, wall: float, packets: Iterable[bytes | bytearray | memoryview]) -> int:
        """Append packets that share one timestamp; the number written."""
        n = 0
        for packet in packets:
            n += self.write(wall, packet)
        return n

    def flush(self) -> None:
        """Flush the file object (so a reader sees every record written so far)."""
        if not self.closed:
            self.file.flush()

    def close(self) -> None:
        """Flush and close the file. Idempotent; later packets count as dropped."""
        if self.closed:
            return
        self.closed = True
        self.file.close()

    def stats(self) -> dict[str, int | bool]:
        """packets, dropped, bytes (the file size), full."""
        return {"packets": self.packets, "dropped": self.dropped, "bytes": self.bytes_written,
                "full": self.full}
