"""The agent's desktop for computer use (agent-api.md §11): an Xvnc server started on first use,
its VNC stream over a websocket, input and screenshots through X, recordings through ffmpeg.

Modules: :mod:`.session` (Xvnc lifecycle and the X thread), :mod:`.display` (the python-xlib
connection: XTEST input, GetImage pixels), :mod:`.keys` (xdotool key syntax), :mod:`.geometry`
(declared ↔ native coordinates), :mod:`.actions`, :mod:`.bridge` (websocket ↔ VNC socket),
:mod:`.recording` and :mod:`.api` (the HTTP handlers).
"""

from __future__ import annotations

from agentconn.agent.desktop.api import DesktopApi
from agentconn.agent.desktop.session import DesktopSession, DesktopUnavailable

__all__ = ["DesktopApi", "DesktopSession", "DesktopUnavailable"]
