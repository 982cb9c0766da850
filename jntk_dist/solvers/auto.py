"""``auto``: the preconditioner (or exact solve) for the data at hand, from N, d0, the spectrum
of X and the memory plan (:mod:`.memory`), with what it chose and why in ``.choice``.

In this order, the first that fits the usable memory:

(a) ``direct`` — the dense Cholesky of the N(d0+1)-square Gram, where N(d0+1) ≤ ``direct_max``
    (8 000 on a CPU, 60 000 on a GPU: where one O((N(d0+1))³) factorisation costs no more than
    an iterative set-up and solve; a few hundred rows of tabular data);
(b) small rank(X) ≤ 16 (tabular data, low d0): ``pca`` with a coarse space that spans all of
    span(X) (k = min(rank, d0 − 1) principal directions and the rest of each x_i), on whose
    complement Θ_λ = λK_b ⊗ I exactly (``pca_refined`` where only its float32 coarse factor
    fits), where N(k+2) ≤ 2 × ``direct_max`` (its factorisation
    costs what a direct solve of that size does); else ``rpcholesky`` (Nyström of the whole Θ_λ, rank from
    the effective dimension at μ, capped by the memory plan);
(c) a decaying spectrum (images, correlated features: 85 % of ‖X‖² in ≤ 16 directions): ``pca``
    where its smallest coarse space (2N, fields streamed) fits, else ``pca_refined`` (the same
    coarse space with a float32 factor refined in float64, :mod:`.refined`: half the coarse
    matrix's memory) where that fits, else ``nystrom``;
(d) a flat spectrum (more than 16 directions for 85 %: a per-point coarse space of ≤ 16
    directions leaves most of the coupling outside it): ``direct`` up to 2 × ``direct_max``,
    else ``rpcholesky``, else ``nystrom``.

When nothing fits, :class:`.memory.NotEnoughMemoryError` names what each needed and the
alternatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..operators.base import StructuredParts
from .coarse import choose_pca_rank, coarse_budget, pca_basis, pca_plan, tile_reserve
from .direct import direct_plan
from .lowrank import POINTS_PER_STEP, max_rank, rpcholesky_plan
from .memory import Budget, MemoryPlan, budget, refuse
from .refined import RefinedPcaPreconditioner  # noqa: F401  (registers pca_refined)
from .registry import Preconditioner, preconditioner_class, register

__all__ = ["AutoPreconditioner", "AutoDecision", "choose", "DIRECT_MAX", "SPAN_RANK_MAX",
           "AUTO_RIDGE_FRACTION", "auto_ridge"]

log = logging.getLogger(__name__)

DIRECT_MAX = {"cpu": 8_000, "cuda": 60_000}  # N(d0+1) up to which the exact solve is cheapest
FLAT_DIRECT_FACTOR = 2  # on a flat spectrum, direct up to this × DIRECT_MAX
SPAN_RANK_MAX = 16  # rank(X) up to which a coarse space spanning span(X) is tried
NYSTROM_MB = 256.0  # the nystrom factors' budget (3N·r numbers), less where memory is short
AUTO_RIDGE_FRACTION = 0.01  # ridge: auto = this × the mean diagonal of Θ_λ
ALTERNATIVES = ("Alternatives: subsample the training set, a larger ridge μ, preconditioner: "
                "kron or jacobi (O(N²) / O(N d0) memory), or a device with more free memory")


_REFINED_WHY = ("the float64 coarse factor does not fit, its float32 factor refined in float64 "
                "does: ")


def auto_ridge(op: Any) -> float:
    """``ridge: auto``: μ = 0.01 × tr(Θ_λ)/(N(d0+1)), the mean diagonal of the operator (the
    top of the range where test accuracy does not move on digits; docs/structured.md)."""
    return AUTO_RIDGE_FRACTION * float(op.diagonal().mean())


@dataclass
class AutoDecision:
    """What ``auto`` chose, with the options it builds it with and why."""

    name: str
    reason: str
    options: dict[str, Any] = field(default_factory=dict)
    plans: list[MemoryPlan] = field(default_factory=list)

    @property
    def text(self) -> str:
        return f"auto → {self.name} ({self.reason})"


def x_rank(X: torch.Tensor, rel: float = 1e-8) -> int:
    """The numerical rank of X (singular values above ``rel`` × the largest)."""
    _, s = pca_basis(X.to(torch.float64), 0)
    return int((s > rel * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0


def _small_rank(op: StructuredParts, r: int, limit: int, usable: Budget, reserve: float,
                dev: str, plans: list[MemoryPlan]) -> AutoDecision | None:
    """(b): the spanning coarse space where its factorisation costs no more than a flat
    spectrum's direct solve (N(k+2) ≤ 2 × the limit) and fits, else randomly pivoted Cholesky."""
    n, d0 = op.n1, op.d0
    k = min(r, d0 - 1)
    for hold, entry in ((True, 8), (False, 8), (False, 4)):
        plan = pca_plan(n, k, hold, not hold, reserve, usable, dev, entry)
        plans.append(plan)
        if plan.fits and n * (k + 2) <= FLAT_DIRECT_FACTOR * limit:
            name, note = ("pca", "") if entry == 8 else ("pca_refined", _REFINED_WHY)
            return AutoDecision(name, f"rank(X) = {r} ≤ {SPAN_RANK_MAX}: a coarse space "
                                f"spanning span(X) (k = {k}), exact on its complement; "
                                f"{note}{plan.text()}", {"k": k, "hold_fields": hold,
                                                         "budget_bytes": usable.bytes}, plans)
    return _rpcholesky(op, f"rank(X) = {r} ≤ {SPAN_RANK_MAX} but the spanning coarse space "
                           f"(N(k+2) = {n * (k + 2):,}) is above {FLAT_DIRECT_FACTOR * limit:,} "
                           f"or does not fit ({plans[-1].text()})", usable, dev, plans)


