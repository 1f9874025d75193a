# libsodium function-pointer table (STYLE §5). Nothing is linked at build time: sodium.pyx fills
# the table at import with the addresses of the symbols in pynacl's bundled cffi module.
from libc.stddef cimport size_t

ctypedef int (*aead_encrypt_t)(unsigned char *c, unsigned long long *clen_p,
                               const unsigned char *m, unsigned long long mlen,
                               const unsigned char *ad, unsigned long long adlen,
                               const unsigned char *nsec, const unsigned char *npub,
                               const unsigned char *k) noexcept nogil
ctypedef int (*aead_decrypt_t)(unsigned char *m, unsigned long long *mlen_p,
                               unsigned char *nsec,
                               const unsigned char *c, unsigned long long clen,
                               const unsigned char *ad, unsigned long long adlen,
                               const unsigned char *npub, const unsigned char *k) noexcept nogil
ctypedef void (*memzero_t)(void *pnt, size_t length) noexcept nogil

ctypedef struct SodiumApi:
    aead_encrypt_t chacha20poly1305_ietf_encrypt
    aead_decrypt_t chacha20poly1305_ietf_decrypt
    memzero_t memzero
    aead_encrypt_t xchacha20poly1305_ietf_encrypt   # cookie replies (cookie.pyx)

cdef const SodiumApi* sodium_api() noexcept
