"""The interop harness itself, checked against real software only (no agentconn code).

Topologies (see tests/interop/netns.py and spec/wireguard.md §15):

- wireguard-go ↔ wireguard-go needs TWO namespaces. With both interfaces in one namespace,
  10.78.0.1 and 10.78.0.2 would both be local addresses there, so the kernel would answer a
  ping to the other one itself via `lo` (local routing table) and nothing would cross the
  tunnel. So: namespace A and namespace B, each with one wireguard-go, and the encrypted UDP
  between them either over a veth pair (192.168.241.1 ↔ .2, both ends inside our namespaces)
  or through `UdpRelay`, whose two sockets sit on the loopbacks of A and B (no veth at all).
- our process ↔ wireguard-go: ONE namespace. wireguard-go owns 10.77.0.1 / fd77::1 on its
  TUN; "our" 10.77.0.2 / fd77::2 exist only inside our userspace peer (no kernel interface),
  so there is no local-routing short cut; the encrypted UDP travels over the namespace's
  loopback (127.0.0.1:<wg port>). Our side runs in the namespace via `Namespace.enter()` (or
  `ip netns exec ... python`). Here a minimal test-only WireGuard initiator (below) plays
  "our process" to prove the topology, keys and wg-quick parameters are right.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
import struct
import subprocess
import sys
import time
from base64 import b64decode

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from netns import (
    Faults,
    InteropError,
    Namespace,
    UdpRelay,
    WgPair,
    WireGuardGo,
    genkey,
    leaked_resources,
    netns_inode,
    prerequisites,
    pubkey,
    require_interop,
    veth_pair,
    wg_pair,
)

# ---------------------------------------------------------------------------------------------
# helpers


def _ping(ns: Namespace, addr: str, count: int = 3, interval: float = 0.2) -> int:
    """Ping `addr` from inside `ns`; return the number of replies."""
    r = ns.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "5", addr],
        check=False,
        timeout=60 + count * 5,
    )
    m = re.search(r"(\d+) received", r.stdout)
    assert m, f"unexpected ping output: {r.stdout!r} {r.stderr!r}"
    return int(m.group(1))


def _ip_netns_list() -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _wg_go_pids(iface: str) -> list[int]:
    r = subprocess.run(
        ["pgrep", "-f", f"wireguard-go -f {iface}$"], capture_output=True, text=True, check=False
    )
    return [int(p) for p in r.stdout.split()]


def _two_wireguard_gos(ns_a: Namespace, ns_b: Namespace) -> tuple[WireGuardGo, WireGuardGo]:
    """wireguard-go in each namespace, 10.78.0.1 / fd78::1 in A and .2 / ::2 in B; no peers."""
    wgs = []
    for ns, n in ((ns_a, 1), (ns_b, 2)):
        wg = WireGuardGo(ns).start()
        wg.add_address(f"10.78.0.{n}/24")
        wg.add_address(f"fd78::{n}/64")
        wg.up(1420)
        wgs.append(wg)
    return wgs[0], wgs[1]


# ---------------------------------------------------------------------------------------------
# Namespace


def test_prerequisites_present() -> None:
    assert prerequisites(("ping",)) == []


def test_namespace_kills_its_processes_and_disappears() -> None:
    ns = Namespace()
    with ns:
        assert ns.name in _ip_netns_list()
        assert "UP" in ns.ip("link", "show", "lo").stdout
        proc = ns.popen(["sleep", "600"])
        # a grandchild that escaped our Popen handle: found through `ip netns pids`
        ns.run(["sh", "-c", "sleep 601 >/dev/null 2>&1 &"])
        assert proc.pid in ns.pids()
        assert len(ns.pids()) == 2
    assert proc.poll() is not None
    assert ns.name not in _ip_netns_list()
    assert (
        subprocess.run(["pgrep", "-f", "sleep 601"], capture_output=True, check=False).returncode
        == 1
    )
    ns.close()  # idempotent


def test_namespace_run_reports_failures() -> None:
    with Namespace() as ns:
        with pytest.raises(InteropError, match="exit 3"):
            ns.run(["sh", "-c", "exit 3"])
        assert ns.run(["sh", "-c", "exit 3"], check=False).returncode == 3


_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(b"echo:" + data, addr)
"""


