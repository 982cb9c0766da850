"""Tile geometry of a Gram matrix: which point ranges a tile covers, and how big tiles should be.

A *tile* is the set of point pairs (I, J) for two consecutive point ranges of length ≤ P; it is
P(d0+1) × P(d0+1) entries of the dense Gram (one chunk of the store) or 8 × P × P field values.
Only tiles with I ≤ J are computed; tile (J, I) is the transpose of tile (I, J).
"""

from __future__ import annotations

import math
from typing import Iterator

__all__ = [
    "DEFAULT_TILE_BYTES",
    "n_tiles",
    "tile_range",
    "upper_tiles",
    "tile_bytes",
    "auto_tile_points",
]

# Uncompressed bytes of one tile when the size is chosen automatically: big enough that the
# per-tile overhead (task dispatch, compression setup, one file per chunk) is small, small enough
# that a worker holds a few tiles and their temporaries (~6 tiles' worth) comfortably.
DEFAULT_TILE_BYTES = 16 * 2**20
# Working memory of one tile's computation, in multiples of the tile's own size (measured:
# fields recursion + block expansion + the transposed copy for the mirror chunk).
WORKING_SET_FACTOR = 6


def n_tiles(n_points: int, tile_points: int) -> int:
    """Number of tile rows (= columns) for ``n_points`` split into ranges of ``tile_points``."""
    return -(-n_points // tile_points)


def tile_range(index: int, n_points: int, tile_points: int) -> tuple[int, int]:
    """Point range [start, stop) of tile row ``index`` (the last one may be shorter)."""
    start = index * tile_points
    if not 0 <= start < n_points:
        raise IndexError(f"tile index {index} out of range for {n_points} points "
                         f"in tiles of {tile_points}")
    return start, min(start + tile_points, n_points)


def upper_tiles(count: int) -> Iterator[tuple[int, int]]:
    """Tiles (i, j) with i ≤ j, row by row."""
    for i in range(count):
        for j in range(i, count):
            yield i, j


def tile_bytes(tile_points: int, d0: int, mode: str, itemsize: int) -> int:
    """Uncompressed bytes of one full tile in a ``dense`` or ``fields`` store."""
    per_pair = (d0 + 1) ** 2 if mode == "dense" else 8
    return tile_points * tile_points * per_pair * itemsize


def auto_tile_points(n_points: int, d0: int, mode: str, itemsize: int,
                     target_bytes: int | None = None,
                     memory_bytes: float | None = None) -> int:
    """Points per tile so that a tile is about ``target_bytes`` and its work fits ``memory_bytes``.

    ``memory_bytes`` is the memory one worker may use (GPU memory for a GPU worker); the tile's
    working set (``WORKING_SET_FACTOR`` tiles) must fit into it. Never more than ``n_points``;
    rounded so that the tiles are of nearly equal size (no sliver of a last tile).
    """
    target = float(target_bytes or DEFAULT_TILE_BYTES)
    if memory_bytes is not None:
        target = min(target, float(memory_bytes) / WORKING_SET_FACTOR)
    per_pair = ((d0 + 1) ** 2 if mode == "dense" else 8) * itemsize
    points = max(1, min(n_points, int(math.sqrt(target / per_pair))))
    return -(-n_points // n_tiles(n_points, points))  # same tile count, balanced sizes
