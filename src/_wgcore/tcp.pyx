# cython: language_level=3
"""Userspace TCP (RFC 9293) in C: the whole per-connection engine plus the IP demultiplexer.

Theory of operation
-------------------
A :class:`TcpStack` sits between the WireGuard data path and Python's asyncio adapter. It never
reads a clock, sleeps or does I/O: every call takes ``now`` (seconds, monotonic) and the
batches to read from or write into (STYLE §3).

* ``input(rx, tx, now, start)`` walks the decrypted descriptors of a receive batch. For each
  inner IPv4/IPv6 packet carrying TCP it checks the IP header, the TCP checksum and options in C,
  finds the connection by its 4-tuple in a C hash table and runs the segment through the
  connection's state machine (:class:`TcpConn`). Consumed descriptors are marked empty; anything
  that is not TCP is left for the Python IP layer (ICMP, UDP). Malformed or unwanted segments are
  counted by reason and dropped, or answered with a RST as RFC 9293 §3.10.7.1 says. ACKs owed
  mid-batch (every ACK_EVERY segments) are written straight into `tx` while it has room; the
  rest go out with the next ``output``.
* ``output(tx, now)`` lets every connection with something to send (data within min(cwnd, peer
  window), retransmissions, SYN/FIN, owed ACKs) cut segments into `tx` slots: IP and TCP headers
  are written in front of the payload copied from the send ring, 16 bytes of WireGuard header
  room before, and the checksum is computed in the same pass.
* ``get_timer()``/``handle_timer(now)``: each connection keeps deadlines (retransmission or
  persist, delayed ACK, TIME_WAIT/handshake expiry); the stack reports the earliest one.
* Events for Python are per connection per batch, never per packet: a connection that became
  established, got new in-order data, saw the peer's FIN, freed send space or closed is listed
  once by ``take_touched()`` and says what happened with ``take_events()``.

Per connection: RFC 9293 states; MSS, window scaling, timestamps (RFC 7323), SACK (RFC 2018) with
selective retransmission driven by an RFC 6675 scoreboard; RTO per RFC 6298 with exponential
backoff; fast retransmit/recovery (RFC 5681, NewReno partial ACKs without SACK); CUBIC
congestion control (RFC 9438); delayed ACKs (at most one full segment unacknowledged beyond a
batch, 40 ms timer); out-of-order reassembly straight into the receive ring; receive window
auto-tuned from what the application drains; zero-window probes; half-close; RST in both
directions with RFC 5961 challenge ACKs; TIME_WAIT; RFC 6528 initial sequence numbers; SYN backlog
per listener (oldest half-open connection evicted when full) and an accept queue.

Buffers are rings owned by the connection: the send ring keeps unacknowledged data for
retransmission without copies (segment payload is copied once, into the packet slot that is then
sealed in place); out-of-order data is written into the receive ring at its final offset, so
reassembly is just moving ``rcv_nxt`` over ranges.

Why the whole connection is here, not split: STYLE §5 sketches the per-segment work in C and the
state machine in Python. Splitting one connection's state across that boundary would cost a
Python call per "rare" segment (every FIN, RST, SYN of a 10,000-SYN flood) and duplicate the
invariants that tie sequence space, rings and timers together; so the RFC 9293 machine lives in
this one object, as plain commented code with each rule named, and Python sees only events.

Invariants: the C tables (connection hash, connection list, output list) hold borrowed pointers
to objects the stack keeps in Python containers (``_conns``, ``_listeners``); a connection leaves
every table when it reaches CLOSED.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_Calloc, PyMem_Realloc
from libc.math cimport cbrt, fabs
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy, memset, memcmp

from _wgcore.checksum cimport csum_partial, csum_fold
from _wgcore.datapath cimport PacketBatch
from _wgcore.octets cimport load_u16be, load_u32be, store_u16be
from _wgcore.state cimport PacketDesc, RES_DATA, RES_EMPTY, RES_PENDING, TRANSPORT_HEADER_LEN

import errno as _errno
import hashlib as _hashlib
import os as _os

cdef extern from "<endian.h>" nogil:
    uint32_t htobe32(uint32_t)

# -- constants -------------------------------------------------------------------------------

# RFC 9293 §3.3.2 states, spelled as the RFC spells them.
cdef enum:
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10

STATE_NAMES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1",
               "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT")

# RFC 9293 §3.1 control bits
cdef enum:
    F_FIN = 0x01
    F_SYN = 0x02
    F_RST = 0x04
    F_PSH = 0x08
    F_ACK = 0x10
    F_URG = 0x20

# Events for Python, per connection (TcpConn.take_events) and per listener.
cdef enum:
    TEV_CONNECTED = 1      # reached ESTABLISHED
    TEV_READABLE = 2       # new in-order data waits in the receive ring
    TEV_EOF = 4            # the peer's FIN arrived (after all its data)
    TEV_WRITABLE = 8       # acknowledged data freed send-ring space
    TEV_CLOSED = 16        # the connection left the stack (error: TcpConn.error)
    TEV_ACCEPT = 32        # listener: a connection waits in the accept queue

EVENTS = {"CONNECTED": TEV_CONNECTED, "READABLE": TEV_READABLE, "EOF": TEV_EOF,
          "WRITABLE": TEV_WRITABLE, "CLOSED": TEV_CLOSED, "ACCEPT": TEV_ACCEPT}

# Drop reasons (stack counters).
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

DROP_NAMES = ("ip_malformed", "ip_options", "ip_fragment", "ip_checksum", "not_local",
              "tcp_malformed", "tcp_checksum", "no_socket", "out_of_window", "bad_ack",
              "rst_ignored", "syn_backlog", "accept_queue_full", "ooo_overflow", "paws",
              "receive_closed", "receive_buffer_full")

cdef enum:
    IPV4_HEADER = 20
    IPV6_HEADER = 40
    TCP_HEADER = 20
    MAX_SACK_BLOCKS = 32           # scoreboard / out-of-order ranges kept per connection
    ACK_EVERY = 16                 # full segments received before an ACK is sent mid-batch
    OUR_WSCALE = 7                 # RFC 7323: windows up to 8 MiB
    MAX_LOCAL_ADDRESSES = 8

# Tunables (seconds / bytes). RFC 6298 §2: initial RTO 1 s, minimum 1 s there; like Linux we use
# 200 ms as the floor, which RFC 6298 §2.4 permits ("MAY"), and cap the backoff at 60 s.
cdef double RTO_INITIAL = 1.0
cdef double RTO_MIN = 0.2
cdef double RTO_MAX = 60.0
cdef double DELACK_TIMEOUT = 0.04      # RFC 9293 §3.8.6.3: < 0.5 s; Linux's minimum
cdef double TIME_WAIT_TIMEOUT = 60.0   # 2 * MSL, Linux's TCP_TIMEWAIT_LEN
cdef double FIN_WAIT_2_TIMEOUT = 60.0  # Linux tcp_fin_timeout, after the application closed
cdef int SYN_RETRIES = 6               # 1+2+4+...+64 s: gives up after ~127 s, as Linux
cdef int DATA_RETRIES = 12
cdef double CUBIC_C = 0.4              # RFC 9438 §4.1
cdef double CUBIC_BETA = 0.7
cdef uint32_t INITIAL_CWND_SEGMENTS = 10   # RFC 6928


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


# -- parsed segment ------------------------------------------------------------------------

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


cdef struct Range:
    uint32_t start
    uint32_t end


cdef inline uint32_t key_hash(const ConnKey* k) noexcept nogil:
    # FNV-1a over the key bytes; enough for a table the network cannot choose sizes of.
    cdef const uint8_t* p = <const uint8_t*>k
    cdef uint32_t h = 2166136261u
    cdef size_t i
    for i in range(sizeof(ConnKey)):
        h = (h ^ p[i]) * 16777619u
    return h


cdef bint parse_options(Segment* s, const uint8_t* opt, uint32_t n) noexcept nogil:
    """RFC 9293 §3.2 option list: returns False for a malformed list."""
    cdef uint32_t i = 0, kind, length, k
    while i < n:
        kind = opt[i]
        if kind == 0:                      # end of option list
            return True
        if kind == 1:                      # no-operation
            i += 1
            continue
        if i + 1 >= n:
            return False
        length = opt[i + 1]
        if length < 2 or i + length > n:
            return False
        if kind == 2 and length == 4:      # MSS
            s.mss = load_u16be(opt + i + 2)
        elif kind == 3 and length == 3:    # window scale (RFC 7323 §2.3: shift capped at 14)
            s.wscale = opt[i + 2] if opt[i + 2] <= 14 else 14
        elif kind == 4 and length == 2:    # SACK permitted
            s.sack_ok = True
        elif kind == 5 and (length - 2) % 8 == 0:   # SACK blocks
            k = 0
            while k < (length - 2) // 8 and s.nsack < 4:
                s.sack[2 * s.nsack] = load_u32be(opt + i + 2 + 8 * k)
                s.sack[2 * s.nsack + 1] = load_u32be(opt + i + 6 + 8 * k)
                s.nsack += 1
                k += 1
        elif kind == 8 and length == 10:   # timestamps
            s.has_ts = True
            s.tsval = load_u32be(opt + i + 2)
            s.tsecr = load_u32be(opt + i + 6)
        i += length
    return True


cdef inline void store_u32be(uint8_t* p, uint32_t v) noexcept nogil:
    v = htobe32(v)
    memcpy(p, &v, 4)


# -- connection ------------------------------------------------------------------------------

@cython.final
cdef class TcpConn:
    """One TCP connection. Created by :meth:`TcpStack.connect` or by a listener; Python reads
    and writes it through ``send``/``read``/``shutdown``/``close``/``abort``."""

    cdef TcpStack stack
    cdef ConnKey key
    cdef uint32_t hash
    cdef readonly int state
    cdef readonly int error              # errno when the connection failed, else 0
    cdef public object owner             # the asyncio transport (or anything Python attaches)
    cdef TcpListener listener            # passive open: who accepts us (until accepted)
    cdef int list_index                  # position in stack.all_conns, -1 when not listed
    cdef bint in_output
    cdef bint in_touched
    cdef uint32_t events
    cdef uint32_t mss_ip                 # our MTU minus IP and TCP headers (what we advertise)

    # send sequence space (RFC 9293 §3.3.1)
    cdef uint32_t iss
    cdef uint32_t snd_una
    cdef uint32_t snd_max                # highest sequence number sent + 1
    cdef uint32_t snd_wnd                # peer's window, scaled
    cdef uint32_t snd_wl1
    cdef uint32_t snd_wl2
    cdef uint32_t max_snd_wnd
    cdef int snd_wscale                  # shift to apply to the peer's window field
    cdef uint32_t peer_mss               # from the peer's MSS option (536 without it)
    cdef uint32_t smss                   # payload per full segment (minus the TS option)
    # receive sequence space
    cdef uint32_t irs
    cdef uint32_t rcv_nxt
    cdef uint32_t rcv_adv                # right edge of the window we last advertised
    cdef int rcv_wscale                  # our shift (0 when the peer did not offer scaling)
    # options agreed on
    cdef bint sack_ok
    cdef bint ts_ok
    cdef uint32_t ts_offset
    cdef uint32_t ts_recent
    cdef uint32_t last_ack_sent
    # send ring: bytes [sbuf_seq, sbuf_seq + sbuf_len) at sbuf[(head + off) & mask]
    cdef uint8_t* sbuf
    cdef uint32_t sbuf_cap
    cdef uint32_t sbuf_head
    cdef uint32_t sbuf_len
    cdef uint32_t sbuf_seq
    cdef readonly uint32_t sbuf_max
    cdef bint fin_queued                 # the application shut down its sending side
    cdef bint fin_sent
    cdef uint32_t fin_seq                # sequence number of our FIN (valid when fin_queued)
    cdef bint syn_acked
    # receive ring: bytes from rd_seq on at rbuf[(head + off) & mask]
    cdef uint8_t* rbuf
    cdef uint32_t rbuf_cap
    cdef uint32_t rbuf_head
    cdef uint32_t rd_seq                 # next byte the application will read
    cdef readonly uint32_t rbuf_max
    cdef Range ooo[MAX_SACK_BLOCKS]      # out-of-order ranges held in the ring (sorted)
    cdef int ooo_n
    cdef uint32_t ooo_recent_start       # the range containing the latest OOO segment
    cdef bint peer_fin                   # FIN received and processed (rcv_nxt counts it)
    cdef bint peer_fin_pending
    cdef uint32_t peer_fin_seq
    cdef bint app_closed                 # close() called: no more reads
    cdef double rcv_rtt                  # receiver's RTT estimate (timestamp echoes), for tuning
    cdef double space_time               # start of the current auto-tuning measurement
    cdef uint64_t space_mark             # bytes_read at space_time
    # SACK scoreboard of our sent data (RFC 6675)
    cdef Range sacked[MAX_SACK_BLOCKS]
    cdef int sacked_n
    cdef uint32_t sacked_bytes
    cdef uint32_t lost_end               # unSACKed data below this is deemed lost
    cdef uint32_t rexmit_nxt             # next lost byte not yet retransmitted
    cdef bint in_recovery
    cdef bint rto_recovery               # recovery started by a timeout: slow start inside it
    cdef uint32_t recover                # snd_max when recovery started (RFC 6582)
    cdef int dupacks
    # RTT / RTO (RFC 6298)
    cdef double srtt
    cdef double rttvar
    cdef double rto
    cdef double min_rtt
    cdef int retries
    cdef int probes_unanswered           # zero-window probes since the peer last answered
    cdef uint32_t rtt_seq                # Karn timing without timestamps
    cdef double rtt_time
    cdef bint rtt_timing
    # CUBIC (RFC 9438), windows in bytes
    cdef uint32_t cwnd
    cdef uint32_t ssthresh
    cdef double w_max
    cdef double cubic_k
    cdef double cubic_origin
    cdef double epoch_start
    cdef double w_est
    # ACK state
    cdef uint32_t segs_unacked
    cdef bint ack_now
    # deadlines (0 = unset)
    cdef double rtx_at                   # retransmission, SYN retry or zero-window probe
    cdef double delack_at
    cdef double expire_at                # TIME_WAIT end, FIN_WAIT_2 / SYN_RECEIVED give-up
    cdef double tlp_at                   # tail-loss probe (RFC 8985 §7)
    cdef bint tlp_send                   # the probe is due at the next output
    cdef bint tlp_done                   # one probe per episode (until the ACK advances)
    cdef bint persist
    # counters
    cdef readonly uint64_t bytes_sent, bytes_acked, bytes_received, bytes_read
    cdef readonly uint64_t segs_in, segs_out, retransmits, fast_retransmits, timeouts
    cdef readonly uint64_t ooo_segments, dup_segments, sack_blocks_received, window_probes
    cdef readonly uint64_t tail_probes

    def __cinit__(self):
        self.list_index = -1
        self.state = CLOSED
        self.sbuf = NULL
        self.rbuf = NULL

    def __dealloc__(self):
        PyMem_Free(self.sbuf)
        PyMem_Free(self.rbuf)

    cdef int _setup(self, TcpStack stack, const ConnKey* key, double now) except -1:
        self.stack = stack
        self.key = key[0]
        self.hash = key_hash(key)
        self.mss_ip = stack.mtu - (IPV4_HEADER if key.family == 4 else IPV6_HEADER) - TCP_HEADER
        self.peer_mss = 536
        self.smss = 536
        self.rto = RTO_INITIAL
        self.srtt = 0
        self.min_rtt = 0
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.sbuf_max = stack.send_buffer
        self.rbuf_max = stack.receive_buffer
        self.sbuf_cap = 65536
        self.rbuf_cap = umin(stack.receive_buffer_initial, stack.receive_buffer)
        self.sbuf = <uint8_t*>PyMem_Malloc(self.sbuf_cap)
        self.rbuf = <uint8_t*>PyMem_Malloc(self.rbuf_cap)
        if self.sbuf == NULL or self.rbuf == NULL:
            raise MemoryError()
        cdef bytes digest = stack._isn_hash(key)
        cdef const uint8_t* d = <const uint8_t*>digest
        # RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport, secretkey), M a 4 µs clock
        self.iss = load_u32be(d) + <uint32_t>(<uint64_t>(now * 250000.0))
        self.ts_offset = load_u32be(d + 4)
        self.snd_una = self.iss
        self.snd_max = self.iss
        self.sbuf_seq = self.iss + 1
        self.cwnd = INITIAL_CWND_SEGMENTS * 1220
        self.ssthresh = 0x7fffffff
        return 0

    # -- Python API ---------------------------------------------------------------------------

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    @property
    def local(self) -> tuple:
        """(address bytes, port)."""
        n = 4 if self.key.family == 4 else 16
        return (bytes(self.key.laddr[:n]), self.key.lport)

    @property
    def remote(self) -> tuple:
        n = 4 if self.key.family == 4 else 16
        return (bytes(self.key.raddr[:n]), self.key.rport)

    def take_events(self) -> int:
        """The event flags raised since the last call (TEV_*), cleared."""
        cdef uint32_t ev = self.events
        self.events = 0
        return ev

    @property
    def readable(self) -> int:
        """In-order bytes waiting to be read."""
        return self._readable()

    @property
    def send_space(self) -> int:
        """Bytes send() would accept now."""
        if self.fin_queued or self.state in (CLOSED, LISTEN):
            return 0
        return self.sbuf_max - self.sbuf_len

    @property
    def unsent(self) -> int:
        """Buffered bytes not yet acknowledged by the peer."""
        return self.sbuf_len

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it was read."""
        return self.peer_fin and self._readable() == 0

    cdef inline uint32_t _readable(self) noexcept:
        # rcv_nxt and rd_seq both start at 0 before the peer's SYN, so this is 0 there.
        return self.rcv_nxt - self.rd_seq - (1 if self.peer_fin else 0)

    def send(self, const uint8_t[::1] data not None) -> int:
        """Append to the send ring; returns how many bytes were taken (may be fewer than given
        when the ring is full). Raises ConnectionError when the sending side is closed."""
        cdef uint32_t n = data.shape[0]
        if self.fin_queued or self.state in (CLOSED, LISTEN, TIME_WAIT, CLOSING, LAST_ACK):
            raise BrokenPipeError(_errno.EPIPE, "the connection's sending side is closed")
        n = umin(n, self.sbuf_max - self.sbuf_len)
        if n == 0:
            return 0
        if self.sbuf_len + n > self.sbuf_cap:
            self._grow_send(self.sbuf_len + n)
        cdef uint32_t mask = self.sbuf_cap - 1
        cdef uint32_t pos = (self.sbuf_head + self.sbuf_len) & mask
        cdef uint32_t first = umin(n, self.sbuf_cap - pos)
        memcpy(self.sbuf + pos, &data[0], first)
        if first < n:
            memcpy(self.sbuf, &data[first], n - first)
        self.sbuf_len += n
        self.stack._want_output(self)
        return n

    cdef int _grow_send(self, uint32_t need) except -1:
        cdef uint32_t cap = self.sbuf_cap
        while cap < need:
            cap *= 2
        cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
        if buf == NULL:
            raise MemoryError()
        cdef uint32_t first = umin(self.sbuf_len, self.sbuf_cap - self.sbuf_head)
        memcpy(buf, self.sbuf + self.sbuf_head, first)
        memcpy(buf + first, self.sbuf, self.sbuf_len - first)
        PyMem_Free(self.sbuf)
        self.sbuf = buf
        self.sbuf_cap = cap
        self.sbuf_head = 0
        return 0

    def read(self, Py_ssize_t max_bytes=-1) -> bytes:
        """Take up to `max_bytes` (default: all) in-order received bytes; opens the window."""
        cdef uint32_t avail = self._readable()
        if max_bytes >= 0 and <uint32_t>max_bytes < avail:
            avail = <uint32_t>max_bytes
        if avail == 0:
            return b""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, avail)
        cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
        cdef uint32_t first = umin(avail, self.rbuf_cap - self.rbuf_head)
        memcpy(dst, self.rbuf + self.rbuf_head, first)
        if first < avail:
            memcpy(dst + first, self.rbuf, avail - first)
        self.rbuf_head = (self.rbuf_head + avail) & (self.rbuf_cap - 1)
        self.rd_seq += avail
        self.bytes_read += avail
        self._after_read()
        return out

    cdef void _after_read(self):
        # Receive-buffer auto-tuning (dynamic right-sizing, as Linux's tcp_rcv_space_adjust):
        # once per receiver RTT, if the application drained more than half the ring in that
        # RTT, the window is what limits the sender: size the ring to twice that amount (the
        # bandwidth-delay product with headroom), up to rbuf_max. A stalled reader drains
        # nothing, so its memory stays bounded by the window it was given.
        cdef uint32_t wnd_before = self.rcv_adv - self.rcv_nxt if seq_gt(self.rcv_adv, self.rcv_nxt) else 0
        cdef double now = self.stack.now
        cdef double rtt = self.rcv_rtt if self.rcv_rtt > 0 else (self.srtt if self.srtt > 0 else 0.01)
        cdef uint64_t copied
        cdef uint32_t cap
        if rtt < 0.001:
            rtt = 0.001            # the timestamp clock's resolution
        if self.space_time == 0:
            self.space_time = now
            self.space_mark = self.bytes_read
        elif now - self.space_time >= rtt:
            copied = self.bytes_read - self.space_mark
            if copied * 2 > self.rbuf_cap and self.rbuf_cap < self.rbuf_max:
                cap = self.rbuf_cap
                while cap < copied * 2 and cap < self.rbuf_max:
                    cap *= 2
                self._grow_receive(cap)
            self.space_time = now
            self.space_mark = self.bytes_read
        # Window update (RFC 9293 §3.8.6.2.2): tell the peer once the window grew enough.
        cdef uint32_t wnd_now = self._receive_window()
        if self.state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2) and wnd_now >= 2 * wnd_before \
                and wnd_now - wnd_before >= 2 * self.mss_ip:
            self.ack_now = True
            self.stack._want_output(self)

    cdef int _grow_receive(self, uint32_t cap) except -1:
        while cap > self.rbuf_max:           # stay a power of two (rbuf_max may not be one)
            cap >>= 1
        if cap <= self.rbuf_cap:
            return 0
        cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
        if buf == NULL:
            raise MemoryError()
        # Everything from rd_seq to the old ring's end may hold data (in order or not).
        cdef uint32_t old = self.rbuf_cap
        cdef uint32_t first = old - self.rbuf_head
        memcpy(buf, self.rbuf + self.rbuf_head, first)
        memcpy(buf + first, self.rbuf, old - first)
        PyMem_Free(self.rbuf)
        self.rbuf = buf
        self.rbuf_cap = cap
        self.rbuf_head = 0
        return 0

    def shutdown(self) -> None:
        """Half-close: send FIN after the buffered data (RFC 9293 §3.10.4 CLOSE, sending side)."""
        if self.fin_queued:
            return
        if self.state in (CLOSED, LISTEN):
            raise OSError(_errno.ENOTCONN, "the connection is not open")
        if self.state == SYN_SENT:
            self.abort()
            return
        self.fin_queued = True
        self.fin_seq = self.sbuf_seq + self.sbuf_len
        if self.state in (ESTABLISHED, SYN_RECEIVED):
            self.state = FIN_WAIT_1
        elif self.state == CLOSE_WAIT:
            self.state = LAST_ACK
        self.stack._want_output(self)

    def close(self) -> None:
        """The application is done: FIN after buffered data; unread or later data → RST
        (as Linux does, so the peer learns its data was not consumed)."""
        if self.state == CLOSED:
            return
        self.app_closed = True
        if self._readable() > 0 or self.state == SYN_SENT:
            self.abort()
            return
        self.shutdown()
        if self.state == FIN_WAIT_2 and self.expire_at == 0:
            self.expire_at = self.stack.now + FIN_WAIT_2_TIMEOUT

    def abort(self) -> None:
        """Send RST (if synchronized) and drop the connection at once (RFC 9293 §3.10.5)."""
        if self.state == CLOSED:
            return
        if self.state not in (SYN_SENT, LISTEN, TIME_WAIT):
            self.stack._send_rst_for(self, self.snd_max)
        self.app_closed = True
        self._close(0)

    def counters(self) -> dict:
        """Per-connection counters: state, windows, RTT, retransmissions and bytes."""
        return {
            "state": STATE_NAMES[self.state], "cwnd": self.cwnd, "ssthresh": self.ssthresh,
            "srtt": self.srtt, "rttvar": self.rttvar, "rto": self.rto, "min_rtt": self.min_rtt,
            "snd_wnd": self.snd_wnd, "mss": self.smss,
            # the window last advertised (what the peer sees), and the ring's free space
            "rcv_wnd": self.rcv_adv - self.rcv_nxt if seq_gt(self.rcv_adv, self.rcv_nxt) else 0,
            "rcv_space": self._receive_window(),
            "send_buffer": self.sbuf_cap, "receive_buffer": self.rbuf_cap,
            "in_flight": self.snd_max - self.snd_una, "sacked": self.sacked_bytes,
            "bytes_sent": self.bytes_sent, "bytes_acked": self.bytes_acked,
            "bytes_received": self.bytes_received, "bytes_read": self.bytes_read,
            "segments_in": self.segs_in, "segments_out": self.segs_out,
            "retransmits": self.retransmits, "fast_retransmits": self.fast_retransmits,
            "timeouts": self.timeouts, "ooo_segments": self.ooo_segments,
            "dup_segments": self.dup_segments, "window_probes": self.window_probes,
            "tail_probes": self.tail_probes,
            "sack": self.sack_ok, "timestamps": self.ts_ok,
            "wscale": (self.snd_wscale, self.rcv_wscale),
            "error": self.error,
        }

    # -- internals ------------------------------------------------------------------------------

    cdef void _event(self, uint32_t ev):
        self.events |= ev
        if not self.in_touched:
            self.in_touched = True
            self.stack._touched.append(self)

    cdef void _close(self, int err):
        """Leave the stack (state CLOSED), raise TEV_CLOSED once."""
        if self.state == CLOSED and self.list_index < 0:
            return
        self.state = CLOSED
        if err and not self.error:
            self.error = err
        self.rtx_at = 0
        self.delack_at = 0
        self.expire_at = 0
        self.tlp_at = 0
        if self.listener is not None:
            self.listener._forget(self)
            self.listener = None
        self.stack._remove(self)
        self._event(TEV_CLOSED)

    cdef uint32_t _receive_window(self) noexcept:
        cdef uint32_t used = self.rcv_nxt - self.rd_seq
        if self.peer_fin:
            used -= 1
        if used >= self.rbuf_cap:
            return 0
        return self.rbuf_cap - used

    cdef uint32_t _window_field(self) noexcept:
        """The 16-bit window to advertise; never moves the right edge left (RFC 9293
        §3.8.6.2.2) and avoids silly-window advertisements."""
        cdef uint32_t wnd = self._receive_window()
        cdef uint32_t right = self.rcv_nxt + wnd
        cdef uint32_t old = self.rcv_adv - self.rcv_nxt if seq_gt(self.rcv_adv, self.rcv_nxt) else 0
        # Receiver SWS avoidance: only advance the edge by at least min(cap/2, MSS).
        if seq_gt(right, self.rcv_adv) and right - self.rcv_adv < umin(self.rbuf_cap // 2, self.mss_ip) \
                and wnd < self.rbuf_cap:
            wnd = old
        if seq_lt(self.rcv_nxt + wnd, self.rcv_adv):
            wnd = old
        cdef uint32_t field = wnd >> self.rcv_wscale
        if field > 65535:
            field = 65535
        return field

    cdef int _on_timer(self, double now) except -1:
        if self.delack_at and self.delack_at <= now:
            self.delack_at = 0
            self.ack_now = True
            self.stack._want_output(self)
        if self.expire_at and self.expire_at <= now:
            self.expire_at = 0
            if self.state == TIME_WAIT:
                self._close(0)
                return 0
            if self.state == SYN_RECEIVED:
                self._close(_errno.ETIMEDOUT)
                return 0
            if self.state == FIN_WAIT_2:
                self.stack._send_rst_for(self, self.snd_max)
                self._close(0)
                return 0
        if self.tlp_at and self.tlp_at <= now:
            self.tlp_at = 0
            if not self.in_recovery and not self.tlp_done and self.snd_una != self.snd_max \
                    and self.state >= ESTABLISHED and not self.persist:
                self.tlp_done = True
                self.tlp_send = True
                self.tail_probes += 1
                self.rtx_at = now + self.rto   # the RTO restarts behind the probe
                self.stack._want_output(self)
        if self.rtx_at and self.rtx_at <= now:
            self.rtx_at = 0
            self.tlp_at = 0
            self._retransmit_timeout(now)
        return 0

    cdef void _arm_tlp(self, double now):
        # RFC 8985 §7.2: PTO = 2 * SRTT, plus the peer's delayed-ACK time when only one
        # segment is in flight; never later than the RTO.
        cdef double pto
        if self.srtt == 0 or self.in_recovery or self.tlp_done or self.snd_una == self.snd_max:
            self.tlp_at = 0
            return
        pto = 2 * self.srtt
        if self.snd_max - self.snd_una <= self.smss:
            pto += 0.2
        if pto < 0.01:
            pto = 0.01
        if self.rtx_at and now + pto >= self.rtx_at:
            self.tlp_at = self.rtx_at      # RFC 8985 §7.2: the probe replaces the first RTO
            return
        self.tlp_at = now + pto

    cdef int _retransmit_timeout(self, double now) except -1:
        cdef uint32_t flight
        if self.state == SYN_SENT or self.state == SYN_RECEIVED and not self.syn_acked:
            self.retries += 1
            if self.retries > SYN_RETRIES:
                self._close(_errno.ETIMEDOUT)
                return 0
            self.rto = min(self.rto * 2, RTO_MAX)
            self.timeouts += 1
            self.snd_max = self.iss        # resend the SYN
            self.stack._want_output(self)
            return 0
        if self.state == CLOSED or self.state == TIME_WAIT:
            return 0
        if self.persist:
            # RFC 9293 §3.8.6.1 / RFC 1122 §4.2.2.17: probe the zero window, with no limit
            # while the peer answers; a peer that stops answering times out like data would.
            self.probes_unanswered += 1
            if self.probes_unanswered > DATA_RETRIES:
                self.stack._send_rst_for(self, self.snd_max)
                self._close(_errno.ETIMEDOUT)
                return 0
            self.window_probes += 1
            self.stack._send_probe(self)
            self.rto = min(self.rto * 2, RTO_MAX)
            self.rtx_at = now + self.rto
            return 0
        if self.snd_una == self.snd_max:
            return 0
        self.retries += 1
        self.timeouts += 1
        if self.retries > DATA_RETRIES:
            self.stack._send_rst_for(self, self.snd_max)
            self._close(_errno.ETIMEDOUT)
            return 0
        # RFC 5681 §3.1 eq. 4 / RFC 9438 §4.6: a timeout is a congestion event; then slow
        # start from one segment. RFC 2018 §8: SACK information is dropped after a timeout.
        if not self.in_recovery or self.retries == 1:
            self._congestion_event(now)
        self.cwnd = self.smss
        self.in_recovery = True
        self.rto_recovery = True
        self.recover = self.snd_max
        self.sacked_n = 0
        self.sacked_bytes = 0
        self.lost_end = self.snd_max
        self.rexmit_nxt = self.snd_una
        self.rtt_timing = False
        self.dupacks = 0
        self.rto = min(self.rto * 2, RTO_MAX)
        self.stack._want_output(self)
        return 0

    cdef void _congestion_event(self, double now):
        # RFC 9438 §4.6-4.7: multiplicative decrease with fast convergence.
        cdef double cwnd_seg = <double>self.cwnd / self.smss
        if cwnd_seg < self.w_max:
            self.w_max = cwnd_seg * (1.0 + CUBIC_BETA) / 2.0
        else:
            self.w_max = cwnd_seg
        cdef uint32_t flight = self.snd_max - self.snd_una
        cdef uint32_t base = self.cwnd if self.cwnd < flight or flight == 0 else flight
        self.ssthresh = <uint32_t>(base * CUBIC_BETA)
        if self.ssthresh < 2 * self.smss:
            self.ssthresh = 2 * self.smss
        self.epoch_start = 0

    cdef void _cwnd_on_ack(self, uint32_t acked, uint32_t flight_before, double now):
        """RFC 9438 congestion avoidance / RFC 5681 slow start, per ACK of `acked` bytes."""
        cdef double t, target, cwnd_seg, rtt, k_arg
        # RFC 7661 spirit: only grow when the window was actually used.
        if flight_before + 3 * self.smss < self.cwnd and flight_before < self.cwnd // 2:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += umin(acked, 2 * self.smss * 8)
            if self.cwnd > self.ssthresh and self.ssthresh != 0x7fffffff:
                self.cwnd = self.ssthresh
            return
        cwnd_seg = <double>self.cwnd / self.smss
        if self.epoch_start == 0:
            self.epoch_start = now
            if cwnd_seg < self.w_max:
                k_arg = (self.w_max - cwnd_seg) / CUBIC_C
                self.cubic_k = cbrt(k_arg)
                self.cubic_origin = self.w_max
            else:
                self.cubic_k = 0
                self.cubic_origin = cwnd_seg
            self.w_est = cwnd_seg
        rtt = self.srtt if self.srtt > 0 else 0.001
        t = now - self.epoch_start + rtt
        target = self.cubic_origin + CUBIC_C * (t - self.cubic_k) * (t - self.cubic_k) * (t - self.cubic_k)
        if target < cwnd_seg:
            target = cwnd_seg
        elif target > 1.5 * cwnd_seg:
            target = 1.5 * cwnd_seg
        # RFC 9438 §4.3: the Reno-friendly estimate.
        self.w_est += (3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)) * (<double>acked / self.smss) / cwnd_seg
        if self.w_est > target:
            target = self.w_est
        cwnd_seg += (target - cwnd_seg) / cwnd_seg * (<double>acked / self.smss)
        self.cwnd = <uint32_t>(cwnd_seg * self.smss)
        if self.cwnd > 0x40000000:
            self.cwnd = 0x40000000

    cdef void _rtt_sample(self, double rtt):
        # RFC 6298 §2
        if rtt < 0.0001:
            rtt = 0.0001
        if self.min_rtt == 0 or rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.srtt == 0:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * fabs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = self.srtt + max(0.001, 4 * self.rttvar)
        if self.rto < RTO_MIN:
            self.rto = RTO_MIN
        elif self.rto > RTO_MAX:
            self.rto = RTO_MAX

    cdef void _negotiate(self, Segment* s):
        """Options from the peer's SYN (RFC 9293 §3.7.1, RFC 7323, RFC 2018)."""
        self.peer_mss = s.mss if s.mss else 536
        if s.wscale >= 0:
            self.snd_wscale = s.wscale
            self.rcv_wscale = OUR_WSCALE
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
            # Without scaling a window can't exceed 64 KiB; a bigger ring is wasted.
            if self.rbuf_max > 65535:
                self.rbuf_max = 65535
        self.sack_ok = s.sack_ok and self.stack.sack_enabled
        self.ts_ok = s.has_ts and self.stack.timestamps_enabled
        if self.ts_ok:
            self.ts_recent = s.tsval
        self.smss = umin(self.peer_mss, self.mss_ip) - (12 if self.ts_ok else 0)
        if self.smss < 64:
            self.smss = 64
        self.cwnd = INITIAL_CWND_SEGMENTS * self.smss

    cdef void _set_established(self):
        self.state = ESTABLISHED
        self.retries = 0
        self.rtx_at = 0
        self.expire_at = 0              # the SYN_RECEIVED give-up deadline
        self._event(TEV_CONNECTED)

    # -- segment arrival (RFC 9293 §3.10.7) ---------------------------------------------------

    cdef int _input(self, Segment* s, double now) except -1:
        self.segs_in += 1
        if self.state == SYN_SENT:
            return self._input_syn_sent(s, now)
        cdef TcpStack stack = self.stack
        cdef uint32_t wnd = self._receive_window()
        cdef uint32_t seg_len = s.len + (1 if s.flags & F_SYN else 0) + (1 if s.flags & F_FIN else 0)
        cdef bint ok
        if self.state == SYN_RECEIVED and s.flags & F_SYN and not (s.flags & F_RST) \
                and s.seq + 1 == self.rcv_nxt:
            if s.flags & F_ACK and seq_gt(s.ack, self.snd_una) and seq_le(s.ack, self.snd_max):
                # Simultaneous open (RFC 9293 fig. 8): the peer's SYN-ACK repeats its SYN and
                # acknowledges ours; take it as the ACK that completes our SYN-RECEIVED.
                s.flags &= ~F_SYN
                s.seq += 1
                seg_len -= 1
                self.ack_now = True
            elif not (s.flags & F_ACK):
                # The peer retransmitted its SYN: our SYN-ACK was lost; send it again.
                self.snd_max = self.iss
                stack._want_output(self)
                return 0
        # RFC 7323 §5.3 PAWS: a segment with an older timestamp than ts_recent is a duplicate.
        if self.ts_ok and s.has_ts and not (s.flags & F_RST) and self.ts_recent \
                and <int32_t>(s.tsval - self.ts_recent) < 0:
            stack.drops[D_PAWS] += 1
            self._owe_ack_now()
            return 0
        # First: sequence number acceptable? (§3.10.7.4, the four cases)
        if seg_len == 0:
            if wnd == 0:
                ok = s.seq == self.rcv_nxt
            else:
                ok = seq_ge(s.seq, self.rcv_nxt) and seq_lt(s.seq, self.rcv_nxt + wnd)
        else:
            if wnd == 0:
                ok = False
            else:
                ok = (seq_ge(s.seq, self.rcv_nxt) and seq_lt(s.seq, self.rcv_nxt + wnd)) or \
                     (seq_gt(s.seq + seg_len, self.rcv_nxt) and seq_le(s.seq + seg_len, self.rcv_nxt + wnd)) or \
                     (seq_lt(s.seq, self.rcv_nxt) and seq_gt(s.seq + seg_len, self.rcv_nxt + wnd))
        if not ok:
            if wnd == 0 and s.seq == self.rcv_nxt:
                # RFC 9293 §3.10.7.4: with a zero window, still take valid ACKs and RSTs; the
                # data (and a FIN behind it) is dropped and the peer keeps probing.
                if s.len:
                    stack.drops[D_BUFFER_FULL] += 1
                    self._owe_ack_now()
                s.len = 0
                s.flags &= ~(F_FIN | F_SYN)
            else:
                if s.flags & F_RST:
                    stack.drops[D_RST_IGNORED] += 1
                    return 0
                if seq_lt(s.seq + seg_len, self.rcv_nxt) or s.seq + seg_len == self.rcv_nxt:
                    self.dup_segments += 1
                else:
                    stack.drops[D_OUT_OF_WINDOW] += 1
                self._owe_ack_now()
                if self.state == TIME_WAIT and s.flags & F_FIN:
                    self.expire_at = now + TIME_WAIT_TIMEOUT
                return 0
        # Timestamps: remember the peer's clock for echoing (RFC 7323 §4.3).
        if self.ts_ok and s.has_ts and seq_le(s.seq, self.last_ack_sent):
            self.ts_recent = s.tsval
        # Trim the front (already received) and the back (beyond the window).
        cdef uint32_t cut
        if seq_lt(s.seq, self.rcv_nxt):
            cut = self.rcv_nxt - s.seq
            if s.flags & F_SYN:
                s.flags &= ~F_SYN
                s.seq += 1
                cut -= 1
            if cut >= s.len:
                if cut > s.len:
                    s.flags &= ~F_FIN
                cut = s.len
                self.dup_segments += 1
                self.ack_now = True
            s.data += cut
            s.len -= cut
            s.seq += cut
        if s.len and seq_gt(s.seq + s.len, self.rcv_nxt + wnd):
            s.len = self.rcv_nxt + wnd - s.seq
            s.flags &= ~F_FIN
        # Second: RST (RFC 5961 §3.2: only an exact match resets; in-window gets a challenge ACK).
        if s.flags & F_RST:
            if s.seq != self.rcv_nxt:
                stack.drops[D_RST_IGNORED] += 1
                self._owe_ack_now()
                return 0
            if self.state == SYN_RECEIVED and self.listener is not None:
                self._close(0)        # back to LISTEN: the listener never saw it
            elif self.state in (CLOSING, LAST_ACK, TIME_WAIT):
                self._close(0)
            else:
                self._close(_errno.ECONNRESET if self.state != SYN_RECEIVED else _errno.ECONNREFUSED)
            return 0
        # Fourth: SYN in a synchronized state (RFC 5961 §4.2: challenge ACK).
        if s.flags & F_SYN:
            if self.state == SYN_RECEIVED and s.seq + 1 == self.rcv_nxt:
                # the peer retransmitted its SYN: our SYN-ACK was lost
                self.snd_max = self.iss
                stack._want_output(self)
                return 0
            self._owe_ack_now()
            return 0
        # Fifth: the ACK field.
        if not (s.flags & F_ACK):
            return 0
        if self.state == SYN_RECEIVED:
            if seq_gt(s.ack, self.snd_una) and seq_le(s.ack, self.snd_max):
                self.syn_acked = True
                self.snd_wnd = s.wnd << self.snd_wscale
                self.max_snd_wnd = self.snd_wnd
                self.snd_wl1 = s.seq
                self.snd_wl2 = s.ack
                self._set_established()
                if self.listener is not None:
                    if not self.listener._established(self):
                        return 0
            else:
                stack._send_rst(&self.key, s.ack, 0, F_RST)
                return 0
        if self._process_ack(s, now) != 0:
            return 0
        if self.state == CLOSED:
            return 0
        # Seventh: segment text.
        if s.len:
            if self.state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2) and not self.app_closed:
                self._receive_data(s, now)
            elif self.app_closed and self.state in (FIN_WAIT_1, FIN_WAIT_2):
                # Data after close(): nobody will read it (Linux answers with RST).
                stack.drops[D_RCV_CLOSED] += 1
                stack._send_rst_for(self, self.snd_max)
                self._close(0)
                return 0
        # Eighth: FIN.
        if s.flags & F_FIN:
            if s.seq + s.len == self.rcv_nxt:
                self._receive_fin(now)
            elif not self.peer_fin:
                self.peer_fin_pending = True
                self.peer_fin_seq = s.seq + s.len
        return 0

    cdef void _owe_ack_now(self):
        self.ack_now = True
        self.stack._want_output(self)

    cdef int _input_syn_sent(self, Segment* s, double now) except -1:
        # RFC 9293 §3.10.7.3
        cdef bint ack_ok = False
        if s.flags & F_ACK:
            if seq_le(s.ack, self.iss) or seq_gt(s.ack, self.snd_max):
                if not (s.flags & F_RST):
                    self.stack._send_rst(&self.key, s.ack, 0, F_RST)
                self.stack.drops[D_BAD_ACK] += 1
                return 0
            ack_ok = True
        if s.flags & F_RST:
            if ack_ok:
                self._close(_errno.ECONNREFUSED)
            else:
                self.stack.drops[D_RST_IGNORED] += 1
            return 0
        if not (s.flags & F_SYN):
            return 0
        self.irs = s.seq
        self.rcv_nxt = s.seq + 1
        self.rcv_adv = self.rcv_nxt
        self.last_ack_sent = self.rcv_nxt
        self.rd_seq = self.rcv_nxt
        self._negotiate(s)
        if ack_ok:
            self.snd_una = s.ack
            self.syn_acked = True
            self.snd_wnd = s.wnd           # RFC 7323 §2.2: the window in a SYN is never scaled
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1 = s.seq
            self.snd_wl2 = s.ack
            if self.ts_ok and s.has_ts and s.tsecr:
                self._rtt_sample(<double>(ts_clock(now) - (s.tsecr - self.ts_offset)) / 1000.0)
            elif self.retries == 0 and self.rtt_timing:
                self._rtt_sample(now - self.rtt_time)
            self.rtt_timing = False
            self._set_established()
            self._owe_ack_now()
            if s.len or s.flags & F_FIN:
                s.seq += 1
                if s.len:
                    self._receive_data(s, now)
                if s.flags & F_FIN:
                    self._receive_fin(now)
        else:
            # Simultaneous open: SYN-RECEIVED, resend our SYN as a SYN-ACK.
            self.state = SYN_RECEIVED
            self.snd_wnd = s.wnd
            self.snd_max = self.iss
            self.stack._want_output(self)
        return 0

    cdef int _process_ack(self, Segment* s, double now) except -1:
        """RFC 9293 §3.10.7.4 fifth step for synchronized states, plus RFC 6675/5681 loss
        recovery and the congestion window. Returns 1 when the segment must be dropped."""
        cdef uint32_t acked, freed, flight_before, data_end, old_wnd
        if seq_gt(s.ack, self.snd_max):
            self.stack.drops[D_BAD_ACK] += 1
            self._owe_ack_now()
            return 1
        flight_before = self.snd_max - self.snd_una
        old_wnd = self.snd_wnd
        self.probes_unanswered = 0
        # Window update (RFC 9293 §3.10.7.4: SND.WL1/WL2 rule).
        if seq_lt(self.snd_wl1, s.seq) or (self.snd_wl1 == s.seq and seq_le(self.snd_wl2, s.ack)):
            self.snd_wnd = s.wnd << self.snd_wscale
            self.snd_wl1 = s.seq
            self.snd_wl2 = s.ack
            if self.snd_wnd > self.max_snd_wnd:
                self.max_snd_wnd = self.snd_wnd
            if self.snd_wnd > old_wnd:
                self.stack._want_output(self)
        if self.sack_ok and s.nsack:
            self._update_scoreboard(s)
        if seq_gt(s.ack, self.snd_una):
            acked = s.ack - self.snd_una
            self.snd_una = s.ack
            if seq_lt(self.rexmit_nxt, self.snd_una):
                self.rexmit_nxt = self.snd_una
            # Free acknowledged bytes from the send ring (the FIN has no byte in it).
            if seq_gt(s.ack, self.sbuf_seq):
                freed = umin(s.ack - self.sbuf_seq, self.sbuf_len)
                self.sbuf_head = (self.sbuf_head + freed) & (self.sbuf_cap - 1)
                self.sbuf_len -= freed
                self.sbuf_seq += freed
                self.bytes_acked += freed
                if freed:
                    self._event(TEV_WRITABLE)
            # RTT (RFC 7323 §4.1 with timestamps, else Karn's one timed segment).
            if self.ts_ok and s.has_ts and s.tsecr:
                self._rtt_sample(<double>(ts_clock(now) - (s.tsecr - self.ts_offset)) / 1000.0)
            elif self.rtt_timing and seq_gt(s.ack, self.rtt_seq):
                self.rtt_timing = False
                self._rtt_sample(now - self.rtt_time)
            self.retries = 0
            self.dupacks = 0
            self._trim_scoreboard()
            if self.in_recovery:
                if seq_ge(s.ack, self.recover):
                    # RFC 6582 §3.2 step 3 / RFC 6675: full ACK ends recovery.
                    self.in_recovery = False
                    self.lost_end = self.snd_una
                    if self.cwnd > self.ssthresh:
                        self.cwnd = self.ssthresh
                elif not self.sack_ok:
                    # NewReno partial ACK: the next segment is lost too.
                    self.lost_end = seq_max(self.lost_end, self.snd_una + self.smss)
                    if seq_lt(self.rexmit_nxt, self.snd_una):
                        self.rexmit_nxt = self.snd_una
                if self.in_recovery and self.rto_recovery and self.cwnd < self.ssthresh:
                    # slow start back up after a timeout, still retransmitting lost data
                    self.cwnd += umin(acked, 2 * self.smss)
            else:
                self._cwnd_on_ack(acked, flight_before, now)
            self.tlp_done = False
            if self.snd_una == self.snd_max:
                self.rtx_at = 0
                self.tlp_at = 0
            else:
                self.rtx_at = now + self.rto
                self._arm_tlp(now)
            if self.persist and self.snd_wnd:
                self.persist = False
            # Our FIN acknowledged?
            if self.fin_sent and self.snd_una == self.fin_seq + 1:
                if self.state == FIN_WAIT_1:
                    self.state = FIN_WAIT_2
                    if self.app_closed:
                        self.expire_at = now + FIN_WAIT_2_TIMEOUT
                elif self.state == CLOSING:
                    self.state = TIME_WAIT
                    self.expire_at = now + TIME_WAIT_TIMEOUT
                    self.rtx_at = 0
                elif self.state == LAST_ACK:
                    self._close(0)
                    return 1
            self.stack._want_output(self)
        elif s.ack == self.snd_una and s.len == 0 and not (s.flags & (F_SYN | F_FIN)) \
                and self.snd_una != self.snd_max and self.snd_wnd == old_wnd:
            # RFC 5681 §2 duplicate ACK
            self.dupacks += 1
        # Loss detection: RFC 6675 IsLost via the scoreboard, or three duplicate ACKs.
        if self.snd_una != self.snd_max:
            self._detect_loss(now)
        return 0

    cdef void _update_scoreboard(self, Segment* s):
        cdef uint32_t i, left, right
        cdef int j, k
        for i in range(s.nsack):
            left = s.sack[2 * i]
            right = s.sack[2 * i + 1]
            self.sack_blocks_received += 1
            # Only blocks above the cumulative ACK and within what we sent (RFC 2018 §5 / 6675).
            if not seq_lt(left, right) or seq_le(right, s.ack) or seq_gt(right, self.snd_max):
                continue
            if seq_lt(left, s.ack):
                left = s.ack
            self._sack_insert(left, right)
        self._recount_sacked()

    cdef void _sack_insert(self, uint32_t left, uint32_t right):
        cdef int i = 0, j
        # find the first range whose end >= left
        while i < self.sacked_n and seq_lt(self.sacked[i].end, left):
            i += 1
        if i < self.sacked_n and seq_le(self.sacked[i].start, right):
            # overlaps or touches: merge forward
            self.sacked[i].start = seq_min(self.sacked[i].start, left)
            self.sacked[i].end = seq_max(self.sacked[i].end, right)
            j = i + 1
            while j < self.sacked_n and seq_le(self.sacked[j].start, self.sacked[i].end):
                self.sacked[i].end = seq_max(self.sacked[i].end, self.sacked[j].end)
                j += 1
            if j > i + 1:
                memcpy(&self.sacked[i + 1], &self.sacked[j], (self.sacked_n - j) * sizeof(Range))
                self.sacked_n -= j - i - 1
            return
        if self.sacked_n == MAX_SACK_BLOCKS:
            return       # scoreboard full: this block is forgotten (it is only an optimisation)
        for j in range(self.sacked_n, i, -1):
            self.sacked[j] = self.sacked[j - 1]
        self.sacked[i].start = left
        self.sacked[i].end = right
        self.sacked_n += 1

    cdef void _trim_scoreboard(self):
        cdef int i = 0, n = 0
        for i in range(self.sacked_n):
            if seq_le(self.sacked[i].end, self.snd_una):
                continue
            self.sacked[n] = self.sacked[i]
            if seq_lt(self.sacked[n].start, self.snd_una):
                self.sacked[n].start = self.snd_una
            n += 1
        self.sacked_n = n
        self._recount_sacked()

    cdef void _recount_sacked(self):
        cdef uint32_t total = 0
        cdef int i
        for i in range(self.sacked_n):
            total += self.sacked[i].end - self.sacked[i].start
        self.sacked_bytes = total

    cdef void _detect_loss(self, double now):
        cdef uint32_t lost = self.snd_una
        cdef uint32_t above = 0
        cdef uint32_t flight = self.snd_max - self.snd_una
        cdef uint32_t thresh = 2 * self.smss
        cdef int i
        # RFC 5827 early retransmit: with fewer than 4 segments outstanding and nothing new to
        # send, three duplicate ACKs can never come; lower the threshold to (segments - 1).
        if flight < 4 * self.smss and self.snd_max == self.sbuf_seq + self.sbuf_len + \
                (1 if self.fin_sent else 0):
            thresh = self.smss if flight > 2 * self.smss else 0
        # RFC 6675 §4 IsLost(seq): more than (DupThresh - 1) * SMSS bytes SACKed above it.
        if self.sack_ok and self.sacked_n:
            for i in range(self.sacked_n - 1, -1, -1):
                above += self.sacked[i].end - self.sacked[i].start
                if above > thresh:
                    lost = self.sacked[i].start
                    break
        if seq_gt(lost, self.snd_una) or self.dupacks >= 3:
            if not self.in_recovery:
                # RFC 6675 §5 step 4 / RFC 5681 §3.2: enter fast recovery.
                self.in_recovery = True
                self.recover = self.snd_max
                self.fast_retransmits += 1
                self._congestion_event(now)
                self.cwnd = self.ssthresh
                self.rexmit_nxt = self.snd_una
                self.lost_end = self.snd_una
                self.rto_recovery = False
            if seq_gt(lost, self.lost_end):
                self.lost_end = lost
            if not seq_gt(self.lost_end, self.snd_una):
                # no SACK information: the first unacknowledged segment is lost
                self.lost_end = self.snd_una + umin(self.smss, self.snd_max - self.snd_una)
            self.stack._want_output(self)

    cdef uint32_t _pipe(self) noexcept:
        """RFC 6675 §4 SetPipe, by ranges: in flight minus SACKed minus lost-not-resent."""
        cdef uint32_t flight = self.snd_max - self.snd_una
        cdef uint32_t lost = 0
        cdef uint32_t start
        if self.in_recovery and seq_lt(self.rexmit_nxt, self.lost_end):
            start = seq_max(self.rexmit_nxt, self.snd_una)
            if seq_lt(start, self.lost_end):
                lost = self._unsacked_between(start, self.lost_end)
        cdef uint32_t used = self.sacked_bytes + lost
        return flight - used if used < flight else 0

    cdef uint32_t _unsacked_between(self, uint32_t a, uint32_t b) noexcept:
        cdef uint32_t total = b - a
        cdef uint32_t s, e
        cdef int i
        for i in range(self.sacked_n):
            s = seq_max(self.sacked[i].start, a)
            e = seq_min(self.sacked[i].end, b)
            if seq_lt(s, e):
                total -= e - s
        return total

    cdef void _receive_data(self, Segment* s, double now):
        cdef uint32_t end, space, off, pos, first, n
        cdef double rtt
        cdef int i, j
        cdef uint32_t mask = self.rbuf_cap - 1
        n = s.len
        # The ring holds bytes from rd_seq; refuse what does not fit (counted).
        space = self.rbuf_cap - (s.seq - self.rd_seq) if seq_lt(s.seq, self.rd_seq + self.rbuf_cap) else 0
        if n > space:
            self.stack.drops[D_BUFFER_FULL] += 1
            n = space
            if n == 0:
                self._owe_ack_now()
                return
        off = s.seq - self.rd_seq
        pos = (self.rbuf_head + off) & mask
        first = umin(n, self.rbuf_cap - pos)
        memcpy(self.rbuf + pos, s.data, first)
        if first < n:
            memcpy(self.rbuf, s.data + first, n - first)
        end = s.seq + n
        self.bytes_received += n
        if self.ts_ok and s.has_ts and s.tsecr:
            # Linux tcp_rcv_rtt_measure_ts: the echo of our clock bounds the RTT from above.
            rtt = <double>(ts_clock(now) - (s.tsecr - self.ts_offset)) / 1000.0
            if rtt >= 0 and (self.rcv_rtt == 0 or rtt < self.rcv_rtt):
                self.rcv_rtt = rtt
        if s.seq == self.rcv_nxt:
            self.rcv_nxt = end
            if self.ooo_n:
                # the hole filled: merge the ranges now in order (RFC 5681 §4.2: ACK at once)
                i = 0
                while i < self.ooo_n and seq_le(self.ooo[i].start, self.rcv_nxt):
                    self.rcv_nxt = seq_max(self.rcv_nxt, self.ooo[i].end)
                    i += 1
                if i:
                    for j in range(i, self.ooo_n):
                        self.ooo[j - i] = self.ooo[j]
                    self.ooo_n -= i
                self.ack_now = True
                if self.peer_fin_pending and self.rcv_nxt == self.peer_fin_seq:
                    self._receive_fin(now)
            self.segs_unacked += 1
            self._event(TEV_READABLE)
            self.stack._want_output(self)
        else:
            self.ooo_segments += 1
            if not self._ooo_insert(s.seq, end):
                self.stack.drops[D_OOO_OVERFLOW] += 1
            self.ooo_recent_start = s.seq
            self._owe_ack_now()     # RFC 5681 §4.2: out-of-order data → immediate (dup) ACK

    cdef bint _ooo_insert(self, uint32_t left, uint32_t right):
        cdef int i = 0, j
        while i < self.ooo_n and seq_lt(self.ooo[i].end, left):
            i += 1
        if i < self.ooo_n and seq_le(self.ooo[i].start, right):
            self.ooo[i].start = seq_min(self.ooo[i].start, left)
            self.ooo[i].end = seq_max(self.ooo[i].end, right)
            j = i + 1
            while j < self.ooo_n and seq_le(self.ooo[j].start, self.ooo[i].end):
                self.ooo[i].end = seq_max(self.ooo[i].end, self.ooo[j].end)
                j += 1
            if j > i + 1:
                memcpy(&self.ooo[i + 1], &self.ooo[j], (self.ooo_n - j) * sizeof(Range))
                self.ooo_n -= j - i - 1
            return True
        if self.ooo_n == MAX_SACK_BLOCKS:
            return False
        for j in range(self.ooo_n, i, -1):
            self.ooo[j] = self.ooo[j - 1]
        self.ooo[i].start = left
        self.ooo[i].end = right
        self.ooo_n += 1
        return True

    cdef void _receive_fin(self, double now):
        # RFC 9293 §3.10.7.4 eighth step
        if self.peer_fin:
            self._owe_ack_now()
            return
        self.peer_fin = True
        self.peer_fin_pending = False
        self.rcv_nxt += 1
        self._owe_ack_now()
        self._event(TEV_EOF)
        if self.state in (SYN_RECEIVED, ESTABLISHED):
            self.state = CLOSE_WAIT
        elif self.state == FIN_WAIT_1:
            if self.fin_sent and self.snd_una == self.fin_seq + 1:
                self.state = TIME_WAIT
                self.expire_at = now + TIME_WAIT_TIMEOUT
                self.rtx_at = 0
            else:
                self.state = CLOSING
        elif self.state == FIN_WAIT_2:
            self.state = TIME_WAIT
            self.expire_at = now + TIME_WAIT_TIMEOUT
            self.rtx_at = 0

    # -- output -------------------------------------------------------------------------------

    cdef int _output(self, PacketBatch tx, double now) except -1:
        """Cut what is due into `tx`. Returns 1 when tx filled up before we were done."""
        cdef TcpStack stack = self.stack
        cdef uint32_t sent_any = 0
        cdef uint32_t pipe, room, wnd_end, unsent_start, data_end, n, seq, hole_end, limit
        cdef uint32_t in_flight
        cdef uint8_t flags
        cdef int i
        if self.state == CLOSED:
            return 0
        if self.state == SYN_SENT or (self.state == SYN_RECEIVED and not self.syn_acked):
            if self.snd_max == self.iss:
                if tx.count >= tx.slots:
                    return 1
                flags = F_SYN if self.state == SYN_SENT else (F_SYN | F_ACK)
                stack._emit(self, tx, self.iss, flags, 0, now)
                if self.retries == 0:
                    self.rtt_timing = True
                    self.rtt_time = now
                self.snd_max = self.iss + 1
                self.rtx_at = now + self.rto
                if self.state == SYN_RECEIVED and self.expire_at == 0:
                    self.expire_at = now + 75.0
            elif self.ack_now and self.state == SYN_RECEIVED:
                self.ack_now = False
            return 0
        if self.state == TIME_WAIT:
            if self.ack_now:
                if tx.count >= tx.slots:
                    return 1
                stack._emit(self, tx, self.snd_max, F_ACK, 0, now)
            return 0
        data_end = self.sbuf_seq + self.sbuf_len
        if self.tlp_send:
            if tx.count >= tx.slots:
                return 1
            self.tlp_send = False
            if self.snd_una != self.snd_max:
                # RFC 8985 §7.3: send new data if the window allows, else resend the last segment
                wnd_end = self.snd_una + self.snd_wnd
                if seq_lt(self.snd_max, data_end) and seq_gt(wnd_end, self.snd_max):
                    n = umin(umin(data_end - self.snd_max, self.smss), wnd_end - self.snd_max)
                    self._send_range(tx, self.snd_max, n, data_end, now, False)
                else:
                    seq = seq_max(self.snd_una, seq_min(self.snd_max, data_end) - self.smss) \
                        if seq_gt(seq_min(self.snd_max, data_end), self.snd_una + self.smss) else self.snd_una
                    n = seq_min(self.snd_max, data_end) - seq if seq_lt(seq, data_end) else 0
                    if n or (self.fin_sent and seq == self.fin_seq):
                        self._send_range(tx, seq, n, data_end, now, True)
                sent_any += 1
        while True:
            if tx.count >= tx.slots:
                return 1
            pipe = self._pipe()
            # 1. RFC 6675 §5 NextSeg rule 1: retransmit lost, unSACKed data.
            if self.in_recovery and seq_lt(seq_max(self.rexmit_nxt, self.snd_una), self.lost_end) \
                    and pipe < self.cwnd:
                seq = seq_max(self.rexmit_nxt, self.snd_una)
                hole_end = self.lost_end
                for i in range(self.sacked_n):
                    if seq_le(self.sacked[i].end, seq):
                        continue
                    if seq_le(self.sacked[i].start, seq):
                        seq = self.sacked[i].end      # inside a SACKed block: skip it
                        continue
                    hole_end = seq_min(hole_end, self.sacked[i].start)
                    break
                if seq_lt(seq, self.lost_end) and seq_lt(seq, self.snd_max):
                    hole_end = seq_min(hole_end, self.snd_max)
                    n = umin(hole_end - seq, self.smss)
                    if seq_ge(seq, data_end):
                        n = 0
                    elif seq_gt(seq + n, data_end):
                        n = data_end - seq
                    if n or (self.fin_sent and seq == self.fin_seq):
                        n = self._send_range(tx, seq, n, data_end, now, True)
                        self.rexmit_nxt = seq + n if n else seq + 1
                        sent_any += 1
                        continue
                self.rexmit_nxt = self.lost_end
            # 2. New data within min(cwnd, the peer's window).
            in_flight = self.snd_max - self.snd_una
            if seq_lt(self.snd_max, data_end):
                wnd_end = self.snd_una + self.snd_wnd
                room = wnd_end - self.snd_max if seq_gt(wnd_end, self.snd_max) else 0
                if self.cwnd > pipe:
                    room = umin(room, self.cwnd - pipe)
                else:
                    room = 0
                n = umin(umin(data_end - self.snd_max, self.smss), room)
                if n and (n == self.smss or n == data_end - self.snd_max or in_flight == 0):
                    # Sender SWS avoidance (RFC 9293 §3.8.6.2.1): no runt segments while
                    # data is in flight, unless it is the end of what we have.
                    self._send_range(tx, self.snd_max, n, data_end, now, False)
                    sent_any += 1
                    continue
                if self.snd_wnd == 0 and in_flight == 0 and not self.persist:
                    # Zero window: arm the persist timer (RFC 9293 §3.8.6.1).
                    self.persist = True
                    self.rtx_at = now + self.rto
            # 3. Our FIN once all data was sent.
            if self.fin_queued and not self.fin_sent and self.snd_max == data_end:
                self._send_range(tx, self.snd_max, 0, data_end, now, False)
                sent_any += 1
                continue
            break
        if (self.ack_now or self.segs_unacked >= 2) and not sent_any:
            if tx.count >= tx.slots:
                return 1
            stack._emit(self, tx, self.snd_max, F_ACK, 0, now)
        elif self.segs_unacked == 1 and not sent_any and self.delack_at == 0:
            self.delack_at = now + DELACK_TIMEOUT
        return 0

    cdef uint32_t _send_range(self, PacketBatch tx, uint32_t seq, uint32_t n, uint32_t data_end,
                              double now, bint rexmit) except? 0xffffffff:
        """Emit data [seq, seq+n) (plus FIN when it ends at our FIN); returns the payload
        length actually sent (options may leave room for less)."""
        cdef uint8_t flags = F_ACK
        if n and seq + n == data_end:
            flags |= F_PSH
        if self.fin_queued and seq + n == self.fin_seq:
            flags |= F_FIN
        cdef uint32_t sent = self.stack._emit(self, tx, seq, flags, n, now)
        if sent < n:
            flags &= ~(F_FIN | F_PSH)
            n = sent
        cdef uint32_t end = seq + n + (1 if flags & F_FIN else 0)
        if flags & F_FIN:
            self.fin_sent = True
        if rexmit or seq_lt(seq, self.snd_max):
            self.retransmits += 1
            if self.rtt_timing and seq_le(seq, self.rtt_seq):
                self.rtt_timing = False     # Karn: never time a retransmitted segment
        else:
            self.bytes_sent += n
            if not self.rtt_timing and not self.ts_ok:
                self.rtt_timing = True
                self.rtt_seq = seq
                self.rtt_time = now
        if seq_gt(end, self.snd_max):
            self.snd_max = end
        if self.rtx_at == 0 or self.persist:
            self.persist = False
            self.rtx_at = now + self.rto
        if not rexmit and self.tlp_at == 0:
            self._arm_tlp(now)
        return n


