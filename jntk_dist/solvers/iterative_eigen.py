"""Extreme eigenpairs of kernel operators: Lanczos / LOBPCG (scipy) and shift-invert λ_min with
an inner PCG (the small end of Assumption 8 at full size)."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cg import IndefiniteError, as_operator_matmat, pcg
from .checkpoint import save_npz
from .preconditioners import Preconditioner, make_preconditioner
from .results import EigResult

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


def structured_eigs(op: Any, k: int = 1, which: str = "LA", method: str = "lanczos",
                    tol: float = 1e-8, maxiter: int | None = None,
                    preconditioner: str | Preconditioner | None = None, shift: float = 0.0,
                    seed: int = 0, checkpoint: str | os.PathLike | None = None,
                    restart_every: int = 50, progress: bool = True,
                    return_vectors: bool = True) -> EigResult:
    """k extreme eigenpairs of a symmetric structured operator.

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
    n = op.shape[0]
    if not (1 <= k < n):
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    A = _scipy_operator(op)
    before = getattr(op, "n_products", 0)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    if method == "lanczos":
        from scipy.sparse.linalg import eigsh

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(desc=f"Lanczos[{which}]", unit="matvec")
            inner = A

            from scipy.sparse.linalg import LinearOperator

            def mv(v: np.ndarray) -> np.ndarray:
                bar.update(1)
                return inner.matvec(v)
            A = LinearOperator(inner.shape, matvec=mv, dtype=np.float64)
        try:
            vals, vecs = eigsh(A, k=k, which=which, tol=tol, maxiter=maxiter,
                               v0=rng.standard_normal(n))
        finally:
            if bar is not None:
                bar.close()
    elif method == "lobpcg":
        from scipy.sparse.linalg import LinearOperator, lobpcg

        M = None
        if preconditioner is not None:
            P = make_preconditioner(op, preconditioner, shift)
            M = LinearOperator((n, n), matvec=P, matmat=P, dtype=np.float64)
        maxiter = 500 if maxiter is None else int(maxiter)
        ckpt = Path(checkpoint) if checkpoint is not None else None
        X = rng.standard_normal((n, k))
        done = 0
        if ckpt is not None and ckpt.exists():
            with np.load(ckpt) as z:
                if tuple(z["X"].shape) != (n, k) or str(z["which"]) != which:
                    raise ValueError(f"checkpoint {ckpt} holds vectors of shape {z['X'].shape} "
                                     f"for which={z['which']}, not ({n}, {k}) for {which}")
                X, done = z["X"], int(z["iterations"])
            log.info("resuming LOBPCG from %s after %d iterations", ckpt, done)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=maxiter, initial=done, desc=f"LOBPCG[{which}]", unit="it")
        try:
            while True:
                # without a checkpoint, one uninterrupted run keeps LOBPCG's search directions
                every = restart_every if ckpt is not None else maxiter
                rounds = min(every, maxiter - done)
                with warnings.catch_warnings():  # rounds end early on purpose; we check below
                    warnings.filterwarnings("ignore", message="(?s).*not reaching the requested",
                                            category=UserWarning)
                    vals, X, res_hist = lobpcg(A, X, M=M, tol=tol, maxiter=max(rounds, 1),
                                               largest=(which == "LA"),
                                               retResidualNormsHistory=True)
                done += max(rounds, 1)
                worst = float(np.max(res_hist[-1])) if len(res_hist) else float("nan")
                if bar is not None:
                    bar.update(max(rounds, 1))
                    bar.set_postfix(residual=f"{worst:.2e}")
                if ckpt is not None:
                    save_npz(ckpt, X=X, iterations=np.int64(done), which=np.str_(which),
                              values=vals)
                if worst <= tol or done >= maxiter:
                    break
        finally:
            if bar is not None:
                bar.close()
        vecs = X
    else:
        raise ValueError(f"method must be 'lanczos' or 'lobpcg', got {method!r}")
    order = np.argsort(vals)
    vals, vecs = np.asarray(vals)[order], np.asarray(vecs)[:, order]
    residuals = _residual_norms(op, vals, vecs)
    return EigResult(values=vals, vectors=vecs if return_vectors else None, method=method,
                     which=which, n_products=getattr(op, "n_products", 0) - before,
                     wall_s=time.perf_counter() - t0, residuals=residuals)


