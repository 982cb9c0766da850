"""Certified intervals for the extreme eigenvalues that the eigensolvers report.

For a Ritz pair (θ, v), |v| = 1, r = |Av − θv|, some eigenvalue lies in [θ − r, θ + r], and a
Rayleigh quotient θ is ≥ λ_min and ≤ λ_max. That the eigenvalue near θ is the *smallest* needs
more:

* **Sylvester inertia** (where the matrix fits): a Cholesky factorisation of A − σI that succeeds
  proves λ_min(A) ≥ σ − m, and one of A − μI + c·vvᵀ proves λ₂(A) ≥ μ − m (a rank-one positive
  update lifts at most one eigenvalue: interlacing), where m = γ_{n+1}·Σ|b_ii| bounds the
  backward error of the factorisation of B (Demmel's bound |ΔB| ≤ γ_{n+1}|Rᵀ||R|, whose 2-norm
  is ≤ trace; Rump's test of positive definiteness);
* **Kato–Temple**: with λ₂ ≥ μ > θ, λ₁ ≥ θ − r²/(μ − θ) — far tighter than θ − r when r ≪ gap.

Without a factorisation (the matrix does not fit) μ is *estimated* from the next Ritz value
(θ₂ − r₂): the interval is reported, but not as certified. Rounding in the operator's own
products and in θ is counted as ρ = eps·|λ_max| at each end (``scale``; measured on the
forest-fires Gram: Ritz values of the accumulated products differ from fresh Rayleigh quotients
by 3e-15 ≈ 0.03·eps·λ_max) — an allowance of the usual size, not a rigorous rounding bound.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.linalg
import torch

from .preconditioners import Preconditioner
from .results import EPS, EigenInterval

__all__ = ["FactorPreconditioner", "kato_temple_lower", "smallest_interval", "largest_interval", "dense_interval",
           "operator_as_dense", "cholesky_margin", "is_positive_definite"]

log = logging.getLogger(__name__)


def kato_temple_lower(theta: float, residual: float, mu: float) -> float:
    """A lower bound of λ₁ from a Ritz pair (θ, r) and a lower bound μ > θ of λ₂: the better of
    Kato–Temple θ − r²/(μ − θ) and, when θ + r < μ (the residual interval holds λ₁ only),
    θ − r; −inf when μ ≤ θ."""
    if not mu > theta:
        return -math.inf
    drop = residual * residual / (mu - theta)
    if theta + residual < mu:
        drop = min(drop, residual)
    return theta - drop


def cholesky_margin(diagonal: np.ndarray, extra: float = 0.0) -> float:
    """m = γ_{n+1}·(Σ|b_ii| + extra), γ_k = k·eps/(1 − k·eps): a factorisation of B that
    succeeds in float64 proves λ_min(B) ≥ −m (``extra``: the trace of a rank-k update)."""
    n = diagonal.size
    gamma = (n + 1) * EPS / (1 - (n + 1) * EPS)
    return gamma * (float(np.abs(diagonal).sum()) + abs(extra))


def is_positive_definite(B: np.ndarray) -> bool:
    """Whether the Cholesky factorisation of B (overwritten) succeeds."""
    try:
        scipy.linalg.cholesky(B, lower=True, overwrite_a=True, check_finite=False)
        return True
    except np.linalg.LinAlgError:
        return False


class FactorPreconditioner(Preconditioner):
    """(A + σI)⁻¹ exactly, by a Cholesky factor of the formed matrix (where it fits): the inner
    PCG of shift-invert then converges in a step or two. Falls back to an eigendecomposition
    floor when A + σI does not factorise (σ raised until it does)."""

    name = "cholesky"

    def __init__(self, A: np.ndarray, shift: float) -> None:
        sigma = max(float(shift), 0.0)
        scale = max(float(np.abs(np.diagonal(A)).max()), 1e-300)
        while True:
            try:
                L = scipy.linalg.cholesky(A + sigma * np.eye(A.shape[0]), lower=True,
                                          check_finite=False)
                break
            except np.linalg.LinAlgError:
                sigma = max(8.0 * sigma, EPS * scale)
        self.L, self.shift = torch.as_tensor(L), sigma

    def apply(self, R: torch.Tensor) -> torch.Tensor:
        L = self.L.to(device=R.device, dtype=R.dtype)
        return torch.cholesky_solve(R, L)


def operator_as_dense(op: Any, max_n: int, block: int = 512) -> np.ndarray | None:
    """The n×n matrix of a symmetric operator (products with blocks of unit vectors),
    symmetrised; None when n > ``max_n``. A numpy array is returned as it is."""
    n = op.shape[0]
    if n > max_n:
        return None
    if isinstance(op, np.ndarray):
        A = np.array(op, dtype=np.float64)
    else:
        A = np.empty((n, n))
        for j in range(0, n, block):
            E = np.zeros((n, min(block, n - j)))
            E[j:j + E.shape[1]] = np.eye(E.shape[1])
            A[:, j:j + E.shape[1]] = np.asarray(op.matmat(E), dtype=np.float64)
    A += A.T
    A *= 0.5
    return A


def _inertia_gap(A: np.ndarray, theta: float, r: float, v: np.ndarray,
                 gap: float) -> tuple[float, float]:
    """The largest μ' = μ − m > θ (μ on a ladder θ + f·gap) for which A − μI + c·vvᵀ factorises,
    i.e. a proven λ₂ ≥ μ'; (−inf, μ tried last) when none does."""
    diag = np.diagonal(A)
    mu = theta
    for f in (0.9, 0.5, 0.25, 0.1, 0.03):
        mu = theta + f * gap
        c = 10.0 * (mu - theta + r)
        B = A - mu * np.eye(A.shape[0]) + c * np.outer(v, v)
        margin = cholesky_margin(diag - mu, c)
        if mu - margin > theta and is_positive_definite(B):
            return mu - margin, mu
    return -math.inf, mu


