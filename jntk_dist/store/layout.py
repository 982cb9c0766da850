"""The layout of a Gram store: its format, modes, tiles and compression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zarr

from .tiling import n_tiles, tile_range

__all__ = ["FORMAT", "FORMAT_VERSION", "MODES", "LAYOUT_DESCRIPTION", "StoreError",
           "StoreLockedError", "StoreLayout", "zarr_compressors"]

FORMAT = "jntk-gram"
FORMAT_VERSION = 1
MODES = ("dense", "fields")
LAYOUT_DESCRIPTION = (
    "point-major: Gram row i*(d0+1)+alpha is point i, component alpha (0 = output, 1..d0 = "
    "input-Jacobian); full symmetric matrix, the tile (J, I) below the diagonal is the exact "
    "transpose of the computed tile (I, J); unscaled kernel (apply lambda when reading)")


class StoreError(ValueError):
    """A store that cannot be used as asked (written by another config, not a Gram store, …)."""


class StoreLockedError(StoreError):
    """Another live job holds the store's writer lock."""


# ---- layout -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a store: mode, N points of d0 features, P points per tile, value dtype."""

    mode: str
    n_points: int
    d0: int
    tile_points: int
    dtype: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise StoreError(f"store mode must be one of {MODES}, got {self.mode!r}")
        if self.tile_points < 1:
            raise StoreError(f"tile_points must be ≥ 1, got {self.tile_points}")

    @property
    def block(self) -> int:
        """Entries per point along one Gram axis: d0 + 1."""
        return self.d0 + 1

    @property
    def n_tiles(self) -> int:
        return n_tiles(self.n_points, self.tile_points)

    @property
    def gram_shape(self) -> tuple[int, int]:
        side = self.n_points * self.block
        return side, side

    @property
    def data_name(self) -> str:
        return "gram" if self.mode == "dense" else "fields"

    def points(self, index: int) -> tuple[int, int]:
        """Point range [start, stop) of tile row ``index``."""
        return tile_range(index, self.n_points, self.tile_points)

    def tile_entries(self, i: int, j: int) -> int:
        """Dense Gram entries of tile (i, j) (not counting its mirror)."""
        (a, b), (c, d) = self.points(i), self.points(j)
        return (b - a) * (d - c) * self.block ** 2

    @property
    def total_tiles(self) -> int:
        """Tiles on or above the diagonal."""
        return self.n_tiles * (self.n_tiles + 1) // 2

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "StoreLayout":
        return cls(**attrs["layout"])


def zarr_compressors(spec: dict[str, Any] | None) -> Any:
    """Zarr v3 compressor list from ``{"codec": "zstd"|"blosc-zstd"|"blosc-lz4"|"none", "level": int}``."""
    spec = spec or {"codec": "zstd", "level": 1}
    codec, level = spec.get("codec", "zstd"), int(spec.get("level", 1))
    if codec == "none":
        return None
    if codec == "zstd":
        return zarr.codecs.ZstdCodec(level=level)
    if codec.startswith("blosc-"):
        return zarr.codecs.BloscCodec(cname=codec.split("-", 1)[1], clevel=level, shuffle="shuffle")
    raise StoreError(f"unknown compression codec {codec!r}; use zstd, blosc-zstd, blosc-lz4 or none")
