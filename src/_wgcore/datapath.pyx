# cython: language_level=3
"""Batch encapsulation and decapsulation over caller-owned buffers (STYLE §5, DATAPATH.md).

Theory of operation
-------------------
A :class:`PacketBatch` is an arena of fixed-size slots plus an array of C descriptors
(offset, length, result code, peer, keypair, address). The UDP layer (udpio.pyx) fills a batch
with received datagrams, or the IP layer fills one with inner packets to send; one call to
:meth:`Datapath.decrypt` or :meth:`Datapath.encrypt` then processes every descriptor in C
without the GIL, and leaves a result code on each:

* receive: (type, exact length) check -> receiver-index lookup (C hash table) -> age check ->
  AEAD open in place -> replay window -> IP version/length trim -> allowed-IPs source check
  (wireguard.md §9). Handshake messages are marked ``RES_HANDSHAKE`` for the Python control
  path; anything malformed gets a ``DROP_*`` code and bumps that reason's counter.
* send: allowed-IPs route on the inner destination (unless the caller chose the peer) -> the
  peer's current keypair, if usable -> pad to 16 within the MTU -> seal in place behind the
  16-byte header room -> destination = the peer's endpoint (wireguard.md §6). Without a usable
  keypair or endpoint the result is ``RES_STAGE`` and Python stages the packet and handshakes.

Per peer, the batch records event flags and time stamps (PeerState.events, last_*), and the list
of peers it touched, so Python runs the timer hooks of wireguard.md §7.2 once per peer per
batch, not once per packet.

Invariants: every pointer stored in the C tables is borrowed from an object this module keeps
referenced (``_keypairs``, ``_route_peers``, PeerSlot._current, Keypair._peer_slot).
"""
cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_Calloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memset, memcmp

from _wgcore.keypair cimport Keypair, keypair_seal, keypair_open
from _wgcore.octets cimport load_u32le, load_u16be
from _wgcore.state cimport *

cdef KeypairState* TOMBSTONE = <KeypairState*>1
# One epoch per decrypt/encrypt call across ALL batches: a peer is listed once per call in
# touched_peers(). (A per-batch counter let two batches reuse the same value and skip peers.)
cdef uint32_t _epoch = 0


cdef inline uint32_t _next_epoch() noexcept nogil:
    global _epoch
    _epoch += 1
    if _epoch == 0:          # wrapped: 0 is the "never touched" value of a fresh PeerState
        _epoch = 1
    return _epoch

DROP_REASON_NAMES = {
    -DROP_SHORT: "short",
    -DROP_TYPE: "bad_type",
    -DROP_NO_KEYPAIR: "unknown_index",
    -DROP_EXPIRED: "expired_keypair",
    -DROP_AUTH: "auth_failed",
    -DROP_REPLAY: "replay",
    -DROP_IP: "bad_inner_ip",
    -DROP_SOURCE: "source_not_allowed",
    -DROP_NO_ROUTE: "no_route",
    -DROP_TRUNCATED: "truncated",
    -DROP_TOO_BIG: "too_big",
    -DROP_SEND: "send_failed",
}

# Disco (Tailscale magicsock discovery) datagrams share the WireGuard socket: "TS💬" and at
# least magic + sender key + nonce (LooksLikeDiscoWrapper); so do STUN binding responses
# (type 0x0101, magic cookie 0x2112A442 at offset 4).
cdef const char* DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
cdef const char* STUN_COOKIE = b"\x21\x12\xa4\x42"
cdef enum:
    DISCO_HEADER_LEN = 62

RESULT = {
    "EMPTY": RES_EMPTY, "DATA": RES_DATA, "KEEPALIVE": RES_KEEPALIVE,
    "HANDSHAKE": RES_HANDSHAKE, "PENDING": RES_PENDING, "SEALED": RES_SEALED, "RAW": RES_RAW,
    "STAGE": RES_STAGE, "DISCO": RES_DISCO,
}
RESULT.update({"DROP_" + name.upper(): -code for code, name in DROP_REASON_NAMES.items()})

EVENTS = {
    "SENT_DATA": EV_SENT_DATA, "SENT_ANY": EV_SENT_ANY, "RECEIVED_DATA": EV_RECEIVED_DATA,
    "RECEIVED_ANY": EV_RECEIVED_ANY, "WANT_HANDSHAKE": EV_WANT_HANDSHAKE,
    "ENDPOINT_CHANGED": EV_ENDPOINT_CHANGED,
}


