"""Fixtures for interop tests: network namespaces with real wireguard-go inside.

Every test in this directory is marked `interop` and calls `require_interop()` first: it is
skipped when root / ip / wireguard-go / wg / /dev/net/tun / `ip netns add` are missing, and
fails instead under CI=true. After each test, no namespace, wireguard-go process or control
socket created by this process may remain (checked, cleaned and reported as an error).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import (
    Namespace,
    WgPair,
    WireGuardGo,
    leaked_resources,
    reap_stale_namespaces,
    require_interop,
    wg_pair,
)

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def _interop_session() -> None:
    require_interop()
    reap_stale_namespaces()  # leftovers of a crashed earlier run (its pid is gone)


@pytest.fixture(autouse=True)
def _interop_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Runs first and tears down last: prerequisites before, leak check after."""
    require_interop()
    request.getfixturevalue("_interop_session")
    yield
    leaks = leaked_resources()
    if leaks:
        # clean up what we can so later tests start clean, then report
        from netns import _close_all_namespaces

        _close_all_namespaces()
        pytest.fail(f"interop resources leaked by {request.node.nodeid}: {leaks}", pytrace=False)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A fresh network namespace with `lo` up; always deleted, its processes killed."""
    with Namespace() as ns:
        yield ns


@pytest.fixture
def wggo(netns: Namespace) -> Iterator[WireGuardGo]:
    """A running wireguard-go in `netns`: keys generated, listen port chosen, link up
    (MTU 1420), no address and no peer yet."""
    wg = WireGuardGo(netns)
    try:
        wg.start()
        wg.up(1420)
        yield wg
    finally:
        wg.stop()


@pytest.fixture
def wgpair(netns: Namespace) -> Iterator[WgPair]:
    """wireguard-go at 10.77.0.1 / fd77::1 in `netns`, configured for our peer at
    10.77.0.2 / fd77::2 (keys in the returned WgPair); our code runs in the same namespace."""
    pair = wg_pair(netns)
    try:
        yield pair
    finally:
        pair.wg.stop()
