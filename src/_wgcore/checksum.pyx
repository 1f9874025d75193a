# cython: language_level=3
"""RFC 1071 internet checksum in C, for the IP layer (net/)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef uint32_t csum_partial(const uint8_t* data, size_t length, uint32_t initial) noexcept nogil:
    """One's-complement sum of 16-bit big-endian words, folded to 32 bits (not complemented)."""
    cdef uint64_t total = initial
    cdef uint32_t word
    cdef size_t i = 0
    # Sum 32-bit big-endian words into 64 bits; carries are folded at the end (RFC 1071 §2(B)).
    while i + 4 <= length:
        word = (<uint32_t>data[i] << 24) | (<uint32_t>data[i + 1] << 16) | (<uint32_t>data[i + 2] << 8) | data[i + 3]
        total += word
        i += 4
    if i + 2 <= length:
        total += (<uint32_t>data[i] << 8) | data[i + 1]
        i += 2
    if i < length:
        total += <uint32_t>data[i] << 8
    while total >> 32:
        total = (total & 0xffffffffULL) + (total >> 32)
    total = (total & 0xffff) + (total >> 16)
    total = (total & 0xffff) + (total >> 16)
    return <uint32_t>total


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