@cython.final
cdef class PeerSlot:
    """The data path's view of one peer: current keypair, endpoint, stamps, counters, events."""

    def __cinit__(self, uint32_t peer_id=0):
        memset(&self.s, 0, sizeof(PeerState))
        self.s.owner = <void*>self
        self.s.id = peer_id
        self.s.last_sent_data = -1e18
        self.s.last_sent_any = -1e18
        self.s.last_received_data = -1e18
        self.s.last_received_any = -1e18
        self._current = None

    def set_current(self, Keypair keypair) -> None:
        """Make `keypair` the one sends use (None: no usable session)."""
        if keypair is None:
            self.s.current = NULL
        else:
            keypair.s.peer = &self.s
            keypair._peer_slot = self
            self.s.current = &keypair.s
        self._current = keypair

    @property
    def current(self):
        return self._current

    @property
    def endpoint(self) -> bytes:
        """The peer's endpoint as a raw sockaddr (b"" when unknown)."""
        return bytes(self.s.endpoint.addr[:self.s.endpoint.len])

    @endpoint.setter
    def endpoint(self, bytes sockaddr not None) -> None:
        if len(sockaddr) > ENDPOINT_MAX:
            raise ValueError(f"sockaddr too long: {len(sockaddr)} > {ENDPOINT_MAX}")
        memset(self.s.endpoint.addr, 0, ENDPOINT_MAX)
        memcpy(self.s.endpoint.addr, <const uint8_t*>sockaddr, len(sockaddr))
        self.s.endpoint.len = len(sockaddr)

    def take_events(self) -> int:
        """Return and clear the EV_* flags the data path set since the last call."""
        cdef uint32_t ev = self.s.events
        self.s.events = 0
        return ev

    def add_events(self, uint32_t events) -> None:
        self.s.events |= events

    @property
    def last_sent_data(self) -> float:
        return self.s.last_sent_data

    @property
    def last_sent_any(self) -> float:
        return self.s.last_sent_any

    @property
    def last_received_data(self) -> float:
        return self.s.last_received_data

    @property
    def last_received_any(self) -> float:
        return self.s.last_received_any

    def counters(self) -> dict:
        return {"rx_bytes": self.s.rx_bytes, "rx_packets": self.s.rx_packets,
                "tx_bytes": self.s.tx_bytes, "tx_packets": self.s.tx_packets}

    @property
    def peer_id(self) -> int:
        return self.s.id


