"""The Gram job's side of the store: create it, or check that an existing one is this config's
and resume it (labels rewritten when they changed), or repair it; warnings about inputs that make
the Gram singular; file-system errors as one-line messages.

Used by :mod:`.gram` (the driver); everything here runs under the store's writer lock.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..data import near_parallel_pairs
from ..store import StoreError, StoreLayout, create_store, location_name, open_gram, verify_store
from ..store.attributes import array_sha256
from ..store.writer import clear_tiles, rewrite_inputs, rewrite_labels, store_state
from .config import JobError, KernelSpec, config_diff, config_hash

__all__ = ["IDENTITY_KEYS", "identity_of", "near_parallel_note", "prepare_store",
           "os_error_message"]

log = logging.getLogger(__name__)

# Config keys that define what a store contains; a rerun must agree on all of them.
IDENTITY_KEYS = ("dataset", "kernel", "store", "compression")
REPAIR_SAMPLES = 16  # random entries a --repair recomputes from the kernels (besides every chunk)


class GramStoreConfig(Protocol):
    """What the store's side reads of the Gram job's config (:class:`.gram.GramJobConfig`)."""

    kernel: KernelSpec
    store: str
    tile_points: int | None
    compression: Any  # a pydantic model: model_dump() gives create_store's compression
    storage_options: dict[str, Any]

    def identity(self) -> dict[str, Any]: ...

    def recorded(self) -> dict[str, Any]: ...


def identity_of(config: dict[str, Any]) -> dict[str, Any]:
    """The identity part of a (recorded) config: IDENTITY_KEYS, without the chunk checksum
    setting (it changes no value; a resumed store keeps its own codecs)."""
    identity = {k: config[k] for k in IDENTITY_KEYS if k in config}
    compression = identity.get("compression")
    if isinstance(compression, dict):
        identity["compression"] = {k: v for k, v in compression.items() if k != "checksum"}
    return identity


def near_parallel_note(X: np.ndarray, threshold: float | None, name: str) -> str | None:
    """A warning when pairs of points are duplicates or near-parallel (|cos| > ``threshold``):
    the Gram is then singular, or nearly, by construction. Logged when the job starts."""
    if threshold is None:
        return None
    duplicates, close, examples = near_parallel_pairs(X, threshold)
    if close is None and duplicates == 0:
        log.info("dataset %r: %d points, too many for the near-parallel check (exact duplicates: "
                 "none)", name, X.shape[0])
        return None
    if not duplicates and not close:
        return None
    counted = (f"{close} pair(s) of points are near-parallel (|cos| > {threshold:g}), "
               f"{duplicates} of them exact duplicates" if close is not None
               else f"{duplicates} pair(s) of points are exact duplicates")
    note = (f"dataset {name!r}: {counted}{', e.g. ' if examples else ''}"
            f"{', '.join(map(str, examples))}: the Gram is singular (or nearly) by construction; "
            "a solve needs a ridge (--set ridge=…) or drop such points (data.remove_near_parallel)")
    log.warning("%s", note)
    return note


# file-system errors a rerun can get past once their cause is fixed (not network errors)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.EIO, errno.EMFILE, errno.ENFILE}


def is_storage_error(err: BaseException) -> bool:
    """True for a file-system error (disk full, quota, read-only, permissions, I/O)."""
    return (isinstance(err, OSError) and not isinstance(err, ConnectionError)
            and err.errno in STORAGE_ERRNOS)


def os_error_message(err: OSError, path: Path | str, tile: tuple[int, int] | None = None) -> str:
    """One line for a file-system error while writing a store: what, which file, what to do."""
    where = location_name(path)
    full = err.errno == errno.ENOSPC
    what = "no space left on device" if full else (err.strerror or type(err).__name__)
    target = f"tile {tile} of store {where}" if tile is not None else f"store {where}"
    file = f" (file {err.filename})" if err.filename else ""
    fix = "free space on that file system" if full else "fix the cause"
    return (f"{what} while writing {target}{file}; {fix} and rerun the same command: the store "
            "resumes where it stopped")


def prepare_store(path: Path | str, config: GramStoreConfig, X: np.ndarray, y: np.ndarray,
                  name: str, overwrite: bool, repair: bool,
                  choose_tile_points: Callable[[int, int], int]
                  ) -> tuple[StoreLayout, list[str], list[tuple[int, int]]]:
    """Create the store, or check and resume (or ``repair``) an existing one; returns its
    layout, notes for the summary and the tiles a repair cleared."""
    options = config.storage_options
    state = store_state(path, options)
    if state == "foreign" and not overwrite:
        raise StoreError(f"{path} exists and is not a jntk Gram store; choose another output or "
                         "pass --overwrite")
    if state == "ready" and not overwrite:
        layout, notes = _check_existing(path, config, X, y)
        repaired = _repair(path, config, X, y, notes) if repair else []
        return layout, notes, repaired
    notes = []
    if state == "creating" and not overwrite:
        notes.append(f"store {path} had been interrupted while it was being created (no tile "
                     "was in it): created again")
        log.warning("%s", notes[-1])
    layout = _create(path, config, X, y, name, state != "absent", choose_tile_points)
    return layout, notes, []


def _check_existing(path: Path | str, config: GramStoreConfig, X: np.ndarray, y: np.ndarray
                    ) -> tuple[StoreLayout, list[str]]:
    """Refuse a store written by another config or dataset; rewrite changed labels (the Gram
    does not depend on them, with a note); return its layout to resume."""
    store = open_gram(path, config.storage_options)
    diff = config_diff(identity_of(store.attrs.get("identity", {})), config.identity())
    if diff:
        raise StoreError(f"store {path} was written by a different config: " + "; ".join(diff)
                         + ". Use --overwrite to replace it, or choose another output")
    lay = store.layout
    if config.tile_points is not None and config.tile_points != lay.tile_points:
        raise StoreError(f"store {path} has tile_points={lay.tile_points} but the config asks "
                         f"for {config.tile_points}; use --overwrite to re-tile it")
    x_hash = store.attrs.get("X_sha256")  # format 2; format 1 stores compare the arrays
    same_x = (x_hash == array_sha256(X) if x_hash else
              store.X.shape == X.shape and bool(np.array_equal(store.X, X)))
    if (lay.n_points, lay.d0) != X.shape or not same_x:
        raise StoreError(f"store {path} holds different inputs X (N={lay.n_points}, "
                         f"d0={lay.d0}) than the dataset (shape {X.shape}); use --overwrite to "
                         "replace it")
    y_hash = store.attrs.get("y_sha256")
    if (y_hash == array_sha256(y)) if y_hash else bool(np.array_equal(store.y, y)):
        return lay, []
    try:
        changed = f"{int(np.sum(store.y != y))} of {y.size}"
    except StoreError:
        changed = "some (the stored y is damaged)"
    note = (f"labels y of store {path} differ from the dataset's ({changed} labels): y rewritten "
            "(the Gram does not depend on the labels; results computed from the old y are stale)")
    log.warning("%s", note)
    rewrite_labels(path, y, config.storage_options)
    return lay, [note]


def _repair(path: Path | str, config: GramStoreConfig, X: np.ndarray, y: np.ndarray,
            notes: list[str]) -> list[tuple[int, int]]:
    """Verify every chunk; rewrite bad input chunks from the dataset; clear the bad tiles so
    this run recomputes exactly them."""
    options = config.storage_options
    report = verify_store(path, options, samples=REPAIR_SAMPLES)
    for bad in report.bad:
        log.warning("repair: %s", bad.describe())
    if report.bad_inputs:
        rewrite_inputs(path, X, y, options)
        notes.append(f"repair: rewrote {', '.join(report.bad_inputs)} from the dataset")
    if report.bad_tiles:
        clear_tiles(path, report.bad_tiles, options)
        notes.append(f"repair: recomputing {len(report.bad_tiles)} bad tile(s) "
                     + ", ".join(map(str, report.bad_tiles)))
    if report.ok:
        notes.append(f"repair: every chunk verified ({report.chunks_checked} chunks, "
                     f"{report.samples} entries recomputed): nothing to repair")
    return report.bad_tiles


def _create(path: Path | str, config: GramStoreConfig, X: np.ndarray, y: np.ndarray, name: str,
            overwrite: bool, choose_tile_points: Callable[[int, int], int]) -> StoreLayout:
    n, d0 = X.shape
    points = (min(config.tile_points, n) if config.tile_points is not None
              else choose_tile_points(n, d0))
    layout = StoreLayout(mode=config.store, n_points=n, d0=d0, tile_points=points,
                         dtype=config.kernel.dtype)
    k = config.kernel
    identity = config.identity()
    attrs = {"config": config.recorded(), "identity": identity,
             "config_hash": config_hash(identity), "dataset": name, "kernel": k.kind,
             "activation": k.activation, "depth": k.depth, "lam": k.lam, "dtype": k.dtype}
    create_store(path, X, y, layout, attrs, config.compression.model_dump(), overwrite=overwrite,
                 storage_options=config.storage_options)
    log.info("created %s store %s: N=%d, d0=%d, %d points per tile, %d tiles", config.store,
             path, n, d0, points, layout.total_tiles)
    return layout


def raise_for_worker_error(err: Exception, path: Path | str,
                           tile: tuple[int, int] | None = None) -> None:
    """A remote error of the pool as a one-line :class:`JobError` when its cause is memory (Ray's
    memory monitor killed a worker) or the file system (disk full, permissions); anything else
    is left to propagate unchanged."""
    import ray

    where = f"tile {tile} of store {location_name(path)}" if tile else \
        f"the workers of store {location_name(path)}"
    text = str(err)
    if isinstance(err, ray.exceptions.OutOfMemoryError) or "running low on memory" in text:
        first = next((line for line in text.splitlines() if "memory" in line), "")[:240]
        raise JobError(f"{where}: Ray's memory monitor killed a worker ({first}); lower "
                       "tile_points (or tile_bytes) or ray.num_actors, or give the workers "
                       "more memory, and rerun the same command: the store resumes") from None
    cause = getattr(err, "cause", None)
    if isinstance(cause, OSError) and is_storage_error(cause):
        raise JobError(os_error_message(cause, path, tile)) from None
    if isinstance(cause, MemoryError):
        raise JobError(f"{where}: the worker ran out of memory; lower tile_points (or "
                       "tile_bytes) and rerun the same command: the store resumes") from None
