# cython: language_level=3
"""A TCP connection's storage: send ring, receive ring, assembler and SACK scoreboard.

Theory of operation
-------------------
Every structure here is a plain C struct embedded in the :class:`TcpConn` that owns it; these
functions are its only mutators besides ``conn``'s bookkeeping. No Python object is created.

* **Send ring** (:c:type:`SendRing`). The application appends at the tail (``send_ring_append``
  takes what fits under ``max``, growing the ring by doubling); cumulative ACKs free bytes at the
  head (``send_ring_ack``). Bytes stay until acknowledged, so a retransmission is one more
  ``send_ring_copy`` into a packet slot: the payload is copied once per transmission, straight
  into the buffer that is then sealed in place.
* **Receive ring** (:c:type:`RecvRing`). Holds bytes from ``read_seq`` (the next byte the
  application reads) on. A segment is written at its final offset ``seq - read_seq``, in order
  or not (``recv_ring_write``, after ``recv_ring_space`` bounded it); the application takes
  in-order bytes from the head (``recv_ring_read``). Auto-tuning grows it (``recv_ring_grow``),
  keeping everything from ``read_seq`` to the old end.
* **Range sets** (:c:type:`RangeSet`): at most ``cap`` (a heap array) sorted, disjoint,
  non-touching ``[start, end)`` sequence ranges; inserting merges with every range it overlaps
  or touches.
  - As the **assembler**: the out-of-order ranges already in the receive ring. When the hole
    before the first range fills, ``assembler_advance`` moves ``rcv_nxt`` over every range now
    in order and drops them. A full set refuses a new range (the segment is dropped, counted).
  - As the **scoreboard** (RFC 6675 §3): what the peer SACKed above the cumulative ACK.
    ``scoreboard_update`` takes a segment's blocks (RFC 2018 §5: only those above the ACK and
    within what we sent), ``scoreboard_trim`` forgets what the ACK passed, and the loss
    recovery queries ``scoreboard_unsacked`` (SetPipe), ``scoreboard_lost_end`` (IsLost) and
    ``scoreboard_next_hole`` (NextSeg). A full set forgets the block: SACK only speeds
    recovery up, correctness never depends on it. The connection uses it as the record of
    which SACKed ranges it has already applied to the segment queue.
* **Segment queue** (:c:type:`SegQueue`): one :c:type:`SegRec` per segment sent and not yet
  cumulatively acknowledged, in sequence order, with its latest transmit time and flags
  (SACKed, lost, retransmitted): the RACK (RFC 8985) retransmission queue. New segments are
  pushed at the tail (``segq_push``), acknowledged ones popped at the head
  (``segq_pop_front``); ``segq_find`` is a binary search by sequence number;
  ``segq_insert_after`` opens a slot for splitting a record (rare: a retransmission that
  options made shorter). The ring doubles when full.

Invariants: ring capacities are powers of two (indices are masked); ``len <= cap`` and
``cap <= max`` after growth; range arithmetic is on the 2**32 sequence circle.
"""
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memcpy, memmove

from _wgcore.tcpip.wire cimport seq_lt, seq_le, seq_gt, seq_max, seq_min, umin


# -- send ring --------------------------------------------------------------------------------

cdef int send_ring_init(SendRing* r, uint32_t cap, uint32_t max) except -1:
    r.data = <uint8_t*>PyMem_Malloc(cap)
    if r.data == NULL:
        raise MemoryError()
    r.cap = cap
    r.head = 0
    r.len = 0
    r.max = max
    return 0


cdef void send_ring_release(SendRing* r) noexcept:
    PyMem_Free(r.data)
    r.data = NULL


cdef int _send_ring_grow(SendRing* r, uint32_t need) except -1:
    cdef uint32_t cap = r.cap
    while cap < need:
        cap *= 2
    cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
    if buf == NULL:
        raise MemoryError()
    cdef uint32_t first = umin(r.len, r.cap - r.head)
    memcpy(buf, r.data + r.head, first)
    memcpy(buf + first, r.data, r.len - first)
    PyMem_Free(r.data)
    r.data = buf
    r.cap = cap
    r.head = 0
    return 0


