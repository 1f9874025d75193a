# C structs shared by the data-path modules (a .pxd with no .pyx, STYLE §5).
#
# Ownership: each struct is embedded in a cdef class (KeypairState in keypair.Keypair,
# PeerState in datapath.PeerSlot), so its address is stable while that object lives. Python keeps
# the objects alive (Datapath holds every installed Keypair, Peer holds its PeerSlot); the C side
# only ever holds borrowed pointers, which is what lets the batch loops run without the GIL.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from _wgcore.replay cimport ReplayFilter, REJECT_AFTER_MESSAGES

cdef enum:
    KEY_LEN = 32
    TRANSPORT_HEADER_LEN = 16     # type(4) receiver(4) counter(8), wireguard.md §3.4
    TAG_LEN = 16
    TRANSPORT_OVERHEAD = 32
    ENDPOINT_MAX = 28             # sizeof(struct sockaddr_in6)

# The single source of these numbers: _wgcore.constants exports them to Python and
# agentconn.wg.constants re-exports them under wireguard-go's names.
cdef enum:
    MESSAGE_INITIATION = 1
    MESSAGE_RESPONSE = 2
    MESSAGE_COOKIE_REPLY = 3
    MESSAGE_TRANSPORT = 4
    INITIATION_LEN = 148
    RESPONSE_LEN = 92
    COOKIE_REPLY_LEN = 64

# wireguard.md §7.1 (whitepaper §6.1, wireguard-go device/constants.go): the limits the data
# path enforces (REJECT_AFTER_MESSAGES, the replay filter's limit, is in replay.pxd). C macros,
# not enums: the counts need 64 bits and the times are seconds.
cdef extern from *:
    """
    #ifndef AGENTCONN_WG_LIMITS
    #define AGENTCONN_WG_LIMITS
    #define WG_REKEY_AFTER_MESSAGES (1ULL << 60)
    #define WG_REKEY_AFTER_TIME 120.0
    #define WG_REJECT_AFTER_TIME 180.0
    #endif
    """
    const uint64_t REKEY_AFTER_MESSAGES "WG_REKEY_AFTER_MESSAGES"
    const double REKEY_AFTER_TIME "WG_REKEY_AFTER_TIME"
    const double REJECT_AFTER_TIME "WG_REJECT_AFTER_TIME"

# Per-descriptor result codes. Positive: what to do with it; negative: drop reason (the index
# into the drop counters is the negated code).
cdef enum:
    RES_EMPTY = 0
    RES_DATA = 1          # rx: authenticated inner IP packet at inner_off/inner_len
    RES_KEEPALIVE = 2     # rx: authenticated keepalive
    RES_HANDSHAKE = 3     # rx: type 1/2/3 of the exact length, for the Python control path
    RES_PENDING = 4       # tx: inner packet waiting to be sealed
    RES_SEALED = 5        # tx: transport message ready at off/len for addr
    RES_RAW = 6           # tx: handshake message to send as-is
    RES_STAGE = 7         # tx: no usable keypair or endpoint: Python stages it and handshakes
    RES_DISCO = 8         # rx: disco-looking (magic "TS\xf0\x9f\x92\xac", >= 62 bytes), for Python
    DROP_SHORT = -1
    DROP_TYPE = -2
    DROP_NO_KEYPAIR = -3
    DROP_EXPIRED = -4
    DROP_AUTH = -5
    DROP_REPLAY = -6
    DROP_IP = -7
    DROP_SOURCE = -8
    DROP_NO_ROUTE = -9
    DROP_TRUNCATED = -10
    DROP_TOO_BIG = -11
    DROP_SEND = -12
    DROP_REASONS = 13     # size of the drop-counter array (index 0 unused)

cdef struct Endpoint:
    uint8_t addr[28]      # a struct sockaddr_in or sockaddr_in6, as the socket wants it
    uint32_t len          # 0 = no endpoint

cdef struct PeerState

cdef struct KeypairState:
    uint8_t send_key[32]
    uint8_t recv_key[32]
    uint32_t local_index
    uint32_t remote_index
    uint64_t send_counter          # next counter to use
    ReplayFilter replay
    double created
    uint8_t is_initiator
    uint8_t valid                  # cleared when zeroed/removed
    uint64_t rx_packets            # authenticated packets received on this keypair
    PeerState* peer

cdef struct PeerState:
    void* owner                    # borrowed PyObject* of the PeerSlot
    uint32_t id
    Endpoint endpoint
    KeypairState* current          # the keypair sends use (borrowed)
    double last_sent_data
    double last_sent_any
    double last_received_data
    double last_received_any
    uint64_t rx_bytes
    uint64_t rx_packets
    uint64_t tx_bytes
    uint64_t tx_packets
    uint32_t touched_epoch
    # Event flags for this batch, read and cleared by Python once per peer per batch
    # (PeerSlot.take_events): the timer hooks of wireguard.md §7.2 run from them.
    uint32_t events

cdef enum:
    EV_SENT_DATA = 1
    EV_SENT_ANY = 2
    EV_RECEIVED_DATA = 4
    EV_RECEIVED_ANY = 8
    EV_WANT_HANDSHAKE = 16         # no usable keypair at send, or rekey-after-messages/time hit
    EV_ENDPOINT_CHANGED = 32

cdef struct PacketDesc:
    uint32_t off                   # datagram start in the batch arena
    uint32_t len                   # datagram length
    uint32_t inner_off             # inner IP packet (rx: after decryption; tx: before sealing)
    uint32_t inner_len
    int32_t result
    uint32_t msg_index             # rx: which received datagram (for its source address)
    PeerState* peer
    KeypairState* keypair
    Endpoint addr                  # rx: source; tx: destination
