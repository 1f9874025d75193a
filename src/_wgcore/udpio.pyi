import socket
from typing import Any

from _wgcore.datapath import PacketBatch

BACKEND: str

class UdpIO:
    gro: bool
    gso: bool
    last_send_errno: int
    def __init__(self, sock: socket.socket, gro: bool = True, gso: bool = True,
                 buffer_size: int = ...) -> None: ...
    def recv(self, batch: PacketBatch) -> int: ...
    blocked: bool
    resume_at: int
    def send(self, batch: PacketBatch, start: int = 0) -> int: ...
    def counters(self) -> dict[str, Any]: ...
