"""Creating a Gram store and writing its tiles: data chunk, mirror chunk, then the ``done`` mark."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .. import __version__, kernels
from ..kernels import FIELD_NAMES, KernelFields, mirror_stack
from .layout import FORMAT, FORMAT_VERSION, LAYOUT_DESCRIPTION, StoreLayout, zarr_compressors
from .locations import open_group

__all__ = ["is_store", "create_store", "done_bitmap_hex", "TileWriter"]

X_CACHE_BYTES = 256 * 2**20


def is_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    """True if ``path`` (a local path or URL) holds a Zarr group written by this package."""
    try:
        group = open_group(path, "r", storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return False
    return group.attrs.get("format") == FORMAT


def create_store(path: str | Path, X: np.ndarray, y: np.ndarray, layout: StoreLayout,
                 attrs: dict[str, Any], compression: dict[str, Any] | None = None,
                 overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Create the group with X, y, norms, the (empty, NaN-filled) data array and ``done``."""
    P, p, T = layout.tile_points, layout.block, layout.n_tiles
    group = open_group(path, "w" if overwrite else "w-", storage_options, zarr_format=3)
    compressors = zarr_compressors(compression)
    for name, data, dims, chunks in (
            ("X", X, ("point", "feature"), (P, layout.d0)),
            ("y", y, ("point",), (P,)),
            ("norms", np.linalg.norm(X, axis=1), ("point",), (P,))):
        arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype="float64",
                                 dimension_names=dims, compressors=compressors)
        arr[...] = data
    if layout.mode == "dense":
        group.create_array("gram", shape=layout.gram_shape, chunks=(P * p, P * p),
                           dtype=layout.dtype, fill_value=np.nan, compressors=compressors,
                           dimension_names=("gram_row", "gram_col"))
    else:
        N = layout.n_points
        group.create_array("fields", shape=(len(FIELD_NAMES), N, N),
                           chunks=(len(FIELD_NAMES), P, P), dtype=layout.dtype,
                           fill_value=np.nan, compressors=compressors,
                           dimension_names=("field", "point_i", "point_j"))
    group.create_array("done", shape=(T, T), chunks=(1, 1), dtype="uint8", fill_value=0,
                       compressors=None, dimension_names=("tile_i", "tile_j"))
    group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "package_version": __version__, "layout": asdict(layout),
                        "layout_description": LAYOUT_DESCRIPTION,
                        "field_names": list(FIELD_NAMES), "complete": False,
                        "tiles_total": layout.total_tiles, "tiles_done": 0,
                        "completed_tiles": "", **attrs})
    return group


def done_bitmap_hex(done: np.ndarray) -> str:
    """Completed tiles i ≤ j, row by row, as a packed bitmap in hex (the ``completed_tiles`` attr)."""
    upper = done[np.triu_indices(done.shape[0])].astype(bool)
    return np.packbits(upper).tobytes().hex()


# ---- writing ----------------------------------------------------------------------------


class TileWriter:
    """Writes whole tiles of one store: data chunk, mirror chunk, then the ``done`` mark."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.group = open_group(path, "r+", storage_options)
        self.layout = StoreLayout.from_attrs(dict(self.group.attrs))
        self.data = self.group[self.layout.data_name]
        self.done = self.group["done"]
        self.X = self.group["X"]
        # X is small next to the Gram (N·d0 vs N²(d0+1)²): keep it in memory unless huge
        self._X_cache = self.X[...] if self.X.nbytes <= X_CACHE_BYTES else None

    def points(self, i: int) -> np.ndarray:
        """Inputs of tile row ``i`` (float64, (≤P, d0))."""
        a, b = self.layout.points(i)
        return self._X_cache[a:b] if self._X_cache is not None else self.X[a:b]

    def write(self, i: int, j: int, f: KernelFields, xi: torch.Tensor, xj: torch.Tensor,
              compile: bool = False) -> int:
        """Store tile (i, j) (i ≤ j) from its fields and its mirror; mark it done; return entries.
        ``compile``: expand dense tiles through the torch.compile'd one-pass expansion."""
        if i > j:
            raise ValueError(f"only tiles on or above the diagonal are written, got ({i}, {j})")
        lay = self.layout
        (a, b), (c, d) = lay.points(i), lay.points(j)
        dtype = np.dtype(lay.dtype)
        if lay.mode == "dense":
            with torch.no_grad():
                tile = kernels.expand_gram(f, xi, xj, compile=compile).cpu().numpy()
            tile = tile.astype(dtype, copy=False)
            p = lay.block
            self.data[a * p:b * p, c * p:d * p] = tile
            if i != j:
                self.data[c * p:d * p, a * p:b * p] = tile.T
        else:
            stacked = f.stack().cpu().numpy().astype(dtype, copy=False)
            self.data[:, a:b, c:d] = stacked
            if i != j:
                self.data[:, c:d, a:b] = mirror_stack(stacked)
        self.done[i, j] = 1
        return lay.tile_entries(i, j) * (1 if i == j else 2)


# ---- lock -------------------------------------------------------------------------------
