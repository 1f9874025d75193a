from enum import IntEnum, IntFlag
from typing import Any

Buffer = bytes | bytearray | memoryview

class TcpState(IntEnum):
    """RFC 9293 §3.3.2 connection states."""
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10

class TcpEvent(IntFlag):
    """What happened to a connection or listener since its last ``take_events()``."""
    CONNECTED = 1      # reached ESTABLISHED
    READABLE = 2       # new in-order data to read
    EOF = 4            # the peer's FIN arrived, after all its data
    WRITABLE = 8       # acknowledged data freed send space
    CLOSED = 16        # the connection left the stack (TcpConn.error says why, 0: orderly)
    ACCEPT = 32        # listener: a connection waits in the accept queue

# TcpState names by value: STATE_NAMES[conn.state] == conn.state_name.
STATE_NAMES: tuple[str, ...]

class TcpConn:
    error: int
    bytes_sent: int
    bytes_acked: int
    bytes_received: int
    bytes_read: int
    segs_in: int
    segs_out: int
    retransmits: int
    fast_retransmits: int
    timeouts: int
    ooo_segments: int
    dup_segments: int
    sack_blocks_received: int
    window_probes: int
    tail_probes: int
    tlp_recoveries: int
    rack_marks: int
    spurious_retrans: int
    undo_count: int
    dsack_received: int
    dsack_sent: int
    recoveries: int
    @property
    def state(self) -> TcpState: ...
    @property
    def state_name(self) -> str: ...
    @property
    def local(self) -> tuple[bytes, int]: ...
    @property
    def remote(self) -> tuple[bytes, int]: ...
    @property
    def sbuf_max(self) -> int: ...
    @property
    def rbuf_max(self) -> int: ...
    def take_events(self) -> int:
        """The TcpEvent bits raised since the last call, cleared. A plain int, so the per-batch
        dispatch tests bits at C speed; ``TcpEvent(conn.take_events())`` names them."""
    @property
    def readable(self) -> int: ...
    @property
    def send_space(self) -> int: ...
    @property
    def unsent(self) -> int: ...
    @property
    def at_eof(self) -> bool: ...
    def send(self, data: Buffer) -> int: ...
    def read(self, max_bytes: int = -1) -> bytes: ...
    def shutdown(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def counters(self) -> dict[str, Any]: ...
