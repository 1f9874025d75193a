"""The C replay filter (_wgcore.replay) against wireguard-go's vectors and a set-based model.

Vectors: WireGuard/wireguard-go ``replay/replay_test.go`` (commit 22af3890, ported there from the
Linux kernel's selftest): the 34-step ``TestReplay`` sequence and its six bulk tests, with the
test file's own ``RejectAfterMessages = 2**64 - 2**4 - 1`` as the limit and
``T_LIM = windowSize + 1 = 8129``. Spec: wireguard.md §10.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _wgcore.replay import WINDOW, ReplayWindow

# wireguard-go replay_test.go: its own limit, not the device's RejectAfterMessages.
TEST_LIMIT = (1 << 64) - (1 << 4) - 1
# The device limit (wireguard.md §7.1), ReplayWindow's default.
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
T_LIM = WINDOW + 1

# TestReplay, steps 1..34, in order: (counter, expected).
SEQUENCE = [
    (0, True),                              # 1
    (1, True),                              # 2
    (1, False),                             # 3
    (9, True),                              # 4
    (8, True),                              # 5
    (7, True),                              # 6
    (7, False),                             # 7
    (T_LIM, True),                          # 8
    (T_LIM - 1, True),                      # 9
    (T_LIM - 1, False),                     # 10
    (T_LIM - 2, True),                      # 11
    (2, True),                              # 12
    (2, False),                             # 13
    (T_LIM + 16, True),                     # 14
    (3, False),                             # 15
    (T_LIM + 16, False),                    # 16
    (T_LIM * 4, True),                      # 17
    (T_LIM * 4 - (T_LIM - 1), True),        # 18
    (10, False),                            # 19
    (T_LIM * 4 - T_LIM, False),             # 20
    (T_LIM * 4 - (T_LIM + 1), False),       # 21
    (T_LIM * 4 - (T_LIM - 2), True),        # 22
    (T_LIM * 4 + 1 - T_LIM, False),         # 23
    (0, False),                             # 24
    (TEST_LIMIT, False),                    # 25
    (TEST_LIMIT - 1, True),                 # 26
    (TEST_LIMIT, False),                    # 27
    (TEST_LIMIT - 1, False),                # 28
    (TEST_LIMIT - 2, True),                 # 29
    (TEST_LIMIT + 1, False),                # 30
    (TEST_LIMIT + 2, False),                # 31
    (TEST_LIMIT - 2, False),                # 32
    (TEST_LIMIT - 3, True),                 # 33
    (0, False),                             # 34
]


def test_window_constant() -> None:
    # (128 - 1) * 64, wireguard-go windowSize and the kernel's 8192 - 64.
    assert WINDOW == 8128
    assert T_LIM == 8129


def test_default_limit_is_reject_after_messages() -> None:
    assert ReplayWindow().limit == REJECT_AFTER_MESSAGES


def test_wireguard_go_sequence() -> None:
    assert len(SEQUENCE) == 34
    window = ReplayWindow(TEST_LIMIT)
    got = [(number, window.validate(counter)) for number, (counter, _) in enumerate(SEQUENCE, 1)]
    assert got == [(number, expected) for number, (_, expected) in enumerate(SEQUENCE, 1)]
    assert window.last == TEST_LIMIT - 1


def _bulk(window: ReplayWindow, steps: list[tuple[int, bool]]) -> list[int]:
    """Indices (1-based) of the steps whose result differs from the expected one."""
    return [n for n, (counter, expected) in enumerate(steps, 1)
            if window.validate(counter) is not expected]


W = WINDOW
BULK = {
    "1": [(i, True) for i in range(1, W + 1)] + [(0, True), (0, False)],
    "2": [(i, True) for i in range(2, W + 2)] + [(1, True), (0, False)],
    "3": [(i, True) for i in range(W + 1, 0, -1)],
    "4": [(i, True) for i in range(W + 2, 1, -1)] + [(0, False)],
    "5": [(i, True) for i in range(W, 0, -1)] + [(W + 1, True), (0, False)],
    "6": [(i, True) for i in range(W, 0, -1)] + [(0, True), (W + 1, True)],
}


@pytest.mark.parametrize("name", sorted(BULK))
def test_wireguard_go_bulk(name: str) -> None:
    window = ReplayWindow(TEST_LIMIT)
    assert _bulk(window, BULK[name]) == []


def test_reset_reuses_one_filter_for_every_bulk_test() -> None:
    # replay_test.go calls filter.Init() (== our reset) between the bulk tests on one filter,
    # so stale ring words must be cleared lazily as the window advances again.
    window = ReplayWindow(TEST_LIMIT)
    assert _bulk(window, SEQUENCE) == []
    for name in sorted(BULK):
        window.reset()
        assert window.last == 0
        assert _bulk(window, BULK[name]) == [], name


def test_reset_forgets_counter_zero() -> None:
    window = ReplayWindow()
    assert window.validate(0) is True
    assert window.validate(0) is False
    window.reset()
    assert window.validate(0) is True


def test_jump_over_whole_ring_clears_it() -> None:
    window = ReplayWindow()
    assert all(window.validate(c) for c in range(0, 64 * 128, 63))
    far = 10 * 64 * 128 + 5
    assert window.validate(far) is True
    # Everything within the window below `far` is fresh again, including the ring slots the
    # old counters occupied.
    assert window.validate(far - W) is True
    assert window.validate(far - W - 1) is False
    assert window.validate(far - 64 * 128) is False
    assert window.validate(far - 1) is True


class SetModel:
    """wireguard.md §10 restated without a ring: the set of accepted counters."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[int] = set()
        self.last = 0

    def validate(self, counter: int) -> bool:
        if counter >= self.limit or counter in self.seen:
            return False
        if counter <= self.last and self.last - counter > W:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


