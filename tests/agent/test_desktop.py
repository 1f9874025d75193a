"""The desktop (agent-api.md §11) against real software: an Agent with ``desktop=True`` runs a
real Xvnc; real X clients (our event logger, xterm) receive the input; real VNC clients
(vncdotool's ``vncdo``, our RFB client) watch; ffmpeg records and ffprobe checks the MP4;
the ``agentconn vnc`` / ``agentconn desktop`` commands run as subprocesses over their own
tunnel. One desktop (640x480) serves the whole module.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import io
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from agent_pair import AGENT_ID, Pair, agent_pair
from desktop_env import (
    XLogger,
    cli_env,
    ffprobe,
    require_desktop_tools,
    second_client_config,
    vncdo,
)
from PIL import Image, ImageChops
from rfb import RfbClient

from agentconn.agent.desktop import DesktopApi
from agentconn.agent.desktop.bridge import HIGH_WATER
from agentconn.agent.desktop.recording import IDLE_TIMEOUT, RecordingState
from agentconn.client.conn import AgentApiError
from agentconn.proto.desktop import MAX_RECORDING_SIZE, MAX_THUMBNAIL_SIZE, split_recording

pytestmark = pytest.mark.asyncio(loop_scope="module")

W, H = 640, 480
SCALED = (320, 240)


@dataclass
class Desk:
    pair: Pair
    api: DesktopApi
    root: Path
    logger: XLogger
    client_conf: Path

    @property
    def conn(self) -> Any:
        return self.pair.conn

    @property
    def env(self) -> dict[str, str]:
        return self.api.session.child_environ({"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})

    async def act(self, action: str, **kw: Any) -> Any:
        return await self.conn.execute_desktop_action(action, **kw)

    async def screenshot(self, **kw: Any) -> Image.Image:
        resp = await self.act("screenshot", **kw)
        return Image.open(io.BytesIO(resp.screenshot)).convert("RGB")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def desk(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Desk]:
    require_desktop_tools()
    root = tmp_path_factory.mktemp("desktop")
    async with agent_pair(root, agent_options={"desktop": True,
                                               "desktop_geometry": (W, H)}) as p:
        api = next(m for m in p.agent._modules if isinstance(m, DesktopApi))
        await p.conn.execute_desktop_action("mouse_move", coordinate=(10, 10))  # starts it
        env = api.session.child_environ({"PATH": os.environ["PATH"]})
        logger = await XLogger.start(env)
        conf = root / "cli-client.conf"
        conf.write_text(second_client_config(p.agent))
        try:
            yield Desk(p, api, root, logger, conf)
        finally:
            await logger.close()


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


async def _capture(desk: Desk, viewer: RfbClient) -> Image.Image:
    """A full capture. The viewer first puts the pointer where it already is: TigerVNC paints
    the cursor into a viewer's framebuffer while the pointer sits somewhere other than that
    viewer's last pointer event (moved by XTEST or another viewer), and X's GetImage never
    shows the cursor."""
    x, _, y = (await desk.act("cursor_position")).output.partition(",")
    viewer.pointer(int(x[2:]), int(y[2:]))
    return await viewer.capture()


# -- screenshots and VNC -------------------------------------------------------------------


async def test_screenshot_native_and_scaled(desk: Desk) -> None:
    resp = await desk.act("screenshot")
    assert (resp.output, resp.screenshot_width, resp.screenshot_height) == ("screenshot", W, H)
    png = base64.b64decode(resp.screenshot_data)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (W, H)
    small = await desk.screenshot(scaled_width=SCALED[0], scaled_height=SCALED[1])
    assert small.size == SCALED
    # the logger's white window fills the screen
    assert small.getpixel((10, 10)) == (255, 255, 255)


async def test_two_vnc_viewers_see_what_the_screenshot_shows(desk: Desk) -> None:
    viewers = [await RfbClient.open(*await desk.conn.connect_desktop_vnc()) for _ in range(2)]
    try:
        assert all((v.width, v.height) == (W, H) and v.name == "agentconn" for v in viewers)
        captures = [await _capture(desk, v) for v in viewers]
        shot = await desk.screenshot()
        assert all(_same(c, shot) for c in captures)
        assert len(desk.api.bridges) == 2
    finally:
        for v in viewers:
            await v.close()
    async with asyncio.timeout(5):
        while desk.api.bridges:
            await asyncio.sleep(0.02)


# -- keyboard --------------------------------------------------------------------------------


def _typed(events: list[dict[str, Any]]) -> str:
    return "".join(e["char"] for e in events if e.get("type") == "key" and e["press"])


async def test_type_reaches_an_x_client_with_shift_and_borrowed_keycodes(desk: Desk) -> None:
    await desk.act("mouse_move", coordinate=(50, 50))  # keyboard focus follows the pointer
    desk.logger.take()
    text = "Hello, World! ~|{}<>?_+ 1234 aZ éü€→ ok\n"
    resp = await desk.act("type", text=text)
    assert resp.output == "type action performed"
    events = await desk.logger.settle()
    assert _typed(events) == text
    presses = [e for e in events if e.get("type") == "key"]
    assert sum(e["press"] for e in presses) == sum(not e["press"] for e in presses)


async def test_key_combos_down_up_and_hold(desk: Desk) -> None:
    await desk.act("mouse_move", coordinate=(50, 50))
    desk.logger.take()
    assert (await desk.act("key", text="ctrl+c")).output == "key action performed"
    events = await desk.logger.settle()
    keys = [(e["keysym"], e["press"]) for e in events if e.get("type") == "key"]
    assert keys == [(0xFFE3, True), (ord("c"), True), (ord("c"), False), (0xFFE3, False)]
    c_press = next(e for e in events if e.get("keysym") == ord("c") and e["press"])
    assert c_press["state"] & 4  # ControlMask while c went down

    for combo, first in [("Return", 0xFF0D), ("shift+Tab", 0xFFE1), ("alt+F4", 0xFFE9),
                         ("super", 0xFFEB), ("ctrl+shift+t", 0xFFE3)]:
        await desk.act("key", text=combo)
        events = await desk.logger.settle()
        assert events[0]["keysym"] == first and events[0]["press"], (combo, events)
        assert sum(e["press"] for e in events) == sum(not e["press"] for e in events)

    assert (await desk.act("key_down", text="shift")).output == "key_down action performed"
    await desk.act("type", text="a")
    assert (await desk.act("key_up", text="shift")).output == "key_up action performed"
    events = await desk.logger.settle()
    assert _typed(events) == "A" and events[-1] == {**events[-1], "keysym": 0xFFE1,
                                                    "press": False}

    resp = await desk.act("hold_key", text="x", duration=300)
    assert resp.output == "hold_key action performed"
    events = [e for e in await desk.logger.settle() if e.get("type") == "key"]
    assert [e["press"] for e in events] == [True, False]
    assert events[1]["time"] - events[0]["time"] >= 280  # X server timestamps, ms


async def test_hold_key_is_released_when_the_caller_hangs_up(desk: Desk) -> None:
    await desk.act("mouse_move", coordinate=(50, 50))
    desk.logger.take()
    call = asyncio.ensure_future(desk.act("hold_key", text="shift", duration=30_000))
    await desk.logger.wait_for(lambda e: e.get("keysym") == 0xFFE1 and e["press"])
    await asyncio.sleep(0.2)
    call.cancel()  # the client gives up: its connection closes
    await asyncio.gather(call, return_exceptions=True)
    released = await desk.logger.wait_for(
        lambda e: e.get("keysym") == 0xFFE1 and not e["press"], timeout=5)
    assert released
    desk.logger.take()


# -- pointer ---------------------------------------------------------------------------------


async def test_clicks_drags_and_scrolls_land_on_mapped_coordinates(desk: Desk) -> None:
    sw, sh = SCALED
    scaled = {"scaled_width": sw, "scaled_height": sh}
    desk.logger.take()

    def buttons(events: list[dict[str, Any]]) -> list[tuple[int, bool, int, int]]:
        return [(e["button"], e["press"], e["x"], e["y"]) for e in events
                if e.get("type") == "button"]

    # 320x240 declared on a 640x480 desktop: exactly 2x, every coordinate a tie, so
    # Go's math.Round sends (100, 50) to (201, 101).
    for action, button, count in [("left_click", 1, 1), ("right_click", 3, 1),
                                  ("middle_click", 2, 1), ("double_click", 1, 2),
                                  ("triple_click", 1, 3)]:
        resp = await desk.act(action, coordinate=(100, 50), **scaled)
        assert resp.output == f"{action} action performed"
        assert buttons(await desk.logger.settle()) == [(button, True, 201, 101),
                                                       (button, False, 201, 101)] * count

    resp = await desk.act("left_click_drag", start_coordinate=(10, 20), coordinate=(150, 100),
                          **scaled)
    assert resp.output == "left_click_drag action performed"
    events = await desk.logger.settle()
    assert buttons(events) == [(1, True, 21, 41), (1, False, 301, 201)]
    moves = [(e["x"], e["y"]) for e in events if e.get("type") == "motion"]
    assert len(moves) >= 3 and moves[-1] == (301, 201)  # the pointer travelled while down

    for direction, button in [("up", 4), ("down", 5), ("left", 6), ("right", 7)]:
        resp = await desk.act("scroll", coordinate=(40, 30), scroll_direction=direction,
                              scroll_amount=2, **scaled)
        assert resp.output == "scroll action performed"
        assert buttons(await desk.logger.settle()) == [(button, True, 81, 61),
                                                       (button, False, 81, 61)] * 2
    await desk.act("scroll", coordinate=(40, 30), **scaled)  # default: down, 3 clicks
    assert buttons(await desk.logger.settle()) == [(5, True, 81, 61), (5, False, 81, 61)] * 3

    await desk.act("mouse_move", coordinate=(300, 200))
    assert (await desk.act("left_mouse_down")).output == "left_mouse_down action performed"
    await desk.act("mouse_move", coordinate=(310, 210))
    assert (await desk.act("left_mouse_up")).output == "left_mouse_up action performed"
    assert buttons(await desk.logger.settle()) == [(1, True, 300, 200), (1, False, 310, 210)]


async def test_cursor_position_round_trips_through_the_inverse_mapping(desk: Desk) -> None:
    await desk.act("mouse_move", coordinate=(100, 50), scaled_width=320, scaled_height=240)
    assert (await desk.act("cursor_position")).output == "x=201,y=101"
    resp = await desk.act("cursor_position", scaled_width=320, scaled_height=240)
    assert resp.output == "x=100,y=50"
    # A non-integer ratio: 1000x700 declared on 640x480.
    await desk.act("mouse_move", coordinate=(777, 333), scaled_width=1000, scaled_height=700)
    native = (await desk.act("cursor_position")).output
    assert native == "x=497,y=228"  # round(777.5*0.64-0.5), round(333.5*480/700-0.5)
    resp = await desk.act("cursor_position", scaled_width=1000, scaled_height=700)
    assert resp.output == "x=777,y=333"
    desk.logger.take()


# -- a real application ----------------------------------------------------------------------


async def test_typing_into_xterm_lands_in_its_program(desk: Desk) -> None:
    out = desk.root / "xterm-typed.txt"
    ready = desk.root / "xterm-ready"
    xterm = await asyncio.create_subprocess_exec(
        "xterm", "-u8", "-geometry", "40x8-0-0", "-e", "sh", "-c",
        f"touch {ready}; exec cat > {out}", env=desk.env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(10):
            while not ready.exists():
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # mapped and drawn
        before = await desk.screenshot()
        await desk.act("mouse_move", coordinate=(W - 60, H - 40))  # over the xterm
        await desk.act("type", text="echo Grüße, 100% $HOME & ~€\n")
        await desk.act("key", text="ctrl+d")  # EOF: cat exits, so does xterm
        await asyncio.wait_for(xterm.wait(), 10)
        assert out.read_text(encoding="utf-8") == "echo Grüße, 100% $HOME & ~€\n"
        assert not _same(before, await desk.screenshot())  # the xterm is gone
    finally:
        if xterm.returncode is None:
            xterm.kill()
            await xterm.wait()
    desk.logger.take()


# -- errors ----------------------------------------------------------------------------------


async def _raw_action(desk: Desk, body: bytes) -> AgentApiError:
    with pytest.raises(AgentApiError) as e:
        await desk.conn._send("ExecuteDesktopAction", body=body)
    return e.value


async def test_action_errors_have_the_spec_texts(desk: Desk) -> None:
    for body in (b'{"action":5}', b"not json", b"[]", b'{"coordinate":[1]}', b""):
        err = await _raw_action(desk, body)
        assert (err.status, err.message) == (400, "Failed to decode request body."), body
    cases: list[tuple[dict[str, Any], str]] = [
        ({"action": ""}, "Unknown action: "),
        ({"action": "fly"}, "Unknown action: fly"),
        ({"action": "type"}, 'Missing "text" for type action.'),
        ({"action": "key", "text": ""}, 'Missing "text" for key action.'),
        ({"action": "hold_key"}, 'Missing "text" for hold_key action.'),
        ({"action": "left_click"}, 'Missing "coordinate" for left_click action.'),
        ({"action": "scroll"}, 'Missing "coordinate" for scroll action.'),
        ({"action": "left_click_drag", "coordinate": [1, 1]},
         'Missing "coordinate" or "start_coordinate" for left_click_drag.'),
        ({"action": "scroll", "coordinate": [1, 1], "scroll_direction": "sideways"},
         "Invalid scroll direction: sideways"),
    ]
    for body, message in cases:
        with pytest.raises(AgentApiError) as e:
            await desk.act(body.pop("action"), **{k: (tuple(v) if isinstance(v, list) else v)
                                                  for k, v in body.items()})
        assert (e.value.status, e.value.message) == (400, message)
    with pytest.raises(AgentApiError) as e:  # a runaway declared size allocates nothing
        await desk.act("screenshot", scaled_width=1_000_000_000, scaled_height=10)
    assert (e.value.status, e.value.message) == (500, "Screenshot failed.")
    assert "1000000000x10" in e.value.detail
    # A key name X does not know is a backend failure, named in the detail.
    with pytest.raises(AgentApiError) as e:
        await desk.act("key", text="ctrl+nosuchkey")
    assert (e.value.status, e.value.message) == (500, "Key failed.")
    assert "nosuchkey" in e.value.detail
    # the desktop is still fine
    assert (await desk.act("cursor_position")).output.startswith("x=")


# -- recordings ------------------------------------------------------------------------------


async def _stop(desk: Desk, rid: uuid.UUID, name: str) -> tuple[bytes, bytes | None, bytes]:
    body, ctype = await desk.conn.stop_desktop_recording(rid)
    assert ctype.startswith("multipart/mixed; boundary=")
    video, thumb = split_recording(body, ctype)
    path = desk.root / name
    path.write_bytes(video)
    return video, thumb, body


async def test_recording_produces_a_valid_mp4_and_thumbnail(desk: Desk) -> None:
    rid = uuid.uuid4()
    await desk.conn.start_desktop_recording(rid)
    rec = desk.api.recordings.recordings[rid]
    await desk.conn.start_desktop_recording(rid)  # idempotent: the same recorder goes on
    assert desk.api.recordings.recordings[rid] is rec and rec.proc.returncode is None
    for x in range(0, 400, 40):  # change the screen: a window comes and goes
        await desk.act("mouse_move", coordinate=(x, x // 2))
        await asyncio.sleep(0.1)
    video, thumb, _ = await _stop(desk, rid, "first.mp4")
    info = await ffprobe(desk.root / "first.mp4")
    stream = info["streams"][0]
    assert (stream["codec_type"], stream["codec_name"], stream["width"], stream["height"]) == (
        "video", "h264", W, H)
    assert float(info["format"]["duration"]) > 0.5
    assert video[4:8] == b"ftyp"
    # +faststart: the index (moov) comes before the media data (mdat)
    assert 0 <= video.find(b"moov") < video.find(b"mdat")
    assert thumb is not None and thumb.startswith(b"\xff\xd8")
    assert Image.open(io.BytesIO(thumb)).size == (480, 360)
    assert rec.state is RecordingState.STOPPED

    # A second stop serves the same recording again.
    video2, thumb2, _ = await _stop(desk, rid, "again.mp4")
    assert (video2, thumb2) == (video, thumb)
    # start again: a new recording under the same id
    await desk.conn.start_desktop_recording(rid)
    assert desk.api.recordings.recordings[rid] is not rec
    await asyncio.sleep(0.5)
    video3, _, _ = await _stop(desk, rid, "third.mp4")
    assert video3 != video


async def test_concurrent_recordings(desk: Desk) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    await asyncio.gather(*(desk.conn.start_desktop_recording(r) for r in ids))
    pids = {desk.api.recordings.recordings[r].proc.pid for r in ids}
    assert len(pids) == 3
    await desk.act("mouse_move", coordinate=(5, 5))
    await asyncio.sleep(0.8)
    results = await asyncio.gather(*(_stop(desk, r, f"c{i}.mp4") for i, r in enumerate(ids)))
    for i, (video, thumb, _) in enumerate(results):
        info = await ffprobe(desk.root / f"c{i}.mp4")
        assert info["streams"][0]["width"] == W and float(info["format"]["duration"]) > 0
        assert thumb is not None


async def test_recording_limits_and_a_killed_recorder(desk: Desk) -> None:
    rid = uuid.uuid4()
    await desk.conn.start_desktop_recording(rid)
    await asyncio.sleep(0.3)
    await _stop(desk, rid, "small.mp4")
    # The stored MP4 grows past MaxRecordingSize (sparse: no disk used): 413 from now on.
    os.truncate(desk.api.recordings.recordings[rid].video_path, MAX_RECORDING_SIZE + 1)
    with pytest.raises(AgentApiError) as e:
        await desk.conn.stop_desktop_recording(rid)
    assert (e.value.status, e.value.message) == (
        413, "Recording file exceeds maximum allowed size.")

    # A recorder killed mid-recording leaves an MP4 without its index.
    await desk.conn.start_desktop_recording(rid)  # restarts the stopped id
    rec = desk.api.recordings.recordings[rid]
    await asyncio.sleep(0.3)
    os.kill(rec.proc.pid, signal.SIGKILL)
    for _ in range(2):  # and says so every time
        with pytest.raises(AgentApiError) as e:
            await desk.conn.stop_desktop_recording(rid)
        assert (e.value.status, e.value.message) == (500, "Recording is corrupted.")
        assert "signal 9" in e.value.detail
    await desk.conn.start_desktop_recording(rid)  # and the id can record again
    await asyncio.sleep(0.3)
    await _stop(desk, rid, "after-kill.mp4")
    assert (await ffprobe(desk.root / "after-kill.mp4"))["streams"][0]["width"] == W


def _mime_parts(body: bytes, ctype: str) -> list[tuple[str, bytes]]:
    """The parts as Python's own MIME parser reads them: (Content-Type, payload)."""
    msg = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body,
                                   policy=email.policy.HTTP)
    assert msg.is_multipart() and not msg.defects
    return [(part.get_content_type(), part.get_payload(decode=True))
            for part in msg.iter_parts()]


