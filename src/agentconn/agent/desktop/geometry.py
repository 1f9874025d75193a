"""Declared ↔ native desktop coordinates (agent-api.md §11.2).

A caller may describe the screen at a size of its choosing (``scaled_width`` ×
``scaled_height``, the "declared" size, e.g. what a model was shown); the desktop has its own
"native" size. Input coordinates map declared → native per axis with

    round(clamp((c + 0.5) · native / declared − 0.5, 0, native − 1))

(pixel centres line up), output coordinates (``cursor_position``) with the same formula the
other way, and equal sizes only clamp to ``[0, size − 1]``. ``round`` is Go's ``math.Round``:
halves go away from zero. Python's ``round()`` rounds halves to even and would be wrong here:
at exactly 2× every coordinate is a tie (declared 640×360 → native 1280×720 maps (100, 50) to
(201, 101), not (200, 100)).
"""

from __future__ import annotations

import math

__all__ = ["declared_size", "go_round", "to_declared", "to_native"]


def go_round(x: float) -> int:
    """Go's ``math.Round``: the nearest integer, halves away from zero (exact for floats)."""
    t = math.trunc(x)
    if abs(x - t) >= 0.5:  # x - trunc(x) is exact in binary floating point
        t += 1 if x > 0 else -1
    return int(t)


def declared_size(native: tuple[int, int], scaled_width: int | None,
                  scaled_height: int | None) -> tuple[int, int]:
    """The declared size: each of ``scaled_width``/``scaled_height`` when given and > 0,
    else that axis of the native size."""
    width = scaled_width if scaled_width is not None and scaled_width > 0 else native[0]
    height = scaled_height if scaled_height is not None and scaled_height > 0 else native[1]
    return width, height


def _map_axis(c: int, source: int, target: int) -> int:
    if source == target:
        return min(max(c, 0), target - 1)
    scaled = (c + 0.5) * target / source - 0.5
    return go_round(min(max(scaled, 0.0), float(target - 1)))


def to_native(point: tuple[int, int], declared: tuple[int, int],
              native: tuple[int, int]) -> tuple[int, int]:
    """Map a point given in declared space to the native desktop (clamped on screen)."""
    return (_map_axis(point[0], declared[0], native[0]),
            _map_axis(point[1], declared[1], native[1]))


def to_declared(point: tuple[int, int], declared: tuple[int, int],
                native: tuple[int, int]) -> tuple[int, int]:
    """Map a native desktop point into declared space (the inverse formula)."""
    return (_map_axis(point[0], native[0], declared[0]),
            _map_axis(point[1], native[1], declared[1]))
