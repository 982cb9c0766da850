"""Reading a Gram store: attributes, inputs, tiles, any region, a lazy Dask array, an xarray view.

Every read applies the store's λ unless told otherwise (``lam=None`` reads the unscaled kernel
Θ itself, ``lam=0.3`` any other λ), and raises :class:`StoreCorruptError` naming the chunk when a
chunk is corrupt, or missing although its tile is marked done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .. import kernels
from ..kernels import KernelFields
from .attributes import decode_attrs
from .chunks import read_region, with_metadata_errors
from .layout import FORMAT, StoreError, StoreLayout, done_path
from .locations import is_url, location_name, open_group

__all__ = ["GramStore", "open_gram", "STORE_LAM"]

STORE_LAM = "store"  # the default ``lam`` of every read: the λ the store records
Lam = float | None | str


def _as_range(key: Any, size: int) -> tuple[int, int, int, bool]:
    """(start, stop, step, is_int) of an int or slice index along an axis of ``size``."""
    if isinstance(key, (int, np.integer)):
        k = int(key) + (size if key < 0 else 0)
        if not 0 <= k < size:
            raise IndexError(f"index {key} out of range for axis of size {size}")
        return k, k + 1, 1, True
    if isinstance(key, slice):
        start, stop, step = key.indices(size)
        if step < 1:
            raise IndexError("negative slice steps are not supported")
        return start, max(start, stop), step, False
    raise IndexError(f"Gram stores support int and slice indices, got {type(key).__name__}")


class GramStore:
    """Read access to a Gram store: attributes, inputs, tiles, any region, a lazy Dask array.

    Every read returns Θ_λ = ΛΘΛ for the store's λ (:attr:`lam`) by default; ``lam=None`` reads
    the unscaled kernel Θ (what the store holds), ``lam=<float>`` any other λ. A store without a
    recorded λ reads as Θ. In a ``fields`` store every read expands the stored fields with
    :func:`kernels.expand_blocks`.
    """

    def __init__(self, path: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.storage_options = dict(storage_options or {})
        self._where = location_name(path)
        try:
            self.group = with_metadata_errors(self._where, "",
                                              lambda: open_group(path, "r", storage_options))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(f"no Gram store at {self.path}") from None
        self.attrs: dict[str, Any] = decode_attrs(dict(self.group.attrs))
        if self.attrs.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a Zarr group but not a jntk Gram store "
                             f"(attribute format={self.attrs.get('format')!r})")
        if self.attrs.get("creation_complete") is False:
            raise StoreError(f"store {self.path} was interrupted while it was being created (no "
                             "tile is in it); rerun the gram job to create it")
        self.layout = StoreLayout.from_attrs(self.attrs)
        self.format_version = int(self.attrs.get("format_version", 1))
        self.data = self._array(self.layout.data_name)
        self._X: np.ndarray | None = None
        self._done: np.ndarray | None = None

    def _array(self, name: str) -> zarr.Array:
        """A member array; a damaged ``<name>/zarr.json`` raises naming it."""
        return with_metadata_errors(self._where, f"{name}/", lambda: self.group[name])

    def _read(self, name: str, selection: tuple[slice, ...] | None = None,
              array: zarr.Array | None = None) -> np.ndarray:
        """A region of a member array, a bad chunk named (:func:`.chunks.read_region`)."""
        arr = array if array is not None else self._array(name)
        sel = selection or tuple(slice(None) for _ in arr.shape)
        return read_region(self._where, arr, sel, self._tile_done)

    def _tile_done(self, tile: tuple[int, int]) -> bool:
        return bool(self.done_mask(refresh=False)[tile])

    # -- description
    @property
    def config(self) -> dict[str, Any]:
        return self.attrs.get("config", {})

    @property
    def kind(self) -> str:
        return self.attrs["kernel"]

    @property
    def depth(self) -> int:
        return int(self.attrs["depth"])

    @property
    def activation(self) -> str:
        return self.attrs["activation"]

    @property
    def lam(self) -> float | None:
        """The λ of the job's config: every read applies it unless given ``lam=``."""
        return self.attrs.get("lam")

    def resolve_lam(self, lam: Lam = STORE_LAM) -> float | None:
        """The λ a read applies: the store's for ``"store"`` (the default), None for Θ itself."""
        if isinstance(lam, str):
            if lam != STORE_LAM:
                raise ValueError(f"lam must be a number, None (the unscaled Θ) or "
                                 f"{STORE_LAM!r} (the store's λ), got {lam!r}")
            return self.lam
        return None if lam is None else float(lam)

    @property
    def mode(self) -> str:
        return self.layout.mode

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.gram_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.layout.dtype)

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = self._read("X")
        return self._X

    @property
    def y(self) -> np.ndarray:
        return self._read("y")

    @property
    def norms(self) -> np.ndarray:
        return self._read("norms")

    def done_mask(self, refresh: bool = True) -> np.ndarray:
        """(T, T) bool: tile (i, j) present (mirrored, so symmetric).

        ``refresh=False`` reuses the last reading while it shows every tile done (a complete
        store does not change) -- one small read per tile would dominate region reads.
        """
        if refresh or self._done is None or not self._done.all():
            done = self._read("done", array=self._array(done_path(self.format_version)))
            done = done.astype(bool)
            self._done = done | done.T
        return self._done

    def missing_tiles(self) -> list[tuple[int, int]]:
        done = self.done_mask()
        T = self.layout.n_tiles
        return [(i, j) for i in range(T) for j in range(i, T) if not done[i, j]]

    @property
    def is_complete(self) -> bool:
        return not self.missing_tiles()

    def __repr__(self) -> str:
        lay = self.layout
        return (f"GramStore({self.path!r}: {self.kind} depth={self.depth} {self.activation}, "
                f"N={lay.n_points} d0={lay.d0}, {lay.mode}, shape={self.shape}, "
                f"tiles {lay.total_tiles - len(self.missing_tiles())}/{lay.total_tiles})")

    # -- values
    def fields(self, i: int, j: int) -> KernelFields:
        """Stored fields of tile (i, j) (``fields`` stores only)."""
        if self.mode != "fields":
            raise StoreError(f"{self.path} is a dense store; it keeps Gram entries, not fields")
        (a, b), (c, d) = self.layout.points(i), self.layout.points(j)
        return self._fields(a, b, c, d)

    def _fields(self, a: int, b: int, c: int, d: int) -> KernelFields:
        raw = self._read("fields", (slice(None), slice(a, b), slice(c, d)), self.data)
        stacked = torch.from_numpy(np.ascontiguousarray(raw))
        return KernelFields.from_stack(stacked, kind=self.kind, depth=self.depth,
                                       activation=self.activation)

    def _require_done(self, i0: int, i1: int, j0: int, j1: int) -> None:
        mask = self.done_mask(refresh=False)[i0:i1, j0:j1]
        if not mask.all():
            i, j = np.argwhere(~mask)[0]
            raise StoreError(f"tile ({i0 + i}, {j0 + j}) of {self.path} is not computed yet; "
                             "rerun the gram job to complete the store")

    def read(self, rows: slice | int = slice(None), cols: slice | int = slice(None),
             lam: Lam = STORE_LAM, check_done: bool = True) -> np.ndarray:
        """Gram entries ``G[rows, cols]`` (ints or slices) of Θ_λ, λ the store's unless given
        (``lam=None``: the unscaled Θ)."""
        lam = self.resolve_lam(lam)
        p, P = self.layout.block, self.layout.tile_points
        side = self.shape[0]
        r0, r1, rs, r_int = _as_range(rows, side)
        c0, c1, cs, c_int = _as_range(cols, side)
        # widen to whole points: the block (and λ) structure lives on (d0+1)-aligned ranges
        a, b = r0 // p, -(-r1 // p)
        c, d = c0 // p, -(-c1 // p)
        if check_done and b > a and d > c:
            self._require_done(a // P, -(-b // P), c // P, -(-d // P))
        if self.mode == "dense":
            region = self._read("gram", (slice(a * p, b * p), slice(c * p, d * p)), self.data)
            if lam is not None:
                kernels.lambda_scale(region.reshape(b - a, p, d - c, p).transpose(0, 2, 1, 3), lam)
        else:
            f = self._fields(a, b, c, d)
            X = torch.from_numpy(self.X)
            with torch.no_grad():
                blocks = kernels.expand_blocks(f, X[a:b], X[c:d], lam=lam)
            region = kernels.to_gram(blocks).numpy()
        out = region[r0 - a * p:r1 - a * p:rs, c0 - c * p:c1 - c * p:cs]
        if r_int or c_int:
            out = out[0 if r_int else slice(None), 0 if c_int else slice(None)]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return self.read(rows, cols)

    def tile(self, i: int, j: int, lam: Lam = STORE_LAM) -> np.ndarray:
        """Gram tile (i, j) of Θ_λ (λ as for :meth:`read`): rows of tile-row i's points, columns
        of tile-column j's points."""
        p = self.layout.block
        (a, b), (c, d) = self.layout.points(i), self.layout.points(j)
        return self.read(slice(a * p, b * p), slice(c * p, d * p), lam=lam)

    def to_numpy(self, lam: Lam = STORE_LAM) -> np.ndarray:
        """The whole Gram Θ_λ in memory (small N only; λ as for :meth:`read`)."""
        return self.read(lam=lam)

    def dask_array(self, lam: Lam = STORE_LAM, allow_incomplete: bool = False) -> Any:
        """Lazy Dask array of the Gram Θ_λ (λ as for :meth:`read`: the store's by default,
        ``lam=None`` for Θ), one chunk per tile; each task opens the store itself."""
        import dask.array as da
        from dask.base import tokenize

        lam = self.resolve_lam(lam)

        if not allow_incomplete and not self.is_complete:
            raise StoreError(f"{self.path} is incomplete ({len(self.missing_tiles())} tiles "
                             "missing); rerun the gram job or pass allow_incomplete=True")
        rows = self.layout.tile_points * self.layout.block
        source = _GramSource(self.path, self.shape, self.dtype, lam, not allow_incomplete,
                             self.storage_options)
        where = self.path if is_url(self.path) else os.path.realpath(self.path)
        name = "jntk-gram-" + tokenize(where, lam, self.attrs.get("config_hash"),
                                       allow_incomplete)
        return da.from_array(source, chunks=(rows, rows), name=name, lock=False,
                             asarray=False, fancy=False, meta=np.empty((0, 0), self.dtype))


    def to_xarray(self, lam: Lam = STORE_LAM, multiindex: bool = False,
                  allow_incomplete: bool = False) -> Any:
        """A self-describing ``xarray.Dataset``: ``gram`` (Θ_λ as :meth:`dask_array`), X, y,
        norms, coordinates (point, component) of every Gram row and column
        (:func:`.views.to_xarray`)."""
        from .views import to_xarray

        return to_xarray(self, lam=lam, multiindex=multiindex, allow_incomplete=allow_incomplete)

    def read_fields(self, rows: slice, cols: slice) -> np.ndarray:
        """Stored fields (8, rows, cols) of a ``fields`` store, as stored (no λ: fields are
        λ-free), a bad chunk named."""
        return self._read("fields", (slice(None), rows, cols), self.data)


class _GramSource:
    """Array-like over a store for ``dask.array.from_array``: picklable, opens the store lazily."""

    def __init__(self, path: str, shape: tuple[int, int], dtype: np.dtype,
                 lam: float | None, check_done: bool,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.path, self.shape, self.dtype, self.lam = path, shape, dtype, lam
        self.check_done = check_done
        self.storage_options = storage_options
        self.ndim = 2
        self._store: GramStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._store is None:
            self._store = GramStore(self.path, self.storage_options)
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        return self._store.read(rows, cols, lam=self.lam, check_done=False)


def open_gram(path: str | Path, storage_options: dict[str, Any] | None = None) -> GramStore:
    """Open a Gram store for reading: ``open_gram(p).dask_array()`` (Θ_λ with the store's λ;
    ``lam=None`` for the unscaled Θ), ``.tile(i, j)``, ``.read(rows, cols)``, ``.to_xarray()``.

    ``path`` is a local path or an fsspec URL (``storage_options`` go to fsspec, e.g.
    ``{"endpoint_url": …}`` for an S3-compatible service).
    """
    return GramStore(path, storage_options)
