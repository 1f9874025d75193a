"""The constants the C data path and the Python control path share have one source (STYLE §4).

``_wgcore/state.pxd`` and ``replay.pxd`` define them; ``agentconn.wg.constants`` takes them from
``_wgcore.constants``. The expected values are restated here from the spec, as the oracle.
"""
from __future__ import annotations

import pytest

from _wgcore import constants as core
from agentconn.wg import constants

SPEC = {
    # wireguard.md §2-§3 / whitepaper §5.4: message types and exact sizes
    "MESSAGE_INITIATION": 1, "MESSAGE_RESPONSE": 2, "MESSAGE_COOKIE_REPLY": 3,
    "MESSAGE_TRANSPORT": 4, "MESSAGE_INITIATION_SIZE": 148, "MESSAGE_RESPONSE_SIZE": 92,
    "MESSAGE_COOKIE_REPLY_SIZE": 64, "TRANSPORT_HEADER_SIZE": 16, "MESSAGE_TRANSPORT_MIN_SIZE": 32,
    # wireguard.md §1
    "KEY_SIZE": 32, "TAG_SIZE": 16,
    # wireguard.md §7.1, §10 (wireguard-go device/constants.go, replay/replay.go)
    "REKEY_AFTER_MESSAGES": 2**60, "REJECT_AFTER_MESSAGES": 2**64 - 2**13 - 1,
    "REKEY_AFTER_TIME": 120.0, "REJECT_AFTER_TIME": 180.0, "REPLAY_WINDOW": (128 - 1) * 64,
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_shared_constant_has_the_spec_value_on_both_sides(name: str) -> None:
    assert getattr(core, name) == SPEC[name]
    assert getattr(constants, name) is getattr(core, name)


def test_every_exported_constant_is_checked() -> None:
    assert {n for n in vars(core) if n.isupper()} == set(SPEC)
