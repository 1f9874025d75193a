# cython: language_level=3
"""One TCP connection (RFC 9293): the state machine, its timers and its segment output.

Theory of operation
-------------------
States (:class:`TcpState`, RFC 9293 §3.3.2): an active open starts in SYN_SENT
(:meth:`TcpStack.connect`), a passive one in SYN_RECEIVED (the stack's listener demux); both
reach ESTABLISHED, then close through FIN_WAIT_1/FIN_WAIT_2/CLOSING/TIME_WAIT (we closed first)
or CLOSE_WAIT/LAST_ACK (the peer did), and end in CLOSED, where the connection has left every
table of the stack. LISTEN belongs to :class:`TcpListener` (stack.pyx).

Inputs, each a method of :class:`TcpConn`:

* a parsed segment, from the stack's demultiplexer: ``_input`` follows RFC 9293 §3.10.7 step by
  step (SYN-SENT in ``_input_syn_sent``; otherwise sequence check, RST, SYN, ACK in
  ``_process_ack``, text in ``_receive_data``, FIN in ``_receive_fin``); each rule is named at
  its branch;
* application calls from Python: ``send``, ``read``, ``shutdown``, ``close``, ``abort``;
* expired deadlines, from the stack: ``_on_timer`` (retransmission or zero-window probe, delayed
  ACK, tail-loss probe, TIME_WAIT / FIN_WAIT_2 / SYN_RECEIVED expiry);
* an output opportunity, from the stack: ``_output`` cuts what is due into a packet batch:
  SYN/SYN-ACK, a tail-loss probe, segments marked lost first (RFC 6675 NextSeg), new data within
  min(cwnd, peer window), our FIN, then an owed ACK (``_emit`` lays each segment out).

Loss recovery, per segment and in C (Linux's defaults are the reference):

* every segment sent and not yet cumulatively acknowledged has a record in ``segq`` (sequence
  range, latest transmit time, SACKed / lost / retransmitted flags); SACK blocks mark records
  (``_sack_records``), the cumulative ACK retires them (``_ack_records``);
* RACK (RFC 8985 §6, ``_rack_delivered`` / ``_rack_detect``) marks lost every unSACKed segment
  sent more than RACK.rtt + reo_wnd before the most recently sent delivered one, so a lost
  retransmission is found like any other loss; reo_wnd is min_rtt / 4 (0 before reordering is
  seen, once three segments are SACKed), widened by DSACKs of spurious retransmissions and
  capped at 4 SRTT (the RFC: SRTT); segments still inside it arm the reordering timer
  (``reo_at``). Without SACK, three duplicate ACKs or a NewReno partial ACK mark the first
  segment;
* the tail-loss probe (RFC 8985 §7, ``tlp_at``) sends new data or the last segment after
  PTO = 2 SRTT (+ 2 ms, or + 200 ms for one segment in flight); as in QUIC also during
  recovery and again, doubled, when unanswered; only the first probe of a silence pushes the
  RTO back;
* the first segment marked lost starts an episode (``_enter_recovery``): one CUBIC reduction
  (beta 0.7, RFC 9438), then PRR-SSRB (RFC 6937, ``_prr_update``) paces cwnd down to ssthresh
  per ACK; losses within the episode (retransmissions included) reduce nothing more;
* DSACK (RFC 2883): the receiver reports duplicates in the first SACK block
  (``_note_dsack``); the sender (``_on_dsack``) counts a duplicate of one of its
  retransmissions as spurious, widens reo_wnd, and restores the window from before the episode
  once every retransmission of it was spurious (RFC 3708, Linux's undo). Duplicates of first
  transmissions (the network's) change nothing;
* counters for each: ``rack_marks``, ``tlp_probes``, ``tlp_recoveries``, ``recoveries``,
  ``timeouts`` (``rto_count``), ``spurious_retrans``, ``undo_count``, ``dsack_received`` /
  ``dsack_sent``, ``prr_delivered`` / ``prr_out`` in :meth:`TcpConn.counters`.

Outputs: segments in the caller's batch; events for Python (:class:`TcpEvent`, collected once
per connection per batch through the stack's touched list); RSTs and zero-window probes queued
on the stack; deadlines (``rtx_at``, ``delack_at``, ``expire_at``, ``tlp_at``) the stack reads.

Invariants:

* ``snd_una <= snd_max``; the send ring holds [sbuf.seq, sbuf.seq + sbuf.len), from snd_una on
  (the SYN and FIN take a sequence number but no byte of the ring).
* ``rbuf.read_seq <= rcv_nxt``; the receive ring holds in-order data [read_seq, rcv_nxt) and the
  assembler's out-of-order ranges above rcv_nxt, all within the ring's capacity.
* The connection asks for output (``_StackBase._want_output``) whenever it has something to
  send; it is in the stack's output list at most once (``in_output``), its touched list at most
  once (``in_touched``).
* Once CLOSED it never leaves that state and is in no table (``list_index < 0``).
* In TIME_WAIT and CLOSED nothing is sent or received any more: the send ring is freed on
  entry, the receive ring too once the application has read it to the end (``_free_buffers``;
  ``data`` is NULL, the other ring fields keep their values for the window arithmetic). A
  TIME_WAIT connection is its 4-tuple and sequence state only, for ``stack.time_wait`` seconds;
  ``stack.buffer_bytes`` sums the rings still allocated (``_account``).

The per-connection byte storage is in ``storage`` (rings, assembler, SACK scoreboard), RTT/RTO
and CUBIC in ``congestion``, header layout in ``wire``; the stack (``stack``) owns the tables.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_Realloc
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset

from _wgcore.datapath cimport PacketBatch
from _wgcore.octets cimport store_u16be, store_u32be, load_u32be
from _wgcore.state cimport PacketDesc, RES_PENDING, TRANSPORT_HEADER_LEN
from _wgcore.tcpip.wire cimport (
    F_FIN, F_SYN, F_RST, F_PSH, F_ACK, IPV4_HEADER, IPV6_HEADER, TCP_HEADER,
    D_PAWS, D_BUFFER_FULL, D_RST_IGNORED, D_OUT_OF_WINDOW, D_RCV_CLOSED, D_BAD_ACK,
    D_OOO_OVERFLOW, key_hash, seq_lt, seq_le, seq_gt, seq_ge, seq_max, seq_min, umin, ts_clock,
    write_ip_header, write_tcp_header, write_tcp_checksum,
)
from _wgcore.tcpip.storage cimport (
    send_ring_init, send_ring_release, send_ring_append, send_ring_ack, send_ring_copy,
    recv_ring_init, recv_ring_release, recv_ring_space, recv_ring_write, recv_ring_read,
    recv_ring_grow, ranges_init, ranges_release, ranges_insert, assembler_advance,
    scoreboard_trim, OOO_RANGES, SACK_RANGES,
    SEG_SACKED, SEG_LOST, SEG_RETRANS, SEG_EVER_RETRANS, SegRec, segq_init, segq_release,
    segq_push, segq_insert_after, segq_find, segq_pop_front, segq_at,
)
from _wgcore.tcpip.congestion cimport (
    INITIAL_CWND_SEGMENTS, rtt_init, rtt_sample, rto_backoff, cubic_init, cubic_on_congestion,
    cubic_on_ack,
)

import enum as _enum
import errno as _errno
import hashlib as _hashlib

# Seconds (and counts) of the connection's own timers.
cdef double DELACK_TIMEOUT = 0.04      # RFC 9293 §3.8.6.3: < 0.5 s; Linux's minimum
cdef double DELACK_MIN = 0.001         # ... shorter on a short path: 2 x the receiver's RTT
cdef double TIME_WAIT_TIMEOUT = 60.0   # 2 * MSL, Linux's TCP_TIMEWAIT_LEN (stack.time_wait)
cdef double FIN_WAIT_2_TIMEOUT = 60.0  # Linux tcp_fin_timeout, after the application closed
cdef double SYN_RECEIVED_TIMEOUT = 75.0  # a half-open connection gives up (Linux: 63-75 s)
cdef int SYN_RETRIES = 6               # 1+2+4+...+64 s: gives up after ~127 s, as Linux
cdef int DATA_RETRIES = 12
cdef double TLP_MIN_EXTRA = 0.002      # Linux TCP_TIMEOUT_MIN, added to the 2 * SRTT probe timeout
cdef double WC_DELACK = 0.2            # RFC 8985 §7.2 WCDelAckT: one segment in flight
cdef int REO_WND_PERSIST = 16          # RFC 8985 §6.2: recoveries a grown reo_wnd_mult lasts
cdef int DUP_THRESH = 3
cdef double REO_WND_CAP = 4.0          # reo_wnd <= this x SRTT (RFC 8985 §6.2 and Linux: 1)
cdef uint32_t QUICK_ACKS = 16          # Linux TCP_MAX_QUICKACKS
# What limits the sender (TcpConn.chrono_kind): nothing to send and nothing in flight; unsent
# data held back by the congestion window; ... by the peer's receive window; data in flight and
# nothing more from the application.
cdef enum:
    LIM_IDLE = 0
    LIM_CWND = 1
    LIM_RWND = 2
    LIM_APP = 3


cdef inline double ts_rtt(double now, uint32_t tsecr_ms) noexcept:
    """An RTT from a timestamp echo (our 1 ms clock): at least one tick, as Linux
    (tcp_rtt_tsopt_us, tcp_rcv_rtt_measure_ts). A 0 ms echo on a sub-millisecond path is not
    a 0 s round trip: it would drag min_rtt (and RACK's reordering window) to nothing; negative
    (a wrapped or bogus echo): 0, no sample."""
    cdef int32_t delta = <int32_t>(ts_clock(now) - tsecr_ms)
    if delta < 0:
        return 0
    return (delta if delta > 0 else 1) / 1000.0


# -- Python names for states and events ------------------------------------------------------

# The values are the C enums of conn.pxd (the single source); the .pyi lists the members.
TcpState = _enum.IntEnum("TcpState", [
    ("CLOSED", CLOSED), ("LISTEN", LISTEN), ("SYN_SENT", SYN_SENT),
    ("SYN_RECEIVED", SYN_RECEIVED), ("ESTABLISHED", ESTABLISHED), ("FIN_WAIT_1", FIN_WAIT_1),
    ("FIN_WAIT_2", FIN_WAIT_2), ("CLOSE_WAIT", CLOSE_WAIT), ("CLOSING", CLOSING),
    ("LAST_ACK", LAST_ACK), ("TIME_WAIT", TIME_WAIT),
], module=__name__, qualname="TcpState")
TcpState.__doc__ = "RFC 9293 §3.3.2 connection states, spelled as the RFC spells them."

TcpEvent = _enum.IntFlag("TcpEvent", [
    ("CONNECTED", TEV_CONNECTED), ("READABLE", TEV_READABLE), ("EOF", TEV_EOF),
    ("WRITABLE", TEV_WRITABLE), ("CLOSED", TEV_CLOSED), ("ACCEPT", TEV_ACCEPT),
], module=__name__, qualname="TcpEvent")
TcpEvent.__doc__ = """What happened to a connection (or listener) since its last take_events():
CONNECTED (reached ESTABLISHED), READABLE (new in-order data), EOF (the peer's FIN, after all
its data), WRITABLE (acknowledged data freed send space), CLOSED (left the stack; see
TcpConn.error), ACCEPT (listener: a connection waits in the accept queue)."""

STATE_NAMES = tuple(state.name for state in TcpState)
cdef tuple _STATES = tuple(TcpState)


# -- the stack, as a connection sees it -------------------------------------------------------

cdef class _StackBase:
    """Configuration, clock, output list, touched list, drop counters and RST/probe queues of a
    stack: everything a connection calls on. :class:`TcpStack` extends it (stack.pyx)."""

    def __cinit__(self, *args, **kwargs):
        self._touched = []
        self._rsts = []
        self._probes = []
        self.out_cap = 256
        self.out_list = <void**>PyMem_Malloc(self.out_cap * sizeof(void*))
        if self.out_list == NULL:
            raise MemoryError()
        memset(self.drops, 0, sizeof(self.drops))
        self.time_wait = TIME_WAIT_TIMEOUT

    def __dealloc__(self):
        PyMem_Free(self.out_list)

    @cython.final
    cdef void _want_output(self, TcpConn c):
        if c.in_output or c.list_index < 0:
            return
        if self.out_n == self.out_cap:
            self.out_cap *= 2
            self.out_list = <void**>PyMem_Realloc(self.out_list, self.out_cap * sizeof(void*))
        c.in_output = True
        self.out_list[self.out_n] = <void*>c
        self.out_n += 1

    @cython.final
    cdef bytes _isn_hash(self, const ConnKey* key):
        return _hashlib.blake2s((<const uint8_t*>key)[:sizeof(ConnKey)], key=self._secret,
                                digest_size=8).digest()

    @cython.final
    cdef uint8_t* _slot(self, PacketBatch tx, uint32_t length) except NULL:
        """The next tx descriptor, for an inner packet of `length` bytes behind the WireGuard
        header room; returns where the packet goes."""
        cdef PacketDesc* d = tx._next_slot()
        d.inner_off = d.off + TRANSPORT_HEADER_LEN
        d.inner_len = length
        d.result = RES_PENDING
        return tx.arena + d.inner_off

    @cython.final
    cdef int _send_rst(self, const ConnKey* key, uint32_t seq, uint32_t ack,
                       uint8_t flags) except -1:
        """Queue a bare RST (no connection state); ``output`` writes it."""
        # Queued; output() writes them first. Bounded, like Linux's RST rate limit.
        if len(self._rsts) >= 1024:
            return 0
        self._rsts.append(((<const uint8_t*>key)[:sizeof(ConnKey)], seq, ack, flags))
        self.resets_sent += 1
        return 0

    @cython.final
    cdef int _send_rst_for(self, TcpConn c, uint32_t seq) except -1:
        self._send_rst(&c.key, seq, c.rcv_nxt, F_RST | F_ACK)
        return 0

    @cython.final
    cdef int _send_probe(self, TcpConn c) except -1:
        # Zero-window probe the way Linux does it: a segment at snd_una - 1 with no data
        # elicits an ACK carrying the current window.
        self._probes.append(c)
        self._want_output(c)
        return 0

    cdef void _remove(self, TcpConn c):
        """Take `c` out of every table (it reached CLOSED). TcpStack implements it."""

    cdef bint _passive_established(self, TcpConn c):
        """`c`, opened by a listener, reached ESTABLISHED: queue it for accept. False when it
        was reset instead (accept queue full). TcpStack implements it."""
        return True


# -- connection ------------------------------------------------------------------------------

@cython.final
cdef class TcpConn:
    """One TCP connection. Created by :meth:`TcpStack.connect` or by a listener; Python reads
    and writes it through ``send``/``read``/``shutdown``/``close``/``abort``."""

    def __cinit__(self):
        self.list_index = -1
        self._state = CLOSED

    def __dealloc__(self):
        send_ring_release(&self.sbuf)
        recv_ring_release(&self.rbuf)
        segq_release(&self.segq)
        ranges_release(&self.ooo)
        ranges_release(&self.sacked)
        ranges_release(&self.retx_ranges)
        if self.stack is not None:
            self.stack.buffer_bytes -= self.buf_bytes

    cdef int _setup(self, _StackBase stack, const ConnKey* key, double now) except -1:
        self.stack = stack
        self.key = key[0]
        self.hash = key_hash(key)
        self.mss_ip = stack.mtu - (IPV4_HEADER if key.family == 4 else IPV6_HEADER) - TCP_HEADER
        self.peer_mss = 536
        self.smss = 536
        rtt_init(&self.rtt)
        self.snd_wscale = 0
        self.rcv_wscale = 0
        send_ring_init(&self.sbuf, 65536, stack.send_buffer)
        segq_init(&self.segq, 64)
        ranges_init(&self.ooo, OOO_RANGES)
        ranges_init(&self.sacked, SACK_RANGES)
        ranges_init(&self.retx_ranges, SACK_RANGES)
        self.reo_wnd_mult = 1
        recv_ring_init(&self.rbuf, umin(stack.receive_buffer_initial, stack.receive_buffer),
                       stack.receive_buffer)
        cdef bytes digest = stack._isn_hash(key)
        cdef const uint8_t* d = <const uint8_t*>digest
        # RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport, secretkey), M a 4 µs clock
        self.iss = load_u32be(d) + <uint32_t>(<uint64_t>(now * 250000.0))
        self.ts_offset = load_u32be(d + 4)
        self.snd_una = self.iss
        self.snd_max = self.iss
        self.rack_fack = self.iss
        self.sbuf.seq = self.iss + 1
        self._account()
        cubic_init(&self.cc, INITIAL_CWND_SEGMENTS * 1220)   # until the MSS is known
        return 0

    # -- Python API ---------------------------------------------------------------------------

    @property
    def state(self):
        """The RFC 9293 state, a :class:`TcpState`."""
        return _STATES[self._state]

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self._state]

    @property
    def local(self) -> tuple:
        """(address bytes, port)."""
        n = 4 if self.key.family == 4 else 16
        return (bytes(self.key.laddr[:n]), self.key.lport)

    @property
    def remote(self) -> tuple:
        n = 4 if self.key.family == 4 else 16
        return (bytes(self.key.raddr[:n]), self.key.rport)

    @property
    def sbuf_max(self) -> int:
        """Most bytes the send ring may hold."""
        return self.sbuf.max

    @property
    def rbuf_max(self) -> int:
        """Most bytes the receive ring may grow to."""
        return self.rbuf.max

    def take_events(self) -> int:
        """The TcpEvent bits raised since the last call, cleared (an int: TcpEvent(...) names
        them)."""
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
        if self.fin_queued or self._state in (CLOSED, LISTEN):
            return 0
        return self.sbuf.max - self.sbuf.len

    @property
    def unsent(self) -> int:
        """Buffered bytes not yet acknowledged by the peer."""
        return self.sbuf.len

    @property
    def at_eof(self) -> bool:
        """The peer's FIN arrived and every byte before it was read."""
        return self.peer_fin and self._readable() == 0

    cdef inline uint32_t _readable(self) noexcept:
        # rcv_nxt and read_seq both start at 0 before the peer's SYN, so this is 0 there.
        return self.rcv_nxt - self.rbuf.read_seq - (1 if self.peer_fin else 0)

    def send(self, const uint8_t[::1] data not None) -> int:
        """Append to the send ring; returns how many bytes were taken (may be fewer than given
        when the ring is full). Raises ConnectionError when the sending side is closed."""
        cdef uint32_t n = data.shape[0]
        if self.fin_queued or self._state in (CLOSED, LISTEN, TIME_WAIT, CLOSING, LAST_ACK):
            raise BrokenPipeError(_errno.EPIPE, "the connection's sending side is closed")
        if n == 0 or self.sbuf.len == self.sbuf.max:
            return 0
        n = send_ring_append(&self.sbuf, &data[0], n)
        self._account()
        self.stack._want_output(self)
        return n

    def read(self, Py_ssize_t max_bytes=-1) -> bytes:
        """Take up to `max_bytes` (default: all) in-order received bytes; opens the window."""
        cdef uint32_t avail = self._readable()
        if max_bytes >= 0 and <uint32_t>max_bytes < avail:
            avail = <uint32_t>max_bytes
        if avail == 0:
            return b""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, avail)
        recv_ring_read(&self.rbuf, <uint8_t*>PyBytes_AS_STRING(out), avail)
        self.bytes_read += avail
        self._after_read()
        if self._state == TIME_WAIT or self._state == CLOSED:
            self._free_buffers()          # the last unread bytes are gone
        return out

    cdef void _after_read(self):
        # Receive-buffer auto-tuning (dynamic right-sizing, as Linux's tcp_rcv_space_adjust):
        # once per receiver RTT, if the application drained more than half the ring in that
        # RTT, the window is what limits the sender: size the ring to twice that amount (the
        # bandwidth-delay product with headroom), up to rbuf.max. A stalled reader drains
        # nothing, so its memory stays bounded by the window it was given.
        cdef uint32_t wnd_before = self.rcv_adv - self.rcv_nxt if seq_gt(self.rcv_adv, self.rcv_nxt) else 0
        cdef double now = self.stack.now
        cdef double rtt = self.rcv_rtt if self.rcv_rtt > 0 else (self.rtt.srtt if self.rtt.srtt > 0 else 0.01)
        cdef uint64_t copied
        cdef uint32_t cap
        if rtt < 0.001:
            rtt = 0.001            # the timestamp clock's resolution
        if self.space_time == 0:
            self.space_time = now
            self.space_mark = self.bytes_read
        elif now - self.space_time >= rtt:
            copied = self.bytes_read - self.space_mark
            if copied * 2 > self.rbuf.cap and self.rbuf.cap < self.rbuf.max \
                    and self._state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2):   # peer may send
                cap = self.rbuf.cap
                while cap < copied * 2 and cap < self.rbuf.max:
                    cap *= 2
                recv_ring_grow(&self.rbuf, cap)
                self._account()
            self.space_time = now
            self.space_mark = self.bytes_read
        # Window update (RFC 9293 §3.8.6.2.2): tell the peer once the window grew enough.
        cdef uint32_t wnd_now = self._receive_window()
        if self._state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2) and wnd_now >= 2 * wnd_before \
                and wnd_now - wnd_before >= 2 * self.mss_ip:
            self.ack_now = True
            self.stack._want_output(self)

    def shutdown(self) -> None:
        """Half-close: send FIN after the buffered data (RFC 9293 §3.10.4 CLOSE, sending side)."""
        if self.fin_queued:
            return
        if self._state in (CLOSED, LISTEN):
            raise OSError(_errno.ENOTCONN, "the connection is not open")
        if self._state == SYN_SENT:
            self.abort()
            return
        self.fin_queued = True
        self.fin_seq = self.sbuf.seq + self.sbuf.len
        if self._state in (ESTABLISHED, SYN_RECEIVED):
            self._state = FIN_WAIT_1
        elif self._state == CLOSE_WAIT:
            self._state = LAST_ACK
        self.stack._want_output(self)

    def close(self) -> None:
        """The application is done: FIN after buffered data; unread or later data → RST
        (as Linux does, so the peer learns its data was not consumed)."""
        if self._state == CLOSED:
            return
        self.app_closed = True
        if self._readable() > 0 or self._state == SYN_SENT:
            self.abort()
            return
        self.shutdown()
        if self._state == FIN_WAIT_2 and self.expire_at == 0:
            self.expire_at = self.stack.now + FIN_WAIT_2_TIMEOUT

    def abort(self) -> None:
        """Send RST (if synchronized) and drop the connection at once (RFC 9293 §3.10.5)."""
        if self._state == CLOSED:
            return
        if self._state not in (SYN_SENT, LISTEN, TIME_WAIT):
            self.stack._send_rst_for(self, self.snd_max)
        self.app_closed = True
        self._close(0)

    def counters(self) -> dict:
        """Per-connection counters: state, windows, RTT, retransmissions and bytes."""
        return {
            "state": STATE_NAMES[self._state], "cwnd": self.cc.cwnd,
            "ssthresh": self.cc.ssthresh, "srtt": self.rtt.srtt, "rttvar": self.rtt.rttvar,
            "rto": self.rtt.rto, "min_rtt": self.rtt.min_rtt,
            "snd_wnd": self.snd_wnd, "mss": self.smss,
            # the window last advertised (what the peer sees), and the ring's free space
            "rcv_wnd": self.rcv_adv - self.rcv_nxt if seq_gt(self.rcv_adv, self.rcv_nxt) else 0,
            "rcv_space": self._receive_window(),
            "send_buffer": self.sbuf.cap, "receive_buffer": self.rbuf.cap,
            "in_flight": self.snd_max - self.snd_una, "sacked": self.sacked_bytes,
            "bytes_sent": self.bytes_sent, "bytes_acked": self.bytes_acked,
            "bytes_received": self.bytes_received, "bytes_read": self.bytes_read,
            "segments_in": self.segs_in, "segments_out": self.segs_out,
            "retransmits": self.retransmits, "fast_retransmits": self.fast_retransmits,
            "timeouts": self.timeouts, "ooo_segments": self.ooo_segments,
            "dup_segments": self.dup_segments, "window_probes": self.window_probes,
            "tail_probes": self.tail_probes, "tlp_probes": self.tail_probes,
            "tlp_recoveries": self.tlp_recoveries, "rack_marks": self.rack_marks,
            "recoveries": self.recoveries, "rto_count": self.timeouts,
            "spurious_retrans": self.spurious_retrans, "undo_count": self.undo_count,
            "dsack_received": self.dsack_received, "dsack_sent": self.dsack_sent,
            "lost": self.lost_bytes, "in_recovery": self.in_recovery,
            "reordering_seen": self.reordering_seen,
            "reo_wnd": self._reo_wnd(), "reo_wnd_mult": self.reo_wnd_mult,
            "prr_delivered": self.prr_delivered, "prr_out": self.prr_out,
            # seconds the sender spent limited by cwnd / the peer's window / the application
            # (data in flight, none unsent), up to the stack's latest call
            "limited_cwnd_s": self._chrono_total(LIM_CWND),
            "limited_rwnd_s": self._chrono_total(LIM_RWND),
            "limited_app_s": self._chrono_total(LIM_APP),
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
        if self._state == CLOSED and self.list_index < 0:
            return
        self._state = CLOSED
        if err and not self.error:
            self.error = err
        self.rtx_at = 0
        self.delack_at = 0
        self.expire_at = 0
        self.tlp_at = 0
        self.reo_at = 0
        self.stack._remove(self)      # also forgets the listener, if any
        self._free_buffers()
        self._event(TEV_CLOSED)

    cdef void _account(self) noexcept:
        """Bring stack.buffer_bytes up to date with this connection's ring capacities."""
        cdef uint32_t now_bytes = (self.sbuf.cap if self.sbuf.data != NULL else 0) + \
            (self.rbuf.cap if self.rbuf.data != NULL else 0)
        self.stack.buffer_bytes += now_bytes
        self.stack.buffer_bytes -= self.buf_bytes
        self.buf_bytes = now_bytes

    cdef void _free_buffers(self) noexcept:
        """In TIME_WAIT or CLOSED nothing is sent any more: free the send ring; free the
        receive ring too once the application has nothing left to read (else ``read`` calls
        us again when it has drained it). What stays is the 4-tuple and sequence state.
        Ring fields other than ``data`` keep their values, so window and sequence arithmetic
        is unchanged; nothing writes or copies ring bytes in these states."""
        if self.sbuf.data != NULL:
            send_ring_release(&self.sbuf)
        if self.rbuf.data != NULL and self._readable() == 0:
            recv_ring_release(&self.rbuf)
        ranges_release(&self.ooo)
        ranges_release(&self.sacked)
        ranges_release(&self.retx_ranges)
        self.sacked_bytes = 0
        self.lost_bytes = 0
        segq_release(&self.segq)
        self._account()

    cdef void _enter_time_wait(self, double now) noexcept:
        """Our FIN is acknowledged and the peer's received (RFC 9293 §3.10.7.4): hold the
        4-tuple for stack.time_wait (2 MSL), with the buffers given back at once."""
        self._state = TIME_WAIT
        self.expire_at = now + self.stack.time_wait
        self.rtx_at = 0
        self.tlp_at = 0
        self.reo_at = 0
        self.persist = False
        self._free_buffers()

    cdef uint32_t _receive_window(self) noexcept:
        cdef uint32_t used = self.rcv_nxt - self.rbuf.read_seq
        if self.peer_fin:
            used -= 1
        if used >= self.rbuf.cap:
            return 0
        return self.rbuf.cap - used

    cdef uint32_t _window_field(self) noexcept:
        """The 16-bit window to advertise; never moves the right edge left (RFC 9293
        §3.8.6.2.2) and avoids silly-window advertisements."""
        cdef uint32_t wnd = self._receive_window()
        cdef uint32_t right = self.rcv_nxt + wnd
        cdef uint32_t old = self.rcv_adv - self.rcv_nxt if seq_gt(self.rcv_adv, self.rcv_nxt) else 0
        # Receiver SWS avoidance: only advance the edge by at least min(cap/2, MSS).
        if seq_gt(right, self.rcv_adv) and right - self.rcv_adv < umin(self.rbuf.cap // 2, self.mss_ip) \
                and wnd < self.rbuf.cap:
            wnd = old
        if seq_lt(self.rcv_nxt + wnd, self.rcv_adv):
            wnd = old
        cdef uint32_t field = wnd >> self.rcv_wscale
        if field > 65535:
            field = 65535
        return field

    # -- timers ---------------------------------------------------------------------------------

    cdef int _on_timer(self, double now) except -1:
        if self.delack_at and self.delack_at <= now:
            self.delack_at = 0
            self.ack_now = True
            self.stack._want_output(self)
        if self.expire_at and self.expire_at <= now:
            self.expire_at = 0
            if self._state == TIME_WAIT:
                self._close(0)
                return 0
            if self._state == SYN_RECEIVED:
                self._close(_errno.ETIMEDOUT)
                return 0
            if self._state == FIN_WAIT_2:
                self.stack._send_rst_for(self, self.snd_max)
                self._close(0)
                return 0
        if self.reo_at and self.reo_at <= now:
            # RFC 8985 §6.3: the reordering window of a segment passed; mark what is lost.
            self.reo_at = 0
            if self.snd_una != self.snd_max and self._rack_detect(now):
                if not self.in_recovery:
                    self._enter_recovery(now)
                    self._prr_update(0)
                self.stack._want_output(self)
        if self.tlp_at and self.tlp_at <= now:
            self.tlp_at = 0
            if self.snd_una != self.snd_max and self._state >= ESTABLISHED and not self.persist \
                    and not (self.tlp_count and self.rtx_at and self.rtx_at <= now):
                self.tlp_send = True
                self.tail_probes += 1
                if self.tlp_count == 0:
                    self.rtx_at = now + self.rtt.rto   # the RTO restarts behind a first probe
                self.tlp_count += 1
                self.stack._want_output(self)
        if self.rtx_at and self.rtx_at <= now:
            self.rtx_at = 0
            self.tlp_at = 0
            self._retransmit_timeout(now)
        return 0

    cdef void _arm_tlp(self, double now):
        # RFC 8985 §7.2: PTO = 2 * SRTT, plus the peer's delayed-ACK time when only one
        # segment is in flight (else Linux's 2 ms); never later than the RTO. Unlike RFC 8985
        # (and like QUIC's PTO, RFC 9002 §6.2) also during recovery and again after an
        # unanswered probe, doubling each time: when the last ACKs of a recovery are lost,
        # nothing else would reveal the loss before the RTO. Only the first probe of a
        # silence pushes the RTO back, so a dead path still times out.
        cdef double pto
        if self.rtt.srtt == 0 or self.snd_una == self.snd_max:
            self.tlp_at = 0
            return
        pto = 2 * self.rtt.srtt
        if self.snd_max - self.snd_una <= self.smss and not self.in_recovery:
            pto += WC_DELACK             # (a retransmission fills a hole: ACKed at once)
        else:
            pto += TLP_MIN_EXTRA
        if self.tlp_count:
            pto *= 1 << (self.tlp_count if self.tlp_count < 6 else 6)
        if self.rtx_at and now + pto >= self.rtx_at:
            self.tlp_at = self.rtx_at      # RFC 8985 §7.2: the probe replaces the first RTO
            return
        self.tlp_at = now + pto

    cdef int _retransmit_timeout(self, double now) except -1:
        if self._state == SYN_SENT or self._state == SYN_RECEIVED and not self.syn_acked:
            self.retries += 1
            if self.retries > SYN_RETRIES:
                self._close(_errno.ETIMEDOUT)
                return 0
            rto_backoff(&self.rtt)
            self.timeouts += 1
            self.snd_max = self.iss        # resend the SYN
            self.stack._want_output(self)
            return 0
        if self._state == CLOSED or self._state == TIME_WAIT:
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
            rto_backoff(&self.rtt)
            self.rtx_at = now + self.rtt.rto
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
        # start from one segment. Every segment not SACKed is lost (Linux keeps the SACK
        # scoreboard across a timeout, as RFC 6675 §5.1 allows).
        if not self.in_recovery:
            self._start_episode()
        if not self.in_recovery or self.retries == 1:
            cubic_on_congestion(&self.cc, self.smss, self.snd_max - self.snd_una)
        self.cc.cwnd = self.smss
        self.in_recovery = True
        self.rto_recovery = True
        self.recover = self.snd_max
        cdef uint32_t i
        cdef SegRec* rec
        for i in range(self.segq.n):
            rec = segq_at(&self.segq, i)
            if not (rec.flags & (SEG_SACKED | SEG_LOST)):
                rec.flags = (rec.flags | SEG_LOST) & ~SEG_RETRANS
                self.lost_bytes += rec.end - rec.start
        self.rexmit_hint = self.snd_una
        self.tlp_active = False
        self.reo_at = 0
        self.rtt_timing = False
        self.dupacks = 0
        rto_backoff(&self.rtt)
        self.stack._want_output(self)
        return 0

    # -- segment arrival (RFC 9293 §3.10.7) ---------------------------------------------------

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
            if self.rbuf.max > 65535:
                self.rbuf.max = 65535
        self.sack_ok = s.sack_ok and self.stack.sack_enabled
        self.ts_ok = s.has_ts and self.stack.timestamps_enabled
        if self.ts_ok:
            self.ts_recent = s.tsval
        self.smss = umin(self.peer_mss, self.mss_ip) - (12 if self.ts_ok else 0)
        if self.smss < 64:
            self.smss = 64
        self.cc.cwnd = INITIAL_CWND_SEGMENTS * self.smss

    cdef void _set_established(self):
        self._state = ESTABLISHED
        self.retries = 0
        self.rtx_at = 0
        self.expire_at = 0              # the SYN_RECEIVED give-up deadline
        self._event(TEV_CONNECTED)

    cdef int _input(self, Segment* s, double now) except -1:
        self.segs_in += 1
        if self._state == SYN_SENT:
            return self._input_syn_sent(s, now)
        cdef _StackBase stack = self.stack
        cdef uint32_t wnd = self._receive_window()
        cdef uint32_t seg_len = s.len + (1 if s.flags & F_SYN else 0) + (1 if s.flags & F_FIN else 0)
        cdef bint ok
        if self._state == SYN_RECEIVED and s.flags & F_SYN and not (s.flags & F_RST) \
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
            if s.len and seq_le(s.seq + s.len, self.rcv_nxt):
                self._note_dsack(s.seq, s.seq + s.len)
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
                    if s.len:
                        self._note_dsack(s.seq, s.seq + s.len)   # RFC 2883 §4.1.1
                else:
                    stack.drops[D_OUT_OF_WINDOW] += 1
                self._owe_ack_now()
                if self._state == TIME_WAIT and s.flags & F_FIN:
                    self.expire_at = now + self.stack.time_wait
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
            if cut and s.len:
                self._note_dsack(s.seq, s.seq + umin(cut, s.len))   # RFC 2883 §4.1.1
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
            if self._state == SYN_RECEIVED and self.listener is not None:
                self._close(0)        # back to LISTEN: the listener never saw it
            elif self._state in (CLOSING, LAST_ACK, TIME_WAIT):
                self._close(0)
            else:
                self._close(_errno.ECONNRESET if self._state != SYN_RECEIVED else _errno.ECONNREFUSED)
            return 0
        # Fourth: SYN in a synchronized state (RFC 5961 §4.2: challenge ACK).
        if s.flags & F_SYN:
            if self._state == SYN_RECEIVED and s.seq + 1 == self.rcv_nxt:
                # the peer retransmitted its SYN: our SYN-ACK was lost
                self.snd_max = self.iss
                stack._want_output(self)
                return 0
            self._owe_ack_now()
            return 0
        # Fifth: the ACK field.
        if not (s.flags & F_ACK):
            return 0
        if self._state == SYN_RECEIVED:
            if seq_gt(s.ack, self.snd_una) and seq_le(s.ack, self.snd_max):
                self.syn_acked = True
                self.snd_wnd = s.wnd << self.snd_wscale
                self.max_snd_wnd = self.snd_wnd
                self.snd_wl1 = s.seq
                self.snd_wl2 = s.ack
                self._set_established()
                if self.listener is not None:
                    if not stack._passive_established(self):
                        return 0
            else:
                stack._send_rst(&self.key, s.ack, 0, F_RST)
                return 0
        if self._process_ack(s, now) != 0:
            return 0
        if self._state == CLOSED:
            return 0
        # Seventh: segment text.
        if s.len:
            if self._state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2) and not self.app_closed:
                self._receive_data(s, now)
            elif self.app_closed and self._state in (FIN_WAIT_1, FIN_WAIT_2):
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
        self.rbuf.read_seq = self.rcv_nxt
        self._negotiate(s)
        if ack_ok:
            self.snd_una = s.ack
            self.syn_acked = True
            self.snd_wnd = s.wnd           # RFC 7323 §2.2: the window in a SYN is never scaled
            self.max_snd_wnd = self.snd_wnd
            self.snd_wl1 = s.seq
            self.snd_wl2 = s.ack
            # the SYN's own send time first (microseconds; Karn: not if it was resent), else
            # the echo of our 1 ms timestamp clock
            if self.retries == 0 and self.rtt_timing:
                rtt_sample(&self.rtt, now - self.rtt_time)
            elif self.ts_ok and s.has_ts and s.tsecr and ts_rtt(now, s.tsecr - self.ts_offset) > 0:
                rtt_sample(&self.rtt, ts_rtt(now, s.tsecr - self.ts_offset))
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
            self._state = SYN_RECEIVED
            self.snd_wnd = s.wnd
            self.snd_max = self.iss
            self.stack._want_output(self)
        return 0

    cdef int _process_ack(self, Segment* s, double now) except -1:
        """RFC 9293 §3.10.7.4 fifth step for synchronized states, plus loss recovery (SACK
        scoreboard, RACK-TLP, PRR, DSACK undo) and the congestion window. Returns 1 when the
        segment must be dropped."""
        cdef uint32_t acked, freed, flight_before, old_wnd, una_before, sacked_before
        cdef uint32_t left, right, i
        cdef uint32_t tsecr_ms = 0
        cdef int64_t delivered
        cdef bint dsack = False
        cdef SegRec* rec
        if seq_gt(s.ack, self.snd_max):
            self.stack.drops[D_BAD_ACK] += 1
            self._owe_ack_now()
            return 1
        flight_before = self.snd_max - self.snd_una
        old_wnd = self.snd_wnd
        una_before = self.snd_una
        sacked_before = self.sacked_bytes
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
        if self.ts_ok and s.has_ts and s.tsecr:
            tsecr_ms = s.tsecr - self.ts_offset     # our ts_clock when the echoed segment left
        self.ack_first_ts = 0
        self.sack_first_ts = 0
        self.ack_retrans = False
        if self.sack_ok and s.nsack:
            self.sack_blocks_received += s.nsack
            # RFC 2883 §4: a DSACK is a first block below the ACK or inside the second block.
            if seq_le(s.sack[1], s.ack) or (s.nsack > 1 and seq_ge(s.sack[0], s.sack[2])
                                             and seq_le(s.sack[1], s.sack[3])):
                dsack = True
                self._on_dsack(s.sack[0], s.sack[1])
            for i in range(s.nsack):
                left = s.sack[2 * i]
                right = s.sack[2 * i + 1]
                # RFC 2018 §5 / 6675: only what lies above the cumulative ACK and was sent.
                if not seq_lt(left, right) or seq_gt(right, self.snd_max):
                    continue
                left = seq_max(left, seq_max(s.ack, self.snd_una))
                if seq_lt(left, right):
                    self._sack_records(left, right, now, tsecr_ms)
        if seq_gt(s.ack, self.snd_una):
            acked = s.ack - self.snd_una
            self._ack_records(s.ack, now, tsecr_ms)
            self.snd_una = s.ack
            # Free acknowledged bytes from the send ring (the FIN has no byte in it).
            freed = send_ring_ack(&self.sbuf, s.ack)
            if freed:
                self.bytes_acked += freed
                self._event(TEV_WRITABLE)
            # RTT, as Linux (tcp_ack_update_rtt): from the transmit time of the oldest segment
            # this ACK acknowledged, unless it acknowledged a retransmission (Karn); else of
            # the oldest it SACKed; else Karn's one timed segment (the SYN-ACK, or data without
            # timestamps); else the timestamp echo (RFC 7323 §4.1, whole milliseconds), which
            # after a loss echoes an older segment.
            if self.ack_first_ts and not self.ack_retrans:
                rtt_sample(&self.rtt, now - self.ack_first_ts)
            elif self.sack_first_ts:
                rtt_sample(&self.rtt, now - self.sack_first_ts)
            elif self.rtt_timing and seq_gt(s.ack, self.rtt_seq):
                rtt_sample(&self.rtt, now - self.rtt_time)
            elif tsecr_ms and ts_rtt(now, tsecr_ms) > 0:
                rtt_sample(&self.rtt, ts_rtt(now, tsecr_ms))
            self.rtt_timing = False if self.rtt_timing and seq_gt(s.ack, self.rtt_seq) \
                else self.rtt_timing
            self.retries = 0
            self.dupacks = 0
            scoreboard_trim(&self.sacked, self.snd_una)
            if self.in_recovery:
                if seq_ge(s.ack, self.recover):
                    self._exit_recovery()    # RFC 6582 §3.2 step 3 / RFC 6675: full ACK
                elif not self.sack_ok and self.segq.n:
                    # NewReno partial ACK: the next segment is lost too.
                    rec = segq_at(&self.segq, 0)
                    if not (rec.flags & (SEG_LOST | SEG_RETRANS | SEG_SACKED)):
                        self._mark_lost(rec)
                if self.in_recovery and self.rto_recovery and self.cc.cwnd < self.cc.ssthresh:
                    # slow start back up after a timeout, still retransmitting lost data
                    self.cc.cwnd += umin(acked, 2 * self.smss)
            else:
                cubic_on_ack(&self.cc, acked, flight_before, self.smss, self.rtt.srtt, now)
            # RFC 8985 §7.4: the end of a TLP episode (Linux tcp_process_tlp_ack).
            self.tlp_count = 0
            if self.tlp_active and seq_ge(s.ack, self.tlp_end_seq):
                self.tlp_active = False
                if self.tlp_is_retrans and not dsack and not self.in_recovery:
                    # the probe repaired a loss on its own: a congestion event (§7.4.2)
                    self.tlp_recoveries += 1
                    cubic_on_congestion(&self.cc, self.smss, flight_before)
                    self.cc.cwnd = self.cc.ssthresh
            if self.snd_una == self.snd_max:
                self.rtx_at = 0
                self.tlp_at = 0
                self.reo_at = 0
            else:
                self.rtx_at = now + self.rtt.rto
                self._arm_tlp(now)
            if self.persist and self.snd_wnd:
                self.persist = False
            # Our FIN acknowledged?
            if self.fin_sent and self.snd_una == self.fin_seq + 1:
                if self._state == FIN_WAIT_1:
                    self._state = FIN_WAIT_2
                    if self.app_closed:
                        self.expire_at = now + FIN_WAIT_2_TIMEOUT
                elif self._state == CLOSING:
                    self._enter_time_wait(now)
                elif self._state == LAST_ACK:
                    self._close(0)
                    return 1
            self.stack._want_output(self)
        elif s.ack == self.snd_una and s.len == 0 and not (s.flags & (F_SYN | F_FIN)) \
                and self.snd_una != self.snd_max and self.snd_wnd == old_wnd:
            # RFC 5681 §2 duplicate ACK
            self.dupacks += 1
            if self.sack_first_ts:
                rtt_sample(&self.rtt, now - self.sack_first_ts)
            if self.sacked_bytes != sacked_before:
                self.tlp_count = 0
                self._arm_tlp(now)       # progress: the probe waits from here
        if self.snd_una != self.snd_max:
            self._detect_loss(now)
        if self.in_recovery and not self.rto_recovery:
            # RFC 6937: DeliveredData = change in snd.una + change in SACKed bytes
            delivered = <int64_t>(self.snd_una - una_before) + <int64_t>self.sacked_bytes \
                - <int64_t>sacked_before
            self._prr_update(<uint32_t>delivered if delivered > 0 else 0)
        if self.in_recovery or self.sacked_bytes != sacked_before:
            self.stack._want_output(self)     # the window or the pipe changed
        return 0

    # -- loss recovery: scoreboard, RACK-TLP, PRR, DSACK -----------------------------------

    cdef uint32_t _ack_records(self, uint32_t ack, double now, uint32_t tsecr_ms):
        """The cumulative ACK reached `ack`: retire the records below it (RACK learns from
        those not SACKed before); returns how many records were retired."""
        cdef SegRec* rec
        cdef uint32_t cut, k = 0
        while self.segq.n:
            rec = segq_at(&self.segq, 0)
            if seq_le(rec.end, ack):
                if rec.flags & SEG_SACKED:
                    self.sacked_bytes -= rec.end - rec.start
                else:
                    self._rack_delivered(rec, now, tsecr_ms)
                    if rec.flags & SEG_EVER_RETRANS:
                        self.ack_retrans = True
                    elif self.ack_first_ts == 0 or rec.xmit_ts < self.ack_first_ts:
                        self.ack_first_ts = rec.xmit_ts
                if rec.flags & SEG_LOST:
                    self.lost_bytes -= rec.end - rec.start
                segq_pop_front(&self.segq)
                k += 1
            elif seq_lt(rec.start, ack):
                cut = ack - rec.start
                if rec.flags & SEG_LOST:
                    self.lost_bytes -= cut
                if rec.flags & SEG_SACKED:
                    self.sacked_bytes -= cut
                rec.start = ack
                break
            else:
                break
        if seq_lt(self.rexmit_hint, ack):
            self.rexmit_hint = ack
        return k

    cdef void _sack_records(self, uint32_t left, uint32_t right, double now, uint32_t tsecr_ms):
        """A SACK block [left, right): mark the records it newly covers. `sacked` remembers
        the ranges already applied, so only the new parts are walked."""
        cdef uint32_t cur = left
        cdef int j
        for j in range(self.sacked.n):
            if seq_le(self.sacked.r[j].end, cur):
                continue
            if seq_ge(self.sacked.r[j].start, right):
                break
            if seq_lt(cur, self.sacked.r[j].start):
                self._sack_span(cur, self.sacked.r[j].start, now, tsecr_ms)
            cur = self.sacked.r[j].end
            if seq_ge(cur, right):
                break
        if seq_lt(cur, right):
            self._sack_span(cur, right, now, tsecr_ms)
        ranges_insert(&self.sacked, left, right)    # full: forgotten, the walk is idempotent

    cdef void _sack_span(self, uint32_t left, uint32_t right, double now, uint32_t tsecr_ms):
        cdef uint32_t i = segq_find(&self.segq, left)
        cdef SegRec* rec
        while i < self.segq.n:
            rec = segq_at(&self.segq, i)
            if seq_gt(rec.end, right):
                break
            if seq_ge(rec.start, left) and not (rec.flags & SEG_SACKED):
                rec.flags |= SEG_SACKED
                self.sacked_bytes += rec.end - rec.start
                if rec.flags & SEG_LOST:
                    rec.flags &= ~SEG_LOST
                    self.lost_bytes -= rec.end - rec.start
                self._rack_delivered(rec, now, tsecr_ms)
                if not (rec.flags & SEG_EVER_RETRANS) and (
                        self.sack_first_ts == 0 or rec.xmit_ts < self.sack_first_ts):
                    self.sack_first_ts = rec.xmit_ts
            i += 1

    cdef void _rack_delivered(self, SegRec* rec, double now, uint32_t tsecr_ms):
        """RFC 8985 §6.2 steps 2-3 for one newly delivered segment."""
        cdef double rtt = now - rec.xmit_ts
        # step 3: reordering is a segment delivered below the highest one delivered
        # (retransmissions excepted)
        if seq_gt(rec.end, self.rack_fack):
            self.rack_fack = rec.end
        elif seq_lt(rec.end, self.rack_fack) and not (rec.flags & SEG_EVER_RETRANS):
            self.reordering_seen = True
        # step 2: an ACK of a retransmitted segment sooner than min_rtt after it was sent
        # acknowledges the original (the timestamp echo cannot tell: for data above a hole
        # the receiver echoes an older timestamp, RFC 7323 §4.3)
        if rec.flags & SEG_EVER_RETRANS and rtt + 1e-6 < self.rtt.min_rtt:
            return
        if self.rack_xmit_ts == 0 or rec.xmit_ts > self.rack_xmit_ts or \
                (rec.xmit_ts == self.rack_xmit_ts and seq_gt(rec.end, self.rack_end_seq)):
            self.rack_xmit_ts = rec.xmit_ts
            self.rack_end_seq = rec.end
            self.rack_rtt = rtt
            self.rack_retrans = (rec.flags & SEG_EVER_RETRANS) != 0

    cdef double _reo_wnd(self) noexcept:
        """RFC 8985 §6.2 step 4: the reordering window. Capped at 4 SRTT rather than SRTT:
        on a path faster than its reordering (a 0.3 ms RTT, datagrams held up to 1 ms) the
        RFC's cap makes every late segment a spurious retransmission and window cut (at
        2 SRTT the benchmark's relay still caused about 40 % of all recoveries at 1 % loss).
        Linux meets the same relay with an SRTT of 3-4 ms (its queue), where SRTT suffices.
        The window only widens this far after DSACKs proved retransmissions spurious."""
        cdef double w
        if not self.reordering_seen:
            if self.in_recovery or self.sacked_bytes >= DUP_THRESH * self.smss:
                return 0
        w = self.rtt.min_rtt * self.reo_wnd_mult / 4
        return w if w < REO_WND_CAP * self.rtt.srtt else REO_WND_CAP * self.rtt.srtt

    cdef bint _rack_detect(self, double now):
        """RFC 8985 §6.2 step 5: mark lost every segment sent before the most recently sent
        delivered one by more than RACK.rtt + reo_wnd; arm the reordering timer for the
        others. True when something was marked."""
        cdef double reo, remaining, timeout = 0
        cdef uint32_t i
        cdef bint marked = False
        cdef SegRec* rec
        if self.rack_xmit_ts == 0:
            return False
        reo = self._reo_wnd()
        for i in range(self.segq.n):
            rec = segq_at(&self.segq, i)
            if rec.flags & (SEG_SACKED | SEG_LOST):
                continue
            if not self.rack_retrans and seq_ge(rec.start, self.rack_end_seq) \
                    and not (rec.flags & SEG_RETRANS):
                # sent after RACK's segment (first transmissions go out in sequence order);
                # a retransmission further up is later still
                break
            if not (self.rack_xmit_ts > rec.xmit_ts or (self.rack_xmit_ts == rec.xmit_ts
                                                        and seq_gt(self.rack_end_seq, rec.end))):
                continue
            remaining = rec.xmit_ts + self.rack_rtt + reo - now
            if remaining <= 1e-9:
                self._mark_lost(rec)
                marked = True
            elif remaining > timeout:
                timeout = remaining
        self.reo_at = now + timeout if timeout > 0 else 0
        return marked

    cdef void _mark_lost(self, SegRec* rec):
        rec.flags = (rec.flags | SEG_LOST) & ~SEG_RETRANS
        self.lost_bytes += rec.end - rec.start
        self.rack_marks += 1
        if seq_lt(rec.start, self.rexmit_hint):
            self.rexmit_hint = rec.start

    cdef void _start_episode(self):
        """A congestion episode begins: remember what to restore if DSACKs later show every
        retransmission of it was spurious (RFC 3708, Linux's undo)."""
        self.prior_cc = self.cc
        self.undo_valid = True
        self.undo_marker = self.snd_una
        self.undo_retrans = 0
        self.retx_ranges.n = 0

    cdef void _enter_recovery(self, double now):
        # RFC 6675 §5 step 4 / RFC 5681 §3.2 with RFC 9438 §4.6: one reduction per episode;
        # PRR (RFC 6937) then paces the window down to ssthresh.
        self.in_recovery = True
        self.rto_recovery = False
        self.recover = self.snd_max
        self.fast_retransmits += 1
        self.recoveries += 1
        self._start_episode()
        cubic_on_congestion(&self.cc, self.smss, self.snd_max - self.snd_una)
        self.prr_delivered = 0
        self.prr_out = 0
        self.recover_fs = self.snd_max - self.snd_una

    cdef void _prr_update(self, uint32_t delivered):
        """RFC 6937 with the slow-start reduction bound (PRR-SSRB), per ACK in recovery."""
        cdef int64_t pipe = self._pipe()
        cdef int64_t ssthresh = self.cc.ssthresh
        cdef int64_t sndcnt, limit, fs
        if delivered == 0:
            if self.prr_out == 0:
                self.cc.cwnd = <uint32_t>(pipe + self.smss)   # the fast retransmit itself
            return
        self.prr_delivered += delivered
        if pipe > ssthresh:
            fs = self.recover_fs if self.recover_fs else 1
            sndcnt = (<int64_t>self.prr_delivered * ssthresh + fs - 1) // fs - self.prr_out
        else:
            limit = <int64_t>self.prr_delivered - self.prr_out
            if limit < delivered:
                limit = delivered
            limit += self.smss
            sndcnt = ssthresh - pipe
            if sndcnt > limit:
                sndcnt = limit
        if sndcnt < 0:
            sndcnt = 0
        if self.prr_out == 0 and sndcnt < self.smss:
            sndcnt = self.smss
        self.cc.cwnd = <uint32_t>(pipe + sndcnt)
        if self.cc.cwnd < self.smss:
            self.cc.cwnd = self.smss

    cdef void _exit_recovery(self):
        self.in_recovery = False
        if self.rto_recovery:
            if self.cc.cwnd > self.cc.ssthresh:
                self.cc.cwnd = self.cc.ssthresh
        else:
            self.cc.cwnd = self.cc.ssthresh     # RFC 6937: the reduction ends at ssthresh
        self.rto_recovery = False
        # RFC 8985 §6.2 step 4: a grown reordering window lasts REO_WND_PERSIST recoveries
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0:
            self.reo_wnd_mult = 1

    cdef void _on_dsack(self, uint32_t left, uint32_t right):
        """The peer reported [left, right) received twice (RFC 2883). A duplicate of one of
        our retransmissions means it was spurious: widen RACK's reordering window (once per
        round trip, RFC 8985 §6.2) and undo the episode's reduction once every one of its
        retransmissions was (RFC 3708). Network duplicates of first transmissions only count."""
        cdef int j, segs
        cdef bint retx = False
        self.dsack_received += 1
        if not seq_lt(left, right):
            return
        for j in range(self.retx_ranges.n):
            if seq_le(self.retx_ranges.r[j].start, left) \
                    and seq_le(right, self.retx_ranges.r[j].end):
                retx = True
                break
        if not retx:
            return
        segs = <int>((right - left + self.smss - 1) // self.smss)
        self.spurious_retrans += segs
        self.reordering_seen = True      # what looked lost was only late
        if self.dsack_round_set and seq_ge(self.snd_una, self.dsack_round):
            self.dsack_round_set = False
        if not self.dsack_round_set:
            self.dsack_round_set = True
            self.dsack_round = self.snd_max
            self.reo_wnd_mult += 1
            self.reo_wnd_persist = REO_WND_PERSIST
        if self.undo_valid and seq_ge(left, self.undo_marker):
            self.undo_retrans -= segs
            if self.undo_retrans <= 0:
                # every retransmission was spurious: back to the window before the episode
                self.undo_valid = False
                self.undo_count += 1
                if self.prior_cc.cwnd > self.cc.cwnd:
                    self.cc.cwnd = self.prior_cc.cwnd
                if self.prior_cc.ssthresh > self.cc.ssthresh:
                    self.cc.ssthresh = self.prior_cc.ssthresh
                self.cc.w_max = self.prior_cc.w_max
                self.cc.epoch_start = 0
                self.in_recovery = False
                self.rto_recovery = False

    cdef void _note_dsack(self, uint32_t start, uint32_t end):
        """Receiver: report [start, end) as a duplicate in the next ACK (RFC 2883)."""
        self.quick_acks = QUICK_ACKS
        if self.sack_ok:
            self.dsack_pending = True
            self.dsack_start = start
            self.dsack_end = end

    cdef void _detect_loss(self, double now):
        """RACK (RFC 8985) marks lost segments from what the peer SACKed and acknowledged;
        without SACK, three duplicate ACKs or a NewReno partial ACK mark the first one. A
        first loss starts fast recovery."""
        cdef bint marked = False
        cdef SegRec* rec
        if self.sack_ok:
            if self.sacked_bytes or self.in_recovery:
                marked = self._rack_detect(now)
        elif self.dupacks >= DUP_THRESH and self.segq.n and not self.in_recovery:
            rec = segq_at(&self.segq, 0)
            if not (rec.flags & (SEG_LOST | SEG_SACKED)):
                self._mark_lost(rec)
                marked = True
        if marked and not self.in_recovery:
            self._enter_recovery(now)
        if self.lost_bytes:
            self.stack._want_output(self)

    cdef uint32_t _pipe(self) noexcept:
        """RFC 6675 §4 SetPipe: in flight minus SACKed minus lost and not yet resent."""
        cdef uint32_t flight = self.snd_max - self.snd_una
        cdef uint32_t used = self.sacked_bytes + self.lost_bytes
        return flight - used if used < flight else 0

    cdef int _record_sent(self, uint32_t seq, uint32_t end, double now, bint new) except -1:
        """Keep the segment queue up to date with a transmission of [seq, end)."""
        cdef SegRec* rec
        cdef uint32_t i
        if new:
            if self.segq.n == 0 or seq_ge(seq, segq_at(&self.segq, self.segq.n - 1).end):
                segq_push(&self.segq, seq, end, now)
                return 0
        i = segq_find(&self.segq, seq)
        if i >= self.segq.n:
            return 0
        rec = segq_at(&self.segq, i)
        if seq_gt(rec.start, seq):
            return 0
        if seq_lt(rec.start, seq):
            segq_insert_after(&self.segq, i)
            segq_at(&self.segq, i).end = seq
            i += 1
            segq_at(&self.segq, i).start = seq
        rec = segq_at(&self.segq, i)
        if seq_gt(rec.end, end):
            segq_insert_after(&self.segq, i)
            segq_at(&self.segq, i).end = end
            segq_at(&self.segq, i + 1).start = end
            rec = segq_at(&self.segq, i)
        if rec.flags & SEG_LOST:
            self.lost_bytes -= rec.end - rec.start
        rec.flags = (rec.flags & ~SEG_LOST) | SEG_RETRANS | SEG_EVER_RETRANS
        rec.xmit_ts = now
        if self.undo_valid:
            self.undo_retrans += 1
            if not ranges_insert(&self.retx_ranges, rec.start, rec.end):
                self.undo_valid = False       # too scattered to account for: no undo
        return 0

    cdef void _receive_data(self, Segment* s, double now):
        cdef uint32_t end, n
        cdef int k
        cdef double rtt
        n = s.len
        # The ring holds bytes from read_seq; refuse what does not fit (counted).
        cdef uint32_t space = recv_ring_space(&self.rbuf, s.seq)
        if n > space:
            self.stack.drops[D_BUFFER_FULL] += 1
            n = space
            if n == 0:
                self._owe_ack_now()
                return
        recv_ring_write(&self.rbuf, s.seq, s.data, n)
        end = s.seq + n
        self.bytes_received += n
        if self.ts_ok and s.has_ts and s.tsecr:
            # Linux tcp_rcv_rtt_measure_ts: the echo of our clock bounds the RTT from above.
            rtt = ts_rtt(now, s.tsecr - self.ts_offset)
            if rtt > 0 and (self.rcv_rtt == 0 or rtt < self.rcv_rtt):
                self.rcv_rtt = rtt
        if s.seq == self.rcv_nxt:
            self.rcv_nxt = end
            if self.ooo.n:
                # the hole filled: merge the ranges now in order (RFC 5681 §4.2: ACK at once)
                self.rcv_nxt = assembler_advance(&self.ooo, self.rcv_nxt)
                self.ack_now = True
                self.quick_acks = QUICK_ACKS
                if self.peer_fin_pending and self.rcv_nxt == self.peer_fin_seq:
                    self._receive_fin(now)
            self.segs_unacked += 1
            if self.quick_acks:
                # after loss or reordering, ACK every segment for a while (Linux quickack
                # mode): the sender's window is small then, delayed ACKs would stall it
                self.quick_acks -= 1
                self.ack_now = True
            self._event(TEV_READABLE)
            self.stack._want_output(self)
        else:
            self.ooo_segments += 1
            self.quick_acks = QUICK_ACKS
            for k in range(self.ooo.n):
                if seq_le(self.ooo.r[k].start, s.seq) and seq_le(end, self.ooo.r[k].end):
                    self._note_dsack(s.seq, end)   # RFC 2883 §4.1.2: a duplicate above a hole
                    break
            if not ranges_insert(&self.ooo, s.seq, end):
                self.stack.drops[D_OOO_OVERFLOW] += 1
            self.ooo_recent_start = s.seq
            self._owe_ack_now()     # RFC 5681 §4.2: out-of-order data → immediate (dup) ACK

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
        if self._state in (SYN_RECEIVED, ESTABLISHED):
            self._state = CLOSE_WAIT
        elif self._state == FIN_WAIT_1:
            if self.fin_sent and self.snd_una == self.fin_seq + 1:
                self._enter_time_wait(now)
            else:
                self._state = CLOSING
        elif self._state == FIN_WAIT_2:
            self._enter_time_wait(now)

    # -- output -------------------------------------------------------------------------------

    cdef int _output(self, PacketBatch tx, double now) except -1:
        """Cut what is due into `tx`. Returns 1 when tx filled up before we were done."""
        cdef uint32_t sent_any = 0
        cdef uint32_t pipe, room, wnd_end, data_end, n, seq, hole_end
        cdef uint32_t in_flight, i
        cdef uint8_t flags
        cdef double delack
        cdef SegRec* rec
        if self._state == CLOSED:
            return 0
        if self._state == SYN_SENT or (self._state == SYN_RECEIVED and not self.syn_acked):
            if self.snd_max == self.iss:
                if tx.count >= tx.slots:
                    return 1
                flags = F_SYN if self._state == SYN_SENT else (F_SYN | F_ACK)
                self._emit(tx, self.iss, flags, 0, now)
                if self.retries == 0:
                    self.rtt_timing = True
                    self.rtt_time = now
                    self.rtt_seq = self.iss
                self.snd_max = self.iss + 1
                self.rtx_at = now + self.rtt.rto
                if self._state == SYN_RECEIVED and self.expire_at == 0:
                    self.expire_at = now + SYN_RECEIVED_TIMEOUT
            elif self.ack_now and self._state == SYN_RECEIVED:
                self.ack_now = False
            return 0
        if self._state == TIME_WAIT:
            if self.ack_now:
                if tx.count >= tx.slots:
                    return 1
                self._emit(tx, self.snd_max, F_ACK, 0, now)
            return 0
        data_end = self.sbuf.seq + self.sbuf.len
        if self.tlp_send:
            if tx.count >= tx.slots:
                return 1
            self.tlp_send = False
            if self.snd_una != self.snd_max and self.segq.n:
                # RFC 8985 §7.3: send new data if the window allows, else resend the last segment
                wnd_end = self.snd_una + self.snd_wnd
                if seq_lt(self.snd_max, data_end) and seq_gt(wnd_end, self.snd_max):
                    # two segments where there are (RFC 9002 §6.2.4 allows two probes): a
                    # receiver ACKs every second segment at once, a lone one only after its
                    # delayed-ACK timer (Linux: 40 ms)
                    for i in range(2):
                        if not (seq_lt(self.snd_max, data_end) and seq_gt(wnd_end, self.snd_max)) \
                                or tx.count >= tx.slots:
                            break
                        n = umin(umin(data_end - self.snd_max, self.smss), wnd_end - self.snd_max)
                        self._send_range(tx, self.snd_max, n, data_end, now, False)
                    self.tlp_is_retrans = False
                else:
                    # the highest segment not SACKed (the last one, unless SACKs came back)
                    i = self.segq.n
                    while i > 1 and segq_at(&self.segq, i - 1).flags & SEG_SACKED:
                        i -= 1
                    rec = segq_at(&self.segq, i - 1)
                    seq = rec.start
                    n = rec.end - seq
                    if self.fin_sent and rec.end == self.fin_seq + 1:
                        n -= 1
                    self._send_range(tx, seq, n, data_end, now, True)
                    self.tlp_is_retrans = True
                self.tlp_active = True
                self.tlp_end_seq = self.snd_max
                sent_any += 1
        while True:
            if tx.count >= tx.slots:
                return 1
            pipe = self._pipe()
            # 1. RFC 6675 §5 NextSeg rule 1: retransmit what RACK (or the timeout) marked lost.
            if self.lost_bytes and pipe < self.cc.cwnd:
                i = segq_find(&self.segq, self.rexmit_hint)
                while i < self.segq.n and not (segq_at(&self.segq, i).flags & SEG_LOST):
                    i += 1
                if i < self.segq.n:
                    rec = segq_at(&self.segq, i)
                    self.rexmit_hint = rec.start
                    seq = rec.start
                    n = rec.end - seq
                    if self.fin_sent and rec.end == self.fin_seq + 1:
                        n -= 1
                    if seq_gt(seq + n, data_end):
                        n = data_end - seq if seq_lt(seq, data_end) else 0
                    if n or (self.fin_sent and seq == self.fin_seq):
                        self._send_range(tx, seq, n, data_end, now, True)
                    else:                     # nothing left to send for it (cannot happen)
                        rec.flags &= ~SEG_LOST
                        self.lost_bytes -= rec.end - rec.start
                    sent_any += 1
                    continue
                self.rexmit_hint = self.snd_max
                self.lost_bytes = 0           # (cannot happen: every lost record was found)
            # 2. New data within min(cwnd, the peer's window).
            in_flight = self.snd_max - self.snd_una
            if seq_lt(self.snd_max, data_end):
                wnd_end = self.snd_una + self.snd_wnd
                room = wnd_end - self.snd_max if seq_gt(wnd_end, self.snd_max) else 0
                if self.cc.cwnd > pipe:
                    room = umin(room, self.cc.cwnd - pipe)
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
                    self.rtx_at = now + self.rtt.rto
            # 3. Our FIN once all data was sent.
            if self.fin_queued and not self.fin_sent and self.snd_max == data_end:
                self._send_range(tx, self.snd_max, 0, data_end, now, False)
                sent_any += 1
                continue
            break
        if seq_lt(self.snd_max, data_end):
            # unsent data held back: by whichever window has less room left
            wnd_end = self.snd_una + self.snd_wnd
            room = wnd_end - self.snd_max if seq_gt(wnd_end, self.snd_max) else 0
            pipe = self._pipe()
            self._chrono(LIM_RWND if room <= (self.cc.cwnd - pipe if self.cc.cwnd > pipe else 0)
                         else LIM_CWND, now)
        else:
            self._chrono(LIM_APP if self.snd_max != self.snd_una else LIM_IDLE, now)
        if (self.ack_now or self.segs_unacked >= 2) and not sent_any:
            if tx.count >= tx.slots:
                return 1
            self._emit(tx, self.snd_max, F_ACK, 0, now)
        elif self.segs_unacked == 1 and not sent_any and self.delack_at == 0:
            # A lone segment waits for a second one at most 2 RTTs (within [1, 40] ms): on a
            # short path a sender with a small window (after a loss) would stall far longer.
            delack = 2 * self.rcv_rtt if self.rcv_rtt > 0 else DELACK_TIMEOUT
            self.delack_at = now + (DELACK_MIN if delack < DELACK_MIN else
                                    DELACK_TIMEOUT if delack > DELACK_TIMEOUT else delack)
        return 0

    cdef double _chrono_total(self, int kind) noexcept:
        cdef double t = self.chrono_time[kind]
        if kind == self.chrono_kind and self.chrono_since > 0 and self.stack is not None \
                and self.stack.now > self.chrono_since:
            t += self.stack.now - self.chrono_since
        return t

    cdef void _chrono(self, int kind, double now) noexcept:
        """Account the time since the last change to what limited the sender until now."""
        if kind == self.chrono_kind:
            return
        if self.chrono_since > 0 and now > self.chrono_since:
            self.chrono_time[self.chrono_kind] += now - self.chrono_since
        self.chrono_kind = kind
        self.chrono_since = now

    cdef uint32_t _send_range(self, PacketBatch tx, uint32_t seq, uint32_t n, uint32_t data_end,
                              double now, bint rexmit) except? 0xffffffff:
        """Emit data [seq, seq+n) (plus FIN when it ends at our FIN); returns the payload
        length actually sent (options may leave room for less)."""
        cdef uint8_t flags = F_ACK
        if n and seq + n == data_end:
            flags |= F_PSH
        if self.fin_queued and seq + n == self.fin_seq:
            flags |= F_FIN
        cdef uint32_t sent = self._emit(tx, seq, flags, n, now)
        if sent < n:
            flags &= ~(F_FIN | F_PSH)
            n = sent
        cdef uint32_t end = seq + n + (1 if flags & F_FIN else 0)
        if flags & F_FIN:
            self.fin_sent = True
        if self.in_recovery:
            self.prr_out += end - seq
        if rexmit or seq_lt(seq, self.snd_max):
            self.retransmits += 1
            if self.rtt_timing and seq_le(seq, self.rtt_seq):
                self.rtt_timing = False     # Karn: never time a retransmitted segment
            self._record_sent(seq, end, now, False)
        else:
            self._record_sent(seq, end, now, True)
            self.bytes_sent += n
            if not self.rtt_timing and not self.ts_ok:
                self.rtt_timing = True
                self.rtt_seq = seq
                self.rtt_time = now
        if seq_gt(end, self.snd_max):
            self.snd_max = end
        if self.rtx_at == 0 or self.persist:
            self.persist = False
            self.rtx_at = now + self.rtt.rto
        if not rexmit or self.tlp_at == 0:
            self._arm_tlp(now)       # RFC 8985 §7.2: (re)start the probe timer after new data
        return n

    cdef uint32_t _emit(self, PacketBatch tx, uint32_t seq, uint8_t flags, uint32_t n,
                        double now) except? 0xffffffff:
        """Build one segment into a tx slot: IP header, TCP header with options, payload
        [seq, seq+n) from the send ring, checksum. Returns the payload length that fit."""
        cdef _StackBase stack = self.stack
        cdef uint8_t opts[60]
        cdef uint32_t olen = 0, i, k, nblocks
        cdef int j
        if flags & F_SYN:
            # MSS, SACK-permitted + timestamps, window scale (the order Linux uses)
            opts[0] = 2
            opts[1] = 4
            store_u16be(opts + 2, <uint16_t>self.mss_ip)
            olen = 4
            if stack.sack_enabled and (self._state == SYN_SENT or self.sack_ok):
                opts[olen] = 4
                opts[olen + 1] = 2
                olen += 2
            else:
                opts[olen] = 1
                opts[olen + 1] = 1
                olen += 2
            if stack.timestamps_enabled and (self._state == SYN_SENT or self.ts_ok):
                opts[olen] = 8
                opts[olen + 1] = 10
                store_u32be(opts + olen + 2, ts_clock(now) + self.ts_offset)
                store_u32be(opts + olen + 6, self.ts_recent if self._state != SYN_SENT else 0)
                olen += 10
            else:
                memset(opts + olen, 1, 2)
                olen += 2
            if self._state == SYN_SENT or self.rcv_wscale:
                opts[olen] = 1
                opts[olen + 1] = 3
                opts[olen + 2] = 3
                opts[olen + 3] = OUR_WSCALE
                olen += 4
        else:
            if self.ts_ok:
                opts[0] = 1
                opts[1] = 1
                opts[2] = 8
                opts[3] = 10
                store_u32be(opts + 4, ts_clock(now) + self.ts_offset)
                store_u32be(opts + 8, self.ts_recent)
                olen = 12
            if self.sack_ok and (self.ooo.n or self.dsack_pending) and not (flags & F_RST):
                # RFC 2018 §4: the first block holds the most recently received segment;
                # RFC 2883: a duplicate to report goes before it.
                nblocks = umin(self.ooo.n + (1 if self.dsack_pending else 0),
                               3 if self.ts_ok else 4)
                opts[olen] = 1
                opts[olen + 1] = 1
                opts[olen + 2] = 5
                opts[olen + 3] = 2 + 8 * nblocks
                olen += 4
                k = <uint32_t>self.ooo.n              # index of the recent block (none: ooo.n)
                for j in range(self.ooo.n):
                    if seq_le(self.ooo.r[j].start, self.ooo_recent_start) \
                            and seq_lt(self.ooo_recent_start, self.ooo.r[j].end):
                        k = j
                        break
                i = 0
                if self.dsack_pending:
                    store_u32be(opts + olen, self.dsack_start)
                    store_u32be(opts + olen + 4, self.dsack_end)
                    olen += 8
                    i = 1
                    self.dsack_pending = False
                    self.dsack_sent += 1
                if k < <uint32_t>self.ooo.n and i < nblocks:
                    store_u32be(opts + olen, self.ooo.r[k].start)
                    store_u32be(opts + olen + 4, self.ooo.r[k].end)
                    olen += 8
                    i += 1
                for j in range(self.ooo.n):
                    if i >= nblocks:
                        break
                    if <uint32_t>j == k:
                        continue
                    store_u32be(opts + olen, self.ooo.r[j].start)
                    store_u32be(opts + olen + 4, self.ooo.r[j].end)
                    olen += 8
                    i += 1
        # Payload must fit the MTU with these options.
        cdef uint32_t iph = IPV4_HEADER if self.key.family == 4 else IPV6_HEADER
        if iph + TCP_HEADER + olen + n > stack.mtu:
            # the options left less room: a shorter segment no longer ends the data or the
            # stream, so it must not carry PSH/FIN (the caller sends the rest later)
            n = stack.mtu - iph - TCP_HEADER - olen
            flags &= ~(F_FIN | F_PSH)
        cdef uint32_t tcp_len = TCP_HEADER + olen + n
        cdef uint8_t* p = stack._slot(tx, iph + tcp_len)
        cdef uint8_t* t = p + iph
        stack.ip_id += 1
        write_ip_header(p, &self.key, tcp_len, stack.ip_id)
        cdef uint32_t field
        if flags & F_SYN:
            field = umin(self._receive_window(), 65535)    # never scaled in a SYN
        else:
            field = self._window_field()
        write_tcp_header(t, &self.key, seq, self.rcv_nxt if flags & F_ACK else 0,
                         TCP_HEADER + olen, flags, <uint16_t>field)
        if olen:
            memcpy(t + TCP_HEADER, opts, olen)
        if n:
            send_ring_copy(&self.sbuf, seq, t + TCP_HEADER + olen, n)
        write_tcp_checksum(t, &self.key, tcp_len)
        # bookkeeping for what every segment carries
        if flags & F_ACK:
            self.last_ack_sent = self.rcv_nxt
            self.ack_now = False
            self.segs_unacked = 0
            self.delack_at = 0
            if not (flags & F_SYN):
                self.rcv_adv = self.rcv_nxt + (field << self.rcv_wscale)
            else:
                self.rcv_adv = self.rcv_nxt + field
        self.segs_out += 1
        stack.segments_out += 1
        return n
