"""Preconditioned conjugate gradients for (op + μI) α = y on any kernel operator.

The solve of eq. 4, (Θ_λ(X, X) + μ I) α = y, y = (y_1, 0…0, y_2, 0…0, …), runs with progress
(iteration, relative residual) and optional checkpointing of the iterates to an ``.npz`` file, so
a killed solve resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..kernels import point_major_targets
from ..errors import InputError
from ..operators.base import AddedDiag, KernelOperator
from ..progress import Progress
from .checkpoint import IterativeCheckpoint, fingerprint
from .preconditioners import Preconditioner, make_preconditioner
from .results import SolveResult

__all__ = ["labels_to_rhs", "pcg", "structured_solve", "IndefiniteError", "eta_seconds"]

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def labels_to_rhs(y: Any, n: int, d0: int) -> np.ndarray:
    """y of length n → (y_1, 0…0, y_2, 0…0, …) of length n(d0+1); a full-length y is kept."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] == n * (d0 + 1):
        out = y
    elif y.shape[0] == n:
        out = point_major_targets(y, d0 + 1)
    else:
        raise ValueError(f"y has length {y.shape[0]}; expected n={n} labels or the full "
                         f"n(d0+1)={n * (d0 + 1)} right-hand side")
    if not np.isfinite(out).all():
        raise ValueError("y contains NaN/inf values")
    return out


def as_operator_matmat(op: Any) -> Callable[[Tensor], Tensor]:
    """``op.matmat`` on torch blocks, returning torch of the operand's dtype and device."""
    def mm(V: Tensor) -> Tensor:
        out = op.matmat(V)
        return torch.as_tensor(out, dtype=V.dtype, device=V.device)
    return mm


def as_vector_map(op: Any) -> Callable[[Tensor], Tensor]:
    """v ↦ op v on torch vectors (what :func:`pcg` takes)."""
    mm = as_operator_matmat(op)
    return lambda v: mm(v[:, None])[:, 0]


class IndefiniteError(InputError):  # a ValueError too
    """CG met a direction p with pᵀAp ≤ 0; ``rayleigh`` = pᵀAp/pᵀp (so λ_min(A) ≤ rayleigh)."""

    def __init__(self, message: str, rayleigh: float) -> None:
        super().__init__(message)
        self.rayleigh = rayleigh


def _cg_update(A: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, p: Tensor, rz: float,
               it: int) -> None:
    """One CG step along p: x += αp, r −= αAp (in place), α = rᵀz / pᵀAp."""
    Ap = A(p)
    pAp = float(p @ Ap)
    if pAp <= 0:
        raise IndefiniteError(f"the operator + ridge is not positive definite (pᵀAp = {pAp:.3e} "
                              f"at iteration {it}); use a ridge μ > 0",
                              rayleigh=pAp / float(p @ p))
    alpha = rz / pAp
    x.add_(p, alpha=alpha)
    r.sub_(Ap, alpha=alpha)


def _cg_direction(M: Callable[[Tensor], Tensor], r: Tensor, p: Tensor, rz: float) -> float:
    """Next search direction p ← M r + (rᵀz_new / rᵀz) p (in place); returns the new rᵀz."""
    z = M(r[:, None])[:, 0]
    rz_new = float(r @ z)
    p.mul_(rz_new / rz).add_(z)
    return rz_new


def pcg(A: Callable[[Tensor], Tensor], M: Callable[[Tensor], Tensor], b: Tensor,
        x0: Tensor | None = None, tol: float = 1e-6, maxiter: int = 1000,
        r0: Tensor | None = None) -> tuple[Tensor, int, float]:
    """Plain PCG on A x = b (A: vector → vector, M: (n, m) → (n, m)); stops at |r| ≤ tol·|b|.

    ``r0`` = b − A x0 when the caller knows it (saves a product).  Returns (x, iterations,
    recurrence |r|/|b|).  No progress bar, no checkpoints: the inner solver of
    :func:`shift_invert_eigs`; :func:`structured_solve` is the user-facing solve.
    """
    b_norm = float(torch.linalg.vector_norm(b))
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    if r0 is not None:
        r = r0.clone()
    else:
        r = b - A(x) if x0 is not None else b.clone()
    res = float(torch.linalg.vector_norm(r)) / b_norm
    it = 0
    if res <= tol:
        return x, it, res
    p = M(r[:, None])[:, 0]
    rz = float(r @ p)
    while it < maxiter:
        _cg_update(A, x, r, p, rz, it)
        it += 1
        res = float(torch.linalg.vector_norm(r)) / b_norm
        if res <= tol:
            break
        rz = _cg_direction(M, r, p, rz)
    return x, it, res


