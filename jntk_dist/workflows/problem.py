"""What every analysis job shares: where the kernel and the data come from (a Gram store, or a
dataset + kernel computed directly), the train/test split and where Dask graphs run. The
matrix-free mode of the solve and eigen jobs is in :mod:`.structured`."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..store import open_gram
from .config import (DatasetSpec, KernelSpec, OutputJobConfig, StoreLocation,
                     StoreOutput)
from .resources import RayResources
from ..errors import ConfigError, ConvergenceError, InputError, StoreError

__all__ = ["ComputeSpec", "ProblemSpec", "Problem", "split_indices", "load_problem",
           "compute_context", "arpack_errors"]

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

    @property
    def ray(self) -> RayResources:
        """The Ray part (``ray_address``, ``num_cpus``) as the one Ray resources spec."""
        return RayResources(address=self.ray_address, num_cpus=self.num_cpus)


class ProblemSpec(OutputJobConfig):
    """The kernel and data of an analysis job: a Gram ``store`` (kernel, X, y read from it) or a
    ``dataset`` + ``kernel`` computed directly (small N only). ``store`` and ``output`` are local
    paths or fsspec URLs (``storage_options`` apply to both when they are URLs)."""

    url_fields = ("output", "store")
    store: StoreLocation | None = None
    dataset: DatasetSpec | None = None
    test_dataset: DatasetSpec | None = None  # a separate test set (e.g. MNIST's t10k files):
    # then `dataset` is all training data and test_fraction does not apply
    kernel: KernelSpec | None = None
    lam: float | None = Field(default=None, ge=0.0)  # default: the store's/kernel's λ, else 1
    test_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    seed: int = 0
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    output: StoreOutput  # a local path or an fsspec URL

    @model_validator(mode="before")
    @classmethod
    def _test_set_replaces_the_split(cls, value: Any) -> Any:
        """With a test_dataset, all of ``dataset`` trains: test_fraction defaults to 0."""
        if isinstance(value, dict) and value.get("test_dataset") is not None:
            value = {"test_fraction": 0.0, **value}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ProblemSpec":
        if self.store is None and (self.dataset is None or self.kernel is None):
            raise ConfigError("give a Gram 'store', or a 'dataset' and a 'kernel' to compute from")
        if self.store is not None and self.kernel is not None:
            raise ConfigError("'kernel' is read from the store; give either 'store' or 'kernel'")
        if self.test_dataset is not None:
            if self.store is not None:
                raise ConfigError("test_dataset goes with 'dataset' + 'kernel' (a store holds its "
                                 "own points; split them with test_fraction)")
            if self.test_fraction:
                raise ConfigError("give test_fraction or test_dataset, not both (test_dataset "
                                 "is the test set; all of 'dataset' trains)")
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
    feature_names: tuple[str, ...] = ()  # the dataset's input columns, when a dataset is named

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
            raise ConfigError(f"store {cfg.store} holds the {st.kind!r} kernel; the analyses use the "
                             "JNTK Θ (kernel.kind: jntk)")
        if not st.is_complete:
            raise StoreError(f"store {cfg.store} is incomplete ({len(st.missing_tiles())} tiles "
                             "missing); rerun `jntk gram` on its config first")
        X, y = np.asarray(st.X, dtype=np.float64), np.asarray(st.y, dtype=np.float64)
        names: tuple[str, ...] = ()
        if cfg.dataset is not None:
            ds = cfg.dataset.load()
            if ds.X.shape != X.shape or not np.allclose(ds.X, X):
                raise InputError(f"dataset {ds.name!r} does not match the inputs X of store "
                                 f"{cfg.store} (shape {ds.X.shape} vs {X.shape})")
            names = ds.feature_names
        depth, activation, source = st.depth, st.activation, f"store {cfg.store}"
        lam = cfg.lam if cfg.lam is not None else (st.lam if st.lam is not None else 1.0)
    else:
        return _dataset_problem(cfg)
    train, test = split_indices(y, cfg.test_fraction, cfg.seed)
    return Problem(X, y, depth, activation, float(lam), train, test, source, st, names)


def _dataset_problem(cfg: ProblemSpec) -> Problem:
    """A dataset (and an optional separate test set) with the config's kernel."""
    kernel = cfg.kernel
    assert cfg.dataset is not None and kernel is not None
    if kernel.kind != "jntk":
        raise ConfigError("the analyses use the JNTK Θ: set kernel.kind: jntk")
    ds = cfg.dataset.load()
    lam = cfg.lam if cfg.lam is not None else (kernel.lam if kernel.lam is not None else 1.0)
    source = f"dataset {ds.name} (Gram computed directly)"
    if cfg.test_dataset is None:
        train, test = split_indices(ds.y, cfg.test_fraction, cfg.seed)
        return Problem(ds.X, ds.y, kernel.depth, kernel.activation, float(lam), train, test,
                       source, feature_names=ds.feature_names)
    test_ds = cfg.test_dataset.load()
    if test_ds.X.shape[1] != ds.X.shape[1]:
        raise InputError(f"test_dataset {test_ds.name!r} has d0={test_ds.X.shape[1]}, the "
                         f"training dataset {ds.name!r} d0={ds.X.shape[1]}")
    n, m = ds.X.shape[0], test_ds.X.shape[0]
    return Problem(np.vstack([ds.X, test_ds.X]), np.concatenate([ds.y, test_ds.y]),
                   kernel.depth, kernel.activation, float(lam), np.arange(n),
                   np.arange(n, n + m), f"{source}, test set {test_ds.name} ({m} points)",
                   feature_names=ds.feature_names)


@contextlib.contextmanager
def compute_context(spec: ComputeSpec) -> Iterator[str]:
    """Start/attach the cluster the config names; yields the scheduler name for linalg."""
    address = spec.ray_address or os.environ.get("RAY_ADDRESS")
    use_ray = spec.scheduler == "ray" or (spec.scheduler == "auto" and address is not None
                                          and spec.dask_address is None)
    if use_ray:
        with spec.ray.session(log_to_driver=False):
            yield "ray"
    elif spec.scheduler == "distributed" or spec.dask_address:
        from distributed import Client

        if spec.dask_address is None:
            raise ConfigError("compute.scheduler: distributed needs compute.dask_address "
                             "(e.g. tcp://scheduler:8786)")
        with Client(spec.dask_address):
            yield "distributed"
    else:
        yield "threads" if spec.scheduler == "auto" else spec.scheduler


@contextlib.contextmanager
def arpack_errors() -> Iterator[None]:
    """ARPACK's no-convergence error as one line (nothing is written: there is no result)."""
    from scipy.sparse.linalg import ArpackNoConvergence

    try:
        yield
    except ArpackNoConvergence as err:
        raise ConvergenceError(f"Lanczos (ARPACK) did not converge ({err}); nothing was written. Give "
                       "it more iterations (structured.maxiter), or raise max_dense: a dense "
                       "eigendecomposition always converges") from None
