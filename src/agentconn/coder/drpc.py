"""DRPC (storj.io/drpc) wire format and a sans-IO connection: frames, packets, RPC streams.

Coder speaks DRPC on every yamux stream of the coordinate websocket, one RPC per yamux stream
(coder-control-plane.md §3). The asyncio side is :mod:`agentconn.coder.drpc_aio`.

Wire (``drpcwire/packet.go``, ``varint.go``, ``error.go``; §3.2)::

    frame   = control(1) | uvarint stream_id | uvarint message_id | uvarint length | data
    control = bit 0 done (last frame of its packet) | bits 1–6 kind | bit 7 control

A packet (stream id, message id, kind, data) is sent as one or more frames with the same ids;
only the last has *done*. Readers reassemble (``drpcwire/reader.go``): ids must not go down
(``id monotonicity violation``), a packet may not change kind (``packet kind change``), and a
packet may not exceed 4 MiB (``data overflow``); frames with the control bit are skipped; a new
id discards a half-assembled packet.

Theory of operation of :class:`Connection` (``drpcmanager`` + ``drpcstream``): one transport
carries one active stream at a time. The client numbers its streams 1, 2, 3… and starts each
with [InvokeMetadata] Invoke; each side numbers its own packets on a stream 1, 2, 3….
Per stream we track *send closed* (we sent CloseSend/Close/Error/Cancel), *recv closed* (the
peer sent CloseSend) and *terminated* (Close, Error or Cancel either way, or both CloseSends).
Incoming packets for an older stream are ignored; an Invoke for the current stream, or an
unknown kind without the control bit, is a protocol error that ends the connection (reported
as :class:`ConnectionTerminated`, never raised from :meth:`Connection.receive_data`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum

from .errors import DrpcClosedError, DrpcError, DrpcProtocolError

__all__ = [
    "CODE_UNIMPLEMENTED",
    "DEFAULT_SPLIT_SIZE",
    "MAX_BUFFER_SIZE",
    "CancelReceived",
    "CloseReceived",
    "CloseSendReceived",
    "Connection",
    "ConnectionTerminated",
    "ErrorReceived",
    "Event",
    "Frame",
    "InvokeReceived",
    "Kind",
    "MessageReceived",
    "Packet",
    "PacketReader",
    "Role",
    "append_varint",
    "decode_metadata",
    "encode_metadata",
    "encode_varint",
    "go_quote",
    "marshal_error",
    "read_varint",
    "split_packet",
    "unmarshal_error",
]

MAX_BUFFER_SIZE = 4 << 20  # drpcwire ReaderOptions default; Coder's drpcsdk.MaxMessageSize
DEFAULT_SPLIT_SIZE = 64 * 1024  # drpcwire SplitN/SplitData when SplitSize is 0
MAX_FRAME_OVERHEAD = 1 + 9 + 9 + 9  # reader.go maxFrameOverhead
CODE_UNIMPLEMENTED = 12  # drpcerr.Unimplemented
_U64 = (1 << 64) - 1


class Kind(IntEnum):
    """Packet kinds (drpcwire ``Kind``)."""

    INVOKE = 1  # data: the RPC name
    MESSAGE = 2  # data: one encoded message
    ERROR = 3  # data: 8-byte big-endian code ‖ text
    CANCEL = 4  # empty; sent with the control bit (soft cancel)
    CLOSE = 5  # empty: the stream is dead
    CLOSE_SEND = 6  # empty: no more messages from the sender
    INVOKE_METADATA = 7  # data: metadata for the Invoke with the same stream id


# --- varints (drpcwire/varint.go: LEB128, at most 10 bytes) --------------------------------


def append_varint(buf: bytearray, value: int) -> None:
    """Append the uvarint encoding of ``value`` (0 ≤ value < 2**64)."""
    if not 0 <= value <= _U64:
        raise ValueError(f"uvarint out of range: {value}")
    while value >= 0x80:
        buf.append((value & 0x7F) | 0x80)
        value >>= 7
    buf.append(value)


def encode_varint(value: int) -> bytes:
    """The uvarint encoding of ``value``."""
    out = bytearray()
    append_varint(out, value)
    return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode a uvarint at ``buf[pos:]``: ``(value, next_pos)``, or None if ``buf`` ends first.

    Raises :class:`DrpcProtocolError` (``varint too long``) when 10 bytes all have the
    continuation bit; like Go, bits past 64 are dropped.
    """
    value = 0
    end = len(buf)
    for shift in range(0, 64, 7):
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _U64, pos
    raise DrpcProtocolError("varint too long")


