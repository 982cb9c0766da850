"""Assumption 8: λ_min of the NTK (00) and JNTK Gram against depth (Fig. 6 / B7 / B8), dense or
matrix-free, and the rule that decides when a computed λ_min counts as positive.

Two rules (:class:`PositivityRule`), both always reported:

* ``relative``: λ_min > n·eps₆₄·λ_max — what a backward-stable float64 eigensolver certifies
  (positive definite in exact arithmetic, up to rounding of the Gram itself);
* ``float32_resolution``: λ_min > τ₃₂(n) = scale·(n / reference_n)^exponent, in the κ⁻²-scaled
  units of Θ — what a single-precision eigensolver resolves. The defaults (10⁻⁶ at n = 2916,
  exponent ½) are the calibration of docs/reproduction.md: the measured float32 error of λ_min for
  the 2916² forest-fire JNTK Grams is 0.5–2·10⁻⁶ and grows with the matrix size (noise ∝ √n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import kernels
from ..operators.structured import structured_operator
from ..progress import track
from ..solvers.dense_eigen import eigh_dense, smallest_eigenvalue
from ..solvers.results import positivity_tolerance
from ..solvers.iterative_eigen import shift_invert_eigs, structured_eigs
from .regression import _as_inputs

__all__ = ["Assumption8Row", "PositivityRule", "RELATIVE", "assumption8", "structured_extremes"]


class PositivityRule(BaseModel):
    """When a computed λ_min counts as positive: λ_min − residual > threshold(n, λ_max).

    ``rule: relative`` — threshold n·eps₆₄·λ_max (float64-certified, scale-free);
    ``rule: float32_resolution`` — threshold ``scale``·(n / ``reference_n``)^``exponent``, an
    absolute value in the κ⁻²-scaled units of Θ (what a float32 eigensolver resolves).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: Literal["float32_resolution", "relative"] = "float32_resolution"
    scale: float = Field(default=1.0e-6, gt=0)
    reference_n: int = Field(default=2916, ge=1)
    exponent: float = Field(default=0.5, ge=0)

    def threshold(self, n: int, lambda_max: float) -> float:
        """The value λ_min must exceed for an n×n Gram with largest eigenvalue ``lambda_max``."""
        if self.rule == "relative":
            return positivity_tolerance(lambda_max, n)
        return self.scale * (float(n) / self.reference_n) ** self.exponent

    def positive(self, lambda_min: float, n: int, lambda_max: float,
                 residual: float = 0.0) -> bool:
        """λ_min − residual > threshold (``residual``: |Av − θv| of a Ritz value θ ≥ λ_min)."""
        return float(lambda_min) - float(residual) > self.threshold(n, lambda_max)

    def describe(self) -> str:
        """The rule in one line, with its formula."""
        if self.rule == "relative":
            return "relative: λ_min > τ_rel = n·eps₆₄·λ_max"
        return (f"float32_resolution: λ_min > τ₃₂(n) = {self.scale:.3g}·(n/{self.reference_n})"
                f"^{self.exponent:g}")


RELATIVE = PositivityRule(rule="relative")
"""The float64 rule λ_min > n·eps·λ_max (reported next to any adopted rule)."""


@dataclass
class Assumption8Row:
    """λ_min / λ_max of one Gram matrix; ``tolerance`` = n·eps·λ_max (the relative rule),
    ``threshold`` the adopted rule's (the verdict ``positive``)."""

    dataset: str
    activation: str
    depth: int
    kernel: str  # "ntk" (00 only) or "jntk"
    n: int  # matrix size
    lambda_min: float
    lambda_max: float
    tolerance: float
    method: str
    lambda_min_residual: float = 0.0  # |Av − θv| of a matrix-free Ritz value (0: dense eigensolver)
    converged: bool = True  # the matrix-free λ_min reached its residual tolerance (dense: always)
    rule: PositivityRule = RELATIVE

    @property
    def threshold(self) -> float:
        """The adopted rule's threshold for this Gram."""
        return self.rule.threshold(self.n, self.lambda_max)

    @property
    def positive(self) -> bool:
        """Positive under the adopted rule; for a Ritz value θ ≥ λ_min, decided on the lower
        bound θ − |Av − θv|."""
        return self.rule.positive(self.lambda_min, self.n, self.lambda_max,
                                  self.lambda_min_residual)

    @property
    def positive_relative(self) -> bool:
        """Positive under the relative rule λ_min − residual > n·eps·λ_max."""
        return self.lambda_min - self.lambda_min_residual > self.tolerance

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rule"}
        d.update(threshold=self.threshold, positive=self.positive,
                 positive_relative=self.positive_relative)
        return d


def _extremes(gram: np.ndarray, max_dense: int) -> tuple[float, float, str]:
    if gram.shape[0] <= max_dense:
        res = eigh_dense(gram, vectors=False)
    else:
        res = smallest_eigenvalue(gram)
    return res.lambda_min, res.lambda_max, res.method


