"""A read-only, case-insensitive, multi-valued view of HTTP header fields."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

__all__ = ["Headers"]


class Headers(Mapping[str, str]):
    """Header fields with case-insensitive lookup (RFC 9110 §5.1).

    ``headers["content-type"]`` returns the first value; :meth:`get_all` returns every value
    in order. Names and values are decoded as latin-1, the HTTP/1.1 wire charset. ``raw`` keeps
    the (name, value) byte pairs as received, names lower-cased by h11.
    """

    __slots__ = ("_index", "raw")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.raw: list[tuple[bytes, bytes]] = list(raw)
        self._index: dict[str, list[str]] = {}
        for name, value in self.raw:
            self._index.setdefault(name.decode("latin-1").lower(), []).append(
                value.decode("latin-1")
            )

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in the order received (empty when absent)."""
        return list(self._index.get(name.lower(), ()))

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"
