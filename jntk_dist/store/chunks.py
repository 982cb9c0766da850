"""Chunks of a store's arrays: their names, which exist, and reads that name a bad chunk.

A Zarr read that meets a corrupt chunk raises an error that names no chunk (a checksum mismatch,
a zstd error); a missing chunk silently reads as the fill value (NaN). :func:`read_region`
turns both into a :class:`StoreCorruptError` that names the chunk (``gram/c/1/2``), the tile it
belongs to and the store, and says what to do.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import numpy as np
import zarr
from zarr.core.sync import sync

from .layout import StoreCorruptError

__all__ = ["chunk_key", "chunk_tile", "stored_chunks", "chunk_exists", "chunks_in",
           "read_chunk", "read_region", "REPAIR_HINT"]

REPAIR_HINT = ("check the whole store with `jntk verify {store}`; `jntk gram CONFIG --repair` "
               "recomputes the bad tiles")
DATA_ARRAYS = ("gram", "fields")


def chunk_key(array: zarr.Array, coords: tuple[int, ...]) -> str:
    """The chunk's key inside the store: ``gram/c/1/2``."""
    return f"{array.path}/{array.metadata.chunk_key_encoding.encode_chunk_key(tuple(coords))}"


def chunk_tile(array: zarr.Array, coords: tuple[int, ...]) -> tuple[int, int] | None:
    """Tile (i ≤ j) whose data a chunk of the ``gram``/``fields`` array holds (its own chunk or
    its mirror), or None for other arrays."""
    if array.basename not in DATA_ARRAYS:
        return None
    r, c = coords[-2:]
    return (min(r, c), max(r, c))


def describe_chunk(array: zarr.Array, coords: tuple[int, ...]) -> str:
    """``chunk gram/c/2/1 (the mirror of tile (1, 2))``, ``chunk X/c/0/0``."""
    tile = chunk_tile(array, coords)
    if tile is None:
        return f"chunk {chunk_key(array, coords)}"
    r, c = coords[-2:]
    what = f"tile {tile}" if r <= c else f"the mirror of tile {tile}"
    return f"chunk {chunk_key(array, coords)} ({what})"


def _fresh(store: Any) -> Any:
    """The store, its file system's listing cache dropped (an fsspec store caches listings per
    file-system instance: a chunk deleted meanwhile would still be listed)."""
    fs = getattr(store, "fs", None)
    if fs is not None and hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    return store


def stored_chunks(array: zarr.Array) -> set[tuple[int, ...]]:
    """Coordinates of the chunks of ``array`` that exist in its store (one listing)."""
    store, prefix = _fresh(array.store_path.store), f"{array.path}/c/"

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    out = set()
    for key in sync(keys()):
        parts = key[len(prefix):].split("/")
        if len(parts) == array.ndim and all(p.isdigit() for p in parts):  # not *.partial files
            out.add(tuple(int(p) for p in parts))
    return out


def chunk_exists(array: zarr.Array, coords: tuple[int, ...]) -> bool:
    """True if the chunk is stored (a missing one reads as the fill value)."""
    return bool(sync(_fresh(array.store_path.store).exists(chunk_key(array, coords))))


def chunks_in(array: zarr.Array, selection: tuple[slice, ...]
              ) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(chunk coordinates, the part of the region ``array[selection]`` it covers) for each chunk
    the region (slices with step 1) overlaps."""
    ranges = []
    for sl, size, chunk in zip(selection, array.shape, array.chunks):
        start, stop, _ = sl.indices(size)
        if stop <= start:
            return
        ranges.append([(k, max(start, k * chunk) - start, min(stop, (k + 1) * chunk) - start)
                       for k in range(start // chunk, (stop - 1) // chunk + 1)])
    for combo in itertools.product(*ranges):
        yield tuple(k for k, _, _ in combo), tuple(slice(a, b) for _, a, b in combo)


def read_chunk(array: zarr.Array, coords: tuple[int, ...]) -> np.ndarray:
    """One whole chunk (clipped at the array's edge) -- raises what Zarr raises for a bad one."""
    return np.asarray(array.blocks[tuple(coords)])


def _first_bad_chunk(array: zarr.Array, selection: tuple[slice, ...]
                     ) -> tuple[tuple[int, ...], Exception] | None:
    for coords, _ in chunks_in(array, selection):
        try:
            read_chunk(array, coords)
        except Exception as err:  # noqa: BLE001 -- any decoding failure names this chunk
            return coords, err
    return None


def corrupt_error(store: str, array: zarr.Array, coords: tuple[int, ...], problem: str
                  ) -> StoreCorruptError:
    """The error for a bad chunk: which chunk, which tile, which store, what to do."""
    return StoreCorruptError(f"{describe_chunk(array, coords)} of store {store} {problem}; "
                             + REPAIR_HINT.format(store=store))


def read_region(store: str, array: zarr.Array, selection: tuple[slice, ...],
                is_done: Callable[[tuple[int, int]], bool] | None = None) -> np.ndarray:
    """``array[selection]`` (slices, step 1), raising :class:`StoreCorruptError` naming the chunk
    when a chunk cannot be decoded (checksum mismatch, codec error) or when a chunk that must be
    there -- any chunk of X/y/norms, a chunk of a tile ``is_done`` says is written -- is missing
    or holds NaN/inf (float arrays). Tiles not done may read as NaN (an incomplete store)."""
    try:
        region = np.asarray(array[selection])
    except Exception as err:
        bad = _first_bad_chunk(array, selection)
        if bad is None:
            raise
        coords, cause = bad
        raise corrupt_error(store, array, coords, f"cannot be read ({type(cause).__name__}: "
                            f"{str(cause)[:160]})") from err
    if region.dtype.kind == "f" and not np.isfinite(region).all():
        _explain_non_finite(store, array, selection, region, is_done)
    return region


def _explain_non_finite(store: str, array: zarr.Array, selection: tuple[slice, ...],
                        region: np.ndarray, is_done: Callable[[tuple[int, int]], bool] | None
                        ) -> None:
    for coords, part in chunks_in(array, selection):
        if np.isfinite(region[part]).all():
            continue
        tile = chunk_tile(array, coords)
        if tile is not None and (is_done is None or not is_done(tile)):
            continue  # not computed yet: NaN is the fill value
        if not chunk_exists(array, coords):
            raise corrupt_error(store, array, coords, "is missing although "
                                + ("its tile is marked done" if tile else "it is always written"))
        raise corrupt_error(store, array, coords, "holds NaN/inf values")


def with_metadata_errors(store: str, where: str, open_: Callable[[], Any]) -> Any:
    """Run ``open_`` (opening a group or array); a truncated or invalid ``zarr.json`` becomes a
    :class:`StoreCorruptError` naming ``<store>/<where>zarr.json``."""
    import json

    try:
        return open_()
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as err:
        raise StoreCorruptError(f"metadata file {store.rstrip('/')}/{where}zarr.json is damaged "
                                f"({type(err).__name__}: {str(err)[:120]}); restore it from a "
                                "copy, or rerun the gram job with --overwrite") from None