def _counters(limit: int) -> st.SearchStrategy[list[int]]:
    """Steps relative to the previous counter: forward, jumps, duplicates, old values, the
    window's trailing edge, values near the limit and anywhere in u64."""
    step = st.one_of(
        st.tuples(st.just("fwd"), st.integers(1, 70)),
        st.tuples(st.just("jump"), st.integers(64, 3 * 64 * 128)),
        st.tuples(st.just("back"), st.integers(0, W + 130)),
        st.tuples(st.just("dup"), st.integers(0, 20)),
        st.tuples(st.just("near_limit"), st.integers(-W - 100, 3)),
        st.tuples(st.just("edge"), st.integers(-3, 3)),
        st.tuples(st.just("abs"), st.integers(0, 2**64 - 1)),
    )
    return st.lists(step, min_size=1, max_size=300).map(lambda steps: _walk(steps, limit))


def _walk(steps: list[tuple[str, int]], limit: int) -> list[int]:
    out: list[int] = []
    current = 0
    last = 0  # every counter above the last accepted one and below the limit is accepted
    for kind, amount in steps:
        if kind == "fwd" or kind == "jump":
            current = current + amount
        elif kind == "back":
            current = max(0, current - amount)
        elif kind == "dup":
            current = out[-1 - amount % len(out)] if out else 0
        elif kind == "near_limit":
            current = limit - 1 + amount
        elif kind == "edge":
            current = last - W + amount   # the oldest counter still inside the window, +-3
        else:
            current = amount
        current = min(max(current, 0), 2**64 - 1)
        out.append(current)
        if current < limit:
            last = max(last, current)
    return out


@settings(max_examples=150, deadline=None)
@given(data=st.data(), limit=st.sampled_from([REJECT_AFTER_MESSAGES, TEST_LIMIT, 20_000]))
def test_agrees_with_set_model(data: st.DataObject, limit: int) -> None:
    counters = data.draw(_counters(limit))
    window = ReplayWindow(limit)
    model = SetModel(limit)
    for i, counter in enumerate(counters):
        assert window.validate(counter) is model.validate(counter), (i, counter)
    assert window.last == model.last


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 2**40), order=st.permutations(range(300)))
def test_any_order_within_window_accepts_each_once(start: int, order: list[int]) -> None:
    window = ReplayWindow()
    assert [c for c in order if not window.validate(start + c * 27)] == []
    assert [c for c in order if window.validate(start + c * 27)] == []
