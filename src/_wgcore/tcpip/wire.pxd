# The TCP wire view (STYLE §4, §5): what a segment looks like in C, and nothing about state.
#
# Theory of operation
# -------------------
# Input: the bytes of one inner IP packet. `parse_ip` checks the IPv4/IPv6 header once (version,
# length, protocol, options, fragments, header checksum) and yields an `IpView`: family, the two
# addresses and the TCP segment, all pointing into the caller's buffer. `parse_tcp` checks the
# segment once (data offset, checksum over the pseudo-header, option list) and fills a `Segment`.
# Each returns PARSE_OK, PARSE_NOT_TCP (the packet is for the Python IP layer), or the drop reason
# (a D_* counter index). After PARSE_OK no field read can run past the buffer.
#
# Output: `write_ip_header`, `write_tcp_header` and `write_tcp_checksum` lay a segment out in a
# caller-owned slot, the checksum computed in the same pass.
#
# Invariants: nothing here allocates, holds the GIL or keeps a pointer beyond the call; a
# `Segment` borrows its payload from the packet it was parsed from. Sequence numbers compare on
# the 2**32 circle (RFC 9293 §3.4). `agentconn/net/wire/tcp.py` is the pure-Python reference
# this parser is property-tested against (tests/net/test_tcp_wire_c.py).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memset

from _wgcore.checksum cimport csum_partial, csum_fold
from _wgcore.octets cimport load_u16be, load_u32be, store_u16be, store_u32be

# RFC 9293 §3.1 control bits (ECE and CWR, RFC 3168, are masked off on receive).
cdef enum:
    F_FIN = 0x01
    F_SYN = 0x02
    F_RST = 0x04
    F_PSH = 0x08
    F_ACK = 0x10
    F_URG = 0x20

cdef enum:
    IPV4_HEADER = 20
    IPV6_HEADER = 40
    TCP_HEADER = 20
    PROTOCOL_TCP = 6               # IANA protocol number

# Option kinds (IANA "TCP Option Kind Numbers").
cdef enum:
    OPTION_EOL = 0                 # RFC 9293 §3.2
    OPTION_NOP = 1                 # RFC 9293 §3.2
    OPTION_MSS = 2                 # RFC 9293 §3.7.1
    OPTION_WINDOW_SCALE = 3        # RFC 7323 §2.2
    OPTION_SACK_PERMITTED = 4      # RFC 2018 §2
    OPTION_SACK = 5                # RFC 2018 §3
    OPTION_TIMESTAMPS = 8          # RFC 7323 §3.2
    MAX_WINDOW_SCALE = 14          # RFC 7323 §2.3

# Drop reasons: indices of the stack's drop counters (names: wire.DROP_NAMES). The parser
# returns the first seven; the demultiplexer and the connections count the rest.
cdef enum:
    D_IP_MALFORMED = 0
    D_IP_OPTIONS = 1
    D_IP_FRAGMENT = 2
    D_IP_CHECKSUM = 3
    D_NOT_LOCAL = 4
    D_TCP_MALFORMED = 5
    D_TCP_CHECKSUM = 6
    D_NO_SOCKET = 7
    D_OUT_OF_WINDOW = 8
    D_BAD_ACK = 9
    D_RST_IGNORED = 10
    D_SYN_BACKLOG = 11
    D_ACCEPT_QUEUE = 12
    D_OOO_OVERFLOW = 13
    D_PAWS = 14
    D_RCV_CLOSED = 15
    D_BUFFER_FULL = 16
    D_COUNT = 17

# Parser verdicts besides a drop reason.
cdef enum:
    PARSE_OK = -1
    PARSE_NOT_TCP = -2


cdef struct IpView:
    uint8_t family                 # 4 or 6
    const uint8_t* src
    const uint8_t* dst
    const uint8_t* tcp             # the TCP segment (header, options, payload)
    uint32_t tcp_len


cdef struct Segment:
    uint32_t seq
    uint32_t ack
    uint32_t wnd                   # raw 16-bit window field
    uint8_t flags
    const uint8_t* data
    uint32_t len                   # payload bytes
    uint16_t mss                   # 0: option absent
    int wscale                     # -1: option absent
    bint sack_ok
    bint has_ts
    uint32_t tsval
    uint32_t tsecr
    uint32_t nsack
    uint32_t sack[8]               # up to 4 (left, right) blocks


cdef struct ConnKey:
    uint8_t family                 # 4 or 6
    uint8_t pad
    uint16_t lport
    uint16_t rport
    uint16_t pad2
    uint8_t laddr[16]
    uint8_t raddr[16]


# -- sequence arithmetic (RFC 9293 §3.4) ----------------------------------------------------

