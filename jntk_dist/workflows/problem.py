"""What every analysis job shares: where the kernel and the data come from (a Gram store, or a
dataset + kernel computed directly), the train/test split, where Dask graphs run, and the
matrix-free (structured) mode of the solve and eigen jobs."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..operators.structured import structured_operator
from ..store import open_gram
from .config import (DatasetSpec, KernelSpec, OutputJobConfig, OutputPath, StoreLocation,
                     StoreOutput)
from .ray_session import ray_session

__all__ = ["ComputeSpec", "ProblemSpec", "Problem", "split_indices", "load_problem",
           "compute_context", "StructuredSpec", "structured_off", "structured_train_operator",
           "StoreFieldsView"]

log = logging.getLogger(__name__)

SchedulerChoice = Literal["auto", "threads", "sync", "ray", "distributed"]


class ComputeSpec(BaseModel):
    """Where Dask graphs run: ``auto`` uses Ray when ``ray_address`` or RAY_ADDRESS is set (a Ray
    job), a Dask cluster when ``dask_address`` is set, Dask's threads otherwise."""

    model_config = ConfigDict(extra="forbid")

    scheduler: SchedulerChoice = "auto"
    ray_address: str | None = None
    dask_address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)  # embedded Ray only
    block_size: int = Field(default=2048, ge=16)  # Cholesky block (rows)


class ProblemSpec(OutputJobConfig):
    """The kernel and data of an analysis job: a Gram ``store`` (kernel, X, y read from it) or a
    ``dataset`` + ``kernel`` computed directly (small N only). ``store`` and ``output`` are local
    paths or fsspec URLs (``storage_options`` apply to both when they are URLs)."""

    url_fields = ("output", "store")
    store: StoreLocation | None = None
    dataset: DatasetSpec | None = None
    kernel: KernelSpec | None = None
    lam: float | None = Field(default=None, ge=0.0)  # default: the store's/kernel's λ, else 1
    test_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    seed: int = 0
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    output: StoreOutput  # a local path or an fsspec URL

    @model_validator(mode="after")
    def _one_source(self) -> "ProblemSpec":
        if self.store is None and (self.dataset is None or self.kernel is None):
            raise ValueError("give a Gram 'store', or a 'dataset' and a 'kernel' to compute from")
        if self.store is not None and self.kernel is not None:
            raise ValueError("'kernel' is read from the store; give either 'store' or 'kernel'")
        return self


@dataclass
class Problem:
    """Inputs, labels, kernel and split of an analysis job; ``gram(lam)`` gives a training Gram."""

    X: np.ndarray
    y: np.ndarray
    depth: int
    activation: str
    lam: float
    train: np.ndarray
    test: np.ndarray
    source: str
    store: Any = None  # a jntk_dist.store.GramStore when read from a store

    @property
    def q_per_point(self) -> int:
        return self.X.shape[1] + 1

    def train_gram(self, lam: float) -> Any:
        """Training Gram for ``lam`` (Θ_λ; the 00 NTK Gram for λ = 0): lazy from a store, or None
        (the regressor then computes it)."""
        if self.store is None:
            return None
        p = self.q_per_point
        q = p if lam > 0 else 1
        G = self.store.dask_array(lam=lam if lam > 0 else None)
        rows = (self.train[:, None] * p + np.arange(q)[None, :]).ravel()
        if rows.size == G.shape[0]:
            return G
        return G[rows][:, rows]


