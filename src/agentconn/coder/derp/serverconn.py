"""The server side of DERP, sans-IO: one connection (:class:`DerpServerConnection`) and the
routing table shared by all of them (:class:`Relay`). Go: ``derp/derp_server.go``.

Theory of operation — a connection (:class:`ServerConnState`)::

    AWAIT_CLIENT_INFO --ClientInfo opens--> SERVING --error, EOF, close()--> CLOSED

- On creation the ServerKey greeting is queued (§5.4 step 1).
- ``AWAIT_CLIENT_INFO``: the first frame must be a ClientInfo of 56 bytes to 256 KiB whose box
  opens with the client's claimed key and whose JSON parses; any failure closes the connection
  without an error frame. Success queues ServerInfo and yields
  :class:`~.events.ClientAuthenticated` (the adapter registers the client with the
  :class:`Relay` before feeding more bytes). The login has ``login_timeout`` seconds.
- ``SERVING``: SendPacket → :class:`~.events.PacketToForward`; NotePreferred →
  :class:`~.events.NotePreferred`; Ping (8..1000 bytes) → a Pong, ignored while one is still
  unsent; mesh frames (ForwardPacket, WatchConns, ClosePeer) close the connection (no mesh
  key here: "insufficient permissions"); other types are skipped without being buffered.
  Sizes are checked on the frame header, before the payload is buffered.

Output is pulled with :meth:`DerpServerConnection.data_to_send`: control frames first
(ServerKey, ServerInfo, Pong, PeerGone, KeepAlive, Health, Restarting), then queued packets,
disco before the rest. Packets wait in two bounded queues (``queue_depth``, 512 in Coder's
fork); a full queue drops its oldest packet (Go's head drop). The adapter pulls only when its
transport can take more, so a slow reader's queue fills and drops instead of growing.

The :class:`Relay` applies §5.6: a packet goes to the destination key's active connection
(the most recent one to send, ``lastWriterIsActive``, when a key is connected more than once),
else it is dropped and counted; a disco packet to an absent key earns the sender a
rate-limited PeerGone(NotHere) (1/s, burst 3). It remembers which connection last received
from each source, so when a key's last connection leaves, exactly those receivers get
PeerGone(Disconnected).
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..disco import looks_like_disco
from ..keys import KEY_LEN, NodePrivate, NodePublic
from .errors import DerpError, DerpLoginError, DerpProtocolError
from .events import (
    ClientAuthenticated,
    ConnectionTerminated,
    NotePreferred,
    PacketToForward,
    Ping,
    ServerEvent,
)
from .frames import (
    CLIENT_INFO_MAX_LEN,
    CLIENT_INFO_MIN_LEN,
    FRAME_HEADER_LEN,
    HANDSHAKE_TIMEOUT,
    KEEP_ALIVE,
    MAX_PACKET_SIZE,
    PING_LEN,
    PING_MAX_LEN,
    ClientInfo,
    ClientInfoFrame,
    FrameReader,
    FrameType,
    HealthFrame,
    KeepAliveFrame,
    NotePreferredFrame,
    PeerGoneFrame,
    PeerGoneReason,
    PongFrame,
    RestartingFrame,
    ServerInfo,
    ServerInfoFrame,
    ServerKeyFrame,
    emit_header,
)

__all__ = ["DEFAULT_QUEUE_DEPTH", "DerpServerConnection", "Relay", "ServerConnState"]

#: ``defaultPerClientSendQueueDepth`` in Coder's fork (upstream Tailscale: 32).
DEFAULT_QUEUE_DEPTH = 512
#: ``peerGoneLim``: PeerGone(NotHere) answers at most 1 disco packet a second, burst 3.
PEER_GONE_RATE = 1.0
PEER_GONE_BURST = 3.0
#: Largest frame the server buffers (a ClientInfo); bigger unknown frames are skipped.
_SEND_PACKET_MAX = KEY_LEN + MAX_PACKET_SIZE


class ServerConnState(enum.Enum):
    """Progress of a :class:`DerpServerConnection`."""

    AWAIT_CLIENT_INFO = "await-client-info"
    SERVING = "serving"
    CLOSED = "closed"


_conn_numbers = itertools.count(1)


class DerpServerConnection:
    """One client connection to a DERP server (see the module docstring).

    ``server_key``: the server's node private key. ``now``: ``loop.time()`` at accept.
    ``keepalive_jitter``: seconds added to the 60 s keepalive period (Go draws 0–5 s at
    random; pass it in to stay deterministic). ``remote``: the peer's address, for logs.
    """

    def __init__(
        self,
        server_key: NodePrivate,
        now: float,
        *,
        server_info: ServerInfo | None = None,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        keepalive: float = KEEP_ALIVE,
        keepalive_jitter: float = 0.0,
        login_timeout: float = HANDSHAKE_TIMEOUT,
        remote: str = "?",
    ) -> None:
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        self.server_key = server_key
        self.server_info = server_info or ServerInfo()
        self.queue_depth = queue_depth
        self.remote = remote
        self.conn_num = next(_conn_numbers)
        self.state = ServerConnState.AWAIT_CLIENT_INFO
        self.key: NodePublic | None = None
        """The client's node key once authenticated."""
        self.info: ClientInfo | None = None
        self.preferred = False
        self._reader = FrameReader()
        self._keys: dict[bytes, NodePublic] = {}  # destinations of SendPackets (bounded)
        self._control: list[bytes] = [ServerKeyFrame(server_key.public).emit()]
        self._packets: deque[tuple[NodePublic, bytes]] = deque()
        self._disco: deque[tuple[NodePublic, bytes]] = deque()
        self._events: deque[ServerEvent] = deque()
        self._pong_pending = False
        self._login_deadline = now + login_timeout
        self.login_timeout = login_timeout
        self.keepalive_period = keepalive + keepalive_jitter
        self._next_keepalive = now + self.keepalive_period
        self._peer_gone_tokens = PEER_GONE_BURST
        self._peer_gone_at = now
        self.frames_received = 0
        self.packets_sent = 0
        self.drops: Counter[str] = Counter()
        """Dropped input and output by reason (``unknown_frame``, ``queue_head``, …)."""
        self.terminated: ConnectionTerminated | None = None

    def __repr__(self) -> str:
        who = self.key.short_string() if self.key is not None else "?"
        return f"<DerpServerConnection #{self.conn_num} {self.remote} {who} {self.state.value}>"

    # ----- input -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes from the client; ``b""`` means EOF."""
        if self.state is ServerConnState.CLOSED:
            return
        if not data:
            if self.state is ServerConnState.SERVING:
                self._terminate("client closed the connection", None)
            else:
                self._terminate("client left during login", DerpLoginError("EOF during login"))
            return
        self._reader.feed(data)
        try:
            self._process_frames()
        except DerpError as exc:
            self._terminate(str(exc), exc)

    def _process_frames(self) -> None:
        reader = self._reader
        while self.state is not ServerConnState.CLOSED:
            if self.state is ServerConnState.SERVING:
                # Fast path: a run of SendPacket frames in one pass (the rest below).
                run = reader.packets(FrameType.SEND_PACKET, _SEND_PACKET_MAX)
                if run:
                    self.frames_received += len(run)
                    keys, events = self._keys, self._events
                    for dst, data in run:
                        key = keys.get(dst)
                        if key is None:
                            if len(keys) >= 1024:
                                keys.clear()
                            key = keys[dst] = NodePublic(dst)
                        events.append(PacketToForward(key, data))
            hdr = reader.header()
            if hdr is None:
                return
            ftype, length = hdr
            if self.state is ServerConnState.AWAIT_CLIENT_INFO:
                self._check_client_info_header(ftype, length)
            elif not self._check_header(ftype, length):
                reader.discard()  # handleUnknownFrame: skip it, however long
                self.frames_received += 1
                self.drops["unknown_frame"] += 1
                continue
            payload = reader.payload()
            if payload is None:
                return
            self.frames_received += 1
            if self.state is ServerConnState.AWAIT_CLIENT_INFO:
                self._process_client_info(payload)
            else:
                self._process_frame(ftype, payload)

    def _check_client_info_header(self, ftype: int, length: int) -> None:
        # recvClientKey: right type, then 56 ≤ length ≤ 256 KiB, before reading the body.
        if ftype != FrameType.CLIENT_INFO:
            raise DerpLoginError(f"bad frame type 0x{ftype:X}, want 0x{FrameType.CLIENT_INFO:X}")
        if length < CLIENT_INFO_MIN_LEN:
            raise DerpLoginError("short client info")
        if length > CLIENT_INFO_MAX_LEN:
            raise DerpLoginError("long client info")

    def _check_header(self, ftype: int, length: int) -> bool:
        """Reject bad sizes of the frames we read; False for frames to skip unread."""
        if ftype == FrameType.SEND_PACKET:
            if length < KEY_LEN:
                raise DerpProtocolError("short send packet frame")
            if length > _SEND_PACKET_MAX:
                raise DerpProtocolError(
                    f"data packet longer ({length - KEY_LEN}) than max of {MAX_PACKET_SIZE}"
                )
            return True
        if ftype == FrameType.NOTE_PREFERRED:
            if length != 1:
                raise DerpProtocolError("frameNotePreferred wrong size")
            return True
        if ftype == FrameType.PING:
            if length < PING_LEN:
                raise DerpProtocolError(f"short ping: {length}")
            if length > PING_MAX_LEN:
                raise DerpProtocolError(f"ping body too large: {length}")
            return True
        if ftype == FrameType.WATCH_CONNS and length != 0:
            raise DerpProtocolError("handleFrameWatchConns wrong size")
        if ftype == FrameType.CLOSE_PEER and length != KEY_LEN:
            raise DerpProtocolError("handleFrameClosePeer wrong size")
        if ftype in (FrameType.FORWARD_PACKET, FrameType.WATCH_CONNS, FrameType.CLOSE_PEER):
            raise DerpProtocolError("insufficient permissions")  # mesh frames need a mesh key
        return False

    def _process_client_info(self, payload: bytes) -> None:
        try:
            frame = ClientInfoFrame.parse(payload)
            info = frame.open(self.server_key)
        except DerpProtocolError as exc:
            raise DerpLoginError(f"receive client key: {exc}") from None
        self.key = frame.client_key
        self.info = info
        self.state = ServerConnState.SERVING
        self._control.append(
            ServerInfoFrame.create(self.server_key, frame.client_key, self.server_info).emit()
        )
        self._events.append(ClientAuthenticated(frame.client_key, info))

    def _process_frame(self, ftype: int, payload: bytes) -> None:
        if ftype == FrameType.SEND_PACKET:
            self._events.append(PacketToForward(NodePublic(payload[:KEY_LEN]), payload[KEY_LEN:]))
        elif ftype == FrameType.NOTE_PREFERRED:
            self.preferred = NotePreferredFrame.parse(payload).preferred
            self._events.append(NotePreferred(self.preferred))
        elif ftype == FrameType.PING:
            data = payload[:PING_LEN]
            if self._pong_pending:
                self.drops["ping_while_pong_pending"] += 1  # "pinging too fast. Ignore."
                return
            self._pong_pending = True
            self._control.append(PongFrame(data).emit())
            self._events.append(Ping(data))

    # ----- API for the relay and the adapter ---------------------------------------------

    def enqueue_packet(self, src: NodePublic, data: bytes) -> bool:
        """Queue a RecvPacket from ``src``; True when the queue was full and its oldest
        packet was dropped (``sendPkt``'s head drop; counted in ``drops["queue_head"]``).
        Packets for a closed connection are dropped (``gone_disconnected``)."""
        if self.state is ServerConnState.CLOSED:
            self.drops["gone_disconnected"] += 1
            return True
        queue = self._disco if looks_like_disco(data) else self._packets
        dropped = False
        if len(queue) >= self.queue_depth:
            queue.popleft()
            self.drops["queue_head"] += 1
            dropped = True
        queue.append((src, data))
        return dropped

    def send_peer_gone(self, peer: NodePublic, reason: int = PeerGoneReason.DISCONNECTED) -> None:
        """Queue PeerGone(``peer``, ``reason``)."""
        if self.state is not ServerConnState.CLOSED:
            self._control.append(PeerGoneFrame(peer, reason).emit())

    def allow_peer_gone_not_here(self, now: float) -> bool:
        """Take a token from the PeerGone(NotHere) limiter (1/s, burst 3)."""
        self._peer_gone_tokens = min(
            PEER_GONE_BURST, self._peer_gone_tokens + (now - self._peer_gone_at) * PEER_GONE_RATE
        )
        self._peer_gone_at = now
        if self._peer_gone_tokens < 1.0:
            return False
        self._peer_gone_tokens -= 1.0
        return True

    def send_health(self, problem: str) -> None:
        """Queue a Health frame (``""`` = healthy again)."""
        if self.state is not ServerConnState.CLOSED:
            self._control.append(HealthFrame(problem).emit())

    def send_restarting(self, reconnect_in: float, try_for: float) -> None:
        """Queue a Restarting frame; durations in seconds (sent as milliseconds)."""
        if self.state is not ServerConnState.CLOSED:
            self._control.append(
                RestartingFrame(int(reconnect_in * 1000), int(try_for * 1000)).emit()
            )

    def close(self, reason: str = "closed by the server") -> None:
        """End the connection locally; queued packets are dropped and counted."""
        if self.state is not ServerConnState.CLOSED:
            self._terminate(reason, None)

    def _terminate(self, reason: str, error: DerpError | None) -> None:
        self.state = ServerConnState.CLOSED
        dropped = len(self._packets) + len(self._disco)
        if dropped:
            self.drops["gone_disconnected"] += dropped
        self._packets.clear()
        self._disco.clear()
        self.terminated = ConnectionTerminated(reason, error)
        self._events.append(self.terminated)

    # ----- output ------------------------------------------------------------------------

    def has_data_to_send(self) -> bool:
        """True when :meth:`data_to_send` would return bytes."""
        return bool(self._control or self._disco or self._packets)

    def data_to_send(self, limit: int = 256 * 1024) -> bytes:
        """Frames for the client: control frames, then disco, then other packets, up to about
        ``limit`` bytes (at least one frame). ``b""`` when nothing is queued."""
        out = self._control
        size = sum(len(f) for f in out)
        self._control = []
        self._pong_pending = False
        for queue in (self._disco, self._packets):
            while queue and size < limit:
                src, data = queue.popleft()
                out += (emit_header(FrameType.RECV_PACKET, KEY_LEN + len(data)), src, data)
                size += FRAME_HEADER_LEN + KEY_LEN + len(data)
                self.packets_sent += 1
        return b"".join(out)

    @property
    def queued_packets(self) -> int:
        """Packets waiting in the two queues."""
        return len(self._packets) + len(self._disco)

    def next_event(self) -> ServerEvent | None:
        """The next event, or ``None``."""
        return self._events.popleft() if self._events else None

    # ----- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The login deadline, then the next keepalive; ``None`` once closed."""
        if self.state is ServerConnState.CLOSED:
            return None
        if self.state is ServerConnState.AWAIT_CLIENT_INFO:
            return self._login_deadline
        return self._next_keepalive

    def handle_timer(self, now: float) -> None:
        """Fail a login past its deadline; queue a KeepAlive when one is due."""
        if self.state is ServerConnState.AWAIT_CLIENT_INFO and now >= self._login_deadline:
            error = DerpLoginError(f"no client info within {self.login_timeout} s")
            self._terminate(str(error), error)
        elif self.state is ServerConnState.SERVING and now >= self._next_keepalive:
            self._control.append(KeepAliveFrame().emit())
            # A ticker: the next tick is one period on, skipping any that were missed.
            while self._next_keepalive <= now:
                self._next_keepalive += self.keepalive_period


