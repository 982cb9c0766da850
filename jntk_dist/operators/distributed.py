"""The X–X structured operator with its rows distributed: one Ray actor or one Dask task per
row block."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..kernels import FIELD_NAMES, KernelFields
from .field_sources import ArrayFields, FieldSource, InMemoryFields, RecomputedFields
from .structured import StructuredKernel, structured_operator

__all__ = ["RayStructuredKernel", "DaskStructuredKernel"]


# ---- distributed over row blocks (Ray) --------------------------------------------------


def _make_row_worker_class() -> Any:
    import ray

    @ray.remote
    class _RowBlockWorker:
        """Holds X and one row block of the field source; returns its rows of K V."""

        def __init__(self, x1: np.ndarray, x2: np.ndarray, rows: tuple[int, int], depth: int,
                     activation: str, kind: str, lam: float | None, mode: str,
                     memory_mb: float) -> None:
            torch.set_num_threads(1)
            lo, hi = rows
            self.op = structured_operator(x1[lo:hi], x2, depth=depth, activation=activation,
                                          kind=kind, lam=lam, mode=mode, memory_mb=memory_mb,
                                          device="cpu")

        def matmat(self, V: np.ndarray) -> np.ndarray:
            return self.op.matmat(V)

    return _RowBlockWorker


class _RowBlockOperator:
    """Shared face of the distributed operators: K V assembled from per-row-block products."""

    n: int
    d0: int
    n_products: int
    dtype = torch.float64

    @property
    def shape(self) -> tuple[int, int]:
        p = self.n * (self.d0 + 1)
        return (p, p)

    def _row_block_products(self, V: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def matmat(self, V: Any) -> Any:
        """K V (V of shape (N(d0+1), m) or a vector); numpy in → numpy out."""
        is_numpy = not isinstance(V, torch.Tensor)
        Vn = np.asarray(V if is_numpy else V.detach().cpu().numpy(), dtype=np.float64)
        squeeze = Vn.ndim == 1
        Vn = Vn[:, None] if squeeze else Vn
        if Vn.ndim != 2 or Vn.shape[0] != self.shape[1]:
            raise ValueError(f"operand of shape {Vn.shape} does not match operator {self.shape}")
        out = np.concatenate(self._row_block_products(Vn), axis=0)
        self.n_products += Vn.shape[1]
        out = out[:, 0] if squeeze else out
        return out if is_numpy else torch.as_tensor(out)

    def matvec(self, v: Any) -> Any:
        return self.matmat(v)

    def __matmul__(self, V: Any) -> Any:
        return self.matmat(V)

    def aslinearoperator(self) -> Any:
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.matmat, matmat=self.matmat,
                              rmatvec=self.matmat, dtype=np.float64)


class RayStructuredKernel(_RowBlockOperator):
    """The X–X operator with its rows split over Ray actors (one row block each).

    Each actor computes (``mode="memory"``) or recomputes (``"recompute"``) its own row block of
    fields; a product broadcasts V once through the object store and gathers the row blocks.
    Requires a running Ray (``ray.init``); call :meth:`shutdown` to free the actors.
    """

    def __init__(self, x: Any, *, depth: int, activation: str = "gelu", kind: str = "jntk",
                 lam: float | None = None, n_workers: int = 2, mode: str = "memory",
                 memory_mb: float = 256.0, num_cpus_per_worker: float = 1.0) -> None:
        import ray

        X = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        kernels.validate_inputs(torch.as_tensor(X), "x")
        self.n, self.d0 = X.shape
        self.lam = lam
        bounds = np.linspace(0, self.n, n_workers + 1).astype(int)
        self.row_blocks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        worker = _make_row_worker_class().options(num_cpus=num_cpus_per_worker)
        x_ref = ray.put(X)
        self.workers = [worker.remote(x_ref, x_ref, rb, depth, activation, kind, lam, mode,
                                      memory_mb) for rb in self.row_blocks]
        self.n_products = 0

    def _row_block_products(self, V: np.ndarray) -> list[np.ndarray]:
        import ray

        v_ref = ray.put(V)
        return ray.get([w.matmat.remote(v_ref) for w in self.workers])

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


# ---- distributed over row blocks (Dask) -------------------------------------------------


class _RowWindow:
    """Rows [lo, hi) of an (8, n1, n2) array-like, sliced lazily (only what a tile asks for)."""

    def __init__(self, array: Any, lo: int, hi: int) -> None:
        self.array, self.lo = array, lo
        self.shape = (int(array.shape[0]), hi - lo, int(array.shape[2]))

    def __getitem__(self, key: tuple[Any, slice, slice]) -> Any:
        first, rows, cols = key
        start, stop, _ = rows.indices(self.shape[1])
        return self.array[first, self.lo + start:self.lo + stop, cols]


def _dask_row_block(X: np.ndarray, rows: tuple[int, int], V: np.ndarray, lam: float | None,
                    fields: Any, store: tuple[str, str] | None, recompute: dict[str, Any] | None,
                    memory_mb: float) -> np.ndarray:
    """One Dask task: rows [lo, hi) of K V, with the row block's fields in memory, read from a
    Zarr fields array inside the task, or recomputed by ``kernels.fields``."""
    lo, hi = rows
    x1 = torch.as_tensor(X[lo:hi])
    x2 = torch.as_tensor(X)
    source: FieldSource
    if fields is not None:
        source = InMemoryFields(fields)
    elif store is not None:
        import zarr

        path, name = store
        source = ArrayFields(_RowWindow(zarr.open_array(store=path, path=name, mode="r"), lo, hi))
    else:
        assert recompute is not None
        source = RecomputedFields(x1, x2, **recompute)
    op = StructuredKernel(x1, x2, source, lam=lam, memory_mb=memory_mb)
    return op.matmat(V)


class DaskStructuredKernel(_RowBlockOperator):
    """The X–X operator as one Dask task per row block, for clusters run by Dask.

    Field source (one of): ``fields`` — an (8, N, N) array held by the driver (each block's rows are
    scattered to the cluster once when a ``distributed`` client is active); ``store`` — the path of
    a Zarr fields array (``(path, array_name)``, e.g. a fields-mode Gram store and ``"fields"``)
    opened *inside* each task, so every worker reads only its rows (this also works where
    ``da.from_zarr`` on Zarr 3 does not, e.g. Ray's Dask scheduler); or ``depth`` (+ activation,
    kind) — each task recomputes its rows with ``kernels.fields``.  ``scheduler``: any Dask
    scheduler name or client (``None``: Dask's default, a ``distributed`` client when one is
    active).  Exposes ``matmat`` and ``aslinearoperator`` like :class:`StructuredKernel`.
    """

    def __init__(self, x: Any, *, fields: Any = None, store: tuple[str, str] | str | None = None,
                 depth: int | None = None, activation: str = "gelu", kind: str = "jntk",
                 lam: float | None = None, n_blocks: int = 2, scheduler: Any = None,
                 memory_mb: float = 256.0) -> None:
        X = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        kernels.validate_inputs(torch.as_tensor(X), "x")
        self.n, self.d0 = X.shape
        if sum(v is not None for v in (fields, store, depth)) != 1:
            raise ValueError("give exactly one field source: fields (an (8, N, N) array), store "
                             "(a Zarr fields array path) or depth (recompute the fields)")
        if lam is not None and (not math.isfinite(float(lam)) or float(lam) < 0):
            raise ValueError(f"lam (Jacobian-regularisation weight λ) must be ≥ 0, got {lam}")
        self.lam = None if lam is None else float(lam)
        self.scheduler, self.memory_mb = scheduler, float(memory_mb)
        bounds = np.linspace(0, self.n, max(1, int(n_blocks)) + 1).astype(int)
        self.row_blocks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self.store = (store, "fields") if isinstance(store, str) else store
        self.recompute = None if depth is None else {"depth": depth, "activation": activation,
                                                     "kind": kind}
        client = self._client()
        self.X: Any = client.scatter(X, broadcast=True, hash=False) if client is not None else X
        self.blocks: list[Any] = [None] * len(self.row_blocks)
        if fields is not None:
            F = fields.stack().numpy() if isinstance(fields, KernelFields) else np.asarray(fields)
            if F.shape != (len(FIELD_NAMES), self.n, self.n):
                raise ValueError(f"fields must have shape (8, {self.n}, {self.n}), got {F.shape}")
            if not np.isfinite(F).all():
                raise ValueError("fields contain NaN/inf values")
            blocks = [np.ascontiguousarray(F[:, lo:hi]) for lo, hi in self.row_blocks]
            self.blocks = client.scatter(blocks, hash=False) if client is not None else blocks
        elif self.store is not None:
            import zarr

            shape = tuple(zarr.open_array(store=self.store[0], path=self.store[1], mode="r").shape)
            if shape != (len(FIELD_NAMES), self.n, self.n):
                raise ValueError(f"fields array {self.store[1]!r} in {self.store[0]} has shape "
                                 f"{shape}, expected (8, {self.n}, {self.n}) for these inputs")
        self.n_products = 0

    def _client(self) -> Any:
        if self.scheduler is not None and not hasattr(self.scheduler, "scatter"):
            return None  # a named local scheduler ("threads", "sync", …)
        if self.scheduler is not None:
            return self.scheduler
        try:
            from distributed import get_client

            return get_client()
        except (ImportError, ValueError):
            return None

    def _row_block_products(self, V: np.ndarray) -> list[np.ndarray]:
        import dask

        v = dask.delayed(V, name=f"V-{dask.base.tokenize(V)}")  # shipped once, not per task
        task = dask.delayed(_dask_row_block, pure=True)
        parts = [task(self.X, rb, v, self.lam, blk, self.store, self.recompute, self.memory_mb)
                 for rb, blk in zip(self.row_blocks, self.blocks)]
        kw = {} if self.scheduler is None else {"scheduler": self.scheduler}
        return list(dask.compute(*parts, **kw))
