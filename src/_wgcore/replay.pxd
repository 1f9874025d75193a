# RFC 6479 sliding-window replay filter, as wireguard-go replay/replay.go and the kernel do it
# (wireguard.md §10): a ring of 128 u64 words, window (128 - 1) * 64 = 8128 counters.
from libc.stdint cimport uint64_t

cdef enum:
    REPLAY_RING_WORDS = 128
    REPLAY_WORD_BITS = 64
    REPLAY_WINDOW = 8128          # (REPLAY_RING_WORDS - 1) * REPLAY_WORD_BITS

# wireguard.md §7.1 (wireguard-go RejectAfterMessages): no counter at or above this is ever
# sent or accepted; the data path's filters use it as their limit. A 64-bit C macro.
cdef extern from *:
    """
    #ifndef AGENTCONN_WG_REJECT_AFTER_MESSAGES
    #define AGENTCONN_WG_REJECT_AFTER_MESSAGES 0xFFFFFFFFFFFFDFFFULL  /* 2**64 - 2**13 - 1 */
    #endif
    """
    const uint64_t REJECT_AFTER_MESSAGES "AGENTCONN_WG_REJECT_AFTER_MESSAGES"

cdef struct ReplayFilter:
    uint64_t last                 # highest counter accepted so far
    uint64_t ring[128]


cdef inline void replay_reset(ReplayFilter* f) noexcept nogil:
    # wireguard-go Filter.Reset: the lazy clearing in validate() handles the other words.
    f.last = 0
    f.ring[0] = 0


cdef inline bint replay_validate(ReplayFilter* f, uint64_t counter, uint64_t limit) noexcept nogil:
    """Accept `counter` once; reject counters >= limit, too old, or already seen."""
    cdef uint64_t block, current, diff, i, bit
    if counter >= limit:
        return False
    block = counter >> 6
    if counter > f.last:
        # Advance the window: zero the words that slide in (at most the whole ring).
        current = f.last >> 6
        diff = block - current
        if diff > REPLAY_RING_WORDS:
            diff = REPLAY_RING_WORDS
        i = current + 1
        while i <= current + diff:
            f.ring[i & (REPLAY_RING_WORDS - 1)] = 0
            i += 1
        f.last = counter
    elif f.last - counter > REPLAY_WINDOW:
        return False
    bit = (<uint64_t>1) << (counter & (REPLAY_WORD_BITS - 1))
    block &= REPLAY_RING_WORDS - 1
    if f.ring[block] & bit:
        return False
    f.ring[block] |= bit
    return True