@cython.final
cdef class PacketBatch:
    """Preallocated datagram buffers plus C descriptors, reused batch after batch.

    ``slots`` buffers of ``slot_size`` bytes; ``capacity`` descriptors (more than ``slots`` when
    one received buffer holds several GRO-coalesced datagrams).
    """

    def __cinit__(self, uint32_t slots, uint32_t slot_size, uint32_t capacity=0):
        if slots == 0 or slot_size < TRANSPORT_OVERHEAD:
            raise ValueError(f"bad batch geometry: {slots} slots of {slot_size} bytes")
        if capacity == 0:
            capacity = slots
        self.slots = slots
        self.slot_size = slot_size
        self.capacity = capacity
        self._arena = bytearray(<Py_ssize_t>slots * slot_size)
        self._refs = []
        self.arena = <uint8_t*>self._arena
        self.desc = <PacketDesc*>PyMem_Calloc(capacity, sizeof(PacketDesc))
        self.touched = <PeerState**>PyMem_Calloc(capacity, sizeof(PeerState*))
        if self.desc == NULL or self.touched == NULL:
            raise MemoryError()
        self.count = 0
        self.touched_count = 0
        self.epoch = 1

    def __dealloc__(self):
        PyMem_Free(self.desc)
        PyMem_Free(self.touched)

    cdef inline void touch(self, PeerState* peer) noexcept nogil:
        if peer.touched_epoch != self.epoch:
            peer.touched_epoch = self.epoch
            self.touched[self.touched_count] = peer
            self.touched_count += 1

    def clear(self) -> None:
        """Forget every descriptor (the buffers are reused)."""
        self.count = 0
        self._refs.clear()

    cdef PacketDesc* _next_slot(self) except NULL:
        if self.count >= self.slots or self.count >= self.capacity:
            raise OverflowError(f"batch full ({self.count} packets)")
        cdef PacketDesc* d = &self.desc[self.count]
        memset(d, 0, sizeof(PacketDesc))
        d.off = self.count * self.slot_size
        self.count += 1
        return d

    def add_packet(self, const uint8_t[::1] packet not None, PeerSlot peer=None) -> int:
        """Queue an inner IP packet to be sealed (routed by destination unless `peer` is given)."""
        cdef Py_ssize_t n = packet.shape[0]
        if n + TRANSPORT_OVERHEAD + 15 > self.slot_size:
            raise ValueError(f"packet of {n} bytes does not fit a {self.slot_size}-byte slot")
        cdef PacketDesc* d = self._next_slot()
        d.inner_off = d.off + TRANSPORT_HEADER_LEN
        d.inner_len = <uint32_t>n
        if n:
            memcpy(self.arena + d.inner_off, &packet[0], n)
        d.result = RES_PENDING
        if peer is not None:
            d.peer = &peer.s
            self._refs.append(peer)
        return self.count - 1

    def add_keepalive(self, PeerSlot peer not None) -> int:
        """Queue a keepalive (empty transport message) to `peer`."""
        cdef PacketDesc* d = self._next_slot()
        d.inner_off = d.off + TRANSPORT_HEADER_LEN
        d.inner_len = 0
        d.result = RES_PENDING
        d.peer = &peer.s
        self._refs.append(peer)
        return self.count - 1

    def add_raw(self, const uint8_t[::1] datagram not None, bytes sockaddr not None) -> int:
        """Queue a datagram to send unchanged (handshake messages, cookie replies)."""
        cdef Py_ssize_t n = datagram.shape[0]
        if n > self.slot_size or n == 0:
            raise ValueError(f"datagram of {n} bytes does not fit a {self.slot_size}-byte slot")
        if len(sockaddr) == 0 or len(sockaddr) > ENDPOINT_MAX:
            raise ValueError("a raw datagram needs a destination sockaddr")
        cdef PacketDesc* d = self._next_slot()
        memcpy(self.arena + d.off, &datagram[0], n)
        d.len = <uint32_t>n
        memcpy(d.addr.addr, <const uint8_t*>sockaddr, len(sockaddr))
        d.addr.len = len(sockaddr)
        d.result = RES_RAW
        return self.count - 1

    def add_datagram(self, const uint8_t[::1] datagram not None, bytes sockaddr=b"") -> int:
        """Queue a datagram as if received from `sockaddr` (tests, fuzzing, in-memory links)."""
        cdef Py_ssize_t n = datagram.shape[0]
        if n > self.slot_size:
            raise ValueError(f"datagram of {n} bytes does not fit a {self.slot_size}-byte slot")
        if len(sockaddr) > ENDPOINT_MAX:
            raise ValueError("sockaddr too long")
        cdef PacketDesc* d = self._next_slot()
        if n:
            memcpy(self.arena + d.off, &datagram[0], n)
        d.len = <uint32_t>n
        memcpy(d.addr.addr, <const uint8_t*>sockaddr, len(sockaddr))
        d.addr.len = len(sockaddr)
        d.msg_index = self.count - 1
        d.result = RES_EMPTY
        return self.count - 1

    def result(self, uint32_t i) -> int:
        self._check(i)
        return self.desc[i].result

    def results(self) -> list:
        return [self.desc[i].result for i in range(self.count)]

    cdef int _check(self, uint32_t i) except -1:
        if i >= self.count:
            raise IndexError(f"descriptor {i} out of range (count {self.count})")
        return 0

    def datagram(self, uint32_t i) -> bytes:
        """The datagram bytes of descriptor `i` (after encrypt: the sealed transport message)."""
        self._check(i)
        return bytes(self._arena[self.desc[i].off:self.desc[i].off + self.desc[i].len])

    def inner(self, uint32_t i) -> bytes:
        """The inner packet of descriptor `i` (after decrypt: the plaintext, trimmed)."""
        self._check(i)
        cdef PacketDesc* d = &self.desc[i]
        return bytes(self._arena[d.inner_off:d.inner_off + d.inner_len])

    def address(self, uint32_t i) -> bytes:
        """rx: the source sockaddr; tx: the destination sockaddr."""
        self._check(i)
        return bytes(self.desc[i].addr.addr[:self.desc[i].addr.len])

    def peer(self, uint32_t i):
        """The PeerSlot the descriptor was attributed to, or None."""
        self._check(i)
        if self.desc[i].peer == NULL:
            return None
        return <PeerSlot>self.desc[i].peer.owner

    def touched_peers(self) -> list:
        """PeerSlots the last decrypt/encrypt touched (each once)."""
        return [<PeerSlot>self.touched[i].owner for i in range(self.touched_count)]

    def collect_relayed(self) -> list:
        """(relay path, datagram bytes) of each RES_RAW, then each RES_SEALED, descriptor whose
        address is a relay endpoint (8 bytes: AF_UNSPEC, the path big-endian, 2 zero bytes;
        see ``wg.endpoint.relay_sockaddr``). For the tunnel's relay hand-off: no Python
        object for the batch's UDP datagrams, one tuple per relayed one."""
        cdef list out = []
        cdef uint32_t i, path
        cdef int result
        cdef PacketDesc* d
        for result in (RES_RAW, RES_SEALED):
            for i in range(self.count):
                d = &self.desc[i]
                if d.result != result or d.addr.len != 8 or d.addr.addr[0] or d.addr.addr[1]:
                    continue
                path = ((<uint32_t>d.addr.addr[2] << 24) | (<uint32_t>d.addr.addr[3] << 16)
                        | (<uint32_t>d.addr.addr[4] << 8) | <uint32_t>d.addr.addr[5])
                out.append((path, (<char*>self.arena)[d.off:d.off + d.len]))
        return out

    def collect(self, int result) -> list:
        """(index, payload bytes, address bytes, PeerSlot or None) of each descriptor with `result`.

        For the control path and the Python IP layer: the whole datagram for RES_HANDSHAKE,
        RES_RAW and RES_SEALED, the inner packet otherwise.
        """
        cdef list out = []
        cdef uint32_t i
        cdef PacketDesc* d
        for i in range(self.count):
            d = &self.desc[i]
            if d.result != result:
                continue
            if (result == RES_HANDSHAKE or result == RES_RAW or result == RES_SEALED
                    or result == RES_DISCO):
                payload = bytes(self._arena[d.off:d.off + d.len])
            else:
                payload = bytes(self._arena[d.inner_off:d.inner_off + d.inner_len])
            out.append((i, payload, bytes(d.addr.addr[:d.addr.len]),
                        None if d.peer == NULL else <PeerSlot>d.peer.owner))
        return out

    @property
    def buffer(self) -> memoryview:
        """The whole arena (zero-copy access for callers that parse in place)."""
        return memoryview(self._arena)

    def descriptor(self, uint32_t i) -> tuple:
        """(off, len, inner_off, inner_len, result) of descriptor `i`."""
        self._check(i)
        cdef PacketDesc* d = &self.desc[i]
        return (d.off, d.len, d.inner_off, d.inner_len, d.result)


