"""What the solvers return: one :class:`SolveResult`, one :class:`EigenResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SolveResult", "EigenResult", "EPS", "positivity_tolerance"]

EPS = float(np.finfo(np.float64).eps)


def positivity_tolerance(lambda_max: float, n: int) -> float:
    """τ = n · eps · |λ_max|: an eigenvalue ≤ τ is not distinguishable from 0 in float64."""
    return float(n) * EPS * abs(float(lambda_max))


@dataclass
class SolveResult:
    """Outcome of a linear solve (:func:`.cg.structured_solve`); ``x`` is the coefficient vector
    α (point-major)."""

    x: Any
    converged: bool
    iterations: int
    residual: float                 # true relative residual |b − (A+μI)x| / |b| at the end
    history: list[float] = field(default_factory=list)  # recurrence residual per iteration
    wall_s: float = 0.0
    preconditioner: str = "none"
    setup_s: float = 0.0
    resumed_from: int = 0
    preconditioner_choice: str = ""  # what ``auto`` chose and why (empty for a named one)


@dataclass
class EigenResult:
    """Eigenvalues (ascending) and optionally eigenvectors (columns) of a symmetric matrix or
    operator, from any of the eigensolvers (dense, Lanczos, LOBPCG, shift-invert).

    ``tolerance``: the positivity tolerance τ = n·eps·λ_max where the solver knows λ_max;
    ``which``: "all" (a full spectrum), "LA" (the largest) or "SA" (the smallest);
    ``residuals``: |A v − θ v| per pair where computed; ``info``: method details.
    """

    values: np.ndarray
    vectors: np.ndarray | None
    method: str
    tolerance: float | None = None
    n: int = 0
    which: str = "all"
    n_products: int = 0
    wall_s: float = 0.0
    residuals: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def lambda_min(self) -> float:
        return float(self.values[0])

    @property
    def lambda_max(self) -> float:
        return float(self.values[-1])