async def test_thumbnail_over_10_mib_is_left_out(desk: Desk) -> None:
    """§11.3: a thumbnail larger than MaxThumbnailSize (10 MiB) is silently omitted. A stopped
    recording serves its stored thumbnail again on every stop, so the one the recorder took
    is swapped for one of exactly 10 MiB (kept), then 10 MiB + 1 byte (left out); the
    response is the agent's real multipart stream each time."""
    rid = uuid.uuid4()
    await desk.conn.start_desktop_recording(rid)
    await asyncio.sleep(0.3)
    video, thumb, _ = await _stop(desk, rid, "thumb-first.mp4")
    assert thumb is not None and len(thumb) < MAX_THUMBNAIL_SIZE
    rec = desk.api.recordings.recordings[rid]

    rec.thumbnail = b"\xff\xd8" + os.urandom(MAX_THUMBNAIL_SIZE - 4) + b"\xff\xd9"
    body, ctype = await desk.conn.stop_desktop_recording(rid)
    assert split_recording(body, ctype) == (video, rec.thumbnail)
    assert _mime_parts(body, ctype) == [("video/mp4", video), ("image/jpeg", rec.thumbnail)]

    rec.thumbnail = b"\xff\xd8" + os.urandom(MAX_THUMBNAIL_SIZE - 3) + b"\xff\xd9"
    body, ctype = await desk.conn.stop_desktop_recording(rid)
    assert split_recording(body, ctype) == (video, None)
    assert _mime_parts(body, ctype) == [("video/mp4", video)]
    assert b"image/jpeg" not in body
    boundary = ctype.partition("boundary=")[2].strip('"')
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())  # closing delimiter
    assert len(body) < len(video) + 1024  # the MP4 and framing only


