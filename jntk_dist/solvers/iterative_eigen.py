"""Extreme eigenpairs of kernel operators: Lanczos / LOBPCG (scipy) and shift-invert λ_min with an
inner PCG (the small end of Assumption 8 at full size)."""

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

from ..operators.base import KernelOperator
from ..progress import Progress
from .cg import IndefiniteError, as_operator_matmat, pcg
from .certify import kato_temple_lower, largest_interval, smallest_interval
from .checkpoint import IterativeCheckpoint, fingerprint
from .preconditioners import Preconditioner, make_preconditioner
from .results import EigenResult

__all__ = ["structured_eigs", "shift_invert_eigs"]

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def _scipy_operator(op: Any) -> Any:
    if hasattr(op, "aslinearoperator"):
        return op.aslinearoperator()
    from scipy.sparse.linalg import aslinearoperator
    return aslinearoperator(op)


def _residual_norms(op: Any, values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    AV = np.asarray(op.matmat(vectors))
    return np.linalg.norm(AV - vectors * values[None, :], axis=0)


def _check_k(op: Any, k: int) -> int:
    n = op.shape[0]
    if not (1 <= k < n):
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    return n


def _bar(progress: bool, **kw: Any) -> Any:
    if not progress:
        return None
    return Progress(kw.get("total"), kw["desc"], unit=kw["unit"], initial=kw.get("initial", 0))


# ---- Lanczos and LOBPCG -------------------------------------------------------------------


def _lanczos(A: Any, k: int, which: str, tol: float, maxiter: int | None, v0: np.ndarray,
             progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """ARPACK's implicitly restarted Lanczos (scipy ``eigsh``), counting products on a bar."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    bar = _bar(progress, desc=f"Lanczos[{which}]", unit="matvec")
    if bar is not None:
        inner = A

        def mv(v: np.ndarray) -> np.ndarray:
            bar.update(1)
            return inner.matvec(v)
        A = LinearOperator(inner.shape, matvec=mv, dtype=np.float64)
    try:
        return eigsh(A, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0)
    finally:
        if bar is not None:
            bar.close()


def _lobpcg(A: Any, M: Any, X: np.ndarray, which: str, tol: float, maxiter: int, done: int,
            ckpt: IterativeCheckpoint | None, restart_every: int,
            progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """scipy's LOBPCG from the block X, in checkpointed rounds when ``ckpt`` is given."""
    from scipy.sparse.linalg import lobpcg

    bar = _bar(progress, total=maxiter, initial=done, desc=f"LOBPCG[{which}]", unit="it")
    try:
        while True:
            # without a checkpoint, one uninterrupted run keeps LOBPCG's search directions
            rounds = max(min(restart_every if ckpt is not None else maxiter, maxiter - done), 1)
            with warnings.catch_warnings():  # rounds end early on purpose; we check below
                warnings.filterwarnings("ignore", message="(?s).*not reaching the requested",
                                        category=UserWarning)
                vals, X, res_hist = lobpcg(A, X, M=M, tol=tol, maxiter=rounds,
                                           largest=(which == "LA"),
                                           retResidualNormsHistory=True)
            done += rounds
            worst = float(np.max(res_hist[-1])) if len(res_hist) else float("nan")
            if bar is not None:
                bar.update(rounds)
                bar.set_postfix(residual=f"{worst:.2e}")
            if ckpt is not None:
                ckpt.save({"X": X, "iterations": np.int64(done), "values": vals})
            if worst <= tol or done >= maxiter:
                return vals, X
    finally:
        if bar is not None:
            bar.close()


def _lobpcg_start(op: KernelOperator, n: int, k: int, which: str, rng: np.random.Generator,
                  checkpoint: str | os.PathLike | None) -> tuple[np.ndarray, int, Any]:
    """LOBPCG's first block (random, or the checkpoint's), iterations done, the checkpoint."""
    X = rng.standard_normal((n, k))
    if checkpoint is None:
        return X, 0, None
    ckpt = IterativeCheckpoint(checkpoint, fingerprint(op, method="lobpcg", which=which, k=k),
                               "operator, k or which")
    saved = ckpt.load()
    if saved is None:
        return X, 0, ckpt
    log.info("resuming LOBPCG from %s after %d iterations", ckpt.path, int(saved["iterations"]))
    return saved["X"], int(saved["iterations"]), ckpt


def structured_eigs(op: KernelOperator, k: int = 1, which: str = "LA", method: str = "lanczos",
                    tol: float = 1e-8, maxiter: int | None = None,
                    preconditioner: str | Preconditioner | None = None, shift: float = 0.0,
                    seed: int = 0, checkpoint: str | os.PathLike | None = None,
                    restart_every: int = 50, progress: bool = True,
                    return_vectors: bool = True) -> EigenResult:
    """k extreme eigenpairs of a symmetric kernel operator.

    ``which``: "LA" (largest) or "SA" (smallest, e.g. λ_min of Assumption 8).
    ``method``: "lanczos" (ARPACK implicitly restarted Lanczos, scipy ``eigsh``) or "lobpcg"
    (scipy ``lobpcg``; takes a ``preconditioner`` by name, built for op + ``shift``·I -- a good
    choice for λ_min is "two_level" or "kron" with a small positive shift).  With ``checkpoint``
    (``.npz``) LOBPCG runs in rounds of ``restart_every`` iterations, the current block of vectors
    is saved after each round and a killed run restarts from it (each round restarts the search
    directions, which slows convergence); without one it runs uninterrupted.
    """
    if which not in ("LA", "SA"):
        raise ValueError(f"which must be 'LA' (largest) or 'SA' (smallest), got {which!r}")
    if method not in ("lanczos", "lobpcg"):
        raise ValueError(f"method must be 'lanczos' or 'lobpcg', got {method!r}")
    n = _check_k(op, k)
    A = _scipy_operator(op)
    before = getattr(op, "n_products", 0)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    if method == "lanczos":
        vals, vecs = _lanczos(A, k, which, tol, maxiter, rng.standard_normal(n), progress)
    else:
        from scipy.sparse.linalg import LinearOperator

        M = None
        if preconditioner is not None:
            P = make_preconditioner(op, preconditioner, shift)
            M = LinearOperator((n, n), matvec=P, matmat=P, dtype=np.float64)
        X, done, ckpt = _lobpcg_start(op, n, k, which, rng, checkpoint)
        vals, vecs = _lobpcg(A, M, X, which, tol, 500 if maxiter is None else int(maxiter),
                             done, ckpt, restart_every, progress)
    order = np.argsort(vals)
    vals, vecs = np.asarray(vals)[order], np.asarray(vecs)[:, order]
    res = _residual_norms(op, vals, vecs)
    out = EigenResult(values=vals, vectors=vecs if return_vectors else None, method=method,
                      n=n, which=which, n_products=getattr(op, "n_products", 0) - before,
                      wall_s=time.perf_counter() - t0, residuals=res)
    if which == "SA":  # estimates; analysis.structured_extremes certifies them by inertia
        out.interval_min = smallest_interval(vals, res, tol)
    else:
        out.interval_max = largest_interval(vals[-1], res[-1], tol)
    out.converged = bool(np.all(res <= max(tol, 1e-15) * np.maximum(np.abs(vals), 1e-300)))
    return out


# ---- shift-invert -------------------------------------------------------------------------


@dataclass
class _SearchSpace:
    """Shift-invert's state: an orthonormal basis S, A S, and the counters."""

    S: Tensor
    AS: Tensor
    shifts: list[float]
    outer: int = 0
    inner_its: list[int] = field(default_factory=list)

    def arrays(self, k: int) -> dict[str, Any]:
        return {"S": self.S.cpu().numpy(), "AS": self.AS.cpu().numpy(),
                "outer": np.int64(self.outer), "inner": np.asarray(self.inner_its, np.int64),
                "k": np.int64(k), "shifts": np.asarray(self.shifts),
                "method": np.str_("shift-invert")}


def _si_start(op: KernelOperator, k: int, shift: float, seed: int,
              matmat: Callable[[Tensor], Tensor],
              ckpt: IterativeCheckpoint | None) -> _SearchSpace:
    """A random k-dimensional start (or the checkpoint's search space)."""
    device = getattr(op, "device", torch.device("cpu"))
    saved = ckpt.load() if ckpt is not None else None
    if saved is not None:
        log.info("resuming shift-invert from %s after %d outer steps", ckpt.path,
                 int(saved["outer"]))
        return _SearchSpace(S=torch.as_tensor(saved["S"], device=device),
                            AS=torch.as_tensor(saved["AS"], device=device),
                            shifts=saved["shifts"].tolist(), outer=int(saved["outer"]),
                            inner_its=saved["inner"].tolist())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    S = torch.linalg.qr(torch.randn(op.shape[0], k, generator=gen,
                                    dtype=torch.float64).to(device))[0]
    return _SearchSpace(S=S, AS=matmat(S), shifts=[shift])


def _rayleigh_ritz(space: _SearchSpace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ritz vectors U, A U, Ritz values w (ascending) and residual norms |AU − Uw| of span(S)
    (S orthonormal) with A itself."""
    H = space.S.T @ space.AS
    w, Y = torch.linalg.eigh(0.5 * (H + H.T))
    U, AU = space.S @ Y, space.AS @ Y
    return U, AU, w, torch.linalg.vector_norm(AU - U * w[None, :], dim=0)


class _ShiftedInverse:
    """(A + σI)⁻¹ u by PCG with a structured preconditioner, raising σ (and rebuilding the
    preconditioner) when A + σI turns out indefinite."""

    def __init__(self, op: KernelOperator, matmat: Callable[[Tensor], Tensor],
                 preconditioner: str | Preconditioner | None, space: _SearchSpace,
                 reduction: float, maxiter: int) -> None:
        self.op, self.matmat, self.preconditioner = op, matmat, preconditioner
        self.space, self.reduction, self.maxiter = space, reduction, maxiter
        t0 = time.perf_counter()
        self.M = make_preconditioner(op, preconditioner, space.shifts[-1])
        self.setup_s = time.perf_counter() - t0

    def solve(self, u: Tensor, Au: Tensor, theta: float) -> Tensor:
        """(A + σI)⁻¹ u from the warm start u/(θ + σ), to ``reduction`` × its residual."""
        while True:
            shift = self.space.shifts[-1]
            A_s = lambda v: self.matmat(v[:, None])[:, 0] + shift * v  # noqa: E731
            denom = max(theta + shift, 1e-300)
            x0, r0 = u / denom, u - (Au + shift * u) / denom
            inner_tol = max(self.reduction * float(torch.linalg.vector_norm(r0)), 1e-15)
            try:
                t, its, _ = pcg(A_s, self.M, u, x0=x0, r0=r0, tol=inner_tol,
                                maxiter=self.maxiter)
                self.space.inner_its.append(its)
                return t
            except IndefiniteError as err:  # λ_min(A) < −σ: raise the shift, rebuild M
                shift = max(8.0 * shift, -2.0 * err.rayleigh + 2.0 * shift, 1e-300)
                self.space.shifts.append(shift)
                log.warning("A + σI is indefinite; raising the shift to σ = %.3e", shift)
                self.M = make_preconditioner(self.op, self.preconditioner, shift)


def _si_extend(space: _SearchSpace, U: Tensor, AU: Tensor, T: Tensor, k: int, max_basis: int,
               matmat: Callable[[Tensor], Tensor]) -> bool:
    """Add the new directions T to the search space (restarting it from the best Ritz vectors
    when it would grow past ``max_basis``); False when T adds nothing."""
    S, AS = space.S, space.AS
    if S.shape[1] + T.shape[1] > max_basis:  # restart from the best Ritz vectors
        keep = max(k, max_basis - T.shape[1] - max_basis // 2)
        S, AS = U[:, :keep], AU[:, :keep]
    for _ in range(2):  # classical Gram–Schmidt, twice
        T = T - S @ (S.T @ T)
    T, Rt = torch.linalg.qr(T)
    ok = torch.abs(torch.diagonal(Rt)) > 1e-10 * torch.abs(Rt).max()
    if not ok.any():
        log.warning("shift-invert: the new directions lie in the search space; stopping")
        return False
    T = T[:, ok]
    space.S, space.AS = torch.cat([S, T], 1), torch.cat([AS, matmat(T)], 1)
    return True


def _pair_bounds(w: np.ndarray, rn: np.ndarray, k: int) -> np.ndarray:
    """How far below θ_j each of the k smallest eigenvalues may lie: min(r_j, Kato–Temple
    r_j²/gap) with the gap to θ_{j+1} − r_{j+1} of the search space (an estimate)."""
    bounds = rn[:k].copy()
    for j in range(min(k, w.size - 1)):
        bounds[j] = w[j] - kato_temple_lower(w[j], rn[j], w[j + 1] - rn[j + 1]) \
            if w[j + 1] - rn[j + 1] > w[j] else rn[j]
    return bounds


def _unconverged(w: np.ndarray, rn: np.ndarray, k: int, tol: float, rtol: float,
                 floor: float = 0.0, resolution: float = 0.0) -> np.ndarray:
    """Which of the k smallest pairs still miss residual ≤ tol, bound ≤ rtol·|θ|,
    (numerically zero) θ ≤ floor with r ≤ floor, and bound ≤ ``resolution`` (what float64
    resolves: no further step can tighten it)."""
    bounds = _pair_bounds(w, rn, k)
    zero = ((w[:k] <= floor) & (rn[:k] <= floor)) | (bounds <= resolution)
    # half of rtol: the certified gap (inertia, :mod:`.certify`) is a little below the estimate
    return ~((rn[:k] <= tol) | (bounds <= 0.5 * rtol * np.abs(w[:k])) | zero)


def _stalled(history: list[float], window: int = 6) -> bool:
    """No 10 % decrease of the worst bound over the last ``window`` outer steps (the residual
    has reached its rounding floor)."""
    return len(history) > window and min(history[-window:]) > 0.9 * min(history[:-window])


def _si_iterate(space: _SearchSpace, inverse: _ShiftedInverse,
                matmat: Callable[[Tensor], Tensor], k: int, tol: float, maxiter: int,
                max_basis: int, ckpt: IterativeCheckpoint | None,
                progress: bool, rtol: float = 0.0, floor: float = 0.0,
                resolution: float = 0.0) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Outer steps until each of the k smallest Ritz pairs has residual ≤ tol or its bound
    (:func:`_pair_bounds`) ≤ rtol·|θ| (or ``maxiter``, or the bound stalls); returns the Ritz
    vectors, the values and residual norms of the whole search space."""
    bar = _bar(progress, total=maxiter, initial=space.outer, desc="shift-invert", unit="outer")
    history: list[float] = []
    try:
        while True:
            U, AU, w, rn = _rayleigh_ritz(space)
            theta, res_norms = w.cpu().numpy(), rn.cpu().numpy()
            todo = _unconverged(theta, res_norms, k, tol, rtol, floor, resolution)
            history.append(float(_pair_bounds(theta, res_norms, k).max()))
            if bar is not None:
                bar.set_postfix(theta=f"{theta[0]:.3e}", residual=f"{res_norms[:k].max():.1e}",
                                inner=sum(space.inner_its))
            if not todo.any() or space.outer >= maxiter:
                break
            if _stalled(history):
                log.warning("shift-invert: the Ritz bounds stopped decreasing (rounding floor "
                            "of the residual); stopping after %d outer steps", space.outer)
                break
            space.outer += 1
            T = torch.stack([inverse.solve(U[:, j], AU[:, j], float(w[j]))
                             for j in np.flatnonzero(todo)], dim=1)
            if not _si_extend(space, U, AU, T, k, max_basis, matmat):
                break
            if bar is not None:
                bar.update(1)
            if ckpt is not None and ckpt.due():
                ckpt.save(space.arrays(k))
    finally:
        if bar is not None:
            bar.close()
    if ckpt is not None:
        ckpt.save(space.arrays(k))
    return U, theta, res_norms


def _check_shift_invert(n: int, k: int, shift: float, inner_reduction: float) -> float:
    if not (1 <= k < n):
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    if not (0 < inner_reduction < 1):
        raise ValueError(f"inner_reduction must be in (0, 1), got {inner_reduction}")
    shift = float(shift)
    if not math.isfinite(shift) or shift < 0:
        raise ValueError(f"shift σ must be ≥ 0, got {shift}")
    return shift


def shift_invert_eigs(op: KernelOperator, k: int = 1, *, shift: float = 0.0,
                      preconditioner: str | Preconditioner | None = "two_level",
                      tol: float = 1e-8, inner_reduction: float = 0.3,
                      inner_maxiter: int | None = None, maxiter: int = 200,
                      max_basis: int = 24, seed: int = 0, progress: bool = True,
                      return_vectors: bool = True, checkpoint: str | os.PathLike | None = None,
                      checkpoint_every: float = 60.0, rtol: float = 0.0, floor: float = 0.0,
                      resolution: float = 0.0, inner_op: Any = None) -> EigenResult:
    """The k smallest eigenpairs of a symmetric operator A by shift-and-invert with inner PCG.

    λ_min(A) = 1/λ_max((A + σI)⁻¹) − σ.  Each outer step applies (A + σI)⁻¹ to every unconverged
    Ritz vector u (PCG with the structured ``preconditioner`` built for A + σI, warm-started at
    u/(θ + σ)), adds the result to the search space and does Rayleigh–Ritz with A itself.  So the
    Ritz values are upper bounds of the eigenvalues and the residuals |Au − θu| are exact whatever
    the accuracy of the inner solves; that accuracy only sets the speed.  Tolerance schedule: an
    inner solve reduces its (warm-start) residual |Au − θu|/(θ + σ) by ``inner_reduction``, so
    the inner tolerance tightens in proportion to the outer residual (inexact inverse iteration).

    ``tol``: absolute residual |Au − θu| at which a pair is converged; ``rtol``: or when
    min(r, Kato–Temple r²/gap, gap estimated from the next Ritz value) ≤ ``rtol``·|θ| (a bound
    that stops decreasing ends the run, not converged); ``floor``: or θ ≤ floor and r ≤ floor;
    ``resolution``: or the bound ≤ resolution (e.g. eps·λ_max: float64 resolves no more). ``inner_op``: the operator the
    inner PCG multiplies by (e.g. a float32 twin of ``op``: inexact inner solves only slow the
    outer iteration; Rayleigh–Ritz always uses ``op``).  ``shift`` σ ≥ 0 keeps
    A + σI positive definite; if PCG meets a direction with pᵀ(A+σI)p ≤ 0 (so λ_min(A) < −σ) the
    shift is raised and the preconditioner rebuilt.  The search space holds at most
    ``max_basis`` vectors (restarted from the best Ritz vectors).  ``n_products`` counts every
    operator column (inner PCG products included); ``info`` has the inner iteration counts.
    With ``checkpoint`` (``.npz``) the search space (S, AS), the shift and the counters are saved
    atomically every ``checkpoint_every`` seconds and at the end; a rerun resumes from them
    (a checkpoint of another operator or k is refused).
    """
    n = op.shape[0]
    shift = _check_shift_invert(n, k, shift, inner_reduction)
    max_basis = max(int(max_basis), 2 * k + 1)
    matmat = as_operator_matmat(op)
    before, t0 = getattr(op, "n_products", 0), time.perf_counter()
    ckpt = None if checkpoint is None else IterativeCheckpoint(
        checkpoint, fingerprint(op, method="shift-invert", k=k), "operator or k",
        every=checkpoint_every)
    space = _si_start(op, k, shift, seed, matmat, ckpt)
    resumed_from = space.outer
    inner = matmat if inner_op is None else as_operator_matmat(inner_op)
    inverse = _ShiftedInverse(op, inner, preconditioner, space, inner_reduction,
                              10 * n if inner_maxiter is None else int(inner_maxiter))
    U, theta, res_norms = _si_iterate(space, inverse, matmat, k, tol, maxiter, max_basis, ckpt,
                                      progress, rtol, floor, resolution)
    converged = not _unconverged(theta, res_norms, k, tol, rtol, floor, resolution).any()
    vecs = U[:, :k].cpu().numpy()
    return EigenResult(values=theta[:k], vectors=vecs if return_vectors else None,
                       method="shift-invert", n=n, which="SA",
                       n_products=getattr(op, "n_products", 0) - before,
                       wall_s=time.perf_counter() - t0, residuals=res_norms[:k],
                       info={"outer_iterations": space.outer, "inner_iterations": space.inner_its,
                             "resumed_from": resumed_from, "shifts": space.shifts,
                             "preconditioner": inverse.M.name, "setup_s": inverse.setup_s,
                             "converged": converged, "next_ritz": theta[k:k + 1].tolist(),
                             "next_residual": res_norms[k:k + 1].tolist()},
                       interval_min=smallest_interval(theta[:k + 1], res_norms[:k + 1], rtol),
                       converged=converged)
