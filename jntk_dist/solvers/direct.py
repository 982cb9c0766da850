"""The exact solve ("direct"): the dense N(d0+1)-square Gram Θ_λ + μI formed from the structured
operator's fields (the blocks of :func:`jntk_dist.kernels.blocks.expand_rows`, row tile by row
tile, Λ applied as the kernels apply it) and factored in place by a float64 Cholesky.

As a preconditioner it is (Θ_λ + μI)⁻¹ itself: PCG starts at the factor's solution
(``provides_start``) and stops at once, or after a step of refinement where rounding left the
residual above the tolerance. What ``auto`` picks where N(d0+1) is small enough that this is the
cheapest route (a few hundred rows of tabular data: N(d0+1) ≲ 16 000 on a CPU).
"""

from __future__ import annotations

import torch

from ..kernels import lambda_factors
from ..kernels.blocks import expand_rows
from ..operators.base import StructuredParts
from .factors import factor_in_place
from .memory import Budget, MemoryPlan
from .registry import Preconditioner, register

__all__ = ["DirectPreconditioner", "direct_plan", "dense_gram", "expand_gram_rows",
           "DIRECT_TILE_BYTES"]

Tensor = torch.Tensor

DIRECT_TILE_BYTES = 64 * 2**20  # working set of one row tile of the expansion


def _rows_per_tile(n: int, p: int) -> int:
    """Points whose Gram rows are expanded at once: their fields (8 N) and the block factors
    (3 N p) within :data:`DIRECT_TILE_BYTES`."""
    return max(1, int(DIRECT_TILE_BYTES // ((8 + 3 * p) * n * 8)))


def direct_plan(n: int, d0: int, usable: Budget, device: str) -> MemoryPlan:
    """The set-up's peak: the float64 Gram (factored in place) and one row tile."""
    m = n * (d0 + 1)
    return MemoryPlan(f"direct (N(d0+1) = {m:,})", m * m * 8 + DIRECT_TILE_BYTES, 0.0, usable,
                      device)


def expand_gram_rows(op: StructuredParts, points: slice | list[int],
                     out: Tensor | None = None) -> Tensor:
    """Gram rows of Θ_λ(X, X) for ``points`` (a slice of consecutive points, or a list), shaped
    (len(points), d0+1, N, d0+1) point-major float64, from one row of fields per point (Λ
    applied as the kernels apply it); written into ``out`` when given. The one loop that forms
    Gram rows from fields: the direct solve (row tile by row tile) and rpcholesky (sampled
    points) both use it."""
    X = op.x1.to(torch.float64)
    n, p = X.shape[0], X.shape[1] + 1
    if isinstance(points, slice):  # consecutive points: their field rows in one piece
        start, stop, _ = points.indices(n)
        runs = [slice(start, stop)]
    else:
        runs = [slice(j, j + 1) for j in points]
    count = sum(r.stop - r.start for r in runs)
    if out is None:
        out = torch.empty((count, p, n, p), dtype=torch.float64, device=X.device)
    scale = None if op.lam is None else lambda_factors(op.lam, p, X)
    on_cpu = X.device.type == "cpu"
    with torch.no_grad():
        at = 0
        for rows in runs:
            F = op.field_rows(rows).to(torch.float64)
            size = rows.stop - rows.start
            expand_rows(out[at:at + size], X[rows], X, scale, tuple(F), on_cpu)
            at += size
    return out


def dense_gram(op: StructuredParts, ridge: float = 0.0) -> Tensor:
    """Θ_λ(X, X) + μI as a dense point-major (N(d0+1))² float64 matrix, from the fields."""
    n, p = op.x1.shape[0], op.x1.shape[1] + 1
    G = torch.empty((n, p, n, p), dtype=torch.float64, device=op.x1.device)
    step = _rows_per_tile(n, p)
    for s in range(0, n, step):
        rows = slice(s, min(n, s + step))
        expand_gram_rows(op, rows, out=G[rows])
    G = G.reshape(n * p, n * p)
    G.diagonal().add_(ridge)
    return G


@register
class DirectPreconditioner(Preconditioner):
    """(Θ_λ + μI)⁻¹ exactly, by the dense Cholesky factor of the Gram formed from the fields."""

    name = "direct"
    description = ("exact: dense Cholesky of the N(d0+1)-square Gram, float64 (tabular data, "
                   "N(d0+1) ≲ 16 000 on a CPU)")
    provides_start = True

    def __init__(self, op: StructuredParts, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the direct solve needs the square X–X operator")
        self.L = factor_in_place(dense_gram(op, ridge), "Θ_λ + μI")

    def apply(self, R: Tensor) -> Tensor:
        z = torch.linalg.solve_triangular(self.L, R.to(self.L.dtype), upper=False)
        return torch.linalg.solve_triangular(self.L.mT, z, upper=True).to(R.dtype)

    def start(self, b: Tensor) -> Tensor:
        """The direct solution (Θ_λ + μI)⁻¹ b."""
        return self.apply(b)