# -- listener --------------------------------------------------------------------------------

@cython.final
cdef class TcpListener:
    """A passive-open port: half-open connections up to ``syn_backlog``, established ones wait
    in the accept queue (up to ``backlog``) until :meth:`accept`."""
    cdef TcpStack stack
    cdef readonly bytes address          # b"" = every local address of the family
    cdef readonly int port
    cdef readonly int backlog
    cdef readonly int syn_backlog
    cdef list _half_open                 # SYN_RECEIVED connections, oldest first
    cdef list _queue                     # established, not yet accepted
    cdef public object owner
    cdef bint in_touched
    cdef uint32_t events
    cdef readonly bint closed
    cdef readonly uint64_t accepted, syn_received, syn_evicted, queue_overflows

    def __cinit__(self, TcpStack stack, bytes address, int port, int backlog, int syn_backlog):
        self.stack = stack
        self.address = address
        self.port = port
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self._half_open = []
        self._queue = []

    def take_events(self) -> int:
        cdef uint32_t ev = self.events
        self.events = 0
        return ev

    def accept(self):
        """The oldest established connection not yet accepted, or None."""
        if not self._queue:
            return None
        self.accepted += 1
        return self._queue.pop(0)

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset."""
        if self.closed:
            return
        self.closed = True
        self.stack._listeners.pop((self.address, self.port), None)
        self.stack._update_listen_bitmap(self.port)
        cdef TcpConn c
        for c in list(self._queue) + list(self._half_open):
            c.listener = None
            c.abort()
        self._queue.clear()
        self._half_open.clear()

    cdef void _forget(self, TcpConn c):
        try:
            self._half_open.remove(c)
        except ValueError:
            pass
        try:
            self._queue.remove(c)
        except ValueError:
            pass

    cdef bint _established(self, TcpConn c):
        try:
            self._half_open.remove(c)
        except ValueError:
            pass
        if len(self._queue) >= self.backlog:
            # Accept queue full: Linux drops the ACK and lets the peer retry; we reset instead
            # so the peer learns at once (no state kept).
            self.queue_overflows += 1
            self.stack.drops[D_ACCEPT_QUEUE] += 1
            c.listener = None
            c.abort()
            return False
        c.listener = None
        self._queue.append(c)
        self.events |= TEV_ACCEPT
        if not self.in_touched:
            self.in_touched = True
            self.stack._touched.append(self)
        return True


# -- the stack ---------------------------------------------------------------------------------


@cython.final
cdef class TcpStack:
    """Every TCP connection and listener of one interface, and the IP-level demultiplexer.

    `mtu`: the inner MTU (1280 in Coder's tailnet). Buffers: `send_buffer` and
    `receive_buffer` are per-connection maxima (the receive ring starts at
    `receive_buffer_initial` and grows as the application drains it).
    """
    cdef readonly uint32_t mtu
    cdef readonly uint32_t send_buffer
    cdef readonly uint32_t receive_buffer
    cdef readonly uint32_t receive_buffer_initial
    cdef public bint sack_enabled
    cdef public bint timestamps_enabled
    cdef dict _conns                     # key bytes -> TcpConn (owns what the tables point to)
    cdef dict _listeners                 # (address bytes or b"", port) -> TcpListener
    cdef list _touched
    cdef list _zombies                   # removed connections still in out_list (kept alive)
    cdef list _rsts                      # bare RSTs to send: (key bytes, seq, ack, flags)
    cdef list _probes                    # connections owing a zero-window probe
    cdef bytes _secret
    cdef void** table
    cdef uint32_t table_mask
    cdef uint32_t table_used
    cdef void** all_conns
    cdef uint32_t all_n, all_cap
    cdef void** out_list
    cdef uint32_t out_n, out_cap
    cdef uint8_t listen_bitmap[8192]
    cdef uint8_t local4[MAX_LOCAL_ADDRESSES][4]
    cdef uint8_t local6[MAX_LOCAL_ADDRESSES][16]
    cdef int n4, n6
    cdef uint16_t ip_id
    cdef public double now
    cdef uint64_t drops[D_COUNT]
    cdef readonly uint64_t segments_in, segments_out, resets_sent, non_tcp, conns_opened

    def __cinit__(self, uint32_t mtu=1280, uint32_t send_buffer=4 << 20,
                  uint32_t receive_buffer=4 << 20, uint32_t receive_buffer_initial=256 << 10,
                  bytes secret=None):
        if not 576 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} out of range 576-65535")
        for value, name in ((send_buffer, "send_buffer"), (receive_buffer, "receive_buffer"),
                            (receive_buffer_initial, "receive_buffer_initial")):
            if value < 4096 or value > (1 << 30):
                raise ValueError(f"{name} {value} out of range 4096-2**30")
        self.mtu = mtu
        self.send_buffer = send_buffer
        # Rings index with a mask: capacities are powers of two (rounded down).
        self.receive_buffer = 1 << (receive_buffer.bit_length() - 1)
        self.receive_buffer_initial = min(1 << (receive_buffer_initial.bit_length() - 1),
                                          self.receive_buffer)
        self.sack_enabled = True
        self.timestamps_enabled = True
        self._conns = {}
        self._listeners = {}
        self._touched = []
        self._zombies = []
        self._rsts = []
        self._probes = []
        self._secret = secret if secret is not None else _os.urandom(32)
        self.table_mask = 1023
        self.table = <void**>PyMem_Calloc(self.table_mask + 1, sizeof(void*))
        self.all_cap = 256
        self.all_conns = <void**>PyMem_Malloc(self.all_cap * sizeof(void*))
        self.out_cap = 256
        self.out_list = <void**>PyMem_Malloc(self.out_cap * sizeof(void*))
        if self.table == NULL or self.all_conns == NULL or self.out_list == NULL:
            raise MemoryError()
        memset(self.listen_bitmap, 0, sizeof(self.listen_bitmap))
        memset(self.drops, 0, sizeof(self.drops))

    def __dealloc__(self):
        PyMem_Free(self.table)
        PyMem_Free(self.all_conns)
        PyMem_Free(self.out_list)

    def set_addresses(self, list addresses not None) -> None:
        """The interface's own addresses (4- or 16-byte ``bytes``); others are not ours."""
        n4 = n6 = 0
        for a in addresses:
            if len(a) == 4 and n4 < MAX_LOCAL_ADDRESSES:
                memcpy(self.local4[n4], <const uint8_t*>a, 4)
                n4 += 1
            elif len(a) == 16 and n6 < MAX_LOCAL_ADDRESSES:
                memcpy(self.local6[n6], <const uint8_t*>a, 16)
                n6 += 1
            else:
                raise ValueError(f"bad or too many addresses: {a!r}")
        self.n4 = n4
        self.n6 = n6

    cdef bint _is_local(self, const uint8_t* addr, uint8_t family) noexcept:
        cdef int i
        if family == 4:
            for i in range(self.n4):
                if memcmp(self.local4[i], addr, 4) == 0:
                    return True
        else:
            for i in range(self.n6):
                if memcmp(self.local6[i], addr, 16) == 0:
                    return True
        return False

    cdef bytes _isn_hash(self, const ConnKey* key):
        return _hashlib.blake2s((<const uint8_t*>key)[:sizeof(ConnKey)], key=self._secret,
                                digest_size=8).digest()

    # -- tables ---------------------------------------------------------------------------------

    cdef TcpConn _lookup(self, const ConnKey* key, uint32_t h):
        cdef uint32_t i = h & self.table_mask
        cdef void* v
        cdef TcpConn c
        while True:
            v = self.table[i]
            if v == NULL:
                return None
            if v != <void*>1:
                c = <TcpConn>v
                if c.hash == h and memcmp(&c.key, key, sizeof(ConnKey)) == 0:
                    return c
            i = (i + 1) & self.table_mask

    cdef int _table_insert(self, TcpConn c) except -1:
        """Insert `c`, which must not be in ``_conns`` yet (a rebuild re-inserts those)."""
        cdef uint32_t i
        if (self.table_used + 1) * 2 > self.table_mask + 1:
            self._table_rebuild()
        i = c.hash & self.table_mask
        while self.table[i] != NULL and self.table[i] != <void*>1:
            i = (i + 1) & self.table_mask
        if self.table[i] == NULL:
            self.table_used += 1
        self.table[i] = <void*>c
        return 0

    cdef int _table_rebuild(self) except -1:
        cdef uint32_t cap = 1024
        while cap < (len(self._conns) + 1) * 4:
            cap *= 2
        PyMem_Free(self.table)
        self.table = <void**>PyMem_Calloc(cap, sizeof(void*))
        if self.table == NULL:
            raise MemoryError()
        self.table_mask = cap - 1
        self.table_used = 0
        cdef uint32_t i
        cdef TcpConn c
        for c in self._conns.values():
            i = c.hash & self.table_mask
            while self.table[i] != NULL:
                i = (i + 1) & self.table_mask
            self.table[i] = <void*>c
            self.table_used += 1
        return 0

    cdef void _table_erase(self, TcpConn c):
        cdef uint32_t i = c.hash & self.table_mask
        cdef void* v
        while True:
            v = self.table[i]
            if v == NULL:
                return
            if v == <void*>c:
                self.table[i] = <void*>1
                return
            i = (i + 1) & self.table_mask

    cdef int _add(self, TcpConn c) except -1:
        cdef bytes k = (<const uint8_t*>&c.key)[:sizeof(ConnKey)]
        self._table_insert(c)        # before _conns: a rebuild must not insert c twice
        self._conns[k] = c
        if self.all_n == self.all_cap:
            self.all_cap *= 2
            self.all_conns = <void**>PyMem_Realloc(self.all_conns, self.all_cap * sizeof(void*))
            if self.all_conns == NULL:
                raise MemoryError()
        c.list_index = self.all_n
        self.all_conns[self.all_n] = <void*>c
        self.all_n += 1
        self.conns_opened += 1
        return 0

    cdef void _remove(self, TcpConn c):
        cdef TcpConn last
        if c.list_index < 0:
            return
        self._table_erase(c)
        last = <TcpConn>self.all_conns[self.all_n - 1]
        self.all_conns[c.list_index] = <void*>last
        last.list_index = c.list_index
        self.all_n -= 1
        c.list_index = -1
        # The output list may still point at c: it is skipped there (list_index < 0) and
        # removed at the next output(); keep c alive until then.
        if c.in_output:
            self._zombies.append(c)
        self._conns.pop((<const uint8_t*>&c.key)[:sizeof(ConnKey)], None)

    cdef void _want_output(self, TcpConn c):
        if c.in_output or c.list_index < 0:
            return
        if self.out_n == self.out_cap:
            self.out_cap *= 2
            self.out_list = <void**>PyMem_Realloc(self.out_list, self.out_cap * sizeof(void*))
        c.in_output = True
        self.out_list[self.out_n] = <void*>c
        self.out_n += 1

    cdef void _update_listen_bitmap(self, int port):
        cdef bint any_left = False
        for (addr, p) in self._listeners:
            if p == port:
                any_left = True
                break
        if any_left:
            self.listen_bitmap[port >> 3] |= <uint8_t>(1 << (port & 7))
        else:
            self.listen_bitmap[port >> 3] &= <uint8_t>~(1 << (port & 7))

    # -- Python API ---------------------------------------------------------------------------

    def listen(self, int port, bytes address=b"", int backlog=128, int syn_backlog=256):
        """Open a listener on `port` (address b"" = all local addresses). Raises OSError
        (EADDRINUSE) when taken. Port 0 is the catch-all listener: it takes SYNs for every
        port that has no listener of its own (only with address b""; the accepted
        connection's ``local`` says which port was dialed)."""
        if not 0 <= port < 65536:
            raise ValueError(f"port {port} out of range 0-65535")
        if port == 0 and address != b"":
            raise ValueError("the catch-all listener (port 0) takes every local address")
        if (address, port) in self._listeners or (b"", port) in self._listeners or \
                (address == b"" and any(p == port for (_, p) in self._listeners)):
            raise OSError(_errno.EADDRINUSE, f"TCP port {port} is already listening")
        if backlog < 1:
            backlog = 1
        listener = TcpListener(self, address, port, backlog, max(syn_backlog, backlog))
        self._listeners[(address, port)] = listener
        self._update_listen_bitmap(port)
        return listener

    def connect(self, bytes local not None, int local_port, bytes remote not None,
                int remote_port, double now) -> TcpConn:
        """Active open (RFC 9293 §3.10.1): a connection in SYN_SENT; the SYN goes out at the
        next ``output``. Raises OSError(EADDRINUSE) if that 4-tuple exists."""
        if len(local) != len(remote) or len(local) not in (4, 16):
            raise ValueError("local and remote must both be 4 or 16 bytes")
        if not (0 < local_port < 65536 and 0 < remote_port < 65536):
            raise ValueError("ports must be 1-65535")
        cdef ConnKey key
        self._make_key(&key, local, local_port, remote, remote_port)
        if self._lookup(&key, key_hash(&key)) is not None:
            raise OSError(_errno.EADDRINUSE, "that connection already exists")
        self.now = now
        cdef TcpConn c = TcpConn()
        c._setup(self, &key, now)
        c.state = SYN_SENT
        self._add(c)
        self._want_output(c)
        return c

    def in_use(self, bytes local not None, int local_port, bytes remote not None, int remote_port) -> bool:
        cdef ConnKey key
        self._make_key(&key, local, local_port, remote, remote_port)
        return self._lookup(&key, key_hash(&key)) is not None

    cdef void _make_key(self, ConnKey* key, bytes local, int lport, bytes remote, int rport):
        memset(key, 0, sizeof(ConnKey))
        key.family = 4 if len(local) == 4 else 6
        key.lport = lport
        key.rport = rport
        memcpy(key.laddr, <const uint8_t*>local, len(local))
        memcpy(key.raddr, <const uint8_t*>remote, len(remote))

    def take_touched(self) -> list:
        """Connections and listeners with new events since the last call (each once)."""
        cdef list out = self._touched
        self._touched = []
        for obj in out:
            if isinstance(obj, TcpConn):
                (<TcpConn>obj).in_touched = False
            else:
                (<TcpListener>obj).in_touched = False
        return out

    @property
    def has_output(self) -> bool:
        return self.out_n > 0 or bool(self._rsts) or bool(self._probes)

    def get_timer(self):
        """The earliest deadline among all connections (seconds), or None."""
        cdef double best = 0, d
        cdef uint32_t i
        cdef TcpConn c
        for i in range(self.all_n):
            c = <TcpConn>self.all_conns[i]
            d = c.rtx_at
            if d and (best == 0 or d < best):
                best = d
            d = c.delack_at
            if d and (best == 0 or d < best):
                best = d
            d = c.expire_at
            if d and (best == 0 or d < best):
                best = d
            d = c.tlp_at
            if d and (best == 0 or d < best):
                best = d
        return best if best else None

    def handle_timer(self, double now) -> None:
        """Run every expired connection timer; what it wants to send goes out at ``output``."""
        self.now = now
        cdef uint32_t i = 0
        cdef TcpConn c
        cdef list due = []
        for i in range(self.all_n):
            c = <TcpConn>self.all_conns[i]
            if (c.rtx_at and c.rtx_at <= now) or (c.delack_at and c.delack_at <= now) or \
                    (c.expire_at and c.expire_at <= now) or (c.tlp_at and c.tlp_at <= now):
                due.append(c)
        for c in due:
            c._on_timer(now)

    def connections(self) -> list:
        return [<TcpConn>self.all_conns[i] for i in range(self.all_n)]

    def listeners(self) -> list:
        return list(self._listeners.values())

    def counters(self) -> dict:
        return {
            "connections": self.all_n, "listeners": len(self._listeners),
            "segments_in": self.segments_in, "segments_out": self.segments_out,
            "resets_sent": self.resets_sent, "connections_opened": self.conns_opened,
            "non_tcp": self.non_tcp,
            "drops": {DROP_NAMES[i]: self.drops[i] for i in range(D_COUNT)},
        }

    # -- receive --------------------------------------------------------------------------------

    def input(self, PacketBatch rx not None, PacketBatch tx not None, double now, uint32_t start=0) -> int:
        """Process TCP segments among rx's decrypted packets from descriptor `start` on.

        Consumed descriptors become RES_EMPTY; non-TCP packets stay RES_DATA for the caller.
        ACKs owed mid-batch (every ACK_EVERY segments) go into `tx` while it has room; the rest
        are sent by the next ``output``. Returns ``rx.count``."""
        self.now = now
        cdef uint32_t i
        cdef PacketDesc* d
        for i in range(start, rx.count):
            d = &rx.desc[i]
            if d.result != RES_DATA:
                continue
            if self._input_packet(rx.arena + d.inner_off, d.inner_len, tx, now):
                d.result = RES_EMPTY
        return rx.count

    def input_packet(self, const uint8_t[::1] packet not None, PacketBatch tx not None, double now) -> bool:
        """One IP packet (tests and the slow path). True if it was TCP (consumed)."""
        self.now = now
        if packet.shape[0] == 0:
            return False
        return self._input_packet(&packet[0], packet.shape[0], tx, now)

    cdef bint _input_packet(self, const uint8_t* p, uint32_t n, PacketBatch tx, double now) except -1:
        cdef uint8_t family, ihl, proto
        cdef const uint8_t* src
        cdef const uint8_t* dst
        cdef const uint8_t* t
        cdef uint32_t tlen, total, sum_, doff
        if n < 1:
            return False
        if p[0] >> 4 == 4:
            if n < IPV4_HEADER:
                self.drops[D_IP_MALFORMED] += 1
                return True
            proto = p[9]
            if proto != 6:
                self.non_tcp += 1
                return False
            ihl = (p[0] & 0xf) * 4
            if ihl != IPV4_HEADER:
                self.drops[D_IP_OPTIONS if ihl > IPV4_HEADER else D_IP_MALFORMED] += 1
                return True
            total = load_u16be(p + 2)
            if total < IPV4_HEADER or total > n:
                self.drops[D_IP_MALFORMED] += 1
                return True
            if load_u16be(p + 6) & 0x3fff:          # MF or a fragment offset
                self.drops[D_IP_FRAGMENT] += 1
                return True
            if csum_fold(csum_partial(p, IPV4_HEADER, 0)) != 0:
                self.drops[D_IP_CHECKSUM] += 1
                return True
            family = 4
            src = p + 12
            dst = p + 16
            t = p + IPV4_HEADER
            tlen = total - IPV4_HEADER
        elif p[0] >> 4 == 6:
            if n < IPV6_HEADER:
                self.drops[D_IP_MALFORMED] += 1
                return True
            proto = p[6]
            if proto != 6:
                # extension headers before TCP are not supported; other protocols are Python's
                if proto in (0, 43, 44, 60):
                    self.drops[D_IP_OPTIONS if proto != 44 else D_IP_FRAGMENT] += 1
                    return True
                self.non_tcp += 1
                return False
            total = load_u16be(p + 4)
            if IPV6_HEADER + total > n:
                self.drops[D_IP_MALFORMED] += 1
                return True
            family = 6
            src = p + 8
            dst = p + 24
            t = p + IPV6_HEADER
            tlen = total
        else:
            self.non_tcp += 1
            return False
        if tlen < TCP_HEADER:
            self.drops[D_TCP_MALFORMED] += 1
            return True
        if not self._is_local(dst, family):
            self.drops[D_NOT_LOCAL] += 1
            return True
        doff = (t[12] >> 4) * 4
        if doff < TCP_HEADER or doff > tlen:
            self.drops[D_TCP_MALFORMED] += 1
            return True
        # TCP checksum over the pseudo-header (RFC 9293 §3.1; RFC 8200 §8.1).
        sum_ = csum_partial(src, 4 if family == 4 else 16, 0)
        sum_ = csum_partial(dst, 4 if family == 4 else 16, sum_)
        sum_ += tlen + 6
        sum_ = csum_partial(t, tlen, sum_)
        if csum_fold(sum_) != 0:
            self.drops[D_TCP_CHECKSUM] += 1
            return True
        cdef Segment s
        memset(&s, 0, sizeof(Segment))
        s.wscale = -1
        s.seq = load_u32be(t + 4)
        s.ack = load_u32be(t + 8)
        s.flags = t[13] & 0x3f
        s.wnd = load_u16be(t + 14)
        s.data = t + doff
        s.len = tlen - doff
        if doff > TCP_HEADER and not parse_options(&s, t + TCP_HEADER, doff - TCP_HEADER):
            self.drops[D_TCP_MALFORMED] += 1
            return True
        self.segments_in += 1
        cdef ConnKey key
        memset(&key, 0, sizeof(ConnKey))
        key.family = family
        key.lport = load_u16be(t + 2)
        key.rport = load_u16be(t)
        memcpy(key.laddr, dst, 4 if family == 4 else 16)
        memcpy(key.raddr, src, 4 if family == 4 else 16)
        if key.lport == 0 or key.rport == 0:
            self.drops[D_TCP_MALFORMED] += 1
            return True
        cdef uint32_t h = key_hash(&key)
        cdef TcpConn c = self._lookup(&key, h)
        if c is not None and c.state == TIME_WAIT and (s.flags & (F_SYN | F_ACK | F_RST)) == F_SYN \
                and (seq_gt(s.seq, c.rcv_nxt) or
                     (c.ts_ok and s.has_ts and <int32_t>(s.tsval - c.ts_recent) > 0)):
            # RFC 9293 §3.6.1 / RFC 6191: a new SYN above the old sequence space may reuse a
            # 4-tuple in TIME_WAIT; the old connection ends and the SYN opens a new one.
            c._close(0)
            c = None
        if c is not None:
            c._input(&s, now)
            if c.segs_unacked >= ACK_EVERY and c.list_index >= 0 and tx.count < tx.slots:
                c._output(tx, now)
            return True
        self._no_connection(&key, &s, tx, now)
        return True

    cdef int _no_connection(self, ConnKey* key, Segment* s, PacketBatch tx, double now) except -1:
        cdef TcpListener listener
        cdef TcpConn c
        if s.flags & F_RST:
            self.drops[D_NO_SOCKET] += 1
            return 0
        if (s.flags & (F_SYN | F_ACK | F_FIN)) == F_SYN:
            listener = None
            if self.listen_bitmap[key.lport >> 3] & (1 << (key.lport & 7)):
                listener = self._find_listener(key)
            if listener is None and self.listen_bitmap[0] & 1:
                listener = self._listeners.get((b"", 0))   # the catch-all
            if listener is not None:
                return self._passive_open(listener, key, s, now)
        # RFC 9293 §3.10.7.1: no connection → RST (unless it was one).
        self.drops[D_NO_SOCKET] += 1
        if s.flags & F_ACK:
            self._send_rst(key, s.ack, 0, F_RST)
        else:
            self._send_rst(key, 0, s.seq + s.len + (1 if s.flags & F_SYN else 0) +
                           (1 if s.flags & F_FIN else 0), F_RST | F_ACK)
        return 0

    cdef TcpListener _find_listener(self, ConnKey* key):
        cdef bytes addr = (<const uint8_t*>key.laddr)[:4 if key.family == 4 else 16]
        listener = self._listeners.get((addr, key.lport))
        if listener is None:
            listener = self._listeners.get((b"", key.lport))
        return listener

    cdef int _passive_open(self, TcpListener listener, ConnKey* key, Segment* s, double now) except -1:
        cdef TcpConn old
        listener.syn_received += 1
        if len(listener._queue) >= listener.backlog:
            self.drops[D_ACCEPT_QUEUE] += 1
            return 0
        if len(listener._half_open) >= listener.syn_backlog:
            # SYN backlog full (a flood?): evict the oldest half-open connection, so a
            # legitimate client still gets in once the flood's SYN-ACKs go unanswered.
            old = listener._half_open.pop(0)
            old.listener = None
            old._close(0)
            listener.syn_evicted += 1
            self.drops[D_SYN_BACKLOG] += 1
        cdef TcpConn c = TcpConn()
        c._setup(self, key, now)
        c.state = SYN_RECEIVED
        c.listener = listener
        c.irs = s.seq
        c.rcv_nxt = s.seq + 1
        c.rcv_adv = c.rcv_nxt
        c.rd_seq = c.rcv_nxt
        c.last_ack_sent = c.rcv_nxt
        c._negotiate(s)
        c.snd_wnd = s.wnd                 # RFC 7323 §2.2: the SYN's window is not scaled
        c.snd_wl1 = s.seq
        listener._half_open.append(c)
        self._add(c)
        self._want_output(c)
        return 0

    # -- transmit -------------------------------------------------------------------------------

    def output(self, PacketBatch tx not None, double now) -> bool:
        """Write every due segment into `tx`; True when tx filled up and more is waiting."""
        self.now = now
        cdef uint32_t i = 0, keep = 0, r = 0
        cdef TcpConn c
        cdef int full = 0
        cdef ConnKey key
        cdef bytes kb
        while r < len(self._rsts) and tx.count < tx.slots:
            kb, seq, ack, flags = self._rsts[r]
            memcpy(&key, <const uint8_t*>kb, sizeof(ConnKey))
            self._emit_bare(tx, &key, seq, ack, flags)
            r += 1
        if r:
            del self._rsts[:r]
        while self._probes and tx.count < tx.slots:
            c = self._probes.pop()
            if c.list_index >= 0:
                self._emit(c, tx, c.snd_una - 1, F_ACK, 0, now)
        if self._rsts or self._probes:
            full = 1
        while i < self.out_n:
            c = <TcpConn>self.out_list[i]
            if full or c.list_index < 0:
                if c.list_index >= 0:
                    self.out_list[keep] = <void*>c
                    keep += 1
                else:
                    c.in_output = False
                i += 1
                continue
            full = c._output(tx, now)
            if full:
                self.out_list[keep] = <void*>c
                keep += 1
            else:
                c.in_output = False
            i += 1
        self.out_n = keep
        if self._zombies:
            self._zombies = [z for z in self._zombies if (<TcpConn>z).in_output]
        return keep > 0 or bool(self._rsts) or bool(self._probes)

    cdef int _emit_bare(self, PacketBatch tx, const ConnKey* key, uint32_t seq, uint32_t ack,
                        uint8_t flags) except -1:
        cdef uint32_t iph = IPV4_HEADER if key.family == 4 else IPV6_HEADER
        cdef uint8_t* p = self._slot(tx, iph + TCP_HEADER)
        cdef uint8_t* t = p + iph
        self._ip_header(p, key, TCP_HEADER)
        store_u16be(t, key.lport)
        store_u16be(t + 2, key.rport)
        store_u32be(t + 4, seq)
        store_u32be(t + 8, ack)
        t[12] = (TCP_HEADER // 4) << 4
        t[13] = flags
        memset(t + 14, 0, 6)
        self._tcp_checksum(p, t, key, TCP_HEADER)
        self.segments_out += 1
        return 0

    cdef uint8_t* _slot(self, PacketBatch tx, uint32_t length) except NULL:
        cdef PacketDesc* d = tx._next_slot()
        d.inner_off = d.off + TRANSPORT_HEADER_LEN
        d.inner_len = length
        d.result = RES_PENDING
        return tx.arena + d.inner_off

    cdef uint32_t _emit(self, TcpConn c, PacketBatch tx, uint32_t seq, uint8_t flags, uint32_t n,
                        double now) except? 0xffffffff:
        """Build one segment of `c` into a tx slot: IP header, TCP header with options, payload
        [seq, seq+n) from the send ring, checksum."""
        cdef uint8_t opts[60]
        cdef uint32_t olen = 0, i, k, nblocks, first, pos
        cdef int j
        cdef uint32_t ts
        if flags & F_SYN:
            # MSS, SACK-permitted + timestamps, window scale (the order Linux uses)
            opts[0] = 2
            opts[1] = 4
            store_u16be(opts + 2, <uint16_t>c.mss_ip)
            olen = 4
            if self.sack_enabled and (c.state == SYN_SENT or c.sack_ok):
                opts[olen] = 4
                opts[olen + 1] = 2
                olen += 2
            else:
                opts[olen] = 1
                opts[olen + 1] = 1
                olen += 2
            if self.timestamps_enabled and (c.state == SYN_SENT or c.ts_ok):
                opts[olen] = 8
                opts[olen + 1] = 10
                store_u32be(opts + olen + 2, ts_clock(now) + c.ts_offset)
                store_u32be(opts + olen + 6, c.ts_recent if c.state != SYN_SENT else 0)
                olen += 10
            else:
                memset(opts + olen, 1, 2)
                olen += 2
            if c.state == SYN_SENT or c.rcv_wscale:
                opts[olen] = 1
                opts[olen + 1] = 3
                opts[olen + 2] = 3
                opts[olen + 3] = OUR_WSCALE
                olen += 4
        else:
            if c.ts_ok:
                opts[0] = 1
                opts[1] = 1
                opts[2] = 8
                opts[3] = 10
                store_u32be(opts + 4, ts_clock(now) + c.ts_offset)
                store_u32be(opts + 8, c.ts_recent)
                olen = 12
            if c.sack_ok and c.ooo_n and not (flags & F_RST):
                # RFC 2018 §4: the first block holds the most recently received segment.
                nblocks = umin(c.ooo_n, 3 if c.ts_ok else 4)
                opts[olen] = 1
                opts[olen + 1] = 1
                opts[olen + 2] = 5
                opts[olen + 3] = 2 + 8 * nblocks
                olen += 4
                k = <uint32_t>c.ooo_n              # index of the recent block (none: ooo_n)
                for j in range(c.ooo_n):
                    if seq_le(c.ooo[j].start, c.ooo_recent_start) and seq_lt(c.ooo_recent_start, c.ooo[j].end):
                        k = j
                        break
                i = 0
                if k < <uint32_t>c.ooo_n:
                    store_u32be(opts + olen, c.ooo[k].start)
                    store_u32be(opts + olen + 4, c.ooo[k].end)
                    olen += 8
                    i = 1
                for j in range(c.ooo_n):
                    if i >= nblocks:
                        break
                    if <uint32_t>j == k:
                        continue
                    store_u32be(opts + olen, c.ooo[j].start)
                    store_u32be(opts + olen + 4, c.ooo[j].end)
                    olen += 8
                    i += 1
        # Payload must fit the MTU with these options.
        cdef uint32_t iph = IPV4_HEADER if c.key.family == 4 else IPV6_HEADER
        if iph + TCP_HEADER + olen + n > self.mtu:
            # the options left less room: a shorter segment no longer ends the data or the
            # stream, so it must not carry PSH/FIN (the caller sends the rest later)
            n = self.mtu - iph - TCP_HEADER - olen
            flags &= ~(F_FIN | F_PSH)
        cdef uint32_t tcp_len = TCP_HEADER + olen + n
        cdef uint8_t* p = self._slot(tx, iph + tcp_len)
        cdef uint8_t* t = p + iph
        self._ip_header(p, &c.key, tcp_len)
        store_u16be(t, c.key.lport)
        store_u16be(t + 2, c.key.rport)
        store_u32be(t + 4, seq)
        if flags & F_ACK:
            store_u32be(t + 8, c.rcv_nxt)
        else:
            store_u32be(t + 8, 0)
        t[12] = <uint8_t>(((TCP_HEADER + olen) // 4) << 4)
        t[13] = flags
        cdef uint32_t field
        if flags & F_SYN:
            field = umin(c._receive_window(), 65535)    # never scaled in a SYN
        else:
            field = c._window_field()
        store_u16be(t + 14, <uint16_t>field)
        t[16] = 0
        t[17] = 0
        t[18] = 0
        t[19] = 0
        if olen:
            memcpy(t + TCP_HEADER, opts, olen)
        cdef uint32_t mask, off
        if n:
            mask = c.sbuf_cap - 1
            off = seq - c.sbuf_seq
            pos = (c.sbuf_head + off) & mask
            first = umin(n, c.sbuf_cap - pos)
            memcpy(t + TCP_HEADER + olen, c.sbuf + pos, first)
            if first < n:
                memcpy(t + TCP_HEADER + olen + first, c.sbuf, n - first)
        self._tcp_checksum(p, t, &c.key, tcp_len)
        # bookkeeping for what every segment carries
        if flags & F_ACK:
            c.last_ack_sent = c.rcv_nxt
            c.ack_now = False
            c.segs_unacked = 0
            c.delack_at = 0
            if not (flags & F_SYN):
                c.rcv_adv = c.rcv_nxt + (field << c.rcv_wscale)
            else:
                c.rcv_adv = c.rcv_nxt + field
        c.segs_out += 1
        self.segments_out += 1
        return n

    cdef void _ip_header(self, uint8_t* p, const ConnKey* key, uint32_t tcp_len):
        if key.family == 4:
            p[0] = 0x45
            p[1] = 0
            store_u16be(p + 2, <uint16_t>(IPV4_HEADER + tcp_len))
            self.ip_id += 1
            store_u16be(p + 4, self.ip_id)
            store_u16be(p + 6, 0x4000)          # DF
            p[8] = 64
            p[9] = 6
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
            p[6] = 6
            p[7] = 64
            memcpy(p + 8, key.laddr, 16)
            memcpy(p + 24, key.raddr, 16)

    cdef void _tcp_checksum(self, uint8_t* p, uint8_t* t, const ConnKey* key, uint32_t tcp_len):
        cdef uint32_t alen = 4 if key.family == 4 else 16
        cdef uint32_t sum_ = csum_partial(key.laddr, alen, 0)
        sum_ = csum_partial(key.raddr, alen, sum_)
        sum_ += tcp_len + 6
        sum_ = csum_partial(t, tcp_len, sum_)
        store_u16be(t + 16, csum_fold(sum_))

    cdef int _send_rst(self, const ConnKey* key, uint32_t seq, uint32_t ack, uint8_t flags) except -1:
        """Queue a bare RST (no connection state); ``output`` writes it."""
        # Queued; output() writes them first. Bounded, like Linux's RST rate limit.
        if len(self._rsts) >= 1024:
            return 0
        self._rsts.append(((<const uint8_t*>key)[:sizeof(ConnKey)], seq, ack, flags))
        self.resets_sent += 1
        return 0

    cdef int _send_rst_for(self, TcpConn c, uint32_t seq) except -1:
        self._send_rst(&c.key, seq, c.rcv_nxt, F_RST | F_ACK)
        return 0

    cdef int _send_probe(self, TcpConn c) except -1:
        # Zero-window probe the way Linux does it: a segment at snd_una - 1 with no data
        # elicits an ACK carrying the current window.
        self._probes.append(c)
        self._want_output(c)
        return 0
