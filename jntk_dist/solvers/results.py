"""What the solvers return: one :class:`SolveResult`, one :class:`EigenResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SolveResult", "EigenResult", "EigenInterval", "EPS", "positivity_tolerance",
           "positivity_verdict", "VERDICTS"]

EPS = float(np.finfo(np.float64).eps)


def positivity_tolerance(lambda_max: float, n: int) -> float:
    """τ = n · eps · |λ_max|: an eigenvalue ≤ τ is not distinguishable from 0 in float64."""
    return float(n) * EPS * abs(float(lambda_max))


VERDICTS = ("positive", "not positive", "undetermined")


def positivity_verdict(lo: float, hi: float, threshold: float, certified: bool = True) -> str:
    """Three-way verdict on an interval [lo, hi] that holds λ_min: "positive" when lo > threshold
    and the interval is certified to hold the smallest eigenvalue, "not positive" when
    hi ≤ threshold (hi is a Rayleigh quotient: λ_min ≤ hi always), "undetermined" otherwise."""
    if float(hi) <= threshold:
        return "not positive"
    if certified and float(lo) > threshold:
        return "positive"
    return "undetermined"


@dataclass
class EigenInterval:
    """An interval [lo, hi] that provably holds one extreme eigenvalue (λ_min or λ_max).

    ``certified``: that it is the extreme one is proven (a full spectrum, or Sylvester inertia by
    a Cholesky factorisation), not only estimated (a gap from the next Ritz value);
    ``how``: the bounds used, in words; ``converged``: hi − lo ≤ 2·rtol·|value| (tight relative to
    the eigenvalue itself) and certified; ``why``: what is missing when not converged.
    """

    value: float
    lo: float
    hi: float
    certified: bool
    how: str
    converged: bool = True
    why: str = ""

    def verdict(self, threshold: float) -> str:
        """Positivity of this (λ_min) interval against ``threshold``: :func:`positivity_verdict`."""
        return positivity_verdict(self.lo, self.hi, threshold, self.certified)

    def as_dict(self, prefix: str) -> dict[str, Any]:
        """The columns ``<prefix>_lo``, ``_hi``, ``_certified``, ``_certificate``."""
        return {f"{prefix}_lo": float(self.lo), f"{prefix}_hi": float(self.hi),
                f"{prefix}_certified": bool(self.certified), f"{prefix}_certificate": self.how}


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
    ``residuals``: |A v − θ v| per pair where computed; ``info``: method details;
    ``interval_min`` / ``interval_max``: the certified intervals of λ_min / λ_max where the solver
    (or :mod:`.certify`) gave them; ``converged``: the iteration met its tolerance (for λ_min:
    relative to λ_min itself, and certified smallest when ``interval_min`` is set).
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
    interval_min: EigenInterval | None = None
    interval_max: EigenInterval | None = None
    converged: bool = True

    @property
    def lambda_min(self) -> float:
        return float(self.values[0])

    @property
    def lambda_max(self) -> float:
        return float(self.values[-1])
