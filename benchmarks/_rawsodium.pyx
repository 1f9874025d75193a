# cython: language_level=3
"""The raw-libsodium baseline of bench_datapath.py, kept out of the package (compiled by
benchmarks/_build.py at benchmark time against the installed _wgcore .pxd files)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from _wgcore.octets cimport store_u64le
from _wgcore.sodium cimport sodium_api, SodiumApi
from _wgcore.state cimport TAG_LEN

from time import perf_counter


def bench_raw_libsodium(uint32_t packets, uint32_t size, uint32_t rounds) -> float:
    """Seal then open `packets` buffers of `size` bytes in place, `rounds` times, calling
    libsodium directly in a C loop through the data path's function pointers (no header, no
    replay window, no routing). Returns the elapsed seconds (perf_counter)."""
    cdef const SodiumApi* api = sodium_api()
    cdef uint32_t stride = size + TAG_LEN
    cdef bytearray arena = bytearray(<Py_ssize_t>packets * stride)
    cdef uint8_t* buf = arena
    cdef uint8_t key[32]
    cdef uint8_t nonce[12]
    cdef unsigned long long outlen
    cdef uint32_t r, i
    cdef uint64_t counter = 0
    cdef int failures = 0
    for i in range(32):
        key[i] = <uint8_t>(i * 7 + 1)
    memset(nonce, 0, 12)
    started = perf_counter()
    with nogil:
        for r in range(rounds):
            for i in range(packets):
                store_u64le(nonce + 4, counter + i)
                api.chacha20poly1305_ietf_encrypt(buf + i * stride, &outlen, buf + i * stride,
                                                  size, NULL, 0, NULL, nonce, key)
            for i in range(packets):
                store_u64le(nonce + 4, counter + i)
                if api.chacha20poly1305_ietf_decrypt(buf + i * stride, &outlen, NULL,
                                                     buf + i * stride, stride, NULL, 0,
                                                     nonce, key) != 0:
                    failures += 1
            counter += packets
    elapsed = perf_counter() - started
    if failures:
        raise RuntimeError(f"raw libsodium round trip failed {failures} times")
    return elapsed
