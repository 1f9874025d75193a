# cython: language_level=3
"""The libsodium entry points the data path calls, taken from pynacl's bundled libsodium.

pynacl ships libsodium statically inside its cffi extension and exposes every bound symbol as a
cffi function object; ``ffi.cast("uintptr_t", fn)`` gives the C address. We take those addresses
once at import, so the per-packet path calls libsodium directly with no Python in between, and
``pip install`` needs no libsodium headers or library. ``import nacl.bindings`` runs
``sodium_init()`` (which also picks the fastest ChaCha20 implementation for this CPU).
"""
from libc.stdint cimport uintptr_t

import nacl.bindings  # noqa: F401  (runs sodium_init)
from nacl._sodium import ffi as _ffi, lib as _lib

cdef SodiumApi _api


cdef uintptr_t _address(str name) except 0:
    cdef uintptr_t address = int(_ffi.cast("uintptr_t", getattr(_lib, name)))
    if address == 0:
        raise ImportError(f"pynacl's libsodium does not export {name}")
    return address


_api.chacha20poly1305_ietf_encrypt = <aead_encrypt_t>_address("crypto_aead_chacha20poly1305_ietf_encrypt")
_api.chacha20poly1305_ietf_decrypt = <aead_decrypt_t>_address("crypto_aead_chacha20poly1305_ietf_decrypt")
_api.memzero = <memzero_t>_address("sodium_memzero")
_api.xchacha20poly1305_ietf_encrypt = <aead_encrypt_t>_address("crypto_aead_xchacha20poly1305_ietf_encrypt")


cdef const SodiumApi* sodium_api() noexcept:
    return &_api


def symbols() -> dict:
    """Addresses of the libsodium functions in use (for diagnostics)."""
    return {
        "crypto_aead_chacha20poly1305_ietf_encrypt": <uintptr_t>_api.chacha20poly1305_ietf_encrypt,
        "crypto_aead_chacha20poly1305_ietf_decrypt": <uintptr_t>_api.chacha20poly1305_ietf_decrypt,
        "sodium_memzero": <uintptr_t>_api.memzero,
        "crypto_aead_xchacha20poly1305_ietf_encrypt": <uintptr_t>_api.xchacha20poly1305_ietf_encrypt,
    }
