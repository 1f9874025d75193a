"""Fixtures for agentconn.coder: the Go yamux peer, and loopback pairs of our own sessions.

This directory is also put on sys.path, so the helpers (controlplane.py, derp_pair.py,
peer.py) import as ``from controlplane import ...`` whatever the pytest import mode.

The Go peer (``yamux_peer/main.go``) is built once per test session with Debian's
``golang-go`` against ``golang-github-hashicorp-yamux-dev`` (GOPATH mode, no module proxy).
Without them the interop tests skip — and fail under ``CI=true``, where a missing prerequisite
must not pass silently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from peer import SessionPair

from agentconn.coder.yamux import Role
from agentconn.coder.yamux_aio import yamux_over_streams

GOPATH = "/usr/share/gocode"
YAMUX_SRC = Path(GOPATH) / "src/github.com/hashicorp/yamux"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"interop prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def yamux_peer_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the built Go yamux peer (built once per session into a temp dir)."""
    go = shutil.which("go")
    if go is None:
        _missing("go not found (Debian package golang-go)")
    if not (YAMUX_SRC / "session.go").exists():
        _missing(f"{YAMUX_SRC} missing (Debian package golang-github-hashicorp-yamux-dev)")
    out_dir = tmp_path_factory.mktemp("yamux_peer")
    binary = out_dir / "yamux_peer"
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="")
    env.setdefault("GOCACHE", str(out_dir / "gocache"))
    result = subprocess.run(
        [str(go), "build", "-o", str(binary), "main.go"],
        cwd=_HERE / "yamux_peer",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"building the Go yamux peer failed:\n{result.stderr}", pytrace=False)
    return binary


@pytest.fixture
async def session_pair() -> AsyncIterator[SessionPair]:
    """Our yamux client and server over a connected socket pair."""
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    pair = SessionPair(
        yamux_over_streams(ra, wa, Role.CLIENT), yamux_over_streams(rb, wb, Role.SERVER)
    )
    try:
        yield pair
    finally:
        await pair.client.close()
        await pair.server.close()


@pytest.fixture(autouse=True)
def _tailnet_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployments our tests open bind their WireGuard socket to 127.0.0.1, so the endpoints
    they advertise and disco-ping are loopback ones only."""
    monkeypatch.setenv("AGENTCONN_TAILNET_LISTEN", "127.0.0.1")
