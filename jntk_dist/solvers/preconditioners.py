"""The structured preconditioners of (Θ_λ + μI), and :func:`make_preconditioner`, which builds
any registered one by name (:mod:`.registry`: the one list of names). They are built from the
:class:`~jntk_dist.operators.StructuredParts` of the square operator (its block diagonal, field
matrices or columns, the compression on span{e_0, x̂_i}), whatever computes its products (this
process, Ray actors, Dask tasks).

  * ``"kron"``:   blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I_d0) -- the 00 block and the isotropic
                  κ_b δ_αβ part of the Jacobian block, two Cholesky factors of n×n matrices;
  * ``"jacobi"``: the exact inverse of each point's (d0+1)² diagonal block (scaled identity plus
                  a rank-one term on span{e_0, x_i}: a 2×2 solve per point);
  * ``"two_level"``: exact on span{e_0, x̂_i} of every point (a 2n×2n compression that holds the
                  00 block and every term living in the span of x_i), Kronecker on the rest;
  * ``"nystrom"``: two-level with both factors replaced by pivoted-Cholesky (Nyström) low rank +
                  exact diagonal, set up from r field columns (large N);
  * ``"none"``;
  * registered by their own modules: ``"pca"`` (:mod:`.coarse`), ``"pca_refined"`` (its float32
    coarse factor refined in float64, :mod:`.refined`), ``"direct"`` (:mod:`.direct`),
    ``"rpcholesky"`` (:mod:`.lowrank`) and ``"auto"`` (:mod:`.auto`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..kernels import FIELD_NAMES
from ..operators.base import StructuredParts
from .factors import (factor_solve, jacobian_factor, lowrank_factor, pivoted_cholesky,
                      psd_factor)
from .registry import Preconditioner, preconditioner_class, preconditioner_names, register

log = logging.getLogger(__name__)
Tensor = torch.Tensor

__all__ = ["PRECONDITIONERS", "Preconditioner", "IdentityPreconditioner",
           "BlockJacobiPreconditioner", "KroneckerPreconditioner", "TwoLevelPreconditioner",
           "NystromPreconditioner", "pivoted_cholesky", "make_preconditioner"]


@register
class IdentityPreconditioner(Preconditioner):
    name = "none"

    def __init__(self, op: Any = None, ridge: float = 0.0) -> None:
        pass

    def apply(self, R: Tensor) -> Tensor:
        return R.clone()


@register
class BlockJacobiPreconditioner(Preconditioner):
    """Exact inverse of each point's diagonal block B_i + μI.

    B_i = [[k, c_row xᵀ], [c_col x, iso·I + e x xᵀ]] acts as (iso + μ) on the complement of x and
    as a 2×2 matrix on span{e_0, x̂}.
    """

    name = "jacobi"
    description = "exact inverse of each point's (d0+1)² diagonal block (O(N d0))"

    def __init__(self, op: StructuredParts, ridge: float = 0.0) -> None:
        p = op.block_diagonal_parts()
        x = op.x1
        self.d0 = op.d0
        norm = torch.linalg.vector_norm(x, dim=1)
        self.xhat = x / norm[:, None]
        self.perp = p["iso"] + ridge
        a = p["k"] + ridge
        b = p["c_row"] * norm
        c = p["c_col"] * norm
        d = p["iso"] + p["rank1"] * norm ** 2 + ridge
        det = a * d - b * c
        bad = (det.abs() <= 1e-300) | (self.perp.abs() <= 1e-300)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} diagonal block(s) are singular (add a ridge μ > 0)")
        self.inv = torch.stack([d / det, -b / det, -c / det, a / det])  # [[a, b], [c, d]]⁻¹

    def apply(self, R: Tensor) -> Tensor:
        n, m = self.xhat.shape[0], R.shape[1]
        Rb = R.reshape(n, self.d0 + 1, m)
        r0, rj = Rb[:, 0, :], Rb[:, 1:, :]
        rx = torch.einsum("nd,ndm->nm", self.xhat, rj)  # component along x̂
        i00, i01, i10, i11 = (t[:, None] for t in self.inv)
        z0 = i00 * r0 + i01 * rx
        zx = i10 * r0 + i11 * rx
        zj = (rj - self.xhat[:, :, None] * rx[:, None, :]) / self.perp[:, None, None]
        zj = zj + self.xhat[:, :, None] * zx[:, None, :]
        return torch.cat([z0[:, None, :], zj], dim=1).reshape(R.shape)


@register
class KroneckerPreconditioner(Preconditioner):
    """blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I_d0) in the point-major ordering.

    Needs the n×n fields κ and κ_b once (assembled tile by tile) and two Cholesky factors:
    O(n³) set-up, O(n² d0) per application -- the cost of one operator product.
    """

    name = "kron"
    description = "blockdiag((K+μI)⁻¹, (λK_b+μI)⁻¹ ⊗ I): two N×N Cholesky factors"

    def __init__(self, op: StructuredParts, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the Kronecker preconditioner needs the square X–X operator")
        mats = op.field_matrices(["k", "k_b"])
        lam = op.weights.jac
        self.n, self.d0 = op.n1, op.d0
        self.f00 = psd_factor(mats["k"], ridge, "K")
        self.fjac = jacobian_factor(mats["k_b"], lam, ridge)

    def apply(self, R: Tensor) -> Tensor:
        n, d0, m = self.n, self.d0, R.shape[1]
        Rb = R.reshape(n, d0 + 1, m)
        z0 = factor_solve(self.f00, Rb[:, 0, :].contiguous())
        zj = factor_solve(self.fjac, Rb[:, 1:, :].reshape(n, d0 * m)).reshape(n, d0, m)
        return torch.cat([z0[:, None, :], zj], dim=1).reshape(R.shape)


@register
class TwoLevelPreconditioner(Preconditioner):
    """Exact on span{e_0, x̂_i} of every point, Kronecker on the rest.

    With the orthonormal Q = [e_i⊗e_0, e_i⊗x̂_i] (2n columns) and P⊥ = I − QQᵀ:
        M = Q (QᵀAQ + μI)⁻¹ Qᵀ + P⊥ ((λK_b + μI)⁻¹ ⊗ I_d0) P⊥.
    QᵀAQ holds the whole 00 block and all the κ_a, κ_c, κ_ab, κ_ac, κ_bc terms (they live in the
    span of x_i); on the complement only κ_b δ_αβ and the κ_bb x_j x_iᵀ term remain.
    Set-up: all 8 fields (n×n), a 2n Cholesky and an n Cholesky.
    """

    name = "two_level"
    description = "exact on span{e0, x_i} of every point (2N factor), Kronecker on the rest"

    def __init__(self, op: StructuredParts, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the two-level preconditioner needs the square X–X operator")
        F = op.field_matrices(FIELD_NAMES)
        lam = op.weights.jac
        self.n, self.d0 = op.n1, op.d0
        self.xhat = op.x1 / torch.linalg.vector_norm(op.x1, dim=1)[:, None]
        C = op.compressed_on_inputs(F)
        self.fq = psd_factor(0.5 * (C + C.T), ridge, "QᵀKQ")
        self.fjac = jacobian_factor(F["k_b"], lam, ridge)

    def apply(self, R: Tensor) -> Tensor:
        n, d0, m = self.n, self.d0, R.shape[1]
        Rb = R.reshape(n, d0 + 1, m)
        rj = Rb[:, 1:, :]
        cx = torch.einsum("nd,ndm->nm", self.xhat, rj)
        zq = factor_solve(self.fq, torch.cat([Rb[:, 0, :], cx], 0))
        perp = rj - self.xhat[:, :, None] * cx[:, None, :]
        zj = factor_solve(self.fjac, perp.reshape(n, d0 * m)).reshape(n, d0, m)
        zj = zj - self.xhat[:, :, None] * torch.einsum("nd,ndm->nm", self.xhat, zj)[:, None, :]
        zj = zj + self.xhat[:, :, None] * zq[n:, None, :]
        return torch.cat([zq[:n, None, :], zj], dim=1).reshape(R.shape)


@register
class NystromPreconditioner(TwoLevelPreconditioner):
    """The two-level preconditioner with its two dense factors replaced by low-rank + diagonal
    approximations, for N where O(N²) fields or O(N³) factorisations are out of reach.

    QᵀAQ (2n×2n) and λK_b (n×n) are each approximated by a pivoted Cholesky (Nyström on the
    greedily chosen pivot columns) L Lᵀ plus the exact diagonal of what it leaves out, and
    inverted (with + μI) by the Woodbury identity.  Set-up reads only the pivot columns of the
    fields (r columns, O(n r) field entries, O(n r²) flops); each application is O(n r + n d0).
    ``rank`` (per factor) defaults to what ``memory_mb`` holds: 3n·r float64 numbers.
    """

    name = "nystrom"
    description = ("two_level with pivoted-Cholesky low rank + diagonal factors from r field "
                   "columns (large N, images)")

    def __init__(self, op: StructuredParts, ridge: float = 0.0, rank: int | None = None,
                 memory_mb: float = 256.0, rel_tol: float = 1e-10) -> None:
        if not op.is_square:
            raise ValueError("the Nyström preconditioner needs the square X–X operator")
        n = op.n1
        if rank is None:
            rank = int(memory_mb * 2**20 / (8 * 3 * n))
        self.rank = max(1, min(int(rank), 2 * n))
        lam = op.weights.jac
        self.n, self.d0 = n, op.d0
        self.xhat = op.x1 / torch.linalg.vector_norm(op.x1, dim=1)[:, None]
        cdiag = op.compressed_diagonal()
        floor = 1e-12 * float(cdiag.abs().max())

        cache: dict[int, Tensor] = {}

        def c_columns(idx: list[int]) -> Tensor:
            out = []
            for c in idx:
                j = c % n
                if j not in cache:
                    cache.clear()  # the e_0 and x̂ columns of a point are often both pivots
                    cache[j] = op.compressed_columns([j])
                out.append(cache[j][:, 0 if c < n else 1])
            return torch.stack(out, 1)

        Lq = pivoted_cholesky(cdiag, c_columns, self.rank, rel_tol)
        self.fq = lowrank_factor(Lq, (cdiag - (Lq ** 2).sum(1)).clamp_min(0.0), ridge, floor)
        if lam == 0.0:
            self.fjac = jacobian_factor(torch.zeros((n, n), dtype=cdiag.dtype), lam, ridge)
        else:
            kb_diag = op.field_diagonal("k_b")
            Lb = pivoted_cholesky(lam * kb_diag, lambda idx: lam * op.field_columns("k_b", idx),
                                  self.rank, rel_tol)
            resid = (lam * kb_diag - (Lb ** 2).sum(1)).clamp_min(0.0)
            self.fjac = lowrank_factor(Lb, resid, ridge, floor)
        self.ranks = (Lq.shape[1], self.fjac[1][0].shape[1] if self.fjac[0] == "lowrank" else 0)


# the other modules' preconditioners register themselves on import, after the ones above (so the
# registry lists them in this order); none of them imports this module
from . import coarse, direct, lowrank, auto  # noqa: E402,F401  (registration)
from . import distributed_coarse  # noqa: E402,F401  (pca's coarse_backend "ray")

PRECONDITIONERS = preconditioner_names()


def make_preconditioner(op: StructuredParts, kind: str | Preconditioner | None = "auto",
                        ridge: float = 0.0, **options: Any) -> Preconditioner:
    """A preconditioner for (op + ridge·I) by its registered name (:data:`PRECONDITIONERS`;
    ``None`` is ``"none"``), or ``kind`` itself when it is already one. ``options`` go to the
    class's ``build`` (e.g. ``budget_bytes=`` / ``direct_max=`` for ``auto``, ``rank=`` for
    ``nystrom``). The default ``auto`` (:mod:`.auto`) records its choice and why in
    ``.choice``."""
    if isinstance(kind, Preconditioner):
        return kind
    return preconditioner_class("none" if kind is None else kind).build(op, ridge, **options)
