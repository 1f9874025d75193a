"""Our node's advertised endpoints and the DERP map's STUN servers."""
from __future__ import annotations

import ipaddress

from agentconn.coder.derp import DerpMap
from agentconn.coder.netcheck import interface_addresses, local_endpoints, stun_servers


def test_bound_address_is_the_endpoint() -> None:
    assert local_endpoints("127.0.0.1", 41641) == [(ipaddress.ip_address("127.0.0.1"), 41641)]
    assert local_endpoints("::ffff:127.0.0.1", 7) == [(ipaddress.ip_address("127.0.0.1"), 7)]


def test_wildcard_bind_lists_interfaces_without_loopback_unless_asked() -> None:
    plain = local_endpoints("::", 5)
    assert all(not ip.is_loopback and not ip.is_link_local and port == 5 for ip, port in plain)
    with_lo = local_endpoints("0.0.0.0", 5, include_loopback=True)
    assert (ipaddress.ip_address("127.0.0.1"), 5) in with_lo
    assert all(ip.version == 4 for ip, _ in with_lo)
    assert set(interface_addresses()) <= set(interface_addresses(include_loopback=True))


def test_stun_servers_of_a_derp_map() -> None:
    derp_map = DerpMap.from_json({"Regions": {
        "1": {"RegionID": 1, "RegionCode": "a", "Nodes": [
            {"Name": "1a", "RegionID": 1, "HostName": "derp.example", "IPv4": "192.0.2.1",
             "IPv6": "none", "STUNPort": 0},
            {"Name": "1b", "RegionID": 1, "HostName": "derp2.example", "STUNPort": -1}]},
        "2": {"RegionID": 2, "RegionCode": "b", "Nodes": [
            {"Name": "2a", "RegionID": 2, "HostName": "stun.example", "STUNPort": 3479,
             "STUNOnly": True}]}}})
    assert stun_servers(derp_map) == [("192.0.2.1", 3478), ("stun.example", 3479)]
