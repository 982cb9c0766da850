"""``jntk solve CONFIG.yaml``: kernel regression f_ntk (eq. 4) from a Gram store (or small data).

Reads the training Gram Θ_λ from a Gram store (``store:``) -- a lazy Dask array solved by the
blockwise Cholesky of :mod:`jntk_dist.linalg` -- or computes it directly for a small ``dataset:``.
Writes predictions, coefficients and train/test accuracy to a Zarr group (``output:``).

Also home of the pieces the other analysis commands share: :class:`ProblemSpec` (where the
kernel and the data come from), :func:`load_problem`, :func:`compute_context`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import DatasetSpec, JobConfig, KernelSpec, OutputPath

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


class ProblemSpec(JobConfig):
    """The kernel and data of an analysis job: a Gram ``store`` (kernel, X, y read from it) or a
    ``dataset`` + ``kernel`` computed directly (small N only)."""

    store: Path | None = None
    dataset: DatasetSpec | None = None
    kernel: KernelSpec | None = None
    lam: float | None = Field(default=None, ge=0.0)  # default: the store's/kernel's λ, else 1
    test_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    seed: int = 0
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    output: OutputPath

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
        from ..store import open_gram

        st = open_gram(cfg.store)
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
        import ray

        started = not ray.is_initialized()
        if started:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kw["address"] = address
            elif spec.num_cpus:
                kw["num_cpus"] = spec.num_cpus
            ray.init(**kw)
        try:
            yield "ray"
        finally:
            if started:
                ray.shutdown()
    elif spec.scheduler == "distributed" or spec.dask_address:
        from distributed import Client

        if spec.dask_address is None:
            raise ValueError("compute.scheduler: distributed needs compute.dask_address "
                             "(e.g. tcp://scheduler:8786)")
        with Client(spec.dask_address):
            yield "distributed"
    else:
        yield "threads" if spec.scheduler == "auto" else spec.scheduler


# ---- the solve job ------------------------------------------------------------------------


class SolveJobConfig(ProblemSpec):
    """``jntk solve`` config: f_ntk with Θ_λ (λ = ``lam``) and ridge μ on a train/test split."""

    ridge: float = Field(default=0.0, ge=0.0)
    multiclass: bool = False  # one-vs-rest targets (−0.1 / 0.9) from the dataset's labels


def run_solve(cfg: SolveJobConfig, progress: bool = True) -> dict[str, Any]:
    """Fit, predict, score and write the results; returns the summary written as attributes."""
    from ..analysis import KernelRegressor, accuracy, write_results

    prob = load_problem(cfg)
    y_fit: np.ndarray = prob.y
    classes = None
    if cfg.multiclass:
        if cfg.dataset is None or cfg.dataset.name is None:
            raise ValueError("multiclass: true needs a named dataset (its original labels)")
        from ..data import load_dataset, one_vs_rest_targets

        labels = load_dataset(cfg.dataset.name, **cfg.dataset.options).labels
        classes, class_index = np.unique(labels, return_inverse=True)
        y_fit = one_vs_rest_targets(labels)
        y_score = class_index
    else:
        y_score = prob.y
    t0 = time.perf_counter()
    with compute_context(cfg.compute) as sched:
        model = KernelRegressor(prob.depth, prob.activation, lam=prob.lam, ridge=cfg.ridge,
                                block_size=cfg.compute.block_size, scheduler=sched)
        model.fit(prob.X[prob.train], y_fit[prob.train], gram=prob.train_gram(prob.lam))
    t_solve = time.perf_counter() - t0
    f_train = model.decision_function(prob.X[prob.train])
    f_test = model.decision_function(prob.X[prob.test]) if prob.test.size else \
        np.zeros((0,) + f_train.shape[1:])
    summary = {
        "job": "solve", "source": prob.source, "depth": prob.depth, "activation": prob.activation,
        "lam": prob.lam, "ridge": cfg.ridge, "n_train": int(prob.train.size),
        "n_test": int(prob.test.size), "gram_size": int(prob.train.size * model.q_),
        "train_accuracy": float(accuracy(f_train, y_score[prob.train])),
        "test_accuracy": float(accuracy(f_test, y_score[prob.test])) if prob.test.size else None,
        "relative_residual": model.residual_, "solve_seconds": t_solve, "scheduler": sched, "config": cfg.to_dict(),
        "classes": None if classes is None else [str(c) for c in classes],
    }
    out_dims = ["output"] if f_train.ndim == 2 else []
    write_results(cfg.output, {
        "train_index": (prob.train, ["train"]),
        "test_index": (prob.test, ["test"]),
        "coef": (model.coef_, ["gram_entry"] + out_dims),
        "f_train": (f_train, ["train"] + out_dims),
        "f_test": (f_test, ["test"] + out_dims),
        "y_train": (y_fit[prob.train], ["train"] + out_dims),
        "y_test": (y_fit[prob.test], ["test"] + out_dims),
    }, summary, group="solve")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the analysis commands and their ``jobs/*.py`` entry points."""
    parser.add_argument("config", help="YAML job config")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. lam=0.1 "
                        "(repeatable; values parsed as YAML)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``solve`` sub-command."""
    parser = subparsers.add_parser(
        "solve", help="kernel regression f_ntk (eq. 4) by blockwise Dask Cholesky",
        description="Solve (Θ_λ(X,X) + μI) α = Y on a train split of a Gram store (or a small "
                    "dataset) and write predictions and train/test accuracy to Zarr.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config

    cfg = load_config(args.config, SolveJobConfig, args.overrides)
    s = run_solve(cfg, progress=not args.no_progress)
    test = "n/a" if s["test_accuracy"] is None else f"{s['test_accuracy']:.4f}"
    print(f"solve: {s['source']}, λ={s['lam']:g}, μ={s['ridge']:g}, Gram {s['gram_size']}² on "
          f"{s['scheduler']} in {s['solve_seconds']:.2f}s (relative residual "
          f"{s['relative_residual']:.1e}); train accuracy "
          f"{s['train_accuracy']:.4f}, test accuracy {test} -> {cfg.output}/solve", flush=True)
    return 0
