"""A client's reader of server websocket frames (RFC 6455 §5), for byte streams: sans-IO.

Theory of operation: :class:`ServerFrameReader` takes the bytes of the TCP stream as they
arrive (``receive_data``) and returns, through ``next_event``, payload *pieces* as
``memoryview`` slices of the received chunk (no copy, never joined into messages: a message of
any size costs nothing beyond the chunk it arrived in) and the control frames as small events.
It exists because wsproto copies each payload several times on its way (buffer append, slice,
bytes) behind a reading task; on the desktop's VNC stream (~200 KiB binary frames) dropping
that cut the in-process path's CPU per GB by 5–18% (``bench_desktop.py``, quiet to busy). Only
what a server may send is accepted (§5.1: server frames are never masked), and since no
extension is negotiated every RSV bit must be 0 (§5.2).

Validation, each failure a :class:`Failure` event with the close code to send (after which the
reader stays silent):

* a masked frame, a RSV bit, an unknown opcode (§5.2) → 1002;
* a length not in its minimal encoding, or a 64-bit length with the top bit set (§5.2) → 1002;
* a control frame that is fragmented or longer than 125 bytes (§5.5) → 1002;
* a continuation frame outside a message, or a new message inside one (§5.4) → 1002;
* a close frame with a 1-byte body or a status code that may not be sent (§5.5.1, §7.4) →
  1002; a close reason that is not UTF-8 (§5.5.1) → 1007.

Control frames may come between the fragments of a message (§5.4); their payload (≤ 125 bytes)
is gathered across chunks. Text payloads come as :class:`Data` with ``text`` set and are not
checked for UTF-8 here (a byte-stream consumer refuses text messages anyway). After a
:class:`Close` nothing more is read (§5.5.1).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Close", "Data", "Failure", "Ping", "Pong", "ServerFrameReader"]

# RFC 6455 §5.2 opcodes.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# RFC 6455 §7.4.1 status codes.
CLOSE_NO_STATUS = 1005
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007

#: §5.5: a control frame's payload is at most this long.
MAX_CONTROL_PAYLOAD = 125
#: The longest header a server frame can have: 2 bytes + a 64-bit length (no mask key).
_MAX_HEADER = 10


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a message's payload (a slice of the chunk it arrived in); ``fin`` marks the
    message's last piece."""

    payload: memoryview
    text: bool
    fin: bool


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame: ``code`` is 1005 when it carried none (§7.1.5)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The peer broke the protocol: close with ``code`` (nothing more is read)."""

    code: int
    reason: str


Event = Data | Ping | Pong | Close | Failure


def _close_code_ok(code: int) -> bool:
    """§7.4: may a peer send this status code? (1004-1006 and 1015 are reserved or local only;
    1016-2999 are for future RFCs; 3000-4999 are for libraries and applications.)"""
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


class ServerFrameReader:
    """Frames from a websocket server, parsed as they arrive (see the module doc)."""

    __slots__ = ("_chunk", "_pos", "_head", "_remaining", "_opcode", "_fin", "_control",
                 "_message", "_done")

    def __init__(self) -> None:
        self._chunk = memoryview(b"")
        self._pos = 0
        self._head = b""               # the start of a header cut by a chunk boundary
        self._remaining = 0            # payload bytes of the current frame not yet read
        self._opcode = -1              # the current frame's opcode; -1 between frames
        self._fin = True
        self._control = bytearray()    # a control frame's payload, gathered
        self._message = -1             # OP_TEXT/OP_BINARY inside a fragmented message
        self._done = False             # after Close or Failure

    def receive_data(self, data: bytes) -> None:
        """Add the next bytes of the stream (``bytes``: pieces are views of it, so it must
        not change). Unread bytes of the previous chunk are kept."""
        if self._pos < len(self._chunk):
            data = bytes(self._chunk[self._pos:]) + data
        self._chunk = memoryview(data)
        self._pos = 0

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more data is needed."""
        while not self._done:
            if self._opcode < 0:
                failure = self._read_header()
                if failure is not None:
                    return failure
                if self._opcode < 0:
                    return None  # the header is not complete yet
            if self._opcode >= OP_CLOSE:
                event = self._read_control()
                if event is None:
                    return None
                return event
            # A data frame: hand out what this chunk holds of its payload.
            chunk, pos, remaining = self._chunk, self._pos, self._remaining
            take = min(remaining, len(chunk) - pos)
            if take == 0 and remaining:
                return None
            self._pos = pos + take
            self._remaining = remaining - take
            last = self._remaining == 0
            fin = last and self._fin
            text = self._message == OP_TEXT
            if last:
                self._opcode = -1
                if self._fin:
                    self._message = -1
            if take or fin:
                return Data(chunk[pos:pos + take], text, fin)
        return None

    # -- internals ------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> Failure:
        self._done = True
        return Failure(code, reason)

    def _read_header(self) -> Failure | None:
        """Parse one frame header if it is all there; sets ``_opcode`` when it is."""
        chunk, pos = self._chunk, self._pos
        if self._head:
            # Join the cut header with (at most) the rest of it from this chunk.
            need = _MAX_HEADER - len(self._head)
            buf: bytes | memoryview = self._head + bytes(chunk[pos:pos + need])
            start = -len(self._head)
        else:
            buf = chunk[pos:pos + _MAX_HEADER]
            start = 0
        if len(buf) < 2:
            self._keep_head(buf)
            return None
        b0, b1 = buf[0], buf[1]
        length = b1 & 0x7F
        size = 2 if length < 126 else 4 if length == 126 else 10
        if len(buf) < size:
            self._keep_head(buf)
            return None
        self._head = b""
        self._pos = pos + start + size
        if b1 & 0x80:
            return self._fail(CLOSE_PROTOCOL_ERROR, "masked frame from the server")
        if b0 & 0x70:
            return self._fail(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if size == 4:
            length = int.from_bytes(buf[2:4], "big")
            if length < 126:
                return self._fail(CLOSE_PROTOCOL_ERROR, "length not minimally encoded")
        elif size == 10:
            length = int.from_bytes(buf[2:10], "big")
            if length >> 63:
                return self._fail(CLOSE_PROTOCOL_ERROR, "64-bit length with the top bit set")
            if length < 1 << 16:
                return self._fail(CLOSE_PROTOCOL_ERROR, "length not minimally encoded")
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not fin:
                return self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                return self._fail(CLOSE_PROTOCOL_ERROR, "control frame longer than 125 bytes")
            self._control.clear()
        elif opcode == OP_CONTINUATION:
            if self._message < 0:
                return self._fail(CLOSE_PROTOCOL_ERROR, "continuation outside a message")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._message >= 0:
                return self._fail(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            self._message = opcode
        else:
            return self._fail(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        self._opcode, self._fin, self._remaining = opcode, fin, length
        return None

    def _keep_head(self, buf: bytes | memoryview) -> None:
        self._head = bytes(buf)
        self._pos = len(self._chunk)

    def _read_control(self) -> Event | None:
        chunk, pos = self._chunk, self._pos
        take = min(self._remaining, len(chunk) - pos)
        self._control += chunk[pos:pos + take]
        self._pos = pos + take
        self._remaining -= take
        if self._remaining:
            return None
        opcode, self._opcode = self._opcode, -1
        payload = bytes(self._control)
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        self._done = True  # §5.5.1: nothing after a close frame
        if not payload:
            return Close(CLOSE_NO_STATUS, "")
        if len(payload) == 1:
            return Failure(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte body")
        code = int.from_bytes(payload[:2], "big")
        if not _close_code_ok(code):
            return Failure(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return Failure(CLOSE_INVALID_DATA, "close reason is not UTF-8")
        return Close(code, reason)
