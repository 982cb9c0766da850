"""Field sources: where a kernel operator gets row tiles of the 8 fields.

The 8 arrays in memory (:class:`InMemoryFields`), any (8, n1, n2) array-like read tile by tile
such as a fields-mode Gram store's Zarr array (:class:`ArrayFields`), any object with a
``fields_tile(rows, cols)`` accessor (:class:`AccessorFields`), or :func:`jntk_dist.kernels.fields`
recomputed tile by tile on every product (:class:`RecomputedFields`: bounded memory, any N).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from .. import kernels
from ..kernels import FIELD_NAMES, KernelFields

__all__ = ["FieldSource", "InMemoryFields", "RecomputedFields", "ArrayFields", "AccessorFields"]

Tensor = torch.Tensor


class FieldSource(Protocol):
    """Row tiles of the 8 fields of a kernel between two point sets (n1, n2)."""

    shape: tuple[int, int]

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        """Fields of rows × cols as one (8, r, c) tensor (FIELD_NAMES order)."""

    def diagonal(self) -> Tensor:
        """(8, n) fields of the pairs (x_i, x_i) (square sources only)."""


class InMemoryFields:
    """The 8 fields held as one (8, n1, n2) tensor."""

    def __init__(self, stacked: Any, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        if isinstance(stacked, KernelFields):
            stacked = stacked.stack()
        elif isinstance(stacked, dict):
            stacked = np.stack([np.asarray(stacked[n]) for n in FIELD_NAMES])
        t = torch.as_tensor(stacked).to(dtype=dtype, device=device)
        if t.ndim != 3 or t.shape[0] != len(FIELD_NAMES):
            raise ValueError(f"fields must have shape (8, n1, n2) in order {FIELD_NAMES}, "
                             f"got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("fields contain NaN/inf values")
        self.stacked = t
        self.shape = (t.shape[1], t.shape[2])

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        return self.stacked[:, rows] if cols is None else self.stacked[:, rows, cols]

    def diagonal(self) -> Tensor:
        return torch.diagonal(self.stacked, dim1=1, dim2=2)


class _TiledDiagonal:
    """``diagonal()`` of a tiled field source: (8, n) diagonal fields, read block by block."""

    shape: tuple[int, int]

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        raise NotImplementedError

    def diagonal(self, block: int = 256) -> Tensor:
        parts = []
        for start in range(0, self.shape[0], block):
            sl = slice(start, min(start + block, self.shape[0]))
            parts.append(torch.diagonal(self.tile(sl, sl), dim1=1, dim2=2))
        return torch.cat(parts, dim=1)


class RecomputedFields(_TiledDiagonal):
    """Fields recomputed by :func:`kernels.fields` for each requested tile (nothing is stored).

    ``compile``: the torch.compile'd recursion (None: ``JNTK_COMPILE``); ``fields_dtype``: compute
    the fields in another precision (e.g. float32) and return them in the inputs' dtype."""

    def __init__(self, x1: Tensor, x2: Tensor | None, *, depth: int,
                 activation: str = "gelu", kind: str = "jntk", compile: bool | None = None,
                 fields_dtype: torch.dtype | None = None) -> None:
        self.x1, self.x2 = x1, (x1 if x2 is None else x2)
        self.depth, self.activation, self.kind = depth, activation, kind
        self.compile, self.fields_dtype = compile, fields_dtype
        self.shape = (self.x1.shape[0], self.x2.shape[0])

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        x1, x2 = self.x1[rows], (self.x2 if cols is None else self.x2[cols])
        if self.fields_dtype is not None and self.fields_dtype != x1.dtype:
            f = kernels.fields(x1.to(self.fields_dtype), x2.to(self.fields_dtype),
                               depth=self.depth, activation=self.activation, kind=self.kind,
                               compile=self.compile)  # type: ignore[arg-type]
            return f.stack().to(self.x1.dtype)
        return kernels.fields(x1, x2, depth=self.depth, activation=self.activation,
                              kind=self.kind, compile=self.compile).stack()  # type: ignore[arg-type]



class ArrayFields(_TiledDiagonal):
    """Fields read by slicing any (8, n1, n2) array-like: a Zarr array, ``np.memmap``, HDF5, ….

    Only the requested row tile is read, so a fields store on disk never has to fit in memory.
    """

    def __init__(self, array: Any, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) != 3 or shape[0] != len(FIELD_NAMES):
            raise ValueError(f"fields array must have shape (8, n1, n2) in order {FIELD_NAMES}, "
                             f"got {shape}")
        self.array, self.shape = array, (shape[1], shape[2])
        self.dtype, self.device = dtype, device

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        cols = slice(0, self.shape[1]) if cols is None else cols
        t = torch.as_tensor(np.asarray(self.array[:, rows, cols]))
        t = t.to(dtype=self.dtype, device=self.device)
        if not torch.isfinite(t).all():
            raise ValueError(f"fields rows {rows} contain NaN/inf values (incomplete store?)")
        return t



class AccessorFields(_TiledDiagonal):
    """Adapter for any object with ``fields_tile(rows, cols) -> (8, r, c)`` (e.g. a fields store)."""

    def __init__(self, accessor: Any, shape: tuple[int, int], dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        if not callable(getattr(accessor, "fields_tile", None)):
            raise TypeError(f"{type(accessor).__name__} has no fields_tile(rows, cols) method")
        self.accessor, self.shape = accessor, (int(shape[0]), int(shape[1]))
        self.dtype, self.device = dtype, device

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        cols = slice(0, self.shape[1]) if cols is None else cols
        t = torch.as_tensor(np.asarray(self.accessor.fields_tile(rows, cols)))
        t = t.to(dtype=self.dtype, device=self.device)
        r = len(range(*rows.indices(self.shape[0])))
        c = len(range(*cols.indices(self.shape[1])))
        if tuple(t.shape) != (8, r, c):
            raise ValueError(f"fields_tile({rows}, {cols}) returned shape {tuple(t.shape)}, "
                             f"expected (8, {r}, {c})")
        return t