def structured_extremes(X: np.ndarray, depth: int, activation: str, tol: float = 1e-8,
                        preconditioner: str = "two_level", maxiter: int | None = None,
                        memory_mb: float = 512.0, fields: str = "auto"
                        ) -> tuple[float, float, float, str]:
    """λ_min, λ_max of the JNTK Gram Θ(X, X) without forming it (the matrix-free operator of
    :mod:`jntk_dist.structured`): λ_max by Lanczos, λ_min by shift-invert with inner PCG and
    shift τ = n·eps·λ_max (:func:`jntk_dist.solvers.shift_invert_eigs`) to the residual
    ``tol``·λ_max (λ_max to the relative Lanczos tolerance max(``tol``, 1e-6)). ``fields``: "memory", "recompute" or "auto" (as ``structured.fields`` of the
    solve/eigen jobs). Returns (θ, |Av − θv|, λ_max, method): the Ritz value θ ≥ λ_min and an
    eigenvalue lies within the residual of θ, so θ − residual > τ is the positivity test (the
    rule of ``jntk eigen --structured``)."""

    mode = fields  # auto: the 8 n² fields held in memory if they fit memory_mb, else recomputed
    if mode == "auto":
        mode = "memory" if 8 * 8 * X.shape[0] ** 2 <= memory_mb * 2**20 else "recompute"
    op = structured_operator(X, depth=depth, activation=activation, kind="jntk", mode=mode,
                             memory_mb=memory_mb, device="cpu")
    n = op.shape[0]
    # λ_max only sets τ (and the reported λ_min/λ_max): 6 digits are plenty, and a tight Lanczos
    # tolerance stalls on the clustered top of shallow JNTKs (sonar, L = 1: minutes at 1e-10)
    top = structured_eigs(op, k=1, which="LA", method="lanczos", tol=max(tol, 1e-6),
                          maxiter=maxiter, progress=False, return_vectors=False)
    hi = float(top.values[-1])
    tau = positivity_tolerance(hi, n)
    bottom = shift_invert_eigs(op, k=1, shift=tau, preconditioner=preconditioner, tol=tol * hi,
                               maxiter=maxiter or 200, progress=False, return_vectors=False)
    converged = "" if bottom.info.get("converged") else ", not converged"
    method = (f"structured: lanczos λ_max; shift-invert[{bottom.info.get('preconditioner')}] "
              f"λ_min ({bottom.n_products} products, {bottom.info.get('outer_iterations')} outer"
              f"{converged})")
    return float(bottom.values[0]), float(bottom.residuals[0]), hi, method


def assumption8(X: Any, depths: Iterable[int], activations: Sequence[str],
                dataset: str = "data", kernels_: Sequence[str] = ("ntk", "jntk"),
                max_dense: int = 12000, progress: bool = True,
                structured: Any = None, rule: PositivityRule = RELATIVE) -> list[Assumption8Row]:
    """λ_min of the NTK (00) and JNTK (λ = 1, unscaled Θ) Gram of X for each activation and depth;
    each row's ``positive`` follows ``rule`` (``positive_relative`` the relative rule).

    ``structured``: a :class:`jntk_dist.workflows.problem.StructuredSpec` (or None); when enabled,
    the JNTK's extremes come from :func:`structured_extremes` (its ``tol``, ``preconditioner``,
    ``maxiter``, ``memory_mb``) instead of a dense Gram; the n×n NTK Gram stays dense."""
    X = _as_inputs(X, "X")
    unknown = set(kernels_) - {"ntk", "jntk"}
    if unknown:
        raise ValueError(f"kernels must be among ('ntk', 'jntk'), got {sorted(unknown)}")
    use_structured = structured is not None and structured.enabled
    jobs = [(a, int(L), k) for a in activations for L in depths for k in kernels_]
    rows = []
    for act, depth, kind in track(jobs, "assumption 8", unit="Gram", enabled=progress):
        residual, converged = 0.0, True
        if kind == "jntk" and use_structured:
            lo, residual, hi, method = structured_extremes(
                X, depth, act, tol=structured.tol, preconditioner=structured.preconditioner,
                maxiter=structured.maxiter, memory_mb=structured.memory_mb,
                fields=structured.fields)
            n = X.shape[0] * (X.shape[1] + 1)
            converged = residual <= structured.tol * hi  # what shift-invert was asked for
        else:
            if kind == "ntk":
                gram = kernels.ntk(X, depth=depth, activation=act)
            else:
                gram = kernels.gram(X, depth=depth, activation=act)
            lo, hi, method = _extremes(gram, max_dense)
            n = gram.shape[0]
            del gram
        rows.append(Assumption8Row(dataset, act, depth, kind, n, lo, hi,
                                   positivity_tolerance(hi, n), method, residual, converged, rule))
    return rows