def _inertia_floor(A: np.ndarray, theta: float, r: float) -> float:
    """σ − m for the first σ on the ladder θ − r − k·m (k = 0, 2, 10) where A − σI factorises
    (a proven λ_min ≥ σ − m), else −inf."""
    margin = cholesky_margin(np.diagonal(A) - theta)
    for k in (0.0, 2.0, 10.0):
        sigma = theta - r - k * margin
        if is_positive_definite(A - sigma * np.eye(A.shape[0])):
            return sigma - cholesky_margin(np.diagonal(A) - sigma)
    return -math.inf


def _tight(lo: float, hi: float, value: float, rtol: float) -> bool:
    return bool(hi - lo <= rtol * abs(value))


def _widen(iv: EigenInterval, rounding: float, rtol: float) -> EigenInterval:
    """[lo − ρ, hi + ρ]; converged only if still ≤ rtol·|value| wide (else say why)."""
    if rounding <= 0:
        return iv
    iv.lo, iv.hi = iv.lo - rounding, iv.hi + rounding
    if iv.converged and not _tight(iv.lo, iv.hi, iv.value, rtol):
        iv.converged = False
        iv.why = (f"interval [{iv.lo:.6g}, {iv.hi:.6g}] (rounding eps·|λ_max| = {rounding:.2g} "
                  f"at each end) wider than rtol·|λ| = {rtol * abs(iv.value):.2g}: the float64 "
                  "resolution does not allow it")
    return iv


def smallest_interval(theta: np.ndarray, residuals: np.ndarray, rtol: float,
                      vector: np.ndarray | None = None, matrix: np.ndarray | None = None,
                      scale: float = 0.0) -> EigenInterval:
    """:func:`_smallest_interval`, widened by the rounding allowance eps·|``scale``|
    (``scale``: λ_max)."""
    return _widen(_smallest_interval(theta, residuals, rtol, vector, matrix),
                  EPS * abs(float(scale)), rtol)


