"""Writing an analysis's arrays and attributes to a Zarr group (local path or URL)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..store.locations import child_location, is_url, open_group

__all__ = ["write_results"]


def write_results(path: str | Path, arrays: dict[str, tuple[np.ndarray, Sequence[str]]],
                  attrs: dict[str, Any], group: str | None = None, overwrite: bool = True,
                  storage_options: dict[str, Any] | None = None) -> Path | str:
    """Write arrays (each with its dimension names, for ``xarray.open_zarr``) and attributes to a
    Zarr group (``path``, or its member ``group``); returns the group's path.

    ``path`` is a local path or an fsspec URL (``storage_options`` go to fsspec)."""
    path = path if is_url(path) else Path(path)
    root = open_group(path, "a", storage_options)
    g = root.require_group(group) if group else root
    for name, (arr, dims) in arrays.items():
        arr = np.asarray(arr)
        if arr.ndim != len(dims):
            raise ValueError(f"array {name!r} has {arr.ndim} dims but names {list(dims)} were given")
        if overwrite and name in g:
            del g[name]
        z = g.create_array(name, shape=arr.shape, dtype=arr.dtype,
                           chunks=arr.shape if arr.size else (1,) * arr.ndim,
                           dimension_names=list(dims))
        z[...] = arr
    g.attrs.update(_jsonable(attrs))
    return child_location(path, group) if group else path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
