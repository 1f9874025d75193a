# cython: language_level=3
"""The TCP stack of one interface: connection table, listeners, demultiplexer, output, timers.

Theory of operation
-------------------
A :class:`TcpStack` sits between the WireGuard data path and Python's asyncio adapter. It never
reads a clock, sleeps or does I/O: every call takes ``now`` (seconds, monotonic) and the
batches to read from or write into (STYLE §3).

* ``input(rx, tx, now, start)`` walks the decrypted descriptors of a receive batch. For each
  inner IPv4/IPv6 packet carrying TCP it checks the IP header, the TCP checksum and options in C
  (``wire.parse_ip``/``parse_tcp``), finds the connection by its 4-tuple in a C hash table and
  runs the segment through the connection's state machine (:class:`TcpConn`, conn.pyx).
  Consumed descriptors are marked empty; anything that is not TCP is left for the Python IP
  layer (ICMP, UDP). Malformed or unwanted segments are counted by reason and dropped, or
  answered with a RST as RFC 9293 §3.10.7.1 says. A SYN for a port with a listener opens a
  connection in SYN_RECEIVED (the listener bitmap keeps the common "no listener" case to one
  bit test). ACKs owed mid-batch (every ACK_EVERY segments, and every out-of-order or
  duplicate segment's immediate ACK) are written straight into `tx`
  while it has room; the rest go out with the next ``output``.
* ``output(tx, now)`` writes the queued bare RSTs and zero-window probes, then lets every
  connection that asked for output (data within min(cwnd, peer window), retransmissions,
  SYN/FIN, owed ACKs) cut segments into `tx` slots: IP and TCP headers in front of the payload
  copied from the send ring, 16 bytes of WireGuard header room before, checksum in the same pass.
* ``get_timer()``/``handle_timer(now)``: each connection keeps deadlines (retransmission or
  persist, delayed ACK, TIME_WAIT/handshake expiry, tail-loss probe); the stack reports the
  earliest one and runs the expired ones.
* Events for Python are per connection per batch, never per packet: a connection or listener
  with news is listed once by ``take_touched()`` and says what happened with ``take_events()``
  (:class:`TcpEvent` bits). The layer above maps connections and listeners to its own handlers.

Per connection: RFC 9293 states; MSS, window scaling, timestamps (RFC 7323), SACK (RFC 2018) with
selective retransmission driven by an RFC 6675 scoreboard; RTO per RFC 6298 with exponential
backoff; fast retransmit/recovery (RFC 5681, NewReno partial ACKs without SACK); CUBIC
congestion control (RFC 9438); delayed ACKs (at most one full segment unacknowledged beyond a
batch, 40 ms timer); out-of-order reassembly straight into the receive ring; receive window
auto-tuned from what the application drains; zero-window probes; half-close; RST in both
directions with RFC 5961 challenge ACKs; TIME_WAIT; RFC 6528 initial sequence numbers; SYN backlog
per listener (oldest half-open connection evicted when full) and an accept queue.

Why the whole connection is in C, not split: STYLE §5 sketches the per-segment work in C and the
state machine in Python. Splitting one connection's state across that boundary would cost a
Python call per "rare" segment (every FIN, RST, SYN of a 10,000-SYN flood) and duplicate the
invariants that tie sequence space, rings and timers together; so the RFC 9293 machine lives in
conn.pyx, as plain commented code with each rule named, and Python sees only events.

Invariants: the C tables (connection hash, connection list, output list) hold borrowed pointers
to objects the stack keeps in Python containers (``_conns``, ``_listeners``, ``_zombies``); a
connection leaves every table when it reaches CLOSED (``_remove``).
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_Calloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memset, memcmp

from _wgcore.datapath cimport PacketBatch
from _wgcore.octets cimport load_u16be
from _wgcore.state cimport PacketDesc, RES_DATA, RES_EMPTY
from _wgcore.tcpip.wire cimport (
    ConnKey, IpView, Segment, F_SYN, F_ACK, F_RST, F_FIN, IPV4_HEADER, IPV6_HEADER, TCP_HEADER,
    PARSE_OK, PARSE_NOT_TCP, D_NOT_LOCAL, D_TCP_MALFORMED, D_NO_SOCKET, D_SYN_BACKLOG,
    D_ACCEPT_QUEUE, D_COUNT, key_hash, seq_gt, parse_ip, parse_tcp, write_ip_header,
    write_tcp_header, write_tcp_checksum,
)
from _wgcore.tcpip.conn cimport (
    _StackBase, TcpConn, SYN_SENT, SYN_RECEIVED, TIME_WAIT, TEV_ACCEPT,
)

import errno as _errno
import os as _os

from _wgcore.tcpip.wire import DROP_NAMES as _DROP_NAMES

cdef enum:
    ACK_EVERY = 16                 # full segments received before an ACK is sent mid-batch
    MAX_LOCAL_ADDRESSES = 8


# -- listener --------------------------------------------------------------------------------

@cython.final
cdef class TcpListener:
    """A passive-open port (LISTEN): half-open connections up to ``syn_backlog``, established
    ones wait in the accept queue (up to ``backlog``) until :meth:`accept`."""
    cdef TcpStack stack
    cdef readonly bytes address          # b"" = every local address of the family
    cdef readonly int port
    cdef readonly int backlog
    cdef readonly int syn_backlog
    cdef list _half_open                 # SYN_RECEIVED connections, oldest first
    cdef list _queue                     # established, not yet accepted
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
        """The TcpEvent bits (ACCEPT) raised since the last call, cleared."""
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
cdef class TcpStack(_StackBase):
    """Every TCP connection and listener of one interface, and the IP-level demultiplexer.

    `mtu`: the inner MTU (1280 in Coder's tailnet). Buffers: `send_buffer` and
    `receive_buffer` are per-connection maxima (the receive ring starts at
    `receive_buffer_initial` and grows as the application drains it). `time_wait`: seconds a
    connection we closed first holds its 4-tuple in TIME_WAIT (2 MSL; tests shorten it);
    its rings are freed on entry, so it costs only the connection object.
    ``buffer_bytes`` counts the ring bytes allocated across all connections.
    """
    cdef dict _conns                     # key bytes -> TcpConn (owns what the tables point to)
    cdef dict _listeners                 # (address bytes or b"", port) -> TcpListener
    cdef list _zombies                   # removed connections still in out_list (kept alive)
    cdef void** table
    cdef uint32_t table_mask
    cdef uint32_t table_used
    cdef void** all_conns
    cdef uint32_t all_n, all_cap
    cdef uint8_t listen_bitmap[8192]
    cdef uint8_t local4[MAX_LOCAL_ADDRESSES][4]
    cdef uint8_t local6[MAX_LOCAL_ADDRESSES][16]
    cdef int n4, n6
    cdef readonly uint64_t segments_in, non_tcp, conns_opened

    def __cinit__(self, uint32_t mtu=1280, uint32_t send_buffer=4 << 20,
                  uint32_t receive_buffer=4 << 20, uint32_t receive_buffer_initial=256 << 10,
                  bytes secret=None, double time_wait=60.0):
        if not 576 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} out of range 576-65535")
        for value, name in ((send_buffer, "send_buffer"), (receive_buffer, "receive_buffer"),
                            (receive_buffer_initial, "receive_buffer_initial")):
            if value < 4096 or value > (1 << 30):
                raise ValueError(f"{name} {value} out of range 4096-2**30")
        if not time_wait >= 0:
            raise ValueError(f"time_wait {time_wait} must be >= 0")
        self.mtu = mtu
        self.time_wait = time_wait
        self.send_buffer = send_buffer
        # Rings index with a mask: capacities are powers of two (rounded down).
        self.receive_buffer = 1 << (receive_buffer.bit_length() - 1)
        self.receive_buffer_initial = min(1 << (receive_buffer_initial.bit_length() - 1),
                                          self.receive_buffer)
        self.sack_enabled = True
        self.timestamps_enabled = True
        self._conns = {}
        self._listeners = {}
        self._zombies = []
        self._secret = secret if secret is not None else _os.urandom(32)
        self.table_mask = 1023
        self.table = <void**>PyMem_Calloc(self.table_mask + 1, sizeof(void*))
        self.all_cap = 256
        self.all_conns = <void**>PyMem_Malloc(self.all_cap * sizeof(void*))
        if self.table == NULL or self.all_conns == NULL:
            raise MemoryError()
        memset(self.listen_bitmap, 0, sizeof(self.listen_bitmap))

    def __dealloc__(self):
        PyMem_Free(self.table)
        PyMem_Free(self.all_conns)

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
        if c.listener is not None:
            (<TcpListener>c.listener)._forget(c)
            c.listener = None
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

    cdef bint _passive_established(self, TcpConn c):
        return (<TcpListener>c.listener)._established(c)

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
        c._state = SYN_SENT
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
            d = c.reo_at
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
                    (c.expire_at and c.expire_at <= now) or (c.tlp_at and c.tlp_at <= now) or \
                    (c.reo_at and c.reo_at <= now):
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
            "buffer_bytes": self.buffer_bytes,
            "non_tcp": self.non_tcp,
            "drops": {_DROP_NAMES[i]: self.drops[i] for i in range(D_COUNT)},
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
        cdef IpView ip
        cdef Segment s
        cdef int verdict
        if n < 1:
            return False
        verdict = parse_ip(p, n, &ip)
        if verdict == PARSE_NOT_TCP:
            self.non_tcp += 1
            return False
        if verdict != PARSE_OK:
            self.drops[verdict] += 1
            return True
        if not self._is_local(ip.dst, ip.family):
            self.drops[D_NOT_LOCAL] += 1
            return True
        verdict = parse_tcp(&ip, &s)
        if verdict != PARSE_OK:
            self.drops[verdict] += 1
            return True
        self.segments_in += 1
        cdef ConnKey key
        memset(&key, 0, sizeof(ConnKey))
        key.family = ip.family
        key.lport = load_u16be(ip.tcp + 2)
        key.rport = load_u16be(ip.tcp)
        memcpy(key.laddr, ip.dst, 4 if ip.family == 4 else 16)
        memcpy(key.raddr, ip.src, 4 if ip.family == 4 else 16)
        if key.lport == 0 or key.rport == 0:
            self.drops[D_TCP_MALFORMED] += 1
            return True
        cdef uint32_t h = key_hash(&key)
        cdef TcpConn c = self._lookup(&key, h)
        if c is not None and c._state == TIME_WAIT and (s.flags & (F_SYN | F_ACK | F_RST)) == F_SYN \
                and (seq_gt(s.seq, c.rcv_nxt) or
                     (c.ts_ok and s.has_ts and <int32_t>(s.tsval - c.ts_recent) > 0)):
            # RFC 9293 §3.6.1 / RFC 6191: a new SYN above the old sequence space may reuse a
            # 4-tuple in TIME_WAIT; the old connection ends and the SYN opens a new one.
            c._close(0)
            c = None
        if c is not None:
            c._input(&s, now)
            # Mid-batch ACKs: every ACK_EVERY segments; at once for each segment that arrives
            # out of order or duplicated (RFC 5681 §4.2), and every second one for a while
            # after (Linux's quick ACKs), so the sender's SACK scoreboard and RACK see every
            # arrival even when ACKs are lost.
            if c.list_index >= 0 and tx.count < tx.slots and (
                    c.segs_unacked >= ACK_EVERY or (c.ack_now and (c.ooo.n or c.dsack_pending))
                    or (c.quick_acks and c.segs_unacked >= 2)):
                c._output(tx, now)
            return True
        self._no_connection(&key, &s, tx, now)
        return True

    cdef int _no_connection(self, ConnKey* key, Segment* s, PacketBatch tx, double now) except -1:
        cdef TcpListener listener
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
        # RFC 9293 §3.10.7.2 (LISTEN, SYN): a connection in SYN_RECEIVED, owned by the listener
        # until it is established and accepted.
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
        c._state = SYN_RECEIVED
        c.listener = listener
        c.irs = s.seq
        c.rcv_nxt = s.seq + 1
        c.rcv_adv = c.rcv_nxt
        c.rbuf.read_seq = c.rcv_nxt
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
                c._emit(tx, c.snd_una - 1, F_ACK, 0, now)
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
        """A RST (or RST+ACK) from no connection: headers only, window 0, no options."""
        cdef uint32_t iph = IPV4_HEADER if key.family == 4 else IPV6_HEADER
        cdef uint8_t* p = self._slot(tx, iph + TCP_HEADER)
        cdef uint8_t* t = p + iph
        self.ip_id += 1
        write_ip_header(p, key, TCP_HEADER, self.ip_id)
        write_tcp_header(t, key, seq, ack, TCP_HEADER, flags, 0)
        write_tcp_checksum(t, key, TCP_HEADER)
        self.segments_out += 1
        return 0
