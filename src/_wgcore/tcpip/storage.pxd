# A connection's byte storage (see storage.pyx for the theory of operation): the send ring, the
# receive ring, and sorted range sets used both as the out-of-order assembler and as the RFC 6675
# SACK scoreboard. Plain structs embedded in TcpConn; the functions are C-only.
from libc.stdint cimport uint8_t, uint32_t

cdef enum:
    OOO_RANGES = 256               # out-of-order ranges the assembler keeps (Linux: no limit)
    SACK_RANGES = 64               # SACKed ranges applied, retransmitted ranges of an episode


cdef struct Range:
    uint32_t start
    uint32_t end


cdef struct RangeSet:
    Range* r                       # sorted, disjoint, not touching; `cap` allocated
    int n
    int cap


cdef struct SendRing:
    # bytes [seq, seq + len) at data[(head + off) & (cap - 1)]; unacknowledged data stays here
    # until the peer acknowledges it, so retransmissions copy from the ring.
    uint8_t* data
    uint32_t cap                   # a power of two; grows up to max
    uint32_t head
    uint32_t len
    uint32_t seq                   # sequence number of data[head]
    uint32_t max                   # most bytes the application may buffer


cdef struct RecvRing:
    # bytes from read_seq on at data[(head + off) & (cap - 1)], in order or not: out-of-order
    # data is written at its final offset, so reassembly only moves rcv_nxt over ranges.
    uint8_t* data
    uint32_t cap                   # a power of two; grows up to max
    uint32_t head
    uint32_t read_seq              # next byte the application will read
    uint32_t max


# Per-segment records of what was sent and is not yet cumulatively acknowledged (RACK,
# RFC 8985 §5.2: each segment's latest transmit time), in sequence order.
cdef enum:
    SEG_SACKED = 1                 # the peer SACKed it
    SEG_LOST = 2                   # marked lost and not retransmitted since
    SEG_RETRANS = 4                # its latest transmission is a retransmission
    SEG_EVER_RETRANS = 8           # retransmitted at least once


cdef struct SegRec:
    uint32_t start
    uint32_t end                   # exclusive; a FIN counts one
    double xmit_ts                 # time of the latest transmission
    uint32_t flags


cdef struct SegQueue:
    SegRec* r                      # ring of `cap` (a power of two) records from `head`
    uint32_t cap
    uint32_t head
    uint32_t n


cdef int send_ring_init(SendRing* r, uint32_t cap, uint32_t max) except -1
cdef void send_ring_release(SendRing* r) noexcept
cdef uint32_t send_ring_append(SendRing* r, const uint8_t* src, uint32_t n) except? 0xffffffff
cdef uint32_t send_ring_ack(SendRing* r, uint32_t ack) noexcept nogil
cdef void send_ring_copy(const SendRing* r, uint32_t seq, uint8_t* dst, uint32_t n) noexcept nogil

cdef int recv_ring_init(RecvRing* r, uint32_t cap, uint32_t max) except -1
cdef void recv_ring_release(RecvRing* r) noexcept
cdef uint32_t recv_ring_space(const RecvRing* r, uint32_t seq) noexcept nogil
cdef void recv_ring_write(RecvRing* r, uint32_t seq, const uint8_t* src, uint32_t n) noexcept nogil
cdef void recv_ring_read(RecvRing* r, uint8_t* dst, uint32_t n) noexcept nogil
cdef int recv_ring_grow(RecvRing* r, uint32_t cap) except -1

cdef int ranges_init(RangeSet* s, int cap) except -1
cdef void ranges_release(RangeSet* s) noexcept
cdef bint ranges_insert(RangeSet* s, uint32_t left, uint32_t right) noexcept nogil
cdef uint32_t ranges_total(const RangeSet* s) noexcept nogil
cdef uint32_t assembler_advance(RangeSet* s, uint32_t rcv_nxt) noexcept nogil
cdef void scoreboard_update(RangeSet* s, const uint32_t* blocks, uint32_t nblocks, uint32_t ack,
                            uint32_t snd_max) noexcept nogil
cdef void scoreboard_trim(RangeSet* s, uint32_t snd_una) noexcept nogil
cdef uint32_t scoreboard_unsacked(const RangeSet* s, uint32_t a, uint32_t b) noexcept nogil
cdef uint32_t scoreboard_lost_end(const RangeSet* s, uint32_t thresh,
                                  uint32_t snd_una) noexcept nogil
cdef uint32_t scoreboard_next_hole(const RangeSet* s, uint32_t seq,
                                   uint32_t* hole_end) noexcept nogil

cdef int segq_init(SegQueue* q, uint32_t cap) except -1
cdef void segq_release(SegQueue* q) noexcept
cdef SegRec* segq_push(SegQueue* q, uint32_t start, uint32_t end, double ts) except NULL
cdef SegRec* segq_insert_after(SegQueue* q, uint32_t i) except NULL
cdef uint32_t segq_find(const SegQueue* q, uint32_t seq) noexcept nogil
cdef void segq_pop_front(SegQueue* q) noexcept nogil

cdef inline SegRec* segq_at(const SegQueue* q, uint32_t i) noexcept nogil:
    return &q.r[(q.head + i) & (q.cap - 1)]
