"""A dense symmetric Gram held as a Dask array (e.g. a dense Gram store) as a kernel operator."""

from __future__ import annotations

import dask.array as da
import numpy as np
import torch

from .base import OperatorBase
from .dask_arrays import SchedulerName, check_square, scheduler

__all__ = ["DenseOperator"]


class DenseOperator(OperatorBase):
    """scale·A for a symmetric matrix A held as a dask array; products run where
    :func:`.dask_arrays.scheduler` says (Dask threads, a distributed client or Ray).

    A is persisted (chunks kept in the scheduler's memory) when it is at most ``persist_bytes``;
    otherwise every product re-reads it from its store. ``scale=-1`` with
    :class:`.base.AddedDiag` gives σI − A, the spectral shift for the small end.
    """

    def __init__(self, a: da.Array, scale: float = 1.0, scheduler_name: SchedulerName = "auto",
                 persist_bytes: float = 2 * 2 ** 30) -> None:
        self.n = check_square(a)
        if a.nbytes <= persist_bytes:
            with scheduler(scheduler_name):
                a = a.persist()
        self.a, self.scale, self.scheduler_name = a, float(scale), scheduler_name
        self.n_products = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        x = V.cpu().numpy()
        xd = da.from_array(x, chunks=(self.a.chunks[1], x.shape[1]))
        with scheduler(self.scheduler_name):
            ax = np.asarray((self.a @ xd).compute())
        return torch.from_numpy(self.scale * ax)

    def diagonal(self) -> torch.Tensor:
        """scale · diag(A), read from the chunks on the diagonal."""
        with scheduler(self.scheduler_name):
            return torch.from_numpy(self.scale * np.asarray(da.diagonal(self.a).compute()))

    def __repr__(self) -> str:
        return f"DenseOperator(shape={self.shape}, scale={self.scale:g}, chunks={self.a.chunksize})"