cdef inline void _mask_prefix(const uint8_t* src, uint8_t* dst, uint32_t nbytes,
                              uint8_t plen) noexcept nogil:
    """dst[:16] := src[:nbytes] with every bit past `plen` cleared (and zeros past nbytes)."""
    cdef uint32_t k
    memset(dst, 0, 16)
    for k in range(nbytes):
        if k * 8 + 8 <= plen:
            dst[k] = src[k]
        elif k * 8 < plen:
            dst[k] = src[k] & <uint8_t>(0xff << (8 - (plen - k * 8)))
        else:
            break


cdef inline uint32_t _route_hash(uint8_t family, uint8_t plen, const uint8_t* addr,
                                 uint32_t nbytes) noexcept nogil:
    # FNV-1a over (family, prefix length, masked address).
    cdef uint32_t h = 2166136261u
    cdef uint32_t k
    h = (h ^ family) * 16777619u
    h = (h ^ plen) * 16777619u
    for k in range(nbytes):
        h = (h ^ addr[k]) * 16777619u
    return h ^ (h >> 15)


cdef inline bint _route_equal(const Route* a, const Route* b) noexcept nogil:
    return (a.family == b.family and a.prefix_len == b.prefix_len
            and memcmp(a.addr, b.addr, 16) == 0)


