"""The results of the solvers: one :class:`SolveResult`, one :class:`EigResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SolveResult", "EigResult"]


@dataclass
class SolveResult:
    """Outcome of :func:`structured_solve`; ``x`` is the coefficient vector α (point-major)."""

    x: Any
    converged: bool
    iterations: int
    residual: float                 # true relative residual |b − (A+μI)x| / |b| at the end
    history: list[float] = field(default_factory=list)  # recurrence residual per iteration
    wall_s: float = 0.0
    preconditioner: str = "none"
    setup_s: float = 0.0
    resumed_from: int = 0


@dataclass
class EigResult:
    """Eigenpairs of a structured operator; ``values`` ascending."""

    values: np.ndarray
    vectors: np.ndarray | None
    method: str
    which: str
    n_products: int
    wall_s: float
    residuals: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)  # method details (inner iterations, …)
