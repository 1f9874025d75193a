from libc.stdint cimport uint8_t, uint32_t, uint64_t
from _wgcore.state cimport PeerState, KeypairState, PacketDesc, Endpoint, DROP_REASONS

cdef class PeerSlot:
    cdef PeerState s
    cdef object _current          # the Keypair s.current points into (or None)


cdef class PacketBatch:
    cdef bytearray _arena
    cdef list _refs               # PeerSlots named by add_packet/add_keepalive (kept alive)
    cdef uint8_t* arena
    cdef readonly uint32_t slots
    cdef readonly uint32_t slot_size
    cdef readonly uint32_t capacity   # descriptors
    cdef readonly uint32_t count      # descriptors in use
    cdef PacketDesc* desc
    cdef PeerState** touched
    cdef uint32_t touched_count
    cdef uint32_t epoch

    cdef inline void touch(self, PeerState* peer) noexcept nogil
    cdef PacketDesc* _next_slot(self) except NULL
    cdef int _check(self, uint32_t i) except -1


cdef struct Route:
    uint8_t family                # 4 or 6
    uint8_t prefix_len
    uint8_t addr[16]              # masked network address
    PeerState* peer


cdef class Datapath:
    cdef dict _keypairs           # local index -> Keypair (owns what the table points to)
    cdef list _route_peers        # PeerSlots referenced by the route table
    cdef uint32_t* table_keys
    cdef KeypairState** table_values
    cdef uint32_t table_mask      # capacity - 1 (power of two)
    cdef uint32_t table_used      # live + tombstones
    cdef Route* routes
    cdef uint32_t route_count
    cdef uint32_t* route_slots    # open-addressing hash of routes: index + 1, 0 = empty
    cdef uint32_t route_mask      # route_slots capacity - 1 (power of two)
    cdef uint8_t v4_lengths[33]   # distinct IPv4 prefix lengths present, longest first
    cdef uint8_t v4_length_count
    cdef uint8_t v6_lengths[129]  # distinct IPv6 prefix lengths present, longest first
    cdef uint8_t v6_length_count
    cdef public uint32_t mtu
    cdef uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes
    cdef uint64_t drops[DROP_REASONS]
    cdef public uint64_t disco_rx      # RES_DISCO datagrams seen (the tunnel polls it per batch)

    cdef inline uint32_t _hash(self, uint32_t index) noexcept nogil
    cdef KeypairState* lookup(self, uint32_t index) noexcept nogil
    cdef _insert(self, uint32_t index, KeypairState* kp)
    cdef _erase(self, uint32_t index)
    cdef _rebuild(self, uint32_t capacity)
    cdef PeerState* route_lookup(self, const uint8_t* addr, uint8_t family) noexcept nogil
    cdef int decrypt_batch(self, PacketBatch b, double now) noexcept nogil
    cdef int encrypt_batch(self, PacketBatch b, double now) noexcept nogil
    cdef void count_drop(self, int code) noexcept nogil