cdef uint32_t send_ring_append(SendRing* r, const uint8_t* src, uint32_t n) except? 0xffffffff:
    """Append up to `n` bytes (what fits under ``max``); returns how many were taken."""
    n = umin(n, r.max - r.len)
    if n == 0:
        return 0
    if r.len + n > r.cap:
        _send_ring_grow(r, r.len + n)
    cdef uint32_t mask = r.cap - 1
    cdef uint32_t pos = (r.head + r.len) & mask
    cdef uint32_t first = umin(n, r.cap - pos)
    memcpy(r.data + pos, src, first)
    if first < n:
        memcpy(r.data, src + first, n - first)
    r.len += n
    return n


cdef uint32_t send_ring_ack(SendRing* r, uint32_t ack) noexcept nogil:
    """Free the bytes below `ack` (a FIN's sequence number has no byte here); returns how many."""
    cdef uint32_t freed
    if not seq_gt(ack, r.seq):
        return 0
    freed = umin(ack - r.seq, r.len)
    r.head = (r.head + freed) & (r.cap - 1)
    r.len -= freed
    r.seq += freed
    return freed


cdef void send_ring_copy(const SendRing* r, uint32_t seq, uint8_t* dst, uint32_t n) noexcept nogil:
    """Copy [seq, seq + n), which the caller checked lies in the ring, to `dst`."""
    cdef uint32_t mask = r.cap - 1
    cdef uint32_t pos = (r.head + (seq - r.seq)) & mask
    cdef uint32_t first = umin(n, r.cap - pos)
    memcpy(dst, r.data + pos, first)
    if first < n:
        memcpy(dst + first, r.data, n - first)


# -- receive ring -----------------------------------------------------------------------------

cdef int recv_ring_init(RecvRing* r, uint32_t cap, uint32_t max) except -1:
    r.data = <uint8_t*>PyMem_Malloc(cap)
    if r.data == NULL:
        raise MemoryError()
    r.cap = cap
    r.head = 0
    r.max = max
    return 0


cdef void recv_ring_release(RecvRing* r) noexcept:
    PyMem_Free(r.data)
    r.data = NULL


cdef uint32_t recv_ring_space(const RecvRing* r, uint32_t seq) noexcept nogil:
    """Bytes the ring can hold from sequence number `seq` on."""
    return r.cap - (seq - r.read_seq) if seq_lt(seq, r.read_seq + r.cap) else 0


cdef void recv_ring_write(RecvRing* r, uint32_t seq, const uint8_t* src, uint32_t n) noexcept nogil:
    """Store [seq, seq + n) at its place (the caller bounded `n` by recv_ring_space)."""
    cdef uint32_t mask = r.cap - 1
    cdef uint32_t pos = (r.head + (seq - r.read_seq)) & mask
    cdef uint32_t first = umin(n, r.cap - pos)
    memcpy(r.data + pos, src, first)
    if first < n:
        memcpy(r.data, src + first, n - first)


cdef void recv_ring_read(RecvRing* r, uint8_t* dst, uint32_t n) noexcept nogil:
    """Move `n` in-order bytes from the head to `dst` (the caller checked they are there)."""
    cdef uint32_t first = umin(n, r.cap - r.head)
    memcpy(dst, r.data + r.head, first)
    if first < n:
        memcpy(dst + first, r.data, n - first)
    r.head = (r.head + n) & (r.cap - 1)
    r.read_seq += n


cdef int recv_ring_grow(RecvRing* r, uint32_t cap) except -1:
    """Grow to `cap` (rounded down to a power of two within ``max``); never shrinks."""
    while cap > r.max:           # stay a power of two (max may not be one)
        cap >>= 1
    if cap <= r.cap:
        return 0
    cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
    if buf == NULL:
        raise MemoryError()
    # Everything from read_seq to the old ring's end may hold data (in order or not).
    cdef uint32_t old = r.cap
    cdef uint32_t first = old - r.head
    memcpy(buf, r.data + r.head, first)
    memcpy(buf + first, r.data, old - first)
    PyMem_Free(r.data)
    r.data = buf
    r.cap = cap
    r.head = 0
    return 0


