"""PCG / Lanczos / LOBPCG on the structured operator vs dense linear algebra on the dense Gram."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import sphere as _sphere
from jntk_dist import kernels
from jntk_dist.solvers import (BlockJacobiPreconditioner, KroneckerPreconditioner, labels_to_rhs,
                               structured_eigs, structured_solve)
from jntk_dist.operators import structured_operator, structured_predict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dense(x1, x2=None, *, depth, activation, lam):
    f = kernels.fields(x1, x2, depth=depth, activation=activation)
    t2 = None if x2 is None else torch.as_tensor(x2)
    return kernels.to_gram(kernels.expand_blocks(f, torch.as_tensor(x1), t2, lam=lam)).numpy()


@pytest.fixture(scope="module")
def system():
    x = _sphere(14, 5, 21)
    y = np.where(np.arange(14) % 2 == 0, 1.0, -1.0)
    kw = dict(depth=6, activation="erf", lam=0.1)
    return x, y, kw, _dense(x, **kw)


@pytest.mark.parametrize("precond", ["none", "jacobi", "kron", "two_level"])
@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_pcg_equals_dense_solve(system, precond, ridge):
    x, y, kw, G = system
    A = G + ridge * np.eye(len(G))
    assert np.linalg.eigvalsh(A)[0] > 0
    b = labels_to_rhs(y, 14, 5)
    exact = np.linalg.solve(A, b)
    op = structured_operator(x, **kw)
    res = structured_solve(op, y, ridge=ridge, tol=1e-12, preconditioner=precond, progress=False)
    assert res.converged and res.residual <= 1e-11
    assert np.linalg.norm(res.x - exact) / np.linalg.norm(exact) <= 1e-8
    assert res.preconditioner == precond


def test_preconditioners_match_dense_constructions(system):
    x, _, kw, G = system
    n, p = 14, 6
    op = structured_operator(x, **kw)
    ridge = 0.05
    R = np.random.default_rng(0).standard_normal((n * p, 2))
    # block Jacobi = exact inverse of each dense diagonal block (+ μI)
    blocks = G.reshape(n, p, n, p)[np.arange(n), :, np.arange(n), :]
    expected = np.stack([np.linalg.solve(blocks[i] + ridge * np.eye(p), R.reshape(n, p, 2)[i])
                         for i in range(n)]).reshape(n * p, 2)
    np.testing.assert_allclose(BlockJacobiPreconditioner(op, ridge)(R), expected, rtol=1e-10,
                               atol=1e-12)
    # Kronecker = blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I) built densely in component-major order
    f = kernels.fields(x, depth=6, activation="erf").numpy()
    K00 = f["k"] + ridge * np.eye(n)
    Kj = np.kron(0.1 * f["k_b"] + ridge * np.eye(n), np.eye(p - 1))  # index j*(d0)+β
    perm = np.arange(n) * p  # the 00 rows in point-major order
    jac_rows = (np.arange(n)[:, None] * p + 1 + np.arange(p - 1)[None, :]).reshape(-1)
    expected = np.zeros_like(R)
    expected[perm] = np.linalg.solve(K00, R[perm])
    expected[jac_rows] = np.linalg.solve(Kj, R[jac_rows])
    np.testing.assert_allclose(KroneckerPreconditioner(op, ridge)(R), expected, rtol=1e-10,
                               atol=1e-12)


def test_two_level_compression_is_qt_gram_q():
    rng = np.random.default_rng(5)
    n, d0 = 9, 4
    x = _sphere(n, d0, 8) * np.linspace(0.6, 1.4, n)[:, None]  # non-unit norms
    op = structured_operator(x, depth=3, activation="gelu", lam=0.3)
    G = _dense(x, depth=3, activation="gelu", lam=0.3)
    p = d0 + 1
    Q = np.zeros((n * p, 2 * n))
    for i in range(n):
        Q[i * p, i] = 1.0
        Q[i * p + 1:(i + 1) * p, n + i] = x[i] / np.linalg.norm(x[i])
    C = op.compressed_on_inputs().numpy()
    np.testing.assert_allclose(C, Q.T @ G @ Q, rtol=1e-12, atol=1e-13 * np.abs(C).max())
    # the two-level preconditioner is exactly (QᵀAQ)⁻¹ on range(Q) when A's complement coupling
    # is absent: check M·(Q c) against Q (QᵀAQ + μI)⁻¹ c for a vector in range(Q)
    from jntk_dist.solvers import TwoLevelPreconditioner

    c = rng.standard_normal(2 * n)
    ridge = 0.1
    M = TwoLevelPreconditioner(op, ridge)
    np.testing.assert_allclose(M(Q @ c), Q @ np.linalg.solve(Q.T @ G @ Q + ridge * np.eye(2 * n), c),
                               rtol=1e-10, atol=1e-12)


_KILLED_SOLVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from jntk_dist.operators import structured_operator
    from jntk_dist.solvers import structured_solve
    x = np.load(sys.argv[1]); y = np.load(sys.argv[2])
    op = structured_operator(x, depth=6, activation="erf", lam=0.1)
    def die(it, res):
        if it == 7:
            os.kill(os.getpid(), signal.SIGKILL)   # a real kill, mid-solve
    structured_solve(op, y, ridge=0.0, tol=1e-12, preconditioner="jacobi", checkpoint=sys.argv[3],
                     checkpoint_every=0.0, progress=False, callback=die)
""")


