"""Linear algebra on chunked Gram matrices: blockwise Dask Cholesky solves and eigensolvers.

The step "store → solver" of the data path. Everything here takes a *matrix-like* input:
a numpy array, a ``dask.array.Array``, a ``zarr.Array`` or a path to a Zarr array. Zarr inputs are
read by tasks that open the store themselves (:func:`zarr_to_dask`), which is what Ray's Dask
scheduler needs (it cannot ship ``da.from_zarr`` arrays of Zarr 3).

* :func:`cholesky_solve` — (A + μI) X = B by blockwise Cholesky and two blockwise triangular
  solves, float64, executing on a Dask distributed client when one is active, on the Ray cluster
  when Ray is initialised (``ray.util.dask.ray_dask_get``), or on Dask's threads otherwise.
  A matrix that is not numerically positive definite raises :class:`NotPositiveDefiniteError`
  with a ridge suggestion.
* :func:`eigh_dense` — full spectrum (scipy, or torch on a GPU when present).
* :func:`top_eigenpairs`, :func:`smallest_eigenvalue` — Lanczos (ARPACK) with Dask matvecs; the
  small end through the spectral shift σI − A with σ ≈ λ_max.
* :func:`eigen` — picks the dense path when the matrix fits ``max_dense`` and the iterative one
  otherwise.
* :func:`positivity_tolerance` — the stated tolerance for "numerically positive":
  τ = n · eps(float64) · λ_max (the threshold numpy's ``matrix_rank`` uses for singular values).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import dask
import dask.array as da
import numpy as np
import scipy.linalg
import scipy.sparse.linalg

__all__ = [
    "NotPositiveDefiniteError",
    "EigenResult",
    "as_dask",
    "zarr_to_dask",
    "scheduler",
    "add_ridge",
    "cholesky_solve",
    "cholesky_factor",
    "DaskOperator",
    "CholeskyInverseOperator",
    "eigh_dense",
    "top_eigenpairs",
    "smallest_eigenvalue",
    "eigen",
    "positivity_tolerance",
    "suggest_ridge",
]

log = logging.getLogger(__name__)

EPS = float(np.finfo(np.float64).eps)
MatrixLike = Any  # np.ndarray | da.Array | zarr.Array | str | os.PathLike
SchedulerName = Literal["auto", "ray", "threads", "sync", "processes", "distributed"]
DEFAULT_BLOCK = 2048


class NotPositiveDefiniteError(ValueError):
    """The matrix handed to a Cholesky solve is not numerically positive definite."""


# ---- inputs -----------------------------------------------------------------------------


def _read_zarr_block(path: str, array: str | None, block_info: dict | None = None) -> np.ndarray:
    """Open the Zarr array inside the task and read the block this task is responsible for."""
    import zarr

    z = zarr.open_array(path, mode="r") if array is None else zarr.open_group(path, mode="r")[array]
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return np.asarray(z[r0:r1, c0:c1], dtype=np.float64)


def zarr_to_dask(path: str | os.PathLike, array: str | None = None,
                 chunks: int | tuple | None = None) -> da.Array:
    """A lazy float64 dask array over a 2-D Zarr array whose tasks open the store themselves.

    ``path`` is a Zarr array, or a group when ``array`` names a member. ``chunks`` defaults to the
    Zarr chunking (so each task reads whole stored chunks).
    """
    import zarr

    path = str(path)
    try:
        z = zarr.open_array(path, mode="r") if array is None else zarr.open_group(path, mode="r")[array]
    except Exception as err:  # noqa: BLE001 - re-raised with the path named
        raise FileNotFoundError(f"cannot open Zarr array {path!r}"
                                + (f" member {array!r}" if array else "") + f": {err}") from err
    if z.ndim != 2:
        raise ValueError(f"Zarr array {path!r} has shape {z.shape}; a 2-D matrix was expected")
    chunks = z.chunks if chunks is None else chunks
    template = da.empty(z.shape, chunks=chunks, dtype=np.float64)
    return da.map_blocks(_read_zarr_block, path, array, chunks=template.chunks, dtype=np.float64,
                         meta=np.empty((0, 0), dtype=np.float64),
                         name=f"zarr-read-{dask.base.tokenize(path, array, template.chunks)}")


def as_dask(matrix: MatrixLike, chunks: int | tuple | None = None) -> da.Array:
    """Any matrix-like input as a float64 dask array (Zarr paths are read inside tasks)."""
    if isinstance(matrix, (str, os.PathLike)):
        return zarr_to_dask(matrix, chunks=chunks)
    if type(matrix).__module__.startswith("zarr"):
        store_path = getattr(getattr(matrix, "store_path", None), "store", None)
        root = getattr(store_path, "root", None)
        if root is None:  # in-memory Zarr: read through dask's own reader
            return da.from_array(matrix, chunks=chunks or matrix.chunks).astype(np.float64)
        name = matrix.path or None
        return zarr_to_dask(str(root), array=name, chunks=chunks) if name is None else \
            zarr_to_dask(str(Path(root) / name), chunks=chunks)
    if isinstance(matrix, da.Array):
        out = matrix.astype(np.float64)
        return out.rechunk(chunks) if chunks is not None else out
    arr = np.asarray(matrix, dtype=np.float64)
    return da.from_array(arr, chunks=chunks if chunks is not None else DEFAULT_BLOCK)


def _check_square(a: da.Array, what: str = "matrix") -> int:
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be square, got shape {a.shape}")
    return int(a.shape[0])


# ---- schedulers -------------------------------------------------------------------------


def _distributed_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


@contextlib.contextmanager
def scheduler(name: SchedulerName = "auto") -> Iterator[str]:
    """Context in which ``dask.compute`` runs where the caller wants it; yields the choice.

    ``auto``: an active Dask distributed client, else the Ray cluster when ``ray.is_initialized()``,
    else Dask's threads.
    """
    if name == "auto":
        if _distributed_client() is not None:
            name = "distributed"
        else:
            try:
                import ray

                name = "ray" if ray.is_initialized() else "threads"
            except ImportError:
                name = "threads"
    if name == "distributed":
        if _distributed_client() is None:
            raise ValueError("scheduler='distributed' needs an active dask.distributed Client")
        yield name
    elif name == "ray":
        from ray.util.dask import ray_dask_get

        with dask.config.set(scheduler=ray_dask_get):
            yield name
    elif name in ("threads", "sync", "processes"):
        with dask.config.set(scheduler=name):
            yield name
    else:
        raise ValueError(f"scheduler must be one of auto, ray, threads, sync, processes, "
                         f"distributed; got {name!r}")


# ---- Cholesky solves --------------------------------------------------------------------


def _square_blocks(a: da.Array, block: int) -> tuple[da.Array, int]:
    """Rechunk to uniform ``block``-square chunks (Dask's Cholesky needs them); pad with I."""
    n = a.shape[0]
    block = max(1, min(int(block), n))
    pad = (-n) % block
    if pad:
        eye = da.eye(pad, chunks=pad, dtype=a.dtype)
        zeros_r = da.zeros((n, pad), chunks=(a.chunks[0], pad), dtype=a.dtype)
        a = da.block([[a, zeros_r], [zeros_r.T, eye]])
    return a.rechunk((block, block)), pad


def add_ridge(a: da.Array, ridge: float) -> da.Array:
    """A + μI, lazily and chunk-aligned."""
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge μ must be a finite number ≥ 0, got {ridge}")
    if ridge == 0.0:
        return a
    return a + ridge * da.eye(a.shape[0], chunks=a.chunks[0][0], dtype=a.dtype).rechunk(a.chunks)


def suggest_ridge(a: MatrixLike, scheduler_name: SchedulerName = "auto") -> float:
    """A ridge μ that makes A + μI numerically PD: −λ_min (if negative) plus 10τ, τ = n·eps·λ_max.

    λ_min comes from a loose shifted Lanczos (dense ``eigvalsh`` below 2000 rows).
    """
    a = as_dask(a)
    n = _check_square(a)
    if n <= 2000:
        w = scipy.linalg.eigh(np.asarray(a.compute()), eigvals_only=True, check_finite=False)
        lo, hi = float(w[0]), float(w[-1])
    else:
        res = smallest_eigenvalue(a, tol=1e-8, scheduler_name=scheduler_name)
        lo, hi = res.lambda_min, res.lambda_max
    return max(-lo, 0.0) + 10 * positivity_tolerance(hi, n)


def _is_not_pd(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return isinstance(err, np.linalg.LinAlgError) or "positive definite" in text or \
        "linalgerror" in text


def cholesky_factor(matrix: MatrixLike, ridge: float = 0.0,
                    block_size: int = DEFAULT_BLOCK) -> tuple[da.Array, int]:
    """Lazy lower Cholesky factor L of A + μI on uniform square blocks; returns (L, padding)."""
    a = as_dask(matrix)
    _check_square(a)
    a, pad = _square_blocks(add_ridge(a, ridge), block_size)
    return da.linalg.cholesky(a, lower=True), pad


def cholesky_solve(matrix: MatrixLike, rhs: Any, ridge: float = 0.0,
                   block_size: int = DEFAULT_BLOCK, scheduler_name: SchedulerName = "auto",
                   check_finite: bool = True) -> np.ndarray:
    """Solve (A + μI) X = B for symmetric positive-definite A with blockwise Dask Cholesky.

    ``rhs`` is (n,) or (n, m); the result has the same shape, float64. Only the lower triangle
    of each diagonal block and the upper blocks of A are read (A is assumed symmetric).
    Raises :class:`NotPositiveDefiniteError` (a ``ValueError``) naming a ridge to try.
    """
    a = as_dask(matrix)
    n = _check_square(a, "Gram matrix")
    b = np.asarray(rhs, dtype=np.float64)
    vector = b.ndim == 1
    b2 = b[:, None] if vector else b
    if b2.ndim != 2 or b2.shape[0] != n:
        raise ValueError(f"right-hand side has shape {b.shape}; expected ({n},) or ({n}, m)")
    if check_finite and not np.isfinite(b2).all():
        raise ValueError("right-hand side contains NaN/inf")
    L, pad = cholesky_factor(a, ridge, block_size)
    block = L.chunks[0][0]
    if pad:
        b2 = np.vstack([b2, np.zeros((pad, b2.shape[1]))])
    bd = da.from_array(b2, chunks=(block, b2.shape[1]))
    z = da.linalg.solve_triangular(L, bd, lower=True)
    x = da.linalg.solve_triangular(L.T, z, lower=False)
    try:
        with scheduler(scheduler_name) as used:
            log.debug("Cholesky solve n=%d block=%d on %s", n, block, used)
            out = np.asarray(x.compute())
    except Exception as err:  # noqa: BLE001 - classified below, re-raised otherwise
        if not _is_not_pd(err):
            raise
        mu = ridge + suggest_ridge(add_ridge(a, ridge), scheduler_name)
        raise NotPositiveDefiniteError(
            f"the {n}×{n} Gram matrix{' + ridge ' + format(ridge, 'g') if ridge else ''} is not "
            f"numerically positive definite (Cholesky failed: {str(err).splitlines()[0][:120]}). "
            f"Try a ridge μ ≥ {mu:.3g} (e.g. --ridge {float(format(mu, '.1e')) * 2:.1e}), "
            "which lifts λ_min above the float64 tolerance n·eps·λ_max.") from err
    if check_finite and not np.isfinite(out).all():
        raise NotPositiveDefiniteError(
            f"the Cholesky solve of the {n}×{n} Gram matrix produced NaN/inf: the matrix is not "
            "numerically positive definite or contains NaN; try a larger ridge μ")
    out = out[:n]
    return out[:, 0] if vector else out


# ---- eigen ------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Eigenvalues (ascending) and optionally eigenvectors (columns) of a symmetric matrix."""

    values: np.ndarray
    vectors: np.ndarray | None
    method: str
    tolerance: float  # positivity tolerance τ = n·eps·λ_max for this matrix
    n: int

    @property
    def lambda_min(self) -> float:
        return float(self.values[0])

    @property
    def lambda_max(self) -> float:
        return float(self.values[-1])


def positivity_tolerance(lambda_max: float, n: int) -> float:
    """τ = n · eps · |λ_max|: an eigenvalue ≤ τ is not distinguishable from 0 in float64."""
    return float(n) * EPS * abs(float(lambda_max))


class DaskOperator(scipy.sparse.linalg.LinearOperator):
    """A symmetric matrix held as a dask array, seen by scipy through (block) matvecs.

    ``shift`` and ``scale`` give the operator scale·A + shift·I (spectral shifts for the small end).
    A is persisted (chunks kept in the scheduler's memory) when it is at most ``persist_bytes``;
    otherwise every matvec re-reads it from its store.
    """

    def __init__(self, a: da.Array, shift: float = 0.0, scale: float = 1.0,
                 scheduler_name: SchedulerName = "auto", persist_bytes: float = 2 * 2 ** 30):
        n = _check_square(a)
        super().__init__(dtype=np.float64, shape=(n, n))
        if a.nbytes <= persist_bytes:
            with scheduler(scheduler_name):
                a = a.persist()
        self.a, self.shift, self.scale, self.scheduler_name = a, float(shift), float(scale), scheduler_name
        self.n_matvecs = 0

    def _matmat(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        xd = da.from_array(x, chunks=(self.a.chunks[1], x.shape[1]))
        with scheduler(self.scheduler_name):
            ax = np.asarray((self.a @ xd).compute())
        self.n_matvecs += x.shape[1]
        return self.scale * ax + self.shift * x

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).ravel()

    _rmatvec = _matvec  # symmetric


def eigh_dense(matrix: MatrixLike, vectors: bool = True,
               device: Literal["auto", "cpu", "cuda"] = "auto") -> EigenResult:
    """Full spectrum of a symmetric matrix that fits one worker (torch on a GPU when present)."""
    a = np.asarray(matrix if isinstance(matrix, np.ndarray) else as_dask(matrix).compute(),
                   dtype=np.float64)
    n = a.shape[0]
    if a.ndim != 2 or n != a.shape[1]:
        raise ValueError(f"matrix must be square, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("matrix contains NaN/inf entries")
    use_cuda = device == "cuda"
    if device == "auto":
        try:
            import torch

            use_cuda = torch.cuda.is_available()
        except ImportError:
            use_cuda = False
    if use_cuda:
        import torch

        t = torch.as_tensor(a, device="cuda")
        if vectors:
            w, v = torch.linalg.eigh(t)
            w, v = w.cpu().numpy(), v.cpu().numpy()
        else:
            w, v = torch.linalg.eigvalsh(t).cpu().numpy(), None
        method = "torch.linalg.eigh (cuda)"
    else:
        if vectors:
            w, v = scipy.linalg.eigh(a, check_finite=False)
        else:
            w, v = scipy.linalg.eigh(a, eigvals_only=True, check_finite=False), None
        method = "scipy.linalg.eigh"
    return EigenResult(np.asarray(w), v, method, positivity_tolerance(w[-1], n), n)


def _lanczos(op: scipy.sparse.linalg.LinearOperator, k: int, tol: float, ncv: int | None,
             maxiter: int | None, vectors: bool, v0: np.ndarray | None):
    n = op.shape[0]
    ncv = min(n - 1, max(ncv or 0, 2 * k + 40, 96)) if n > 2 else None
    return scipy.sparse.linalg.eigsh(op, k=k, which="LA", tol=tol, ncv=ncv, maxiter=maxiter,
                                     return_eigenvectors=vectors, v0=v0)


def top_eigenpairs(matrix: MatrixLike, k: int, tol: float = 1e-12, vectors: bool = True,
                   ncv: int | None = None, maxiter: int | None = None,
                   scheduler_name: SchedulerName = "auto", seed: int = 0) -> EigenResult:
    """The k largest eigenpairs by Lanczos (ARPACK) with Dask matvecs; values ascending."""
    a = as_dask(matrix)
    n = _check_square(a)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}] for the iterative path, got {k}")
    op = DaskOperator(a, scheduler_name=scheduler_name)
    v0 = np.random.default_rng(seed).standard_normal(n)
    out = _lanczos(op, k, tol, ncv, maxiter, vectors, v0)
    w, v = (out if vectors else (out, None))
    order = np.argsort(w)
    w = np.asarray(w)[order]
    v = None if v is None else np.asarray(v)[:, order]
    log.info("Lanczos top-%d: %d matvecs", k, op.n_matvecs)
    return EigenResult(w, v, f"Lanczos (eigsh, {op.n_matvecs} matvecs)",
                       positivity_tolerance(w[-1], n), n)


class CholeskyInverseOperator(scipy.sparse.linalg.LinearOperator):
    """(A + δI)^{-1} applied by two blockwise triangular solves with a persisted Dask factor."""

    def __init__(self, a: da.Array, delta: float, block_size: int = DEFAULT_BLOCK,
                 scheduler_name: SchedulerName = "auto"):
        n = _check_square(a)
        super().__init__(dtype=np.float64, shape=(n, n))
        L, self.pad = cholesky_factor(a, ridge=delta, block_size=block_size)
        self.scheduler_name, self.n_solves = scheduler_name, 0
        try:
            with scheduler(scheduler_name):
                self.L = L.persist()
                self.L.blocks[-1, -1].compute()  # surfaces a failed factorisation now
        except Exception as err:  # noqa: BLE001
            if _is_not_pd(err):
                raise NotPositiveDefiniteError(f"A + {delta:.3g}·I is not positive definite") from err
            raise

    def _matmat(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        if self.pad:
            x = np.vstack([x, np.zeros((self.pad, x.shape[1]))])
        xd = da.from_array(x, chunks=(self.L.chunks[0], x.shape[1]))
        z = da.linalg.solve_triangular(self.L, xd, lower=True)
        y = da.linalg.solve_triangular(self.L.T, z, lower=False)
        with scheduler(self.scheduler_name):
            out = np.asarray(y.compute())[:n]
        self.n_solves += x.shape[1]
        return out

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).ravel()

    _rmatvec = _matvec


def smallest_eigenvalue(matrix: MatrixLike, k: int = 1, tol: float = 1e-10,
                        lambda_max: float | None = None, vectors: bool = False,
                        method: Literal["auto", "shift-invert", "shift"] = "auto",
                        shift_factor: float = 1e3, block_size: int = DEFAULT_BLOCK,
                        ncv: int | None = None, maxiter: int | None = None,
                        scheduler_name: SchedulerName = "auto", seed: int = 0) -> EigenResult:
    """The k smallest eigenvalues of a symmetric matrix, with Dask matvecs / solves.

    Shift strategies for the small end:

    * ``shift-invert``: Lanczos on (A + δI)^{-1}, δ = ``shift_factor``·τ (τ = n·eps·λ_max), with a
      persisted blockwise Cholesky factor of A + δI. The smallest eigenvalues become the dominant,
      well separated ones: a few dozen solves. Needs λ_min > −δ (else the factorisation fails
      and :class:`NotPositiveDefiniteError` is raised).
    * ``auto``: shift-invert, multiplying δ by 8 after each failed factorisation (λ_min < −δ:
      the matrix is certainly not numerically PD) until A + δI factorises.
    * ``shift``: Lanczos on σI − A, σ = λ_max(1 + 1e-3), matvecs only, no factorisation. Slow
      when the small end is clustered relative to λ_max (kernel spectra usually are).

    The Ritz values carry an absolute error of order τ (the backward error of the solves, or
    (tol·σ)²/gap for the shifted matvecs), the scale of :func:`positivity_tolerance`. The result's
    ``values`` are the k smallest (ascending) followed by λ_max.
    """
    a = as_dask(matrix)
    n = _check_square(a)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    if method not in ("auto", "shift-invert", "shift"):
        raise ValueError(f"method must be 'auto', 'shift-invert' or 'shift', got {method!r}")
    if lambda_max is None:
        lambda_max = top_eigenpairs(a, 1, tol=1e-10, vectors=False,
                                    scheduler_name=scheduler_name, seed=seed).lambda_max
    tau = positivity_tolerance(lambda_max, n)
    v0 = np.random.default_rng(seed + 1).standard_normal(n)
    if method in ("auto", "shift-invert"):
        delta = shift_factor * tau
        while True:
            try:
                inv = CholeskyInverseOperator(a, delta, block_size, scheduler_name)
                break
            except NotPositiveDefiniteError:
                if method == "shift-invert" or delta > 2 * abs(lambda_max):
                    raise
                log.info("A + %.3g I is not PD (λ_min < %.3g): raising the shift", delta, -delta)
                delta *= 8.0
        out = _lanczos(inv, k, tol, ncv, maxiter, vectors, v0)
        mu, v = (out if vectors else (out, None))
        w = 1.0 / np.asarray(mu) - delta
        order = np.argsort(w)
        v = None if v is None else np.asarray(v)[:, order]
        log.info("shift-invert Lanczos bottom-%d: %d solves", k, inv.n_solves)
        return EigenResult(np.append(w[order], lambda_max), v,
                           f"shift-invert Lanczos (δ={delta:.3g}, {inv.n_solves} solves)", tau, n)
    sigma = abs(lambda_max) * (1 + 1e-3)
    op = DaskOperator(a, shift=sigma, scale=-1.0, scheduler_name=scheduler_name)
    out = _lanczos(op, k, tol, ncv, maxiter, vectors, v0)
    mu, v = (out if vectors else (out, None))
    w = sigma - np.asarray(mu)
    order = np.argsort(w)
    v = None if v is None else np.asarray(v)[:, order]
    log.info("shifted Lanczos bottom-%d: %d matvecs", k, op.n_matvecs)
    return EigenResult(np.append(w[order], lambda_max), v,
                       f"shifted Lanczos (σ={sigma:.3g}, {op.n_matvecs} matvecs)", tau, n)


def eigen(matrix: MatrixLike, k: int | None = None, vectors: bool = True,
          max_dense: int = 12000, smallest: bool = True,
          scheduler_name: SchedulerName = "auto") -> dict[str, EigenResult]:
    """Full spectrum when n ≤ ``max_dense``; otherwise the top-k eigenpairs (and λ_min).

    Returns ``{"full": …}`` or ``{"top": …, "bottom": …}``.
    """
    a = as_dask(matrix)
    n = _check_square(a)
    if n <= max_dense:
        return {"full": eigh_dense(a, vectors=vectors)}
    top = top_eigenpairs(a, k or 16, vectors=vectors, scheduler_name=scheduler_name)
    out = {"top": top}
    if smallest:
        out["bottom"] = smallest_eigenvalue(a, lambda_max=top.lambda_max,
                                            scheduler_name=scheduler_name)
    return out
