"""One tailnet node, sans-IO: a WireGuard device and the IP interface behind it.

Theory of operation (STYLE §1, §3)
----------------------------------
``wg/`` (the :class:`~agentconn.wg.device.Device`: handshakes, keypairs, timers, routing by
AllowedIPs) and ``net/`` (the :class:`~agentconn.net.iface.Interface`: addresses, TCP, UDP,
ICMP/TSMP) never import each other. A :class:`Node` joins them, still without a socket, a clock
or a loop, so a whole node can be driven by a test with a fake ``now``:

* ``receive_batch(rx, tx, now, wall, ping_now)``: a batch of received UDP datagrams is
  decrypted in C, the inner packets go to the interface (TCP in C, the rest one at a time),
  then the device runs its control path (handshake messages, cookies, timers' stamps).
* ``fill(tx, now)`` then ``seal(tx, now, wall)``: the device's own datagrams (handshakes,
  keepalives, staged packets) and the interface's packets go into a batch, which is then
  encrypted in C; what had no session is staged by the device until a handshake completes.
* ``get_timer()``/``handle_timer(now, wall)``: the earliest deadline of both cores.
* ``capture``: None, or called with ``(wall, [packet, ...])`` for the inner IP packets of each
  batch, received ones after decryption (before the interface consumes them) and sent ones as
  they are sealed (a packet staged for a handshake is reported when it is finally sealed, once;
  keepalives and handshake messages carry no IP packet and are not). Costs one attribute
  check per batch while None. Used for pcap files (``net/pcap.py``, ``Tunnel.start_capture``).

``now`` is the monotonic protocol clock, ``wall`` the Unix time for TAI64N timestamps and
``ping_now`` a monotonic clock with sub-millisecond resolution for ping RTTs. The asyncio
adapter (:class:`~agentconn.aio.tunnel.Tunnel`) is the only thing that reads clocks.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _wgcore.datapath import RESULT, PacketBatch

from .errors import ConfigError
from .net.iface import Interface
from .wg.config import InterfaceConfig, PeerConfig
from .wg.device import Device
from .wg.keys import encode_key, parse_key
from .wg.peer import Peer

__all__ = ["DEFAULT_MTU", "Node"]

DEFAULT_MTU = 1280   # Coder's tailnet MTU (tailnet.md §3); set MTU in the config to change it
DROP_TOO_BIG = RESULT["DROP_TOO_BIG"]
RES_DATA = RESULT["DATA"]
RES_PENDING = RESULT["PENDING"]
RES_SEALED = RESULT["SEALED"]

#: ``capture(wall, packets)``: see the module doc.
Capture = Callable[[float, list[bytes]], None]


class Node:
    """A WireGuard device and its IP interface for one configuration (see module doc).

    Raises ConfigError for an MTU outside 576-65455.
    """

    def __init__(self, config: InterfaceConfig) -> None:
        self.config = config
        mtu = config.mtu or DEFAULT_MTU
        if not 576 <= mtu <= 65535 - 80:
            raise ConfigError(f"MTU {mtu} out of range 576-65455")
        self.device = Device(config.private_key, mtu=mtu)
        device = self.device
        # Through the property, not a saved bound method: the route table is rebuilt lazily.
        self.iface = Interface([a.ip for a in config.addresses], mtu=mtu,
                               has_route=lambda raw: device.datapath.route(raw) is not None)
        #: None, or called with (wall, inner IP packets) per batch, both directions
        self.capture: Capture | None = None

    @property
    def public_key(self) -> str:
        """Our WireGuard public key, base64."""
        return encode_key(self.device.public_key)

    # -- peers ----------------------------------------------------------------------------------

    def add_peer(self, config: PeerConfig, endpoint: bytes = b"") -> Peer:
        """Configure a peer; `endpoint` is a raw sockaddr (``wg.endpoint.sockaddr``) or b""."""
        return self.device.add_peer(config, endpoint)

    def peers_by_key(self, public_key: str | bytes | None) -> list[Peer]:
        """The peer with that key (base64 or raw), or every peer for None. Raises ConfigError
        for a key no peer has."""
        if public_key is None:
            return list(self.device.iter_peers())
        key = parse_key(public_key, what="peer public key") if isinstance(public_key, str) \
            else public_key
        peer = self.device.peers.get(key)     # a dict lookup: O(1) with any number of peers
        if peer is None:
            raise ConfigError(f"no peer with public key {encode_key(key)}")
        return [peer]

    def start(self) -> None:
        """Persistent keepalive: wg sends one as soon as the interface comes up."""
        for peer in self.device.iter_peers():
            if peer.timers.persistent_keepalive and peer.slot.endpoint:
                peer.send_keepalive()

    def rekey(self, public_key: str | bytes | None, now: float, wall: float) -> None:
        """Start a handshake with one peer (None: every peer) now, as REKEY_AFTER_TIME would."""
        for peer in self.peers_by_key(public_key):
            peer.send_handshake_initiation(now, wall, retry=False)

    def zero_key_material(self) -> None:
        """Forget every session key and stop the peers' timers (at close)."""
        for peer in list(self.device.iter_peers()):
            peer.zero_key_material()
            peer.timers.cancel_all()

    # -- packets --------------------------------------------------------------------------------

    def receive_batch(self, rx: PacketBatch, tx: PacketBatch, now: float, wall: float,
                      ping_now: float) -> None:
        """Decrypt a batch of received datagrams, hand the inner packets to the interface
        (ACKs owed go into `tx`) and run the device's control path on the rest."""
        device = self.device
        if device.datapath.decrypt(rx, now):
            if self.capture is not None:
                self.capture(wall, [packet for _, packet, _, _ in rx.collect(RES_DATA)])
            iface = self.iface
            if iface.receive_batch(rx, tx, now):
                iface.receive_other(rx, ping_now)
        device.after_decrypt(rx, now, wall)

    @property
    def has_output(self) -> bool:
        """Whether :meth:`fill` would add anything."""
        return self.device.has_pending() or self.iface.has_output

    def fill(self, tx: PacketBatch, now: float) -> bool:
        """Add the device's datagrams, then the interface's packets, to `tx`. Returns True
        while more is waiting (sealing may queue more: check :attr:`has_output` after it)."""
        device, iface = self.device, self.iface
        if device.has_pending() and tx.count < tx.slots:
            device.fill(tx)
        more = False
        if iface.has_output:
            counters = iface.counters
            too_big = counters["too_big"]
            more = iface.fill(tx, now)
            for _ in range(counters["too_big"] - too_big):
                device.datapath.drop(DROP_TOO_BIG)
        return more or device.has_pending()

    def seal(self, tx: PacketBatch, now: float, wall: float) -> None:
        """Encrypt the batch in place; packets without a session are staged by the device."""
        capture = self.capture
        if capture is None:
            self.device.datapath.encrypt(tx, now)
        else:
            pending = tx.collect(RES_PENDING)   # the inner packets, before sealing overwrites them
            self.device.datapath.encrypt(tx, now)
            results = tx.results()
            sent = [packet for i, packet, _, _ in pending if packet and results[i] == RES_SEALED]
            if sent:
                capture(wall, sent)
        self.device.after_encrypt(tx, now, wall)

    # -- timers and status ----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of the device and the interface, or None."""
        deadline = self.device.get_timer()
        ip_deadline = self.iface.get_timer()
        if ip_deadline is not None and (deadline is None or ip_deadline < deadline):
            return ip_deadline
        return deadline

    def handle_timer(self, now: float, wall: float) -> None:
        """Run what is due in both cores."""
        self.device.handle_timer(now, wall)
        self.iface.handle_timer(now)

    def stats(self, now: float) -> dict[str, Any]:
        """The device's counters and per-peer state, plus the interface's IP and TCP counters."""
        data = self.device.stats(now)
        data.update(self.iface.stats())
        return data
