"""The one operator protocol: every kernel operator multiplies like its dense matrix, and the
distributed structured operators are preconditioned and solved exactly like the local one."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.operators import (AddedDiag, DaskStructuredKernel, DenseOperator, KernelOperator,
                                 RayStructuredKernel, structured_operator)
from jntk_dist.solvers import structured_solve

KW = dict(depth=2, activation="erf")
LAM, RIDGE = 0.2, 1.0  # a well-conditioned system: finite-precision CG repeats itself


def _points(n: int, d0: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d0))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def problem():
    x = _points(14, 5, 3)
    dense = kernels.gram(x, lam=LAM, **KW)  # an independent route: the dense Gram
    y = np.sign(x[:, 0])
    return x, dense, y


def test_every_operator_follows_the_protocol_and_multiplies_like_its_matrix(problem):
    x, dense, _ = problem
    V = np.random.default_rng(1).standard_normal((dense.shape[0], 3))
    ops = {"structured": structured_operator(x, lam=LAM, **KW),
           "dense": DenseOperator(da.from_array(dense, chunks=25), scheduler_name="threads"),
           "dask": DaskStructuredKernel(x, lam=LAM, n_blocks=3, scheduler="threads", **KW)}
    ops["ridge"] = AddedDiag(ops["structured"], RIDGE)
    for name, op in ops.items():
        assert isinstance(op, KernelOperator), name
        ref = dense + RIDGE * np.eye(dense.shape[0]) if name == "ridge" else dense
        np.testing.assert_allclose(op.matmat(V), ref @ V, rtol=1e-12, atol=1e-13, err_msg=name)
        np.testing.assert_allclose(np.asarray(op.diagonal()), np.diag(ref), rtol=1e-12,
                                   err_msg=name)
        out = op @ torch.as_tensor(V[:, 0])  # torch in, torch out; vectors too
        assert isinstance(out, torch.Tensor) and out.shape == (dense.shape[0],)
        np.testing.assert_allclose(op.aslinearoperator().matvec(V[:, 1]), ref @ V[:, 1],
                                   rtol=1e-12, atol=1e-13, err_msg=name)
    with pytest.raises(ValueError, match="does not match operator shape"):
        ops["dense"].matmat(np.ones(3))
    with pytest.raises(ValueError, match="square"):
        AddedDiag(structured_operator(x[:4], x, lam=LAM, **KW), 1.0)


@pytest.mark.parametrize("precond", ["kron", "two_level"])
def test_dask_row_blocks_are_preconditioned_and_solved_like_the_local_operator(problem, precond):
    x, dense, y = problem
    local = structured_solve(structured_operator(x, lam=LAM, **KW), y, ridge=RIDGE, tol=1e-10,
                             preconditioner=precond, progress=False)
    op = DaskStructuredKernel(x, lam=LAM, n_blocks=3, scheduler="threads", **KW)
    res = structured_solve(op, y, ridge=RIDGE, tol=1e-10, preconditioner=precond,
                           progress=False)
    assert res.converged and res.iterations == local.iterations
    # products agree to ~1e-15 (the test above), so do the residual histories and the solutions
    np.testing.assert_allclose(res.history, local.history, rtol=1e-3)
    assert np.linalg.norm(res.x - local.x) <= 1e-10 * np.linalg.norm(local.x)
    rhs = np.zeros(dense.shape[0])
    rhs[::x.shape[1] + 1] = y  # (y_i, 0…0) blocks, eq. 4
    np.testing.assert_allclose((dense + RIDGE * np.eye(len(rhs))) @ res.x, rhs, atol=1e-8)


def test_ray_row_blocks_are_preconditioned_and_solved_like_the_local_operator(problem,
                                                                               ray_session):
    x, _, y = problem
    local = structured_solve(structured_operator(x, lam=LAM, **KW), y, ridge=RIDGE, tol=1e-10,
                             preconditioner="two_level", progress=False)
    op = RayStructuredKernel(x, lam=LAM, n_workers=2, mode="recompute", **KW)
    try:
        res = structured_solve(op, y, ridge=RIDGE, tol=1e-10, preconditioner="two_level",
                               progress=False)
        assert op.n_products == res.iterations + 1  # one product a step, one for the true residual
    finally:
        op.shutdown()
    assert res.converged and res.iterations == local.iterations
    np.testing.assert_allclose(res.history, local.history, rtol=1e-3)
    assert np.linalg.norm(res.x - local.x) <= 1e-10 * np.linalg.norm(local.x)
