"""Solvers for structured (matrix-free) kernel operators: PCG for f_ntk, Lanczos/LOBPCG for spectra.

Any operator with ``shape``, ``dtype`` and ``matmat`` (torch in → torch out) works, in particular
:class:`jntk_dist.structured.StructuredKernel`.  The solve of eq. 4,

    (Θ_λ(X, X) + μ I) α = y,   y = (y_1, 0…0, y_2, 0…0, …),

runs preconditioned conjugate gradients with progress (iteration, relative residual) and optional
checkpointing of the iterates to an ``.npz`` file, so a killed solve resumes where it stopped.

Preconditioners that use the structure:
  * ``"kron"``:   blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I_d0) -- the 00 block and the isotropic
                  κ_b δ_αβ part of the Jacobian block, two Cholesky factors of n×n matrices;
  * ``"jacobi"``: the exact inverse of each point's (d0+1)² diagonal block (scaled identity plus
                  a rank-one term on span{e_0, x_i}: a 2×2 solve per point);
  * ``"two_level"``: exact on span{e_0, x̂_i} of every point (a 2n×2n compression that holds the
                  00 block and every term living in the span of x_i), Kronecker on the rest;
  * ``"nystrom"``: two-level with both factors replaced by pivoted-Cholesky (Nyström) low rank +
                  exact diagonal, set up from r field columns (large N);
  * ``"none"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "Preconditioner",
    "IdentityPreconditioner",
    "BlockJacobiPreconditioner",
    "KroneckerPreconditioner",
    "TwoLevelPreconditioner",
    "NystromPreconditioner",
    "pivoted_cholesky",
    "make_preconditioner",
    "SolveResult",
    "EigResult",
    "structured_solve",
    "structured_eigs",
    "labels_to_rhs",
    "pcg",
    "shift_invert_eigs",
    "IndefiniteError",
]

log = logging.getLogger(__name__)
Tensor = torch.Tensor
PRECONDITIONERS = ("none", "jacobi", "kron", "two_level", "nystrom")


# ---- preconditioners --------------------------------------------------------------------


class Preconditioner:
    """Approximates (A + μI)⁻¹; ``apply`` maps (n(d0+1), m) → (n(d0+1), m)."""

    name = "none"

    def apply(self, R: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, R: Any) -> Any:
        is_numpy = not isinstance(R, torch.Tensor)
        Rt = torch.as_tensor(np.asarray(R)) if is_numpy else R
        squeeze = Rt.ndim == 1
        out = self.apply(Rt[:, None] if squeeze else Rt)
        out = out[:, 0] if squeeze else out
        return out.cpu().numpy() if is_numpy else out


class IdentityPreconditioner(Preconditioner):
    name = "none"

    def apply(self, R: Tensor) -> Tensor:
        return R.clone()


class BlockJacobiPreconditioner(Preconditioner):
    """Exact inverse of each point's diagonal block B_i + μI.

    B_i = [[k, c_row xᵀ], [c_col x, iso·I + e x xᵀ]] acts as (iso + μ) on the complement of x and
    as a 2×2 matrix on span{e_0, x̂}.
    """

    name = "jacobi"

    def __init__(self, op: Any, ridge: float = 0.0) -> None:
        p = op.block_diagonal_parts()
        x = op.x1
        self.d0 = op.d0
        norm = torch.linalg.vector_norm(x, dim=1)
        self.xhat = x / norm[:, None]
        self.perp = p["iso"] + ridge
        a = p["k"] + ridge
        b = p["c_row"] * norm
        c = p["c_col"] * norm
        d = p["iso"] + p["rank1"] * norm ** 2 + ridge
        det = a * d - b * c
        bad = (det.abs() <= 1e-300) | (self.perp.abs() <= 1e-300)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} diagonal block(s) are singular (add a ridge μ > 0)")
        self.inv = torch.stack([d / det, -b / det, -c / det, a / det])  # [[a, b], [c, d]]⁻¹

    def apply(self, R: Tensor) -> Tensor:
        n, m = self.xhat.shape[0], R.shape[1]
        Rb = R.reshape(n, self.d0 + 1, m)
        r0, rj = Rb[:, 0, :], Rb[:, 1:, :]
        rx = torch.einsum("nd,ndm->nm", self.xhat, rj)  # component along x̂
        i00, i01, i10, i11 = (t[:, None] for t in self.inv)
        z0 = i00 * r0 + i01 * rx
        zx = i10 * r0 + i11 * rx
        zj = (rj - self.xhat[:, :, None] * rx[:, None, :]) / self.perp[:, None, None]
        zj = zj + self.xhat[:, :, None] * zx[:, None, :]
        return torch.cat([z0[:, None, :], zj], dim=1).reshape(R.shape)


def _psd_factor(A: Tensor, ridge: float, what: str) -> tuple[str, Tensor]:
    A = A + ridge * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return "chol", L
    # Not positive definite at this ridge: pseudo-inverse via eigh with the spectrum floored.
    w, Q = torch.linalg.eigh(A)
    floor = max(float(w.max()) * 1e-10, 1e-300)
    log.warning("%s + μI is not positive definite (λ_min=%.3e); flooring eigenvalues at %.1e",
                what, float(w.min()), floor)
    return "eig", Q / w.clamp_min(floor)[None, :] @ Q.T


def _factor_solve(fac: tuple[str, Any], B: Tensor) -> Tensor:
    kind, F = fac
    if kind == "lowrank":  # (L Lᵀ + D)⁻¹ B = D⁻¹B − D⁻¹L (I + LᵀD⁻¹L)⁻¹ LᵀD⁻¹B
        L, dinv, cap = F
        Y = dinv[:, None] * B
        return Y - dinv[:, None] * (L @ torch.cholesky_solve(L.T @ Y, cap))
    return torch.cholesky_solve(B, F) if kind == "chol" else F @ B


def _jacobian_factor(K_b: Tensor, lam: float, ridge: float) -> tuple[str, Tensor]:
    """Factor of (λK_b + μI), the Jacobian part's n×n matrix; λ = 0 leaves μI alone."""
    if lam == 0.0:
        if ridge <= 0:
            raise ValueError("λ = 0 makes the Jacobian rows of Θ_λ zero: use a ridge μ > 0")
        return ("eig", torch.eye(K_b.shape[0], dtype=K_b.dtype, device=K_b.device) / ridge)
    return _psd_factor(lam * K_b, ridge, "λK_b")


