"""Blockwise Dask Cholesky solves of (A + μI) X = B on any chunked Gram.

Float64, executing on a Dask distributed client when one is active, on the Ray cluster when Ray
is initialised (``ray.util.dask.ray_dask_get``), or on Dask's threads otherwise
(:func:`jntk_dist.operators.dask_arrays.scheduler`). A matrix that is not numerically positive
definite raises :class:`NotPositiveDefiniteError` with a ridge suggestion.
"""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np

from ..operators.dask_arrays import (DEFAULT_BLOCK, MatrixLike, SchedulerName, as_dask,
                                     check_square, scheduler)
from .dask_cholesky import (CholeskyInverseOperator, NotPositiveDefiniteError, add_ridge,
                            cholesky_factor, is_not_positive_definite)

__all__ = ["NotPositiveDefiniteError", "add_ridge", "cholesky_factor", "cholesky_solve",
           "CholeskyInverseOperator"]

log = logging.getLogger(__name__)


def cholesky_solve(matrix: MatrixLike, rhs: Any, ridge: float = 0.0,
                   block_size: int = DEFAULT_BLOCK, scheduler_name: SchedulerName = "auto",
                   check_finite: bool = True) -> np.ndarray:
    """Solve (A + μI) X = B for symmetric positive-definite A with blockwise Dask Cholesky.

    ``rhs`` is (n,) or (n, m); the result has the same shape, float64. Only the lower triangle
    of each diagonal block and the upper blocks of A are read (A is assumed symmetric).
    Raises :class:`NotPositiveDefiniteError` (a ``ValueError``) naming a ridge to try.
    """
    a = as_dask(matrix)
    n = check_square(a, "Gram matrix")
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
        if not is_not_positive_definite(err):
            raise
        from .dense_eigen import suggest_ridge

        mu = ridge + suggest_ridge(add_ridge(a, ridge), scheduler_name)
        raise NotPositiveDefiniteError(
            f"the {n}×{n} Gram matrix{' + ridge ' + format(ridge, 'g') if ridge else ''} is not "
            f"numerically positive definite (Cholesky failed: {str(err).splitlines()[0][:120]}). "
            f"Try a ridge μ ≥ {mu:.3g} (in a job config: --set ridge={float(format(mu, '.1e')) * 2:.1e}), "
            "which lifts λ_min above the float64 tolerance n·eps·λ_max.") from err
    if check_finite and not np.isfinite(out).all():
        raise NotPositiveDefiniteError(
            f"the Cholesky solve of the {n}×{n} Gram matrix produced NaN/inf: the matrix is not "
            "numerically positive definite or contains NaN; try a larger ridge μ")
    out = out[:n]
    return out[:, 0] if vector else out
