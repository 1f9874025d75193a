from libc.stdint cimport uint8_t, uint32_t
from _wgcore.state cimport KeypairState

cdef class Keypair:
    cdef KeypairState s
    cdef object _peer_slot        # keeps the PeerSlot alive while s.peer points into it

# Seal the padded plaintext at pkt[16:16+padded_len] in place and write the 16-byte transport
# header at pkt[0:16]. Returns the datagram length (32 + padded_len). Consumes one counter value.
cdef uint32_t keypair_seal(KeypairState* kp, uint8_t* pkt, uint32_t padded_len) noexcept nogil
# Open the transport message pkt[0:length] in place (plaintext at pkt+16). Returns the
# plaintext length, or a negative DROP_* code. Does the AEAD and the replay filter; the caller
# checked the type, the index lookup and the age.
cdef int keypair_open(KeypairState* kp, uint8_t* pkt, uint32_t length) noexcept nogil
