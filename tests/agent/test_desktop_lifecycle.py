"""The desktop's lifecycle (agent-api.md §11): disabled, started once on first use by
concurrent requests, restarted after a crash, failing clearly, and gone with the agent."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import uuid
from pathlib import Path

import pytest
from agent_pair import agent_pair
from desktop_env import require_desktop_tools
from rfb import RfbClient

from agentconn.agent.desktop import DesktopApi
from agentconn.client.conn import AgentApiError

START_FAILED = "Failed to start desktop session."
DESKTOP = {"desktop": True, "desktop_geometry": (320, 240)}


def _api(p) -> DesktopApi:  # type: ignore[no-untyped-def]
    return next(m for m in p.agent._modules if isinstance(m, DesktopApi))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_without_desktop_every_route_answers_500(tmp_path: Path) -> None:
    async with agent_pair(tmp_path) as p:
        calls = [
            p.conn.execute_desktop_action("screenshot"),
            p.conn.connect_desktop_vnc(),
            p.conn.start_desktop_recording(uuid.uuid4()),
            p.conn.stop_desktop_recording(uuid.uuid4()),
        ]
        for call in calls:
            with pytest.raises(AgentApiError) as e:
                await call
            assert (e.value.status, e.value.message) == (500, START_FAILED)
            assert "--desktop" in e.value.detail
        # the route runs first "ensure the desktop", so even a bad body gets the 500
        with pytest.raises(AgentApiError) as e:
            await p.conn._send("ExecuteDesktopAction", body=b"{")
        assert e.value.message == START_FAILED
        assert _api(p).session.starts == 0


async def test_missing_xvnc_is_a_clear_500(tmp_path: Path) -> None:
    async with agent_pair(tmp_path, agent_options=DESKTOP) as p:
        _api(p).session._environ["PATH"] = str(tmp_path)  # no Xvnc there
        with pytest.raises(AgentApiError) as e:
            await p.conn.execute_desktop_action("cursor_position")
        assert (e.value.status, e.value.message) == (500, START_FAILED)
        assert "Xvnc not found" in e.value.detail
        assert not list((tmp_path / "logs" / "desktop").glob("session-*"))


async def test_one_desktop_for_concurrent_requests_gone_with_the_agent(tmp_path: Path) -> None:
    require_desktop_tools()
    async with agent_pair(tmp_path, agent_options=DESKTOP) as p:
        api = _api(p)
        results = await asyncio.gather(
            *(p.conn.execute_desktop_action("mouse_move", coordinate=(i, i)) for i in range(6)),
            p.conn.execute_desktop_action("screenshot"))
        assert results[-1].screenshot_width == 320
        assert api.session.starts == 1
        xvnc, display = api.session.pid, api.session.display
        assert xvnc is not None and _alive(xvnc)
        private = Path(api.session.rfb_socket).parent
        assert private.stat().st_mode & 0o777 == 0o700
        assert Path(api.session.xauthority).stat().st_mode & 0o777 == 0o600
        rid = uuid.uuid4()
        await p.conn.start_desktop_recording(rid)
        ffmpeg = api.recordings.recordings[rid].proc.pid
        viewer = await RfbClient.open(*await p.conn.connect_desktop_vnc())
        assert (viewer.width, viewer.height) == (320, 240)
    # The agent is closed: Xvnc, ffmpeg and every file of the desktop are gone.
    for pid in (xvnc, ffmpeg):
        assert not _alive(pid), pid
    assert not private.exists()
    assert not os.path.exists(f"/tmp/.X11-unix/X{display[1:]}")
    desktop_dir = tmp_path / "logs" / "desktop"
    assert not list(desktop_dir.glob("session-*")) and not (desktop_dir / "recordings").exists()


async def test_a_crashed_desktop_is_restarted_and_a_dead_socket_is_a_500(
        tmp_path: Path) -> None:
    require_desktop_tools()
    async with agent_pair(tmp_path, agent_options=DESKTOP) as p:
        api = _api(p)
        await p.conn.execute_desktop_action("mouse_move", coordinate=(5, 5))
        first = api.session.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(5):
            while api.session.running:
                await asyncio.sleep(0.02)
        resp = await p.conn.execute_desktop_action("cursor_position")
        assert resp.output.startswith("x=")
        assert api.session.starts == 2 and api.session.pid != first

        os.unlink(api.session.rfb_socket)  # the VNC server's socket disappears
        with pytest.raises(AgentApiError) as e:
            await p.conn.connect_desktop_vnc()
        assert (e.value.status, e.value.message) == (500, "Failed to connect to VNC server.")
        # the rest of the desktop keeps working
        assert (await p.conn.execute_desktop_action("screenshot")).screenshot_height == 240


async def test_recording_routes_answer_503_while_the_desktop_api_shuts_down(
        tmp_path: Path) -> None:
    require_desktop_tools()
    async with agent_pair(tmp_path, agent_options=DESKTOP) as p:
        rid = uuid.uuid4()
        await p.conn.start_desktop_recording(rid)
        await _api(p).close()  # what Agent.close() does first
        for call in (p.conn.start_desktop_recording(rid), p.conn.stop_desktop_recording(rid)):
            with pytest.raises(AgentApiError) as e:
                await call
            assert (e.value.status, e.value.message) == (503, "Desktop API is shutting down.")
        with pytest.raises(AgentApiError) as e:
            await p.conn.execute_desktop_action("cursor_position")
        assert (e.value.status, e.value.message) == (500, START_FAILED)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read() and _alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def test_agentconn_agent_desktop_flag(tmp_path: Path) -> None:
    """The real ``agentconn agent --desktop`` (uvloop, its own process) serves the routes."""
    require_desktop_tools()
    import socket
    import sys

    from agent_pair import AGENT_ID
    from desktop_env import cli_env
    from PIL import Image, ImageChops

    from agentconn.aio.tunnel import Tunnel
    from agentconn.cli.commands import pair_configs
    from agentconn.client.conn import AgentConn
    from agentconn.proto.desktop import split_recording

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent_conf, client_conf, _ = pair_configs(AGENT_ID, listen_port=port,
                                              endpoint=f"127.0.0.1:{port}")
    (tmp_path / "agent.conf").write_text(agent_conf)
    logs = tmp_path / "logs"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentconn.cli", "agent", "--config", str(tmp_path / "agent.conf"),
        "--agent-id", str(AGENT_ID), "--log-dir", str(logs), "--desktop",
        "--desktop-geometry", "320x240", env=cli_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"API on" in line, line
        async with (Tunnel.from_config(client_conf, listen_host="127.0.0.1") as tunnel,
                    AgentConn(tunnel, AGENT_ID) as conn):
            assert await conn.await_reachable(10)
            shot = await conn.execute_desktop_action("screenshot")
            assert (shot.screenshot_width, shot.screenshot_height) == (320, 240)
            await conn.execute_desktop_action("mouse_move", coordinate=(100, 100))
            viewer = await RfbClient.open(*await conn.connect_desktop_vnc())
            viewer.pointer(100, 100)
            captured = await viewer.capture()
            png = Image.open(io.BytesIO(
                (await conn.execute_desktop_action("screenshot")).screenshot or b""))
            assert ImageChops.difference(captured, png.convert("RGB")).getbbox() is None
            rid = uuid.uuid4()
            await conn.start_desktop_recording(rid)
            await asyncio.sleep(0.5)
            video, thumb = split_recording(*await conn.stop_desktop_recording(rid))
            assert video[4:8] == b"ftyp" and thumb is not None
            await conn.start_desktop_recording(uuid.uuid4())  # left running on purpose
            await viewer.close()
        assert _processes_mentioning(str(logs)), "Xvnc and ffmpeg run under the log dir"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err, err.decode()
    assert not _processes_mentioning(str(logs))  # Xvnc and the running ffmpeg are gone
    assert not list((logs / "desktop").glob("session-*"))
