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
from typing import Any, Callable, ContextManager, Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import kernels
from ..progress import track
from ..solvers.dense_eigen import eigh_dense, smallest_eigenvalue
from ..solvers.certify import (FactorPreconditioner, largest_interval, operator_as_dense,
                               smallest_interval)
from ..solvers.iterative_eigen import shift_invert_eigs, structured_eigs
from ..solvers.results import (EPS, EigenInterval, EigenResult, positivity_tolerance,
                               positivity_verdict)
from .regression import _as_inputs

__all__ = ["Assumption8Row", "ExtremesSettings", "PositivityRule", "RELATIVE", "StructuredExtremes",
           "assumption8", "structured_extremes"]


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
    ``threshold`` the adopted rule's. ``lambda_min_lo``/``_hi``: an interval proven to hold an
    eigenvalue, ``certified``: proven to hold the *smallest* (full spectrum or inertia); the
    verdicts are three-way on that interval (:func:`jntk_dist.solvers.positivity_verdict`)."""

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
    converged: bool = True  # λ_min's interval tight relative to λ_min and certified smallest
    rule: PositivityRule = RELATIVE
    lambda_min_lo: float = float("nan")
    lambda_min_hi: float = float("nan")
    certified: bool = True
    certificate: str = ""

    @property
    def threshold(self) -> float:
        """The adopted rule's threshold for this Gram."""
        return self.rule.threshold(self.n, self.lambda_max)

    @property
    def verdict(self) -> str:
        """positive / not positive / undetermined under the adopted rule, on the interval."""
        return positivity_verdict(self.lambda_min_lo, self.lambda_min_hi, self.threshold,
                                  self.certified)

    @property
    def verdict_relative(self) -> str:
        """The verdict under the relative rule λ_min > n·eps·λ_max."""
        return positivity_verdict(self.lambda_min_lo, self.lambda_min_hi, self.tolerance,
                                  self.certified)

    @property
    def positive(self) -> bool:
        """The adopted verdict is "positive" (kept for readers of the boolean column)."""
        return self.verdict == "positive"

    @property
    def positive_relative(self) -> bool:
        """The relative verdict is "positive"."""
        return self.verdict_relative == "positive"

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "rule"}
        d.update(threshold=self.threshold, positive=self.positive,
                 positive_relative=self.positive_relative, verdict=self.verdict,
                 verdict_relative=self.verdict_relative)
        return d


def _extremes(gram: np.ndarray, max_dense: int) -> EigenResult:
    if gram.shape[0] <= max_dense:
        return eigh_dense(gram, vectors=False)
    return smallest_eigenvalue(gram)


@dataclass(frozen=True)
class ExtremesSettings:
    """The settings of the structured λ_min / λ_max route, as plain values (the ``structured:``
    config model lives in :mod:`jntk_dist.workflows.structured`, above this room).

    ``tol``: λ_min converges when its certified interval is ≤ ``tol``·|λ_min| wide (or lies
    wholly below τ = n·eps·λ_max); ``top_tol``: Lanczos' relative tolerance for the top
    (default ``tol``); ``certify_max_n``: the largest n whose matrix is formed for the
    inertia check (n² floats and one Cholesky factorisation per check)."""

    tol: float = 1e-8
    preconditioner: str = "two_level"
    maxiter: int | None = None
    lambda_min_method: str = "shift_invert"
    checkpoint: str | None = None
    checkpoint_every: float = 60.0
    top_tol: float | None = None
    certify_max_n: int = 4096
    bottom_k: int = 2


@dataclass
class StructuredExtremes:
    """λ_max (top-k Lanczos) and λ_min of a matrix-free operator with their intervals."""

    top: EigenResult
    bottom: EigenResult
    tolerance: float  # τ = n·eps·λ_max
    method: str
    interval_min: EigenInterval
    interval_max: EigenInterval

    @property
    def converged(self) -> bool:
        return self.interval_min.converged


def _bottom(op: Any, s: ExtremesSettings, tau: float, inner_op: Any, progress: bool,
            dense: np.ndarray | None) -> EigenResult:
    k = min(s.bottom_k, op.shape[0] - 1)
    if s.lambda_min_method == "shift_invert":
        # (A + τI)⁻¹ by inner PCG, Rayleigh–Ritz with A: θ ≥ λ_min and |Av − θv| are exact;
        # where the matrix is formed (for the inertia check) its Cholesky factor preconditions
        precond: Any = s.preconditioner if dense is None else FactorPreconditioner(dense, tau)
        return shift_invert_eigs(op, k=k, shift=tau, preconditioner=precond, tol=0.0,
                                 rtol=s.tol, floor=tau, maxiter=s.maxiter or 200,
                                 resolution=0.1 * tau / op.shape[0],  # 0.1·eps·λ_max
                                 checkpoint=s.checkpoint, checkpoint_every=s.checkpoint_every,
                                 progress=progress, return_vectors=True, inner_op=inner_op)
    # LOBPCG rounds with a checkpoint restart the search directions (slower;
    # docs/benchmarks.md), so λ_min is checkpointed only when a path is given. Its tol is an
    # absolute residual: ~10·eps·λ_max with the exact factor, else tol·λ_max as before
    n = op.shape[0]
    if dense is None:
        precond, tol = s.preconditioner, s.tol * tau / (n * EPS)
    else:
        precond, tol = FactorPreconditioner(dense, tau), 10.0 * tau / n
    return structured_eigs(op, k=k, which="SA", method="lobpcg", tol=tol,
                           maxiter=s.maxiter, preconditioner=precond,
                           shift=1000 * tau, checkpoint=s.checkpoint, progress=progress,
                           return_vectors=True)


