# cython: language_level=3
"""Transport keypairs: keys, send counter, replay filter, age; seal and open in place.

One ``Keypair`` exists per WireGuard session (wireguard.md §4.5, §8). Its C state is used by the
batch loops in datapath.pyx through ``keypair_seal``/``keypair_open``; the Python methods here
exist for tests, the pure-Python reference comparison and one-off packets.
"""
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from _wgcore.octets cimport load_u64le, store_u32le, store_u64le
from _wgcore.replay cimport replay_validate, replay_reset, REJECT_AFTER_MESSAGES
from _wgcore.sodium cimport sodium_api, SodiumApi
from _wgcore.state cimport (KeypairState, TRANSPORT_HEADER_LEN, TAG_LEN, TRANSPORT_OVERHEAD,
                            MESSAGE_TRANSPORT, DROP_AUTH, DROP_REPLAY, DROP_SHORT)

cdef const SodiumApi* _sodium = sodium_api()


cdef inline void _nonce(uint8_t* nonce, uint64_t counter) noexcept nogil:
    # wireguard.md §1: 4 zero bytes || counter as u64 little-endian.
    memset(nonce, 0, 4)
    store_u64le(nonce + 4, counter)


cdef uint32_t keypair_seal(KeypairState* kp, uint8_t* pkt, uint32_t padded_len) noexcept nogil:
    cdef uint8_t nonce[12]
    cdef unsigned long long clen
    cdef uint64_t counter = kp.send_counter
    kp.send_counter += 1
    store_u32le(pkt, MESSAGE_TRANSPORT)
    store_u32le(pkt + 4, kp.remote_index)
    store_u64le(pkt + 8, counter)
    _nonce(nonce, counter)
    _sodium.chacha20poly1305_ietf_encrypt(pkt + TRANSPORT_HEADER_LEN, &clen,
                                          pkt + TRANSPORT_HEADER_LEN, padded_len,
                                          NULL, 0, NULL, nonce, kp.send_key)
    return TRANSPORT_OVERHEAD + padded_len


cdef int keypair_open(KeypairState* kp, uint8_t* pkt, uint32_t length) noexcept nogil:
    cdef uint8_t nonce[12]
    cdef unsigned long long mlen
    cdef uint64_t counter
    if length < TRANSPORT_OVERHEAD:
        return DROP_SHORT
    counter = load_u64le(pkt + 8)
    if counter >= REJECT_AFTER_MESSAGES:
        return DROP_REPLAY
    _nonce(nonce, counter)
    if _sodium.chacha20poly1305_ietf_decrypt(pkt + TRANSPORT_HEADER_LEN, &mlen, NULL,
                                             pkt + TRANSPORT_HEADER_LEN,
                                             length - TRANSPORT_HEADER_LEN,
                                             NULL, 0, nonce, kp.recv_key) != 0:
        return DROP_AUTH
    # wireguard.md §9: the replay filter runs after authentication, so forgeries cannot move it.
    if not replay_validate(&kp.replay, counter, REJECT_AFTER_MESSAGES):
        return DROP_REPLAY
    kp.rx_packets += 1
    return <int>(length - TRANSPORT_OVERHEAD)


@cython.final
cdef class Keypair:
    """The keys of one session, its send counter and replay filter.

    ``created`` is a monotonic time in seconds (the caller's clock). Keys are zeroed by
    :meth:`zero`, after which the keypair neither seals nor opens.
    """

    def __cinit__(self, bytes send_key not None, bytes receive_key not None,
                  uint32_t local_index, uint32_t remote_index, bint is_initiator,
                  double created):
        if len(send_key) != 32 or len(receive_key) != 32:
            raise ValueError(f"keys must be 32 bytes, got {len(send_key)} and {len(receive_key)}")
        memset(&self.s, 0, sizeof(KeypairState))
        memcpy(self.s.send_key, <const uint8_t*>send_key, 32)
        memcpy(self.s.recv_key, <const uint8_t*>receive_key, 32)
        self.s.local_index = local_index
        self.s.remote_index = remote_index
        self.s.is_initiator = is_initiator
        self.s.created = created
        self.s.valid = 1
        replay_reset(&self.s.replay)
        self._peer_slot = None

    def __dealloc__(self):
        _sodium.memzero(self.s.send_key, 32)
        _sodium.memzero(self.s.recv_key, 32)

    def zero(self) -> None:
        """Wipe the keys (wireguard.md §7.2 zeroKeyMaterial); the keypair becomes unusable."""
        _sodium.memzero(self.s.send_key, 32)
        _sodium.memzero(self.s.recv_key, 32)
        self.s.valid = 0

    @property
    def local_index(self) -> int:
        return self.s.local_index

    @property
    def remote_index(self) -> int:
        return self.s.remote_index

    @property
    def is_initiator(self) -> bool:
        return bool(self.s.is_initiator)

    @property
    def created(self) -> float:
        return self.s.created

    @property
    def valid(self) -> bool:
        return bool(self.s.valid)

    @property
    def send_counter(self) -> int:
        return self.s.send_counter

    @send_counter.setter
    def send_counter(self, uint64_t value) -> None:
        # For tests of REKEY/REJECT_AFTER_MESSAGES.
        self.s.send_counter = value

    @property
    def rx_packets(self) -> int:
        return self.s.rx_packets

    def seal(self, const uint8_t[::1] plaintext not None) -> bytes:
        """Build one transport message for `plaintext` (already padded by the caller)."""
        if not self.s.valid:
            raise ValueError("keypair was zeroed")
        if self.s.send_counter >= REJECT_AFTER_MESSAGES:
            raise ValueError("keypair exhausted: send counter reached REJECT_AFTER_MESSAGES")
        cdef Py_ssize_t n = plaintext.shape[0]
        cdef bytearray out = bytearray(TRANSPORT_OVERHEAD + n)
        cdef uint8_t* p = out
        if n:
            memcpy(p + TRANSPORT_HEADER_LEN, &plaintext[0], n)
        keypair_seal(&self.s, p, <uint32_t>n)
        return bytes(out)

    def open(self, const uint8_t[::1] message not None) -> bytes | None:
        """Open one transport message; None if it fails authentication or replay checks."""
        if not self.s.valid:
            return None
        cdef Py_ssize_t n = message.shape[0]
        if n < TRANSPORT_OVERHEAD:
            return None
        cdef bytearray buf = bytearray(message)
        cdef int r = keypair_open(&self.s, <uint8_t*>buf, <uint32_t>n)
        if r < 0:
            return None
        return bytes(buf[TRANSPORT_HEADER_LEN:TRANSPORT_HEADER_LEN + r])
