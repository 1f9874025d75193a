# cython: language_level=3
"""RFC 1071 internet checksum in C, for the IP layer (net/)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef extern from *:
    """
    static inline uint16_t agentconn_bswap16(uint16_t v) { return (uint16_t)((v << 8) | (v >> 8)); }
    """
    uint16_t agentconn_bswap16(uint16_t v) nogil


cdef uint32_t csum_partial(const uint8_t* data, size_t length, uint32_t initial) noexcept nogil:
    """One's-complement sum of 16-bit big-endian words, folded to 16 bits (not complemented).

    RFC 1071 §2(B): the sum is independent of byte order, so we add native 32-bit halves of
    64-bit loads into a 64-bit accumulator (carries pile up in the top bits), fold, and swap the
    bytes once at the end. `initial` is a previous result (big-endian sense) to chain onto.
    """
    cdef uint64_t total = 0
    cdef uint64_t w
    cdef uint32_t w32
    cdef uint16_t w16
    cdef size_t i = 0
    while i + 32 <= length:
        memcpy(&w, data + i, 8)
        total += (w & 0xffffffffULL) + (w >> 32)
        memcpy(&w, data + i + 8, 8)
        total += (w & 0xffffffffULL) + (w >> 32)
        memcpy(&w, data + i + 16, 8)
        total += (w & 0xffffffffULL) + (w >> 32)
        memcpy(&w, data + i + 24, 8)
        total += (w & 0xffffffffULL) + (w >> 32)
        i += 32
    while i + 8 <= length:
        memcpy(&w, data + i, 8)
        total += (w & 0xffffffffULL) + (w >> 32)
        i += 8
    if i + 4 <= length:
        memcpy(&w32, data + i, 4)
        total += w32
        i += 4
    if i + 2 <= length:
        memcpy(&w16, data + i, 2)
        total += w16
        i += 2
    if i < length:
        # a last odd byte is the high byte of a big-endian word: in memory order, the low one
        w16 = 0
        memcpy(&w16, data + i, 1)
        total += w16
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    cdef uint64_t result = <uint64_t>agentconn_bswap16(<uint16_t>total) + initial
    while result >> 16:
        result = (result & 0xffff) + (result >> 16)
    return <uint32_t>result


cdef uint16_t csum_fold(uint32_t total) noexcept nogil:
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return <uint16_t>(~total & 0xffff)


def internet_checksum(const uint8_t[::1] data not None, uint32_t initial=0) -> int:
    """The RFC 1071 checksum of `data` (complemented), with an optional partial sum to add."""
    cdef uint32_t s
    with nogil:
        s = csum_partial(&data[0] if data.shape[0] else NULL, data.shape[0], initial)
    return csum_fold(s)


def partial_sum(const uint8_t[::1] data not None, uint32_t initial=0) -> int:
    """The folded, uncomplemented sum (to chain pseudo-header and payload)."""
    return csum_partial(&data[0] if data.shape[0] else NULL, data.shape[0], initial)