def _certified(bottom: EigenResult, top: EigenResult, s: ExtremesSettings,
               tau: float, dense: np.ndarray | None) -> tuple[EigenInterval, EigenInterval]:
    """The intervals of λ_min (inertia-certified when ``dense`` is the formed matrix) and
    λ_max; λ_min converged iff certified and tight (or wholly ≤ τ: numerically not positive)."""
    lo_iv = smallest_interval(bottom.values, bottom.residuals, s.tol,
                              None if bottom.vectors is None else bottom.vectors[:, 0], dense,
                              scale=float(top.values[-1]))
    zero = lo_iv.certified and lo_iv.hi <= tau
    if zero and not lo_iv.converged:
        lo_iv.converged, lo_iv.why = True, ""
    hi_iv = largest_interval(top.values[-1], top.residuals[-1], s.top_tol or s.tol, dense)
    return lo_iv, hi_iv


def structured_extremes(op: Any, settings: ExtremesSettings = ExtremesSettings(), *,
                        k_top: int = 1, top_vectors: bool = False, inner_op: Any = None,
                        progress: bool = False) -> StructuredExtremes:
    """λ_max and λ_min of a symmetric matrix-free operator (the one structured route of
    ``jntk eigen`` and ``jntk assumption8``): the top ``k_top`` by Lanczos; λ_min by
    shift-invert with inner PCG (products by ``inner_op`` if given, e.g. a float32 twin;
    preconditioned by the Cholesky factor of A + τI where the matrix is formed, else by
    ``settings.preconditioner``) and shift τ = n·eps·λ_max, or by preconditioned LOBPCG, to the
    relative bound ``settings.tol``;
    then the interval of λ_min certified by Sylvester inertia (:mod:`jntk_dist.solvers.certify`)
    when n ≤ ``settings.certify_max_n``, else estimated from the next Ritz value (not certified,
    so not converged)."""
    n = op.shape[0]
    top = structured_eigs(op, k=min(k_top, n - 1), which="LA", method="lanczos",
                          tol=settings.top_tol or settings.tol, maxiter=settings.maxiter,
                          progress=progress, return_vectors=True)
    tau = positivity_tolerance(float(top.values[-1]), n)
    dense = operator_as_dense(op, settings.certify_max_n)
    bottom = _bottom(op, settings, tau, inner_op, progress, dense)
    lo_iv, hi_iv = _certified(bottom, top, settings, tau, dense)
    del dense
    bottom.interval_min, bottom.converged = lo_iv, lo_iv.converged
    if not top_vectors:
        top.vectors = None
    state = "" if lo_iv.converged else f", not converged: {lo_iv.why}"
    method = (f"structured: top-{top.values.size} lanczos; λ_min: {settings.lambda_min_method}"
              f"[{bottom.info.get('preconditioner', settings.preconditioner)}] "
              f"({bottom.n_products} products; {lo_iv.how}{state})")
    return StructuredExtremes(top, bottom, tau, method, lo_iv, hi_iv)


OperatorFactory = Callable[[np.ndarray, int, str], ContextManager[tuple[Any, Any]]]
"""(X, depth, activation) → a context giving the JNTK operator Θ(X, X) (λ = 1) and the operator
of its inner solves (None: the same), as the ``structured:`` config says (device, backend,
precision, compile, tile budget); built in :mod:`jntk_dist.workflows.assumption8`."""


def _structured_row(X: np.ndarray, depth: int, act: str, structured: OperatorFactory,
                    settings: ExtremesSettings) -> tuple[EigenResult, EigenInterval, str]:
    with structured(X, depth, act) as (op, inner_op):
        ext = structured_extremes(op, settings, inner_op=inner_op)
    bottom = ext.bottom
    bottom.values = np.append(bottom.values[:1], ext.top.values[-1])
    return bottom, ext.interval_min, ext.method


def assumption8(X: Any, depths: Iterable[int], activations: Sequence[str],
                dataset: str = "data", kernels_: Sequence[str] = ("ntk", "jntk"),
                max_dense: int = 12000, progress: bool = True,
                structured: OperatorFactory | None = None,
                settings: ExtremesSettings = ExtremesSettings(),
                rule: PositivityRule = RELATIVE) -> list[Assumption8Row]:
    """λ_min of the NTK (00) and JNTK (λ = 1, unscaled Θ) Gram of X for each activation and depth,
    each with its interval and three-way verdicts (``rule`` and the relative rule).

    ``structured``: an operator factory (:data:`OperatorFactory`); when given, the JNTK's
    extremes come from :func:`structured_extremes` with ``settings`` instead of a dense Gram;
    the n×n NTK Gram stays dense."""
    X = _as_inputs(X, "X")
    unknown = set(kernels_) - {"ntk", "jntk"}
    if unknown:
        raise ValueError(f"kernels must be among ('ntk', 'jntk'), got {sorted(unknown)}")
    jobs = [(a, int(L), k) for a in activations for L in depths for k in kernels_]
    rows = []
    for act, depth, kind in track(jobs, "assumption 8", unit="Gram", enabled=progress):
        if kind == "jntk" and structured is not None:
            res, iv, method = _structured_row(X, depth, act, structured, settings)
            residual = float(res.residuals[0])
        else:
            gram = (kernels.ntk if kind == "ntk" else kernels.gram)(X, depth=depth, activation=act)
            res = _extremes(gram, max_dense)
            iv, method, residual = res.interval_min, res.method, 0.0
            del gram
        lo, hi, n = res.lambda_min, res.lambda_max, res.n
        rows.append(Assumption8Row(dataset, act, depth, kind, n, lo, hi,
                                   positivity_tolerance(hi, n), method, residual, iv.converged,
                                   rule, iv.lo, iv.hi, iv.certified, iv.how))
    return rows
