"""Desktop recordings (agent-api.md §11.3): ffmpeg captures the desktop into H.264 MP4.

Theory of operation
-------------------
Each recording id owns a directory under the recordings root (inside the agent's data
directory) and moves through three states:

``RECORDING``
    from ``start``: an ffmpeg (:func:`ffmpeg_command`) grabs the Xvnc display with
    ``x11grab`` and encodes into ``video.mp4``. ``start`` answers once ffmpeg has opened the
    display and created its output, or fails with 500 ``Failed to start recording.``. Another
    ``start`` of the same id leaves it running (idempotent); several ids record at once.
``FINALIZING``
    from the first ``stop`` (or the idle watchdog, or the agent stopping): a JPEG thumbnail of
    the screen is taken, and ffmpeg is asked to end with ``q`` on its stdin, which makes it
    flush the encoder and write the index (``+faststart`` moves it to the front). This runs
    as its own task with its own :data:`STOP_TIMEOUT`, detached from the request: a caller
    hanging up does not cut it short. Past the timeout ffmpeg is killed and the file is
    unusable (500 ``Recording is corrupted.``).
``STOPPED``
    the outcome is kept: every later ``stop`` serves the same MP4 and thumbnail again;
    a ``start`` discards them and records afresh under the same id.

Bounds (ours; the spec sets only the sizes): at most :data:`MAX_RECORDINGS` recordings are
kept (starting another evicts the oldest stopped one, or fails if all are recording); ffmpeg
ends itself after :data:`MAX_DURATION` or once the file passes the 100 MiB limit by 1 MiB
(``stop`` then answers 413); a recording ends after :data:`IDLE_TIMEOUT` without desktop
activity (actions, and key/pointer/clipboard input from a VNC viewer); stopped recordings are
deleted :data:`RETENTION` after they stopped; everything is deleted when the agent stops.
"""

from __future__ import annotations

import asyncio
import enum
import io
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field

from PIL import Image

from agentconn.agent.api.router import ApiError
from agentconn.agent.desktop.display import XDisplay, XError
from agentconn.agent.desktop.session import DesktopSession, DesktopUnavailable
from agentconn.proto.desktop import MAX_RECORDING_SIZE, MAX_THUMBNAIL_SIZE

__all__ = ["FRAME_RATE", "IDLE_TIMEOUT", "MAX_DURATION", "MAX_RECORDINGS", "RETENTION",
           "STOP_TIMEOUT", "Artifact", "Recording", "RecordingManager", "RecordingState",
           "ffmpeg_command"]

_log = logging.getLogger("agentconn.agent.desktop.recording")

#: §11.3: how long finalising may take (detached from the request).
STOP_TIMEOUT = 30.0
#: How long ffmpeg may take to open the display and create its output.
START_TIMEOUT = 10.0
#: Recordings kept at once (running or stopped).
MAX_RECORDINGS = 8
#: ffmpeg ends a recording by itself after this many seconds.
MAX_DURATION = 3600
#: A running recording ends after this long without desktop activity (seconds).
IDLE_TIMEOUT = 600.0
#: Stopped recordings are deleted this long after they stopped (seconds).
RETENTION = 3600.0
#: Frames per second captured.
FRAME_RATE = 10
#: The thumbnail fits in this box (pixels), aspect kept.
THUMBNAIL_BOX = (640, 360)
#: How long the agent waits for recorders to end when it stops (then kills them).
SHUTDOWN_TIMEOUT = 5.0


class RecordingState(enum.Enum):
    RECORDING = "recording"
    FINALIZING = "finalizing"
    STOPPED = "stopped"


class _Outcome(enum.Enum):
    OK = "ok"
    CORRUPTED = "corrupted"  # ffmpeg killed: the MP4 has no index
    FAILED = "failed"        # ffmpeg failed, or no output


def ffmpeg_command(ffmpeg: str, *, display: str, geometry: tuple[int, int],
                   output: str) -> list[str]:
    """The exact ffmpeg command line of a recording."""
    width, height = geometry
    cmd = [
        ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error",
        # x11grab's format is known up front: probing it would only delay the start ~1.7 s
        "-probesize", "32", "-analyzeduration", "0",
        "-f", "x11grab", "-draw_mouse", "1", "-framerate", str(FRAME_RATE),
        "-video_size", f"{width}x{height}", "-i", display,
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
    ]
    if width % 2 or height % 2:  # 4:2:0 chroma needs even dimensions
        cmd += ["-vf", "crop=trunc(iw/2)*2:trunc(ih/2)*2"]
    cmd += [
        "-movflags", "+faststart",                 # index first: playable while downloading
        "-t", str(MAX_DURATION),
        "-fs", str(MAX_RECORDING_SIZE + (1 << 20)),  # just past the limit: stop answers 413
        "-y", output,
    ]
    return cmd


@dataclass(frozen=True, slots=True)
class Artifact:
    """A finalised recording: the MP4's path and size, and the thumbnail (``None`` if none
    or over :data:`~agentconn.proto.desktop.MAX_THUMBNAIL_SIZE`)."""

    video_path: str
    video_size: int
    thumbnail: bytes | None


