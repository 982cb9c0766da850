"""The layout of a Gram store: its format, modes, tiles and compression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zarr

from ..errors import StoreError
from .tiling import n_tiles, tile_range

__all__ = ["FORMAT", "FORMAT_VERSION", "MODES", "LAYOUT_DESCRIPTION", "DONE_PATH", "StoreError",
           "StoreLockedError", "StoreCorruptError", "StoreLayout", "done_path", "zarr_compressors"]

FORMAT = "jntk-gram"
# 1: the first stores (no checksums, ``done`` at the root, nested attributes);
# 2: crc32c on every chunk, ``tiles/done``, coordinate arrays, flat/JSON-string attributes,
#    provenance and the ``creation_complete`` mark. Readers take both.
FORMAT_VERSION = 2
DONE_PATH = "tiles/done"  # format 2; format 1 keeps it at the root as "done"
MODES = ("dense", "fields")
LAYOUT_DESCRIPTION = (
    "point-major: Gram row i*(d0+1)+alpha is point i, component alpha (0 = output, 1..d0 = "
    "input-Jacobian); full symmetric matrix, the tile (J, I) below the diagonal is the exact "
    "transpose of the computed tile (I, J); unscaled kernel (apply lambda when reading)")


class StoreLockedError(StoreError):
    """Another live job holds the store's writer lock."""


class StoreCorruptError(StoreError):
    """A chunk or metadata file of a store is missing, unreadable or fails its checksum; the
    message names it (and the tile it belongs to)."""


def done_path(format_version: int) -> str:
    """Where the ``done`` marks of a store of ``format_version`` live."""
    return "done" if format_version < 2 else DONE_PATH


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


def zarr_compressors(spec: dict[str, Any] | None) -> tuple[Any, ...]:
    """Zarr v3 bytes-to-bytes codecs from ``{"codec": "zstd"|"blosc-zstd"|"blosc-lz4"|"none",
    "level": int, "checksum": bool}``: the compressor, then a crc32c checksum of the compressed
    chunk (``checksum``, default true), so a flipped bit fails the read instead of decoding to
    wrong numbers."""
    spec = spec or {}
    codec, level = spec.get("codec", "zstd"), int(spec.get("level", 1))
    checks = (zarr.codecs.Crc32cCodec(),) if spec.get("checksum", True) else ()
    if codec == "none":
        return checks
    if codec == "zstd":
        return (zarr.codecs.ZstdCodec(level=level), *checks)
    if codec.startswith("blosc-"):
        return (zarr.codecs.BloscCodec(cname=codec.split("-", 1)[1], clevel=level,
                                       shuffle="shuffle"), *checks)
    raise StoreError(f"unknown compression codec {codec!r}; use zstd, blosc-zstd, blosc-lz4 or none")