# -- range sets: assembler and scoreboard ------------------------------------------------------

cdef int ranges_init(RangeSet* s, int cap) except -1:
    s.r = <Range*>PyMem_Malloc(cap * sizeof(Range))
    if s.r == NULL:
        raise MemoryError()
    s.n = 0
    s.cap = cap
    return 0


cdef void ranges_release(RangeSet* s) noexcept:
    PyMem_Free(s.r)
    s.r = NULL
    s.n = 0
    s.cap = 0


cdef bint ranges_insert(RangeSet* s, uint32_t left, uint32_t right) noexcept nogil:
    """Add [left, right), merging with what it overlaps or touches; False when the set is full
    and the range could not be kept."""
    cdef int i = 0, j
    # find the first range whose end >= left
    while i < s.n and seq_lt(s.r[i].end, left):
        i += 1
    if i < s.n and seq_le(s.r[i].start, right):
        # overlaps or touches: merge forward
        s.r[i].start = seq_min(s.r[i].start, left)
        s.r[i].end = seq_max(s.r[i].end, right)
        j = i + 1
        while j < s.n and seq_le(s.r[j].start, s.r[i].end):
            s.r[i].end = seq_max(s.r[i].end, s.r[j].end)
            j += 1
        if j > i + 1:
            memmove(&s.r[i + 1], &s.r[j], (s.n - j) * sizeof(Range))
            s.n -= j - i - 1
        return True
    if s.n >= s.cap:
        return False
    for j in range(s.n, i, -1):
        s.r[j] = s.r[j - 1]
    s.r[i].start = left
    s.r[i].end = right
    s.n += 1
    return True


cdef uint32_t ranges_total(const RangeSet* s) noexcept nogil:
    """Bytes covered by the set."""
    cdef uint32_t total = 0
    cdef int i
    for i in range(s.n):
        total += s.r[i].end - s.r[i].start
    return total


cdef uint32_t assembler_advance(RangeSet* s, uint32_t rcv_nxt) noexcept nogil:
    """The hole at `rcv_nxt` filled: move it over every range now in order, drop those ranges
    and return the new rcv_nxt."""
    cdef int i = 0, j
    while i < s.n and seq_le(s.r[i].start, rcv_nxt):
        rcv_nxt = seq_max(rcv_nxt, s.r[i].end)
        i += 1
    if i:
        for j in range(i, s.n):
            s.r[j - i] = s.r[j]
        s.n -= i
    return rcv_nxt


cdef void scoreboard_update(RangeSet* s, const uint32_t* blocks, uint32_t nblocks, uint32_t ack,
                            uint32_t snd_max) noexcept nogil:
    """Record a segment's SACK blocks (`nblocks` (left, right) pairs)."""
    cdef uint32_t i, left, right
    for i in range(nblocks):
        left = blocks[2 * i]
        right = blocks[2 * i + 1]
        # Only blocks above the cumulative ACK and within what we sent (RFC 2018 §5 / 6675).
        if not seq_lt(left, right) or seq_le(right, ack) or seq_gt(right, snd_max):
            continue
        if seq_lt(left, ack):
            left = ack
        ranges_insert(s, left, right)   # full: forgotten (it is only an optimisation)


cdef void scoreboard_trim(RangeSet* s, uint32_t snd_una) noexcept nogil:
    """Forget what the cumulative ACK `snd_una` covers."""
    cdef int i, n = 0
    for i in range(s.n):
        if seq_le(s.r[i].end, snd_una):
            continue
        s.r[n] = s.r[i]
        if seq_lt(s.r[n].start, snd_una):
            s.r[n].start = snd_una
        n += 1
    s.n = n


