"""Exceptions of the coordinator wire stack: yamux, DRPC and the tailnet protobuf codec.

All derive from :class:`agentconn.errors.AgentConnError`. The h11 split of STYLE §7 applies
inside each family: ``*ProtocolError`` means the peer broke the protocol (the sans-IO cores
report it as an event and count it; the asyncio adapters raise it to the caller), the plain
family class covers local misuse and state errors (writing to a closed stream, opening a
stream after the peer's GoAway).
"""

from __future__ import annotations

from ..errors import AgentConnError

__all__ = [
    "DrpcClosedError",
    "DrpcError",
    "DrpcProtocolError",
    "ProtobufError",
    "YamuxError",
    "YamuxGoAway",
    "YamuxKeepaliveTimeout",
    "YamuxProtocolError",
    "YamuxSessionClosed",
    "YamuxStreamClosed",
    "YamuxStreamReset",
]


class YamuxError(AgentConnError):
    """A yamux session or stream cannot do what was asked."""


class YamuxProtocolError(YamuxError):
    """The peer broke the yamux protocol (bad version or type, window exceeded, unexpected
    flag, duplicate stream). We answer with GoAway(1) and the session ends."""


class YamuxSessionClosed(YamuxError):
    """The session is over (transport EOF, our close, or a fatal error given as ``__cause__``)."""


class YamuxKeepaliveTimeout(YamuxSessionClosed):
    """No reply to a keepalive ping within the ping timeout (Go: ``keepalive timeout``)."""


class YamuxGoAway(YamuxSessionClosed):
    """The peer sent GoAway. ``code`` 0 = normal (it accepts no new streams), 1 = protocol
    error, 2 = internal error, anything else = unexpected."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class YamuxStreamClosed(YamuxError):
    """Writing to a stream after ``write_eof``/``close``, or using a stream that is gone."""


class YamuxStreamReset(YamuxError):
    """The stream was reset (RST) by the peer or by :meth:`abort` (Go: ``connection reset``)."""


class DrpcError(AgentConnError):
    """An RPC failed. When the remote sent an Error packet, ``code`` is its 64-bit code (0 if
    none, 12 = Unimplemented) and ``message`` its text, exactly as sent."""

    def __init__(self, message: str, *, code: int = 0, rpc: str | None = None) -> None:
        self.code = code
        self.message = message
        self.rpc = rpc
        super().__init__(f"{rpc}: {message}" if rpc else message)

    @property
    def unimplemented(self) -> bool:
        """True when the server does not know the method: code 12 or a text containing
        ``unknown rpc: `` (Coder's ``IsDRPCUnimplementedError``)."""
        return self.code == 12 or "unknown rpc: " in self.message


class DrpcProtocolError(DrpcError):
    """The peer broke the DRPC wire protocol (frame layout, id monotonicity, packet size)."""


class DrpcClosedError(DrpcError):
    """The RPC or its transport ended before the expected message arrived."""


class ProtobufError(AgentConnError, ValueError):
    """Bytes are not a valid encoding of the expected protobuf message (truncated, bad wire
    type, over-long varint, invalid UTF-8 in a string field, wrong field length)."""
