"""The client side of one DERP connection, sans-IO (``derp/derp_client.go``'s ``Client``).

Theory of operation. The transport (a raw stream after ``101``, or a websocket's binary
messages, §5.1/§5.2) is the caller's; this object sees only bytes and times.

States (:class:`ClientState`)::

    AWAIT_SERVER_KEY --ServerKey--> AWAIT_SERVER_INFO --ServerInfo--> CONNECTED
           |                              |                              |
           +------------- error, EOF, deadline, close() ----------------> CLOSED

- ``AWAIT_SERVER_KEY``: the server speaks first (§5.4 step 1). The first frame must be a
  ServerKey of at most 1 KiB with the magic, else the login fails ("invalid server greeting").
  On it we queue ClientInfo (our key + a box to the server key) and move on. Sends made
  before this point wait behind ClientInfo.
- ``AWAIT_SERVER_INFO``: like Go, we may already send; the ServerInfo box must open and parse
  (it is the "connected" signal, :class:`~.events.Connected`).
- ``CONNECTED``: RecvPacket, PeerGone, Ping (answered with a Pong here), Pong, Health,
  Restarting and KeepAlive become events; unknown frame types are skipped; short frames that
  Go drops are dropped and counted in ``drops``. A frame over 1 MiB ends the connection.

Deadlines (:meth:`get_timer`): the login must complete within ``login_timeout`` of creation,
and some frame must arrive every ``read_timeout`` (Go's 120 s read deadline; servers send a
KeepAlive every 60–65 s). Fatal problems end in ``CLOSED`` with a
:class:`~.events.ConnectionTerminated` event; nothing from the network raises.
"""

from __future__ import annotations

import enum
from collections import Counter, deque

from ..keys import KEY_LEN, NodePrivate, NodePublic
from .errors import DerpClosedError, DerpError, DerpLoginError, DerpProtocolError, DerpSendError
from .events import (
    Connected,
    ConnectionTerminated,
    DerpEvent,
    Health,
    KeepAlive,
    PacketReceived,
    PeerGone,
    PeerPresent,
    Ping,
    Pong,
    Restarting,
)
from .frames import (
    CLIENT_MAX_FRAME_LEN,
    CLIENT_READ_TIMEOUT,
    FRAME_HEADER_LEN,
    HANDSHAKE_TIMEOUT,
    MAX_PACKET_SIZE,
    PING_LEN,
    SERVER_KEY_READ_LIMIT,
    ClientInfo,
    ClientInfoFrame,
    FrameReader,
    FrameType,
    HealthFrame,
    NotePreferredFrame,
    PeerGoneFrame,
    PeerPresentFrame,
    PingFrame,
    PongFrame,
    RestartingFrame,
    ServerInfoFrame,
    ServerKeyFrame,
    emit_header,
)

__all__ = ["ClientState", "DerpClientConnection"]


class ClientState(enum.Enum):
    """Login progress of a :class:`DerpClientConnection`."""

    AWAIT_SERVER_KEY = "await-server-key"
    AWAIT_SERVER_INFO = "await-server-info"
    CONNECTED = "connected"
    CLOSED = "closed"


