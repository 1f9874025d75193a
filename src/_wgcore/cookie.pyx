# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The responder's handshake screen in C: BLAKE2s, mac1/mac2 checks and cookie replies.

Under a handshake flood every forged initiation must be turned away before any
Diffie-Hellman and as cheaply as possible (wireguard.md §5, §9 step 5; hardening issue item 3):
a flood of 10,000 initiations/s with a valid mac1 cost 40 µs each through the Python
``hashlib``/pynacl path, half a core. :class:`CookieGate` does the per-message work in C:

* :meth:`CookieGate.screen`: the message's type and length (§3), and mac1 =
  ``MAC(HASH(LABEL_MAC1 || S_own^pub), msg[:off_mac1])``;
* :meth:`CookieGate.check_mac2`: mac2 = ``MAC(cookie, msg[:off_mac2])`` with
  ``cookie = MAC(secret, source)``;
* :meth:`CookieGate.reply`: the 64-byte cookie reply, ``XAEAD(HASH(LABEL_COOKIE || S_own^pub),
  nonce, cookie, mac1)`` through libsodium's XChaCha20-Poly1305.

``HASH`` is BLAKE2s-256 and ``MAC`` keyed BLAKE2s-128: BLAKE2s is written here from RFC 7693
(libsodium has only BLAKE2b); :func:`blake2s` exposes it for the tests, which compare it with
``hashlib.blake2s``. The secret's lifetime and the random source stay in
:class:`agentconn.wg.cookie.CookieChecker`, which drives this class.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from _wgcore.sodium cimport sodium_api

cdef extern from *:
    """
    static inline uint32_t wg_rotr32(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }
    static inline int wg_ct_equal16(const unsigned char *a, const unsigned char *b) {
        unsigned char d = 0; for (int i = 0; i < 16; i++) d |= a[i] ^ b[i]; return d == 0;
    }
    """
    uint32_t wg_rotr32(uint32_t x, unsigned n) nogil
    int wg_ct_equal16(const uint8_t* a, const uint8_t* b) nogil

# RFC 7693 §2.6 / §2.7: the initial vector (SHA-256's) and the message schedule.
cdef uint8_t _EMPTY[1]
_EMPTY[0] = 0
cdef uint32_t IV[8]
IV[:] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
         0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
cdef uint8_t SIGMA[160]
SIGMA[:] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
    11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
    7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
    9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
    2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
    12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
    13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
    6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
    10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0]

# wireguard.md §3: message types and sizes, and the offsets the screen needs.
cdef enum:
    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    INITIATION_LEN = 148
    RESPONSE_LEN = 92
    COOKIE_REPLY_LEN = 64
    INITIATION_MAC1 = 116
    RESPONSE_MAC1 = 60
    SENDER_OFFSET = 4
    MAC_SIZE = 16
    NONCE_SIZE = 24

#: :meth:`CookieGate.screen` answers: not a handshake message at all.
NOT_HANDSHAKE = 0
#: :meth:`CookieGate.screen` answers (negated type): an initiation/response whose mac1 is wrong.
BAD_MAC1_INITIATION = -INITIATION
BAD_MAC1_RESPONSE = -RESPONSE


cdef inline uint32_t _load32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef void _compress(uint32_t* h, const uint8_t* block, uint64_t t, bint last) noexcept nogil:
    cdef uint32_t v[16]
    cdef uint32_t m[16]
    cdef int i, r
    cdef const uint8_t* s
    for i in range(16):
        m[i] = _load32(block + 4 * i)
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = IV[i]
    v[12] ^= <uint32_t>(t & 0xFFFFFFFFu)
    v[13] ^= <uint32_t>(t >> 32)
    if last:
        v[14] ^= 0xFFFFFFFFu
    for r in range(10):
        s = &SIGMA[16 * r]
        _g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