cdef inline bint seq_lt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0

cdef inline bint seq_le(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) <= 0

cdef inline bint seq_gt(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) > 0

cdef inline bint seq_ge(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) >= 0

cdef inline uint32_t seq_max(uint32_t a, uint32_t b) noexcept nogil:
    return b if seq_lt(a, b) else a

cdef inline uint32_t seq_min(uint32_t a, uint32_t b) noexcept nogil:
    return a if seq_lt(a, b) else b

cdef inline uint32_t umin(uint32_t a, uint32_t b) noexcept nogil:
    return a if a < b else b

cdef inline uint32_t ts_clock(double now) noexcept nogil:
    # RFC 7323 §5.4: a 1 ms timestamp clock.
    return <uint32_t>(<uint64_t>(now * 1000.0))


cdef inline uint32_t key_hash(const ConnKey* k) noexcept nogil:
    # FNV-1a over the key bytes; enough for a table the network cannot choose sizes of.
    cdef const uint8_t* p = <const uint8_t*>k
    cdef uint32_t h = 2166136261u
    cdef size_t i
    for i in range(sizeof(ConnKey)):
        h = (h ^ p[i]) * 16777619u
    return h


# -- parse ------------------------------------------------------------------------------------

cdef inline int parse_ip(const uint8_t* p, uint32_t n, IpView* ip) noexcept nogil:
    """The IPv4/IPv6 header of a packet of `n` >= 1 bytes: PARSE_OK (and `ip` filled),
    PARSE_NOT_TCP, or a drop reason."""
    cdef uint8_t ihl, proto
    cdef uint32_t total
    if p[0] >> 4 == 4:
        if n < IPV4_HEADER:
            return D_IP_MALFORMED
        proto = p[9]
        if proto != PROTOCOL_TCP:
            return PARSE_NOT_TCP
        ihl = (p[0] & 0xf) * 4
        if ihl != IPV4_HEADER:
            return D_IP_OPTIONS if ihl > IPV4_HEADER else D_IP_MALFORMED
        total = load_u16be(p + 2)
        if total < IPV4_HEADER or total > n:
            return D_IP_MALFORMED
        if load_u16be(p + 6) & 0x3fff:          # MF or a fragment offset
            return D_IP_FRAGMENT
        if csum_fold(csum_partial(p, IPV4_HEADER, 0)) != 0:
            return D_IP_CHECKSUM
        ip.family = 4
        ip.src = p + 12
        ip.dst = p + 16
        ip.tcp = p + IPV4_HEADER
        ip.tcp_len = total - IPV4_HEADER
    elif p[0] >> 4 == 6:
        if n < IPV6_HEADER:
            return D_IP_MALFORMED
        proto = p[6]
        if proto != PROTOCOL_TCP:
            # extension headers before TCP are not supported; other protocols are Python's
            if proto == 0 or proto == 43 or proto == 44 or proto == 60:
                return D_IP_OPTIONS if proto != 44 else D_IP_FRAGMENT
            return PARSE_NOT_TCP
        total = load_u16be(p + 4)
        if IPV6_HEADER + total > n:
            return D_IP_MALFORMED
        ip.family = 6
        ip.src = p + 8
        ip.dst = p + 24
        ip.tcp = p + IPV6_HEADER
        ip.tcp_len = total
    else:
        return PARSE_NOT_TCP
    if ip.tcp_len < TCP_HEADER:
        return D_TCP_MALFORMED
    return PARSE_OK


cdef inline bint parse_options(Segment* s, const uint8_t* opt, uint32_t n) noexcept nogil:
    """RFC 9293 §3.2 option list: returns False for a malformed list. Unknown kinds, and known
    kinds of an unexpected length, are skipped by their length ("MUST ignore without error any
    TCP option it does not implement")."""
    cdef uint32_t i = 0, kind, length, k
    while i < n:
        kind = opt[i]
        if kind == OPTION_EOL:
            return True
        if kind == OPTION_NOP:
            i += 1
            continue
        if i + 1 >= n:
            return False
        length = opt[i + 1]
        if length < 2 or i + length > n:
            return False
        if kind == OPTION_MSS and length == 4:
            s.mss = load_u16be(opt + i + 2)
        elif kind == OPTION_WINDOW_SCALE and length == 3:    # RFC 7323 §2.3: shift capped at 14
            s.wscale = opt[i + 2] if opt[i + 2] <= MAX_WINDOW_SCALE else MAX_WINDOW_SCALE
        elif kind == OPTION_SACK_PERMITTED and length == 2:
            s.sack_ok = True
        elif kind == OPTION_SACK and (length - 2) % 8 == 0:
            k = 0
            while k < (length - 2) // 8 and s.nsack < 4:
                s.sack[2 * s.nsack] = load_u32be(opt + i + 2 + 8 * k)
                s.sack[2 * s.nsack + 1] = load_u32be(opt + i + 6 + 8 * k)
                s.nsack += 1
                k += 1
        elif kind == OPTION_TIMESTAMPS and length == 10:
            s.has_ts = True
            s.tsval = load_u32be(opt + i + 2)
            s.tsecr = load_u32be(opt + i + 6)
        i += length
    return True