@asynccontextmanager
async def _local_vnc_port(desk: Desk) -> AsyncIterator[int]:
    """A loopback port whose every connection is piped to ``connect_desktop_vnc()`` in this
    process (what ``agentconn vnc`` does in its own), for VNC clients that dial TCP."""
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(1 << 16):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        vnc_reader, vnc_writer = await desk.conn.connect_desktop_vnc()
        both = [asyncio.ensure_future(pipe(reader, vnc_writer)),
                asyncio.ensure_future(pipe(vnc_reader, writer))]
        tasks.update(both)
        await asyncio.gather(*both)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _vncdo(port: int, *commands: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        vncdo(), "-s", f"127.0.0.1::{port}", "--nocursor", *commands,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()


async def test_viewer_input_is_desktop_activity(desk: Desk) -> None:
    """vncdotool (a real VNC client) against the real Xvnc, through connect_desktop_vnc: its
    key and pointer events move the desktop's activity clock, so a running recording is not
    idle; a viewer that only watches (update requests) does not. The idle check is the
    watchdog's own, asked about a ``now`` past IDLE_TIMEOUT."""
    session, recordings = desk.api.session, desk.api.recordings
    rid = uuid.uuid4()
    await desk.conn.start_desktop_recording(rid)
    async with _local_vnc_port(desk) as port:
        before = session.last_activity
        await _vncdo(port, "capture", str(desk.root / "watch.png"))  # watching only
        assert session.last_activity == before

        mark = time.monotonic()
        await _vncdo(port, "move", "300", "200")  # a PointerEvent
        assert session.last_activity >= mark
        mark = time.monotonic()
        await _vncdo(port, "key", "shift")  # KeyEvents
        assert session.last_activity >= mark

    last = session.last_activity
    assert recordings.check_idle(last + IDLE_TIMEOUT - 1) == []
    assert recordings.recordings[rid].state is RecordingState.RECORDING
    assert recordings.check_idle(last + IDLE_TIMEOUT + 1) == [rid]  # idle: it stops
    assert recordings.recordings[rid].state is not RecordingState.RECORDING
    video, _, _ = await _stop(desk, rid, "after-idle.mp4")
    assert video[4:8] == b"ftyp"


async def test_recording_errors(desk: Desk) -> None:
    with pytest.raises(AgentApiError) as e:
        await desk.conn.stop_desktop_recording(uuid.uuid4())
    assert (e.value.status, e.value.message) == (404, "Recording not found.")
    for name in ("StartDesktopRecording", "StopDesktopRecording"):
        for body, status, message, detail in [
            (b"{", 400, "Failed to decode request body.", None),
            (b'{"recording_id": 7}', 400, "Failed to decode request body.", None),
            (b"{}", 400, "Missing recording_id.", None),
            (b'{"recording_id":"not-a-uuid"}', 400, "Invalid recording_id format.",
             "recording_id must be a valid UUID."),
        ]:
            with pytest.raises(AgentApiError) as e:
                await desk.conn._send(name, body=body)
            assert (e.value.status, e.value.message) == (status, message), (name, body)
            if detail is not None:
                assert e.value.detail == detail


# -- backpressure ------------------------------------------------------------------------------


async def test_a_stalled_viewer_does_not_make_the_agent_buffer(desk: Desk) -> None:
    reader, writer = await desk.conn.connect_desktop_vnc()
    viewer = await RfbClient.open(reader, writer)
    bridge = next(iter(desk.api.bridges))
    # The viewer keeps asking for full 640x480x4 updates (1.2 MB each) while the screen
    # changes, but reads nothing. (Requests pending at once merge in RFB, so they are paced.)
    for i in range(40):
        viewer.request(incremental=False)
        await writer.drain()
        await desk.act("left_click", coordinate=(i * 15, 200))
        await asyncio.sleep(0.03)
    await asyncio.sleep(0.5)
    stalled_bytes = bridge.to_viewer_bytes
    assert bridge.pauses >= 1  # reading Xvnc was paused ...
    assert bridge.max_buffered <= HIGH_WATER + 512 * 1024  # ... before the agent held much
    assert stalled_bytes < 40 * W * H * 4 // 2  # most updates were never produced
    await asyncio.sleep(0.5)
    assert bridge.to_viewer_bytes == stalled_bytes  # nothing moves while the viewer stalls
    # The viewer reads again: everything the agent forwarded arrives intact.
    while True:
        if viewer.bytes_received < bridge.to_viewer_bytes:
            assert await asyncio.wait_for(viewer.read_update(), 10) > 0
            continue
        await asyncio.sleep(0.3)  # anything still on its way?
        if viewer.bytes_received == bridge.to_viewer_bytes:
            break
    assert bridge.pauses >= 1 and not bridge._paused
    assert _same(await _capture(desk, viewer), await desk.screenshot())
    await viewer.close()
    desk.logger.take()


# -- the command line ------------------------------------------------------------------------


async def _cli(desk: Desk, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentconn.cli", *args, env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_agentconn_vnc_serves_real_vnc_clients(desk: Desk) -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentconn.cli", "vnc", "--config", str(desk.client_conf),
        "--agent-id", str(AGENT_ID), "-p", f"127.0.0.1:{port}", env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert f"listening on 127.0.0.1:{port}" in line and f"127.0.0.1::{port}" in line, line
        # vncdotool, a real VNC client, captures the screen through the local port (it first
        # puts the pointer on a spot of its own, so the server leaves the cursor out: see
        # _capture).
        png = desk.root / "vncdo.png"
        capture = await asyncio.create_subprocess_exec(
            vncdo(), "-s", f"127.0.0.1::{port}", "--nocursor", "move", "600", "440",
            "pause", "0.2", "capture", str(png),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(capture.communicate(), 60)
        assert capture.returncode == 0, err
        assert _same(Image.open(png).convert("RGB"), await desk.screenshot())
        # Two viewers at once through the same local port.
        viewers = [await RfbClient.open(*await asyncio.open_connection("127.0.0.1", port))
                   for _ in range(2)]
        shot = await desk.screenshot()
        for v in viewers:
            assert _same(await _capture(desk, v), shot)
        for v in viewers:
            await v.close()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert "Traceback" not in err_bytes.decode(), err_bytes.decode()


async def test_agentconn_desktop_commands(desk: Desk) -> None:
    conf = ["--config", str(desk.client_conf), "--agent-id", str(AGENT_ID)]
    shot = desk.root / "cli-shot.png"
    code, out, err = await _cli(desk, "desktop", "screenshot", *conf, "-o", str(shot),
                                "--size", "320x240")
    assert code == 0, err
    assert Image.open(shot).size == (320, 240) and "320x240" in out

    code, out, err = await _cli(desk, "desktop", "action", "mouse_move", *conf,
                                "--coordinate", "100,50", "--size", "320x240")
    assert (code, out.strip()) == (0, "mouse_move action performed"), err
    code, out, err = await _cli(desk, "desktop", "action", "cursor_position", *conf)
    assert (code, out.strip()) == (0, "x=201,y=101"), err
    code, out, err = await _cli(desk, "desktop", "action", "scroll", *conf,
                                "--scroll-direction", "sideways")
    assert code == 2 and "invalid choice" in err and "Traceback" not in err
    code, out, err = await _cli(desk, "desktop", "action", "left_click", *conf)
    assert code == 2 and 'Missing "coordinate" for left_click action.' in err
    assert "Traceback" not in err

    code, out, err = await _cli(desk, "desktop", "record", "start", *conf)
    assert code == 0, err
    rid = uuid.UUID(out.strip())
    await desk.act("mouse_move", coordinate=(200, 100))
    await asyncio.sleep(0.5)
    mp4, jpg = desk.root / "cli.mp4", desk.root / "cli.jpg"
    code, out, err = await _cli(desk, "desktop", "record", "stop", *conf, str(rid),
                                "-o", str(mp4), "--thumbnail", str(jpg))
    assert code == 0, err
    assert (await ffprobe(mp4))["streams"][0]["codec_type"] == "video"
    assert jpg.read_bytes().startswith(b"\xff\xd8")
    desk.logger.take()
