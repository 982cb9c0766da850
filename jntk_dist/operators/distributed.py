"""The square structured operator Θ_λ(X, X) with its products computed by row block elsewhere:
one Ray actor (:class:`RayStructuredKernel`) or one Dask task (:class:`DaskStructuredKernel`)
per block of rows.

Both *are* :class:`.structured.StructuredKernel`s: only the product runs remotely, so everything
else — the diagonal, the structure the preconditioners are built from, the scipy view — is the
same, and the solvers and preconditioners take them as they are. Their local field source (for
that structure) recomputes fields, or reads the fields array, as the remote blocks do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import kernels
from ..kernels import FIELD_NAMES, KernelFields
from ..kernels.devices import choose_device
from .field_sources import ArrayFields, FieldSource, InMemoryFields, RecomputedFields
from .structured import StructuredKernel, structured_operator

__all__ = ["RayStructuredKernel", "DaskStructuredKernel", "row_blocks"]

Tensor = torch.Tensor


def row_blocks(n: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` near-equal consecutive row ranges [lo, hi) of n rows (empty ones dropped)."""
    bounds = np.linspace(0, n, max(1, int(n_blocks)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _validated(x: Any) -> np.ndarray:
    X = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    kernels.validate_inputs(torch.as_tensor(X), "x")
    return X


# ---- Ray actors ---------------------------------------------------------------------------


def _make_row_worker_class() -> Any:
    import ray

    @ray.remote
    class _RowBlockWorker:
        """Holds X and one row block of the field source; returns its rows of K V."""

        def __init__(self, x1: np.ndarray, x2: np.ndarray, rows: tuple[int, int], depth: int,
                     activation: str, kind: str, lam: float | None, mode: str,
                     memory_mb: float, use_gpu: bool = False) -> None:
            torch.set_num_threads(1)
            lo, hi = rows
            device = choose_device(use_gpu=use_gpu)
            self.op = structured_operator(x1[lo:hi], x2, depth=depth, activation=activation,
                                          kind=kind, lam=lam, mode=mode, memory_mb=memory_mb,
                                          device=device)

        def matmat(self, V: np.ndarray) -> np.ndarray:
            return self.op.matmat(V)

    return _RowBlockWorker


class RayStructuredKernel(StructuredKernel):
    """Θ_λ(X, X) with its rows split over Ray actors (one row block each).

    Each actor computes (``mode="memory"``) or recomputes (``"recompute"``) its own row block of
    fields, on a GPU when it is given one (``num_gpus_per_worker``); a product broadcasts V once
    through the object store and gathers the row blocks. Requires a running Ray (``ray.init``);
    call :meth:`shutdown` to free the actors.
    """

    def __init__(self, x: Any, *, depth: int, activation: str = "gelu", kind: str = "jntk",
                 lam: float | None = None, n_workers: int = 2, mode: str = "memory",
                 memory_mb: float = 256.0, num_cpus_per_worker: float = 1.0,
                 num_gpus_per_worker: float = 0.0) -> None:
        import ray

        X = _validated(x)
        t = torch.as_tensor(X)
        super().__init__(t, t, RecomputedFields(t, None, depth=depth, activation=activation,
                                                kind=kind),
                         lam=lam, memory_mb=memory_mb,
                         description={"kind": kind, "depth": depth, "activation": activation,
                                      "mode": f"ray-{mode}"})
        self.row_blocks = row_blocks(X.shape[0], n_workers)
        worker = _make_row_worker_class().options(num_cpus=num_cpus_per_worker,
                                                  num_gpus=num_gpus_per_worker)
        x_ref = ray.put(X)
        self.workers = [worker.remote(x_ref, x_ref, rb, depth, activation, kind, lam, mode,
                                      memory_mb, num_gpus_per_worker > 0)
                        for rb in self.row_blocks]

    def _matmat(self, V: Tensor) -> Tensor:
        import ray

        v_ref = ray.put(V.cpu().numpy())
        parts = ray.get([w.matmat.remote(v_ref) for w in self.workers])
        return torch.as_tensor(np.concatenate(parts, axis=0), dtype=self.dtype,
                               device=self.device)

    def shutdown(self) -> None:
        """Kill the actors (the operator cannot multiply afterwards)."""
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


# ---- Dask tasks ---------------------------------------------------------------------------


class _StoreRows:
    """Rows [lo, hi) of a fields store's (8, N, N) fields as an array-like, read through the
    store's reader (paths and URLs, storage_options, a bad chunk named), only what a tile asks for."""

    def __init__(self, gram: Any, lo: int, hi: int) -> None:
        self.gram, self.lo = gram, lo
        self.shape = (len(FIELD_NAMES), hi - lo, gram.layout.n_points)

    def __getitem__(self, key: tuple[Any, slice, slice]) -> Any:
        first, rows, cols = key
        start, stop, _ = rows.indices(self.shape[1])
        return self.gram.read_fields(slice(self.lo + start, self.lo + stop), cols)[first]


def _open_fields_store(location: str, storage_options: dict[str, Any] | None) -> Any:
    """A ``fields`` Gram store opened for reading (:func:`jntk_dist.store.open_gram`)."""
    from ..store import open_gram

    gram = open_gram(location, storage_options)
    if gram.layout.mode != "fields":
        raise ValueError(f"store {location} is a {gram.layout.mode!r} store (Gram entries only); "
                         "the structured operator reads the 8 fields of a `store: fields` store")
    return gram


def _dask_row_block(X: np.ndarray, rows: tuple[int, int], V: np.ndarray, lam: float | None,
                    fields: Any, store: tuple[str, dict[str, Any] | None] | None,
                    recompute: dict[str, Any] | None, memory_mb: float) -> np.ndarray:
    """One Dask task: rows [lo, hi) of K V, with the row block's fields in memory, read from a
    fields store inside the task, or recomputed by ``kernels.fields``."""
    lo, hi = rows
    x1 = torch.as_tensor(X[lo:hi])
    x2 = torch.as_tensor(X)
    source: FieldSource
    if fields is not None:
        source = InMemoryFields(fields)
    elif store is not None:
        source = ArrayFields(_StoreRows(_open_fields_store(*store), lo, hi))
    else:
        assert recompute is not None
        source = RecomputedFields(x1, x2, **recompute)
    op = StructuredKernel(x1, x2, source, lam=lam, memory_mb=memory_mb)
    return op.matmat(V)


def _checked_fields(fields: Any, n: int) -> np.ndarray:
    F = fields.stack().numpy() if isinstance(fields, KernelFields) else np.asarray(fields)
    if F.shape != (len(FIELD_NAMES), n, n):
        raise ValueError(f"fields must have shape (8, {n}, {n}), got {F.shape}")
    if not np.isfinite(F).all():
        raise ValueError("fields contain NaN/inf values")
    return F


class DaskStructuredKernel(StructuredKernel):
    """Θ_λ(X, X) as one Dask task per row block, for clusters run by Dask.

    Field source (one of): ``fields`` — an (8, N, N) array held by the driver (each block's rows are
    scattered to the cluster once when a ``distributed`` client is active); ``store`` — the
    location (path or fsspec URL, with ``storage_options``) of a ``fields`` Gram store, opened
    with :func:`jntk_dist.store.open_gram` *inside* each task, so every worker reads only its rows
    and a bad chunk is named (this also works where ``da.from_zarr`` on Zarr 3 does not, e.g.
    Ray's Dask scheduler); or ``depth`` (+ activation, kind) — each task recomputes its rows with
    ``kernels.fields``.  ``scheduler``: any Dask scheduler name or client (``None``: Dask's
    default, a ``distributed`` client when one is active).
    """

    def __init__(self, x: Any, *, fields: Any = None, store: str | Path | None = None,
                 storage_options: dict[str, Any] | None = None, depth: int | None = None,
                 activation: str = "gelu", kind: str = "jntk", lam: float | None = None,
                 n_blocks: int = 2, scheduler: Any = None, memory_mb: float = 256.0) -> None:
        X = _validated(x)
        n = X.shape[0]
        if sum(v is not None for v in (fields, store, depth)) != 1:
            raise ValueError("give exactly one field source: fields (an (8, N, N) array), store "
                             "(a fields Gram store) or depth (recompute the fields)")
        self.store = None if store is None else (str(store), storage_options)
        self.recompute = None if depth is None else {"depth": depth, "activation": activation,
                                                     "kind": kind}
        F = None if fields is None else _checked_fields(fields, n)
        t = torch.as_tensor(X)
        source: FieldSource
        if F is not None:
            source = InMemoryFields(F)
        elif self.store is not None:
            gram = _open_fields_store(*self.store)
            source = ArrayFields(_StoreRows(gram, 0, gram.layout.n_points))
            if source.shape != (n, n) or not np.array_equal(gram.X, X):
                raise ValueError(f"store {store} holds the fields of other points (shape "
                                 f"(8, {source.shape[0]}, {source.shape[1]}); expected the "
                                 f"(8, {n}, {n}) fields of these inputs)")
        else:
            source = RecomputedFields(t, None, **self.recompute)  # type: ignore[arg-type]
        super().__init__(t, t, source, lam=lam, memory_mb=memory_mb,
                         description={"kind": kind, "depth": depth, "activation": activation,
                                      "mode": "dask"})
        self.scheduler = scheduler
        self.row_blocks = row_blocks(n, n_blocks)
        client = self._client()
        self.X: Any = client.scatter(X, broadcast=True, hash=False) if client is not None else X
        self.blocks: list[Any] = [None] * len(self.row_blocks)
        if F is not None:
            blocks = [np.ascontiguousarray(F[:, lo:hi]) for lo, hi in self.row_blocks]
            self.blocks = client.scatter(blocks, hash=False) if client is not None else blocks

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

    def _matmat(self, V: Tensor) -> Tensor:
        import dask

        Vn = V.cpu().numpy()
        v = dask.delayed(Vn, name=f"V-{dask.base.tokenize(Vn)}")  # shipped once, not per task
        task = dask.delayed(_dask_row_block, pure=True)
        parts = [task(self.X, rb, v, self.lam, blk, self.store, self.recompute, self.memory_mb)
                 for rb, blk in zip(self.row_blocks, self.blocks)]
        kw = {} if self.scheduler is None else {"scheduler": self.scheduler}
        out = np.concatenate(dask.compute(*parts, **kw), axis=0)
        return torch.as_tensor(out, dtype=self.dtype, device=self.device)
