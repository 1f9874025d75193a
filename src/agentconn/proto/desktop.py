"""Desktop (computer use) bodies: actions and recordings (agent-api.md §11)."""

# key() is this package's dataclass field specifier, not a default
from __future__ import annotations

import enum
from dataclasses import dataclass

from agentconn.proto._codec import Model, Omit, key

__all__ = [
    "DesktopAction",
    "DesktopActionRequest",
    "DesktopActionResponse",
    "DesktopRecordingRequest",
    "ScrollDirection",
]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class DesktopRecordingRequest(Model):
    """Body of recording start/stop. ``recording_id`` stays a string: the agent has its own
    messages for empty (``Missing recording_id.``) and non-UUID values."""

    recording_id: str = key("recording_id", default="")