class DerpClientConnection:
    """One DERP client connection: bytes in, events and bytes out (see the module docstring).

    ``private_key`` is our node key (the DERP identity). ``now`` is ``loop.time()`` at
    creation. ``info`` is the ClientInfo JSON to send (magicsock's by default).
    """

    def __init__(
        self,
        private_key: NodePrivate,
        now: float,
        *,
        info: ClientInfo | None = None,
        login_timeout: float = HANDSHAKE_TIMEOUT,
        read_timeout: float = CLIENT_READ_TIMEOUT,
        client_info_nonce: bytes | None = None,
    ) -> None:
        self.private_key = private_key
        self.public_key = private_key.public
        self.info = info or ClientInfo()
        self.state = ClientState.AWAIT_SERVER_KEY
        self.server_key: NodePublic | None = None
        self.login_timeout = login_timeout
        self.read_timeout = read_timeout
        self._nonce = client_info_nonce
        self._reader = FrameReader()
        self._keys: dict[bytes, NodePublic] = {}  # src keys of received packets (bounded)
        self._out: list[bytes] = []
        self._out_len = 0
        self._deferred: list[bytes] = []  # frames queued before ClientInfo could be sent
        self._events: deque[DerpEvent] = deque()
        self._login_deadline = now + login_timeout
        self._last_recv = now
        self._rate: float = 0.0  # token bucket from ServerInfo (bytes/s), 0 = none
        self._burst: float = 0.0
        self._tokens: float = 0.0
        self._tokens_at = now
        self.drops: Counter[str] = Counter()
        """Dropped input and output by reason (``short_recv_packet``, ``unknown_frame``,
        ``rate_limited``, …)."""
        self.packets_sent = 0
        self.packets_received = 0
        self.terminated: ConnectionTerminated | None = None

    # ----- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes from the transport; ``b""`` means EOF."""
        if self.state is ClientState.CLOSED:
            return
        if not data:
            if self.state is ClientState.CONNECTED:
                self._terminate("server closed the connection", None)
            else:
                self._terminate(
                    "server closed the connection during login",
                    DerpLoginError(f"EOF during login (state {self.state.value})"),
                )
            return
        self._last_recv = now
        self._reader.feed(data)
        try:
            self._process_frames(now)
        except DerpError as exc:
            self._terminate(str(exc), exc)

    def _process_frames(self, now: float) -> None:
        reader = self._reader
        while self.state is not ClientState.CLOSED:
            if self.state is ClientState.CONNECTED:
                # Fast path: a run of RecvPacket frames in one pass (the rest below).
                run = reader.packets(FrameType.RECV_PACKET, CLIENT_MAX_FRAME_LEN)
                if run:
                    self.packets_received += len(run)
                    keys, events = self._keys, self._events
                    for src, data in run:
                        key = keys.get(src)
                        if key is None:
                            if len(keys) >= 1024:
                                keys.clear()
                            key = keys[src] = NodePublic(src)
                        events.append(PacketReceived(key, data))
            hdr = reader.header()
            if hdr is None:
                return
            ftype, length = hdr
            if self.state is ClientState.AWAIT_SERVER_KEY:
                if length > SERVER_KEY_READ_LIMIT:
                    raise DerpLoginError(
                        f"frame header size {length} exceeds reader limit of "
                        f"{SERVER_KEY_READ_LIMIT}"
                    )
            elif length > CLIENT_MAX_FRAME_LEN:
                raise DerpProtocolError(
                    f"unexpectedly large frame (type 0x{ftype:x}) of {length} bytes returned"
                )
            payload = reader.payload()
            if payload is None:
                return
            if self.state is ClientState.AWAIT_SERVER_KEY:
                self._process_server_key(ftype, payload)
            else:
                self._process_frame(ftype, payload, now)

    def _process_server_key(self, ftype: int, payload: bytes) -> None:
        # recvServerKey: type 1, ≥ 40 bytes, magic; anything else fails the login.
        if ftype != FrameType.SERVER_KEY:
            raise DerpLoginError("invalid server greeting")
        try:
            greeting = ServerKeyFrame.parse(payload)
        except DerpProtocolError as exc:
            raise DerpLoginError(str(exc)) from None
        self.server_key = greeting.server_key
        # sendClientKey: our key + box(ClientInfo JSON) sealed to the server key.
        self._queue(
            ClientInfoFrame.create(
                self.private_key, greeting.server_key, self.info, nonce=self._nonce
            ).emit()
        )
        self.state = ClientState.AWAIT_SERVER_INFO
        for frame in self._deferred:
            self._queue(frame)
        self._deferred.clear()

    def _process_frame(self, ftype: int, payload: bytes, now: float) -> None:
        if ftype == FrameType.RECV_PACKET:
            if len(payload) < KEY_LEN:
                self.drops["short_recv_packet"] += 1  # Go: dropping short packet
                return
            self.packets_received += 1
            self._events.append(PacketReceived(NodePublic(payload[:KEY_LEN]), payload[KEY_LEN:]))
        elif ftype == FrameType.KEEP_ALIVE:
            self._events.append(KeepAlive())
        elif ftype == FrameType.PING:
            if len(payload) < PING_LEN:
                self.drops["short_ping"] += 1
                return
            data = PingFrame.parse(payload).data
            self._queue(PongFrame(data).emit())  # the client must echo the 8 bytes
            self._events.append(Ping(data))
        elif ftype == FrameType.PONG:
            if len(payload) < PING_LEN:
                self.drops["short_pong"] += 1
                return
            self._events.append(Pong(PongFrame.parse(payload).data))
        elif ftype == FrameType.PEER_GONE:
            if len(payload) < KEY_LEN:
                self.drops["short_peer_gone"] += 1
                return
            gone = PeerGoneFrame.parse(payload)
            self._events.append(PeerGone(gone.peer, int(gone.reason)))
        elif ftype == FrameType.PEER_PRESENT:
            if len(payload) < KEY_LEN:
                self.drops["short_peer_present"] += 1
                return
            self._events.append(PeerPresent(PeerPresentFrame.parse(payload).peer))
        elif ftype == FrameType.HEALTH:
            self._events.append(Health(HealthFrame.parse(payload).problem))
        elif ftype == FrameType.RESTARTING:
            if len(payload) < 8:
                self.drops["short_restarting"] += 1
                return
            r = RestartingFrame.parse(payload)
            self._events.append(Restarting(r.reconnect_in_ms / 1000.0, r.try_for_ms / 1000.0))
        elif ftype == FrameType.SERVER_INFO:
            self._process_server_info(payload, now)
        else:
            self.drops["unknown_frame"] += 1  # Go's client skips frames it does not know

    def _process_server_info(self, payload: bytes, now: float) -> None:
        assert self.server_key is not None
        try:
            info = ServerInfoFrame.parse(payload).open(self.private_key, self.server_key)
        except DerpProtocolError as exc:
            raise DerpLoginError(f"invalid server info frame: {exc}") from None
        self._rate = float(info.token_bucket_bytes_per_second)
        self._burst = float(info.token_bucket_bytes_burst)
        self._tokens = self._burst
        self._tokens_at = now
        if self.state is ClientState.AWAIT_SERVER_INFO:
            self.state = ClientState.CONNECTED
            self._events.append(
                Connected(
                    self.server_key,
                    token_bucket_bytes_per_second=info.token_bucket_bytes_per_second,
                    token_bucket_bytes_burst=info.token_bucket_bytes_burst,
                )
            )

    # ----- API calls -----------------------------------------------------------------------

    def send_packet(self, dst: bytes, data: bytes | bytearray | memoryview, now: float) -> bool:
        """Queue a SendPacket of ``data`` to node key ``dst``.

        Returns False when the server's token bucket (if it set one) drops it. Raises
        :class:`DerpSendError` for a packet over 64 KiB or a key that is not 32 bytes, and
        :class:`DerpClosedError` once closed.
        """
        if self.state is ClientState.CLOSED:
            raise DerpClosedError("DERP connection is closed")
        if len(data) > MAX_PACKET_SIZE:
            raise DerpSendError(f"packet too big: {len(data)}")
        if len(dst) != KEY_LEN:
            raise DerpSendError(f"destination key must be {KEY_LEN} bytes, got {len(dst)}")
        frame_len = FRAME_HEADER_LEN + KEY_LEN + len(data)
        if self._rate and not self._allow(frame_len, now):
            self.drops["rate_limited"] += 1
            return False
        self.packets_sent += 1
        self._queue_or_defer(emit_header(FrameType.SEND_PACKET, KEY_LEN + len(data)) + dst + data)
        return True

    def send_packets(self, dst: bytes, datagrams: list[bytes], now: float) -> int:
        """Queue a SendPacket to ``dst`` for each of ``datagrams``, in order, as one chunk of
        output; returns how many were queued (the rest: ``rate_limited``). Raises like
        :meth:`send_packet` (checked before anything is queued)."""
        if self.state is ClientState.CLOSED:
            raise DerpClosedError("DERP connection is closed")
        if len(dst) != KEY_LEN:
            raise DerpSendError(f"destination key must be {KEY_LEN} bytes, got {len(dst)}")
        for data in datagrams:
            if len(data) > MAX_PACKET_SIZE:
                raise DerpSendError(f"packet too big: {len(data)}")
        parts: list[bytes] = []
        rate = self._rate
        for data in datagrams:
            n = KEY_LEN + len(data)
            if rate and not self._allow(FRAME_HEADER_LEN + n, now):
                self.drops["rate_limited"] += 1
                continue
            parts += (emit_header(FrameType.SEND_PACKET, n), dst, data)
        if parts:
            self.packets_sent += len(parts) // 3
            self._queue_or_defer(b"".join(parts))
        return len(parts) // 3

    def _allow(self, n: int, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    def send_ping(self, data: bytes) -> None:
        """Queue a Ping with 8 bytes of ``data``; the server answers with a :class:`Pong`."""
        if self.state is ClientState.CLOSED:
            raise DerpClosedError("DERP connection is closed")
        if len(data) != PING_LEN:
            raise DerpSendError(f"ping data must be {PING_LEN} bytes, got {len(data)}")
        self._queue_or_defer(PingFrame(bytes(data)).emit())

    def note_preferred(self, preferred: bool) -> None:
        """Queue NotePreferred: whether this server is our home region (stats only)."""
        if self.state is ClientState.CLOSED:
            raise DerpClosedError("DERP connection is closed")
        self._queue_or_defer(NotePreferredFrame(preferred).emit())

    def close(self, reason: str = "closed by the client") -> None:
        """End the connection locally (no frame is sent; the caller closes the transport)."""
        if self.state is not ClientState.CLOSED:
            self._terminate(reason, None)

    # ----- output --------------------------------------------------------------------------

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_len += len(frame)

    def _queue_or_defer(self, frame: bytes) -> None:
        if self.state is ClientState.AWAIT_SERVER_KEY:
            self._deferred.append(frame)
        else:
            self._queue(frame)

    def data_to_send(self) -> bytes:
        """Everything queued for the transport (``b""`` when nothing is)."""
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_len = 0
        return data

    @property
    def pending_bytes(self) -> int:
        """Bytes :meth:`data_to_send` would return (for the adapter's backpressure)."""
        return self._out_len

    def next_event(self) -> DerpEvent | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None

    # ----- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (``loop.time()`` seconds), or ``None`` once closed."""
        if self.state is ClientState.CLOSED:
            return None
        deadline = self._last_recv + self.read_timeout
        if self.state is not ClientState.CONNECTED:
            deadline = min(deadline, self._login_deadline)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fail the login or the connection if its deadline passed."""
        if self.state is ClientState.CLOSED:
            return
        error: DerpError
        if self.state is not ClientState.CONNECTED and now >= self._login_deadline:
            error = DerpLoginError(
                f"no login within {self.login_timeout} s (state {self.state.value})"
            )
            self._terminate(str(error), error)
        elif now >= self._last_recv + self.read_timeout:
            error = DerpProtocolError(f"no frame from the server for {self.read_timeout} s")
            self._terminate(str(error), error)

    def _terminate(self, reason: str, error: DerpError | None) -> None:
        self.state = ClientState.CLOSED
        self._deferred.clear()
        self.terminated = ConnectionTerminated(reason, error)
        self._events.append(self.terminated)