def test_enter_reaches_a_process_in_the_namespace_and_restores(netns: Namespace) -> None:
    server = netns.popen([sys.executable, "-c", _ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    outside = netns_inode()
    assert netns_inode("self") == outside  # we are the main thread

    with netns.enter():
        inside = netns_inode()
        assert inside != outside
        assert inside == os.stat(netns.path).st_ino
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(10)
        s.bind(("127.0.0.1", 0))
        s.sendto(b"hello", ("127.0.0.1", port))
        assert s.recvfrom(2048)[0] == b"echo:hello"

    assert netns_inode() == outside
    assert netns_inode("self") == outside
    try:
        # the socket stays in the namespace it was created in
        s.sendto(b"again", ("127.0.0.1", port))
        assert s.recvfrom(2048)[0] == b"echo:again"
    finally:
        s.close()
    # and a socket created now is in the original namespace: nothing listens on `port` here
    # (unless by chance; then it is someone else's port, not our echo server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
        t.settimeout(0.5)
        t.connect(("127.0.0.1", port))
        t.send(b"outside")
        with pytest.raises((ConnectionRefusedError, TimeoutError)):
            t.recv(2048)


def test_enter_restores_after_an_exception(netns: Namespace) -> None:
    outside = netns_inode()
    with pytest.raises(RuntimeError, match="boom"), netns.enter():
        assert netns_inode() != outside
        raise RuntimeError("boom")
    assert netns_inode() == outside


def test_enter_nests(netns: Namespace) -> None:
    outside = netns_inode()
    with Namespace() as other, netns.enter():
        first = netns_inode()
        with other.enter():
            assert netns_inode() not in (first, outside)
        assert netns_inode() == first
    assert netns_inode() == outside


# ---------------------------------------------------------------------------------------------
# WireGuardGo


def test_wireguard_go_show_and_peer_management(wggo: WireGuardGo) -> None:
    assert wggo.socket_path.exists()
    assert len(wggo.iface) <= 15
    dump = wggo.show("dump")
    assert dump["interface"]["public_key"] == wggo.public_key
    assert dump["interface"]["listen_port"] == wggo.listen_port == wggo.show("listen-port") > 0
    assert dump["peers"] == {}

    peer = pubkey(genkey())
    wggo.set_peer(
        peer,
        allowed_ips=["10.9.0.2/32", "fd09::2/128"],
        endpoint="127.0.0.1:4444",
        preshared_key=genkey(),
        persistent_keepalive=25,
    )
    assert wggo.show("latest-handshakes") == {peer: 0}
    # persistent-keepalive makes wireguard-go initiate at once (to 127.0.0.1:4444 inside the
    # namespace, where nobody listens), so tx may already be 148
    assert wggo.show("transfer")[peer][0] == 0
    assert wggo.show("endpoints") == {peer: "127.0.0.1:4444"}
    assert sorted(wggo.show("allowed-ips")[peer]) == ["10.9.0.2/32", "fd09::2/128"]
    assert wggo.show("persistent-keepalive") == {peer: 25}
    p = wggo.show("dump")["peers"][peer]
    assert p["preshared_key"] is not None and p["latest_handshake"] == 0

    wggo.remove_peer(peer)
    assert wggo.show("dump")["peers"] == {}


def test_wireguard_go_stop_is_idempotent(netns: Namespace) -> None:
    wg = WireGuardGo(netns).start()
    pids = wg.pids()
    assert len(pids) == 1 and pids[0] in netns.pids()
    wg.stop()
    wg.stop()
    assert not wg.socket_path.exists()
    assert wg.pids() == []
    assert _wg_go_pids(wg.iface) == []


def test_wireguard_go_pair_over_veth() -> None:
    require_interop("ping")
    with Namespace("a") as ns_a, Namespace("b") as ns_b:
        veth_pair(ns_a, ns_b, "192.168.241.1/24", "192.168.241.2/24")
        wg_a, wg_b = _two_wireguard_gos(ns_a, ns_b)
        psk = genkey()
        wg_a.set_peer(
            wg_b.public_key,
            allowed_ips=["10.78.0.2/32", "fd78::2/128"],
            endpoint=f"192.168.241.2:{wg_b.listen_port}",
            preshared_key=psk,
        )
        wg_b.set_peer(
            wg_a.public_key,
            allowed_ips=["10.78.0.1/32", "fd78::1/128"],
            endpoint=f"192.168.241.1:{wg_a.listen_port}",
            preshared_key=psk,
        )

        assert _ping(ns_a, "10.78.0.2") == 3
        assert _ping(ns_a, "fd78::2") == 3
        assert _ping(ns_b, "10.78.0.1") == 3

        for wg, other in ((wg_a, wg_b), (wg_b, wg_a)):
            assert wg.show("latest-handshakes")[other.public_key] > 0
            rx, tx = wg.show("transfer")[other.public_key]
            assert rx > 0 and tx > 0
        assert wg_a.show("endpoints")[wg_b.public_key] == f"192.168.241.2:{wg_b.listen_port}"
        names, ifaces = (ns_a.name, ns_b.name), (wg_a.iface, wg_b.iface)

    assert not set(names) & set(_ip_netns_list())
    assert all(_wg_go_pids(i) == [] for i in ifaces)
    assert leaked_resources() == []


def test_wireguard_go_pair_through_relay() -> None:
    require_interop("ping")
    with Namespace("a") as ns_a, Namespace("b") as ns_b:
        wg_a, wg_b = _two_wireguard_gos(ns_a, ns_b)
        # relay socket A on A's loopback (A sends there), socket B on B's loopback
        relay = UdpRelay(
            a_ns=ns_a,
            b_ns=ns_b,
            a_target=("127.0.0.1", wg_a.listen_port),
            b_target=("127.0.0.1", wg_b.listen_port),
            seed=7,
        )
        with relay:
            wg_a.set_peer(
                wg_b.public_key,
                allowed_ips=["10.78.0.2/32", "fd78::2/128"],
                endpoint=UdpRelay.endpoint(relay.a_addr),
            )
            wg_b.set_peer(
                wg_a.public_key,
                allowed_ips=["10.78.0.1/32", "fd78::1/128"],
                endpoint=UdpRelay.endpoint(relay.b_addr),
            )

            assert _ping(ns_a, "10.78.0.2") == 3
            assert _ping(ns_b, "fd78::1") == 3
            assert wg_a.show("latest-handshakes")[wg_b.public_key] > 0
            assert relay.stats["a_to_b"].dropped == relay.stats["b_to_a"].dropped == 0
            assert relay.stats["a_to_b"].sent > 0 and relay.stats["b_to_a"].sent > 0

            # now lossy, duplicating and reordering in both directions: still mostly works
            lossy = Faults(loss=0.15, duplicate=0.1, reorder=0.1)
            relay.a_to_b = lossy
            relay.b_to_a = Faults(loss=0.15, duplicate=0.1, reorder=0.1)
            received = _ping(ns_a, "10.78.0.2", count=30, interval=0.05)
            assert 5 <= received <= 30
            dropped = relay.stats["a_to_b"].dropped + relay.stats["b_to_a"].dropped
            assert dropped > 0
            assert relay.stats["a_to_b"].duplicated + relay.stats["b_to_a"].duplicated > 0
        names = (ns_a.name, ns_b.name)
    assert not set(names) & set(_ip_netns_list())
    assert leaked_resources() == []


# ---------------------------------------------------------------------------------------------
# UdpRelay on its own


def _relay_run(faults: Faults, n: int, seed: int) -> tuple[list[int], UdpRelay]:
    """Send n numbered datagrams A → relay → B (all on a test namespace's loopback); return
    the sequence numbers B received, in order."""
    with Namespace() as ns:
        a, b = ns.socket(), ns.socket()
        try:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            relay = UdpRelay(a_ns=ns, b_ns=ns, b_target=b.getsockname(), a_to_b=faults, seed=seed)
            with relay:
                for i in range(n):
                    a.sendto(struct.pack("!I", i), relay.a_addr)
                    time.sleep(0.001)  # pacing so the relay sees them in order; not asserted
                got = []
                b.settimeout(10)
                # wait until the relay has sent everything it is going to send
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    st = relay.stats["a_to_b"]
                    if st.received == n and st.sent + st.dropped == n + st.duplicated:
                        break
                    time.sleep(0.01)
                st = relay.stats["a_to_b"]
                for _ in range(st.sent):
                    got.append(struct.unpack("!I", b.recv(64))[0])
                # a datagram sent back from B goes to the learned A address
                b.sendto(b"back", relay.b_addr)
                a.settimeout(10)
                assert a.recvfrom(64)[0] == b"back"
        finally:
            a.close()
            b.close()
    return got, relay


def test_relay_without_faults_forwards_everything_in_order() -> None:
    got, _ = _relay_run(Faults(), 100, seed=1)
    assert got == list(range(100))


def test_relay_faults_are_seeded_and_counted() -> None:
    faults = Faults(loss=0.2, duplicate=0.2, reorder=0.2)
    got1, relay1 = _relay_run(faults, 200, seed=42)
    got2, _ = _relay_run(faults, 200, seed=42)
    st = relay1.stats["a_to_b"]
    assert st.dropped > 0 and st.duplicated > 0 and st.reordered > 0
    assert len(got1) == st.sent == 200 - st.dropped + st.duplicated
    assert sorted(set(got1)) == sorted(set(got2))  # same seed, same losses
    assert got1 != sorted(got1)  # reordered or duplicated
    got3, _ = _relay_run(faults, 200, seed=43)
    assert set(got3) != set(got1)


def test_relay_delay_and_filter() -> None:
    got, relay = _relay_run(
        Faults(delay=0.01, jitter=0.02, drop_if=lambda d: d[-1] % 2 == 1), 50, seed=3
    )
    assert sorted(got) == list(range(0, 50, 2))
    assert relay.stats["a_to_b"].delayed == 25


def test_relay_refuses_non_loopback_outside_namespaces() -> None:
    with pytest.raises(ValueError):
        UdpRelay(a_bind=("0.0.0.0", 0))
    with pytest.raises(ValueError):
        UdpRelay(b_target=("192.0.2.1", 51820))


# ---------------------------------------------------------------------------------------------
# our process ↔ wireguard-go, with a minimal test-only WireGuard initiator
#
# Only what is needed to prove the topology (spec/wireguard.md §1-§6): message 1, message 2,
# transport data. No cookies, timers or replay handling.


_C0 = hashlib.blake2s(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s").digest()
_H0 = hashlib.blake2s(_C0 + b"WireGuard v1 zx2c4 Jason@zx2c4.com").digest()


def _h(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _kdf(n: int, key: bytes, data: bytes) -> list[bytes]:
    prk = hmac.new(key, data, hashlib.blake2s).digest()
    out, t = [], b""
    for i in range(1, n + 1):
        t = hmac.new(prk, t + bytes([i]), hashlib.blake2s).digest()
        out.append(t)
    return out


def _nonce(counter: int) -> bytes:
    return b"\0" * 4 + struct.pack("<Q", counter)


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


class _MiniInitiator:
    def __init__(self, pair: WgPair) -> None:
        self.s = X25519PrivateKey.from_private_bytes(b64decode(pair.our_private_key))
        self.s_pub = _raw(self.s.public_key())
        assert self.s_pub == b64decode(pair.our_public_key)
        self.r_pub = b64decode(pair.their_public_key)
        self.psk = b64decode(pair.preshared_key) if pair.preshared_key else b"\0" * 32
        self.index = secrets.randbits(32)
        self.counter = 0

    def initiation(self) -> bytes:
        r = X25519PublicKey.from_public_bytes(self.r_pub)
        self.e = X25519PrivateKey.generate()
        e_pub = _raw(self.e.public_key())
        c, h = _C0, _h(_H0, self.r_pub)
        (c,) = _kdf(1, c, e_pub)
        h = _h(h, e_pub)
        c, k = _kdf(2, c, self.e.exchange(r))
        static = ChaCha20Poly1305(k).encrypt(_nonce(0), self.s_pub, h)
        h = _h(h, static)
        c, k = _kdf(2, c, self.s.exchange(r))
        now = time.time_ns()
        tai = struct.pack(">QI", 0x400000000000000A + now // 10**9, (now % 10**9) & ~0xFFFFFF)
        ts = ChaCha20Poly1305(k).encrypt(_nonce(0), tai, h)
        self.c, self.h = c, _h(h, ts)
        msg = struct.pack("<II", 1, self.index) + e_pub + static + ts
        mac1 = hashlib.blake2s(msg, key=_h(b"mac1----", self.r_pub), digest_size=16).digest()
        return msg + mac1 + b"\0" * 16

    def consume_response(self, msg: bytes) -> None:
        assert len(msg) == 92 and msg[:4] == b"\x02\0\0\0", msg[:4]
        sender, receiver = struct.unpack("<II", msg[4:12])
        assert receiver == self.index
        e_r = msg[12:44]
        e_r_pub = X25519PublicKey.from_public_bytes(e_r)
        (c,) = _kdf(1, self.c, e_r)
        h = _h(self.h, e_r)
        (c,) = _kdf(1, c, self.e.exchange(e_r_pub))
        (c,) = _kdf(1, c, self.s.exchange(e_r_pub))
        c, tau, k = _kdf(3, c, self.psk)
        h = _h(h, tau)
        ChaCha20Poly1305(k).decrypt(_nonce(0), msg[44:60], h)  # raises if wrong
        self.send_key, self.recv_key = _kdf(2, c, b"")
        self.remote_index = sender

    def transport(self, packet: bytes) -> bytes:
        padded = packet + b"\0" * (-len(packet) % 16)
        out = struct.pack("<IIQ", 4, self.remote_index, self.counter)
        out += ChaCha20Poly1305(self.send_key).encrypt(_nonce(self.counter), padded, b"")
        self.counter += 1
        return out

    def open(self, msg: bytes) -> bytes:
        assert msg[:4] == b"\x04\0\0\0"
        receiver, counter = struct.unpack("<IQ", msg[4:16])
        assert receiver == self.index
        return ChaCha20Poly1305(self.recv_key).decrypt(_nonce(counter), msg[16:], b"")


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _icmp_echo(src: str, dst: str, ident: int, payload: bytes) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + payload
        icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0, s.packed, d.packed
        )
        return hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:] + icmp
    icmp = struct.pack("!BBHHH", 128, 0, 0, ident, 1) + payload
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, s.packed, d.packed) + icmp


def _echo_reply_payload(packet: bytes) -> tuple[str, str, bytes]:
    """(src, dst, payload) of an ICMP/ICMPv6 echo reply; asserts that is what it is."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0xF) * 4
        total = struct.unpack("!H", packet[2:4])[0]
        assert packet[9] == 1 and packet[ihl] == 0, "not an ICMP echo reply"
        return (
            str(ipaddress.ip_address(packet[12:16])),
            str(ipaddress.ip_address(packet[16:20])),
            packet[ihl + 8 : total],
        )
    plen = struct.unpack("!H", packet[4:6])[0]
    assert packet[6] == 58 and packet[40] == 129, "not an ICMPv6 echo reply"
    return (
        str(ipaddress.ip_address(packet[8:24])),
        str(ipaddress.ip_address(packet[24:40])),
        packet[48 : 40 + plen],
    )


def _recv_data(sock: socket.socket, peer: _MiniInitiator) -> bytes:
    """Next non-keepalive transport payload (decrypted) from wireguard-go."""
    for _ in range(20):
        msg = sock.recv(65535)
        if msg[:1] == b"\x04" and len(msg) > 32:
            return peer.open(msg)
    raise AssertionError("no data packet from wireguard-go")


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("via_relay", [False, True], ids=["direct", "relay"])
def test_our_process_to_wireguard_go_over_namespace_loopback(
    netns: Namespace, psk: bool, via_relay: bool
) -> None:
    with netns.enter():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        our_port = sock.getsockname()[1]
        pair = wg_pair(netns, our_port=our_port, preshared_key=psk)
        relay = None
        dest = ("127.0.0.1", pair.wg.listen_port)
        if via_relay:  # us → relay.a_addr → wireguard-go; wireguard-go → relay.b_addr → us
            relay = UdpRelay(
                a_ns=netns, b_ns=netns, a_target=("127.0.0.1", our_port), b_target=dest, seed=5
            ).start()
            pair.wg.set_peer(
                pair.our_public_key,
                allowed_ips=["10.77.0.2/32", "fd77::2/128"],
                endpoint=UdpRelay.endpoint(relay.b_addr),
            )
            dest = relay.a_addr

        peer = _MiniInitiator(pair)
        sock.sendto(peer.initiation(), dest)
        peer.consume_response(sock.recv(65535))
        sock.sendto(peer.transport(b""), dest)  # keepalive confirms the session

        for ours, theirs in zip(pair.our_addresses, pair.their_addresses):
            payload = secrets.token_bytes(24)
            sock.sendto(peer.transport(_icmp_echo(ours, theirs, 0x4242, payload)), dest)
            assert _echo_reply_payload(_recv_data(sock, peer)) == (theirs, ours, payload)

        assert pair.wg.show("latest-handshakes")[pair.our_public_key] > 0
        rx, tx = pair.wg.show("transfer")[pair.our_public_key]
        assert rx > 0 and tx > 0
        expected_ep = UdpRelay.endpoint(relay.b_addr) if relay else f"127.0.0.1:{our_port}"
        assert pair.wg.show("endpoints")[pair.our_public_key] == expected_ep
        if relay:
            relay.close()
            assert relay.stats["a_to_b"].sent >= 4 and relay.stats["b_to_a"].sent >= 3
    finally:
        sock.close()


def test_wg_pair_wg_quick_config(wgpair: WgPair) -> None:
    text = wgpair.wg_quick_config()
    assert text.startswith("[Interface]\n")
    assert f"PrivateKey = {wgpair.our_private_key}\n" in text
    assert "Address = 10.77.0.2/32, fd77::2/128\n" in text
    assert f"PublicKey = {wgpair.wg.public_key}\n" in text
    assert f"Endpoint = 127.0.0.1:{wgpair.wg.listen_port}\n" in text
    assert "AllowedIPs = 10.77.0.1/32, fd77::1/128\n" in text
    assert "PresharedKey" not in text
    dump = wgpair.wg.show("dump")
    assert list(dump["peers"]) == [wgpair.our_public_key]
    assert sorted(dump["peers"][wgpair.our_public_key]["allowed_ips"]) == [
        "10.77.0.2/32",
        "fd77::2/128",
    ]
    addrs = wgpair.ns.ip("-o", "addr", "show", "dev", wgpair.wg.iface).stdout
    assert "10.77.0.1/24" in addrs and "fd77::1/64" in addrs
    assert "mtu 1420" in wgpair.ns.ip("link", "show", wgpair.wg.iface).stdout


def test_no_leftovers_after_fixtures(netns: Namespace) -> None:
    # the autouse guard checks after every test; here also explicitly for a closed namespace
    with Namespace() as ns:
        WireGuardGo(ns).start()
    assert ns.name not in _ip_netns_list()
    assert netns.name in _ip_netns_list()
    assert not [r for r in leaked_resources() if not r.startswith(f"namespace {netns.name}")]
