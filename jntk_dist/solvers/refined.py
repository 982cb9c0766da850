"""The PCA coarse space with a float32 coarse factor made exact by float64 refinement
("pca_refined"): half the memory of ``pca``'s float64 coarse factor, the same iterations.

``pca``'s A-DEF2 form needs an exact coarse solve (a float32 factor alone stalled PCG,
:mod:`.coarse`). Here the coarse matrix C = Tᵀ(A + μI)T is formed by the same row tiles but
stored, and factored in place, in float32 ((N(k+2))²·4 bytes), and every coarse solve C z = b
is refined in float64:

    z₀ = C₃₂⁻¹ b,   r_j = b − C z_j,   z_{j+1} = z_j + C₃₂⁻¹ r_j,   until ‖r_j‖ ≤ tol·‖b‖,

per column, with the float64 product of C taken matrix-free through the structured operator:
C y = Tᵀ A (T y) + μ y (T has orthonormal columns per point: e₀, the k PCA directions, q_i ⊥ V),
the coordinates q_i of points inside span V (no q-direction) kept as the identity, as in C.
Each refinement step costs one product of the operator with the coarse block's columns (the
same contraction as a PCG product; a cheaper product restricted to the coarse space is not
written yet). The refinement converges at the rate ‖I − C₃₂⁻¹C‖ ≈ κ(C)·ε₃₂; with tol = 1e-10
the outer PCG sees an exact coarse solve to 1e-10, so it stays the ordinary (not flexible) PCG
of :mod:`.cg`. A coarse solve that stops short of tol (stagnation at κ(C)·ε₆₄, or
``max_refine`` steps) is logged with the residual it reached and kept in
``worst_coarse_residual``; the outer PCG still checks its own true residual.
"""

from __future__ import annotations

import logging

import torch

from ..operators.base import StructuredParts
from .coarse import PcaCoarsePreconditioner
from .registry import register

__all__ = ["RefinedPcaPreconditioner", "REFINE_TOL", "MAX_REFINE"]

log = logging.getLogger(__name__)
Tensor = torch.Tensor

REFINE_TOL = 1e-10  # relative residual of each coarse solve, per column
MAX_REFINE = 30  # refinement steps at most per coarse solve


@register
class RefinedPcaPreconditioner(PcaCoarsePreconditioner):
    """``pca`` (:class:`.coarse.PcaCoarsePreconditioner`, same keywords) with its coarse factor
    in float32, each coarse solve refined in float64 to ``refine_tol`` (module docstring).
    ``refine_products``: columns of operator products spent on refinement so far;
    ``worst_coarse_residual``: the largest relative residual a coarse solve ended at."""

    name = "pca_refined"
    description = ("pca with its coarse factor in float32 (half the memory), each coarse solve "
                   "refined in float64 with matrix-free products of the coarse matrix")
    coarse_dtype = torch.float32
    coarse_entry_bytes = 4

    def __init__(self, op: StructuredParts, ridge: float = 0.0, refine_tol: float = REFINE_TOL,
                 max_refine: int = MAX_REFINE, **options) -> None:
        if op.x1.dtype != torch.float64:
            raise ValueError("pca_refined refines in the operator's precision: it needs the "
                             "float64 structured operator (use pca for a float32 one)")
        self.refine_tol, self.max_refine = float(refine_tol), int(max_refine)
        self.refine_products, self.refine_steps, self.coarse_solves = 0, 0, 0
        self.worst_coarse_residual = 0.0
        super().__init__(op, ridge, **options)
        self.dead = (~self.mask).nonzero().flatten()

    def _coarse_product(self, y: Tensor) -> Tensor:
        """C y in float64 without C: Tᵀ A (T y) + μ y, the dead q-coordinates as the identity."""
        n, p, m = y.shape
        Ty = self._prolong(y, torch.zeros((n, self.d0, m), dtype=y.dtype, device=y.device))
        ATy = self.op.matmat(Ty.reshape(n * (self.d0 + 1), m)).reshape(n, self.d0 + 1, m)
        self.refine_products += m
        Cy = self._restrict(ATy[:, 1:, :], ATy[:, 0, :]) + self.mu * y
        Cy[self.dead, p - 1, :] = y[self.dead, p - 1, :]
        return Cy

    def _factor_solve(self, b: Tensor) -> Tensor:
        """C₃₂⁻¹ b in float32, each column scaled to its largest entry first (no underflow of
        the small late residuals), returned in float64."""
        scale = b.abs().amax(dim=(0, 1)).clamp_min(torch.finfo(torch.float64).tiny)
        z = super()._coarse_solve((b / scale).to(self.coarse_dtype))
        return z.to(b.dtype) * scale

    def _coarse_solve(self, b: Tensor) -> Tensor:
        """C⁻¹ b to ``refine_tol`` per column by iterative refinement (module docstring)."""
        self.coarse_solves += 1
        b_norm = torch.linalg.vector_norm(b, dim=(0, 1)).clamp_min(1e-300)
        z = self._factor_solve(b)
        rel_prev = None
        for _ in range(self.max_refine):
            r = b - self._coarse_product(z)
            rel = float((torch.linalg.vector_norm(r, dim=(0, 1)) / b_norm).max())
            if rel <= self.refine_tol or (rel_prev is not None and rel > 0.5 * rel_prev):
                break
            z = z + self._factor_solve(r)
            self.refine_steps += 1
            rel_prev = rel
        if rel > self.refine_tol:
            if rel > 10 * self.worst_coarse_residual:
                log.warning("pca_refined: a coarse solve stopped at relative residual %.2e "
                            "(tol %.0e): κ(C)·ε is near the tolerance", rel, self.refine_tol)
            self.worst_coarse_residual = max(self.worst_coarse_residual, rel)
        return z