# --- frames and packets ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One wire frame. ``kind`` is a :class:`Kind` or, for kinds we do not know, an int 0–63."""

    kind: int
    stream_id: int
    message_id: int
    data: bytes = b""
    done: bool = True
    control: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.kind < 64:
            raise ValueError(f"DRPC kind must fit 6 bits, got {self.kind}")

    @property
    def control_byte(self) -> int:
        return (self.kind << 1) | int(self.done) | (0x80 if self.control else 0)

    def emit(self) -> bytes:
        """The frame's bytes (``AppendFrame``)."""
        out = bytearray((self.control_byte,))
        append_varint(out, self.stream_id)
        append_varint(out, self.message_id)
        append_varint(out, len(self.data))
        out += self.data
        return bytes(out)

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[Frame, int] | None:
        """Parse a frame at ``buf[pos:]``: ``(frame, next_pos)``, or None if incomplete.

        Raises :class:`DrpcProtocolError` for an over-long varint (``ParseFrame``).
        """
        if len(buf) - pos < 4:  # control + three one-byte varints at least
            return None
        control = buf[pos]
        parsed = read_varint(buf, pos + 1)
        if parsed is None:
            return None
        stream_id, p = parsed
        parsed = read_varint(buf, p)
        if parsed is None:
            return None
        message_id, p = parsed
        parsed = read_varint(buf, p)
        if parsed is None:
            return None
        length, p = parsed
        if length > len(buf) - p:
            return None
        kind = (control >> 1) & 0x3F
        frame = cls(
            _kind(kind),
            stream_id,
            message_id,
            bytes(buf[p : p + length]),
            bool(control & 1),
            bool(control & 0x80),
        )
        return frame, p + length