cdef inline int parse_tcp(const IpView* ip, Segment* s) noexcept nogil:
    """The TCP segment of a parsed IP packet: PARSE_OK (and `s` filled) or a drop reason."""
    cdef const uint8_t* t = ip.tcp
    cdef uint32_t tlen = ip.tcp_len
    cdef uint32_t doff = (t[12] >> 4) * 4
    cdef uint32_t alen = 4 if ip.family == 4 else 16
    cdef uint32_t sum_
    if doff < TCP_HEADER or doff > tlen:
        return D_TCP_MALFORMED
    # TCP checksum over the pseudo-header (RFC 9293 §3.1; RFC 8200 §8.1).
    sum_ = csum_partial(ip.src, alen, 0)
    sum_ = csum_partial(ip.dst, alen, sum_)
    sum_ += tlen + PROTOCOL_TCP
    sum_ = csum_partial(t, tlen, sum_)
    if csum_fold(sum_) != 0:
        return D_TCP_CHECKSUM
    memset(s, 0, sizeof(Segment))
    s.wscale = -1
    s.seq = load_u32be(t + 4)
    s.ack = load_u32be(t + 8)
    s.flags = t[13] & 0x3f
    s.wnd = load_u16be(t + 14)
    s.data = t + doff
    s.len = tlen - doff
    if doff > TCP_HEADER and not parse_options(s, t + TCP_HEADER, doff - TCP_HEADER):
        return D_TCP_MALFORMED
    return PARSE_OK


# -- emit -------------------------------------------------------------------------------------

cdef inline void write_ip_header(uint8_t* p, const ConnKey* key, uint32_t tcp_len,
                                 uint16_t ip_id) noexcept nogil:
    """IPv4 (DF, TTL 64, header checksum) or IPv6 (hop limit 64) header from `key`'s local
    address to its remote one, for a TCP segment of `tcp_len` bytes."""
    if key.family == 4:
        p[0] = 0x45
        p[1] = 0
        store_u16be(p + 2, <uint16_t>(IPV4_HEADER + tcp_len))
        store_u16be(p + 4, ip_id)
        store_u16be(p + 6, 0x4000)          # DF
        p[8] = 64
        p[9] = PROTOCOL_TCP
        p[10] = 0
        p[11] = 0
        memcpy(p + 12, key.laddr, 4)
        memcpy(p + 16, key.raddr, 4)
        store_u16be(p + 10, csum_fold(csum_partial(p, IPV4_HEADER, 0)))
    else:
        p[0] = 0x60
        p[1] = 0
        p[2] = 0
        p[3] = 0
        store_u16be(p + 4, <uint16_t>tcp_len)
        p[6] = PROTOCOL_TCP
        p[7] = 64
        memcpy(p + 8, key.laddr, 16)
        memcpy(p + 24, key.raddr, 16)


cdef inline void write_tcp_header(uint8_t* t, const ConnKey* key, uint32_t seq, uint32_t ack,
                                  uint32_t header_len, uint8_t flags,
                                  uint16_t window) noexcept nogil:
    """The fixed 20 bytes of a TCP header (checksum and urgent pointer zero); `header_len`
    counts the options the caller writes behind it."""
    store_u16be(t, key.lport)
    store_u16be(t + 2, key.rport)
    store_u32be(t + 4, seq)
    store_u32be(t + 8, ack)
    t[12] = <uint8_t>((header_len // 4) << 4)
    t[13] = flags
    store_u16be(t + 14, window)
    t[16] = 0
    t[17] = 0
    t[18] = 0
    t[19] = 0


cdef inline void write_tcp_checksum(uint8_t* t, const ConnKey* key,
                                    uint32_t tcp_len) noexcept nogil:
    # RFC 9293 §3.1 / RFC 8200 §8.1: over the pseudo-header and the whole segment.
    cdef uint32_t alen = 4 if key.family == 4 else 16
    cdef uint32_t sum_ = csum_partial(key.laddr, alen, 0)
    sum_ = csum_partial(key.raddr, alen, sum_)
    sum_ += tcp_len + PROTOCOL_TCP
    sum_ = csum_partial(t, tcp_len, sum_)
    store_u16be(t + 16, csum_fold(sum_))