@dataclass(eq=False)
class Recording:
    """One recording id's state (see the module doc)."""

    id: uuid.UUID
    dir: str
    proc: asyncio.subprocess.Process
    started_at: float = field(default_factory=time.monotonic)
    state: RecordingState = RecordingState.RECORDING
    stopped_at: float | None = None
    outcome: _Outcome | None = None
    detail: str = ""
    thumbnail: bytes | None = None
    finalizer: asyncio.Task[None] | None = None

    @property
    def video_path(self) -> str:
        return os.path.join(self.dir, "video.mp4")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "ffmpeg.log")


def _jpeg_thumbnail(pixels: bytes, mode: str, size: tuple[int, int]) -> bytes:
    image = Image.frombuffer("RGB", size, pixels, "raw", mode, 0, 1)
    image.thumbnail(THUMBNAIL_BOX, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def _log_tail(path: str, limit: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return " | ".join(ln.strip() for ln in f.read().decode("utf-8", "replace")
                              .splitlines() if ln.strip())
    except OSError:
        return ""


class RecordingManager:
    """The recordings of one desktop, kept under ``root`` (see the module doc)."""

    def __init__(self, session: DesktopSession, root: str) -> None:
        self.session = session
        self.root = root
        self.recordings: dict[uuid.UUID, Recording] = {}
        self.closing = False
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    # -- start ----------------------------------------------------------------------------

    async def start(self, rid: uuid.UUID) -> None:
        """Start recording ``rid`` (idempotent while it records; restarts a stopped one).

        Raises 500 ``Failed to start recording.`` as :class:`ApiError`.
        """
        async with self._lock:
            self._expire()
            rec = self.recordings.get(rid)
            if rec is not None:
                if rec.state is RecordingState.RECORDING and rec.proc.returncode is None:
                    return
                if rec.finalizer is not None:
                    await asyncio.shield(rec.finalizer)
                self._discard(rec)
            if len(self.recordings) >= MAX_RECORDINGS:
                stopped = [r for r in self.recordings.values()
                           if r.state is RecordingState.STOPPED]
                if not stopped:
                    raise ApiError(500, "Failed to start recording.",
                                   f"{MAX_RECORDINGS} recordings are already running")
                self._discard(min(stopped, key=lambda r: r.stopped_at or 0.0))
            try:
                self.recordings[rid] = await self._spawn(rid)
            except (OSError, RuntimeError) as e:
                raise ApiError(500, "Failed to start recording.", str(e)) from e
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch())

    async def _spawn(self, rid: uuid.UUID) -> Recording:
        ffmpeg = shutil.which("ffmpeg", path=self.session.child_environ().get("PATH"))
        if ffmpeg is None:
            raise RuntimeError("ffmpeg not found on PATH (Debian package ffmpeg)")
        directory = os.path.join(self.root, str(rid))
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, mode=0o700)
        output = os.path.join(directory, "video.mp4")
        log_path = os.path.join(directory, "ffmpeg.log")
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - creating a local file
            proc = await asyncio.create_subprocess_exec(
                *ffmpeg_command(ffmpeg, display=self.session.display,
                                geometry=self.session.geometry, output=output),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=log, env=self.session.child_environ(), start_new_session=True)
        rec = Recording(rid, directory, proc)
        # ffmpeg opens its inputs before its outputs: once video.mp4 exists, x11grab is in.
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(output):
            if proc.returncode is not None or time.monotonic() > deadline:
                await _kill(proc)
                await asyncio.sleep(0.05)
                detail = _log_tail(rec.log_path) or f"ffmpeg exit status {proc.returncode}"
                shutil.rmtree(directory, ignore_errors=True)
                raise RuntimeError(f"ffmpeg did not start recording: {detail}")
            await asyncio.sleep(0.02)
        _log.info("recording %s started (ffmpeg pid %d, display %s)", rid, proc.pid,
                  self.session.display)
        return rec

    # -- stop -----------------------------------------------------------------------------

    async def stop(self, rid: uuid.UUID) -> Artifact:
        """Finalise ``rid`` (once; later calls reuse the outcome) and return its files.

        Raises :class:`ApiError`: 404 unknown id, 500 corrupted or failed, 413 too large.
        """
        async with self._lock:
            self._expire()
            rec = self.recordings.get(rid)
            if rec is None:
                raise ApiError(404, "Recording not found.")
            finalizer = self._finalize(rec)
        # Detached: the request hanging up must not interrupt finalising.
        await asyncio.shield(finalizer)
        if rec.outcome is _Outcome.CORRUPTED:
            raise ApiError(500, "Recording is corrupted.", rec.detail)
        if rec.outcome is not _Outcome.OK:
            raise ApiError(500, "Failed to stop recording.", rec.detail)
        try:
            size = os.path.getsize(rec.video_path)
        except OSError as e:
            raise ApiError(500, "Failed to stop recording.", str(e)) from e
        if size > MAX_RECORDING_SIZE:
            raise ApiError(413, "Recording file exceeds maximum allowed size.",
                           f"{size} bytes > {MAX_RECORDING_SIZE}")
        thumbnail = rec.thumbnail
        if thumbnail is not None and len(thumbnail) > MAX_THUMBNAIL_SIZE:
            thumbnail = None
        return Artifact(rec.video_path, size, thumbnail)

    def _finalize(self, rec: Recording) -> asyncio.Task[None]:
        if rec.finalizer is None:
            rec.state = RecordingState.FINALIZING
            rec.finalizer = asyncio.create_task(self._run_finalize(rec, STOP_TIMEOUT))
        return rec.finalizer

    async def _run_finalize(self, rec: Recording, timeout: float) -> None:
        try:
            rec.thumbnail = await self._thumbnail()
            await self._end_ffmpeg(rec, timeout)
        finally:
            if rec.outcome is None:
                rec.outcome, rec.detail = _Outcome.FAILED, "finalising was interrupted"
            rec.state = RecordingState.STOPPED
            rec.stopped_at = time.monotonic()
            _log.info("recording %s stopped: %s %s", rec.id, rec.outcome.value, rec.detail)

    async def _thumbnail(self) -> bytes | None:
        if not self.session.running:
            return None
        try:
            pixels, mode = await self.session.call(XDisplay.capture)
            return await asyncio.to_thread(_jpeg_thumbnail, pixels, mode, self.session.geometry)
        except (XError, DesktopUnavailable, OSError, ValueError) as e:
            _log.warning("recording thumbnail failed: %s", e)
            return None

    async def _end_ffmpeg(self, rec: Recording, timeout: float) -> None:
        proc = rec.proc
        if proc.returncode is None and proc.stdin is not None:
            try:
                proc.stdin.write(b"q")  # ffmpeg's "quit": flush, write the index, exit 0
                await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await _kill(proc)
            rec.outcome = _Outcome.CORRUPTED
            rec.detail = f"ffmpeg did not finish within {timeout:g} s and was killed"
            return
        code = proc.returncode
        if code == 0 and os.path.exists(rec.video_path) and os.path.getsize(rec.video_path):
            rec.outcome = _Outcome.OK
        elif code is not None and code < 0:
            rec.outcome = _Outcome.CORRUPTED
            rec.detail = f"ffmpeg was killed by signal {-code}"
        else:
            rec.outcome = _Outcome.FAILED
            rec.detail = _log_tail(rec.log_path) or f"ffmpeg exit status {code}, no video"

    # -- bounds ---------------------------------------------------------------------------

    def _discard(self, rec: Recording) -> None:
        self.recordings.pop(rec.id, None)
        if rec.proc.returncode is None:
            try:
                os.killpg(rec.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # An MP4 still being streamed stays readable: its response holds the file open.
        shutil.rmtree(rec.dir, ignore_errors=True)

    def _expire(self) -> None:
        now = time.monotonic()
        for rec in list(self.recordings.values()):
            if rec.stopped_at is not None and now - rec.stopped_at > RETENTION:
                _log.info("recording %s expired", rec.id)
                self._discard(rec)

    async def _watch(self) -> None:
        """End recordings after :data:`IDLE_TIMEOUT` without desktop activity; expire old
        ones. Runs while any recording exists."""
        while self.recordings:
            await asyncio.sleep(min(IDLE_TIMEOUT / 4, 30.0))
            async with self._lock:
                self._expire()
                self.check_idle(time.monotonic())

    def check_idle(self, now: float) -> list[uuid.UUID]:
        """Start finalising every running recording if the desktop has had no activity
        (actions, a viewer's input) for :data:`IDLE_TIMEOUT` at ``now`` (``time.monotonic()``
        seconds); returns their ids. The watchdog calls it periodically."""
        if now - self.session.last_activity <= IDLE_TIMEOUT:
            return []
        stopped = []
        for rec in list(self.recordings.values()):
            if rec.state is RecordingState.RECORDING:
                _log.info("recording %s: desktop idle for %.0f s, stopping", rec.id,
                          now - self.session.last_activity)
                self._finalize(rec)
                stopped.append(rec.id)
        return stopped

    async def close(self) -> None:
        """Stop accepting work, end every recorder, delete every recording."""
        self.closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        recs = list(self.recordings.values())
        for rec in recs:
            if rec.finalizer is None and rec.proc.returncode is None:
                rec.state = RecordingState.FINALIZING
                rec.finalizer = asyncio.create_task(self._end_ffmpeg(rec, SHUTDOWN_TIMEOUT))
        await asyncio.gather(*(r.finalizer for r in recs if r.finalizer is not None),
                             return_exceptions=True)
        for rec in recs:
            await _kill(rec.proc)
            self._discard(rec)
        shutil.rmtree(self.root, ignore_errors=True)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc``'s process group and reap it."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    await proc.wait()
