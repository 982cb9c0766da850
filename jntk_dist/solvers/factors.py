"""Factorisations the preconditioners share: a Cholesky factor of a PSD matrix plus a ridge
(eigenvalues floored where it is not positive definite), the λK_b factor of the Jacobian part,
a greedy pivoted Cholesky (Nyström) and a low-rank + diagonal factor applied by the Woodbury
identity, and a Cholesky factor written over its matrix."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

__all__ = ["psd_factor", "factor_solve", "jacobian_factor", "pivoted_cholesky",
           "lowrank_factor", "factor_in_place"]

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def psd_factor(A: Tensor, ridge: float, what: str) -> tuple[str, Tensor]:
    """("chol", L) of A + μI, or ("eig", the floored pseudo-inverse) where it is not PD."""
    A = A + ridge * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return "chol", L
    # Not positive definite at this ridge: pseudo-inverse via eigh with the spectrum floored.
    w, Q = torch.linalg.eigh(A)
    floor = max(float(w.max()) * 1e-10, 1e-300)
    log.warning("%s + μI is not positive definite (λ_min=%.3e); flooring eigenvalues at %.1e",
                what, float(w.min()), floor)
    return "eig", Q / w.clamp_min(floor)[None, :] @ Q.T


def factor_solve(fac: tuple[str, Any], B: Tensor) -> Tensor:
    """The factored matrix's inverse times B (any factor made here)."""
    kind, F = fac
    if kind == "lowrank":  # (L Lᵀ + D)⁻¹ B = D⁻¹B − D⁻¹L (I + LᵀD⁻¹L)⁻¹ LᵀD⁻¹B
        L, dinv, cap = F
        Y = dinv[:, None] * B
        return Y - dinv[:, None] * (L @ torch.cholesky_solve(L.T @ Y, cap))
    return torch.cholesky_solve(B, F) if kind == "chol" else F @ B


def jacobian_factor(K_b: Tensor, lam: float, ridge: float) -> tuple[str, Tensor]:
    """Factor of (λK_b + μI), the Jacobian part's n×n matrix; λ = 0 leaves μI alone."""
    if lam == 0.0:
        if ridge <= 0:
            raise ValueError("λ = 0 makes the Jacobian rows of Θ_λ zero: use a ridge μ > 0")
        return ("eig", torch.eye(K_b.shape[0], dtype=K_b.dtype, device=K_b.device) / ridge)
    return psd_factor(lam * K_b, ridge, "λK_b")


def pivoted_cholesky(diagonal: Tensor, columns: Callable[[list[int]], Tensor], max_rank: int,
                     rel_tol: float = 1e-10) -> Tensor:
    """Greedy pivoted Cholesky of a PSD n×n matrix known by its diagonal and its columns.

    ``columns(idx)`` returns the (n, len(idx)) columns.  Stops at ``max_rank`` or when the trace
    of the residual falls below ``rel_tol``·trace.  Returns L (n, r) with A ≈ L Lᵀ (the Nyström
    approximation on the pivot columns); diag(A − L Lᵀ) ≥ 0 is what it leaves out.
    """
    n = diagonal.shape[0]
    d = diagonal.clone().clamp_min(0.0)
    trace0 = float(d.sum())
    L = torch.zeros((n, max(0, min(max_rank, n))), dtype=diagonal.dtype, device=diagonal.device)
    r = 0
    while r < L.shape[1]:
        i = int(torch.argmax(d))
        if float(d.sum()) <= rel_tol * trace0 or float(d[i]) <= 0:
            break
        c = columns([i])[:, 0] - L[:, :r] @ L[i, :r]
        L[:, r] = c / math.sqrt(float(d[i]))
        d = (d - L[:, r] ** 2).clamp_min(0.0)
        d[i] = 0.0
        r += 1
    return L[:, :r]


def lowrank_factor(L: Tensor, residual_diag: Tensor, ridge: float, floor: float
                   ) -> tuple[str, Any]:
    """Factor of L Lᵀ + diag(residual_diag) + μI, applied by the Woodbury identity."""
    dinv = 1.0 / (residual_diag + ridge).clamp_min(floor)
    cap = torch.eye(L.shape[1], dtype=L.dtype, device=L.device) + L.T @ (dinv[:, None] * L)
    return "lowrank", (L, dinv, torch.linalg.cholesky(cap))


def factor_in_place(A: Tensor, what: str) -> Tensor:
    """A overwritten by its lower Cholesky factor (its lower triangle is read), or a message."""
    info = torch.empty((), dtype=torch.int32, device=A.device)
    torch.linalg.cholesky_ex(A, out=(A, info))
    if int(info) != 0:
        raise ValueError(f"{what} is not positive definite: use a ridge μ > 0")
    return A
