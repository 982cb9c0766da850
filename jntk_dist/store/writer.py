"""Creating a Gram store, writing its tiles (data chunk, mirror chunk, then the ``done`` mark),
recording progress, finalising it, and clearing tiles for a repair.

Creation is resumable: the group's first metadata already says ``format: jntk-gram`` with
``creation_complete: false``; the arrays follow, and only then is ``creation_complete`` set. A
store killed (or out of disk) while it was being created is recognised as such
(:func:`store_state` says ``"creating"``) and created again by the next run.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.core.sync import sync

from .. import kernels
from ..kernels import FIELD_NAMES, KernelFields, mirror_stack
from .attributes import array_attrs, array_sha256, decode_attrs, encode_attrs, provenance
from .chunks import chunk_key, with_metadata_errors
from .layout import (FORMAT, FORMAT_VERSION, LAYOUT_DESCRIPTION, StoreError, StoreLayout,
                     done_path, zarr_compressors)
from .locations import open_group, remove_location, store_exists, zarr_target

__all__ = ["is_store", "store_state", "create_store", "done_bitmap_hex", "TileWriter",
           "record_progress", "finalize_store", "clear_tiles", "rewrite_labels",
           "rewrite_inputs", "STORE_MEMBERS"]

X_CACHE_BYTES = 256 * 2**20
# every array and group a jntk store (format 1 or 2) may hold at its root
STORE_MEMBERS = {"X", "y", "norms", "gram", "fields", "done", "tiles", "point", "feature",
                 "field", "point_i", "point_j", "gram_row_point", "gram_row_component",
                 "gram_col_point", "gram_col_component"}


def _open(path: str | Path, mode: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    return with_metadata_errors(str(path), "", lambda: open_group(path, mode, storage_options))


def store_state(path: str | Path, storage_options: dict[str, Any] | None = None) -> str:
    """What is at ``path``: ``"absent"`` (nothing, or an empty folder), ``"foreign"`` (something
    that is not a jntk store), ``"creating"`` (a jntk store whose creation was interrupted: no
    tile was computed in it) or ``"ready"``. A damaged root ``zarr.json`` raises
    :class:`StoreCorruptError` naming it."""
    if not store_exists(path, storage_options):
        return "absent"
    try:
        group = _open(path, "r", storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return "foreign"
    attrs = dict(group.attrs)
    if attrs.get("format") == FORMAT:
        return "creating" if attrs.get("creation_complete") is False else "ready"
    # format 1 wrote its attributes last: a bare group holding only our arrays was cut short
    if not attrs and set(group.keys()) <= STORE_MEMBERS:
        return "creating"
    return "foreign"


def is_store(path: str | Path, storage_options: dict[str, Any] | None = None) -> bool:
    """True if ``path`` (a local path or URL) holds a Zarr group written by this package."""
    try:
        return store_state(path, storage_options) in ("ready", "creating")
    except (ValueError, OSError):
        return False


def _replace(path: str | Path, storage_options: dict[str, Any] | None) -> None:
    """Remove what is at ``path``; a store is first marked as being created, so a run killed
    while deleting it leaves a store the next run recreates, never a half-deleted 'complete' one."""
    if not store_exists(path, storage_options):
        return
    try:
        if store_state(path, storage_options) == "ready":
            _open(path, "r+", storage_options).attrs.update({"creation_complete": False})
    except (ValueError, OSError):
        pass  # damaged or foreign: nothing to mark
    remove_location(path, storage_options)


def create_store(path: str | Path, X: np.ndarray, y: np.ndarray, layout: StoreLayout,
                 attrs: dict[str, Any], compression: dict[str, Any] | None = None,
                 overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Create the group with X, y, norms, coordinates, the (empty, NaN-filled) data array and the
    ``done`` marks; every chunk checksummed (crc32c) unless ``compression`` says
    ``checksum: false``. ``overwrite`` replaces whatever is at ``path``."""
    if overwrite:
        _replace(path, storage_options)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "creation_complete": False,
              **provenance(), "layout": asdict(layout), "layout_description": LAYOUT_DESCRIPTION,
              "field_names": list(FIELD_NAMES), "complete": False,
              "tiles_total": layout.total_tiles, "tiles_done": 0, "completed_tiles": "",
              "X_sha256": array_sha256(X), "y_sha256": array_sha256(y), **attrs}
    group = open_group(path, "w-", storage_options, zarr_format=3,
                       attributes=encode_attrs(header))
    _create_arrays(group, X, y, layout, zarr_compressors(compression), attrs.get("kernel"))
    group.attrs.update({"creation_complete": True})
    return group


