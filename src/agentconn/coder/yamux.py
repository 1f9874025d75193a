"""yamux (hashicorp/yamux ``spec.md``) as a sans-IO core: frames and the session state machine.

Coder carries its tailnet coordinator RPCs over yamux over a binary websocket
(coder-control-plane.md §2). This module is the protocol only: bytes in, bytes and events out,
with an explicit ``now`` for the keepalive timer. The asyncio adapter is
:mod:`agentconn.coder.yamux_aio`.

Theory of operation
-------------------
A :class:`Session` plays one role: the client numbers its streams 1, 3, 5…, the server 2, 4, 6….
Every frame is a 12-byte :class:`Header` (version 0, type, flags, stream id, length) and, for
Data frames only, ``length`` bytes of payload (§2.2).

Streams follow Go's ``streamState`` (``stream.go``)::

    open_stream ─► SYN_SENT ──ACK──► ESTABLISHED ◄──accept_stream── SYN_RECEIVED ◄─ peer SYN
    ESTABLISHED ──our FIN──► LOCAL_CLOSE ──peer FIN──► CLOSED (forgotten)
    ESTABLISHED ──peer FIN─► REMOTE_CLOSE ─our FIN──► CLOSED (forgotten)
    any ──RST (either side)──► RESET (forgotten)

Inputs: :meth:`Session.receive_data` (``b""`` = transport EOF), the API calls
(:meth:`~Session.open_stream`, :meth:`~Session.accept_stream`, :meth:`~Session.send_data`,
:meth:`~Session.send_eof`, :meth:`~Session.reset_stream`,
:meth:`~Session.acknowledge_received_data`, :meth:`~Session.ping`, :meth:`~Session.go_away`,
:meth:`~Session.close`) and :meth:`~Session.handle_timer`. Outputs, always pulled:
:meth:`~Session.data_to_send`, :meth:`~Session.next_event`, :meth:`~Session.get_timer`.

Invariants:

* Flow control is per stream and counts Data payload only. We never put more than the peer's
  window on the wire: :meth:`~Session.send_data` buffers without limit and
  :meth:`~Session.data_to_send` emits what the window allows (the adapter applies
  backpressure on the buffered amount). A FIN leaves only after all buffered data.
* Our receive window shrinks as Data arrives and is given back only when the application says
  it consumed the bytes (:meth:`~Session.acknowledge_received_data`), with Go's rule: a
  WindowUpdate is sent once the consumed-but-not-credited amount reaches half the maximum
  window (``sendWindowUpdate``: ``delta = (max − buffered) − recvWindow``, sent if
  ``delta ≥ max/2``).
* Data beyond our window, a FIN in a state that has already seen one, a second SYN for a live
  stream, a SYN with a stream id of our parity (or 0), a bad version or type: protocol error.
  We queue GoAway(1), emit :class:`ConnectionTerminated` with a :class:`YamuxProtocolError`,
  count it, and ignore all later input. Nothing from the network raises.
* Frames for unknown stream ids (for example after we sent RST) are dropped; a Data payload is
  drained and counted.
* More than ``accept_backlog`` streams opened by the peer and not yet accepted: the new one gets
  RST. After we sent GoAway, every new stream gets RST.
* Keepalive: a Ping every ``keepalive_interval`` seconds (measured from the previous one) when
  none is outstanding; no ACK within ``ping_timeout`` ends the session (Go ``keepalive()``,
  ``ErrKeepAliveTimeout``). Pings from the peer are answered with the same opaque value.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from enum import Enum, IntEnum, IntFlag

from .errors import (
    YamuxError,
    YamuxGoAway,
    YamuxKeepaliveTimeout,
    YamuxProtocolError,
    YamuxSessionClosed,
    YamuxStreamClosed,
    YamuxStreamReset,
)

__all__ = [
    "HEADER_SIZE",
    "INITIAL_STREAM_WINDOW",
    "PROTO_VERSION",
    "Config",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "Flag",
    "FrameType",
    "GoAwayCode",
    "GoAwayReceived",
    "Header",
    "PingAcknowledged",
    "PingTimedOut",
    "Role",
    "Session",
    "SessionStats",
    "StreamEnded",
    "StreamEstablished",
    "StreamOpened",
    "StreamReset",
    "StreamState",
]

# --- wire constants (hashicorp/yamux const.go; spec.md "Framing") --------------------------

PROTO_VERSION = 0
HEADER_SIZE = 12  # version(1) type(1) flags(2) stream id(4) length(4), big endian
INITIAL_STREAM_WINDOW = 256 * 1024  # const.go initialStreamWindow
_MAX_STREAM_ID = 0xFFFFFFFF
_HEADER = struct.Struct(">BBHII")


class FrameType(IntEnum):
    """Header ``type`` (const.go ``typeData``…``typeGoAway``)."""

    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(IntFlag):
    """Header ``flags`` (const.go ``flagSYN``…``flagRST``). Unknown bits are kept and ignored."""

    NONE = 0
    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8


class GoAwayCode(IntEnum):
    """GoAway ``length`` field (const.go ``goAwayNormal``…``goAwayInternalErr``)."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@dataclass(frozen=True, slots=True)
