"""Shared pieces of the desktop tests: prerequisites, a second client peer for CLI runs,
the X event logger, ffprobe."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_pair import AGENT_ID, pair_configs

import _wgcore
from agentconn.agent.agent import Agent
from agentconn.wg.config import load_config

HERE = Path(__file__).parent

#: Programs the desktop tests run, with the Debian package that has them.
DESKTOP_TOOLS = {"Xvnc": "tigervnc-standalone-server", "ffmpeg": "ffmpeg",
                 "ffprobe": "ffmpeg", "xterm": "xterm"}
#: Python packages the desktop tests import (runtime deps, and vncdotool from [test]).
DESKTOP_MODULES = {"Xlib": "python-xlib", "PIL": "Pillow", "vncdotool": "vncdotool"}


def missing_desktop_tools() -> list[str]:
    missing = [f"{cmd} (apt {pkg})" for cmd, pkg in DESKTOP_TOOLS.items()
               if shutil.which(cmd) is None]
    missing += [f"{mod} (pip {pkg})" for mod, pkg in DESKTOP_MODULES.items()
                if importlib.util.find_spec(mod) is None]
    return missing


def require_desktop_tools() -> None:
    """Skip when a desktop prerequisite is missing; fail instead under CI=true."""
    missing = missing_desktop_tools()
    if missing:
        msg = "desktop tests need " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def vncdo() -> str:
    """vncdotool's command line client (installed next to this Python)."""
    here = Path(sys.executable).with_name("vncdo")
    return str(here) if here.exists() else (shutil.which("vncdo") or "vncdo")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``python -m agentconn.cli`` subprocesses (source tree on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_wgcore.__file__)), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


def second_client_config(agent: Agent) -> str:
    """Add another client peer to the running ``agent``; return that client's wg-quick
    config (with the agent's loopback endpoint), for an ``agentconn`` CLI subprocess."""
    agent_conf, client_conf, _ = pair_configs(AGENT_ID)
    agent.tunnel.add_peer(load_config(agent_conf).peers[0])
    client_conf = re.sub(r"(\[Peer\]\nPublicKey = )\S+", rf"\g<1>{agent.tunnel.public_key}",
                         client_conf)
    return client_conf + f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n"


async def ffprobe(path: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-show_entries",
        "stream=codec_type,codec_name,width,height:format=duration,format_name",
        "-of", "json", str(path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


class XLogger:
    """tools/x_event_logger.py on the desktop: collects its JSON event lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, env: dict[str, str]) -> XLogger:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "tools" / "x_event_logger.py"), env=env,
            stdout=asyncio.subprocess.PIPE)
        logger = cls(proc)
        await logger.wait_for(lambda e: e.get("ready") is True)
        logger.events.clear()
        return logger

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))
            self._changed.set()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 10.0) -> dict[str, Any]:
        """The first logged event matching ``predicate`` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    async def settle(self, quiet: float = 0.1) -> list[dict[str, Any]]:
        """Wait until no event arrived for ``quiet`` seconds, then :meth:`take`."""
        while True:
            count = len(self.events)
            await asyncio.sleep(quiet)
            if len(self.events) == count:
                return self.take()

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()
        await asyncio.gather(self._task, return_exceptions=True)
