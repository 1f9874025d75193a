"""Our node's UDP endpoints: the WireGuard socket's local addresses and its STUN-seen address.

What a Node advertises in ``endpoints`` (coder-control-plane.md §4.2), as magicsock's
``determineEndpoints`` gathers it: the socket's bound address, or — for a wildcard bind — every
non-loopback interface address with the socket's port (loopback only when asked, as tests
do), plus the address a STUN server saw our binding request come from (the NAT's mapping of
the same socket). :func:`stun_servers` lists the STUN servers of a DERP map.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from .derp import DerpMap
from .disco import Endpoint

__all__ = ["interface_addresses", "local_endpoints", "stun_servers"]

_SIOCGIFADDR = 0x8915
DEFAULT_STUN_PORT = 3478


def interface_addresses(include_loopback: bool = False
                        ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host's interface addresses (IPv4 by ``SIOCGIFADDR``, IPv6 from
    ``/proc/net/if_inet6``), without link-local ones, loopback only on request."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for name in names:
            try:
                raw = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            out.append(ipaddress.IPv4Address(raw[20:24]))
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if fields:
                    out.append(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    except (OSError, ValueError):
        pass
    keep = []
    for ip in out:
        if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
            continue
        if ip.is_loopback and not include_loopback:
            continue
        if ip not in keep:
            keep.append(ip)
    return keep


def local_endpoints(host: str, port: int, *, include_loopback: bool = False) -> list[Endpoint]:
    """The endpoints of a UDP socket bound to ``host:port``: that address, or for a wildcard
    bind (``""``, ``0.0.0.0``, ``::``) every interface address (IPv4 only for ``0.0.0.0``;
    loopback ones only with ``include_loopback``)."""
    ip = ipaddress.ip_address(host.split("%")[0]) if host else ipaddress.IPv6Address("::")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_unspecified:
        return [(ip, port)]                   # bound to one address: that one, whatever it is
    addrs = interface_addresses(include_loopback)
    if ip.version == 4:
        addrs = [a for a in addrs if a.version == 4]
    return [(a, port) for a in addrs]


def stun_servers(derp_map: DerpMap, *, ipv6: bool = True) -> list[tuple[str, int]]:
    """``(host, port)`` of each STUN server of the map's regions: every node whose
    ``STUNPort`` is not −1 (0 means 3478), at its ``IPv4`` address (or ``IPv6``, or its host
    name when neither is set)."""
    out: list[tuple[str, int]] = []
    for region in derp_map.regions.values():
        for node in region.nodes:
            if node.stun_port < 0:
                continue
            port = node.stun_port or DEFAULT_STUN_PORT
            hosts = []
            if node.ipv4 and node.ipv4 != "none":
                hosts.append(node.ipv4)
            if ipv6 and node.ipv6 and node.ipv6 != "none":
                hosts.append(node.ipv6)
            if not hosts and node.host_name:
                hosts.append(node.host_name)
            for host in hosts:
                if (host, port) not in out:
                    out.append((host, port))
    return out
