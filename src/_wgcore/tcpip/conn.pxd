# The TCP connection state machine (see conn.pyx for the theory of operation).
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from _wgcore.datapath cimport PacketBatch
from _wgcore.tcpip.wire cimport ConnKey, Segment, D_COUNT
from _wgcore.tcpip.storage cimport SendRing, RecvRing, RangeSet, SegQueue, SegRec
from _wgcore.tcpip.congestion cimport RttEstimator, Cubic

# RFC 9293 §3.3.2 states, spelled as the RFC spells them (Python: conn.TcpState).
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

# Events for Python, per connection (TcpConn.take_events) and per listener (Python:
# conn.TcpEvent).
cdef enum:
    TEV_CONNECTED = 1      # reached ESTABLISHED
    TEV_READABLE = 2       # new in-order data waits in the receive ring
    TEV_EOF = 4            # the peer's FIN arrived (after all its data)
    TEV_WRITABLE = 8       # acknowledged data freed send-ring space
    TEV_CLOSED = 16        # the connection left the stack (error: TcpConn.error)
    TEV_ACCEPT = 32        # listener: a connection waits in the accept queue

cdef enum:
    OUR_WSCALE = 7         # RFC 7323: windows up to 8 MiB

cdef class TcpConn


cdef class _StackBase:
    """What a connection needs from the stack that holds it. TcpStack (stack.pyx) extends it
    with the tables and the demultiplexer, and implements the two hooks at the end."""
    cdef readonly uint32_t mtu
    cdef readonly uint32_t send_buffer
    cdef readonly uint32_t receive_buffer
    cdef readonly uint32_t receive_buffer_initial
    cdef public bint sack_enabled
    cdef public bint timestamps_enabled
    cdef public double time_wait         # seconds in TIME_WAIT (2 MSL; shorter only in tests)
    cdef readonly uint64_t buffer_bytes  # bytes of send/receive rings allocated, all connections
    cdef public double now               # of the call in progress (input, output, timers)
    cdef bytes _secret                   # RFC 6528 ISN key
    cdef list _touched                   # connections and listeners with events (each once)
    cdef list _rsts                      # bare RSTs to send: (key bytes, seq, ack, flags)
    cdef list _probes                    # connections owing a zero-window probe
    cdef void** out_list                 # connections with something to send (borrowed)
    cdef uint32_t out_n, out_cap
    cdef uint16_t ip_id
    cdef uint64_t drops[D_COUNT]
    cdef readonly uint64_t segments_out, resets_sent

    @cython.final
    cdef void _want_output(self, TcpConn c)
    @cython.final
    cdef bytes _isn_hash(self, const ConnKey* key)
    @cython.final
    cdef uint8_t* _slot(self, PacketBatch tx, uint32_t length) except NULL
    @cython.final
    cdef int _send_rst(self, const ConnKey* key, uint32_t seq, uint32_t ack,
                       uint8_t flags) except -1
    @cython.final
    cdef int _send_rst_for(self, TcpConn c, uint32_t seq) except -1
    @cython.final
    cdef int _send_probe(self, TcpConn c) except -1
    # hooks (TcpStack): leave the tables; a passive open completed
    cdef void _remove(self, TcpConn c)
    cdef bint _passive_established(self, TcpConn c)