@dataclass(slots=True)
class _ClientSet:
    """The connections of one key (``clientSet``): ``last`` is the active one."""

    conns: list[DerpServerConnection]
    last: DerpServerConnection | None
    send_history: list[DerpServerConnection] = field(default_factory=list)


class Relay:
    """The routing table of a DERP server (``Server``'s maps), sans-IO.

    Call :meth:`register` on :class:`~.events.ClientAuthenticated`, :meth:`note_activity`
    after every frame a connection reads, :meth:`forward` on
    :class:`~.events.PacketToForward`, and :meth:`unregister` when a connection ends. The
    methods return the connections that got new output, so the adapter can wake their
    writers. ``stats`` counts packets and drops by reason (Go's ``dropReason`` names).
    """

    def __init__(self) -> None:
        self.clients: dict[NodePublic, _ClientSet] = {}
        self._sent_to: dict[NodePublic, dict[NodePublic, int]] = {}
        self.stats: Counter[str] = Counter()

    def connections(self) -> Iterator[DerpServerConnection]:
        """Every registered connection."""
        for s in self.clients.values():
            yield from s.conns

    def is_connected(self, key: NodePublic) -> bool:
        """True when ``key`` has an active connection."""
        s = self.clients.get(key)
        return s is not None and s.last is not None

    def register(self, conn: DerpServerConnection) -> None:
        """``registerClient``: add an authenticated connection; a second connection for a key
        becomes that key's active one, the older keeps reading but gets no packets."""
        assert conn.key is not None
        s = self.clients.get(conn.key)
        if s is None:
            self.clients[conn.key] = _ClientSet([conn], conn)
        else:
            self.stats["dup_client_conns_total"] += 1
            if len(s.conns) == 1:
                s.send_history = [s.conns[0]]
            else:
                s.send_history.append(conn)
            s.conns.append(conn)
            s.last = conn
        self.stats["registrations"] += 1

    def unregister(self, conn: DerpServerConnection) -> list[DerpServerConnection]:
        """``unregisterClient``: remove ``conn``. When it was its key's last connection, queue
        PeerGone(Disconnected) to the connections that last received from that key
        (``notePeerGoneFromRegionLocked``) and return them."""
        key = conn.key
        if key is None:
            return []
        s = self.clients.get(key)
        if s is None or conn not in s.conns:
            return []
        if len(s.conns) == 1:
            del self.clients[key]
            return self._note_peer_gone(key)
        s.conns.remove(conn)
        if s.last is conn:
            s.last = None
        trimmed: list[DerpServerConnection] = []
        for c in s.send_history:
            if c in s.conns and (not trimmed or trimmed[-1] is not c):
                trimmed.append(c)
        s.send_history = trimmed
        if s.last is None and trimmed:
            s.last = trimmed[-1]
        if len(s.conns) == 1:
            self.clients[key] = _ClientSet([s.conns[0]], s.conns[0])
        return []

    def _note_peer_gone(self, key: NodePublic) -> list[DerpServerConnection]:
        woken = []
        for dst_key, conn_num in self._sent_to.pop(key, {}).items():
            s = self.clients.get(dst_key)
            if s is None:
                continue
            for peer in s.conns:
                if peer.conn_num == conn_num:
                    peer.send_peer_gone(key, PeerGoneReason.DISCONNECTED)
                    self.stats["peer_gone_disconnected_frames"] += 1
                    woken.append(peer)
        return woken

    def note_activity(self, conn: DerpServerConnection) -> None:
        """``noteClientActivity``: with ``lastWriterIsActive``, a duplicate that speaks
        becomes its key's active connection."""
        if conn.key is None:
            return
        s = self.clients.get(conn.key)
        if s is None or len(s.conns) < 2 or conn not in s.conns:
            return
        s.last = conn
        if not s.send_history or s.send_history[-1] is not conn:
            s.send_history.append(conn)

    def forward(
        self, src: DerpServerConnection, dst: NodePublic, data: bytes, now: float
    ) -> DerpServerConnection | None:
        """Route a SendPacket from ``src`` to ``dst`` (§5.6); the connection that got it (to
        wake), or ``src`` when it got a PeerGone(NotHere), or ``None`` when dropped."""
        assert src.key is not None
        self.stats["packets_received"] += 1
        s = self.clients.get(dst)
        target = s.last if s is not None else None
        if target is not None and target.state is ServerConnState.CLOSED:
            # Closed by its writer (timeout, error) and not yet unregistered.
            self.stats["dropped_gone_disconnected"] += 1
            return None
        if target is not None:
            self._sent_to.setdefault(src.key, {})[dst] = target.conn_num
            if target.enqueue_packet(src.key, data):
                self.stats["dropped_queue_head"] += 1
            self.stats["packets_forwarded"] += 1
            return target
        if s is not None and len(s.conns) > 1:
            self.stats["dropped_dup_client"] += 1
            return None
        self.stats["dropped_unknown_dest"] += 1
        if looks_like_disco(data) and src.allow_peer_gone_not_here(now):
            src.send_peer_gone(dst, PeerGoneReason.NOT_HERE)
            self.stats["peer_gone_not_here_frames"] += 1
            return src
        return None