@cython.final
cdef class Datapath:
    """Receiver-index table, allowed-IPs table, counters, and the batch loops of one device."""

    def __cinit__(self, uint32_t mtu=1420):
        self._keypairs = {}
        self._route_peers = []
        self.table_mask = 1023
        self.table_used = 0
        self.table_keys = <uint32_t*>PyMem_Calloc(self.table_mask + 1, sizeof(uint32_t))
        self.table_values = <KeypairState**>PyMem_Calloc(self.table_mask + 1, sizeof(KeypairState*))
        if self.table_keys == NULL or self.table_values == NULL:
            raise MemoryError()
        self.routes = NULL
        self.route_count = 0
        self.route_slots = NULL
        self.route_mask = 0
        self.v4_length_count = 0
        self.v6_length_count = 0
        self.mtu = mtu
        memset(self.drops, 0, sizeof(self.drops))

    def __dealloc__(self):
        PyMem_Free(self.table_keys)
        PyMem_Free(self.table_values)
        PyMem_Free(self.routes)
        PyMem_Free(self.route_slots)

    # -- receiver-index table (open addressing, linear probing, tombstones) --------------

    cdef inline uint32_t _hash(self, uint32_t index) noexcept nogil:
        return (index * <uint32_t>2654435761u) & self.table_mask

    cdef KeypairState* lookup(self, uint32_t index) noexcept nogil:
        cdef uint32_t i = self._hash(index)
        cdef KeypairState* v
        while True:
            v = self.table_values[i]
            if v == NULL:
                return NULL
            if v != TOMBSTONE and self.table_keys[i] == index:
                return v
            i = (i + 1) & self.table_mask

    cdef _insert(self, uint32_t index, KeypairState* kp):
        cdef uint32_t i = self._hash(index)
        cdef KeypairState* v
        while True:
            v = self.table_values[i]
            if v == NULL or v == TOMBSTONE:
                if v == NULL:
                    self.table_used += 1
                self.table_keys[i] = index
                self.table_values[i] = kp
                return
            i = (i + 1) & self.table_mask

    cdef _erase(self, uint32_t index):
        cdef uint32_t i = self._hash(index)
        cdef KeypairState* v
        while True:
            v = self.table_values[i]
            if v == NULL:
                return
            if v != TOMBSTONE and self.table_keys[i] == index:
                self.table_values[i] = TOMBSTONE
                return
            i = (i + 1) & self.table_mask

    cdef _rebuild(self, uint32_t capacity):
        PyMem_Free(self.table_keys)
        PyMem_Free(self.table_values)
        self.table_mask = capacity - 1
        self.table_used = 0
        self.table_keys = <uint32_t*>PyMem_Calloc(capacity, sizeof(uint32_t))
        self.table_values = <KeypairState**>PyMem_Calloc(capacity, sizeof(KeypairState*))
        if self.table_keys == NULL or self.table_values == NULL:
            raise MemoryError()
        cdef Keypair kp
        for kp in self._keypairs.values():
            self._insert(kp.s.local_index, &kp.s)

    def add_keypair(self, Keypair keypair not None, PeerSlot peer not None) -> None:
        """Make `keypair` reachable by its local index for receiving, owned by `peer`."""
        cdef uint32_t index = keypair.s.local_index
        if index in self._keypairs:
            if self._keypairs[index] is keypair:
                return
            raise KeyError(f"local index {index:#010x} is already in use")
        keypair.s.peer = &peer.s
        keypair._peer_slot = peer
        self._keypairs[index] = keypair
        if (self.table_used + 1) * 2 > self.table_mask + 1:
            # Grow (or just sweep tombstones) to a power of two >= 4x the live entries; the
            # mask arithmetic needs a power of two. _rebuild inserts every live keypair.
            capacity = 1024
            while capacity < len(self._keypairs) * 4:
                capacity *= 2
            self._rebuild(capacity)
        else:
            self._insert(index, &keypair.s)

    def remove_keypair(self, Keypair keypair not None) -> None:
        """Stop accepting packets for `keypair` (wireguard.md §8: "deleting" a keypair)."""
        cdef uint32_t index = keypair.s.local_index
        if self._keypairs.get(index) is keypair:
            del self._keypairs[index]
            self._erase(index)
        cdef PeerSlot slot = keypair._peer_slot
        if slot is not None and slot.s.current == &keypair.s:
            slot.set_current(None)

    def get_keypair(self, uint32_t index):
        return self._keypairs.get(index)

    def index_in_use(self, uint32_t index) -> bool:
        return index in self._keypairs

    # -- allowed-IPs table ----------------------------------------------------------------
    #
    # Longest-prefix match as allowedips.py does it: the routes sit in one open-addressing hash
    # keyed by (family, prefix length, masked address), and a lookup probes the distinct prefix
    # lengths of the address's family, longest first. A lookup costs one probe per distinct
    # length (Coder peers own /32s and /128s: one or two), not one comparison per route, so the
    # per-packet cost does not grow with the number of peers (issue 14 item 5).

    def set_routes(self, list entries not None) -> None:
        """Replace the allowed-IPs table with (network_address_bytes, prefix_len, PeerSlot).

        Host bits are masked off. When two entries name the same network, the first one
        wins. Raises ValueError for an address that is not 4 or 16 bytes or a prefix length
        out of range.
        """
        cdef uint32_t n = len(entries)
        cdef uint32_t capacity = 16
        while capacity < n * 2:
            capacity *= 2
        cdef Route* routes = <Route*>PyMem_Calloc(max(1, n), sizeof(Route))
        cdef uint32_t* slots = <uint32_t*>PyMem_Calloc(capacity, sizeof(uint32_t))
        if routes == NULL or slots == NULL:
            PyMem_Free(routes)
            PyMem_Free(slots)
            raise MemoryError()
        cdef Route* r
        cdef bytes net
        cdef PeerSlot slot
        cdef int plen
        cdef uint32_t count = 0, h, mask = capacity - 1
        cdef bint seen4[33]
        cdef bint seen6[129]
        memset(seen4, 0, sizeof(seen4))
        memset(seen6, 0, sizeof(seen6))
        peers = []
        for net, plen, slot in entries:
            if len(net) not in (4, 16) or not 0 <= plen <= len(net) * 8:
                PyMem_Free(routes)
                PyMem_Free(slots)
                raise ValueError(f"bad route {net!r}/{plen}")
            r = &routes[count]
            r.family = 4 if len(net) == 4 else 6
            r.prefix_len = plen
            _mask_prefix(<const uint8_t*>net, r.addr, len(net), plen)
            r.peer = &slot.s
            h = _route_hash(r.family, r.prefix_len, r.addr, len(net)) & mask
            while slots[h] != 0 and not _route_equal(&routes[slots[h] - 1], r):
                h = (h + 1) & mask
            if slots[h] != 0:
                continue                     # the same network twice: the first one wins
            count += 1
            slots[h] = count
            if r.family == 4:
                seen4[plen] = True
            else:
                seen6[plen] = True
            peers.append(slot)
        PyMem_Free(self.routes)
        PyMem_Free(self.route_slots)
        self.routes = routes
        self.route_slots = slots
        self.route_mask = mask
        self.route_count = count
        self._route_peers = peers
        self.v4_length_count = 0
        for plen in range(32, -1, -1):
            if seen4[plen]:
                self.v4_lengths[self.v4_length_count] = plen
                self.v4_length_count += 1
        self.v6_length_count = 0
        for plen in range(128, -1, -1):
            if seen6[plen]:
                self.v6_lengths[self.v6_length_count] = plen
                self.v6_length_count += 1

    cdef PeerState* route_lookup(self, const uint8_t* addr, uint8_t family) noexcept nogil:
        cdef uint8_t masked[16]
        cdef uint8_t* lengths
        cdef uint32_t count, j, h, k
        cdef uint32_t nbytes = 4 if family == 4 else 16
        cdef Route probe
        cdef Route* r
        if self.route_slots == NULL:
            return NULL
        if family == 4:
            lengths = self.v4_lengths
            count = self.v4_length_count
        else:
            lengths = self.v6_lengths
            count = self.v6_length_count
        probe.family = family
        for j in range(count):
            probe.prefix_len = lengths[j]
            _mask_prefix(addr, probe.addr, nbytes, probe.prefix_len)
            h = _route_hash(family, probe.prefix_len, probe.addr, nbytes) & self.route_mask
            while True:
                k = self.route_slots[h]
                if k == 0:
                    break
                r = &self.routes[k - 1]
                if _route_equal(r, &probe):
                    return r.peer
                h = (h + 1) & self.route_mask
        return NULL

    def route(self, bytes address not None):
        """The PeerSlot whose allowed IPs cover `address` (4 or 16 bytes), or None."""
        if len(address) not in (4, 16):
            raise ValueError("address must be 4 or 16 bytes")
        cdef PeerState* p = self.route_lookup(<const uint8_t*>address, 4 if len(address) == 4 else 6)
        return None if p == NULL else <PeerSlot>p.owner

    # -- counters ---------------------------------------------------------------------------

    cdef void count_drop(self, int code) noexcept nogil:
        if -DROP_REASONS < code < 0:
            self.drops[-code] += 1

    def drop(self, int code) -> None:
        """Count a drop decided outside the batch loops (e.g. by the Python control path)."""
        self.count_drop(code)

    def counters(self) -> dict:
        drops = {name: self.drops[code] for code, name in DROP_REASON_NAMES.items()}
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes, "drops": drops}

    # -- the batch loops --------------------------------------------------------------------

    def decrypt(self, PacketBatch batch not None, double now) -> int:
        """Authenticate and decrypt every received datagram in `batch` in place.

        Returns the number of inner packets (RES_DATA). Never raises for bad input.
        """
        cdef int n
        with nogil:
            n = self.decrypt_batch(batch, now)
        return n

    def encrypt(self, PacketBatch batch not None, double now) -> int:
        """Seal every RES_PENDING descriptor of `batch` in place. Returns how many were sealed."""
        cdef int n
        with nogil:
            n = self.encrypt_batch(batch, now)
        return n

    cdef int decrypt_batch(self, PacketBatch b, double now) noexcept nogil:
        cdef uint32_t i, length, kind, total
        cdef int plain
        cdef int ndata = 0
        cdef PacketDesc* d
        cdef uint8_t* p
        cdef uint8_t* ip
        cdef KeypairState* kp
        cdef PeerState* peer
        b.epoch = _next_epoch()
        b.touched_count = 0
        for i in range(b.count):
            d = &b.desc[i]
            if d.result < 0:            # udpio marked it (e.g. truncated)
                self.count_drop(d.result)
                continue
            p = b.arena + d.off
            length = d.len
            d.peer = NULL
            d.keypair = NULL
            if length < TRANSPORT_OVERHEAD:
                d.result = DROP_SHORT
                self.count_drop(DROP_SHORT)
                continue
            kind = load_u32le(p)        # reserved bytes must be zero (wireguard.md §3)
            if kind != MESSAGE_TRANSPORT:
                if ((kind == MESSAGE_INITIATION and length == INITIATION_LEN)
                        or (kind == MESSAGE_RESPONSE and length == RESPONSE_LEN)
                        or (kind == MESSAGE_COOKIE_REPLY and length == COOKIE_REPLY_LEN)):
                    d.result = RES_HANDSHAKE
                elif ((length >= DISCO_HEADER_LEN and memcmp(p, DISCO_MAGIC, 6) == 0)
                        or (length >= 20 and memcmp(p + 4, STUN_COOKIE, 4) == 0
                            and p[0] == 0x01 and p[1] == 0x01)):
                    # magicsock's disco, or a STUN binding response (RFC 5389), sharing the
                    # socket: for the Python control path
                    d.result = RES_DISCO
                    self.disco_rx += 1
                else:
                    d.result = DROP_TYPE
                    self.count_drop(DROP_TYPE)
                continue
            kp = self.lookup(load_u32le(p + 4))
            if kp == NULL or not kp.valid or kp.peer == NULL:
                d.result = DROP_NO_KEYPAIR
                self.count_drop(DROP_NO_KEYPAIR)
                continue
            if now - kp.created > REJECT_AFTER_TIME:
                d.result = DROP_EXPIRED
                self.count_drop(DROP_EXPIRED)
                continue
            plain = keypair_open(kp, p, length)
            if plain < 0:
                d.result = plain
                self.count_drop(plain)
                continue
            peer = kp.peer
            d.keypair = kp
            d.peer = peer
            b.touch(peer)
            peer.rx_packets += 1
            peer.rx_bytes += length
            self.rx_packets += 1
            self.rx_bytes += length
            peer.events |= EV_RECEIVED_ANY
            peer.last_received_any = now
            # wireguard.md §11: any authenticated packet moves the endpoint to its source.
            if d.addr.len and (d.addr.len != peer.endpoint.len
                               or memcmp(d.addr.addr, peer.endpoint.addr, d.addr.len) != 0):
                memcpy(&peer.endpoint, &d.addr, sizeof(Endpoint))
                peer.events |= EV_ENDPOINT_CHANGED
            d.inner_off = d.off + TRANSPORT_HEADER_LEN
            if plain == 0:
                d.inner_len = 0
                d.result = RES_KEEPALIVE
                continue
            # wireguard-go sets dataPacketReceived before the inner IP checks (receive.go).
            peer.events |= EV_RECEIVED_DATA
            peer.last_received_data = now
            ip = p + TRANSPORT_HEADER_LEN
            # wireguard.md §9: trim to the inner IP length; check the source is this peer's.
            if ip[0] >> 4 == 4 and plain >= 20:
                total = load_u16be(ip + 2)
                if total < 20 or total > <uint32_t>plain:
                    d.result = DROP_IP
                    self.count_drop(DROP_IP)
                    continue
                if self.route_lookup(ip + 12, 4) != peer:
                    d.result = DROP_SOURCE
                    self.count_drop(DROP_SOURCE)
                    continue
            elif ip[0] >> 4 == 6 and plain >= 40:
                total = 40 + <uint32_t>load_u16be(ip + 4)
                if total > <uint32_t>plain:
                    d.result = DROP_IP
                    self.count_drop(DROP_IP)
                    continue
                if self.route_lookup(ip + 8, 6) != peer:
                    d.result = DROP_SOURCE
                    self.count_drop(DROP_SOURCE)
                    continue
            else:
                d.result = DROP_IP
                self.count_drop(DROP_IP)
                continue
            d.inner_len = total
            d.result = RES_DATA
            ndata += 1
        return ndata

    cdef int encrypt_batch(self, PacketBatch b, double now) noexcept nogil:
        cdef uint32_t i, length, padded
        cdef int nsealed = 0
        cdef PacketDesc* d
        cdef uint8_t* ip
        cdef KeypairState* kp
        cdef PeerState* peer
        cdef uint32_t mtu = self.mtu
        b.epoch = _next_epoch()
        b.touched_count = 0
        for i in range(b.count):
            d = &b.desc[i]
            if d.result != RES_PENDING:
                continue
            length = d.inner_len
            ip = b.arena + d.inner_off
            peer = d.peer
            if peer == NULL and length == 0:
                d.result = DROP_IP           # an empty packet is not IP: nothing to route by
                self.count_drop(DROP_IP)
                continue
            if length:
                if peer == NULL:
                    if ip[0] >> 4 == 4 and length >= 20:
                        peer = self.route_lookup(ip + 16, 4)
                    elif ip[0] >> 4 == 6 and length >= 40:
                        peer = self.route_lookup(ip + 24, 6)
                    else:
                        d.result = DROP_IP
                        self.count_drop(DROP_IP)
                        continue
                    if peer == NULL:
                        d.result = DROP_NO_ROUTE
                        self.count_drop(DROP_NO_ROUTE)
                        continue
                    d.peer = peer
                if length > mtu:
                    d.result = DROP_TOO_BIG
                    self.count_drop(DROP_TOO_BIG)
                    continue
            b.touch(peer)
            kp = peer.current
            # wireguard.md §7.3: no usable keypair -> stage and start a handshake.
            if (kp == NULL or not kp.valid or now - kp.created >= REJECT_AFTER_TIME
                    or kp.send_counter >= REJECT_AFTER_MESSAGES or peer.endpoint.len == 0):
                d.result = RES_STAGE
                peer.events |= EV_WANT_HANDSHAKE
                continue
            # wireguard.md §6: pad to a multiple of 16, never past the MTU.
            padded = (length + 15) & ~(<uint32_t>15)
            if padded > mtu:
                padded = mtu if mtu > length else length
            if padded + TRANSPORT_OVERHEAD > b.slot_size:
                d.result = DROP_TOO_BIG
                self.count_drop(DROP_TOO_BIG)
                continue
            if padded > length:
                memset(ip + length, 0, padded - length)
            d.len = keypair_seal(kp, b.arena + d.off, padded)
            d.keypair = kp
            memcpy(&d.addr, &peer.endpoint, sizeof(Endpoint))
            d.result = RES_SEALED
            nsealed += 1
            peer.tx_packets += 1
            peer.tx_bytes += d.len
            self.tx_packets += 1
            self.tx_bytes += d.len
            peer.events |= EV_SENT_ANY
            peer.last_sent_any = now
            if length:
                peer.events |= EV_SENT_DATA
                peer.last_sent_data = now
            # wireguard.md §7.3 "keep key fresh, sending".
            if (kp.send_counter > REKEY_AFTER_MESSAGES
                    or (kp.is_initiator and now - kp.created > REKEY_AFTER_TIME)):
                peer.events |= EV_WANT_HANDSHAKE
        return nsealed


def rearm(PacketBatch batch not None) -> int:
    """Turn every RES_DATA descriptor back into RES_PENDING (its inner packet, to be sealed).

    An echo service, or a benchmark of seal+open on the same buffers, reuses a decrypted batch
    this way without copying. Returns the number of descriptors re-armed.
    """
    cdef uint32_t i, n = 0
    cdef PacketDesc* d
    for i in range(batch.count):
        d = &batch.desc[i]
        if d.result == RES_DATA:
            # The inner packet is at off+16 already: exactly where encrypt expects it.
            d.result = RES_PENDING
            d.peer = NULL
            d.keypair = NULL
            n += 1
    return n