cdef inline void _g(uint32_t* v, int a, int b, int c, int d, uint32_t x, uint32_t y) noexcept nogil:
    v[a] = v[a] + v[b] + x
    v[d] = wg_rotr32(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = wg_rotr32(v[b] ^ v[c], 12)
    v[a] = v[a] + v[b] + y
    v[d] = wg_rotr32(v[d] ^ v[a], 8)
    v[c] = v[c] + v[d]
    v[b] = wg_rotr32(v[b] ^ v[c], 7)


cdef void blake2s_c(uint8_t* out, size_t outlen, const uint8_t* key, size_t keylen,
                    const uint8_t* data, size_t datalen) noexcept nogil:
    """One-shot BLAKE2s (RFC 7693): ``outlen`` 1..32 bytes, ``keylen`` 0..32."""
    cdef uint32_t h[8]
    cdef uint8_t block[64]
    cdef uint64_t t = 0
    cdef int i
    for i in range(8):
        h[i] = IV[i]
    h[0] ^= 0x01010000u ^ (<uint32_t>keylen << 8) ^ <uint32_t>outlen
    if keylen > 0:
        memset(block, 0, 64)
        memcpy(block, key, keylen)
        t = 64
        _compress(h, block, t, datalen == 0)
    if datalen > 0 or keylen == 0:
        while datalen > 64:
            t += 64
            _compress(h, data, t, False)
            data += 64
            datalen -= 64
        memset(block, 0, 64)
        memcpy(block, data, datalen)
        t += datalen
        _compress(h, block, t, True)
    for i in range(8):
        block[4 * i] = h[i] & 0xFF
        block[4 * i + 1] = (h[i] >> 8) & 0xFF
        block[4 * i + 2] = (h[i] >> 16) & 0xFF
        block[4 * i + 3] = (h[i] >> 24) & 0xFF
    memcpy(out, block, outlen)
    memset(block, 0, 64)


def blake2s(const uint8_t[::1] data not None, const uint8_t[::1] key=None,
            int digest_size=32) -> bytes:
    """BLAKE2s of ``data`` (keyed when ``key`` is given), like ``hashlib.blake2s``."""
    cdef uint8_t out[32]
    cdef size_t keylen = 0 if key is None else key.shape[0]
    if not 1 <= digest_size <= 32:
        raise ValueError(f"digest_size must be 1..32, got {digest_size}")
    if keylen > 32:
        raise ValueError(f"key must be at most 32 bytes, got {keylen}")
    cdef const uint8_t* k = NULL
    cdef const uint8_t* d = &_EMPTY[0]
    if keylen > 0:
        k = &key[0]
    if data.shape[0] > 0:
        d = &data[0]
    blake2s_c(out, digest_size, k, keylen, d, data.shape[0])
    return out[:digest_size]


cdef class CookieGate:
    """mac1/mac2 checks and cookie replies for the device that owns ``own_public``.

    ``screen`` and ``check_mac2`` never raise for bad input (a wrong type or length is an
    answer, not an error). The cookie secret is set by the caller (:meth:`set_secret`);
    until then every mac2 is invalid.
    """

    cdef uint8_t mac1_key[32]
    cdef uint8_t cookie_key[32]
    cdef uint8_t secret[32]
    cdef bint has_secret

    def __cinit__(self, const uint8_t[::1] own_public not None):
        if own_public.shape[0] != 32:
            raise ValueError(f"public key must be 32 bytes, got {own_public.shape[0]}")
        cdef uint8_t buf[40]
        memcpy(buf, b"mac1----", 8)
        memcpy(buf + 8, &own_public[0], 32)
        blake2s_c(self.mac1_key, 32, NULL, 0, buf, 40)
        memcpy(buf, b"cookie--", 8)
        blake2s_c(self.cookie_key, 32, NULL, 0, buf, 40)
        self.has_secret = False

    def set_secret(self, const uint8_t[::1] secret not None) -> None:
        """Use the 32-byte ``secret`` for cookies from now on."""
        if secret.shape[0] != 32:
            raise ValueError(f"cookie secret must be 32 bytes, got {secret.shape[0]}")
        memcpy(self.secret, &secret[0], 32)
        self.has_secret = True

    def clear_secret(self) -> None:
        """Forget the secret (it expired): every mac2 is invalid until :meth:`set_secret`."""
        memset(self.secret, 0, 32)
        self.has_secret = False

    def screen(self, const uint8_t[::1] message not None) -> int:
        """The message's type (1 initiation, 2 response, 3 cookie reply) when its type, reserved
        bytes and length are right and, for 1 and 2, its mac1 is valid; ``-type`` for an
        initiation or response with a wrong mac1; ``0`` for anything else."""
        cdef Py_ssize_t n = message.shape[0]
        cdef uint32_t kind
        cdef size_t off
        cdef uint8_t expected[MAC_SIZE]
        if n < 4:
            return NOT_HANDSHAKE
        kind = _load32(&message[0])
        if kind == INITIATION and n == INITIATION_LEN:
            off = INITIATION_MAC1
        elif kind == RESPONSE and n == RESPONSE_LEN:
            off = RESPONSE_MAC1
        elif kind == COOKIE_REPLY and n == COOKIE_REPLY_LEN:
            return COOKIE_REPLY
        else:
            return NOT_HANDSHAKE
        blake2s_c(expected, MAC_SIZE, self.mac1_key, 32, &message[0], off)
        if wg_ct_equal16(expected, &message[off]):
            return <int>kind
        return -<int>kind

    cdef void _cookie(self, uint8_t* out, const uint8_t[::1] source) noexcept nogil:
        cdef const uint8_t* s = &_EMPTY[0]
        if source.shape[0] > 0:
            s = &source[0]
        blake2s_c(out, MAC_SIZE, self.secret, 32, s, source.shape[0])

    def check_mac2(self, const uint8_t[::1] message not None,
                   const uint8_t[::1] source not None) -> bool:
        """Whether an initiation or response carries the mac2 of the cookie for ``source``
        (the sender's address bytes). False without a secret or for any other input."""
        cdef Py_ssize_t n = message.shape[0]
        cdef size_t off
        cdef uint8_t cookie[MAC_SIZE]
        cdef uint8_t expected[MAC_SIZE]
        if not self.has_secret or n < 4:
            return False
        if _load32(&message[0]) == INITIATION and n == INITIATION_LEN:
            off = INITIATION_MAC1 + MAC_SIZE
        elif _load32(&message[0]) == RESPONSE and n == RESPONSE_LEN:
            off = RESPONSE_MAC1 + MAC_SIZE
        else:
            return False
        self._cookie(cookie, source)
        blake2s_c(expected, MAC_SIZE, cookie, MAC_SIZE, &message[0], off)
        return bool(wg_ct_equal16(expected, &message[off]))

    def reply(self, const uint8_t[::1] message not None, const uint8_t[::1] source not None,
              const uint8_t[::1] nonce not None) -> bytes:
        """The 64-byte cookie reply to an initiation or response from ``source``, sealed
        with the 24-byte ``nonce``. Raises ``ValueError`` for any other message or without a
        secret."""
        cdef Py_ssize_t n = message.shape[0]
        cdef size_t off
        cdef uint8_t cookie[MAC_SIZE]
        cdef uint8_t out[COOKIE_REPLY_LEN]
        cdef unsigned long long clen = 0
        if nonce.shape[0] != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {nonce.shape[0]}")
        if not self.has_secret:
            raise ValueError("no cookie secret set")
        if n >= 4 and _load32(&message[0]) == INITIATION and n == INITIATION_LEN:
            off = INITIATION_MAC1
        elif n >= 4 and _load32(&message[0]) == RESPONSE and n == RESPONSE_LEN:
            off = RESPONSE_MAC1
        else:
            raise ValueError(f"expected a handshake initiation (148 bytes) or response "
                             f"(92 bytes), got {n} bytes")
        self._cookie(cookie, source)
        memset(out, 0, 4)
        out[0] = COOKIE_REPLY
        memcpy(out + 4, &message[SENDER_OFFSET], 4)         # receiver := the sender's index
        memcpy(out + 8, &nonce[0], NONCE_SIZE)
        if sodium_api().xchacha20poly1305_ietf_encrypt(
                out + 8 + NONCE_SIZE, &clen, cookie, MAC_SIZE, &message[off], MAC_SIZE,
                NULL, out + 8, self.cookie_key) != 0 or clen != 32:
            raise RuntimeError("XChaCha20-Poly1305 failed")
        return out[:COOKIE_REPLY_LEN]