def _rpcholesky(op: StructuredParts, why: str, usable: Budget, dev: str,
                plans: list[MemoryPlan]) -> AutoDecision | None:
    """Randomly pivoted Cholesky where its smallest factor fits."""
    n, d0 = op.n1, op.d0
    cap = max_rank(n, d0, usable.bytes)
    plan = rpcholesky_plan(n, d0, cap, usable, dev)
    plans.append(plan)
    if cap >= (d0 + 1) * POINTS_PER_STEP and plan.fits:
        return AutoDecision("rpcholesky", f"{why}: randomly pivoted Cholesky, rank from "
                            f"d_eff(μ) ≤ {cap:,}; {plan.text()}",
                            {"budget_bytes": usable.bytes}, plans)
    return None


def _flat(op: StructuredParts, k85: int, limit: int, usable: Budget, dev: str,
          plans: list[MemoryPlan]) -> AutoDecision | None:
    """(d): direct up to FLAT_DIRECT_FACTOR × the limit, else rpcholesky, else nystrom."""
    m = op.n1 * (op.d0 + 1)
    why = (f"a flat spectrum: 85 % of ‖X‖² needs {k85} > {SPAN_RANK_MAX} directions, more than "
           "a pca coarse space holds")
    if m <= FLAT_DIRECT_FACTOR * limit and plans[0].fits:
        return AutoDecision("direct", f"{why}; N(d0+1) ≤ {FLAT_DIRECT_FACTOR * limit:,}: dense "
                            f"Cholesky, {plans[0].text()}", {}, plans)
    return _rpcholesky(op, why, usable, dev, plans) or _nystrom(op, why, usable, dev, plans)


def _images(op: StructuredParts, k85: int, usable: Budget, reserve: float, dev: str,
            plans: list[MemoryPlan]) -> AutoDecision | None:
    """(c): pca where its smallest coarse space fits, else nystrom."""
    n = op.n1
    plan = pca_plan(n, 0, False, True, reserve, usable, dev)
    plans.append(plan)
    why = (f"85 % of ‖X‖² in k = {k85} ≤ {SPAN_RANK_MAX} directions (images, correlated "
           "features): the PCA coarse space")
    if 2 * n <= coarse_budget(op.x1.device, n, reserve, held=0.5, budget_bytes=usable.bytes):
        return AutoDecision("pca", f"{why}, smallest {plan.text()}",
                            {"budget_bytes": usable.bytes}, plans)
    refined = pca_plan(n, 0, False, True, reserve, usable, dev, entry_bytes=4)
    plans.append(refined)
    if 2 * n <= coarse_budget(op.x1.device, n, reserve, held=0.5, budget_bytes=usable.bytes,
                              entry_bytes=4):
        return AutoDecision("pca_refined", f"{why}; {_REFINED_WHY}{plan.text()}; smallest "
                            f"{refined.text()}", {"budget_bytes": usable.bytes}, plans)
    return _nystrom(op, f"pca's smallest coarse space does not fit ({plan.text()})", usable,
                    dev, plans)


