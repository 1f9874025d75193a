"""The client side of the agent API: :class:`AgentConn` and :func:`connect`."""
from __future__ import annotations

from .conn import AgentApiError, AgentConn, FileStream, ReadFileLinesLimits, SkipClose, connect

__all__ = ["AgentApiError", "AgentConn", "FileStream", "ReadFileLinesLimits", "SkipClose", "connect"]
