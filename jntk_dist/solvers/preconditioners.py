"""Preconditioners for (Θ_λ + μI) that use the structure of the Jacobian kernels: they are built
from the :class:`~jntk_dist.operators.StructuredParts` of the square operator (its block
diagonal, field matrices or columns, the compression on span{e_0, x̂_i}), whatever computes its
products (this process, Ray actors, Dask tasks).

  * ``"kron"``:   blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I_d0) -- the 00 block and the isotropic
                  κ_b δ_αβ part of the Jacobian block, two Cholesky factors of n×n matrices;
  * ``"jacobi"``: the exact inverse of each point's (d0+1)² diagonal block (scaled identity plus
                  a rank-one term on span{e_0, x_i}: a 2×2 solve per point);
  * ``"two_level"``: exact on span{e_0, x̂_i} of every point (a 2n×2n compression that holds the
                  00 block and every term living in the span of x_i), Kronecker on the rest;
  * ``"nystrom"``: two-level with both factors replaced by pivoted-Cholesky (Nyström) low rank +
                  exact diagonal, set up from r field columns (large N);
  * ``"pca"``:    exact on a per-point coarse space {e_0, top-k PCA directions of X, the rest of
                  x_i}, Kronecker on its complement (:mod:`.coarse`; real images, N ≲ 10⁴);
  * ``"none"``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from ..kernels import FIELD_NAMES
from ..operators.base import StructuredParts
from .preconditioner_base import Preconditioner

log = logging.getLogger(__name__)
Tensor = torch.Tensor

__all__ = ["PRECONDITIONERS", "Preconditioner", "IdentityPreconditioner",
           "BlockJacobiPreconditioner", "KroneckerPreconditioner", "TwoLevelPreconditioner",
           "NystromPreconditioner", "pivoted_cholesky", "make_preconditioner",
           "auto_preconditioner"]

PRECONDITIONERS = ("none", "jacobi", "kron", "two_level", "nystrom", "pca", "auto")


# ---- preconditioners --------------------------------------------------------------------


class IdentityPreconditioner(Preconditioner):
    name = "none"

    def apply(self, R: Tensor) -> Tensor:
        return R.clone()


class BlockJacobiPreconditioner(Preconditioner):
    """Exact inverse of each point's diagonal block B_i + μI.

    B_i = [[k, c_row xᵀ], [c_col x, iso·I + e x xᵀ]] acts as (iso + μ) on the complement of x and
    as a 2×2 matrix on span{e_0, x̂}.
    """

    name = "jacobi"

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


def _psd_factor(A: Tensor, ridge: float, what: str) -> tuple[str, Tensor]:
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


def _factor_solve(fac: tuple[str, Any], B: Tensor) -> Tensor:
    kind, F = fac
    if kind == "lowrank":  # (L Lᵀ + D)⁻¹ B = D⁻¹B − D⁻¹L (I + LᵀD⁻¹L)⁻¹ LᵀD⁻¹B
        L, dinv, cap = F
        Y = dinv[:, None] * B
        return Y - dinv[:, None] * (L @ torch.cholesky_solve(L.T @ Y, cap))
    return torch.cholesky_solve(B, F) if kind == "chol" else F @ B


def _jacobian_factor(K_b: Tensor, lam: float, ridge: float) -> tuple[str, Tensor]:
    """Factor of (λK_b + μI), the Jacobian part's n×n matrix; λ = 0 leaves μI alone."""
    if lam == 0.0:
        if ridge <= 0:
            raise ValueError("λ = 0 makes the Jacobian rows of Θ_λ zero: use a ridge μ > 0")
        return ("eig", torch.eye(K_b.shape[0], dtype=K_b.dtype, device=K_b.device) / ridge)
    return _psd_factor(lam * K_b, ridge, "λK_b")


