"""Shift-invert λ_min and the Nyström (pivoted-Cholesky) preconditioner vs dense linear algebra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sphere as _sphere
from jntk_dist import kernels
from jntk_dist.solvers import positivity_tolerance
from jntk_dist.solvers import (NystromPreconditioner, TwoLevelPreconditioner, labels_to_rhs,
                               pivoted_cholesky, shift_invert_eigs, structured_solve)
from jntk_dist.operators import AddedDiag
from jntk_dist.operators import structured_operator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dense(x, *, depth, activation, lam):
    f = kernels.fields(x, depth=depth, activation=activation)
    return kernels.to_gram(kernels.expand_blocks(f, torch.as_tensor(x), lam=lam)).numpy()


@pytest.fixture(scope="module")
def system():
    x = _sphere(16, 5, 4)
    kw = dict(depth=5, activation="erf", lam=0.1)
    return x, kw, _dense(x, **kw)


@pytest.mark.parametrize("k,precond", [(1, "two_level"), (2, "kron"), (1, "nystrom")])
def test_shift_invert_equals_eigvalsh(system, k, precond):
    x, kw, G = system
    w = np.linalg.eigvalsh(G)
    tau = positivity_tolerance(w[-1], len(G))
    assert w[0] > 100 * tau  # a well-posed small end to compare against
    op = structured_operator(x, **kw)
    res = shift_invert_eigs(op, k=k, shift=tau, preconditioner=precond, tol=1e-10 * w[-1],
                            progress=False)
    assert res.info["converged"]
    # Ritz values are upper bounds; with |r| ≤ 1e-10 λ_max they agree to well within τ-scale
    np.testing.assert_allclose(res.values, w[:k], rtol=1e-7, atol=tau)
    assert np.all(res.values >= w[:k] - tau)
    assert np.all(res.residuals <= 1e-10 * w[-1])
    v = res.vectors[:, 0]
    assert np.linalg.norm(G @ v - w[0] * v) <= 1e-8 * w[-1]
    assert res.n_products > 0 and sum(res.info["inner_iterations"]) > 0


def test_shift_invert_raises_the_shift_on_an_indefinite_operator(system):
    x, kw, G = system
    w = np.linalg.eigvalsh(G)
    c = w[0] + 0.3 * (w[1] - w[0])  # A − cI has exactly one negative eigenvalue
    op = AddedDiag(structured_operator(x, **kw), -c)  # A − cI
    res = shift_invert_eigs(op, k=1, shift=0.0, preconditioner="none", tol=1e-10 * w[-1],
                            progress=False)
    assert len(res.info["shifts"]) > 1 and res.info["shifts"][-1] > 0
    np.testing.assert_allclose(res.values[0], w[0] - c, rtol=1e-6)
    assert res.values[0] < 0


def test_shift_invert_bad_arguments(system):
    x, kw, _ = system
    op = structured_operator(x, **kw)
    with pytest.raises(ValueError, match="shift"):
        shift_invert_eigs(op, shift=-1.0, progress=False)
    with pytest.raises(ValueError, match="inner_reduction"):
        shift_invert_eigs(op, inner_reduction=1.5, progress=False)
    with pytest.raises(ValueError, match="k must be"):
        shift_invert_eigs(op, k=0, progress=False)


def test_pivoted_cholesky_is_exact_at_full_rank_and_leaves_a_psd_residual():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((30, 12))
    A = torch.as_tensor(B @ B.T + np.diag(rng.uniform(0, 0.1, 30)))
    cols = lambda idx: A[:, idx]  # noqa: E731
    L = pivoted_cholesky(torch.diagonal(A).clone(), cols, max_rank=30, rel_tol=0.0)
    assert torch.allclose(L @ L.T, A, rtol=0, atol=1e-10 * float(A.abs().max()))
    L5 = pivoted_cholesky(torch.diagonal(A).clone(), cols, max_rank=5)
    assert L5.shape == (30, 5)
    assert float(torch.linalg.eigvalsh(A - L5 @ L5.T)[0]) >= -1e-10  # Schur complement is PSD
    # the greedy pivots capture most of the trace
    assert float(torch.trace(A - L5 @ L5.T)) < 0.5 * float(torch.trace(A))


def test_nystrom_at_full_rank_is_the_two_level_preconditioner(system):
    x, kw, _ = system
    op = structured_operator(x, **kw)
    R = torch.as_tensor(np.random.default_rng(2).standard_normal((op.shape[0], 3)))
    full = NystromPreconditioner(op, ridge=1e-3, rank=2 * 16, rel_tol=0.0)
    assert full.ranks == (32, 16)
    ref = TwoLevelPreconditioner(op, ridge=1e-3).apply(R)
    assert float(torch.linalg.norm(full.apply(R) - ref) / torch.linalg.norm(ref)) <= 1e-9


@pytest.mark.parametrize("mode", ["memory", "recompute"])
def test_pcg_with_low_rank_nystrom_equals_dense_solve(system, mode):
    x, kw, G = system
    ridge = 1e-2
    b = labels_to_rhs(np.where(np.arange(16) % 3 == 0, 1.0, -1.0), 16, 5)
    exact = np.linalg.solve(G + ridge * np.eye(len(G)), b)
    op = structured_operator(x, mode=mode, **kw)
    P = NystromPreconditioner(op, ridge=ridge, rank=6)
    assert P.ranks == (6, 6)
    res = structured_solve(op, b, ridge=ridge, tol=1e-12, preconditioner=P, progress=False)
    assert res.converged and res.preconditioner == "nystrom"
    assert np.linalg.norm(res.x - exact) / np.linalg.norm(exact) <= 1e-9
    # rank from a memory budget: 3n·r float64 numbers
    assert NystromPreconditioner(op, ridge=ridge, memory_mb=3 * 16 * 4 * 8 / 2**20).rank == 4


def test_shift_invert_resumes_from_its_checkpoint(system, tmp_path):
    x, kw, G = system
    w = np.linalg.eigvalsh(G)
    op = structured_operator(x, **kw)
    ckpt = tmp_path / "si.npz"
    args = dict(k=1, shift=0.0, preconditioner="kron", tol=1e-11 * w[-1], inner_reduction=0.5,
                progress=False)
    fresh = shift_invert_eigs(op, **args)
    assert fresh.info["outer_iterations"] > 3
    stopped = shift_invert_eigs(op, maxiter=3, checkpoint=ckpt, **args)
    assert not stopped.info["converged"] and ckpt.exists()
    resumed = shift_invert_eigs(op, checkpoint=ckpt, **args)
    assert resumed.info["resumed_from"] == 3 and resumed.info["converged"]
    assert resumed.info["outer_iterations"] == fresh.info["outer_iterations"]
    assert resumed.info["inner_iterations"] == fresh.info["inner_iterations"]
    np.testing.assert_allclose(resumed.values, fresh.values, rtol=1e-12)
    with pytest.raises(ValueError, match=r"another system \(operator or k differ\)"):
        shift_invert_eigs(op, checkpoint=ckpt, **{**args, "k": 2})
    other = structured_operator(op.x1, depth=op.description["depth"],  # another λ: refused too
                                activation=op.description["activation"], lam=0.5)
    with pytest.raises(ValueError, match="another system"):
        shift_invert_eigs(other, checkpoint=ckpt, **args)
