"""The blockwise Dask Cholesky factor of A + μI and (A + δI)⁻¹ applied through it.

Float64, executing on a Dask distributed client when one is active, on the Ray cluster when Ray
is initialised, or on Dask's threads otherwise (:func:`jntk_dist.operators.dask_arrays.scheduler`).
A factorisation that fails raises :class:`NotPositiveDefiniteError`.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import scipy.sparse.linalg

from ..errors import InputError
from ..operators.dask_arrays import (DEFAULT_BLOCK, MatrixLike, SchedulerName, as_dask,
                                     check_square, scheduler)

__all__ = ["NotPositiveDefiniteError", "add_ridge", "cholesky_factor", "CholeskyInverseOperator",
           "is_not_positive_definite"]


class NotPositiveDefiniteError(InputError):  # a ValueError too
    """The matrix handed to a Cholesky solve is not numerically positive definite."""


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


def is_not_positive_definite(err: BaseException) -> bool:
    """Whether an error raised by a Cholesky factorisation (numpy, scipy, Dask) says A is not PD."""
    text = f"{type(err).__name__}: {err}".lower()
    return isinstance(err, np.linalg.LinAlgError) or "positive definite" in text or \
        "linalgerror" in text


def cholesky_factor(matrix: MatrixLike, ridge: float = 0.0,
                    block_size: int = DEFAULT_BLOCK) -> tuple[da.Array, int]:
    """Lazy lower Cholesky factor L of A + μI on uniform square blocks; returns (L, padding)."""
    a = as_dask(matrix)
    check_square(a)
    a, pad = _square_blocks(add_ridge(a, ridge), block_size)
    return da.linalg.cholesky(a, lower=True), pad


class CholeskyInverseOperator(scipy.sparse.linalg.LinearOperator):
    """(A + δI)^{-1} applied by two blockwise triangular solves with a persisted Dask factor."""

    def __init__(self, a: da.Array, delta: float, block_size: int = DEFAULT_BLOCK,
                 scheduler_name: SchedulerName = "auto"):
        n = check_square(a)
        super().__init__(dtype=np.float64, shape=(n, n))
        L, self.pad = cholesky_factor(a, ridge=delta, block_size=block_size)
        self.scheduler_name, self.n_solves = scheduler_name, 0
        try:
            with scheduler(scheduler_name):
                self.L = L.persist()
                self.L.blocks[-1, -1].compute()  # surfaces a failed factorisation now
        except Exception as err:  # noqa: BLE001
            if is_not_positive_definite(err):
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
