"""Desktop actions (agent-api.md §11.2): check a request, map its coordinates, drive X.

:func:`check_action` turns a decoded :class:`~agentconn.proto.desktop.DesktopActionRequest`
into a :class:`Plan` or raises the table's 400 (missing ``text``/``coordinate``, bad scroll
direction, unknown action). :func:`run_action` carries the plan out on the desktop's X thread
and returns the response body; a backend failure is a 500 ``<Action> failed.`` whose detail
says what went wrong (an unknown key name, a lost X connection, …).

Coordinates arrive in the caller's declared space and are mapped to native pixels with
:mod:`~agentconn.agent.desktop.geometry` (``cursor_position`` maps back). ``screenshot``
captures the native screen, scales it to the declared size and encodes a PNG off the event
loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from PIL import Image

from agentconn.agent.api.router import ApiError
from agentconn.agent.desktop.display import XDisplay, XError
from agentconn.agent.desktop.geometry import declared_size, to_declared, to_native
from agentconn.agent.desktop.keys import KeyNameError, parse_key_sequence, text_keysyms
from agentconn.agent.desktop.session import DesktopSession, DesktopUnavailable
from agentconn.proto.desktop import (
    DesktopAction,
    DesktopActionRequest,
    DesktopActionResponse,
    ScrollDirection,
)

__all__ = ["DEFAULT_HOLD_MS", "DEFAULT_SCROLL_AMOUNT", "MAX_SCROLL_AMOUNT", "Plan",
           "check_action", "failure_message", "png_screenshot", "run_action"]

#: §11.2 defaults: ``hold_key`` duration (ms) and ``scroll`` wheel clicks.
DEFAULT_HOLD_MS = 1000
DEFAULT_SCROLL_AMOUNT = 3
#: Wheel clicks per ``scroll`` action at most (ours: a runaway amount must not stall X).
MAX_SCROLL_AMOUNT = 1000
#: Largest screenshot side we scale to, in pixels (ours: a huge declared size must not make
#: the agent allocate gigabytes).
MAX_SCREENSHOT_SIDE = 16384

_TEXT_ACTIONS = {DesktopAction.KEY, DesktopAction.KEY_DOWN, DesktopAction.KEY_UP,
                 DesktopAction.HOLD_KEY, DesktopAction.TYPE}
_POINT_ACTIONS = {DesktopAction.MOUSE_MOVE, DesktopAction.LEFT_CLICK, DesktopAction.RIGHT_CLICK,
                  DesktopAction.MIDDLE_CLICK, DesktopAction.DOUBLE_CLICK,
                  DesktopAction.TRIPLE_CLICK, DesktopAction.SCROLL}
# X core buttons: 1 left, 2 middle, 3 right; wheel 4 up, 5 down, 6 left, 7 right.
_CLICKS = {DesktopAction.LEFT_CLICK: (1, 1), DesktopAction.RIGHT_CLICK: (3, 1),
           DesktopAction.MIDDLE_CLICK: (2, 1), DesktopAction.DOUBLE_CLICK: (1, 2),
           DesktopAction.TRIPLE_CLICK: (1, 3)}
_WHEEL = {ScrollDirection.UP: 4, ScrollDirection.DOWN: 5, ScrollDirection.LEFT: 6,
          ScrollDirection.RIGHT: 7}


@dataclass(frozen=True, slots=True)
class Plan:
    """A checked action: native coordinates resolved, defaults applied."""

    action: DesktopAction
    declared: tuple[int, int]
    native: tuple[int, int]
    point: tuple[int, int] | None = None        # native
    start: tuple[int, int] | None = None        # native (drag start)
    text: str = ""
    hold_seconds: float = DEFAULT_HOLD_MS / 1000
    wheel_button: int = 5
    wheel_clicks: int = DEFAULT_SCROLL_AMOUNT


def failure_message(action: str) -> str:
    """The 500 message for a failed action: ``left_click`` → ``Left click failed.``."""
    words = action.replace("_", " ")
    return f"{words[:1].upper()}{words[1:]} failed."


def check_action(req: DesktopActionRequest, native: tuple[int, int]) -> Plan:
    """Validate ``req`` against the §11.2 table; raises the table's 400 :class:`ApiError`."""
    action = req.action
    if not isinstance(action, DesktopAction):
        raise ApiError(400, f"Unknown action: {action}")
    declared = declared_size(native, req.scaled_width, req.scaled_height)
    name = action.value
    if action in _TEXT_ACTIONS and not req.text:
        raise ApiError(400, f'Missing "text" for {name} action.')
    if action in _POINT_ACTIONS and req.coordinate is None:
        raise ApiError(400, f'Missing "coordinate" for {name} action.')
    if action is DesktopAction.LEFT_CLICK_DRAG and (req.coordinate is None
                                                    or req.start_coordinate is None):
        raise ApiError(400, 'Missing "coordinate" or "start_coordinate" for left_click_drag.')
    wheel = 5
    if action is DesktopAction.SCROLL:
        direction = req.scroll_direction
        if direction is None:
            direction = ScrollDirection.DOWN
        elif not isinstance(direction, ScrollDirection):
            raise ApiError(400, f"Invalid scroll direction: {direction}")
        wheel = _WHEEL[direction]
    amount = DEFAULT_SCROLL_AMOUNT if req.scroll_amount is None else req.scroll_amount
    hold_ms = DEFAULT_HOLD_MS if req.duration is None else max(0, req.duration)
    return Plan(
        action=action, declared=declared, native=native,
        point=to_native(req.coordinate, declared, native) if req.coordinate else None,
        start=(to_native(req.start_coordinate, declared, native)
               if req.start_coordinate else None),
        text=req.text or "", hold_seconds=hold_ms / 1000, wheel_button=wheel,
        wheel_clicks=min(max(amount, 0), MAX_SCROLL_AMOUNT))


