from typing import Any

from _wgcore.datapath import PacketBatch
from _wgcore.tcpip.conn import TcpConn

Buffer = bytes | bytearray | memoryview

class TcpListener:
    address: bytes
    port: int
    backlog: int
    syn_backlog: int
    closed: bool
    accepted: int
    syn_received: int
    syn_evicted: int
    queue_overflows: int
    def __init__(self, stack: TcpStack, address: bytes, port: int, backlog: int,
                 syn_backlog: int) -> None: ...
    def take_events(self) -> int:
        """The TcpEvent bits (ACCEPT) raised since the last call, cleared."""
    def accept(self) -> TcpConn | None: ...
    @property
    def pending(self) -> int: ...
    @property
    def half_open(self) -> int: ...
    def close(self) -> None: ...

class TcpStack:
    mtu: int
    send_buffer: int
    receive_buffer: int
    receive_buffer_initial: int
    sack_enabled: bool
    timestamps_enabled: bool
    time_wait: float
    buffer_bytes: int
    now: float
    segments_in: int
    segments_out: int
    resets_sent: int
    non_tcp: int
    conns_opened: int
    def __init__(self, mtu: int = 1280, send_buffer: int = ..., receive_buffer: int = ...,
                 receive_buffer_initial: int = ..., secret: bytes | None = None,
                 time_wait: float = 60.0) -> None: ...
    def set_addresses(self, addresses: list[bytes]) -> None: ...
    def listen(self, port: int, address: bytes = b"", backlog: int = 128,
               syn_backlog: int = 256) -> TcpListener: ...
    def connect(self, local: bytes, local_port: int, remote: bytes, remote_port: int,
                now: float) -> TcpConn: ...
    def in_use(self, local: bytes, local_port: int, remote: bytes, remote_port: int) -> bool: ...
    def take_touched(self) -> list[TcpConn | TcpListener]:
        """Connections and listeners with new events since the last call, each once; the
        caller maps them to its own handlers (they hold no reference to the layer above)."""
    @property
    def has_output(self) -> bool: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def connections(self) -> list[TcpConn]: ...
    def listeners(self) -> list[TcpListener]: ...
    def counters(self) -> dict[str, Any]: ...
    def input(self, rx: PacketBatch, tx: PacketBatch, now: float, start: int = 0) -> int: ...
    def input_packet(self, packet: Buffer, tx: PacketBatch, now: float) -> bool: ...
    def output(self, tx: PacketBatch, now: float) -> bool: ...
