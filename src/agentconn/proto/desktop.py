"""Desktop (computer use) bodies: actions and recordings (agent-api.md §11).

Besides the JSON models, the stop-recording answer's ``multipart/mixed`` framing lives here,
once for both roles: the agent writes it with :func:`recording_part_head` and
:func:`recording_close`, the client takes it apart with :func:`split_recording`.
"""

# key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import base64
import binascii
import enum
import os
from dataclasses import dataclass

from agentconn.proto._codec import Model, Omit, key
from agentconn.proto.errors import ProtocolError

__all__ = [
    "MAX_RECORDING_SIZE",
    "MAX_THUMBNAIL_SIZE",
    "RECORDING_THUMBNAIL_TYPE",
    "RECORDING_VIDEO_TYPE",
    "DesktopAction",
    "DesktopActionRequest",
    "DesktopActionResponse",
    "DesktopRecordingRequest",
    "ScrollDirection",
    "new_boundary",
    "recording_close",
    "recording_content_type",
    "recording_part_head",
    "split_recording",
]

#: §11.3 ``MaxRecordingSize``: a larger recording is refused with 413.
MAX_RECORDING_SIZE = 100 << 20
#: §11.3 ``MaxThumbnailSize``: a larger thumbnail is silently left out.
MAX_THUMBNAIL_SIZE = 10 << 20
#: §11.3: the Content-Type of part 1 (the video, always present) and part 2 (optional).
RECORDING_VIDEO_TYPE = "video/mp4"
RECORDING_THUMBNAIL_TYPE = "image/jpeg"


class DesktopAction(str, enum.Enum):
    """``DesktopActionRequest.action``."""

    KEY = "key"
    KEY_DOWN = "key_down"
    KEY_UP = "key_up"
    HOLD_KEY = "hold_key"
    TYPE = "type"
    CURSOR_POSITION = "cursor_position"
    MOUSE_MOVE = "mouse_move"
    LEFT_CLICK = "left_click"
    RIGHT_CLICK = "right_click"
    MIDDLE_CLICK = "middle_click"
    DOUBLE_CLICK = "double_click"
    TRIPLE_CLICK = "triple_click"
    LEFT_CLICK_DRAG = "left_click_drag"
    LEFT_MOUSE_DOWN = "left_mouse_down"
    LEFT_MOUSE_UP = "left_mouse_up"
    SCROLL = "scroll"
    SCREENSHOT = "screenshot"


class ScrollDirection(str, enum.Enum):
    """``scroll_direction`` (default ``down``)."""

    UP = "up"
    DOWN = "down"
    LEFT = "left"
    RIGHT = "right"