def shift_invert_eigs(op: Any, k: int = 1, *, shift: float = 0.0,
                      preconditioner: str | Preconditioner | None = "two_level",
                      tol: float = 1e-8, inner_reduction: float = 0.3,
                      inner_maxiter: int | None = None, maxiter: int = 200,
                      max_basis: int = 24, seed: int = 0, progress: bool = True,
                      return_vectors: bool = True, checkpoint: str | os.PathLike | None = None,
                      checkpoint_every: float = 60.0) -> EigResult:
    """The k smallest eigenpairs of a symmetric operator A by shift-and-invert with inner PCG.

    λ_min(A) = 1/λ_max((A + σI)⁻¹) − σ.  Each outer step applies (A + σI)⁻¹ to every unconverged
    Ritz vector u (PCG with the structured ``preconditioner`` built for A + σI, warm-started at
    u/(θ + σ)), adds the result to the search space and does Rayleigh–Ritz with A itself.  So the
    Ritz values are upper bounds of the eigenvalues and the residuals |Au − θu| are exact whatever
    the accuracy of the inner solves; that accuracy only sets the speed.  Tolerance schedule: an
    inner solve reduces its (warm-start) residual |Au − θu|/(θ + σ) by ``inner_reduction``, so
    the inner tolerance tightens in proportion to the outer residual (inexact inverse iteration).

    ``tol``: absolute residual |Au − θu| at which a pair is converged.  ``shift`` σ ≥ 0 keeps
    A + σI positive definite; if PCG meets a direction with pᵀ(A+σI)p ≤ 0 (so λ_min(A) < −σ) the
    shift is raised and the preconditioner rebuilt.  The search space holds at most
    ``max_basis`` vectors (restarted from the best Ritz vectors).  ``n_products`` counts every
    operator column (inner PCG products included); ``info`` has the inner iteration counts.
    With ``checkpoint`` (``.npz``) the search space (S, AS), the shift and the counters are saved
    atomically every ``checkpoint_every`` seconds and at the end; a rerun resumes from them
    (a checkpoint of another operator shape or k is refused).
    """
    n = op.shape[0]
    if not (1 <= k < n):
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    if not (0 < inner_reduction < 1):
        raise ValueError(f"inner_reduction must be in (0, 1), got {inner_reduction}")
    shift = float(shift)
    if not math.isfinite(shift) or shift < 0:
        raise ValueError(f"shift σ must be ≥ 0, got {shift}")
    max_basis = max(int(max_basis), 2 * k + 1)
    inner_maxiter = 10 * n if inner_maxiter is None else int(inner_maxiter)
    device = getattr(op, "device", torch.device("cpu"))
    dtype = torch.float64
    matmat = as_operator_matmat(op)
    before = getattr(op, "n_products", 0)
    t0 = time.perf_counter()
    t_setup = time.perf_counter()
    M = make_preconditioner(op, preconditioner, shift)
    setup_s = time.perf_counter() - t_setup
    ckpt = Path(checkpoint) if checkpoint is not None else None
    outer = 0
    inner_its: list[int] = []
    shifts = [shift]
    if ckpt is not None and ckpt.exists():
        with np.load(ckpt) as z:
            if str(z["method"]) != "shift-invert" or z["S"].shape[0] != n or int(z["k"]) != k:
                raise ValueError(f"checkpoint {ckpt} is not a shift-invert search space of "
                                 f"{n} rows for k={k}; remove it or choose another path")
            S = torch.as_tensor(z["S"], device=device)
            AS = torch.as_tensor(z["AS"], device=device)
            outer, inner_its = int(z["outer"]), z["inner"].tolist()
            shifts = z["shifts"].tolist()
        if shifts[-1] != shift:
            shift = shifts[-1]
            M = make_preconditioner(op, preconditioner, shift)
        log.info("resuming shift-invert from %s after %d outer steps", ckpt, outer)
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        S = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=dtype).to(device))[0]
        AS = matmat(S)
    resumed_from = outer

    def save() -> None:
        if ckpt is not None:
            save_npz(ckpt, S=S.cpu().numpy(), AS=AS.cpu().numpy(), outer=np.int64(outer),
                      inner=np.asarray(inner_its, dtype=np.int64), k=np.int64(k),
                      shifts=np.asarray(shifts), method=np.str_("shift-invert"))

    last_save = time.perf_counter()
    theta = np.zeros(k)
    res_norms = np.full(k, np.inf)
    U = S
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=maxiter, initial=outer, desc="shift-invert", unit="outer")
    try:
        while True:
            # Rayleigh–Ritz with A on span(S) (S orthonormal)
            H = S.T @ AS
            w, Y = torch.linalg.eigh(0.5 * (H + H.T))
            U, AU = S @ Y, AS @ Y
            R = AU - U * w[None, :]
            rn = torch.linalg.vector_norm(R, dim=0)
            theta, res_norms = w[:k].cpu().numpy(), rn[:k].cpu().numpy()
            if bar is not None:
                bar.set_postfix(theta=f"{theta[0]:.3e}", residual=f"{res_norms.max():.1e}",
                                inner=sum(inner_its))
            if np.all(res_norms <= tol) or outer >= maxiter:
                break
            outer += 1
            new = []
            for j in np.flatnonzero(res_norms > tol):
                u, Au, th = U[:, j], AU[:, j], float(w[j])
                while True:
                    A_s = lambda v: matmat(v[:, None])[:, 0] + shift * v  # noqa: E731
                    denom = max(th + shift, 1e-300)
                    x0 = u / denom
                    r0 = u - (Au + shift * u) / denom
                    inner_tol = max(inner_reduction * float(torch.linalg.vector_norm(r0)), 1e-15)
                    try:
                        t, its, _ = pcg(A_s, M, u, x0=x0, r0=r0, tol=inner_tol,
                                        maxiter=inner_maxiter)
                        inner_its.append(its)
                        break
                    except IndefiniteError as err:  # λ_min(A) < −σ: raise the shift, rebuild M
                        shift = max(8.0 * shift, -2.0 * err.rayleigh + 2.0 * shift, 1e-300)
                        shifts.append(shift)
                        log.warning("A + σI is indefinite; raising the shift to σ = %.3e", shift)
                        M = make_preconditioner(op, preconditioner, shift)
                new.append(t)
            T = torch.stack(new, dim=1)
            if S.shape[1] + T.shape[1] > max_basis:  # restart from the best Ritz vectors
                keep = max(k, max_basis - T.shape[1] - max_basis // 2)
                S, AS = U[:, :keep], AU[:, :keep]
            for _ in range(2):  # classical Gram–Schmidt, twice
                T = T - S @ (S.T @ T)
            T, Rt = torch.linalg.qr(T)
            ok = torch.abs(torch.diagonal(Rt)) > 1e-10 * torch.abs(Rt).max()
            if not ok.any():
                log.warning("shift-invert: the new directions lie in the search space; stopping")
                break
            T = T[:, ok]
            S, AS = torch.cat([S, T], 1), torch.cat([AS, matmat(T)], 1)
            if bar is not None:
                bar.update(1)
            if ckpt is not None and time.perf_counter() - last_save >= checkpoint_every:
                save()
                last_save = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
    save()
    vecs = U[:, :k].cpu().numpy()
    return EigResult(values=theta, vectors=vecs if return_vectors else None,
                     method="shift-invert", which="SA",
                     n_products=getattr(op, "n_products", 0) - before,
                     wall_s=time.perf_counter() - t0, residuals=res_norms,
                     info={"outer_iterations": outer, "inner_iterations": inner_its,
                           "resumed_from": resumed_from,
                           "shifts": shifts, "preconditioner": M.name, "setup_s": setup_s,
                           "converged": bool(np.all(res_norms <= tol))})
