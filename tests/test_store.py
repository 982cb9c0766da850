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
import zarr

from jntk_dist import kernels
from jntk_dist.kernels import mirror_stack
from jntk_dist.store import (
    GramStore,
    StoreError,
    StoreLayout,
    StoreLockedError,
    TileWriter,
    create_store,
    open_gram,
)
from jntk_dist.store.locks import StoreLock, lock_path
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
                np.testing.assert_array_equal(store.tile(i, j, lam=None), ref)  # Θ as stored
            else:  # mirror tiles: exact transpose of the computed one
                np.testing.assert_array_equal(store.tile(i, j), store.tile(j, i).T)
    full = kernels.gram(X, depth=DEPTH, activation=ACT, kind=kind)
    # one-shot kernels on all of X differ from per-tile calls only by BLAS summation order
    np.testing.assert_allclose(store.to_numpy(lam=None), full, rtol=1e-12, atol=1e-13)


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
        np.testing.assert_allclose(store.tile(i, j, lam=None), ref, **tol)
    np.testing.assert_allclose(store.to_numpy(lam=None),
                               kernels.gram(X, depth=DEPTH, activation=ACT), rtol=1e-4, atol=1e-5)


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
        G = store.to_numpy(lam=None)
        lam = 0.25
        ref_lam = kernels.to_gram(kernels.lambda_scale(
            kernels.jntk(X, depth=DEPTH, activation=ACT), lam))
        np.testing.assert_allclose(store.to_numpy(lam=lam), ref_lam, rtol=1e-12, atol=1e-13)
        # unaligned regions, steps and integer indices
        np.testing.assert_array_equal(store.read(slice(4, 29, 2), slice(1, 7), lam=None),
                                      G[4:29:2, 1:7])
        stored_lam = store.to_numpy()  # reads apply the store's λ (0.3) by default
        np.testing.assert_array_equal(stored_lam, store.to_numpy(lam=0.3))
        np.testing.assert_array_equal(store[5], stored_lam[5])
        np.testing.assert_array_equal(store[3:8, 17], stored_lam[3:8, 17])
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


@pytest.mark.parametrize("mode", ["dense", "fields"])
def test_xarray_open_zarr_is_self_describing_and_round_trips_netcdf(tmp_path: Path,
                                                                    mode: str) -> None:
    X = _unit_rows(7, 2, seed=6)
    _write_store(tmp_path / "g.zarr", X, mode, P=4)
    ds = xr.open_zarr(tmp_path / "g.zarr", consolidated=False)
    assert "done" not in ds.variables  # the Gram job's bookkeeping is not a result
    assert ds["X"].dims == ("point", "feature") and ds["y"].dims == ("point",)
    np.testing.assert_array_equal(ds["point"].values, np.arange(7))
    assert ds["X"].attrs["long_name"] == "inputs" and "Theta" in ds[
        "gram" if mode == "dense" else "fields"].attrs["long_name"]
    if mode == "dense":  # every Gram row is addressable as (point, component)
        assert ds["gram"].dims == ("gram_row", "gram_col")
        np.testing.assert_array_equal(ds["gram_row_point"].values, np.repeat(np.arange(7), 3))
        np.testing.assert_array_equal(ds["gram_col_component"].values, np.tile(np.arange(3), 7))
        assert "gram_row_point" in ds.coords and "gram_col_component" in ds.coords
    else:
        assert ds["fields"].dims == ("field", "point_i", "point_j")
        assert list(ds["field"].values) == list(kernels.FIELD_NAMES)
    # flat attributes: nested ones as JSON strings, named in json_attributes
    assert ds.attrs["kernel"] == "jntk" and ds.attrs["lam"] == 0.3
    assert json.loads(ds.attrs["field_names"])[2] == "k_b"
    assert json.loads(ds.attrs["layout"])["tile_points"] == 4
    assert set(ds.attrs["json_attributes"].split()) >= {"layout", "field_names",
                                                         "library_versions"}
    versions = json.loads(ds.attrs["library_versions"])
    assert versions["zarr"] == zarr.__version__ and versions["numpy"] == np.__version__
    assert ds.attrs["created"].endswith("Z") and ds.attrs["package_version"]
    ds.to_netcdf(tmp_path / "raw.nc", engine="scipy")  # failed on nested attributes before
    back = xr.open_dataset(tmp_path / "raw.nc", engine="scipy")
    name = "gram" if mode == "dense" else "fields"
    np.testing.assert_array_equal(back[name].values, ds[name].values)
    assert back.attrs["layout"] == ds.attrs["layout"]


@pytest.mark.parametrize("mode", ["dense", "fields"])
def test_reads_and_the_xarray_view_apply_the_stored_lambda(tmp_path: Path, mode: str) -> None:
    X = _unit_rows(7, 2, seed=9)
    store = _write_store(tmp_path / "g.zarr", X, mode, P=4)  # records λ = 0.3
    theta = kernels.gram(X, depth=DEPTH, activation=ACT)
    theta_lam = kernels.gram(X, depth=DEPTH, activation=ACT, lam=0.3)
    assert np.abs(theta - theta_lam).max() > 0.1  # the two differ: the default is observable
    np.testing.assert_allclose(store.to_numpy(), theta_lam, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(store.dask_array().compute(scheduler="sync"),
                                  store.to_numpy())
    np.testing.assert_allclose(store.tile(0, 1), theta_lam[:12, 12:], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(store.read(slice(0, 12), slice(9, 21)), theta_lam[:12, 9:21],
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(store.to_numpy(lam=None), theta, rtol=1e-12, atol=1e-13)
    view = store.to_xarray()
    np.testing.assert_array_equal(view["gram"].values, store.to_numpy())
    assert view.attrs["lam_applied"] == 0.3 and "lam = 0.3" in view["gram"].attrs["scaling"]
    np.testing.assert_array_equal(store.to_xarray(lam=None)["gram"].values,
                                  store.to_numpy(lam=None))
    view.to_netcdf(tmp_path / "view.nc", engine="scipy")
    back = xr.open_dataset(tmp_path / "view.nc", engine="scipy")
    np.testing.assert_array_equal(back["gram"].values, store.to_numpy())
    np.testing.assert_array_equal(back["gram_row_point"].values, view["gram_row_point"].values)
    # (point, component) addressing: point 2's rows are Gram rows 6, 7, 8
    multi = store.to_xarray(multiindex=True)
    np.testing.assert_array_equal(multi["gram"].sel(gram_row_point=2).values,
                                  store.to_numpy()[6:9])
    with pytest.raises(ValueError, match="lam must be a number, None"):
        store.to_numpy(lam="stored")


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
    assert not lock_path(store).exists()  # released, and removed: no store was made beside it
    with StoreLock(store):  # and free again
        time.sleep(0)