cdef uint32_t scoreboard_unsacked(const RangeSet* s, uint32_t a, uint32_t b) noexcept nogil:
    """Bytes of [a, b) not SACKed."""
    cdef uint32_t total = b - a
    cdef uint32_t start, end
    cdef int i
    for i in range(s.n):
        start = seq_max(s.r[i].start, a)
        end = seq_min(s.r[i].end, b)
        if seq_lt(start, end):
            total -= end - start
    return total


cdef uint32_t scoreboard_lost_end(const RangeSet* s, uint32_t thresh,
                                  uint32_t snd_una) noexcept nogil:
    """RFC 6675 §4 IsLost(seq), as a boundary: unSACKed data below the returned sequence
    number has more than `thresh` ((DupThresh - 1) * SMSS) bytes SACKed above it. Returns
    `snd_una` when nothing is lost."""
    cdef uint32_t above = 0
    cdef int i
    for i in range(s.n - 1, -1, -1):
        above += s.r[i].end - s.r[i].start
        if above > thresh:
            return s.r[i].start
    return snd_una


cdef uint32_t scoreboard_next_hole(const RangeSet* s, uint32_t seq,
                                   uint32_t* hole_end) noexcept nogil:
    """RFC 6675 §5 NextSeg rule 1: the first unSACKed sequence number from `seq` on; lowers
    `hole_end` to the start of the next SACKed range above it."""
    cdef int i
    for i in range(s.n):
        if seq_le(s.r[i].end, seq):
            continue
        if seq_le(s.r[i].start, seq):
            seq = s.r[i].end      # inside a SACKed block: skip it
            continue
        hole_end[0] = seq_min(hole_end[0], s.r[i].start)
        break
    return seq


# -- segment queue (RACK retransmission queue) --------------------------------------------------

cdef int segq_init(SegQueue* q, uint32_t cap) except -1:
    q.r = <SegRec*>PyMem_Malloc(cap * sizeof(SegRec))
    if q.r == NULL:
        raise MemoryError()
    q.cap = cap
    q.head = 0
    q.n = 0
    return 0


cdef void segq_release(SegQueue* q) noexcept:
    PyMem_Free(q.r)
    q.r = NULL
    q.n = 0
    q.cap = 0
    q.head = 0


cdef int _segq_grow(SegQueue* q) except -1:
    cdef uint32_t cap = q.cap * 2 if q.cap else 64
    cdef SegRec* r = <SegRec*>PyMem_Malloc(cap * sizeof(SegRec))
    if r == NULL:
        raise MemoryError()
    cdef uint32_t i
    for i in range(q.n):
        r[i] = segq_at(q, i)[0]
    PyMem_Free(q.r)
    q.r = r
    q.cap = cap
    q.head = 0
    return 0


cdef SegRec* segq_push(SegQueue* q, uint32_t start, uint32_t end, double ts) except NULL:
    """Append a record for [start, end) sent at `ts`."""
    if q.n == q.cap:
        _segq_grow(q)
    cdef SegRec* rec = segq_at(q, q.n)
    q.n += 1
    rec.start = start
    rec.end = end
    rec.xmit_ts = ts
    rec.flags = 0
    return rec


cdef SegRec* segq_insert_after(SegQueue* q, uint32_t i) except NULL:
    """Open a slot at index i + 1 (a copy of record i, the caller sets the bounds)."""
    if q.n == q.cap:
        _segq_grow(q)
    cdef uint32_t j = q.n
    while j > i + 1:
        segq_at(q, j)[0] = segq_at(q, j - 1)[0]
        j -= 1
    segq_at(q, i + 1)[0] = segq_at(q, i)[0]
    q.n += 1
    return segq_at(q, i + 1)


cdef uint32_t segq_find(const SegQueue* q, uint32_t seq) noexcept nogil:
    """Index of the record containing `seq`, else of the first record above it (q.n: none)."""
    cdef uint32_t lo = 0, hi = q.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if seq_le(segq_at(q, mid).end, seq):
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef void segq_pop_front(SegQueue* q) noexcept nogil:
    q.head = (q.head + 1) & (q.cap - 1)
    q.n -= 1