class KroneckerPreconditioner(Preconditioner):
    """blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I_d0) in the point-major ordering.

    Needs the n×n fields κ and κ_b once (assembled tile by tile) and two Cholesky factors:
    O(n³) set-up, O(n² d0) per application -- the cost of one operator product.
    """

    name = "kron"

    def __init__(self, op: StructuredParts, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the Kronecker preconditioner needs the square X–X operator")
        mats = op.field_matrices(["k", "k_b"])
        lam = op.weights.jac
        self.n, self.d0 = op.n1, op.d0
        self.f00 = _psd_factor(mats["k"], ridge, "K")
        self.fjac = _jacobian_factor(mats["k_b"], lam, ridge)

    def apply(self, R: Tensor) -> Tensor:
        n, d0, m = self.n, self.d0, R.shape[1]
        Rb = R.reshape(n, d0 + 1, m)
        z0 = _factor_solve(self.f00, Rb[:, 0, :].contiguous())
        zj = _factor_solve(self.fjac, Rb[:, 1:, :].reshape(n, d0 * m)).reshape(n, d0, m)
        return torch.cat([z0[:, None, :], zj], dim=1).reshape(R.shape)


class TwoLevelPreconditioner(Preconditioner):
    """Exact on span{e_0, x̂_i} of every point, Kronecker on the rest.

    With the orthonormal Q = [e_i⊗e_0, e_i⊗x̂_i] (2n columns) and P⊥ = I − QQᵀ:
        M = Q (QᵀAQ + μI)⁻¹ Qᵀ + P⊥ ((λK_b + μI)⁻¹ ⊗ I_d0) P⊥.
    QᵀAQ holds the whole 00 block and all the κ_a, κ_c, κ_ab, κ_ac, κ_bc terms (they live in the
    span of x_i); on the complement only κ_b δ_αβ and the κ_bb x_j x_iᵀ term remain.
    Set-up: all 8 fields (n×n), a 2n Cholesky and an n Cholesky.
    """

    name = "two_level"

    def __init__(self, op: StructuredParts, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the two-level preconditioner needs the square X–X operator")
        F = op.field_matrices(FIELD_NAMES)
        lam = op.weights.jac
        self.n, self.d0 = op.n1, op.d0
        self.xhat = op.x1 / torch.linalg.vector_norm(op.x1, dim=1)[:, None]
        C = op.compressed_on_inputs(F)
        self.fq = _psd_factor(0.5 * (C + C.T), ridge, "QᵀKQ")
        self.fjac = _jacobian_factor(F["k_b"], lam, ridge)

    def apply(self, R: Tensor) -> Tensor:
        n, d0, m = self.n, self.d0, R.shape[1]
        Rb = R.reshape(n, d0 + 1, m)
        rj = Rb[:, 1:, :]
        cx = torch.einsum("nd,ndm->nm", self.xhat, rj)
        zq = _factor_solve(self.fq, torch.cat([Rb[:, 0, :], cx], 0))
        perp = rj - self.xhat[:, :, None] * cx[:, None, :]
        zj = _factor_solve(self.fjac, perp.reshape(n, d0 * m)).reshape(n, d0, m)
        zj = zj - self.xhat[:, :, None] * torch.einsum("nd,ndm->nm", self.xhat, zj)[:, None, :]
        zj = zj + self.xhat[:, :, None] * zq[n:, None, :]
        return torch.cat([zq[:n, None, :], zj], dim=1).reshape(R.shape)


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


def _lowrank_factor(L: Tensor, residual_diag: Tensor, ridge: float, floor: float
                    ) -> tuple[str, Any]:
    """Factor of L Lᵀ + diag(residual_diag) + μI, applied by the Woodbury identity."""
    dinv = 1.0 / (residual_diag + ridge).clamp_min(floor)
    cap = torch.eye(L.shape[1], dtype=L.dtype, device=L.device) + L.T @ (dinv[:, None] * L)
    return "lowrank", (L, dinv, torch.linalg.cholesky(cap))


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
        self.fq = _lowrank_factor(Lq, (cdiag - (Lq ** 2).sum(1)).clamp_min(0.0), ridge, floor)
        if lam == 0.0:
            self.fjac = _jacobian_factor(torch.zeros((n, n), dtype=cdiag.dtype), lam, ridge)
        else:
            kb_diag = op.field_diagonal("k_b")
            Lb = pivoted_cholesky(lam * kb_diag, lambda idx: lam * op.field_columns("k_b", idx),
                                  self.rank, rel_tol)
            resid = (lam * kb_diag - (Lb ** 2).sum(1)).clamp_min(0.0)
            self.fjac = _lowrank_factor(Lb, resid, ridge, floor)
        self.ranks = (Lq.shape[1], self.fjac[1][0].shape[1] if self.fjac[0] == "lowrank" else 0)


def auto_preconditioner(n: int, device: torch.device, reserve_bytes: float = 0.0) -> str:
    """'pca' where its smallest coarse space (2n, k = 0) fits the device's free memory beside
    ``reserve_bytes``, with the fields recomputed by row tiles if need be
    (:func:`.coarse.coarse_budget`), else 'nystrom' (3n·r numbers; no N² factor)."""
    from .coarse import coarse_budget

    choice = "pca" if 2 * n <= coarse_budget(device, n, reserve_bytes, held=0.5) else "nystrom"
    log.info("preconditioner: auto → %s (N = %d on %s)", choice, n, device)
    return choice


def make_preconditioner(op: StructuredParts, kind: str | Preconditioner | None = "kron",
                        ridge: float = 0.0) -> Preconditioner:
    """A preconditioner for (op + ridge·I) by name: 'none', 'jacobi', 'kron', 'two_level',
    'nystrom' (low-rank + diagonal, rank from a 256 MB budget; build
    :class:`NystromPreconditioner` yourself for another rank or budget) or 'pca' (the PCA
    coarse space of :mod:`.coarse`, for real images) or 'auto' (:func:`auto_preconditioner`)."""
    if isinstance(kind, Preconditioner):
        return kind
    kind = "none" if kind is None else kind
    if kind == "auto":
        from .coarse import tile_reserve

        kind = auto_preconditioner(op.n1, op.x1.device, tile_reserve(op))
    if kind == "none":
        return IdentityPreconditioner()
    if kind == "jacobi":
        return BlockJacobiPreconditioner(op, ridge)
    if kind == "kron":
        return KroneckerPreconditioner(op, ridge)
    if kind == "two_level":
        return TwoLevelPreconditioner(op, ridge)
    if kind == "nystrom":
        return NystromPreconditioner(op, ridge)
    if kind == "pca":
        from .coarse import PcaCoarsePreconditioner

        return PcaCoarsePreconditioner(op, ridge)
    raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {kind!r}")