def test_killed_solve_resumes_from_checkpoint(system, tmp_path):
    x, y, kw, G = system
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ckpt = tmp_path / "cg.npz"
    proc = subprocess.run([sys.executable, "-c", _KILLED_SOLVE, str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy"), str(ckpt)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert ckpt.exists()
    op = structured_operator(x, **kw)
    resumed = structured_solve(op, y, tol=1e-12, preconditioner="jacobi", checkpoint=ckpt,
                               progress=False)
    fresh = structured_solve(op, y, tol=1e-12, preconditioner="jacobi", progress=False)
    assert resumed.resumed_from == 7
    assert resumed.converged and resumed.iterations == fresh.iterations
    np.testing.assert_allclose(resumed.history, fresh.history, rtol=1e-8)
    exact = np.linalg.solve(G, labels_to_rhs(y, 14, 5))
    assert np.linalg.norm(resumed.x - exact) / np.linalg.norm(exact) <= 1e-8
    # a checkpoint of another system is refused, not silently continued
    with pytest.raises(ValueError, match="another system"):
        structured_solve(op, y, ridge=0.5, tol=1e-12, preconditioner="jacobi", checkpoint=ckpt,
                         progress=False)
    with pytest.raises(ValueError, match="another system"):
        structured_solve(op, -y, tol=1e-12, preconditioner="jacobi", checkpoint=ckpt,
                         progress=False)


def test_solve_bad_input():
    x = _sphere(4, 3, 0)
    op = structured_operator(x, depth=2, activation="erf", lam=0.5)
    with pytest.raises(ValueError, match="length 5"):
        structured_solve(op, np.ones(5), progress=False)
    with pytest.raises(ValueError, match="ridge"):
        structured_solve(op, np.ones(4), ridge=-1.0, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        structured_solve(op, np.array([1.0, np.nan, 1.0, 1.0]), progress=False)
    op0 = structured_operator(x, depth=2, activation="erf", lam=0.0)
    with pytest.raises(ValueError, match="ridge μ > 0"):
        structured_solve(op0, np.ones(4), preconditioner="kron", progress=False)


def test_lanczos_and_lobpcg_extreme_eigenvalues(system, tmp_path):
    x, _, kw, G = system
    w = np.linalg.eigvalsh(G)
    op = structured_operator(x, **kw)
    top = structured_eigs(op, k=3, which="LA", method="lanczos", tol=1e-12, progress=False)
    np.testing.assert_allclose(top.values, w[-3:], rtol=1e-10)
    low = structured_eigs(op, k=2, which="SA", method="lanczos", tol=1e-12, progress=False)
    np.testing.assert_allclose(low.values, w[:2], rtol=1e-8, atol=1e-10 * w[-1])
    assert np.all(low.residuals <= 1e-8 * w[-1])
    lob = structured_eigs(op, k=2, which="SA", method="lobpcg", preconditioner="kron",
                          shift=1e-8, tol=1e-9, maxiter=400, restart_every=40,
                          checkpoint=tmp_path / "lob.npz", progress=False)
    np.testing.assert_allclose(lob.values, w[:2], rtol=1e-7, atol=1e-10 * w[-1])
    assert (tmp_path / "lob.npz").exists()
    # the eigenvectors are eigenvectors of the dense Gram
    v = lob.vectors[:, 0]
    assert np.linalg.norm(G @ v - w[0] * v) <= 1e-6 * w[-1]


def test_f_ntk_structured_equals_dense_on_digits():
    from jntk_dist.data import load_dataset

    ds = load_dataset("digits")
    rng = np.random.default_rng(0)
    idx = rng.permutation(ds.X.shape[0])
    tr, te = idx[:30], idx[30:50]
    Xtr, ytr, Xte = ds.X[tr], ds.y[tr], ds.X[te]
    d0 = Xtr.shape[1]
    kw = dict(depth=3, activation="gelu", lam=0.01)
    ridge = 1e-2
    G = _dense(Xtr, **kw)
    alpha = np.linalg.solve(G + ridge * np.eye(len(G)), labels_to_rhs(ytr, 30, d0))
    f_dense = (_dense(Xte, Xtr, **kw) @ alpha)[:: d0 + 1]
    op = structured_operator(Xtr, **kw)
    res = structured_solve(op, ytr, ridge=ridge, tol=1e-11, preconditioner="two_level",
                           progress=False)
    f_struct = structured_predict(op, res.x, Xte)
    np.testing.assert_allclose(f_struct, f_dense, rtol=1e-8, atol=1e-9 * np.abs(f_dense).max())
    assert np.mean(np.sign(f_struct) == ds.y[te]) > 0.5  # a sane classifier, not noise
