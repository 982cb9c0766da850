"""The pca coarse factor held in block rows by 2 real Ray actors against the local factor, the
same PCG iterations, and the dense solve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import PCA_KW, PCA_MU, digit_rows
from jntk_dist import kernels
from jntk_dist.operators import structured_operator
from jntk_dist.solvers import PcaCoarsePreconditioner, structured_solve
from jntk_dist.solvers.distributed_coarse import (DistributedCoarseFactor,
                                                  RayPcaCoarsePreconditioner, coarse_tile)

pytestmark = pytest.mark.usefixtures("ray_session")

KW, MU = PCA_KW, PCA_MU


@pytest.fixture(scope="module")
def digits():
    """80 real 8×8 digit images (d0 = 64)."""
    return digit_rows(80)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_blocked_factor_and_solves_on_uneven_blocks():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((37, 37))
    A = B @ B.T + 0.5 * np.eye(37)
    bounds = [(0, 5), (5, 17), (17, 18), (18, 30), (30, 37)]
    fac = DistributedCoarseFactor(bounds, n_actors=2)
    try:
        for I, (lo, hi) in enumerate(bounds):  # two tiles per block row where it has two rows
            mid = lo + (hi - lo) // 2
            fac.put_rows(I, 0, A[lo:mid])
            fac.put_rows(I, mid - lo, A[mid:hi])
        fac.factor()
        assert _relative(fac.lower(), np.linalg.cholesky(A)) <= 1e-12
        rhs = rng.standard_normal((37, 3))
        assert _relative(fac.solve(rhs), np.linalg.solve(A, rhs)) <= 1e-10
        assert fac.messages == 10 + 5 * (1 + 2 * 2) + 2 * 5
        assert fac.bytes_per_actor() == [8 * (5 * 5 + 1 * 18 + 7 * 37), 8 * (12 * 17 + 12 * 30)]
    finally:
        fac.shutdown()


def test_an_indefinite_matrix_is_named():
    A = np.diag([1.0, 2.0, -1.0, 3.0])
    fac = DistributedCoarseFactor([(0, 2), (2, 4)], n_actors=2)
    try:
        fac.put_rows(0, 0, A[:2])
        fac.put_rows(1, 0, A[2:])
        with pytest.raises(ValueError, match="not positive definite"):
            fac.factor()
    finally:
        fac.shutdown()


def test_two_actors_give_the_local_factor_and_the_same_iterations(digits):
    X, y = digits
    op = structured_operator(X, **KW)
    options = dict(k=4, tile=7, factor_dtype=torch.float64, hold_fields=True)
    local = PcaCoarsePreconditioner(op, ridge=MU, **options)
    dist = RayPcaCoarsePreconditioner(op, ridge=MU, n_actors=2, n_blocks=5, **options)
    try:
        assert dist.assembled_on == "actors"
        gap = _relative(dist.factor.lower(), torch.tril(local.Lc).numpy())
        print(f"factor: 2 actors vs local {gap:.2e}; {dist.factor.messages} actor calls")
        assert gap <= 1e-10
        runs = {name: structured_solve(op, y, ridge=MU, tol=1e-10, preconditioner=M,
                                       progress=False)
                for name, M in (("local", local), ("ray", dist))}
    finally:
        dist.shutdown()
    G = kernels.gram(X, **KW) + MU * np.eye(X.shape[0] * (X.shape[1] + 1))
    rhs = np.zeros(G.shape[0])
    rhs[::X.shape[1] + 1] = y
    exact = np.linalg.solve(G, rhs)
    assert runs["ray"].converged and runs["local"].converged
    assert runs["ray"].iterations == runs["local"].iterations
    print(f"iterations {runs['ray'].iterations} (local {runs['local'].iterations}); "
          f"x vs dense {_relative(runs['ray'].x, exact):.2e}; vs local "
          f"{_relative(runs['ray'].x, runs['local'].x):.2e}")
    assert _relative(runs["ray"].x, exact) <= 1e-8
    assert np.linalg.norm(G @ runs["ray"].x - rhs) <= 1e-9 * np.linalg.norm(rhs)


@pytest.mark.parametrize("assemble", ["actors", "driver"])
def test_points_inside_the_pca_span_are_assembled_as_locally(assemble):
    """Points exactly in span V have no q-coordinate: the scattered row tiles must zero it and
    put 1 on its diagonal as the local coarse matrix does (X^T X block diagonal: V = e1..e3)."""
    rng = np.random.default_rng(3)
    X = np.zeros((14, 5))
    X[:9, :3] = rng.standard_normal((9, 3))
    X[9:, 3:] = 0.1 * rng.standard_normal((5, 2))
    op = structured_operator(X, **KW)
    options = dict(k=3, tile=3, factor_dtype=torch.float64, hold_fields=False)
    local = PcaCoarsePreconditioner(op, ridge=MU, **options)
    dist = RayPcaCoarsePreconditioner(op, ridge=MU, n_actors=2, n_blocks=3, assemble=assemble,
                                      **options)
    try:
        assert int((~dist.mask).sum()) == 9 and dist.assembled_on == assemble
        rows = torch.cat([coarse_tile(dist, slice(s, min(s + 3, 14))) for s in range(0, 14, 3)])
        C = local._coarse_matrix()
        C_sym = torch.tril(C) + torch.tril(C, -1).T
        assert _relative(torch.tril(rows).numpy(), torch.tril(C).numpy()) <= 1e-14
        assert _relative(dist.factor.lower(), torch.linalg.cholesky(C_sym).numpy()) <= 1e-10
    finally:
        dist.shutdown()


def test_the_registry_builds_it_by_coarse_backend(digits):
    from jntk_dist.solvers import make_preconditioner

    op = structured_operator(digits[0][:10], **KW)
    M = make_preconditioner(op, "pca", MU, coarse_backend="ray", k=2, n_actors=2, n_blocks=2)
    try:
        assert isinstance(M, RayPcaCoarsePreconditioner) and M.assembled_on == "actors"
        assert len(M.factor.actors) == 2
    finally:
        M.shutdown()
    assert type(make_preconditioner(op, "pca", MU, k=2)) is PcaCoarsePreconditioner
    with pytest.raises(ValueError, match="coarse_backend must be one of local, ray"):
        make_preconditioner(op, "pca", MU, coarse_backend="dask")


def test_bad_layouts_are_named():
    for bounds in ([(0, 3), (4, 6)], [(0, 3), (3, 3)], []):
        with pytest.raises(ValueError, match="consecutive non-empty"):
            DistributedCoarseFactor(bounds)
    with pytest.raises(ValueError, match="n_actors must be at least 1"):
        DistributedCoarseFactor([(0, 2)], n_actors=0)


def test_without_ray_it_says_so(tmp_path):
    import subprocess
    import sys

    code = ("from jntk_dist.solvers.distributed_coarse import DistributedCoarseFactor\n"
            "try:\n    DistributedCoarseFactor([(0, 2)])\n"
            "except ValueError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=_env_with_this_checkout())
    assert "needs a running Ray: call ray.init() first" in out.stdout, out.stderr


def _env_with_this_checkout() -> dict[str, str]:
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("fields_dtype", [None, torch.float32])
def test_actors_recompute_the_operators_fields(digits, fields_dtype):
    from jntk_dist.solvers.distributed_coarse import recomputing_source

    X = digits[0][:9]
    op = structured_operator(X, mode="recompute", fields_dtype=fields_dtype, **KW)
    rows = slice(2, 7)
    F = op.field_rows(rows)
    assert torch.equal(recomputing_source(op).tile(rows), F)
    held = kernels.fields(X, depth=3, activation="erf").stack()
    # against the kernels' float64 fields, computed apart: a depth-3 recursion in float32 keeps
    # ~2.4e-6 relative here (≈ 40 eps₃₂); 1e-5 leaves 4× room, float64 1e-13
    rtol = 1e-5 if fields_dtype is torch.float32 else 1e-13
    assert torch.allclose(F.to(torch.float64), held[:, rows], rtol=rtol, atol=0.0)

    class Accessor:  # fields read from elsewhere, as a store's reader would
        def fields_tile(self, rows: slice, cols: slice) -> torch.Tensor:
            return held[:, rows, cols]

    assert recomputing_source(structured_operator(X, fields=Accessor(), **KW)) is None