def _smallest_interval(theta: np.ndarray, residuals: np.ndarray, rtol: float,
                       vector: np.ndarray | None = None,
                       matrix: np.ndarray | None = None) -> EigenInterval:
    """The interval of λ_min from the ascending Ritz values ``theta`` (Rayleigh–Ritz, so
    λ_min ≤ θ₁) and their residuals: certified by inertia when ``matrix`` (the dense A) and
    θ₁'s unit ``vector`` are given, else with the gap estimated from θ₂ − r₂.
    Converged iff hi − lo ≤ ``rtol``·|θ₁| and certified."""
    th, r = float(theta[0]), float(residuals[0])
    gap = float(theta[1] - residuals[1] - th) if len(theta) > 1 else math.nan
    gap_est = gap if gap > 0 else max(abs(th), r)
    if matrix is None or vector is None:
        lo = kato_temple_lower(th, r, th + gap) if gap > 0 else th - r
        how = ("Ritz residual" + (" + Kato–Temple, gap from the next Ritz value" if gap > 0
                                  else "") + " (estimate: no inertia check, matrix not formed)")
        why = "smallest not certified: the matrix is too large for an inertia check"
        return EigenInterval(th, lo, th, False, how, False, why)
    v = np.asarray(vector, dtype=np.float64) / np.linalg.norm(vector)
    mu, tried = _inertia_gap(matrix, th, r, v, gap_est)
    if mu > th:
        lo = kato_temple_lower(th, r, mu)
        how = f"Kato–Temple with λ₂ ≥ {mu:.4g} proven by Cholesky of A − μI + c·vvᵀ"
    else:
        lo = _inertia_floor(matrix, th, r)
        how = f"Ritz residual; λ_min ≥ {lo:.4g} proven by Cholesky of A − σI"
    if not math.isfinite(lo):
        why = (f"smallest not certified: Cholesky of A − σI fails down to σ = θ − r − 10m "
               f"(θ = {th:.4g}, r = {r:.2g}): an eigenvalue may lie below the Ritz interval "
               "(the iteration may have missed the smallest)")
        return EigenInterval(th, th - r, th, False, "Ritz residual (smallest not proven)", False,
                             why)
    tight = _tight(lo, th, th, rtol)
    why = "" if tight else (f"interval [{lo:.4g}, {th:.4g}] wider than rtol·|λ_min| = "
                            f"{rtol * abs(th):.2g}")
    return EigenInterval(th, lo, th, True, how, tight, why)


def largest_interval(theta: float, residual: float, rtol: float,
                     matrix: np.ndarray | None = None) -> EigenInterval:
    """The interval [θ, θ + r] of λ_max (θ a Rayleigh quotient ≤ λ_max; both ends widened by the
    rounding allowance eps·|θ|); the upper end proven by a Cholesky factorisation of
    (θ + r)I − A when ``matrix`` is given."""
    return _widen(_largest_interval(theta, residual, rtol, matrix), EPS * abs(float(theta)), rtol)


def _largest_interval(theta: float, residual: float, rtol: float,
                      matrix: np.ndarray | None = None) -> EigenInterval:
    th, r = float(theta), float(residual)
    if matrix is None:
        return EigenInterval(th, th, th + r, False, "Ritz residual (estimate: no inertia check)",
                             _tight(th, th + r, th, rtol), "largest not certified")
    sigma = th + r
    B = sigma * np.eye(matrix.shape[0]) - matrix
    margin = cholesky_margin(sigma - np.diagonal(matrix))
    if is_positive_definite(B):
        hi = sigma + margin
        return EigenInterval(th, th, hi, True, "Rayleigh quotient; Cholesky of (θ + r)I − A",
                             _tight(th, hi, th, rtol))
    return EigenInterval(th, th, th + r, False, "Ritz residual (largest refuted)", False,
                         f"not the largest: Cholesky of (θ + r)I − A fails at θ + r = {sigma:.4g}")


def dense_interval(value: float, lambda_max: float, n: int, smallest: bool) -> EigenInterval:
    """±τ = n·eps·|λ_max| around an eigenvalue of a full backward-stable eigh (the backward
    error bound, by Weyl: every computed eigenvalue within it of its exact one); the extreme one
    is certified because the whole spectrum was computed."""
    tau = float(n) * EPS * abs(float(lambda_max))
    what = "λ_min" if smallest else "λ_max"
    return EigenInterval(float(value), float(value) - tau, float(value) + tau, True,
                         f"full spectrum (eigh); {what} ± n·eps·|λ_max| (backward error)")
