# Little/big-endian loads and stores on raw bytes (STYLE §5: a .pxd with no .pyx, inlined into
# every module that cimports it). Callers check lengths once before using these.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

# glibc's <endian.h> names (htobe16 ...), defined here from the compiler's byte order and bswap
# builtins (GCC and clang, on every platform), so no Linux-only header is needed: macOS has no
# <endian.h> and the BSDs keep it in <sys/endian.h>.
cdef extern from *:
    """
    #ifndef AGENTCONN_OCTETS_ENDIAN
    #define AGENTCONN_OCTETS_ENDIAN
    #include <stdint.h>
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define agentconn_htobe16(x) ((uint16_t)(x))
    #define agentconn_htobe32(x) ((uint32_t)(x))
    #define agentconn_htole32(x) __builtin_bswap32(x)
    #define agentconn_htole64(x) __builtin_bswap64(x)
    #else
    #define agentconn_htobe16(x) __builtin_bswap16(x)
    #define agentconn_htobe32(x) __builtin_bswap32(x)
    #define agentconn_htole32(x) ((uint32_t)(x))
    #define agentconn_htole64(x) ((uint64_t)(x))
    #endif
    #endif
    """
    uint16_t htobe16 "agentconn_htobe16" (uint16_t) nogil
    uint16_t be16toh "agentconn_htobe16" (uint16_t) nogil
    uint32_t htobe32 "agentconn_htobe32" (uint32_t) nogil
    uint32_t be32toh "agentconn_htobe32" (uint32_t) nogil
    uint32_t htole32 "agentconn_htole32" (uint32_t) nogil
    uint32_t le32toh "agentconn_htole32" (uint32_t) nogil
    uint64_t htole64 "agentconn_htole64" (uint64_t) nogil
    uint64_t le64toh "agentconn_htole64" (uint64_t) nogil


cdef inline uint32_t load_u32le(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return le32toh(v)


cdef inline uint64_t load_u64le(const uint8_t* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return le64toh(v)


cdef inline void store_u32le(uint8_t* p, uint32_t v) noexcept nogil:
    v = htole32(v)
    memcpy(p, &v, 4)


cdef inline void store_u64le(uint8_t* p, uint64_t v) noexcept nogil:
    v = htole64(v)
    memcpy(p, &v, 8)


cdef inline uint16_t load_u16be(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline void store_u16be(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>(v & 0xff)


cdef inline uint32_t load_u32be(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return be32toh(v)


cdef inline void store_u32be(uint8_t* p, uint32_t v) noexcept nogil:
    v = htobe32(v)
    memcpy(p, &v, 4)
