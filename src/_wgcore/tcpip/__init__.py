"""Temporary shim over _wgcore.tcp (replaced by the split tcpip package)."""
import enum

from _wgcore.tcp import DROP_NAMES, EVENTS, STATE_NAMES, TcpConn, TcpListener, TcpStack

TcpEvent = enum.IntFlag("TcpEvent", dict(EVENTS))
TcpState = enum.IntEnum("TcpState", {n: i for i, n in enumerate(STATE_NAMES)})

__all__ = ["DROP_NAMES", "STATE_NAMES", "TcpConn", "TcpEvent", "TcpListener", "TcpStack",
           "TcpState"]