class Header:
    """One yamux frame header. ``length`` is the payload size for Data, the window delta for
    WindowUpdate, the opaque value for Ping and the error code for GoAway."""

    type: FrameType
    flags: Flag
    stream_id: int
    length: int

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> Header:
        """Parse the first 12 bytes of ``buf``.

        Raises :class:`YamuxProtocolError` for a version other than 0 (Go: ``invalid protocol
        version``) or a type above 3 (``invalid msg type``), and :class:`YamuxError` when fewer
        than 12 bytes are given.
        """
        if len(buf) < HEADER_SIZE:
            raise YamuxError(f"yamux header needs {HEADER_SIZE} bytes, got {len(buf)}")
        version, type_, flags, stream_id, length = _HEADER.unpack_from(buf)
        if version != PROTO_VERSION:
            raise YamuxProtocolError(f"invalid protocol version {version}")
        if type_ > FrameType.GO_AWAY:
            raise YamuxProtocolError(f"invalid msg type {type_}")
        return cls(FrameType(type_), Flag(flags), stream_id, length)

    def emit(self) -> bytes:
        """The 12 header bytes."""
        return _HEADER.pack(PROTO_VERSION, self.type, self.flags, self.stream_id, self.length)


def _header(type_: FrameType, flags: Flag, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(PROTO_VERSION, type_, flags, stream_id, length)


# --- configuration, events, stats ----------------------------------------------------------


class Role(Enum):
    CLIENT = "client"  # odd stream ids (yamux.Client)
    SERVER = "server"  # even stream ids (yamux.Server)


@dataclass(frozen=True, slots=True)
class Config:
    """Session settings; the defaults are Go's ``yamux.DefaultConfig()`` (mux.go), which Coder
    uses on both sides (coder-control-plane.md §2.7). Times in seconds."""

    accept_backlog: int = 256
    enable_keepalive: bool = True
    keepalive_interval: float = 30.0
    ping_timeout: float = 10.0  # Go ConnectionWriteTimeout, which bounds a keepalive ping
    max_stream_window: int = INITIAL_STREAM_WINDOW
    max_frame_size: int = 64 * 1024  # our own cap on one Data frame's payload

    def __post_init__(self) -> None:
        if self.accept_backlog <= 0:
            raise ValueError(f"accept_backlog must be positive, got {self.accept_backlog}")
        if self.max_stream_window < INITIAL_STREAM_WINDOW:
            raise ValueError(
                f"max_stream_window must be at least {INITIAL_STREAM_WINDOW}, "
                f"got {self.max_stream_window}"
            )
        if self.keepalive_interval <= 0 or self.ping_timeout <= 0:
            raise ValueError("keepalive_interval and ping_timeout must be positive")
        if self.max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be positive, got {self.max_frame_size}")


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened ``stream_id`` (SYN). Call :meth:`Session.accept_stream` (sends ACK) or
    :meth:`Session.reset_stream` (refuses with RST)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamEstablished:
    """The peer acknowledged (ACK) a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Payload bytes for ``stream_id``. Report them with
    :meth:`Session.acknowledge_received_data` once consumed, or the peer's window closes."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed ``stream_id`` (FIN): no more data will arrive on it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset ``stream_id`` (RST), or refused a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The ACK for a :meth:`Session.ping` arrived; ``ping_id`` is what ``ping`` returned."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class PingTimedOut:
    """No ACK for a :meth:`Session.ping` within ``Config.ping_timeout``."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer sent GoAway(0): it accepts no new streams; existing ones continue."""

    code: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The session is over. ``error`` is None after a local :meth:`Session.close`, else why:
    transport EOF (:class:`YamuxSessionClosed`), a protocol error of the peer
    (:class:`YamuxProtocolError`, GoAway(1) is queued), the peer's GoAway 1/2/other
    (:class:`YamuxGoAway`), or a missed keepalive (:class:`YamuxKeepaliveTimeout`)."""

    error: YamuxError | None


Event = (
    StreamOpened
    | StreamEstablished
    | DataReceived
    | StreamEnded
    | StreamReset
    | PingAcknowledged
    | PingTimedOut
    | GoAwayReceived
    | ConnectionTerminated
)


@dataclass(slots=True)
class SessionStats:
    """Counters of a session (never reset)."""

    frames_received: int = 0
    frames_sent: int = 0
    protocol_errors: int = 0
    unknown_stream_frames: int = 0  # frames for ids we do not know (dropped)
    discarded_bytes: int = 0  # Data payload drained for unknown/reset/finished streams
    streams_refused: int = 0  # RST because of the backlog or our GoAway
    pings_received: int = 0
    ignored_bytes: int = 0  # input after the session ended


class StreamState(Enum):
    """Go ``streamState`` (stream.go), without ``streamInit`` (we send SYN at once)."""

    SYN_SENT = "syn_sent"
    SYN_RECEIVED = "syn_received"
    ESTABLISHED = "established"
    LOCAL_CLOSE = "local_close"
    REMOTE_CLOSE = "remote_close"
    CLOSED = "closed"
    RESET = "reset"


@dataclass(slots=True)
class _Stream:
    id: int
    state: StreamState
    send_window: int = INITIAL_STREAM_WINDOW
    recv_window: int = INITIAL_STREAM_WINDOW
    consumed: int = 0  # bytes the app consumed that we have not credited back yet
    send_buffer: bytearray = field(default_factory=bytearray)
    eof_requested: bool = False  # send_eof called; FIN leaves when send_buffer is empty
    remote_fin: bool = False
    ack_owed: bool = False  # opened by the peer and our ACK has not left yet
    awaiting_ack: bool = False  # opened by us and the peer's ACK has not come yet


# --- the session ---------------------------------------------------------------------------


class Session:
    """A yamux session in one role. See the module docstring for the rules.

    ``now`` (``loop.time()`` seconds) starts the keepalive clock.
    """

    def __init__(self, role: Role, config: Config | None = None, *, now: float = 0.0) -> None:
        self.role = role
        self.config = config or Config()
        self.stats = SessionStats()
        self._next_stream_id = 1 if role is Role.CLIENT else 2
        self._streams: dict[int, _Stream] = {}
        self._pending_accept: dict[int, None] = {}  # insertion-ordered set
        self._ready: dict[int, None] = {}  # streams with data or a FIN to emit
        self._control = bytearray()
        self._events: deque[Event] = deque()
        self._buf = bytearray()
        # the Data frame whose payload is being received
        self._payload_remaining = 0
        self._payload_stream: int | None = None  # None: drain
        self._payload_deliver = False
        self._payload_flags = Flag.NONE
        self._local_go_away = False
        self._remote_go_away = False
        self._go_away_sent = False
        self._terminated = False
        self._ping_id = 0
        self._keepalive: tuple[int, float] | None = None  # (ping id, deadline)
        self._user_pings: dict[int, float] = {}
        self._next_keepalive_at: float | None = (
            now + self.config.keepalive_interval if self.config.enable_keepalive else None
        )

    # --- queries ---------------------------------------------------------------------------

    @property
    def terminated(self) -> bool:
        """True once the session is over (no more input is processed)."""
        return self._terminated

    @property
    def remote_go_away(self) -> bool:
        """True once the peer sent GoAway(0)."""
        return self._remote_go_away

    def stream_state(self, stream_id: int) -> StreamState | None:
        """The state of a live stream, None when unknown or forgotten."""
        stream = self._streams.get(stream_id)
        return stream.state if stream is not None else None

    def buffered_amount(self, stream_id: int) -> int:
        """Bytes given to :meth:`send_data` that are not on the wire yet (0 if unknown)."""
        stream = self._streams.get(stream_id)
        return len(stream.send_buffer) if stream is not None else 0

    def send_window(self, stream_id: int) -> int:
        """How many payload bytes the peer currently lets us send on ``stream_id``."""
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    def receive_window(self, stream_id: int) -> int:
        """How many payload bytes the peer may still send on ``stream_id``."""
        stream = self._streams.get(stream_id)
        return stream.recv_window if stream is not None else 0

    @property
    def open_stream_ids(self) -> list[int]:
        """Ids of the streams the session still tracks."""
        return list(self._streams)

    # --- API calls -------------------------------------------------------------------------

    def open_stream(self) -> int:
        """Open a stream (queues WindowUpdate|SYN) and return its id. Data may follow at once.

        Raises :class:`YamuxSessionClosed` after the session ended, :class:`YamuxError` after
        the peer's GoAway (Go: ``remote end is not accepting connections``) or when the ids
        are exhausted.
        """
        self._check_alive()
        if self._remote_go_away:
            raise YamuxError("remote end is not accepting connections")
        stream_id = self._next_stream_id
        if stream_id >= _MAX_STREAM_ID - 1:
            raise YamuxError("streams exhausted")
        self._next_stream_id += 2
        stream = _Stream(stream_id, StreamState.SYN_SENT, awaiting_ack=True)
        self._streams[stream_id] = stream
        self._grant_initial_window(stream, Flag.SYN)
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """Accept a stream announced by :class:`StreamOpened`: queues WindowUpdate|ACK.

        Raises :class:`YamuxError` if ``stream_id`` is not waiting to be accepted.
        """
        self._check_alive()
        if stream_id not in self._pending_accept:
            raise YamuxError(f"stream {stream_id} is not waiting to be accepted")
        del self._pending_accept[stream_id]
        stream = self._streams[stream_id]
        flags = self._send_flags(stream)
        self._grant_initial_window(stream, flags)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on a stream; it leaves as the peer's window allows.

        Raises :class:`YamuxStreamClosed` after :meth:`send_eof` or for an unknown stream,
        :class:`YamuxStreamReset` if it was reset, :class:`YamuxSessionClosed` after the end.
        """
        stream = self._writable(stream_id)
        if data:
            stream.send_buffer += data
            self._ready[stream_id] = None

    def send_eof(self, stream_id: int) -> None:
        """Half-close our side (FIN after the buffered data). Idempotent."""
        self._check_alive()
        stream = self._streams.get(stream_id)
        if stream is None or stream.eof_requested:
            return
        stream.eof_requested = True
        self._ready[stream_id] = None

    def reset_stream(self, stream_id: int) -> None:
        """Abort a stream: queue RST, drop its buffered data, forget it. Idempotent."""
        if self._terminated:
            return
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._pending_accept.pop(stream_id, None)
        self._ready.pop(stream_id, None)
        stream.state = StreamState.RESET
        stream.send_buffer.clear()
        self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)

    def acknowledge_received_data(self, stream_id: int, amount: int) -> None:
        """The application consumed ``amount`` bytes of ``stream_id``: give window back.

        A WindowUpdate leaves once half the maximum window is owed (Go's threshold). Unknown
        or finished streams are ignored.
        """
        stream = self._streams.get(stream_id)
        if stream is None or self._terminated or amount <= 0:
            return
        stream.consumed += amount
        if stream.remote_fin:
            return  # the peer sends no more: no window needed
        if stream.consumed >= self.config.max_stream_window // 2:
            delta, stream.consumed = stream.consumed, 0
            stream.recv_window += delta
            self._queue(FrameType.WINDOW_UPDATE, self._send_flags(stream), stream_id, delta)

    def ping(self, now: float) -> int:
        """Send a Ping; returns its id. Expect :class:`PingAcknowledged` or, after
        ``Config.ping_timeout``, :class:`PingTimedOut`."""
        self._check_alive()
        ping_id = self._new_ping_id()
        self._user_pings[ping_id] = now + self.config.ping_timeout
        self._queue(FrameType.PING, Flag.SYN, 0, ping_id)
        return ping_id

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Send GoAway(``code``). With 0 the session goes on but refuses new streams (RST);
        any other code also ends the session."""
        if self._terminated:
            return
        self._send_go_away(code)
        if code != GoAwayCode.NORMAL:
            self._terminate(None)

    def close(self) -> None:
        """End the session locally (Go's ``Session.Close``: no GoAway is sent). Data already
        queued is still returned by :meth:`data_to_send` (send it, then close the transport).
        Emits :class:`ConnectionTerminated` with ``error=None``."""
        if not self._terminated:
            self._terminate(None, flush=True)

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the transport; ``b""`` means EOF. Never raises for bad input."""
        if self._terminated:
            self.stats.ignored_bytes += len(data)
            return
        if not data:
            self._terminate(YamuxSessionClosed("transport closed (EOF)"))
            return
        self._buf += data
        buf = self._buf
        pos = 0
        end = len(buf)
        try:
            while not self._terminated:
                if self._payload_remaining:
                    n = min(self._payload_remaining, end - pos)
                    if n == 0:
                        break
                    self._deliver_payload(bytes(buf[pos : pos + n]))
                    pos += n
                    continue
                if end - pos < HEADER_SIZE:
                    break
                header = Header.parse(bytes(buf[pos : pos + HEADER_SIZE]))
                pos += HEADER_SIZE
                self.stats.frames_received += 1
                self._process_header(header)
        except YamuxProtocolError as exc:
            self._fail(exc)
        finally:
            if self._terminated:
                buf.clear()
            else:
                del buf[:pos]

    def _process_header(self, header: Header) -> None:
        kind = header.type
        if kind is FrameType.PING:
            self._process_ping(header)
        elif kind is FrameType.GO_AWAY:
            self._process_go_away(header.length)
        else:
            self._process_stream_frame(header)

    def _process_stream_frame(self, header: Header) -> None:
        stream_id, flags, length = header.stream_id, header.flags, header.length
        if flags & Flag.SYN:
            self._incoming_stream(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            # likely a stream we reset: drop the frame, drain a Data payload (session.go)
            self.stats.unknown_stream_frames += 1
            if header.type is FrameType.DATA and length:
                self._payload_remaining, self._payload_stream = length, None
                self._payload_deliver, self._payload_flags = False, Flag.NONE
            return
        if header.type is FrameType.WINDOW_UPDATE:
            self._process_flags(stream, flags)
            if stream_id in self._streams:
                stream.send_window += length
                if stream.send_buffer or stream.eof_requested:
                    self._ready[stream_id] = None
            return
        # Data: ACK now; FIN/RST after the payload so they follow the data in event order.
        if flags & Flag.ACK:
            self._process_flags(stream, Flag.ACK)
        if length > stream.recv_window:
            raise YamuxProtocolError(
                f"recv window exceeded (stream {stream_id}, remain {stream.recv_window}, "
                f"recv {length})"
            )
        stream.recv_window -= length
        deferred = flags & (Flag.FIN | Flag.RST)
        if length == 0:
            if deferred:
                self._process_flags(stream, deferred)
            return
        self._payload_remaining = length
        self._payload_stream = stream_id
        # data after the peer's own FIN is dropped (and counted as it drains)
        self._payload_deliver = not stream.remote_fin
        self._payload_flags = deferred

    def _deliver_payload(self, chunk: bytes) -> None:
        self._payload_remaining -= len(chunk)
        stream_id = self._payload_stream
        if self._payload_deliver and stream_id is not None and stream_id in self._streams:
            self._events.append(DataReceived(stream_id, chunk))
        else:
            self.stats.discarded_bytes += len(chunk)
        if self._payload_remaining == 0:
            flags, self._payload_flags = self._payload_flags, Flag.NONE
            self._payload_stream = None
            if flags and stream_id is not None:
                stream = self._streams.get(stream_id)
                if stream is not None:
                    self._process_flags(stream, flags)

    def _process_flags(self, stream: _Stream, flags: Flag) -> None:
        """Go ``processFlags``: ACK establishes, FIN half-closes, RST resets."""
        if flags & Flag.ACK and stream.awaiting_ack:
            stream.awaiting_ack = False
            if stream.state is StreamState.SYN_SENT:
                stream.state = StreamState.ESTABLISHED
            self._events.append(StreamEstablished(stream.id))
        if flags & Flag.FIN:
            if stream.state in (
                StreamState.SYN_SENT,
                StreamState.SYN_RECEIVED,
                StreamState.ESTABLISHED,
            ):
                stream.state = StreamState.REMOTE_CLOSE
                stream.remote_fin = True
                self._events.append(StreamEnded(stream.id))
            elif stream.state is StreamState.LOCAL_CLOSE:
                stream.remote_fin = True
                self._forget(stream, StreamState.CLOSED)
                self._events.append(StreamEnded(stream.id))
            else:
                raise YamuxProtocolError(
                    f"unexpected FIN flag on stream {stream.id} in state {stream.state.value}"
                )
        if flags & Flag.RST:
            self._forget(stream, StreamState.RESET)
            self._events.append(StreamReset(stream.id))

    def _incoming_stream(self, stream_id: int) -> None:
        """Go ``incomingStream``, plus a parity check on the id."""
        if self._local_go_away:
            self.stats.streams_refused += 1
            self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            return
        ours = 1 if self.role is Role.CLIENT else 0
        if stream_id == 0 or stream_id % 2 == ours:
            raise YamuxProtocolError(
                f"peer opened stream {stream_id}, an id of the {self.role.value}'s parity"
            )
        if stream_id in self._streams:
            raise YamuxProtocolError(f"duplicate stream initiated: {stream_id}")
        if len(self._pending_accept) >= self.config.accept_backlog:
            # backlog exceeded: refuse with RST (Go: "backlog exceeded, forcing connection reset")
            self.stats.streams_refused += 1
            self._queue(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)
            return
        self._streams[stream_id] = _Stream(stream_id, StreamState.SYN_RECEIVED, ack_owed=True)
        self._pending_accept[stream_id] = None
        self._events.append(StreamOpened(stream_id))

    def _process_ping(self, header: Header) -> None:
        opaque = header.length
        if header.flags & Flag.SYN:
            self.stats.pings_received += 1
            self._queue(FrameType.PING, Flag.ACK, 0, opaque)
            return
        if self._keepalive is not None and self._keepalive[0] == opaque:
            self._keepalive = None
        elif self._user_pings.pop(opaque, None) is not None:
            self._events.append(PingAcknowledged(opaque))
        # else: a late reply to a ping that timed out

    def _process_go_away(self, code: int) -> None:
        if code == GoAwayCode.NORMAL:
            self._remote_go_away = True
            self._events.append(GoAwayReceived(code))
            return
        messages: dict[int, str] = {
            GoAwayCode.PROTOCOL_ERROR: "yamux protocol error",
            GoAwayCode.INTERNAL_ERROR: "remote yamux internal error",
        }
        message = messages.get(code, "unexpected go away received")
        self._terminate(YamuxGoAway(f"{message} (GoAway code {code})", code))

    # --- timers ----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (``loop.time()`` seconds) to call :meth:`handle_timer` at."""
        if self._terminated:
            return None
        deadlines = list(self._user_pings.values())
        if self._keepalive is not None:
            deadlines.append(self._keepalive[1])
        elif self._next_keepalive_at is not None:
            deadlines.append(self._next_keepalive_at)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: keepalive pings and ping timeouts."""
        if self._terminated:
            return
        if self._keepalive is not None and now >= self._keepalive[1]:
            self._terminate(YamuxKeepaliveTimeout("keepalive timeout"))
            return
        for ping_id, deadline in list(self._user_pings.items()):
            if now >= deadline:
                del self._user_pings[ping_id]
                self._events.append(PingTimedOut(ping_id))
        if (
            self._keepalive is None
            and self._next_keepalive_at is not None
            and now >= self._next_keepalive_at
        ):
            ping_id = self._new_ping_id()
            self._keepalive = (ping_id, now + self.config.ping_timeout)
            self._next_keepalive_at = now + self.config.keepalive_interval
            self._queue(FrameType.PING, Flag.SYN, 0, ping_id)

    # --- output ----------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """All bytes to write now: queued control frames, then Data frames round-robin over
        the streams as their windows allow (each at most ``max_frame_size``), and FINs of
        streams whose buffers drained."""
        out = self._control
        self._control = bytearray()
        max_frame = self.config.max_frame_size
        while self._ready:
            progressed = False
            for stream_id in list(self._ready):
                stream = self._streams.get(stream_id)
                if stream is None:
                    del self._ready[stream_id]
                    continue
                buf = stream.send_buffer
                if buf and stream.send_window > 0:
                    n = min(len(buf), stream.send_window, max_frame)
                    out += _header(FrameType.DATA, self._send_flags(stream), stream_id, n)
                    out += memoryview(buf)[:n]
                    del buf[:n]
                    stream.send_window -= n
                    self.stats.frames_sent += 1
                    progressed = True
                if not buf and stream.eof_requested:
                    self._emit_fin(stream, out)
                    self._ready.pop(stream_id, None)
                elif not buf or stream.send_window == 0:
                    self._ready.pop(stream_id, None)
            if not progressed:
                break
        return bytes(out)

    # --- helpers ---------------------------------------------------------------------------

    def _emit_fin(self, stream: _Stream, out: bytearray) -> None:
        """Go ``sendClose``: WindowUpdate|FIN, and the state change of ``Stream.Close``."""
        if stream.state in (StreamState.LOCAL_CLOSE, StreamState.CLOSED, StreamState.RESET):
            return
        flags = self._send_flags(stream) | Flag.FIN
        out += _header(FrameType.WINDOW_UPDATE, flags, stream.id, 0)
        self.stats.frames_sent += 1
        if stream.state is StreamState.REMOTE_CLOSE:
            self._forget(stream, StreamState.CLOSED)
        else:
            stream.state = StreamState.LOCAL_CLOSE

    def _send_flags(self, stream: _Stream) -> Flag:
        """Go ``sendFlags``: the first frame of a stream the peer opened carries ACK.

        Unlike Go we owe the ACK even when the peer's FIN came first (Go would then send
        none, and a newer Go opener gives up on the whole session after StreamOpenTimeout).
        """
        if stream.state is StreamState.SYN_RECEIVED:
            stream.state = StreamState.ESTABLISHED
        if stream.ack_owed:
            stream.ack_owed = False
            self._pending_accept.pop(stream.id, None)
            return Flag.ACK
        return Flag.NONE

    def _grant_initial_window(self, stream: _Stream, flags: Flag) -> None:
        # Go sendWindowUpdate at open/accept: delta = max window − initial window (0 by default)
        delta = self.config.max_stream_window - INITIAL_STREAM_WINDOW
        stream.recv_window += delta
        self._queue(FrameType.WINDOW_UPDATE, flags, stream.id, delta)

    def _forget(self, stream: _Stream, state: StreamState) -> None:
        stream.state = state
        stream.send_buffer.clear()
        self._streams.pop(stream.id, None)
        self._pending_accept.pop(stream.id, None)
        self._ready.pop(stream.id, None)

    def _writable(self, stream_id: int) -> _Stream:
        self._check_alive()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise YamuxStreamClosed(f"stream {stream_id} is closed or unknown")
        if stream.state is StreamState.RESET:
            raise YamuxStreamReset(f"stream {stream_id} was reset")
        if stream.eof_requested:
            raise YamuxStreamClosed(f"stream {stream_id}: write after write_eof")
        return stream

    def _queue(self, type_: FrameType, flags: Flag, stream_id: int, length: int) -> None:
        self._control += _header(type_, flags, stream_id, length)
        self.stats.frames_sent += 1

    def _new_ping_id(self) -> int:
        ping_id = self._ping_id
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        return ping_id

    def _send_go_away(self, code: int) -> None:
        self._local_go_away = True
        if not self._go_away_sent:
            self._go_away_sent = True
            self._queue(FrameType.GO_AWAY, Flag.NONE, 0, code)

    def _check_alive(self) -> None:
        if self._terminated:
            raise YamuxSessionClosed("yamux session is closed")

    def _fail(self, error: YamuxProtocolError) -> None:
        """A peer protocol error: GoAway(1) (Go ``goAway(goAwayProtoErr)``), then the end."""
        self.stats.protocol_errors += 1
        self._send_go_away(GoAwayCode.PROTOCOL_ERROR)
        self._terminate(error)

    def _terminate(self, error: YamuxError | None, *, flush: bool = False) -> None:
        """End the session. With ``flush`` (a local close), data already given to
        :meth:`send_data` still leaves with the next :meth:`data_to_send`."""
        self._terminated = True
        self._keepalive = None
        self._user_pings.clear()
        self._next_keepalive_at = None
        if not flush:
            self._ready.clear()
        self._payload_remaining = 0
        self._events.append(ConnectionTerminated(error))
