"""Blockwise Dask Cholesky solves and eigensolvers against numpy/scipy on the same matrices.

Real Dask graphs, real Zarr arrays on disk, a real local Ray for the Ray scheduler path.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import zarr

from conftest import sphere as _sphere
from jntk_dist import kernels, solvers
from jntk_dist.operators import dask_arrays


@pytest.fixture(scope="module")
def gram() -> np.ndarray:
    """A JNTK Θ_λ Gram (41 points, d0 = 5: 246 × 246), moderately conditioned."""
    return kernels.gram(_sphere(41, 5, 0), depth=2, activation="erf", lam=0.5)


def _rel(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _write_zarr(path, a: np.ndarray, chunks: int):
    z = zarr.create_array(str(path), shape=a.shape, chunks=(chunks, chunks), dtype="f8")
    z[...] = a
    return z


def test_dask_solve_matches_scipy_on_numpy_backed_dask(gram):
    rhs = np.random.default_rng(1).standard_normal((gram.shape[0], 3))
    ref = scipy.linalg.solve(gram, rhs, assume_a="pos")
    # 246 rows in blocks of 64: uneven, so the identity padding path is exercised too
    x = solvers.cholesky_solve(dask_arrays.as_dask(gram, chunks=50), rhs, block_size=64,
                              scheduler_name="threads")
    assert x.shape == rhs.shape
    assert _rel(x, ref) <= 1e-10
    x1 = solvers.cholesky_solve(gram, rhs[:, 0], block_size=123, scheduler_name="sync")
    assert x1.shape == (gram.shape[0],)
    assert _rel(x1, ref[:, 0]) <= 1e-10


def test_dask_solve_from_zarr_path_with_ridge(gram, tmp_path):
    path = tmp_path / "gram.zarr"
    _write_zarr(path, gram, chunks=48)
    rhs = np.random.default_rng(2).standard_normal(gram.shape[0])
    mu = 1e-3
    ref = scipy.linalg.solve(gram + mu * np.eye(gram.shape[0]), rhs, assume_a="pos")
    lazy = dask_arrays.zarr_to_dask(path)
    assert lazy.chunks[0][0] == 48  # tasks read whole stored chunks
    np.testing.assert_array_equal(lazy[:7, :9].compute(), gram[:7, :9])
    x = solvers.cholesky_solve(str(path), rhs, ridge=mu, block_size=96, scheduler_name="threads")
    assert _rel(x, ref) <= 1e-10
    # a zarr.Array object is accepted as well (read through its store path)
    x2 = solvers.cholesky_solve(zarr.open_array(str(path), mode="r"), rhs, ridge=mu, block_size=96)
    assert _rel(x2, ref) <= 1e-10


def _gram_store(path, X: np.ndarray, depth: int, activation: str, tile_points: int):
    """A complete dense Gram store written with the store's own tile writer."""
    import torch

    from jntk_dist import store

    layout = store.StoreLayout(mode="dense", n_points=X.shape[0], d0=X.shape[1],
                               tile_points=tile_points, dtype="float64")
    store.create_store(path, X, np.ones(X.shape[0]), layout,
                       {"kernel": "jntk", "depth": depth, "activation": activation, "lam": None})
    writer = store.TileWriter(path)
    for i in range(layout.n_tiles):
        for j in range(i, layout.n_tiles):
            xi, xj = (torch.from_numpy(writer.points(k)) for k in (i, j))
            writer.write(i, j, kernels.fields(xi, xj, depth=depth, activation=activation), xi, xj)
    return store.open_gram(path)


def test_dask_solve_on_ray_scheduler_reads_zarr_inside_tasks(gram, tmp_path):
    ray = pytest.importorskip("ray")
    path = tmp_path / "g.zarr"
    _write_zarr(path, gram, chunks=82)
    rhs = np.random.default_rng(3).standard_normal((gram.shape[0], 2))
    ref = scipy.linalg.solve(gram, rhs, assume_a="pos")
    X = _sphere(41, 5, 0)
    st = _gram_store(tmp_path / "store.zarr", X, depth=2, activation="erf", tile_points=15)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with dask_arrays.scheduler("auto") as used:
            assert used == "ray"
        x = solvers.cholesky_solve(path, rhs, block_size=82)
        # the Gram store's own lazy reader (λ applied in the tasks) on the same cluster
        x_store = solvers.cholesky_solve(st.dask_array(lam=0.5), rhs, block_size=100)
    finally:
        if started:
            ray.shutdown()
    assert _rel(x, ref) <= 1e-10
    assert _rel(x_store, ref) <= 1e-10


