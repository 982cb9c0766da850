"""pca_refined: the PCA coarse space with a float32 coarse factor refined in float64 — against
the dense solve, the float64-factor pca's iterations and memory, and auto's memory rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.data import load_dataset
from jntk_dist.operators import structured_operator
from jntk_dist.solvers import PcaCoarsePreconditioner, make_preconditioner, structured_solve
from jntk_dist.solvers.auto import choose
from jntk_dist.solvers.coarse import pca_plan, tile_reserve
from jntk_dist.solvers.memory import Budget
from jntk_dist.solvers.refined import RefinedPcaPreconditioner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MU = 1e-3
DIGITS_KW = dict(depth=3, activation="erf", lam=0.1)
UNIT_KW = dict(depth=3, activation="gelu", lam=0.1)


@pytest.fixture(scope="module")
def digits():
    """60 real 8×8 digit images (d0 = 64, a decaying spectrum: auto's pca branch)."""
    ds = load_dataset("digits")
    return ds.X[:60], ds.y[:60]


@pytest.fixture(scope="module")
def unit_vectors():
    """150 random unit vectors in d0 = 8 (rank 8: auto's spanning coarse space, k = 7)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((150, 8))
    return X / np.linalg.norm(X, axis=1, keepdims=True), rng.standard_normal(150)


def _dense_solution(X: np.ndarray, y: np.ndarray, kw: dict, mu: float = MU) -> np.ndarray:
    G = kernels.gram(X, **kw) + mu * np.eye(X.shape[0] * (X.shape[1] + 1))
    rhs = np.zeros(G.shape[0])
    rhs[::X.shape[1] + 1] = y
    return np.linalg.solve(G, rhs)


@pytest.mark.parametrize("case, k, mu", [("digits", 3, MU), ("digits", 3, 1e-6),
                                         ("unit_vectors", 3, MU)])
def test_refined_equals_the_dense_solve_at_half_the_factor(case, k, mu, request):
    """μ = 1e-6 on digits: a coarse matrix 1000× worse conditioned, refinement still exact."""
    X, y = request.getfixturevalue(case)
    kw = DIGITS_KW if case == "digits" else UNIT_KW
    op = structured_operator(X, **kw)
    exact = _dense_solution(X, y, kw, mu)
    P64 = PcaCoarsePreconditioner(op, ridge=mu, k=k, hold_fields=True)
    P32 = RefinedPcaPreconditioner(op, ridge=mu, k=k, hold_fields=True)
    assert P32.Lc.dtype == torch.float32 and P64.Lc.dtype == torch.float64
    assert P32.Lc.shape == P64.Lc.shape and 2 * P32.Lc.nbytes == P64.Lc.nbytes
    runs = {P.name: structured_solve(op, y, ridge=mu, tol=1e-11, preconditioner=P,
                                     progress=False) for P in (P64, P32)}
    ref = runs["pca_refined"]
    assert ref.converged and ref.preconditioner == "pca_refined"
    assert np.linalg.norm(ref.x - exact) <= 1e-8 * np.linalg.norm(exact)
    assert ref.iterations <= 1.15 * runs["pca"].iterations
    assert P32.refine_products > 0 and P32.worst_coarse_residual <= P32.refine_tol


def test_matrix_free_coarse_product_is_the_coarse_matrix(digits):
    X, _ = digits
    op = structured_operator(X[:12], **DIGITS_KW)
    P64 = PcaCoarsePreconditioner(op, ridge=MU, k=3, factor_dtype=torch.float64)
    P32 = RefinedPcaPreconditioner(op, ridge=MU, k=3, factor_dtype=torch.float64)
    C = P64._coarse_matrix()  # checked against Tᵀ(G + μI)T in test_coarse.py
    Y = torch.randn(12, P32.k + 2, 3, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    got = P32._coarse_product(Y).reshape(-1, 3)
    want = C @ Y.reshape(-1, 3)
    assert torch.linalg.vector_norm(got - want) <= 1e-12 * torch.linalg.vector_norm(want)
    z = P32._coarse_solve(want.reshape(Y.shape))
    assert torch.linalg.vector_norm(z - Y) <= 1e-8 * torch.linalg.vector_norm(Y)


def _budget_between(op, k: int, hold: bool) -> float:
    n, reserve = op.n1, tile_reserve(op)
    usable = Budget(0.0, "")
    f64 = pca_plan(n, k, hold, not hold, reserve, usable, "cpu", 8).needs
    f32 = pca_plan(n, k, hold, not hold, reserve, usable, "cpu", 4).needs
    assert f32 < f64
    return 0.5 * (f32 + f64)


@pytest.mark.parametrize("case, k, direct_max", [("digits", 0, 1), ("unit_vectors", 7, 1000)])
def test_auto_picks_refined_when_only_the_float32_factor_fits(case, k, direct_max, request):
    """direct_max forces the iterative branches: (c) for digits; (b) for the unit vectors
    (N(d0+1) = 1350 > 1000, their spanning N(k+2) = 1350 ≤ 2 × 1000)."""
    X, y = request.getfixturevalue(case)
    kw = DIGITS_KW if case == "digits" else UNIT_KW
    op = structured_operator(X, **kw)
    between = _budget_between(op, k, hold=False)
    assert choose(op, MU, budget_bytes=1e12, direct_max=direct_max).name == "pca"
    decision = choose(op, MU, budget_bytes=between, direct_max=direct_max)
    assert decision.name == "pca_refined"
    assert "float64 coarse factor does not fit" in decision.text
    M = make_preconditioner(op, "auto", MU, budget_bytes=between, direct_max=direct_max)
    assert isinstance(M, RefinedPcaPreconditioner) and "pca_refined" in M.choice
    res = structured_solve(op, y, ridge=MU, tol=1e-11, preconditioner=M, progress=False)
    exact = _dense_solution(X, y, kw)
    assert res.converged and np.linalg.norm(res.x - exact) <= 1e-8 * np.linalg.norm(exact)


def test_refined_refuses_a_float32_operator(digits):
    X, _ = digits
    op32 = structured_operator(X[:10].astype(np.float32), dtype=torch.float32, **DIGITS_KW)
    with pytest.raises(ValueError, match="float64 structured operator"):
        RefinedPcaPreconditioner(op32, ridge=MU, k=2)