class KroneckerPreconditioner(Preconditioner):
    """blockdiag((K + μI)⁻¹, (λK_b + μI)⁻¹ ⊗ I_d0) in the point-major ordering.

    Needs the n×n fields κ and κ_b once (assembled tile by tile) and two Cholesky factors:
    O(n³) set-up, O(n² d0) per application -- the cost of one operator product.
    """

    name = "kron"

    def __init__(self, op: Any, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the Kronecker preconditioner needs the square X–X operator")
        mats = op.field_matrices(["k", "k_b"])
        lam = 1.0 if op.lam is None else op.lam
        self.n, self.d0 = op.n1, op.d0
        self.f00 = _psd_factor(mats["k"], ridge, "K")
        self.fjac = _jacobian_factor(mats["k_b"], lam, ridge)

    def apply(self, R: Tensor) -> Tensor:
        n, d0, m = self.n, self.d0, R.shape[1]
        Rb = R.reshape(n, d0 + 1, m)
        z0 = _factor_solve(self.f00, Rb[:, 0, :].contiguous())
        zj = _factor_solve(self.fjac, Rb[:, 1:, :].reshape(n, d0 * m)).reshape(n, d0, m)
        return torch.cat([z0[:, None, :], zj], dim=1).reshape(R.shape)


class TwoLevelPreconditioner(Preconditioner):
    """Exact on span{e_0, x̂_i} of every point, Kronecker on the rest.

    With the orthonormal Q = [e_i⊗e_0, e_i⊗x̂_i] (2n columns) and P⊥ = I − QQᵀ:
        M = Q (QᵀAQ + μI)⁻¹ Qᵀ + P⊥ ((λK_b + μI)⁻¹ ⊗ I_d0) P⊥.
    QᵀAQ holds the whole 00 block and all the κ_a, κ_c, κ_ab, κ_ac, κ_bc terms (they live in the
    span of x_i); on the complement only κ_b δ_αβ and the κ_bb x_j x_iᵀ term remain.
    Set-up: all 8 fields (n×n), a 2n Cholesky and an n Cholesky.
    """

    name = "two_level"

    def __init__(self, op: Any, ridge: float = 0.0) -> None:
        if not op.is_square:
            raise ValueError("the two-level preconditioner needs the square X–X operator")
        from .kernels import FIELD_NAMES

        F = op.field_matrices(FIELD_NAMES)
        lam = 1.0 if op.lam is None else op.lam
        self.n, self.d0 = op.n1, op.d0
        self.xhat = op.x1 / torch.linalg.vector_norm(op.x1, dim=1)[:, None]
        C = op.compressed_on_inputs(F)
        self.fq = _psd_factor(0.5 * (C + C.T), ridge, "QᵀKQ")
        self.fjac = _jacobian_factor(F["k_b"], lam, ridge)

    def apply(self, R: Tensor) -> Tensor:
        n, d0, m = self.n, self.d0, R.shape[1]
        Rb = R.reshape(n, d0 + 1, m)
        rj = Rb[:, 1:, :]
        cx = torch.einsum("nd,ndm->nm", self.xhat, rj)
        zq = _factor_solve(self.fq, torch.cat([Rb[:, 0, :], cx], 0))
        perp = rj - self.xhat[:, :, None] * cx[:, None, :]
        zj = _factor_solve(self.fjac, perp.reshape(n, d0 * m)).reshape(n, d0, m)
        zj = zj - self.xhat[:, :, None] * torch.einsum("nd,ndm->nm", self.xhat, zj)[:, None, :]
        zj = zj + self.xhat[:, :, None] * zq[n:, None, :]
        return torch.cat([zq[:n, None, :], zj], dim=1).reshape(R.shape)


def pivoted_cholesky(diagonal: Tensor, columns: Callable[[list[int]], Tensor], max_rank: int,
                     rel_tol: float = 1e-10) -> Tensor:
    """Greedy pivoted Cholesky of a PSD n×n matrix known by its diagonal and its columns.

    ``columns(idx)`` returns the (n, len(idx)) columns.  Stops at ``max_rank`` or when the trace
    of the residual falls below ``rel_tol``·trace.  Returns L (n, r) with A ≈ L Lᵀ (the Nyström
    approximation on the pivot columns); diag(A − L Lᵀ) ≥ 0 is what it leaves out.
    """
    n = diagonal.shape[0]
    d = diagonal.clone().clamp_min(0.0)
    trace0 = float(d.sum())
    L = torch.zeros((n, max(0, min(max_rank, n))), dtype=diagonal.dtype, device=diagonal.device)
    r = 0
    while r < L.shape[1]:
        i = int(torch.argmax(d))
        if float(d.sum()) <= rel_tol * trace0 or float(d[i]) <= 0:
            break
        c = columns([i])[:, 0] - L[:, :r] @ L[i, :r]
        L[:, r] = c / math.sqrt(float(d[i]))
        d = (d - L[:, r] ** 2).clamp_min(0.0)
        d[i] = 0.0
        r += 1
    return L[:, :r]


def _lowrank_factor(L: Tensor, residual_diag: Tensor, ridge: float, floor: float
                    ) -> tuple[str, Any]:
    """Factor of L Lᵀ + diag(residual_diag) + μI, applied by the Woodbury identity."""
    dinv = 1.0 / (residual_diag + ridge).clamp_min(floor)
    cap = torch.eye(L.shape[1], dtype=L.dtype, device=L.device) + L.T @ (dinv[:, None] * L)
    return "lowrank", (L, dinv, torch.linalg.cholesky(cap))


class NystromPreconditioner(TwoLevelPreconditioner):
    """The two-level preconditioner with its two dense factors replaced by low-rank + diagonal
    approximations, for N where O(N²) fields or O(N³) factorisations are out of reach.

    QᵀAQ (2n×2n) and λK_b (n×n) are each approximated by a pivoted Cholesky (Nyström on the
    greedily chosen pivot columns) L Lᵀ plus the exact diagonal of what it leaves out, and
    inverted (with + μI) by the Woodbury identity.  Set-up reads only the pivot columns of the
    fields (r columns, O(n r) field entries, O(n r²) flops); each application is O(n r + n d0).
    ``rank`` (per factor) defaults to what ``memory_mb`` holds: 3n·r float64 numbers.
    """

    name = "nystrom"

    def __init__(self, op: Any, ridge: float = 0.0, rank: int | None = None,
                 memory_mb: float = 256.0, rel_tol: float = 1e-10) -> None:
        if not op.is_square:
            raise ValueError("the Nyström preconditioner needs the square X–X operator")
        n = op.n1
        if rank is None:
            rank = int(memory_mb * 2**20 / (8 * 3 * n))
        self.rank = max(1, min(int(rank), 2 * n))
        lam = 1.0 if op.lam is None else op.lam
        self.n, self.d0 = n, op.d0
        self.xhat = op.x1 / torch.linalg.vector_norm(op.x1, dim=1)[:, None]
        cdiag = op.compressed_diagonal()
        floor = 1e-12 * float(cdiag.abs().max())

        cache: dict[int, Tensor] = {}

        def c_columns(idx: list[int]) -> Tensor:
            out = []
            for c in idx:
                j = c % n
                if j not in cache:
                    cache.clear()  # the e_0 and x̂ columns of a point are often both pivots
                    cache[j] = op.compressed_columns([j])
                out.append(cache[j][:, 0 if c < n else 1])
            return torch.stack(out, 1)

        Lq = pivoted_cholesky(cdiag, c_columns, self.rank, rel_tol)
        self.fq = _lowrank_factor(Lq, (cdiag - (Lq ** 2).sum(1)).clamp_min(0.0), ridge, floor)
        if lam == 0.0:
            self.fjac = _jacobian_factor(torch.zeros((n, n), dtype=cdiag.dtype), lam, ridge)
        else:
            kb_diag = op.source.diagonal()[2]  # FIELD_NAMES index of k_b
            Lb = pivoted_cholesky(lam * kb_diag, lambda idx: lam * op.field_columns("k_b", idx),
                                  self.rank, rel_tol)
            resid = (lam * kb_diag - (Lb ** 2).sum(1)).clamp_min(0.0)
            self.fjac = _lowrank_factor(Lb, resid, ridge, floor)
        self.ranks = (Lq.shape[1], self.fjac[1][0].shape[1] if self.fjac[0] == "lowrank" else 0)


def make_preconditioner(op: Any, kind: str | Preconditioner | None = "kron",
                        ridge: float = 0.0) -> Preconditioner:
    """A preconditioner for (op + ridge·I) by name: 'none', 'jacobi', 'kron', 'two_level' or
    'nystrom' (low-rank + diagonal, rank from a 256 MB budget; build
    :class:`NystromPreconditioner` yourself for another rank or budget)."""
    if isinstance(kind, Preconditioner):
        return kind
    kind = "none" if kind is None else kind
    if kind == "none":
        return IdentityPreconditioner()
    if kind == "jacobi":
        return BlockJacobiPreconditioner(op, ridge)
    if kind == "kron":
        return KroneckerPreconditioner(op, ridge)
    if kind == "two_level":
        return TwoLevelPreconditioner(op, ridge)
    if kind == "nystrom":
        return NystromPreconditioner(op, ridge)
    raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {kind!r}")


# ---- conjugate gradients ----------------------------------------------------------------


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


def labels_to_rhs(y: Any, n: int, d0: int) -> np.ndarray:
    """y of length n → (y_1, 0…0, y_2, 0…0, …) of length n(d0+1); a full-length y is kept."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] == n * (d0 + 1):
        out = y
    elif y.shape[0] == n:
        out = np.zeros((n, d0 + 1))
        out[:, 0] = y
        out = out.reshape(-1)
    else:
        raise ValueError(f"y has length {y.shape[0]}; expected n={n} labels or the full "
                         f"n(d0+1)={n * (d0 + 1)} right-hand side")
    if not np.isfinite(out).all():
        raise ValueError("y contains NaN/inf values")
    return out


def _fingerprint(op: Any, b: np.ndarray, ridge: float, precond: str) -> str:
    h = hashlib.sha256()
    desc = {"shape": list(op.shape), "lam": getattr(op, "lam", None), "ridge": float(ridge),
            "preconditioner": precond,
            "description": {k: str(v) for k, v in getattr(op, "description", {}).items()}}
    h.update(json.dumps(desc, sort_keys=True).encode())
    h.update(np.ascontiguousarray(b).tobytes())
    x1 = getattr(op, "x1", None)
    if x1 is not None:
        h.update(np.ascontiguousarray(x1.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


def _save_npz(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def _as_operator_matmat(op: Any) -> Callable[[Tensor], Tensor]:
    def mm(V: Tensor) -> Tensor:
        out = op.matmat(V)
        return torch.as_tensor(out, dtype=V.dtype, device=V.device)
    return mm


class IndefiniteError(ValueError):
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


def structured_solve(op: Any, y: Any, ridge: float = 0.0, tol: float = 1e-6,
                     maxiter: int | None = None, preconditioner: str | Preconditioner = "kron",
                     x0: Any = None, checkpoint: str | os.PathLike | None = None,
                     checkpoint_every: float = 60.0, progress: bool = True,
                     callback: Callable[[int, float], None] | None = None) -> SolveResult:
    """Solve (op + ridge·I) α = y by preconditioned conjugate gradients.

    ``y``: n labels (expanded to (y_i, 0…0) blocks, eq. 4) or the full right-hand side.
    ``tol``: relative residual |r|/|b| to reach.  ``callback(iteration, residual)`` is called each
    iteration.  With ``checkpoint`` (an ``.npz`` path) the CG state is saved atomically every
    ``checkpoint_every`` seconds and on exit; an existing checkpoint of the same system (same
    operator description, inputs, y, ridge, preconditioner) is resumed exactly, one of another
    system is refused.
    """
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge μ must be ≥ 0, got {ridge}")
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    n_rows = op.shape[0]
    d0 = getattr(op, "d0", None)
    b_np = labels_to_rhs(y, n_rows // (d0 + 1), d0) if d0 is not None else \
        np.asarray(y, dtype=np.float64).reshape(-1)
    maxiter = int(maxiter) if maxiter is not None else 10 * n_rows
    device = getattr(op, "device", torch.device("cpu"))
    dtype = torch.float64
    matmat = _as_operator_matmat(op)
    A = lambda v: matmat(v[:, None])[:, 0] + ridge * v  # noqa: E731
    t_setup = time.perf_counter()
    M = make_preconditioner(op, preconditioner, ridge)
    setup_s = time.perf_counter() - t_setup
    b = torch.as_tensor(b_np, dtype=dtype, device=device)
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0:
        return SolveResult(x=np.zeros_like(b_np), converged=True, iterations=0, residual=0.0,
                           preconditioner=M.name, setup_s=setup_s)

    ckpt = Path(checkpoint) if checkpoint is not None else None
    fp = _fingerprint(op, b_np, ridge, M.name) if ckpt is not None else ""
    history: list[float] = []
    start_it = 0
    if ckpt is not None and ckpt.exists():
        with np.load(ckpt) as z:
            if str(z["fingerprint"]) != fp:
                raise ValueError(f"checkpoint {ckpt} was written for another system (operator, "
                                 "inputs, y, ridge or preconditioner differ); remove it or "
                                 "choose another path")
            x = torch.as_tensor(z["x"], device=device)
            r = torch.as_tensor(z["r"], device=device)
            p = torch.as_tensor(z["p"], device=device)
            rz = float(z["rz"])
            start_it = int(z["iteration"])
            history = z["history"].tolist()
        log.info("resuming CG from %s at iteration %d (residual %.3e)", ckpt, start_it,
                 history[-1] if history else float("nan"))
    else:
        x = torch.zeros_like(b) if x0 is None else torch.as_tensor(np.asarray(x0), dtype=dtype,
                                                                     device=device).clone()
        r = b - A(x) if x0 is not None else b.clone()
        z = M(r[:, None])[:, 0]
        p = z.clone()
        rz = float(r @ z)

    def save(it: int) -> None:
        if ckpt is not None:
            _save_npz(ckpt, x=x.cpu().numpy(), r=r.cpu().numpy(), p=p.cpu().numpy(),
                      rz=np.float64(rz), iteration=np.int64(it),
                      history=np.asarray(history, dtype=np.float64), fingerprint=np.str_(fp))

    t0 = time.perf_counter()
    last_save = t0
    res = float(torch.linalg.vector_norm(r)) / b_norm
    it = start_it
    converged = res <= tol
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=maxiter, initial=start_it, desc=f"PCG[{M.name}]", unit="it")
    try:
        while not converged and it < maxiter:
            _cg_update(A, x, r, p, rz, it)
            it += 1
            res = float(torch.linalg.vector_norm(r)) / b_norm
            history.append(res)
            converged = res <= tol
            if not converged:
                rz = _cg_direction(M, r, p, rz)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(residual=f"{res:.2e}")
            if ckpt is not None and time.perf_counter() - last_save >= checkpoint_every:
                save(it)
                last_save = time.perf_counter()
            if callback is not None:
                callback(it, res)
    finally:
        if bar is not None:
            bar.close()
    save(it)
    true_res = float(torch.linalg.vector_norm(b - A(x))) / b_norm
    x_out = x.cpu().numpy()
    return SolveResult(x=x_out, converged=converged, iterations=it, residual=true_res,
                       history=history, wall_s=time.perf_counter() - t0, preconditioner=M.name,
                       setup_s=setup_s, resumed_from=start_it)


# ---- eigenvalues ------------------------------------------------------------------------


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
                    _save_npz(ckpt, X=X, iterations=np.int64(done), which=np.str_(which),
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
    matmat = _as_operator_matmat(op)
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
            _save_npz(ckpt, S=S.cpu().numpy(), AS=AS.cpu().numpy(), outer=np.int64(outer),
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