def test_not_positive_definite_names_a_ridge_that_works(gram):
    shifted = gram - 0.05 * np.eye(gram.shape[0])  # λ_min(gram) ≈ 0.03 → indefinite
    assert np.linalg.eigvalsh(shifted)[0] < 0
    rhs = np.ones(gram.shape[0])
    with pytest.raises(solvers.NotPositiveDefiniteError, match=r"not numerically positive definite.*ridge") as info:
        solvers.cholesky_solve(shifted, rhs, block_size=64)
    suggested = float(str(info.value).split("--set ridge=")[1].split(")")[0])
    x = solvers.cholesky_solve(shifted, rhs, ridge=suggested, block_size=64)
    ref = scipy.linalg.solve(shifted + suggested * np.eye(gram.shape[0]), rhs)
    assert _rel(x, ref) <= 1e-8


def test_bad_shapes_and_values_are_named(gram):
    with pytest.raises(ValueError, match="square"):
        solvers.cholesky_solve(gram[:, :-1], np.ones(gram.shape[0]))
    with pytest.raises(ValueError, match="right-hand side has shape"):
        solvers.cholesky_solve(gram, np.ones(gram.shape[0] + 1))
    with pytest.raises(ValueError, match="NaN"):
        solvers.cholesky_solve(gram, np.full(gram.shape[0], np.nan))
    with pytest.raises(ValueError, match="ridge"):
        solvers.cholesky_solve(gram, np.ones(gram.shape[0]), ridge=-1.0)


def test_dense_eigh_equals_numpy(gram):
    res = solvers.eigh_dense(dask_arrays.as_dask(gram, chunks=100))
    ref = np.linalg.eigvalsh(gram)
    np.testing.assert_allclose(res.values, ref, rtol=0, atol=1e-12 * ref[-1])
    np.testing.assert_allclose(gram @ res.vectors, res.vectors * res.values, atol=1e-10 * ref[-1])
    assert res.tolerance == pytest.approx(gram.shape[0] * np.finfo(float).eps * ref[-1])


def test_lanczos_top_k_and_smallest_match_dense(gram, tmp_path):
    path = tmp_path / "g.zarr"
    _write_zarr(path, gram, chunks=100)
    ref = np.linalg.eigvalsh(gram)
    top = solvers.top_eigenpairs(path, 4, scheduler_name="threads")
    np.testing.assert_allclose(top.values, ref[-4:], rtol=1e-10)
    assert np.allclose(np.abs(top.vectors.T @ np.linalg.eigh(gram)[1][:, -4:]), np.eye(4), atol=1e-6)
    tau = solvers.positivity_tolerance(ref[-1], gram.shape[0])
    low = solvers.smallest_eigenvalue(path, k=2, lambda_max=top.lambda_max, scheduler_name="threads",
                                     block_size=100)
    assert low.method.startswith("shift-invert")
    assert abs(low.values[0] - ref[0]) <= tau
    assert abs(low.values[1] - ref[1]) <= tau
    assert low.lambda_max == top.lambda_max


def test_shifted_lanczos_smallest_and_indefinite_fallback():
    ntk = kernels.ntk(_sphere(30, 5, 4), depth=2, activation="erf")
    ref = np.linalg.eigvalsh(ntk)
    tau = solvers.positivity_tolerance(ref[-1], ntk.shape[0])
    low = solvers.smallest_eigenvalue(ntk, k=2, method="shift")
    assert low.method.startswith("shifted Lanczos")
    np.testing.assert_allclose(low.values[:2], ref[:2], rtol=0, atol=tau)
    # clearly indefinite: the first factorisation fails; auto raises the shift until one works
    neg = ntk - (ref[0] + 0.5 * (ref[1] - ref[0])) * np.eye(ntk.shape[0])
    with pytest.raises(solvers.NotPositiveDefiniteError):
        solvers.smallest_eigenvalue(neg, method="shift-invert")
    low = solvers.smallest_eigenvalue(neg)
    assert low.method.startswith("shift-invert")
    assert low.lambda_min < 0
    assert abs(low.lambda_min - np.linalg.eigvalsh(neg)[0]) <= tau


def test_smallest_eigenvalue_of_a_singular_gram_is_within_tolerance_of_zero():
    x = _sphere(20, 4, 5)
    x = np.vstack([x, x[:1]])  # a repeated point: the Gram is exactly singular
    g = kernels.gram(x, depth=1, activation="gelu", lam=1.0)
    ref = np.linalg.eigvalsh(g)
    tau = solvers.positivity_tolerance(ref[-1], g.shape[0])
    assert abs(ref[0]) <= tau  # the dense answer: numerically zero
    low = solvers.smallest_eigenvalue(g)
    assert abs(low.lambda_min - ref[0]) <= tau
    assert not low.lambda_min > low.tolerance
    assert low.method.startswith("shift-invert")


def test_eigen_dispatches_dense_or_iterative(gram):
    dense = solvers.eigen(gram, max_dense=10_000)
    assert set(dense) == {"full"} and dense["full"].values.size == gram.shape[0]
    it = solvers.eigen(gram, k=3, max_dense=100, vectors=False)
    ref = np.linalg.eigvalsh(gram)
    np.testing.assert_allclose(it["top"].values, ref[-3:], rtol=1e-10)
    assert abs(it["bottom"].lambda_min - ref[0]) <= it["bottom"].tolerance
