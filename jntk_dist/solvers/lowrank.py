"""A randomly pivoted Cholesky (Nyström) preconditioner of the whole Θ_λ ("rpcholesky"), for
small d0 and large N: the regime where span(X) is all of R^d0, no per-point coarse space is
exact on anything, and the Gram's hard directions couple values and gradients of many points.

Θ_λ ≈ F Fᵀ by block randomly pivoted Cholesky (Chen, Epperly, Tropp & Webber 2023): each step
samples points with probability ∝ the residual diagonal of their (d0+1) rows, takes their Gram
rows (= columns; formed from one row of fields each, O(N d0²), never a product), and adds the
Cholesky update of that column block. The approximation stops where the effective dimension at μ
is covered: its rank reaches twice d_eff(μ) = Σ σ²/(σ² + μ) of what it has captured (σ² the
eigenvalues of F Fᵀ), or the residual diagonal is below μ everywhere, or the memory plan's rank
cap (F is N(d0+1)×r float64). The preconditioner is (F Fᵀ + D + μI)⁻¹ with D the residual
diagonal, applied by the Woodbury identity (O(N d0 r) per application).
"""

from __future__ import annotations

import logging

import torch

from ..operators.base import StructuredParts
from .direct import expand_gram_rows
from .factors import factor_solve, lowrank_factor
from .memory import Budget, MemoryPlan, budget
from .registry import Preconditioner, register

__all__ = ["RPCholeskyPreconditioner", "rpcholesky_plan", "gram_rows"]

log = logging.getLogger(__name__)
Tensor = torch.Tensor

POINTS_PER_STEP = 16  # points sampled per block step (their (d0+1) columns each)


def gram_rows(op: StructuredParts, points: list[int]) -> Tensor:
    """The Gram rows of the given points, (len(points)·(d0+1), N(d0+1)) point-major
    (:func:`.direct.expand_gram_rows`)."""
    n, p = op.x1.shape[0], op.x1.shape[1] + 1
    return expand_gram_rows(op, points).reshape(len(points) * p, n * p)


BLOCK_TEMPORARIES = 4  # column blocks (m × s·p) alive at once in a step


def rpcholesky_plan(n: int, d0: int, rank: int, usable: Budget, device: str) -> MemoryPlan:
    """F (N(d0+1)×r) and one column block step's temporaries."""
    m = n * (d0 + 1)
    block = POINTS_PER_STEP * (d0 + 1)
    return MemoryPlan(f"rpcholesky (rank ≤ {rank:,})",
                      8 * m * (rank + BLOCK_TEMPORARIES * block), 0.0, usable, device)


def max_rank(n: int, d0: int, usable: float) -> int:
    """The largest rank whose factor F and one step's temporaries fit ``usable`` bytes."""
    m = n * (d0 + 1)
    return max(0, min(m, int(usable // (8 * m)) - BLOCK_TEMPORARIES * POINTS_PER_STEP * (d0 + 1)))


def _sample(d: Tensor, p: int, count: int, gen: torch.Generator) -> list[int]:
    """Points drawn without replacement, ∝ the residual diagonal of their p rows."""
    w = d.reshape(-1, p).sum(1).clamp_min(0.0)
    live = int((w > 0).sum())
    if live == 0:
        return []
    idx = torch.multinomial(w.cpu(), min(count, live), replacement=False, generator=gen)
    return sorted(int(i) for i in idx)


def _block_update(op: StructuredParts, F: Tensor, r: int, points: list[int], p: int) -> Tensor:
    """The Cholesky columns of the sampled points' rows given the first r columns of F."""
    G = gram_rows(op, points).T  # (m, s·p) columns of Θ_λ
    S = torch.cat([torch.arange(j * p, (j + 1) * p, device=G.device) for j in points])
    if r:
        G = G - F[:, :r] @ F[S, :r].T
    H = G[S]
    H = 0.5 * (H + H.T)
    shift = 1e-13 * float(H.diagonal().abs().sum()) + 1e-300
    w, Q = torch.linalg.eigh(H)
    keep = w > max(shift, 1e-12 * float(w.max()))
    # G H⁺ᐟ² on the kept eigenvectors: a rank-revealing Cholesky of the sampled block
    return G @ (Q[:, keep] / w[keep].sqrt()[None, :])


@register
class RPCholeskyPreconditioner(Preconditioner):
    """(F Fᵀ + D + μI)⁻¹ with F Fᵀ a randomly pivoted Cholesky of Θ_λ (module docstring).
    ``rank``: at most this many columns (None: from the memory plan); ``seed``: the pivots'
    random stream (a fixed default: the same preconditioner each run)."""

    name = "rpcholesky"
    description = ("randomly pivoted Cholesky (Nyström) of Θ_λ + its residual diagonal, rank "
                   "from the effective dimension at μ (small d0, large N)")

    def __init__(self, op: StructuredParts, ridge: float = 0.0, rank: int | None = None,
                 budget_bytes: float | None = None, seed: int = 0) -> None:
        if not op.is_square:
            raise ValueError("the rpcholesky preconditioner needs the square X–X operator")
        n, d0 = op.n1, op.d0
        p, m = d0 + 1, n * (d0 + 1)
        cap = max_rank(n, d0, budget(op.x1.device, budget_bytes).bytes) if rank is None else rank
        cap = max(1, min(int(cap), m))
        diag = op.diagonal().to(torch.float64)
        d = diag.clone()
        F = torch.zeros((m, cap), dtype=torch.float64, device=diag.device)
        gen = torch.Generator().manual_seed(seed)
        r, self.d_eff, check = 0, 0.0, p * POINTS_PER_STEP
        while r < cap and float(d.max()) > ridge:
            points = _sample(d, p, POINTS_PER_STEP, gen)
            if not points:
                break
            cols = _block_update(op, F, r, points, p)[:, :cap - r]
            F[:, r:r + cols.shape[1]] = cols
            r += cols.shape[1]
            d = (diag - (F[:, :r] ** 2).sum(1)).clamp_min(0.0)
            if cols.shape[1] == 0:
                break
            if r >= check:  # d_eff of what is captured, each time the rank grew by half
                check = int(1.5 * r)
                sig2 = torch.linalg.eigvalsh(F[:, :r].T @ F[:, :r])
                self.d_eff = float((sig2 / (sig2 + max(ridge, 1e-300))).sum())
                if r >= 2 * self.d_eff + p * POINTS_PER_STEP:
                    break
        self.rank = r
        floor = 1e-12 * float(diag.abs().max())
        self.fac = lowrank_factor(F[:, :r].contiguous(), d, ridge, floor)
        log.info("rpcholesky: rank %d of %d (effective dimension at μ ≈ %.0f, cap %d)", r, m,
                 self.d_eff, cap)

    def apply(self, R: Tensor) -> Tensor:
        return factor_solve(self.fac, R.to(torch.float64)).to(R.dtype)
