"""Chunked matrices as Dask arrays and where their tasks run.

Everything that reads a Gram takes a *matrix-like* input: a numpy array, a ``dask.array.Array``,
a ``zarr.Array`` or a path to a Zarr array. Zarr inputs are read by tasks that open the store
themselves (:func:`zarr_to_dask`), which is what Ray's Dask scheduler needs (it cannot ship
``da.from_zarr`` arrays of Zarr 3). :func:`scheduler` runs ``dask.compute`` on an active
distributed client, on the Ray cluster when Ray is initialised, or on Dask's threads.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Literal

import dask
import dask.array as da
import numpy as np

__all__ = ["MatrixLike", "SchedulerName", "DEFAULT_BLOCK", "as_dask", "zarr_to_dask",
           "check_square", "scheduler"]

MatrixLike = Any  # np.ndarray | da.Array | zarr.Array | str | os.PathLike
SchedulerName = Literal["auto", "ray", "threads", "sync", "processes", "distributed"]
DEFAULT_BLOCK = 2048


def _read_zarr_block(path: str, array: str | None, block_info: dict | None = None) -> np.ndarray:
    """Open the Zarr array inside the task and read the block this task is responsible for."""
    import zarr

    z = zarr.open_array(path, mode="r") if array is None else zarr.open_group(path, mode="r")[array]
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return np.asarray(z[r0:r1, c0:c1], dtype=np.float64)


def zarr_to_dask(path: str | os.PathLike, array: str | None = None,
                 chunks: int | tuple | None = None) -> da.Array:
    """A lazy float64 dask array over a 2-D Zarr array whose tasks open the store themselves.

    ``path`` is a Zarr array, or a group when ``array`` names a member. ``chunks`` defaults to the
    Zarr chunking (so each task reads whole stored chunks).
    """
    import zarr

    path = str(path)
    try:
        z = zarr.open_array(path, mode="r") if array is None else zarr.open_group(path, mode="r")[array]
    except Exception as err:  # noqa: BLE001 - re-raised with the path named
        raise FileNotFoundError(f"cannot open Zarr array {path!r}"
                                + (f" member {array!r}" if array else "") + f": {err}") from err
    if z.ndim != 2:
        raise ValueError(f"Zarr array {path!r} has shape {z.shape}; a 2-D matrix was expected")
    chunks = z.chunks if chunks is None else chunks
    template = da.empty(z.shape, chunks=chunks, dtype=np.float64)
    return da.map_blocks(_read_zarr_block, path, array, chunks=template.chunks, dtype=np.float64,
                         meta=np.empty((0, 0), dtype=np.float64),
                         name=f"zarr-read-{dask.base.tokenize(path, array, template.chunks)}")


def as_dask(matrix: MatrixLike, chunks: int | tuple | None = None) -> da.Array:
    """Any matrix-like input as a float64 dask array (Zarr paths are read inside tasks)."""
    if isinstance(matrix, (str, os.PathLike)):
        return zarr_to_dask(matrix, chunks=chunks)
    if type(matrix).__module__.startswith("zarr"):
        store_path = getattr(getattr(matrix, "store_path", None), "store", None)
        root = getattr(store_path, "root", None)
        if root is None:  # in-memory Zarr: read through dask's own reader
            return da.from_array(matrix, chunks=chunks or matrix.chunks).astype(np.float64)
        name = matrix.path or None
        return zarr_to_dask(str(root), array=name, chunks=chunks) if name is None else \
            zarr_to_dask(str(Path(root) / name), chunks=chunks)
    if isinstance(matrix, da.Array):
        out = matrix.astype(np.float64)
        return out.rechunk(chunks) if chunks is not None else out
    arr = np.asarray(matrix, dtype=np.float64)
    return da.from_array(arr, chunks=chunks if chunks is not None else DEFAULT_BLOCK)


def check_square(a: da.Array, what: str = "matrix") -> int:
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be square, got shape {a.shape}")
    return int(a.shape[0])


# ---- schedulers -------------------------------------------------------------------------


def _distributed_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def scheduler(name: SchedulerName = "auto") -> Iterator[str]:
    """Context in which ``dask.compute`` runs where the caller wants it; yields the choice.

    ``auto``: an active Dask distributed client, else the Ray cluster when ``ray.is_initialized()``,
    else Dask's threads.
    """
    if name == "auto":
        if _distributed_client() is not None:
            name = "distributed"
        else:
            try:
                import ray

                name = "ray" if ray.is_initialized() else "threads"
            except ImportError:
                name = "threads"
    if name == "distributed":
        if _distributed_client() is None:
            raise ValueError("scheduler='distributed' needs an active dask.distributed Client")
        yield name
    elif name == "ray":
        from ray.util.dask import ray_dask_get

        with dask.config.set(scheduler=ray_dask_get):
            yield name
    elif name in ("threads", "sync", "processes"):
        with dask.config.set(scheduler=name):
            yield name
    else:
        raise ValueError(f"scheduler must be one of auto, ray, threads, sync, processes, "
                         f"distributed; got {name!r}")
