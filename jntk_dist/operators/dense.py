"""A symmetric matrix held as a Dask array (e.g. a dense Gram store), as a linear operator."""

from __future__ import annotations

import dask.array as da
import numpy as np
import scipy.sparse.linalg

from .dask_arrays import SchedulerName, check_square, scheduler

__all__ = ["DaskOperator"]


class DaskOperator(scipy.sparse.linalg.LinearOperator):
    """A symmetric matrix held as a dask array, seen by scipy through (block) matvecs.

    ``shift`` and ``scale`` give the operator scale·A + shift·I (spectral shifts for the small end).
    A is persisted (chunks kept in the scheduler's memory) when it is at most ``persist_bytes``;
    otherwise every matvec re-reads it from its store.
    """

    def __init__(self, a: da.Array, shift: float = 0.0, scale: float = 1.0,
                 scheduler_name: SchedulerName = "auto", persist_bytes: float = 2 * 2 ** 30):
        n = check_square(a)
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