def split_indices(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split stratified by label; test_fraction 0 → every point trains."""
    n = y.shape[0]
    if test_fraction == 0:
        return np.arange(n), np.arange(0)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test.append(rng.permutation(idx)[:min(int(round(test_fraction * idx.size)), idx.size - 1)])
    test_idx = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(n), test_idx), test_idx


def load_problem(cfg: ProblemSpec) -> Problem:
    """Read X, y and the kernel from the store, or load the dataset; split train/test."""
    if cfg.store is not None:
        st = open_gram(cfg.store, cfg.options_for(cfg.store))
        if st.kind != "jntk":
            raise ValueError(f"store {cfg.store} holds the {st.kind!r} kernel; the analyses use the "
                             "JNTK Θ (kernel.kind: jntk)")
        if not st.is_complete:
            raise ValueError(f"store {cfg.store} is incomplete ({len(st.missing_tiles())} tiles "
                             "missing); rerun `jntk gram` on its config first")
        X, y = np.asarray(st.X, dtype=np.float64), np.asarray(st.y, dtype=np.float64)
        if cfg.dataset is not None:
            ds = cfg.dataset.load()
            if ds.X.shape != X.shape or not np.allclose(ds.X, X):
                raise ValueError(f"dataset {ds.name!r} does not match the inputs X of store "
                                 f"{cfg.store} (shape {ds.X.shape} vs {X.shape})")
        depth, activation, source = st.depth, st.activation, f"store {cfg.store}"
        lam = cfg.lam if cfg.lam is not None else (st.lam if st.lam is not None else 1.0)
    else:
        ds = cfg.dataset.load()  # type: ignore[union-attr]
        X, y, st = ds.X, ds.y, None
        depth, activation = cfg.kernel.depth, cfg.kernel.activation  # type: ignore[union-attr]
        if cfg.kernel.kind != "jntk":  # type: ignore[union-attr]
            raise ValueError("the analyses use the JNTK Θ: set kernel.kind: jntk")
        lam = cfg.lam if cfg.lam is not None else (cfg.kernel.lam if cfg.kernel.lam is not None  # type: ignore[union-attr]
                                                   else 1.0)
        source = f"dataset {ds.name} (Gram computed directly)"
    train, test = split_indices(y, cfg.test_fraction, cfg.seed)
    return Problem(X, y, depth, activation, float(lam), train, test, source, st)


@contextlib.contextmanager
def compute_context(spec: ComputeSpec) -> Iterator[str]:
    """Start/attach the cluster the config names; yields the scheduler name for linalg."""
    address = spec.ray_address or os.environ.get("RAY_ADDRESS")
    use_ray = spec.scheduler == "ray" or (spec.scheduler == "auto" and address is not None
                                          and spec.dask_address is None)
    if use_ray:
        with ray_session(address, None if address else (spec.num_cpus or None),
                         log_to_driver=False):
            yield "ray"
    elif spec.scheduler == "distributed" or spec.dask_address:
        from distributed import Client

        if spec.dask_address is None:
            raise ValueError("compute.scheduler: distributed needs compute.dask_address "
                             "(e.g. tcp://scheduler:8786)")
        with Client(spec.dask_address):
            yield "distributed"
    else:
        yield "threads" if spec.scheduler == "auto" else spec.scheduler


# ---- matrix-free (structured) mode, shared by solve and eigen -----------------------------

PreconditionerName = Literal["none", "jacobi", "kron", "two_level", "nystrom"]


class StructuredSpec(BaseModel):
    """``structured:`` of the solve/eigen jobs: never form the dense Gram; use the matrix-free
    operator of :mod:`jntk_dist.operators.structured` (PCG for solves, Lanczos/LOBPCG for spectra).

    ``structured: true`` (or ``--structured``) turns it on with these defaults; a mapping turns it
    on unless it says ``enabled: false``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    preconditioner: PreconditionerName = "two_level"  # fewest iterations (docs/benchmarks.md)
    tol: float = Field(default=1e-8, gt=0.0)  # PCG: |b − Aα|/|b|; LOBPCG: |Av − θv| ≤ tol·λ_max
    maxiter: int | None = Field(default=None, ge=1)  # None: the solvers' defaults
    checkpoint: OutputPath | None = None  # a local path; solve default: <output stem>_pcg.npz
    # beside a local output, in this machine's scratch folder for a URL output (store.local_beside)
    checkpoint_every: float = Field(default=60.0, gt=0.0)  # seconds between checkpoints
    memory_mb: float = Field(default=512.0, gt=0.0)  # working set of a product's row tile
    fields: Literal["auto", "memory", "recompute"] = "auto"  # auto: held in memory if the 8 N²
    # fields fit in memory_mb, else recomputed (a store: read) per row tile on every product
    lambda_min_method: Literal["shift_invert", "lobpcg"] = "shift_invert"  # eigen: λ_min route
    # (shift-invert with inner PCG: fewer products on digits, docs/structured.md)

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return {"enabled": bool(value)}
        return value


def structured_off() -> StructuredSpec:
    """The default of the ``structured:`` key: dense Gram."""
    return StructuredSpec(enabled=False)


class StoreFieldsView:
    """``fields_tile(rows, cols)`` of a fields store's (8, N, N) array restricted to index sets
    (the train split, or test × train), read one row tile at a time."""

    def __init__(self, data: Any, row_index: np.ndarray, col_index: np.ndarray) -> None:
        self.data, self.rows, self.cols = data, np.asarray(row_index), np.asarray(col_index)

    def fields_tile(self, rows: slice, cols: slice) -> np.ndarray:
        r, c = self.rows[rows], self.cols[cols]
        if r.size == 0 or c.size == 0:
            return np.zeros((8, r.size, c.size))
        block = np.asarray(self.data[:, r.min():r.max() + 1, c.min():c.max() + 1])
        return block[:, r - r.min()][:, :, c - c.min()]


def structured_train_operator(prob: Problem, spec: StructuredSpec, lam: float) -> Any:
    """The matrix-free Θ_λ(X_train, X_train): fields read tile by tile from a ``fields`` store,
    else from ``kernels.fields`` (held in memory or recomputed per tile, ``spec.fields``)."""
    if lam <= 0:
        raise ValueError("structured mode is the matrix-free Θ_λ with λ > 0 (lam: 0 is the plain "
                         "N×N NTK Gram; use the dense path for it)")
    X_train = prob.X[prob.train]
    kw: dict[str, Any] = {"depth": prob.depth, "activation": prob.activation, "lam": lam,
                          "memory_mb": spec.memory_mb}
    mode = spec.fields
    if mode == "auto":
        mode = "memory" if 8 * 8 * X_train.shape[0] ** 2 <= spec.memory_mb * 2**20 else "recompute"
    if prob.store is not None:
        if prob.store.mode != "fields":
            raise ValueError(f"structured mode reads the kernel's 8 scalar fields, but "
                             f"{prob.source} is a {prob.store.mode!r} store (Gram entries only); "
                             "write it with `store: fields` in the gram config, or give "
                             "'dataset' + 'kernel' to compute the fields per tile")
        fields: Any = StoreFieldsView(prob.store.data, prob.train, prob.train)
        if mode == "memory":  # read once; otherwise one row tile per product
            n = prob.train.size
            fields = np.asarray(fields.fields_tile(slice(0, n), slice(0, n)), dtype=np.float64)
        return structured_operator(X_train, fields=fields, **kw)
    return structured_operator(X_train, mode=mode, **kw)

