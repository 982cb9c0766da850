"""Gram stores without Ray: layout, tile writer, reader (regions, λ, Dask, xarray), lock."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pickle
import multiprocessing
import numpy as np
import pytest
import torch
import xarray as xr

from jntk_dist import kernels
from jntk_dist.kernels import mirror_stack
from jntk_dist.store import (
    GramStore,
    StoreError,
    StoreLayout,
    StoreLock,
    StoreLockedError,
    TileWriter,
    create_store,
    lock_path,
    open_gram,
)
from jntk_dist.store.tiling import auto_tile_points, n_tiles, tile_range, upper_tiles

DEPTH, ACT = 2, "erf"


def _unit_rows(n: int, d0: int, seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, d0))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _write_store(path: Path, X: np.ndarray, mode: str, P: int, kind: str = "jntk",
                 skip: set[tuple[int, int]] = frozenset(), dtype: str = "float64") -> GramStore:
    """Fill a store tile by tile with TileWriter (what a Ray actor does), skipping ``skip``."""
    n, d0 = X.shape
    layout = StoreLayout(mode=mode, n_points=n, d0=d0, tile_points=P, dtype=dtype)
    create_store(path, X, np.ones(n), layout, {"kernel": kind, "depth": DEPTH,
                                               "activation": ACT, "lam": 0.3})
    writer = TileWriter(path)
    for i, j in upper_tiles(layout.n_tiles):
        if (i, j) in skip:
            continue
        xi = torch.from_numpy(writer.points(i)).to(getattr(torch, dtype))
        xj = torch.from_numpy(writer.points(j)).to(getattr(torch, dtype))
        f = kernels.fields(xi, xj, depth=DEPTH, activation=ACT, kind=kind)
        writer.write(i, j, f, xi, xj)
    return open_gram(path)


def test_tiling_geometry() -> None:
    assert n_tiles(10, 3) == 4 and tile_range(3, 10, 3) == (9, 10)
    assert list(upper_tiles(3)) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    with pytest.raises(IndexError):
        tile_range(4, 10, 3)
    # 16 MiB of float64 12x12 blocks: 120 points, rebalanced to 3 tiles of 81 for 243 points
    assert auto_tile_points(243, 11, "dense", 8) == 81
    # memory for 40-point tiles: 7 tiles of ≤ 35 points
    assert auto_tile_points(243, 11, "dense", 8, memory_bytes=6 * 12 * 12 * 8 * 40**2) == 35
    assert auto_tile_points(5, 3, "fields", 8) == 5


@pytest.mark.parametrize("kind", ["jntk", "nngp"])
def test_dense_tiles_are_the_kernels_tiles(tmp_path: Path, kind: str) -> None:
    X = _unit_rows(11, 3)
    store = _write_store(tmp_path / "g.zarr", X, "dense", P=4, kind=kind)
    fn = kernels.jntk if kind == "jntk" else kernels.jacobian_nngp
    T = store.layout.n_tiles
    for i in range(T):
        for j in range(T):
            (a, b), (c, d) = store.layout.points(i), store.layout.points(j)
            if i <= j:  # computed tiles: exactly what the kernel library returns for that tile
                ref = kernels.to_gram(fn(X[a:b], X[c:d], depth=DEPTH, activation=ACT))
                np.testing.assert_array_equal(store.tile(i, j), ref)
            else:  # mirror tiles: exact transpose of the computed one
                np.testing.assert_array_equal(store.tile(i, j), store.tile(j, i).T)
    full = kernels.gram(X, depth=DEPTH, activation=ACT, kind=kind)
    # one-shot kernels on all of X differ from per-tile calls only by BLAS summation order
    np.testing.assert_allclose(store.to_numpy(), full, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("mode", ["dense", "fields"])
def test_float32_stores(tmp_path: Path, mode: str) -> None:
    X = _unit_rows(9, 3, seed=8)
    store = _write_store(tmp_path / "g.zarr", X, mode, P=4, dtype="float32")
    assert store.dtype == np.float32 and store.data.dtype == np.float32
    X32 = X.astype(np.float32)
    for i, j in upper_tiles(3):
        (a, b), (c, d) = store.layout.points(i), store.layout.points(j)
        ref = kernels.to_gram(kernels.jntk(X32[a:b], X32[c:d], depth=DEPTH, activation=ACT))
        assert ref.dtype == np.float32
        # a fields store expands float32 fields with float64 X (the stored inputs)
        tol = {"rtol": 0, "atol": 0} if mode == "dense" else {"rtol": 1e-5, "atol": 1e-5}
        np.testing.assert_allclose(store.tile(i, j), ref, **tol)
    np.testing.assert_allclose(store.to_numpy(), kernels.gram(X, depth=DEPTH, activation=ACT),
                               rtol=1e-4, atol=1e-5)


def test_fields_store_expands_to_the_same_gram(tmp_path: Path) -> None:
    X = _unit_rows(11, 3, seed=1)
    dense = _write_store(tmp_path / "d.zarr", X, "dense", P=4)
    fields = _write_store(tmp_path / "f.zarr", X, "fields", P=4)
    assert fields.shape == dense.shape == (44, 44)
    for i, j in upper_tiles(3):
        np.testing.assert_array_equal(fields.tile(i, j), dense.tile(i, j))
        (a, b), (c, d) = fields.layout.points(i), fields.layout.points(j)
        ref = kernels.fields(X[a:b], X[c:d], depth=DEPTH, activation=ACT).stack().numpy()
        np.testing.assert_array_equal(fields.fields(i, j).stack().numpy(), ref)
        if i != j:
            np.testing.assert_array_equal(fields.fields(j, i).stack().numpy(), mirror_stack(ref))
    # the lower tiles come from swapped fields; the kernel's symmetry makes them the transpose
    np.testing.assert_allclose(fields.to_numpy(), dense.to_numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(fields.to_numpy(lam=0.1), dense.to_numpy(lam=0.1),
                               rtol=1e-13, atol=1e-14)


def test_mirror_fields_is_the_kernels_symmetry() -> None:
    X1, X2 = _unit_rows(5, 3, seed=2), _unit_rows(4, 3, seed=3)
    f12 = kernels.fields(X1, X2, depth=3, activation="gelu").stack().numpy()
    f21 = kernels.fields(X2, X1, depth=3, activation="gelu").stack().numpy()
    np.testing.assert_allclose(mirror_stack(f12), f21, rtol=1e-12, atol=1e-14)


def test_reader_regions_lambda_and_dask(tmp_path: Path) -> None:
    X = _unit_rows(10, 2, seed=4)
    for mode in ("dense", "fields"):
        store = _write_store(tmp_path / f"{mode}.zarr", X, mode, P=3)
        G = store.to_numpy()
        lam = 0.25
        ref_lam = kernels.to_gram(kernels.lambda_scale(
            kernels.jntk(X, depth=DEPTH, activation=ACT), lam))
        np.testing.assert_allclose(store.to_numpy(lam=lam), ref_lam, rtol=1e-12, atol=1e-13)
        # unaligned regions, steps and integer indices
        np.testing.assert_array_equal(store.read(slice(4, 29, 2), slice(1, 7)), G[4:29:2, 1:7])
        np.testing.assert_array_equal(store[5], G[5])
        np.testing.assert_array_equal(store[3:8, 17], G[3:8, 17])
        scaled = store.to_numpy(lam=lam)
        np.testing.assert_array_equal(store.read(slice(4, 29, 2), slice(1, 7), lam=lam),
                                      scaled[4:29:2, 1:7])
        arr = store.dask_array(lam=lam)
        assert arr.chunks[0] == (9, 9, 9, 3)
        shipped = pickle.loads(pickle.dumps(arr))  # as sent to workers: tasks reopen the store
        np.testing.assert_array_equal(shipped.compute(scheduler="threads"), scaled)
        np.testing.assert_array_equal(arr[2:13, 20:].compute(scheduler="sync"), scaled[2:13, 20:])


def test_incomplete_store_refuses_reads_of_missing_tiles(tmp_path: Path) -> None:
    X = _unit_rows(9, 2, seed=5)
    store = _write_store(tmp_path / "g.zarr", X, "dense", P=3, skip={(0, 2)})
    assert store.missing_tiles() == [(0, 2)] and not store.is_complete
    store.tile(0, 1)
    with pytest.raises(StoreError, match=r"tile \(0, 2\).*not computed"):
        store.tile(0, 2)
    with pytest.raises(StoreError, match=r"tile \(2, 0\).*not computed"):
        store.tile(2, 0)
    with pytest.raises(StoreError, match="incomplete"):
        store.dask_array()
    part = store.dask_array(allow_incomplete=True).compute(scheduler="sync")
    assert np.isnan(part[:9, 18:]).all() and np.isnan(part[18:, :9]).all()
    assert np.isfinite(part[:18, :18]).all()


def test_xarray_sees_labelled_arrays(tmp_path: Path) -> None:
    X = _unit_rows(7, 2, seed=6)
    _write_store(tmp_path / "g.zarr", X, "fields", P=4)
    ds = xr.open_zarr(tmp_path / "g.zarr", consolidated=False)
    assert ds["fields"].dims == ("field", "point_i", "point_j")
    assert ds["X"].dims == ("point", "feature") and ds["y"].dims == ("point",)
    assert ds.attrs["kernel"] == "jntk" and ds.attrs["field_names"][2] == "k_b"
    np.testing.assert_array_equal(ds["norms"].values, np.linalg.norm(X, axis=1))


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_gram(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a jntk Gram store"):
        open_gram(tmp_path / "other.zarr")


def _hold_lock(path: Path, ready: "multiprocessing.synchronize.Event") -> None:
    StoreLock(path).acquire()
    ready.set()
    time.sleep(60)


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    store = tmp_path / "g.zarr"
    ctx = multiprocessing.get_context("fork")  # another process, without a fresh interpreter
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(store, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            StoreLock(store).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert json.loads(lock_path(store).read_text())["pid"] == holder.pid  # left behind
    with caplog.at_level("WARNING"), StoreLock(store):
        assert json.loads(lock_path(store).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and str(holder.pid) in caplog.text
    assert lock_path(store).read_text() == ""  # released
    with StoreLock(store):  # and free again
        time.sleep(0)
