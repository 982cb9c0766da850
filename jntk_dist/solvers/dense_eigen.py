"""Spectra of Gram matrices held as (Dask) arrays: dense eigh, Lanczos for the top, the small
end through a spectral shift or shift-invert, and the positivity tolerance.

* :func:`eigh_dense` — full spectrum (scipy, or torch on a GPU when present).
* :func:`top_eigenpairs`, :func:`smallest_eigenvalue` — Lanczos (ARPACK) with Dask matvecs; the
  small end through the spectral shift σI − A with σ ≈ λ_max.
* :func:`eigen` — picks the dense path when the matrix fits ``max_dense`` and the iterative one
  otherwise.
* :func:`positivity_tolerance` — the stated tolerance for "numerically positive":
  τ = n · eps(float64) · λ_max (the threshold numpy's ``matrix_rank`` uses for singular values).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from ..operators.dask_arrays import DEFAULT_BLOCK, MatrixLike, SchedulerName, as_dask, check_square
from ..operators.base import AddedDiag
from ..operators.dense import DenseOperator
from .dask_cholesky import CholeskyInverseOperator, NotPositiveDefiniteError
from .certify import dense_interval, largest_interval, smallest_interval
from .results import EPS, EigenResult, positivity_tolerance

__all__ = ["EPS", "EigenResult", "positivity_tolerance", "eigh_dense", "top_eigenpairs",
           "smallest_eigenvalue", "eigen", "suggest_ridge"]

log = logging.getLogger(__name__)

def suggest_ridge(a: MatrixLike, scheduler_name: SchedulerName = "auto") -> float:
    """A ridge μ that makes A + μI numerically PD: −λ_min (if negative) plus 10τ, τ = n·eps·λ_max.

    λ_min comes from a loose shifted Lanczos (dense ``eigvalsh`` below 2000 rows).
    """
    a = as_dask(a)
    n = check_square(a)
    if n <= 2000:
        w = scipy.linalg.eigh(np.asarray(a.compute()), eigvals_only=True, check_finite=False)
        lo, hi = float(w[0]), float(w[-1])
    else:
        res = smallest_eigenvalue(a, tol=1e-8, scheduler_name=scheduler_name)
        lo, hi = res.lambda_min, res.lambda_max
    return max(-lo, 0.0) + 10 * positivity_tolerance(hi, n)


def eigh_dense(matrix: MatrixLike, vectors: bool = True,
               device: Literal["auto", "cpu", "cuda"] = "auto") -> EigenResult:
    """Full spectrum of a symmetric matrix that fits one worker (torch on a GPU when present)."""
    a = np.asarray(matrix if isinstance(matrix, np.ndarray) else as_dask(matrix).compute(),
                   dtype=np.float64)
    n = a.shape[0]
    if a.ndim != 2 or n != a.shape[1]:
        raise ValueError(f"matrix must be square, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("matrix contains NaN/inf entries")
    use_cuda = device == "cuda"
    if device == "auto":
        try:
            import torch

            use_cuda = torch.cuda.is_available()
        except ImportError:
            use_cuda = False
    if use_cuda:
        import torch

        t = torch.as_tensor(a, device="cuda")
        if vectors:
            w, v = torch.linalg.eigh(t)
            w, v = w.cpu().numpy(), v.cpu().numpy()
        else:
            w, v = torch.linalg.eigvalsh(t).cpu().numpy(), None
        method = "torch.linalg.eigh (cuda)"
    else:
        if vectors:
            w, v = scipy.linalg.eigh(a, check_finite=False)
        else:
            w, v = scipy.linalg.eigh(a, eigvals_only=True, check_finite=False), None
        method = "scipy.linalg.eigh"
    w = np.asarray(w)
    return EigenResult(w, v, method, positivity_tolerance(w[-1], n), n,
                       interval_min=dense_interval(w[0], w[-1], n, smallest=True),
                       interval_max=dense_interval(w[-1], w[-1], n, smallest=False))


def _with_ritz_interval(res: EigenResult, a: Any, vecs: np.ndarray, want_vectors: bool,
                        tol: float, scheduler_name: SchedulerName) -> EigenResult:
    """Attach the residuals |Av − θv| (one Dask product) and the (estimated, not inertia-
    certified) interval of λ_min; drop the vectors unless wanted."""
    k = vecs.shape[1]
    op = DenseOperator(a, scheduler_name=scheduler_name)
    res.residuals = np.linalg.norm(np.asarray(op.matmat(vecs)) - vecs * res.values[:k], axis=0)
    res.interval_min = smallest_interval(res.values[:k], res.residuals, tol)
    res.vectors = vecs if want_vectors else None
    return res


def _lanczos(op: scipy.sparse.linalg.LinearOperator, k: int, tol: float, ncv: int | None,
             maxiter: int | None, vectors: bool, v0: np.ndarray | None):
    n = op.shape[0]
    ncv = min(n - 1, max(ncv or 0, 2 * k + 40, 96)) if n > 2 else None
    return scipy.sparse.linalg.eigsh(op, k=k, which="LA", tol=tol, ncv=ncv, maxiter=maxiter,
                                     return_eigenvectors=vectors, v0=v0)


def top_eigenpairs(matrix: MatrixLike, k: int, tol: float = 1e-12, vectors: bool = True,
                   ncv: int | None = None, maxiter: int | None = None,
                   scheduler_name: SchedulerName = "auto", seed: int = 0) -> EigenResult:
    """The k largest eigenpairs by Lanczos (ARPACK) with Dask matvecs; values ascending."""
    a = as_dask(matrix)
    n = check_square(a)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}] for the iterative path, got {k}")
    op = DenseOperator(a, scheduler_name=scheduler_name)
    v0 = np.random.default_rng(seed).standard_normal(n)
    out = _lanczos(op.aslinearoperator(), k, tol, ncv, maxiter, vectors, v0)
    w, v = (out if vectors else (out, None))
    order = np.argsort(w)
    w = np.asarray(w)[order]
    v = None if v is None else np.asarray(v)[:, order]
    log.info("Lanczos top-%d: %d matvecs", k, op.n_products)
    res = EigenResult(w, v, f"Lanczos (eigsh, {op.n_products} matvecs)",
                      positivity_tolerance(w[-1], n), n)
    if v is not None:  # [θ, θ + r] of λ_max (an estimate: no inertia check on the Dask path)
        res.residuals = np.linalg.norm(np.asarray(op.matmat(v)) - v * w, axis=0)
        res.interval_max = largest_interval(w[-1], res.residuals[-1], tol)
    return res



def smallest_eigenvalue(matrix: MatrixLike, k: int = 1, tol: float = 1e-10,
                        lambda_max: float | None = None, vectors: bool = False,
                        method: Literal["auto", "shift-invert", "shift"] = "auto",
                        shift_factor: float = 1e3, block_size: int = DEFAULT_BLOCK,
                        ncv: int | None = None, maxiter: int | None = None,
                        scheduler_name: SchedulerName = "auto", seed: int = 0) -> EigenResult:
    """The k smallest eigenvalues of a symmetric matrix, with Dask matvecs / solves.

    Shift strategies for the small end:

    * ``shift-invert``: Lanczos on (A + δI)^{-1}, δ = ``shift_factor``·τ (τ = n·eps·λ_max), with a
      persisted blockwise Cholesky factor of A + δI. The smallest eigenvalues become the dominant,
      well separated ones: a few dozen solves. Needs λ_min > −δ (else the factorisation fails
      and :class:`NotPositiveDefiniteError` is raised).
    * ``auto``: shift-invert, multiplying δ by 8 after each failed factorisation (λ_min < −δ:
      the matrix is certainly not numerically PD) until A + δI factorises.
    * ``shift``: Lanczos on σI − A, σ = λ_max(1 + 1e-3), matvecs only, no factorisation. Slow
      when the small end is clustered relative to λ_max (kernel spectra usually are).

    The Ritz values carry an absolute error of order τ (the backward error of the solves, or
    (tol·σ)²/gap for the shifted matvecs), the scale of :func:`positivity_tolerance`. The result's
    ``values`` are the k smallest (ascending) followed by λ_max.
    """
    a = as_dask(matrix)
    n = check_square(a)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    if method not in ("auto", "shift-invert", "shift"):
        raise ValueError(f"method must be 'auto', 'shift-invert' or 'shift', got {method!r}")
    if lambda_max is None:
        lambda_max = top_eigenpairs(a, 1, tol=1e-10, vectors=False,
                                    scheduler_name=scheduler_name, seed=seed).lambda_max
    tau = positivity_tolerance(lambda_max, n)
    v0 = np.random.default_rng(seed + 1).standard_normal(n)
    if method in ("auto", "shift-invert"):
        inv, delta = _shifted_inverse(a, shift_factor * tau, lambda_max, method, block_size,
                                      scheduler_name)
        out = _lanczos(inv, k, tol, ncv, maxiter, True, v0)
        w, v = _ascending(out, True, lambda mu: 1.0 / mu - delta)
        log.info("shift-invert Lanczos bottom-%d: %d solves", k, inv.n_solves)
        res = EigenResult(np.append(w, lambda_max), v,
                          f"shift-invert Lanczos (δ={delta:.3g}, {inv.n_solves} solves)", tau, n)
        return _with_ritz_interval(res, a, v, vectors, tol, scheduler_name)
    sigma = abs(lambda_max) * (1 + 1e-3)
    op = AddedDiag(DenseOperator(a, scale=-1.0, scheduler_name=scheduler_name), sigma)  # σI − A
    out = _lanczos(op.aslinearoperator(), k, tol, ncv, maxiter, True, v0)
    w, v = _ascending(out, True, lambda mu: sigma - mu)
    log.info("shifted Lanczos bottom-%d: %d matvecs", k, op.n_products)
    res = EigenResult(np.append(w, lambda_max), v,
                      f"shifted Lanczos (σ={sigma:.3g}, {op.n_products} matvecs)", tau, n)
    return _with_ritz_interval(res, a, v, vectors, tol, scheduler_name)


def _shifted_inverse(a: Any, delta: float, lambda_max: float, method: str, block_size: int,
                     scheduler_name: SchedulerName) -> tuple[CholeskyInverseOperator, float]:
    """(A + δI)⁻¹ by a blockwise Cholesky factor; ``auto`` raises δ ×8 until A + δI factorises."""
    while True:
        try:
            return CholeskyInverseOperator(a, delta, block_size, scheduler_name), delta
        except NotPositiveDefiniteError:
            if method == "shift-invert" or delta > 2 * abs(lambda_max):
                raise
            log.info("A + %.3g I is not PD (λ_min < %.3g): raising the shift", delta, -delta)
            delta *= 8.0


def _ascending(out: Any, vectors: bool, to_eigenvalue: Any) -> tuple[np.ndarray, Any]:
    """Lanczos output (values of the transformed operator, vectors) → eigenvalues of A ascending
    and their vectors."""
    mu, v = (out if vectors else (out, None))
    w = to_eigenvalue(np.asarray(mu))
    order = np.argsort(w)
    return w[order], None if v is None else np.asarray(v)[:, order]


def eigen(matrix: MatrixLike, k: int | None = None, vectors: bool = True,
          max_dense: int = 12000, smallest: bool = True,
          scheduler_name: SchedulerName = "auto", certify_max_n: int = 4096,
          rtol: float = 1e-8) -> dict[str, EigenResult]:
    """Full spectrum when n ≤ ``max_dense``; otherwise the top-k eigenpairs (and λ_min, its
    interval certified smallest by inertia when n ≤ ``certify_max_n``, converged when it is
    ≤ ``rtol``·|λ_min| wide).

    Returns ``{"full": …}`` or ``{"top": …, "bottom": …}``.
    """
    a = as_dask(matrix)
    n = check_square(a)
    if n <= max_dense:
        return {"full": eigh_dense(a, vectors=vectors)}
    top = top_eigenpairs(a, k or 16, vectors=vectors, scheduler_name=scheduler_name)
    out = {"top": top}
    if smallest:
        bottom = smallest_eigenvalue(a, k=2, lambda_max=top.lambda_max, vectors=True,
                                     scheduler_name=scheduler_name)
        dense = None if n > certify_max_n else np.asarray(a.compute(), dtype=np.float64)
        if dense is not None:
            dense = 0.5 * (dense + dense.T)
        bottom.interval_min = smallest_interval(bottom.values[:2], bottom.residuals, rtol,
                                                bottom.vectors[:, 0], dense, top.lambda_max)
        bottom.converged = bottom.interval_min.converged
        bottom.vectors = None
        out["bottom"] = bottom
    return out
