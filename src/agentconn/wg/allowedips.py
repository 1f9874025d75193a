"""Cryptokey routing: the allowed-IPs table (WireGuard whitepaper §2).

Each network maps to exactly one peer. Sending looks up the destination address to pick a peer;
receiving looks up the decrypted packet's source address and drops the packet unless it maps to
the peer it came from (wireguard.md §9).

Theory of operation: per address family, one ``dict`` per prefix length present, mapping the
network's address shifted right by ``(bits - prefixlen)`` to the peer, plus the list of present
prefix lengths, longest first. A lookup probes those lengths in order and returns at the first
hit, which is the longest matching prefix. There are at most 33 (IPv4) or 129 (IPv6) probes and
in practice a handful (Coder peers own /128s only). Inserting a network that is already present
moves it to the new peer, as ``wg set ... allowed-ips`` does.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, TypeAlias, TypeVar

__all__ = ["AllowedIPs", "Network"]

P = TypeVar("P")

Network: TypeAlias = IPv4Network | IPv6Network
"""A network in the table: what ``ipaddress.ip_network`` returns."""


class _Family(Generic[P]):
    """The table for one address family (``bits`` is 32 or 128)."""

    __slots__ = ("bits", "by_length", "lengths")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, P]] = {}
        self.lengths: list[int] = []  # keys of by_length, longest first

    def insert(self, prefixlen: int, key: int, peer: P) -> None:
        table = self.by_length.get(prefixlen)
        if table is None:
            table = self.by_length[prefixlen] = {}
            self.lengths = sorted(self.by_length, reverse=True)
        table[key] = peer

    def remove(self, prefixlen: int, key: int) -> P | None:
        table = self.by_length.get(prefixlen)
        if table is None or key not in table:
            return None
        peer = table.pop(key)
        if not table:
            del self.by_length[prefixlen]
            self.lengths = sorted(self.by_length, reverse=True)
        return peer

    def discard(self, prefixlen: int, key: int, peer: P) -> bool:
        table = self.by_length.get(prefixlen)
        if table is None or table.get(key) != peer:
            return False
        self.remove(prefixlen, key)
        return True

    def remove_by_peer(self, peer: P) -> int:
        removed = 0
        for prefixlen in list(self.by_length):
            table = self.by_length[prefixlen]
            doomed = [key for key, owner in table.items() if owner == peer]
            for key in doomed:
                del table[key]
            removed += len(doomed)
            if not table:
                del self.by_length[prefixlen]
        self.lengths = sorted(self.by_length, reverse=True)
        return removed

    def lookup(self, value: int) -> P | None:
        bits = self.bits
        by_length = self.by_length
        for prefixlen in self.lengths:
            peer = by_length[prefixlen].get(value >> (bits - prefixlen))
            if peer is not None:
                return peer
        return None


class AllowedIPs(Generic[P]):
    """Longest-prefix-match table from IPv4/IPv6 networks to peers of type ``P``.

    Peers are compared with ``==`` by :meth:`remove_by_peer` and :meth:`entries_for`; they
    must not be ``None``. Not thread-safe; every method is O(number of prefix lengths) or,
    for the whole-table methods, O(entries).
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Family[P] = _Family(32)
        self._v6: _Family[P] = _Family(128)

    def _family(self, network: Network) -> _Family[P]:
        return self._v4 if network.version == 4 else self._v6

    @staticmethod
    def _key(network: Network) -> int:
        return int(network.network_address) >> (network.max_prefixlen - network.prefixlen)

    def insert(self, network: Network, peer: P) -> None:
        """Route *network* to *peer*, replacing any peer it was routed to before.

        Host bits of *network* must already be clear (``ip_network(..., strict=False)`` does
        that). Raises :class:`ValueError` if *peer* is ``None``.
        """
        if peer is None:
            raise ValueError("AllowedIPs.insert: peer must not be None")
        self._family(network).insert(network.prefixlen, self._key(network), peer)

    def remove(self, network: Network) -> P | None:
        """Remove exactly *network* (not its subnets); return the peer it routed to, if any."""
        return self._family(network).remove(network.prefixlen, self._key(network))

    def discard(self, network: Network, peer: P) -> bool:
        """Remove *network* only if it routes to *peer*; return whether it was removed.

        O(1) (plus a re-sort of the prefix lengths if it was the last of its length): what
        removing one peer's own networks needs, without scanning the whole table.
        """
        return self._family(network).discard(network.prefixlen, self._key(network), peer)

    def remove_by_peer(self, peer: P) -> int:
        """Remove every network routed to *peer*; return how many were removed."""
        return self._v4.remove_by_peer(peer) + self._v6.remove_by_peer(peer)

    def lookup(
        self, address: bytes | bytearray | memoryview | IPv4Address | IPv6Address
    ) -> P | None:
        """Return the peer of the longest prefix containing *address*, or ``None``.

        *address* is an ``ipaddress`` address or its packed form (4 or 16 bytes of any
        bytes-like type, as sliced from an IP header). Raises :class:`ValueError` for packed
        addresses of any other length.
        """
        if isinstance(address, (IPv4Address, IPv6Address)):
            family = self._v4 if address.version == 4 else self._v6
            return family.lookup(int(address))
        if len(address) == 4:
            return self._v4.lookup(int.from_bytes(address, "big"))
        if len(address) == 16:
            return self._v6.lookup(int.from_bytes(address, "big"))
        raise ValueError(f"AllowedIPs.lookup: expected 4 or 16 address bytes, got {len(address)}")

    def _all(self) -> list[tuple[Network, P]]:
        result: list[tuple[Network, P]] = []
        for family, cls in ((self._v4, IPv4Network), (self._v6, IPv6Network)):
            for prefixlen, table in family.by_length.items():
                shift = family.bits - prefixlen
                for key, peer in table.items():
                    result.append((cls((key << shift, prefixlen)), peer))
        # Longest prefix first (the order a first-match table needs), then by family and
        # address so the listing is deterministic.
        result.sort(key=lambda e: (-e[0].prefixlen, e[0].version, int(e[0].network_address)))
        return result

    def entries(self) -> list[tuple[Network, P]]:
        """Every ``(network, peer)`` pair, longest prefix first (both families interleaved).

        Scanning this list in order and taking the first network that contains an address
        gives the same answer as :meth:`lookup`.
        """
        return self._all()

    def entries_for(self, peer: P) -> list[Network]:
        """The networks routed to *peer*, in :meth:`entries` order."""
        return [network for network, owner in self._all() if owner == peer]

    def clear(self) -> None:
        """Remove every entry."""
        self._v4 = _Family(32)
        self._v6 = _Family(128)

    def __len__(self) -> int:
        return sum(
            len(table) for family in (self._v4, self._v6) for table in family.by_length.values()
        )
