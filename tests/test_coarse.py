"""The PCA coarse-space preconditioner on real images, the ridge chosen from the data, and mixed
precision with reliable updates — each against a dense route."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import PCA_KW, PCA_MU, digit_rows
from jntk_dist import kernels
from jntk_dist.operators import structured_operator
from jntk_dist.solvers import PcaCoarsePreconditioner, structured_solve
from jntk_dist.workflows.problem import load_problem
from jntk_dist.workflows.solve import SolveJobConfig, resolve_ridge, run_solve
from jntk_dist.workflows.config import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW, MU = PCA_KW, PCA_MU


@pytest.fixture(scope="module")
def digits():
    """60 real 8×8 digit images (d0 = 64): hard for value/Jacobian block preconditioners."""
    return digit_rows(60)


def _dense_system(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    G = kernels.gram(X, **KW) + MU * np.eye(X.shape[0] * (X.shape[1] + 1))
    rhs = np.zeros(G.shape[0])
    rhs[::X.shape[1] + 1] = y
    return G, rhs


def _basis(P: PcaCoarsePreconditioner) -> np.ndarray:
    """T (N(d0+1) × N(k+2)) built column by column: per point e₀, the k PCA directions, q_i."""
    n, d0, k = P.n, P.d0, P.k
    T = np.zeros((n, d0 + 1, n, k + 2))
    for i in range(n):
        T[i, 0, i, 0] = 1.0
        T[i, 1:, i, 1:k + 1] = P.V.numpy()
        T[i, 1:, i, k + 1] = P.Qr[i].numpy()
    return T.reshape(n * (d0 + 1), n * (k + 2))


def test_coarse_matrix_is_the_galerkin_projection(digits):
    X, _ = digits
    X = X[:12]
    op = structured_operator(X, **KW)
    P = PcaCoarsePreconditioner(op, ridge=MU, k=3, factor_dtype=torch.float64)
    G, _ = _dense_system(X, np.zeros(12))
    T = _basis(P)
    np.testing.assert_allclose(P._coarse_matrix().numpy(), T.T @ G @ T, rtol=1e-10,
                               atol=1e-12 * np.abs(G).max())


def test_pca_preconditioner_solves_real_images_in_fewer_iterations(digits):
    X, y = digits
    op = structured_operator(X, **KW)
    G, rhs = _dense_system(X, y)
    exact = np.linalg.solve(G, rhs)
    runs = {pc: structured_solve(op, y, ridge=MU, tol=1e-10, preconditioner=pc, progress=False)
            for pc in ("two_level", "pca")}
    pca = runs["pca"]
    assert pca.converged and pca.preconditioner == "pca"
    assert np.linalg.norm(pca.x - exact) <= 1e-6 * np.linalg.norm(exact)
    assert np.linalg.norm(G @ pca.x - rhs) <= 1e-9 * np.linalg.norm(rhs)
    assert pca.iterations * 2 < runs["two_level"].iterations  # measured: 59 vs 227


def test_mixed_precision_keeps_the_float64_tolerance(digits):
    X, y = digits
    op64 = structured_operator(X, **KW)
    op32 = structured_operator(X.astype(np.float32), dtype=torch.float32, **KW)
    G, rhs = _dense_system(X, y)
    res = structured_solve(op32, y, ridge=MU, tol=1e-7, preconditioner="pca", exact_op=op64,
                           progress=False)
    assert res.converged and res.residual <= 1e-7  # the float64 system's residual
    assert np.linalg.norm(G @ res.x - rhs) <= 1.01e-7 * np.linalg.norm(rhs)
    plain = structured_solve(op32, y, ridge=MU, tol=1e-7, preconditioner="pca",
                             progress=False)  # float32 alone: its own residual says converged …
    true = np.linalg.norm(G @ plain.x - rhs) / np.linalg.norm(rhs)
    assert true > 1e-7  # … the float64 system's does not


def test_ridge_auto_is_a_hundredth_of_the_mean_diagonal(digits, tmp_path):
    X, y = digits
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y)
    cfg = load_config({"dataset": {"path": str(path)}, "kernel": {"depth": 3, "activation": "erf"},
                       "lam": 0.1, "ridge": "auto", "test_fraction": 0.25,
                       "output": str(tmp_path / "o.zarr")}, SolveJobConfig)
    prob = load_problem(cfg)
    mu, rule = resolve_ridge(cfg, prob)
    G = kernels.gram(X[prob.train], **KW)
    assert mu == pytest.approx(0.01 * np.mean(np.diag(G)), rel=1e-12) and rule.startswith("auto")
    s = run_solve(cfg.model_copy(update={"structured": cfg.structured.model_copy(
        update={"enabled": True, "preconditioner": "pca", "tol": 1e-8})}), progress=False)
    assert s["ridge"] == pytest.approx(mu) and s["config"]["ridge"] == "auto"
    assert s["pcg_converged"]


def test_auto_preconditioner_is_pca_on_images_where_it_fits_else_nystrom(digits):
    from jntk_dist.solvers import choose
    from jntk_dist.solvers.coarse import coarse_budget

    cpu = torch.device("cpu")
    huge = 10 ** 6  # its 8 N² fields alone are 64 TB
    assert coarse_budget(cpu, huge) == 0
    X, y = digits
    op = structured_operator(X[:40], **KW)
    assert choose(op, MU, direct_max=100).name == "pca"
    assert choose(op, MU, direct_max=100, budget_bytes=4e4).name == "nystrom"
    assert choose(op, MU).name == "direct"  # N(d0+1) = 2 600: solved exactly
    res = structured_solve(op, y[:40], ridge=MU, tol=1e-8, preconditioner="auto",
                           preconditioner_options={"direct_max": 100}, progress=False)
    assert res.preconditioner == "pca" and res.converged
    assert res.preconditioner_choice.startswith("auto → pca (N(d0+1) = 2,600 > 100; 85 % of")


def test_streamed_fields_give_the_held_preconditioner(digits):
    """hold_fields=False recomputes the fields by row tiles (what N = 60 000 needs): the same
    coarse matrix, the same application, the same PCG iterations as holding them."""
    X, y = digits
    op = structured_operator(X[:30], mode="recompute", memory_mb=0.05, **KW)  # many row tiles
    held = PcaCoarsePreconditioner(op, ridge=MU, k=3, hold_fields=True)
    streamed = PcaCoarsePreconditioner(op, ridge=MU, k=3, hold_fields=False,
                                       factor_dtype=torch.float64)
    assert held.F is not None and streamed.F is None and len(streamed._row_tiles(1e5)) > 1
    assert PcaCoarsePreconditioner(op, ridge=MU, k=3, hold_fields=False).Lb.dtype == torch.float32
    np.testing.assert_allclose(streamed._coarse_matrix().numpy(), held._coarse_matrix().numpy(),
                               rtol=1e-13, atol=1e-13)
    R = torch.randn(op.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(streamed.apply(R).numpy(), held.apply(R).numpy(), rtol=1e-10,
                               atol=1e-12 * float(held.apply(R).abs().max()))
    runs = [structured_solve(op, y[:30], ridge=MU, tol=1e-9, preconditioner=P, progress=False)
            for P in (held, streamed)]
    assert runs[0].converged and runs[0].iterations == runs[1].iterations