def png_screenshot(pixels: bytes, mode: str, native: tuple[int, int],
                   size: tuple[int, int]) -> bytes:
    """PNG of the captured screen ``pixels`` scaled to ``size`` (CPU-bound: run in a thread)."""
    image = Image.frombuffer("RGB", native, pixels, "raw", mode, 0, 1)
    if size != native:
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


async def _screenshot(session: DesktopSession, plan: Plan) -> DesktopActionResponse:
    if max(plan.declared) > MAX_SCREENSHOT_SIDE:
        raise ApiError(500, failure_message(plan.action.value),
                       f"declared size {plan.declared[0]}x{plan.declared[1]} is larger than "
                       f"{MAX_SCREENSHOT_SIDE} pixels on a side")
    pixels, mode = await session.call(XDisplay.capture)
    png = await asyncio.to_thread(png_screenshot, pixels, mode, plan.native, plan.declared)
    return DesktopActionResponse(
        output="screenshot", screenshot_data=base64.b64encode(png).decode("ascii"),
        screenshot_width=plan.declared[0], screenshot_height=plan.declared[1])


async def _hold_key(session: DesktopSession, combos: list[list[int]], seconds: float,
                    gone: Callable[[], Awaitable[None]]) -> None:
    for combo in combos:
        await session.call(XDisplay.key, combo, press=True, release=False)
    try:
        # Hold for the duration, or until the caller hangs up (Go's request context).
        waiter = asyncio.ensure_future(gone())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), seconds)
        except TimeoutError:
            pass
        finally:
            waiter.cancel()
    finally:
        # Released even when the request is cancelled (a stuck key would haunt the desktop).
        release = asyncio.ensure_future(_release(session, combos))
        await asyncio.shield(release)


async def _release(session: DesktopSession, combos: list[list[int]]) -> None:
    for combo in reversed(combos):
        await session.call(XDisplay.key, combo, press=False, release=True)
    await session.call(XDisplay.restore_keycodes)


async def _perform(session: DesktopSession, plan: Plan,
                   gone: Callable[[], Awaitable[None]]) -> DesktopActionResponse:
    a = plan.action
    performed = DesktopActionResponse(output=f"{a.value} action performed")
    if a is DesktopAction.SCREENSHOT:
        return await _screenshot(session, plan)
    if a is DesktopAction.CURSOR_POSITION:
        x, y = to_declared(await session.call(XDisplay.pointer), plan.declared, plan.native)
        return DesktopActionResponse(output=f"x={x},y={y}")
    if a in (DesktopAction.KEY, DesktopAction.KEY_DOWN, DesktopAction.KEY_UP):
        press, release = a is not DesktopAction.KEY_UP, a is not DesktopAction.KEY_DOWN
        combos = parse_key_sequence(plan.text)
        for combo in combos if press else reversed(combos):
            await session.call(XDisplay.key, combo, press=press, release=release)
        if release:
            await session.call(XDisplay.restore_keycodes)
        return performed
    if a is DesktopAction.HOLD_KEY:
        await _hold_key(session, parse_key_sequence(plan.text), plan.hold_seconds, gone)
        return performed
    if a is DesktopAction.TYPE:
        await session.call(XDisplay.type_keysyms, text_keysyms(plan.text))
        await session.call(XDisplay.restore_keycodes)
        return performed
    if a is DesktopAction.LEFT_CLICK_DRAG:
        assert plan.start is not None and plan.point is not None
        await session.call(XDisplay.drag, plan.start, plan.point)
        return performed
    if a in (DesktopAction.LEFT_MOUSE_DOWN, DesktopAction.LEFT_MOUSE_UP):
        down = a is DesktopAction.LEFT_MOUSE_DOWN
        await session.call(XDisplay.button, 1, press=down, release=not down)
        return performed
    assert plan.point is not None  # every remaining action needs a coordinate
    await session.call(XDisplay.move, *plan.point)
    if a in _CLICKS:
        button, count = _CLICKS[a]
        await session.call(XDisplay.button, button, count=count)
    elif a is DesktopAction.SCROLL and plan.wheel_clicks:
        await session.call(XDisplay.button, plan.wheel_button, count=plan.wheel_clicks)
    return performed


async def run_action(session: DesktopSession, plan: Plan,
                     gone: Callable[[], Awaitable[None]]) -> DesktopActionResponse:
    """Carry out ``plan`` on the running desktop; ``gone()`` returns when the caller hangs up
    (``hold_key`` then releases early). Backend failures raise 500 :class:`ApiError`."""
    session.touch()
    try:
        return await _perform(session, plan, gone)
    except (XError, KeyNameError, DesktopUnavailable) as e:
        raise ApiError(500, failure_message(plan.action.value), str(e)) from e
