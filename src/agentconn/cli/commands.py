"""The work behind each CLI subcommand (kept apart from argparse so tests can call it)."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
import time
from typing import Any, Literal

from ..errors import NoRouteError, PingTimeoutError, TunnelClosedError, TunnelError
from ..wg.crypto import dh_generate, public_key
from ..wg.keys import encode_key, parse_key


def genkey() -> str:
    return encode_key(dh_generate())


def pubkey(private_text: str) -> str:
    return encode_key(public_key(parse_key(private_text.strip(), what="private key")))


async def ping(*, config: str, address: str, count: int, interval: float, timeout: float,
               kind: Literal["icmp", "tsmp"], show_stats: bool) -> int:
    """Ping `address` `count` times; exit status 0 if any reply came back, 1 if none."""
    from ..aio.tunnel import Tunnel

    ipaddress.ip_address(address)  # ValueError early, before binding anything
    replies = 0
    rtts: list[float] = []
    async with Tunnel.from_config(config) as tunnel:
        for seq in range(count):
            started = time.monotonic()
            try:
                rtt = await tunnel.ping(address, timeout=timeout, kind=kind)
            except PingTimeoutError as exc:
                print(f"seq={seq}: {exc}", flush=True)
            except NoRouteError as exc:
                print(f"agentconn ping: {exc}", file=sys.stderr)
                return 2
            else:
                replies += 1
                rtts.append(rtt)
                print(f"{kind} reply from {address}: seq={seq} time={rtt * 1000:.3f} ms",
                      flush=True)
            if seq + 1 < count:
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        if show_stats:
            print(json.dumps(tunnel.stats(), indent=2, default=str))
    loss = 100.0 * (count - replies) / count if count else 0.0
    summary = f"--- {address}: {count} sent, {replies} received, {loss:.0f}% loss"
    if rtts:
        summary += (f", rtt min/avg/max = {min(rtts) * 1000:.3f}/"
                    f"{sum(rtts) / len(rtts) * 1000:.3f}/{max(rtts) * 1000:.3f} ms")
    print(summary)
    if not replies:
        print(f"agentconn ping: no replies from {address} "
              f"(is the peer up, its endpoint right, and {address} in its AllowedIPs?)",
              file=sys.stderr)
        return 1
    return 0


def _demo_config(private: bytes, peer_public: bytes, own: str, own6: str, peer: str,
                 peer6: str) -> str:
    return (f"[Interface]\nPrivateKey = {encode_key(private)}\nListenPort = 0\n"
            f"Address = {own}/24, {own6}/64\n\n"
            f"[Peer]\nPublicKey = {encode_key(peer_public)}\n"
            f"AllowedIPs = {peer}/32, {peer6}/128\nPersistentKeepalive = 25\n")


async def _demo_tcp(a: Any, b: Any, megabytes: int, stream: Any = sys.stdout) -> None:
    """B listens on TCP port 4 (the agent's HTTP port in Coder); A sends a line and gets it
    echoed, then streams `megabytes` MB that B hashes; prints the throughput."""
    import hashlib
    import os
    import time

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(line)
        digest, total = hashlib.sha256(), 0
        while chunk := await reader.read(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        writer.write(f"{total} {digest.hexdigest()}\n".encode())
        await writer.drain()
        writer.close()

    server = await b.start_server(serve, 4)
    try:
        start = time.perf_counter()
        reader, writer = await a.open_connection("fd7a:115c:a1e0::2", 4)
        writer.write(b"hello over userspace TCP\n")
        echo = await reader.readline()
        rtt = time.perf_counter() - start
        print(f"A -> B TCP     [fd7a:115c:a1e0::2]:4: connect + echo {rtt * 1e3:.1f} ms: {echo!r}", file=stream)
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        start = time.perf_counter()
        for _ in range(megabytes):
            writer.write(block)
            digest.update(block)
            await writer.drain()
        writer.write_eof()
        total, their = (await reader.readline()).decode().split()
        elapsed = time.perf_counter() - start
        conn = writer.get_extra_info("tcp_connection").counters()
        ok = "sha256 ok" if their == digest.hexdigest() else "SHA256 MISMATCH"
        print(f"A -> B TCP bulk: {int(total) / 1e6:.0f} MB in {elapsed:.2f} s = "
              f"{int(total) * 8 / elapsed / 1e9:.2f} Gbit/s, {ok}; cwnd {conn['cwnd']} B, "
              f"srtt {conn['srtt'] * 1e3:.2f} ms, retransmits {conn['retransmits']}", file=stream)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()


def pair_configs(agent_id: Any, *, listen_port: int | None = None,
                 endpoint: str | None = None) -> tuple[str, str, str]:
    """(agent config, client config, client address) for an agent and one client.

    The agent's addresses come from its UUID (the agent adds them itself); the client gets a
    Coder-prefix /128 from a fresh random UUID. ``listen_port`` goes into the agent's
    config, ``endpoint`` (``host:port``) into the client's, with a 25 s keepalive.
    """
    import uuid as uuid_mod

    from ..proto.ports import CODER_SERVICE_PREFIX, addr_from_uuid, agent_addresses

    aid = uuid_mod.UUID(str(agent_id))
    agent_key, client_key = dh_generate(), dh_generate()
    client_ip = addr_from_uuid(CODER_SERVICE_PREFIX, uuid_mod.uuid4())
    a_ts, a_coder = agent_addresses(aid)
    agent_conf = (f"[Interface]\nPrivateKey = {encode_key(agent_key)}\n"
                  + (f"ListenPort = {listen_port}\n" if listen_port is not None else "")
                  + f"\n[Peer]\nPublicKey = {encode_key(public_key(client_key))}\n"
                  f"AllowedIPs = {client_ip}/128\n")
    client_conf = (f"[Interface]\nPrivateKey = {encode_key(client_key)}\n"
                   f"Address = {client_ip}/128\n\n"
                   f"[Peer]\nPublicKey = {encode_key(public_key(agent_key))}\n"
                   + (f"Endpoint = {endpoint}\nPersistentKeepalive = 25\n" if endpoint else "")
                   + f"AllowedIPs = {a_ts}/128, {a_coder}/128\n")
    return agent_conf, client_conf, str(client_ip)


async def _demo_agent_api(stream: Any = sys.stdout) -> None:
    """An Agent and an AgentConn in this process over their own tunnel: the README snippet
    (list a directory, write, edit and read a file, run a process) against real files."""
    import tempfile
    import uuid
    from pathlib import Path

    from ..agent import Agent, AgentOptions
    from ..aio.tunnel import Tunnel
    from ..client.conn import AgentConn

    agent_id = uuid.UUID("12345678-1234-1234-1234-123456789abc")
    agent_conf, client_conf, _ = pair_configs(agent_id)
    with tempfile.TemporaryDirectory(prefix="agentconn-demo-") as tmp:
        root = Path(tmp)
        for d in ("home", "work", "logs"):
            (root / d).mkdir()
        options = AgentOptions(home=str(root / "home"), directory=str(root / "work"),
                               log_dir=str(root / "logs"))
        agent = Agent(agent_conf, agent_id, options=options, listen_host="127.0.0.1")
        async with agent:
            endpoint = f"Endpoint = 127.0.0.1:{agent.tunnel.listen_port}\n"
            client = Tunnel.from_config(client_conf + endpoint, listen_host="127.0.0.1")
            async with client, AgentConn(client, agent_id) as conn:
                start = time.perf_counter()
                work = str(root / "work")
                await conn.write_file(f"{work}/hello.py", b"print('hello from the agent')\n")
                listing = await conn.ls(work)
                names = [e.name for e in listing.contents]
                print(f"agent {agent_id} at [{conn.agent_address}]:4", file=stream)
                print(f"API ls {work}: {names}", file=stream)
                res = await conn.edit_files({f"{work}/hello.py": [("hello from", "hi from")]},
                                            include_diff=True)
                print("API edit_files diff:\n  " + res.files[0].diff.strip().replace("\n", "\n  "), file=stream)
                text = await conn.read_file_bytes(f"{work}/hello.py")
                print(f"API read_file: {text!r}", file=stream)
                proc = await conn.start_process(f"python3 {work}/hello.py || python {work}/hello.py")
                out = await conn.process_output(proc.id, wait=True)
                print(f"API process {proc.id}: exit {out.exit_code}, output {out.output!r}", file=stream)
                calls = 200
                t0 = time.perf_counter()
                for _ in range(calls):
                    await conn.list_processes()
                each = (time.perf_counter() - t0) / calls
                print(f"API {calls} keep-alive calls: {each * 1e3:.2f} ms each over "
                      f"{conn.connections_opened} TCP connection(s); whole API demo "
                      f"{time.perf_counter() - start:.2f} s", file=stream)


async def demo(*, count: int, as_json: bool, megabytes: int = 64) -> int:
    """Two userspace WireGuard peers in this process, over loopback UDP: pings both ways, then
    TCP (an echo and a bulk transfer) through the userspace TCP/IP stack."""
    from ..aio.tunnel import Tunnel

    # with --json, stdout carries only the JSON document: progress goes to stderr
    stream = sys.stderr if as_json else sys.stdout

    key_a, key_b = dh_generate(), dh_generate()
    conf_a = _demo_config(key_a, public_key(key_b), "100.64.0.1", "fd7a:115c:a1e0::1",
                          "100.64.0.2", "fd7a:115c:a1e0::2")
    conf_b = _demo_config(key_b, public_key(key_a), "100.64.0.2", "fd7a:115c:a1e0::2",
                          "100.64.0.1", "fd7a:115c:a1e0::1")
    async with Tunnel.from_config(conf_a) as a, Tunnel.from_config(conf_b) as b:
        a.set_peer_endpoint(b.public_key, "127.0.0.1", b.listen_port)
        b.set_peer_endpoint(a.public_key, "127.0.0.1", a.listen_port)
        print(f"peer A {a.public_key} on udp/{a.listen_port}, 100.64.0.1 fd7a:115c:a1e0::1", file=stream)
        print(f"peer B {b.public_key} on udp/{b.listen_port}, 100.64.0.2 fd7a:115c:a1e0::2", file=stream)
        for label, src, dst, kind in (("A -> B ICMPv4", a, "100.64.0.2", "icmp"),
                                      ("B -> A ICMPv6", b, "fd7a:115c:a1e0::1", "icmp"),
                                      ("A -> B TSMP  ", a, "fd7a:115c:a1e0::2", "tsmp")):
            rtts = []
            for _ in range(count):
                rtts.append(await src.ping(dst, timeout=5.0, kind=kind))  # type: ignore[arg-type]
            shown = " ".join(f"{r * 1e6:.0f}" for r in rtts)
            print(f"{label} {dst:>18}: rtt µs {shown}", file=stream)
        await _demo_tcp(a, b, megabytes, stream)
        await _demo_agent_api(stream)
        state: dict[str, Any] = {"A": a.stats(), "B": b.stats()}
        if as_json:
            print(json.dumps(state, indent=2, default=str))
        else:
            for name, s in state.items():
                peer = s["peers"][0]
                cur = peer["keypairs"]["current"]
                print(f"{name}: handshakes {s['handshakes']['completed']} completed, "
                      f"rx {s['rx_packets']} pkts/{s['rx_bytes']} B, "
                      f"tx {s['tx_packets']} pkts/{s['tx_bytes']} B, "
                      f"drops {sum(s['drops'].values())}")
                print(f"   current keypair: local {cur['local_index']:#010x} remote "
                      f"{cur['remote_index']:#010x} age {cur['age']:.3f}s initiator "
                      f"{cur['is_initiator']} sent {cur['send_counter']}")
                print(f"   timers (s from now): {peer['timers']}")
                print(f"   endpoint {peer['endpoint']}  udp {s['udp']['gro'] and 'GRO' or '-'}"
                      f"/{s['udp']['gso'] and 'GSO' or '-'}")
    return 0


def pair(*, agent_id: str, out_dir: str, port: int, host: str, force: bool = False) -> int:
    """Write ``agent.conf`` and ``client.conf`` (see :func:`pair_configs`); the agent listens
    on UDP ``port`` and the client reaches it at ``host:port``."""
    import os
    import uuid as uuid_mod

    from ..proto.ports import agent_addresses

    aid = uuid_mod.UUID(agent_id)
    agent_conf, client_conf, client_ip = pair_configs(aid, listen_port=port,
                                                      endpoint=f"{host}:{port}")
    agent_conf = (f"# agentconn agent {aid}: agentconn agent --config agent.conf "
                  f"--agent-id {aid}\n" + agent_conf)
    client_conf = f"# agentconn client for agent {aid}\n" + client_conf
    a_ts, a_coder = agent_addresses(aid)
    if not force:
        for name in ("agent.conf", "client.conf"):
            path = os.path.join(out_dir, name)
            if os.path.lexists(path):
                print(f"agentconn pair: {path} exists (it holds keys); --force overwrites it",
                      file=sys.stderr)
                return 1
    os.makedirs(out_dir, exist_ok=True)
    for name, text in (("agent.conf", agent_conf), ("client.conf", client_conf)):
        path = os.path.join(out_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"wrote {path}")
    print(f"agent address [{a_ts}]:4 (also {a_coder}); client address {client_ip}")
    return 0


async def agent(*, config: str, agent_id: str, directory: str | None, log_dir: str | None,
                manifest: str | None, mcp_config: list[str] | None, desktop: bool = False,
                desktop_geometry: tuple[int, int] = (1920, 1080),
                devcontainers: bool = False) -> int:
    """Run a workspace agent until interrupted."""
    import signal

    from ..agent import Agent, AgentOptions

    if directory is not None and not os.path.isdir(directory):
        print(f"agentconn agent: --directory {directory}: no such directory", file=sys.stderr)
        return 1
    options = AgentOptions(directory=directory, desktop=desktop,
                           desktop_geometry=desktop_geometry, devcontainers=devcontainers)
    if log_dir:
        options.log_dir = log_dir
    manifest_obj = None
    if manifest:
        from pathlib import Path

        manifest_obj = json.loads(Path(manifest).read_bytes())
    ag = Agent(config, agent_id, options=options, manifest=manifest_obj,
               mcp_config_files=mcp_config)
    await ag.start()
    print(f"agentconn agent {ag.agent_id}: API on http://[{ag.address}]:4 "
          f"(udp/{ag.tunnel.listen_port}, public key {ag.tunnel.public_key}); "
          f"log {ag.options.log_dir}/coder-agent.log", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await ag.close()
    return 0


_NS_PER_S = 1_000_000_000
_INT64_MAX = 2**63 - 1


def go_round(ns: int, m: int) -> int:
    """Go ``time.Duration.Round``: ``ns`` to the nearest multiple of ``m``, halves away from
    zero, saturating at the int64 range."""
    if m <= 0:
        return ns
    r = abs(ns) % m  # Go's % truncates toward zero
    if ns < 0:
        out = ns + r if r + r < m else ns - m + r
        return max(out, -_INT64_MAX - 1)
    out = ns - r if r + r < m else ns + m - r
    return min(out, _INT64_MAX)


def _go_frac(v: int, prec: int) -> tuple[str, int]:
    """Go's ``fmtFrac``: the ``prec`` low decimal digits of ``v`` as ``.ddd`` without trailing
    zeros (no point at all when they are all zero), and ``v`` without them."""
    digits = ""
    printed = False
    for _ in range(prec):
        d = v % 10
        printed = printed or d != 0
        if printed:
            digits = str(d) + digits
        v //= 10
    return ("." + digits if printed else ""), v


def go_duration_string(ns: int) -> str:
    """Go ``time.Duration.String`` of ``ns`` nanoseconds: ``0s``, ``1.5µs``, ``42ms``,
    ``1.5s``, ``1m0s``, ``25h1m1.001s``."""
    if ns == 0:
        return "0s"
    u = abs(ns)
    if u < _NS_PER_S:
        prec, unit = (0, "ns") if u < 1_000 else (3, "µs") if u < 1_000_000 else (6, "ms")
        frac, u = _go_frac(u, prec)
        text = f"{u}{frac}{unit}"
    else:
        frac, u = _go_frac(u, 9)
        text = f"{u % 60}{frac}s"
        u //= 60
        if u:
            text = f"{u % 60}m{text}"
            u //= 60
            if u:
                text = f"{u}h{text}"
    return "-" + text if ns < 0 else text


def go_duration(seconds: float) -> str:
    """Go ``d.Round(time.Millisecond).String()`` (``0s``, ``42ms``, ``1.5s``, ``1m2.003s``):
    how `coder ping` prints a round-trip time and the time to a p2p connection."""
    return go_duration_string(go_round(round(seconds * _NS_PER_S), 1_000_000))


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(text: str) -> str:
    """Go's ``%q`` (``strconv.Quote``): double quotes, ``\\n``-style escapes, ``\\xNN`` for other
    ASCII controls (and for bytes that are not UTF-8, as ``surrogateescape`` keeps them),
    ``\\uNNNN``/``\\UNNNNNNNN`` for other non-printable characters."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of argv
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_rtt(seconds: float, *, precise: bool = False) -> str:
    """A round-trip time as `coder ping` prints it: rounded to the millisecond, so anything
    under half a millisecond is ``0s``. ``precise``: Go's unrounded ``Duration.String``
    (``412.345µs``)."""
    if precise:
        return go_duration_string(round(seconds * _NS_PER_S))
    return go_duration(seconds)


def _agent_peer(conn: Any) -> dict[str, Any]:
    return dict(conn.get_peer_diagnostics().get("peer") or {})


def _path(conn: Any, endpoint: str) -> str:
    """``p2p via <endpoint>``, or ``proxied via DERP(<region>)`` for a relay path (as
    `coder ping`)."""
    from .target import relay_region

    if not endpoint.startswith("relay:"):
        return f"p2p via {endpoint or '?'}"
    region = relay_region(conn, endpoint)
    return f"proxied via DERP({region})" if region else "proxied via DERP"


async def ping_agent(conn: Any, *, name: str, quote: bool = False, count: int, interval: float,
                     timeout: float, precise: bool = False, require_pong: bool = False) -> int:
    """``coder ping``-style pings of the agent behind ``conn`` (an open AgentConn), line for
    line as `coder ping` prints them: ``p2p connection established in <d>`` before the first
    direct pong, ``pong from <name> p2p via <endpoint> | proxied via DERP(<region>) in <rtt>``
    per reply (Go ``Duration.Round(time.Millisecond).String()``, so ``0s`` under half a
    millisecond; ``precise``: unrounded, ``412.345µs``), ``ping to "<name>" timed out `` per
    timeout (coder's trailing space included), then the peer diagnostics. ``quote`` puts
    ``name`` in double quotes in the timeout line (`coder ping` does for a workspace name).
    ``count`` ≤ 0 pings until interrupted (as ``coder ping -n 0``).

    Exit status as `coder ping`: 0 once the pings are done, answered or not. ``require_pong``
    (opt-in): 1 when not one ping got a pong."""
    shown = go_quote(name) if quote else name
    replies = 0
    sent = 0
    did_p2p = False
    begun = time.monotonic()
    while count <= 0 or sent < count:
        if sent:
            await asyncio.sleep(interval)  # coder: time.Sleep(pingWait) before each later ping
        sent += 1
        try:
            rtt, _, _ = await conn.ping(timeout=timeout)
        except PingTimeoutError:
            print(f"ping to {shown} timed out ", flush=True)
        except NoRouteError as exc:  # the config does not route the agent: no ping can work
            print(f"agentconn ping: {exc}", file=sys.stderr)
            return 2
        except TunnelClosedError:
            raise
        except TunnelError as exc:  # e.g. no handshake: coder prints it and goes on
            print(f"ping to {shown} failed {exc}", flush=True)
        else:
            replies += 1
            endpoint = _agent_peer(conn).get("endpoint") or ""
            if not did_p2p and not endpoint.startswith("relay:"):
                did_p2p = True  # as `coder ping`, before the first direct pong
                print(f"p2p connection established in {go_duration(time.monotonic() - begun)}",
                      flush=True)
            print(f"pong from {name} {_path(conn, endpoint)} in "
                  f"{format_rtt(rtt, precise=precise)}", flush=True)
    peer = _agent_peer(conn)
    last = peer.get("last_handshake_unix") or 0
    age = f"{time.time() - last:.1f}s ago" if last else "never"
    endpoint = peer.get("endpoint") or ""
    print(f"✔ agent address [{conn.agent_address}] is routed to peer "
          f"{peer.get('public_key', '?')}")
    mark = "✔" if last else "⚠"  # no handshake yet: nothing to tick
    if endpoint.startswith("relay:"):
        print(f"{mark} last WireGuard handshake {age}; {_path(conn, endpoint)} (endpoint "
              f"{endpoint})")
        print("❗ You are connected via a DERP relay, not directly (p2p)")
    else:
        print(f"{mark} last WireGuard handshake {age}; endpoint {endpoint or 'unknown'}; "
              f"direct UDP (no DERP relay)")
    print(f"  rx {peer.get('rx_bytes', 0)} B, tx {peer.get('tx_bytes', 0)} B; "
          f"{replies}/{sent} pongs")
    return 1 if require_pong and not replies else 0
