from libc.stdint cimport uint8_t, uint32_t, uint16_t
from libc.stddef cimport size_t

cdef uint32_t csum_partial(const uint8_t* data, size_t length, uint32_t initial) noexcept nogil
cdef uint16_t csum_fold(uint32_t total) noexcept nogil