def _create_arrays(group: zarr.Group, X: np.ndarray, y: np.ndarray, layout: StoreLayout,
                   compressors: Any, kind: str | None) -> None:
    P, p, T, N = layout.tile_points, layout.block, layout.n_tiles, layout.n_points

    def array(name: str, dims: tuple[str, ...], chunks: tuple[int, ...],
              data: np.ndarray | None = None, shape: tuple[int, ...] | None = None,
              dtype: Any = None, fill_value: Any = None) -> None:
        arr = group.create_array(name, shape=data.shape if data is not None else shape,
                                 dtype=data.dtype if data is not None else dtype, chunks=chunks,
                                 fill_value=fill_value, dimension_names=dims,
                                 compressors=compressors, attributes=array_attrs(name, kind))
        if data is not None:
            arr[...] = data

    array("point", ("point",), (P,), np.arange(N, dtype=np.int64))
    array("feature", ("feature",), (layout.d0,), np.arange(layout.d0, dtype=np.int64))
    array("X", ("point", "feature"), (P, layout.d0), np.asarray(X, dtype=np.float64))
    array("y", ("point",), (P,), np.asarray(y, dtype=np.float64))
    array("norms", ("point",), (P,), np.linalg.norm(X, axis=1))
    if layout.mode == "dense":
        rows = np.arange(N * p, dtype=np.int64)
        for axis in ("row", "col"):
            array(f"gram_{axis}_point", (f"gram_{axis}",), (P * p,), rows // p)
            array(f"gram_{axis}_component", (f"gram_{axis}",), (P * p,), rows % p)
        array("gram", ("gram_row", "gram_col"), (P * p, P * p), shape=layout.gram_shape,
              dtype=layout.dtype, fill_value=np.nan)
    else:
        names = np.array(FIELD_NAMES, dtype=np.dtypes.StringDType())  # Zarr's "string" type
        array("field", ("field",), (len(FIELD_NAMES),), names)
        array("point_i", ("point_i",), (P,), np.arange(N, dtype=np.int64))
        array("point_j", ("point_j",), (P,), np.arange(N, dtype=np.int64))
        array("fields", ("field", "point_i", "point_j"), (len(FIELD_NAMES), P, P),
              shape=(len(FIELD_NAMES), N, N), dtype=layout.dtype, fill_value=np.nan)
    tiles = group.create_group("tiles", attributes={
        "description": "internal bookkeeping of the Gram job (not a result)"})
    tiles.create_array("done", shape=(T, T), chunks=(1, 1), dtype="uint8", fill_value=0,
                       compressors=zarr_compressors({"codec": "none"}),
                       dimension_names=("tile_i", "tile_j"), attributes=array_attrs("done"))


def done_bitmap_hex(done: np.ndarray) -> str:
    """Completed tiles i ≤ j, row by row, as a packed bitmap in hex (the ``completed_tiles`` attr)."""
    upper = done[np.triu_indices(done.shape[0])].astype(bool)
    return np.packbits(upper).tobytes().hex()


def _done_array(group: zarr.Group) -> zarr.Array:
    return group[done_path(int(group.attrs.get("format_version", 1)))]


def record_progress(path: str | Path, layout: StoreLayout, lacking: set[tuple[int, int]],
                    storage_options: dict[str, Any] | None = None) -> None:
    """Refresh the completion attributes from what the driver knows (every tile but ``lacking``
    is written) -- no reads of the ``done`` marks."""
    T = layout.n_tiles
    done = np.triu(np.ones((T, T), dtype=np.uint8))
    for i, j in lacking:
        done[i, j] = 0
    _open(path, "r+", storage_options).attrs.update({
        "tiles_done": layout.total_tiles - len(lacking), "completed_tiles": done_bitmap_hex(done)})


def finalize_store(path: str | Path, storage_options: dict[str, Any] | None = None
                   ) -> tuple[int, int]:
    """Record completion in the attributes from the ``done`` marks and consolidate the metadata
    once every tile is written; returns (tiles done, tiles total)."""
    from .. import __version__

    group = _open(path, "r+", storage_options)
    done = _done_array(group)[...]
    T = done.shape[0]
    n_done = int(done[np.triu_indices(T)].sum())
    total = T * (T + 1) // 2
    group.attrs.update({"tiles_done": n_done, "complete": n_done == total,
                        "completed_tiles": done_bitmap_hex(done),
                        "package_version": __version__})
    if n_done == total:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr notes consolidated metadata is not yet in v3 spec
            zarr.consolidate_metadata(zarr_target(path, storage_options))
    return n_done, total


def clear_tiles(path: str | Path, tiles: list[tuple[int, int]],
                storage_options: dict[str, Any] | None = None) -> None:
    """Forget tiles (i ≤ j) so the next run recomputes exactly them: their ``done`` marks first,
    then their data and mirror chunks (deleted); the store is marked incomplete."""
    group = _open(path, "r+", storage_options)
    layout = StoreLayout.from_attrs(decode_attrs(dict(group.attrs)))
    done, data = _done_array(group), group[layout.data_name]
    group.attrs.update({"complete": False})
    store = data.store_path.store
    for i, j in tiles:
        done[i, j] = 0
        for r, c in {(i, j), (j, i)}:
            coords = (r, c) if layout.mode == "dense" else (0, r, c)
            sync(store.delete(chunk_key(data, coords)))


def rewrite_labels(path: str | Path, y: np.ndarray,
                   storage_options: dict[str, Any] | None = None) -> None:
    """Replace the labels ``y`` (the Gram does not depend on them) and their recorded hash."""
    group = _open(path, "r+", storage_options)
    group["y"][...] = np.asarray(y, dtype=np.float64)
    group.attrs.update({"y_sha256": array_sha256(y)})


def rewrite_inputs(path: str | Path, X: np.ndarray, y: np.ndarray,
                   storage_options: dict[str, Any] | None = None) -> None:
    """Write X, y, norms and the coordinate arrays again (a repair of their chunks)."""
    group = _open(path, "r+", storage_options)
    layout = StoreLayout.from_attrs(decode_attrs(dict(group.attrs)))
    p, N = layout.block, layout.n_points
    values = {"X": X, "y": y, "norms": np.linalg.norm(X, axis=1), "point": np.arange(N),
              "feature": np.arange(layout.d0), "point_i": np.arange(N), "point_j": np.arange(N),
              "gram_row_point": np.arange(N * p) // p, "gram_col_point": np.arange(N * p) // p,
              "gram_row_component": np.arange(N * p) % p,
              "gram_col_component": np.arange(N * p) % p}
    for name, value in values.items():
        if name in group:
            group[name][...] = value


# ---- writing ----------------------------------------------------------------------------


class TileWriter:
    """Writes whole tiles of one store: data chunk, mirror chunk, then the ``done`` mark."""

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.group = _open(path, "r+", storage_options)
        self.layout = StoreLayout.from_attrs(decode_attrs(dict(self.group.attrs)))
        self.data = self.group[self.layout.data_name]
        self.done = _done_array(self.group)
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
            tile = _finite(tile.astype(dtype, copy=False), i, j)
            p = lay.block
            self.data[a * p:b * p, c * p:d * p] = tile
            if i != j:
                self.data[c * p:d * p, a * p:b * p] = tile.T
        else:
            stacked = _finite(f.stack().cpu().numpy().astype(dtype, copy=False), i, j)
            self.data[:, a:b, c:d] = stacked
            if i != j:
                self.data[:, c:d, a:b] = mirror_stack(stacked)
        self.done[i, j] = 1
        return lay.tile_entries(i, j) * (1 if i == j else 2)


def _finite(values: np.ndarray, i: int, j: int) -> np.ndarray:
    """The tile itself, if every entry is finite: a Gram read as NaN then always means a missing
    chunk (the arrays' fill value, which is what ``xarray.open_zarr`` shows for one)."""
    if not np.isfinite(values).all():
        raise StoreError(f"tile ({i}, {j}) is not finite ({int((~np.isfinite(values)).sum())} "
                         "entries): not written; the kernel overflowed or its inputs are not finite")
    return values