def _nystrom(op: StructuredParts, why: str, usable: Budget, dev: str,
             plans: list[MemoryPlan]) -> AutoDecision | None:
    """The two-level Nyström preconditioner, its factors within the budget."""
    memory_mb = min(NYSTROM_MB, 0.5 * usable.bytes / 2**20)
    rank = int(memory_mb * 2**20 / (8 * 3 * op.n1))
    plan = MemoryPlan(f"nystrom (rank {rank:,})", 8 * 3 * op.n1 * max(rank, 1), 0.0, usable,
                      dev)
    plans.append(plan)
    if rank >= 1:
        return AutoDecision("nystrom", f"{why}: {plan.text()}", {"memory_mb": memory_mb}, plans)
    return None


def choose(op: StructuredParts, mu: float, budget_bytes: float | None = None,
           direct_max: int | None = None) -> AutoDecision:
    """``auto``'s decision for (op + μI) (module docstring). ``budget_bytes``: the memory the
    set-up may use (None: 60 % of the device's free memory); ``direct_max``: the largest
    N(d0+1) solved directly (None: :data:`DIRECT_MAX` of the device)."""
    n, d0 = op.n1, op.d0
    m, device = n * (d0 + 1), op.x1.device
    dev = device.type
    usable = budget(device, budget_bytes)
    limit = DIRECT_MAX.get(dev, DIRECT_MAX["cpu"]) if direct_max is None else int(direct_max)
    plans = [direct_plan(n, d0, usable, dev)]
    if m <= limit and plans[0].fits:
        return AutoDecision("direct", f"N(d0+1) = {m:,} ≤ {limit:,}: dense Cholesky, "
                            f"{plans[0].text()}", {}, plans)
    r, reserve = x_rank(op.x1), tile_reserve(op)
    k85 = choose_pca_rank(op.x1.to(torch.float64), 0.85, k_max=d0)
    if r <= SPAN_RANK_MAX:
        decision = _small_rank(op, r, limit, usable, reserve, dev, plans)
    elif k85 <= SPAN_RANK_MAX:
        decision = _images(op, k85, usable, reserve, dev, plans)
    else:
        decision = _flat(op, k85, limit, usable, dev, plans)
    if decision is None:
        raise refuse(plans, ALTERNATIVES)
    if m > limit:
        decision.reason = f"N(d0+1) = {m:,} > {limit:,}; " + decision.reason
    return decision


@register
class AutoPreconditioner(Preconditioner):
    """Not a preconditioner of its own: ``build`` returns the one :func:`choose` picks, with
    ``.choice`` saying which and why."""

    name = "auto"
    description = ("direct where N(d0+1) is small, else a coarse space spanning span(X) or "
                   "rpcholesky (small d0), pca (decaying spectrum of X), direct or rpcholesky "
                   "(flat spectrum), nystrom — from the memory plan")

    @classmethod
    def build(cls, parts: Any, mu: float, budget_bytes: float | None = None,
              direct_max: int | None = None, **options: Any) -> Preconditioner:
        if getattr(parts, "d0", None) is None or not getattr(parts, "is_square", False):
            M = preconditioner_class("none").build(parts, mu)
            M.choice = "auto → none (not the square structured operator)"
            return M
        decision = choose(parts, mu, budget_bytes, direct_max)
        log.info("preconditioner: %s", decision.text)
        M = preconditioner_class(decision.name).build(parts, mu, **decision.options, **options)
        M.choice = decision.text
        return M

