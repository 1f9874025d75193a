"""The userspace TCP engine (RFC 9293) in Cython, split by concern and joined by ``cimport``.

``wire`` (segment view: parse, emit, sequence arithmetic), ``storage`` (send/receive rings,
out-of-order assembler, SACK scoreboard), ``congestion`` (RTT/RTO, CUBIC), ``conn`` (the
connection state machine) and ``stack`` (connection table, listeners, demultiplexer, output,
timers). Python uses the names re-exported here.
"""
from _wgcore.tcpip.conn import STATE_NAMES, TcpConn, TcpEvent, TcpState
from _wgcore.tcpip.stack import TcpListener, TcpStack
from _wgcore.tcpip.wire import DROP_NAMES

__all__ = [
    "DROP_NAMES",
    "STATE_NAMES",
    "TcpConn",
    "TcpEvent",
    "TcpListener",
    "TcpStack",
    "TcpState",
]
