"""Fixtures of the CLI tests: the real entry point in a subprocess (see ``cli_run``)."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest
from cli_run import Cli, run_cli


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME: no ``coder login`` files, no agentconn state."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(home: Path) -> Cli:
    """``cli(*argv, env={...}, module="agentconn.cli")``: :func:`cli_run.run_cli` with the
    empty ``home``."""
    return functools.partial(run_cli, home)


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