@cython.final
cdef class TcpConn:
    cdef _StackBase stack
    cdef ConnKey key
    cdef uint32_t hash
    cdef int _state                      # RFC 9293 state (Python: the `state` property)
    cdef readonly int error              # errno when the connection failed, else 0
    cdef object listener                 # passive open: the TcpListener that accepts us
    cdef int list_index                  # position in the stack's connection list, -1: none
    cdef bint in_output
    cdef bint in_touched
    cdef uint32_t events
    cdef uint32_t buf_bytes              # ring bytes counted in stack.buffer_bytes
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
    # sending side: the ring holds [sbuf.seq, sbuf.seq + sbuf.len)
    cdef SendRing sbuf
    cdef bint fin_queued                 # the application shut down its sending side
    cdef bint fin_sent
    cdef uint32_t fin_seq                # sequence number of our FIN (valid when fin_queued)
    cdef bint syn_acked
    # receiving side: the ring holds bytes from rbuf.read_seq on
    cdef RecvRing rbuf
    cdef RangeSet ooo                    # out-of-order ranges held in the ring (the assembler)
    cdef uint32_t ooo_recent_start       # the range containing the latest OOO segment
    cdef bint peer_fin                   # FIN received and processed (rcv_nxt counts it)
    cdef bint peer_fin_pending
    cdef uint32_t peer_fin_seq
    cdef bint app_closed                 # close() called: no more reads
    cdef double rcv_rtt                  # receiver's RTT estimate (timestamp echoes), for tuning
    cdef double space_time               # start of the current auto-tuning measurement
    cdef uint64_t space_mark             # bytes_read at space_time
    # receiver side of DSACK (RFC 2883): a duplicate to report in the next ACK's first block
    cdef bint dsack_pending
    cdef uint32_t quick_acks             # in-order segments still to ACK at once (Linux quickack)
    cdef uint32_t dsack_start, dsack_end
    # SACK scoreboard of our sent data (RFC 6675): `sacked` holds the SACKed ranges already
    # applied to `segq`, the per-segment retransmission queue that RACK (RFC 8985) works on
    cdef RangeSet sacked
    cdef SegQueue segq
    cdef uint32_t sacked_bytes           # bytes of SACKed records
    cdef uint32_t lost_bytes             # bytes of records marked lost, not yet resent
    cdef uint32_t rexmit_hint            # no lost record starts below this sequence number
    cdef bint in_recovery
    cdef bint rto_recovery               # recovery started by a timeout: slow start inside it
    cdef uint32_t recover                # snd_max when recovery started (RFC 6582)
    cdef int dupacks
    # RACK (RFC 8985 §6)
    cdef double rack_xmit_ts             # latest transmit time of a delivered segment
    cdef double ack_first_ts             # this ACK: oldest first transmission it acknowledged
    cdef double sack_first_ts            # ... and oldest first transmission it SACKed (0: none)
    cdef bint ack_retrans                # ... it acknowledged a retransmitted segment
    cdef uint32_t rack_end_seq
    cdef double rack_rtt
    cdef bint rack_retrans               # that segment was a retransmission
    cdef uint32_t rack_fack              # highest end_seq delivered
    cdef bint reordering_seen
    cdef int reo_wnd_mult
    cdef int reo_wnd_persist
    cdef bint dsack_round_set
    cdef uint32_t dsack_round
    # TLP (RFC 8985 §7)
    cdef bint tlp_active                 # a probe is outstanding (TLP.end_seq set)
    cdef bint tlp_is_retrans
    cdef uint32_t tlp_end_seq
    cdef int tlp_count                   # probes since the ACKs last made progress
    # PRR (RFC 6937)
    cdef uint32_t prr_delivered, prr_out, recover_fs
    # undo of a spurious reduction (RFC 3708 / Linux): the state before the episode
    cdef bint undo_valid
    cdef uint32_t undo_marker            # snd_una when the episode started
    cdef int undo_retrans                # retransmissions not yet shown spurious by DSACK
    cdef RangeSet retx_ranges            # what the episode retransmitted
    cdef Cubic prior_cc
    # RTT / RTO (RFC 6298)
    cdef RttEstimator rtt
    cdef int retries
    cdef int probes_unanswered           # zero-window probes since the peer last answered
    cdef uint32_t rtt_seq                # Karn timing without timestamps
    cdef double rtt_time
    cdef bint rtt_timing
    # congestion control (RFC 9438)
    cdef Cubic cc
    # ACK state
    cdef uint32_t segs_unacked
    cdef bint ack_now
    # deadlines (0 = unset)
    cdef double rtx_at                   # retransmission, SYN retry or zero-window probe
    cdef double delack_at
    cdef double expire_at                # TIME_WAIT end, FIN_WAIT_2 / SYN_RECEIVED give-up
    cdef double tlp_at                   # tail-loss probe (RFC 8985 §7)
    cdef bint tlp_send                   # the probe is due at the next output
    cdef double reo_at                   # RACK reordering timer (RFC 8985 §6.2 step 5)
    cdef bint persist
    # counters
    cdef readonly uint64_t bytes_sent, bytes_acked, bytes_received, bytes_read
    cdef readonly uint64_t segs_in, segs_out, retransmits, fast_retransmits, timeouts
    cdef readonly uint64_t ooo_segments, dup_segments, sack_blocks_received, window_probes
    cdef readonly uint64_t tail_probes, tlp_recoveries, rack_marks, spurious_retrans
    cdef readonly uint64_t undo_count, dsack_received, dsack_sent, recoveries
    # what held the sender back, in seconds (Linux's tcpi_busy_time / rwnd_limited /
    # sndbuf_limited, "chrono" stats): LIM_* in chrono_kind since chrono_since
    cdef double chrono_since
    cdef int chrono_kind
    cdef double chrono_time[4]

    cdef int _setup(self, _StackBase stack, const ConnKey* key, double now) except -1
    cdef inline uint32_t _readable(self) noexcept
    cdef void _after_read(self)
    cdef void _event(self, uint32_t ev)
    cdef void _close(self, int err)
    cdef void _account(self) noexcept
    cdef void _free_buffers(self) noexcept
    cdef void _enter_time_wait(self, double now) noexcept
    cdef uint32_t _receive_window(self) noexcept
    cdef uint32_t _window_field(self) noexcept
    cdef int _on_timer(self, double now) except -1
    cdef void _arm_tlp(self, double now)
    cdef int _retransmit_timeout(self, double now) except -1
    cdef void _negotiate(self, Segment* s)
    cdef void _set_established(self)
    cdef int _input(self, Segment* s, double now) except -1
    cdef void _owe_ack_now(self)
    cdef int _input_syn_sent(self, Segment* s, double now) except -1
    cdef int _process_ack(self, Segment* s, double now) except -1
    cdef void _detect_loss(self, double now)
    cdef void _rack_delivered(self, SegRec* rec, double now, uint32_t tsecr_ms)
    cdef double _reo_wnd(self) noexcept
    cdef bint _rack_detect(self, double now)
    cdef void _mark_lost(self, SegRec* rec)
    cdef void _enter_recovery(self, double now)
    cdef void _prr_update(self, uint32_t delivered)
    cdef void _exit_recovery(self)
    cdef void _on_dsack(self, uint32_t left, uint32_t right)
    cdef void _start_episode(self)
    cdef void _note_dsack(self, uint32_t start, uint32_t end)
    cdef void _sack_span(self, uint32_t left, uint32_t right, double now, uint32_t tsecr_ms)
    cdef void _sack_records(self, uint32_t left, uint32_t right, double now, uint32_t tsecr_ms)
    cdef uint32_t _ack_records(self, uint32_t ack, double now, uint32_t tsecr_ms)
    cdef int _record_sent(self, uint32_t seq, uint32_t end, double now, bint new) except -1
    cdef uint32_t _pipe(self) noexcept
    cdef void _receive_data(self, Segment* s, double now)
    cdef void _receive_fin(self, double now)
    cdef int _output(self, PacketBatch tx, double now) except -1
    cdef void _chrono(self, int kind, double now) noexcept
    cdef double _chrono_total(self, int kind) noexcept
    cdef uint32_t _send_range(self, PacketBatch tx, uint32_t seq, uint32_t n, uint32_t data_end,
                              double now, bint rexmit) except? 0xffffffff
    cdef uint32_t _emit(self, PacketBatch tx, uint32_t seq, uint8_t flags, uint32_t n,
                        double now) except? 0xffffffff