@dataclass(frozen=True, slots=True, kw_only=True)
class DesktopActionRequest(Model):
    """``POST /api/v0/desktop/action`` body; unset fields omitted.

    ``action`` and ``scroll_direction`` are open enums so the agent can answer
    ``Unknown action: <a>`` / ``Invalid scroll direction: <d>``. ``None`` means "not given"
    (``duration`` then defaults to 1000 ms, ``scroll_amount`` to 3)."""

    action: str = key("action", default="", enum=DesktopAction)
    coordinate: tuple[int, int] | None = key("coordinate", omit=Omit.NONE, default=None)
    start_coordinate: tuple[int, int] | None = key("start_coordinate", omit=Omit.NONE, default=None)
    text: str | None = key("text", omit=Omit.NONE, default=None)
    duration: int | None = key("duration", omit=Omit.NONE, default=None)
    scroll_amount: int | None = key("scroll_amount", omit=Omit.NONE, default=None)
    scroll_direction: str | None = key(
        "scroll_direction", omit=Omit.NONE, default=None, enum=ScrollDirection
    )
    scaled_width: int | None = key("scaled_width", omit=Omit.NONE, default=None)
    scaled_height: int | None = key("scaled_height", omit=Omit.NONE, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class DesktopActionResponse(Model):
    """desktop action 200 body; empty fields omitted."""

    output: str = key("output", omit=Omit.EMPTY, default="")
    screenshot_data: str = key("screenshot_data", omit=Omit.EMPTY, default="")
    screenshot_width: int = key("screenshot_width", omit=Omit.EMPTY, default=0)
    screenshot_height: int = key("screenshot_height", omit=Omit.EMPTY, default=0)

    @property
    def screenshot(self) -> bytes | None:
        """The screenshot's PNG bytes (``screenshot_data`` decoded), ``None`` if there is none.

        Raises :class:`~agentconn.proto.errors.ProtocolError` if the data is not base64."""
        if not self.screenshot_data:
            return None
        try:
            return base64.b64decode(self.screenshot_data, validate=True)
        except binascii.Error as e:
            raise ProtocolError(f"screenshot_data is not base64: {e}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class DesktopRecordingRequest(Model):
    """Body of recording start/stop. ``recording_id`` stays a string: the agent has its own
    messages for empty (``Missing recording_id.``) and non-UUID values."""

    recording_id: str = key("recording_id", default="")


# --------------------------------------------------------------------------------------------
# The stop-recording body: multipart/mixed (RFC 2046 §5.1), as Go's mime/multipart writes it.


def new_boundary() -> str:
    """A random boundary: 30 random bytes in hex, like Go's ``multipart.Writer``."""
    return os.urandom(30).hex()


def recording_content_type(boundary: str) -> str:
    """The stop response's Content-Type for ``boundary``."""
    return f"multipart/mixed; boundary={boundary}"


def recording_part_head(boundary: str, content_type: str, *, first: bool) -> bytes:
    """The delimiter and headers that open one part (its body follows directly).

    RFC 2046 §5.1.1: a delimiter is CRLF, ``--`` and the boundary; the first one may omit the
    CRLF (Go's writer does). Each part carries only its Content-Type header (§11.3)."""
    lead = b"" if first else b"\r\n"
    return lead + f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")


def recording_close(boundary: str) -> bytes:
    """The closing delimiter that ends the body (RFC 2046 §5.1.1)."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def _boundary_of(content_type: str) -> str:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/mixed":
        raise ProtocolError(f"recording: expected multipart/mixed, got {content_type!r}")
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value:
                return value
    raise ProtocolError(f"recording: no boundary in {content_type!r}")


def split_recording(body: bytes, content_type: str) -> tuple[bytes, bytes | None]:
    """Take a stop-recording answer apart: (MP4 bytes, JPEG thumbnail bytes or ``None``).

    ``body`` and ``content_type`` are what ``StopDesktopRecording`` returns. Raises
    :class:`~agentconn.proto.errors.ProtocolError` when the body is not the §11.3 framing: no
    boundary, no video part, or a stream truncated before its closing delimiter (the agent
    cuts the stream when it fails after the 200).
    """
    dash = b"--" + _boundary_of(content_type).encode("latin-1")
    view = memoryview(body)
    if body.startswith(dash):
        pos = 0
    else:
        at = body.find(b"\r\n" + dash)
        if at < 0:
            raise ProtocolError("recording: no multipart delimiter in the body")
        pos = at + 2  # a preamble before the first delimiter is ignored (RFC 2046 §5.1.1)
    parts: dict[str, bytes] = {}
    while True:
        pos += len(dash)
        if body[pos:pos + 2] == b"--":
            break  # the closing delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise ProtocolError("recording: malformed multipart delimiter line")
        head_end = body.find(b"\r\n\r\n", line_end)
        if body[line_end:line_end + 4] == b"\r\n\r\n" or head_end < 0:
            head_end = line_end  # no headers at all
        content_type_of_part = ""
        for line in body[line_end + 2:head_end].split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-type":
                content_type_of_part = value.strip().lower()
        start = head_end + 4
        end = body.find(b"\r\n" + dash, start)
        if end < 0:
            raise ProtocolError("recording: the stream ends before its closing delimiter "
                                "(the agent failed while sending it)")
        parts.setdefault(content_type_of_part, bytes(view[start:end]))
        pos = end + 2
    video = parts.get(RECORDING_VIDEO_TYPE)
    if video is None:
        raise ProtocolError(f"recording: no {RECORDING_VIDEO_TYPE} part "
                            f"(parts: {sorted(parts) or 'none'})")
    return video, parts.get(RECORDING_THUMBNAIL_TYPE)
