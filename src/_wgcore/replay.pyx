# cython: language_level=3
"""A Python handle on the C replay filter, for tests and diagnostics (the data path uses the
inline functions in replay.pxd directly on the filter embedded in each keypair)."""
from libc.stdint cimport uint64_t
from libc.string cimport memset

WINDOW = REPLAY_WINDOW


cdef class ReplayWindow:
    """Sliding-window filter: ``validate(counter)`` is True exactly once per acceptable counter."""
    cdef ReplayFilter f
    cdef readonly uint64_t limit

    def __cinit__(self, uint64_t limit=REJECT_AFTER_MESSAGES):
        memset(&self.f, 0, sizeof(ReplayFilter))
        self.limit = limit

    def reset(self) -> None:
        replay_reset(&self.f)

    def validate(self, uint64_t counter) -> bool:
        return replay_validate(&self.f, counter, self.limit)

    @property
    def last(self) -> int:
        return self.f.last
