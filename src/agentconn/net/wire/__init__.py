"""Wire formats of the IP layer, smoltcp-style (STYLE §4).

Each module has a *view* over a buffer (checked once on construction, then every accessor is
safe) and a *Repr*, a frozen dataclass with ``parse`` and ``emit``. Parsing rejects every
combination we do not support with :class:`WireError`, so any ``Repr`` that exists can be
emitted. Callers on the receive path catch :class:`WireError` and count a drop; it never
escapes a core (STYLE §7).
"""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(ValueError):
    """Bytes from the network are malformed, truncated or use an unsupported feature."""