def _kind(value: int) -> int:
    try:
        return Kind(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class Packet:
    """A whole DRPC packet (all frames of one id joined)."""

    kind: int
    stream_id: int
    message_id: int
    data: bytes = b""
    control: bool = False


def split_packet(packet: Packet, split_size: int = 0) -> list[Frame]:
    """Frames for ``packet`` of at most ``split_size`` data bytes each (``SplitN``: 0 means
    64 KiB, negative means never split). An empty packet is one empty frame."""
    n = DEFAULT_SPLIT_SIZE if split_size == 0 else max(split_size, 0)
    data = packet.data
    frames = []
    while True:
        if n and len(data) > n:
            chunk, data = data[:n], data[n:]
            done = False
        else:
            chunk, data, done = data, b"", True
        frames.append(
            Frame(packet.kind, packet.stream_id, packet.message_id, chunk, done, packet.control)
        )
        if done:
            return frames


class PacketReader:
    """Reassembles packets from frames as ``drpcwire.Reader`` does (see the module doc).

    Feed bytes with :meth:`receive_data`, pull packets with :meth:`next_packet`, which raises
    :class:`DrpcProtocolError` for broken input (the reader is then unusable).
    """

    def __init__(self, max_buffer_size: int = MAX_BUFFER_SIZE) -> None:
        self.max_buffer_size = max_buffer_size
        self._buf = bytearray()
        self._pos = 0
        self._stream_id = 1  # reader.go starts at ID{Stream: 1, Message: 1}
        self._message_id = 1
        self._packet: Packet | None = None
        self._data = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append transport bytes."""
        self._buf += data

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more bytes arrive."""
        while True:
            parsed = Frame.parse(self._buf, self._pos)
            if parsed is None:
                if self._pos:
                    del self._buf[: self._pos]
                    self._pos = 0
                if len(self._buf) - MAX_FRAME_OVERHEAD > self.max_buffer_size:
                    raise DrpcProtocolError("data overflow")
                return None
            frame, self._pos = parsed
            if frame.control:
                continue  # reserved for future use: skipped (reader.go)
            fid = (frame.stream_id, frame.message_id)
            if fid < (self._stream_id, self._message_id):
                raise DrpcProtocolError(
                    f"id monotonicity violation: frame <{fid[0]},{fid[1]}> after "
                    f"<{self._stream_id},{self._message_id}>"
                )
            packet = self._packet
            if packet is None or fid != (packet.stream_id, packet.message_id):
                self._stream_id, self._message_id = fid
                packet = self._packet = Packet(frame.kind, frame.stream_id, frame.message_id)
                self._data.clear()
            elif frame.kind != packet.kind:
                raise DrpcProtocolError(f"packet kind change: {packet.kind} to {frame.kind}")
            self._data += frame.data
            if len(self._data) > self.max_buffer_size:
                raise DrpcProtocolError("data overflow")
            if frame.done:
                self._message_id += 1
                self._packet = None
                return Packet(packet.kind, packet.stream_id, packet.message_id, bytes(self._data))


# --- errors and metadata -------------------------------------------------------------------


def marshal_error(message: str, code: int = 0) -> bytes:
    """Error packet data: 8-byte big-endian code ‖ UTF-8 text (``MarshalError``)."""
    return code.to_bytes(8, "big") + message.encode()


def unmarshal_error(data: bytes) -> tuple[int, str]:
    """``(code, text)`` from Error packet data (``UnmarshalError``); shorter than 8 bytes
    gives code 0 and Go's ``<text> (drpcwire note: invalid error data)``."""
    if len(data) < 8:
        return 0, f"{data.decode(errors='replace')} (drpcwire note: invalid error data)"
    return int.from_bytes(data[:8], "big"), data[8:].decode(errors="replace")


def go_quote(text: str) -> str:
    """Go's ``%q`` for the strings we put in error texts (``strconv.Quote``)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    """InvokeMetadata data (``drpcmetadata``): a protobuf message with ``map<string,string>``
    as field 1 — repeated ``0a len {0a len key}{12 len value}``, keys sorted."""
    out = bytearray()
    for key in sorted(metadata):
        entry = bytearray()
        for tag, text in ((0x0A, key), (0x12, metadata[key])):
            raw = text.encode()
            entry.append(tag)
            append_varint(entry, len(raw))
            entry += raw
        out.append(0x0A)
        append_varint(out, len(entry))
        out += entry
    return bytes(out)


def decode_metadata(data: bytes) -> dict[str, str]:
    """Parse InvokeMetadata data; raises :class:`DrpcProtocolError` if malformed."""
    from .protobuf import ProtobufError, WireType, iter_fields

    result: dict[str, str] = {}
    try:
        for number, wire_type, value in iter_fields(data):
            if number != 1 or wire_type is not WireType.LEN:
                continue
            assert isinstance(value, bytes)
            key = val = ""
            for n2, w2, v2 in iter_fields(value):
                if w2 is WireType.LEN and n2 in (1, 2):
                    assert isinstance(v2, bytes)
                    text = v2.decode()
                    if n2 == 1:
                        key = text
                    else:
                        val = text
            result[key] = val
    except (ProtobufError, UnicodeDecodeError) as exc:
        raise DrpcProtocolError(f"invalid invoke metadata: {exc}") from exc
    return result


# --- the sans-IO connection ----------------------------------------------------------------


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class InvokeReceived:
    """(server) The client started stream ``stream_id`` for method ``rpc``."""

    stream_id: int
    rpc: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One message (encoded protobuf) on the current stream."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseSendReceived:
    """The peer sends no more messages on the stream (its receive side is EOF for us)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer closed the stream (``remote closed the stream``)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """The peer ended the stream with an error: ``code`` and ``message`` as sent."""

    stream_id: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """The peer canceled the stream (soft cancel)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The transport must be closed: ``error`` says why (a :class:`DrpcProtocolError`)."""

    error: DrpcError


Event = (
    InvokeReceived
    | MessageReceived
    | CloseSendReceived
    | CloseReceived
    | ErrorReceived
    | CancelReceived
    | ConnectionTerminated
)


@dataclass(slots=True)
class _StreamState:
    id: int
    next_message_id: int = 1  # our own packet numbering on this stream
    send_closed: bool = False
    recv_closed: bool = False
    terminated: bool = False


@dataclass(slots=True)
class ConnectionStats:
    """Counters of a connection."""

    packets_received: int = 0
    packets_sent: int = 0
    ignored_packets: int = 0  # old streams, control packets, after termination
    protocol_errors: int = 0


class Connection:
    """One DRPC transport in ``role``: one active stream at a time (see the module doc)."""

    def __init__(
        self,
        role: Role,
        *,
        max_buffer_size: int = MAX_BUFFER_SIZE,
        split_size: int = 0,
    ) -> None:
        self.role = role
        self.split_size = split_size
        self.stats = ConnectionStats()
        self._reader = PacketReader(max_buffer_size)
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._stream: _StreamState | None = None
        self._last_stream_id = 0
        self._pending_metadata: tuple[int, dict[str, str]] | None = None
        self._terminated: DrpcError | None = None

    # --- queries ---------------------------------------------------------------------------

    @property
    def stream_id(self) -> int | None:
        """The current stream's id, or None before the first."""
        return self._stream.id if self._stream is not None else None

    @property
    def terminated(self) -> DrpcError | None:
        """Why the connection ended, or None while usable."""
        return self._terminated

    def stream_finished(self) -> bool:
        """True when there is no stream or the current one is terminated."""
        return self._stream is None or self._stream.terminated

    # --- client API ------------------------------------------------------------------------

    def invoke(self, rpc: str, metadata: Mapping[str, str] | None = None) -> int:
        """(client) Start the next stream: queues [InvokeMetadata] and Invoke; returns the id.

        Raises :class:`DrpcError` when the previous stream is still active or the connection
        ended.
        """
        self._check_usable()
        if self.role is not Role.CLIENT:
            raise DrpcError("only a client invokes")
        if self._stream is not None and not self._stream.terminated:
            raise DrpcError(f"stream {self._stream.id} is still active")
        self._last_stream_id += 1
        stream = self._stream = _StreamState(self._last_stream_id)
        if metadata:
            self._send(stream, Kind.INVOKE_METADATA, encode_metadata(metadata))
        self._send(stream, Kind.INVOKE, rpc.encode())
        return stream.id

    # --- both roles ------------------------------------------------------------------------

    def send_message(self, stream_id: int, data: bytes) -> None:
        """Queue one message. Raises :class:`DrpcClosedError` if sending is over."""
        stream = self._sendable(stream_id)
        self._send(stream, Kind.MESSAGE, data)

    def close_send(self, stream_id: int) -> None:
        """Queue CloseSend (no more messages from us). No-op if sending is already over."""
        stream = self._current(stream_id)
        if stream is None or stream.send_closed or stream.terminated:
            return
        stream.send_closed = True
        self._send(stream, Kind.CLOSE_SEND, b"")
        if stream.recv_closed:
            stream.terminated = True  # both CloseSends: "stream terminated by both…"

    def close(self, stream_id: int) -> None:
        """Queue Close and terminate the stream. No-op once terminated."""
        stream = self._current(stream_id)
        if stream is None or stream.terminated:
            return
        stream.send_closed = stream.terminated = True
        self._send(stream, Kind.CLOSE, b"")

    def send_error(self, stream_id: int, message: str, code: int = 0) -> None:
        """Queue Error(code, message) and terminate the stream. No-op once terminated."""
        stream = self._current(stream_id)
        if stream is None or stream.terminated:
            return
        stream.send_closed = stream.terminated = True
        self._send(stream, Kind.ERROR, marshal_error(message, code))

    def cancel(self, stream_id: int) -> None:
        """Queue a soft Cancel (control bit set) and terminate the stream."""
        stream = self._current(stream_id)
        if stream is None or stream.terminated:
            return
        stream.send_closed = stream.terminated = True
        self._send(stream, Kind.CANCEL, b"", control=True)

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed transport bytes. Broken input ends the connection with an event."""
        if self._terminated is not None:
            return
        self._reader.receive_data(data)
        try:
            while (packet := self._reader.next_packet()) is not None:
                self.stats.packets_received += 1
                self._handle_packet(packet)
                if self._terminated is not None:
                    return
        except DrpcProtocolError as exc:
            self._fail(exc)

    def _handle_packet(self, packet: Packet) -> None:
        stream = self._stream
        if stream is not None and packet.stream_id == stream.id:
            self._handle_stream_packet(stream, packet)
        elif stream is not None and packet.stream_id < stream.id:
            self.stats.ignored_packets += 1  # an old stream's leftovers
        elif packet.kind in (Kind.INVOKE, Kind.INVOKE_METADATA) and self.role is Role.SERVER:
            if packet.kind == Kind.INVOKE_METADATA:
                self._pending_metadata = (packet.stream_id, decode_metadata(packet.data))
                return
            if stream is not None and not stream.terminated:
                # a new invoke implicitly cancels the previous stream (manageReader)
                stream.terminated = stream.send_closed = stream.recv_closed = True
                self._events.append(CancelReceived(stream.id))
            metadata: dict[str, str] = {}
            if self._pending_metadata and self._pending_metadata[0] == packet.stream_id:
                metadata = self._pending_metadata[1]
            self._pending_metadata = None
            self._stream = _StreamState(packet.stream_id)
            self._events.append(
                InvokeReceived(packet.stream_id, packet.data.decode(errors="replace"), metadata)
            )
        elif packet.control:
            self.stats.ignored_packets += 1
        else:
            # a packet for a stream that does not exist (yet): Go would wait for the invoke;
            # nothing here will ever create it.
            self.stats.ignored_packets += 1

    def _handle_stream_packet(self, stream: _StreamState, packet: Packet) -> None:
        """``drpcstream.Stream.HandlePacket``."""
        if stream.terminated:
            self.stats.ignored_packets += 1
            return
        kind = packet.kind
        if kind == Kind.MESSAGE:
            if stream.recv_closed:
                self.stats.ignored_packets += 1
            else:
                self._events.append(MessageReceived(stream.id, packet.data))
        elif kind == Kind.INVOKE or kind == Kind.INVOKE_METADATA:
            self._fail(DrpcProtocolError("invoke on existing stream"))
        elif kind == Kind.ERROR:
            code, message = unmarshal_error(packet.data)
            stream.terminated = stream.send_closed = stream.recv_closed = True
            self._events.append(ErrorReceived(stream.id, code, message))
        elif kind == Kind.CANCEL:
            stream.terminated = stream.send_closed = stream.recv_closed = True
            self._events.append(CancelReceived(stream.id))
        elif kind == Kind.CLOSE:
            stream.terminated = stream.send_closed = stream.recv_closed = True
            self._events.append(CloseReceived(stream.id))
        elif kind == Kind.CLOSE_SEND:
            if not stream.recv_closed:
                stream.recv_closed = True
                self._events.append(CloseSendReceived(stream.id))
            if stream.send_closed:
                stream.terminated = True
        elif packet.control:
            self.stats.ignored_packets += 1  # unknown kind with the control bit: ignored
        else:
            self._fail(DrpcProtocolError(f"internal error: unknown packet kind: {kind}"))

    # --- output ----------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """The frames queued since the last call."""
        out, self._out = bytes(self._out), bytearray()
        return out

    # --- helpers ---------------------------------------------------------------------------

    def _send(self, stream: _StreamState, kind: Kind, data: bytes, control: bool = False) -> None:
        packet = Packet(kind, stream.id, stream.next_message_id, data, control)
        stream.next_message_id += 1
        for frame in split_packet(packet, self.split_size):
            self._out += frame.emit()
        self.stats.packets_sent += 1

    def _current(self, stream_id: int) -> _StreamState | None:
        self._check_usable()
        stream = self._stream
        return stream if stream is not None and stream.id == stream_id else None

    def _sendable(self, stream_id: int) -> _StreamState:
        stream = self._current(stream_id)
        if stream is None:
            raise DrpcClosedError(f"stream {stream_id} is not the active stream")
        if stream.terminated:
            raise DrpcClosedError(f"stream {stream_id} is terminated")
        if stream.send_closed:
            raise DrpcClosedError(f"stream {stream_id}: send closed")
        return stream

    def _check_usable(self) -> None:
        if self._terminated is not None:
            raise DrpcClosedError(f"connection closed: {self._terminated}")

    def _fail(self, error: DrpcError) -> None:
        self.stats.protocol_errors += 1
        self._terminated = error
        if self._stream is not None:
            self._stream.terminated = True
        self._events.append(ConnectionTerminated(error))