def _rhs(op: KernelOperator, y: Any) -> np.ndarray:
    d0 = getattr(op, "d0", None)
    n_rows = op.shape[0]
    if d0 is not None:
        return labels_to_rhs(y, n_rows // (d0 + 1), d0)
    return np.asarray(y, dtype=np.float64).reshape(-1)


@dataclass
class _CGState:
    """Iterate, residual, direction, rᵀz, iteration count and residual history of PCG."""

    x: Tensor
    r: Tensor
    p: Tensor
    rz: float
    iteration: int = 0
    history: list[float] = field(default_factory=list)

    def arrays(self) -> dict[str, Any]:
        return {"x": self.x.cpu().numpy(), "r": self.r.cpu().numpy(),
                "p": self.p.cpu().numpy(), "rz": np.float64(self.rz),
                "iteration": np.int64(self.iteration),
                "history": np.asarray(self.history, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, z: dict[str, Any], device: torch.device) -> "_CGState":
        return cls(x=torch.as_tensor(z["x"], device=device),
                   r=torch.as_tensor(z["r"], device=device),
                   p=torch.as_tensor(z["p"], device=device), rz=float(z["rz"]),
                   iteration=int(z["iteration"]), history=z["history"].tolist())


def _cg_start(A: Callable[[Tensor], Tensor], M: Callable[[Tensor], Tensor], b: Tensor,
              x0: Any, ckpt: IterativeCheckpoint | None) -> _CGState:
    """The state to iterate from: the checkpoint's, or x0 (default 0) with its residual."""
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        state = _CGState.from_arrays(saved, b.device)
        log.info("resuming CG from %s at iteration %d (residual %.3e)", ckpt.path,
                 state.iteration, state.history[-1] if state.history else float("nan"))
        return state
    if x0 is None and isinstance(M, Preconditioner) and M.provides_start:  # declared capability
        x0 = M.start(b[:, None])[:, 0]
    x = torch.zeros_like(b) if x0 is None else torch.as_tensor(
        x0 if isinstance(x0, torch.Tensor) else np.asarray(x0), dtype=b.dtype,
        device=b.device).clone()
    r = b - A(x) if x0 is not None else b.clone()
    z = M(r[:, None])[:, 0]
    return _CGState(x=x, r=r, p=z.clone(), rz=float(r @ z))


def eta_seconds(history: list[float], tol: float, seconds_per_iteration: float,
                window: int = 20) -> float | None:
    """Time left until the residual reaches ``tol`` at the rate of the last ``window``
    iterations (None while that rate is unknown or not falling)."""
    if len(history) < 3 or min(history[-window:]) <= 0:
        return None
    h = np.log(np.asarray(history[-window:]))
    rate = (h[0] - h[-1]) / (len(h) - 1)
    if rate <= 0:
        return None
    return max(0.0, (h[-1] - math.log(tol)) / rate) * seconds_per_iteration


class _ReliableResidual:
    """Reliable updates for a Krylov operator of lower precision: the recurrence residual is
    replaced by b − A_exact x whenever it has fallen by ``drop`` since the last replacement and
    when it claims convergence, so the iteration stops on the exact operator's residual."""

    def __init__(self, A_exact: Callable[[Tensor], Tensor], b: Tensor, r: Tensor,
                 drop: float = 0.1) -> None:
        self.A, self.b, self.drop = A_exact, b, drop
        self.last = float(torch.linalg.vector_norm(r))
        self.replacements = 0

    def __call__(self, s: _CGState, b_norm: float, tol: float) -> None:
        rn = float(torch.linalg.vector_norm(s.r))
        if rn <= self.drop * self.last or rn / b_norm <= tol:
            s.r.copy_(self.b - self.A(s.x))
            self.last = float(torch.linalg.vector_norm(s.r))
            self.replacements += 1


def _cg_iterate(A: Callable[[Tensor], Tensor], M: Callable[[Tensor], Tensor], s: _CGState,
                b_norm: float, tol: float, maxiter: int, ckpt: IterativeCheckpoint | None,
                bar: Any, callback: Callable[[int, float], None] | None,
                reliable: _ReliableResidual | None = None) -> bool:
    """PCG steps from ``s`` (in place) until |r|/|b| ≤ tol or ``maxiter``; returns converged.
    The progress bar shows the residual and the time left at the recent rate of decrease."""
    converged = float(torch.linalg.vector_norm(s.r)) / b_norm <= tol
    t0, first = time.perf_counter(), s.iteration
    while not converged and s.iteration < maxiter:
        _cg_update(A, s.x, s.r, s.p, s.rz, s.iteration)
        s.iteration += 1
        if reliable is not None:
            reliable(s, b_norm, tol)
        res = float(torch.linalg.vector_norm(s.r)) / b_norm
        s.history.append(res)
        converged = res <= tol
        if not converged:
            s.rz = _cg_direction(M, s.r, s.p, s.rz)
        if bar is not None:
            eta = eta_seconds(s.history, tol, (time.perf_counter() - t0) / (s.iteration - first))
            bar.update(1)
            bar.set_postfix(residual=f"{res:.2e}", eta="?" if eta is None else f"{eta:.0f}s")
        if ckpt is not None and ckpt.due():
            ckpt.save(s.arrays())
        if callback is not None:
            callback(s.iteration, res)
    return converged


def _iterate_with_bar(A: Callable[[Tensor], Tensor], M: Preconditioner, state: _CGState,
                      b_norm: float, tol: float, maxiter: int,
                      ckpt: IterativeCheckpoint | None, progress: bool,
                      callback: Callable[[int, float], None] | None,
                      reliable: _ReliableResidual | None) -> bool:
    """:func:`_cg_iterate` under a progress bar (closed however the iteration ends)."""
    bar = Progress(maxiter, f"PCG[{M.name}]", unit="it", initial=state.iteration) \
        if progress else None
    try:
        return _cg_iterate(A, M, state, b_norm, tol, maxiter, ckpt, bar, callback, reliable)
    finally:
        if bar is not None:
            bar.close()


def _checked(ridge: float, tol: float) -> float:
    """μ as a float, or a message for a negative / non-finite μ or a tolerance ≤ 0."""
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge μ must be ≥ 0, got {ridge}")
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    return ridge


def structured_solve(op: KernelOperator, y: Any, ridge: float = 0.0, tol: float = 1e-6,
                     maxiter: int | None = None, preconditioner: str | Preconditioner = "auto",
                     x0: Any = None, checkpoint: str | os.PathLike | None = None,
                     checkpoint_every: float = 60.0, progress: bool = True,
                     callback: Callable[[int, float], None] | None = None,
                     exact_op: KernelOperator | None = None,
                     preconditioner_options: dict[str, Any] | None = None) -> SolveResult:
    """Solve (op + ridge·I) α = y by preconditioned conjugate gradients.

    ``op``: any :class:`~jntk_dist.operators.KernelOperator` (the structured preconditioners
    need the square structured operator's parts). ``y``: n labels (expanded to (y_i, 0…0)
    blocks, eq. 4) or the full right-hand side. ``tol``: relative residual |r|/|b| to reach.
    ``callback(iteration, residual)`` is called each iteration. With ``checkpoint`` (an ``.npz``
    path) the CG state is saved atomically every ``checkpoint_every`` seconds and on exit; an
    existing checkpoint of the same system (same operator description, inputs, y, ridge,
    preconditioner) is resumed exactly, one of another system is refused.

    Mixed precision: with ``exact_op`` (the same kernel in float64) ``op`` may be a cheaper
    float32 operator: its products drive the iteration, the preconditioner is built from
    ``exact_op``, and the residual is replaced by the exact one whenever it has fallen 10× and at
    convergence (reliable updates), so ``tol`` holds for the float64 system.

    ``preconditioner``: a registered name (default ``auto``: chosen from N, d0, X and the free
    memory; the result's ``preconditioner_choice`` says what and why) or a
    :class:`Preconditioner`; ``preconditioner_options`` go to its ``build``. A solve that ends
    with a relative residual above 1 (worse than x = 0) warns and is reported not converged.
    """
    ridge = _checked(ridge, tol)
    b_np = _rhs(op, y)
    maxiter = int(maxiter) if maxiter is not None else 10 * op.shape[0]
    A = as_vector_map(AddedDiag(op, ridge))
    A_exact = A if exact_op is None else as_vector_map(AddedDiag(exact_op, ridge))
    t_setup = time.perf_counter()
    M = make_preconditioner(op if exact_op is None else exact_op, preconditioner, ridge,
                            **(preconditioner_options or {}))
    setup_s = time.perf_counter() - t_setup
    b = torch.as_tensor(b_np, dtype=torch.float64, device=getattr(op, "device", "cpu"))
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0:
        return SolveResult(x=np.zeros_like(b_np), converged=True, iterations=0, residual=0.0,
                           preconditioner=M.name, setup_s=setup_s,
                           preconditioner_choice=M.choice)
    ckpt = None if checkpoint is None else IterativeCheckpoint(
        checkpoint, fingerprint(op, b=b_np, ridge=ridge, preconditioner=M.name),
        "operator, inputs, y, ridge or preconditioner", every=checkpoint_every)
    state = _cg_start(A_exact, M, b, x0, ckpt)
    reliable = None if exact_op is None else _ReliableResidual(A_exact, b, state.r)
    start_it, t0 = state.iteration, time.perf_counter()
    converged = _iterate_with_bar(A, M, state, b_norm, tol, maxiter, ckpt, progress, callback,
                                  reliable)
    if ckpt is not None:
        ckpt.save(state.arrays())
    true_res = float(torch.linalg.vector_norm(b - A_exact(state.x))) / b_norm
    return SolveResult(x=state.x.cpu().numpy(), converged=_honest(converged, true_res, state, M),
                       iterations=state.iteration, residual=true_res, history=state.history,
                       wall_s=time.perf_counter() - t0, preconditioner=M.name, setup_s=setup_s,
                       resumed_from=start_it, preconditioner_choice=M.choice)


def _honest(converged: bool, residual: float, state: _CGState, M: Preconditioner) -> bool:
    """A solve whose true relative residual is above 1 (worse than x = 0) is never returned
    quietly: it warns loudly and is not converged, whatever the recurrence said."""
    if residual <= 1.0:
        return converged
    iterations = state.iteration
    message = (f"PCG[{M.name}] ended at relative residual {residual:.3g} > 1 after {iterations} "
               "iterations: WORSE than x = 0 — NOT CONVERGED. Use preconditioner='auto' (or "
               "'direct' for small N(d0+1)), a larger ridge μ, or more iterations")
    log.error(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return False
