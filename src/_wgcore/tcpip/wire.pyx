# cython: language_level=3
"""The TCP wire view in C: IP/TCP header checks, option parsing, header emit (see wire.pxd).

Theory of operation
-------------------
The parser and the emitters are ``cdef inline`` functions in ``wire.pxd``, compiled into the
demultiplexer (``stack``) and the connection (``conn``) that use them per packet; this module
holds only what Python needs: the names of the drop counters, and :func:`parse_segment`, which
runs the same two parse steps the stack runs on every packet (``parse_ip`` then ``parse_tcp``)
and returns their result as Python values. It exists for the property test that checks the C
parser against the pure-Python reference ``agentconn.net.wire.tcp`` (STYLE §4, §12 kind 2); the
data path never calls it.
"""
from libc.stdint cimport uint32_t

# Names of the D_* drop reasons of wire.pxd, in index order (TcpStack.counters()["drops"]).
DROP_NAMES = ("ip_malformed", "ip_options", "ip_fragment", "ip_checksum", "not_local",
              "tcp_malformed", "tcp_checksum", "no_socket", "out_of_window", "bad_ack",
              "rst_ignored", "syn_backlog", "accept_queue_full", "ooo_overflow", "paws",
              "receive_closed", "receive_buffer_full")


def parse_segment(const unsigned char[::1] packet not None):
    """Parse one IPv4/IPv6 packet carrying TCP as the stack does, without a connection.

    Returns None when the stack would not take the packet as a TCP segment (not TCP, or
    dropped: malformed IP or TCP header, IP options or fragment, bad checksum, malformed
    option list). Otherwise a dict of what ``parse_tcp`` extracted: ``family`` (4 or 6),
    ``src``/``dst`` (address bytes), ``src_port``/``dst_port``, ``seq``, ``ack`` (the field as
    sent, whatever the ACK flag), ``flags`` (the six RFC 9293 bits; ECE/CWR masked off),
    ``window`` (unscaled), ``mss`` (0 when absent), ``window_scale`` (-1 when absent, capped at
    14), ``sack_permitted``, ``sack_blocks`` (up to 4 ``(left, right)`` pairs), ``timestamps``
    (``(tsval, tsecr)`` or None) and ``payload`` (bytes).
    """
    cdef uint32_t n = packet.shape[0]
    cdef IpView ip
    cdef Segment s
    if n == 0 or parse_ip(&packet[0], n, &ip) != PARSE_OK or parse_tcp(&ip, &s) != PARSE_OK:
        return None
    cdef uint32_t alen = 4 if ip.family == 4 else 16
    return {
        "family": ip.family,
        "src": ip.src[:alen],
        "dst": ip.dst[:alen],
        "src_port": load_u16be(ip.tcp),
        "dst_port": load_u16be(ip.tcp + 2),
        "seq": s.seq,
        "ack": s.ack,
        "flags": s.flags,
        "window": s.wnd,
        "mss": s.mss,
        "window_scale": s.wscale,
        "sack_permitted": bool(s.sack_ok),
        "sack_blocks": tuple([(s.sack[2 * i], s.sack[2 * i + 1]) for i in range(s.nsack)]),
        "timestamps": (s.tsval, s.tsecr) if s.has_ts else None,
        "payload": s.data[:s.len],
    }
