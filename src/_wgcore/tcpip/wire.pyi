from typing import Any

Buffer = bytes | bytearray | memoryview

# Names of the drop counters (TcpStack.counters()["drops"]), in counter-index order.
DROP_NAMES: tuple[str, ...]

def parse_segment(packet: Buffer) -> dict[str, Any] | None:
    """Parse an IPv4/IPv6 packet carrying TCP exactly as the stack's per-packet parser does.

    None when the stack would not take it as a TCP segment (not TCP, or dropped as malformed,
    fragmented, with IP options or a bad checksum). Otherwise a dict with ``family`` (4/6),
    ``src``/``dst`` (bytes), ``src_port``, ``dst_port``, ``seq``, ``ack`` (the field, whatever
    the ACK flag), ``flags`` (the six RFC 9293 bits), ``window`` (unscaled), ``mss`` (0:
    absent), ``window_scale`` (-1: absent), ``sack_permitted``, ``sack_blocks``
    (tuple of (left, right)), ``timestamps`` ((tsval, tsecr) or None) and ``payload`` (bytes).
    For tests; the data path never builds Python objects per packet.
    """
