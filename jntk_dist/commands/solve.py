"""``jntk solve CONFIG.yaml``: kernel regression f_ntk (eq. 4) from a Gram store (or small data).

Reads the training Gram Θ_λ from a Gram store (``store:``) -- a lazy Dask array solved by the
blockwise Cholesky of :mod:`jntk_dist.linalg` -- or computes it directly for a small ``dataset:``.
Writes predictions, coefficients and train/test accuracy to a Zarr group (``output:``).
With ``structured:`` (``--structured``) the dense Gram is never formed: the matrix-free operator
of :mod:`jntk_dist.structured` is solved by PCG (:func:`jntk_dist.solvers.structured_solve`).

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

from ..config import (DatasetSpec, KernelSpec, OutputJobConfig, OutputPath, StoreLocation,
                      StoreOutput)
from . import add_config_arguments

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
        from ..store import open_gram

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


# ---- matrix-free (structured) mode, shared by solve and eigen -----------------------------

PreconditionerName = Literal["none", "jacobi", "kron", "two_level", "nystrom"]


class StructuredSpec(BaseModel):
    """``structured:`` of the solve/eigen jobs: never form the dense Gram; use the matrix-free
    operator of :mod:`jntk_dist.structured` (PCG for solves, Lanczos/LOBPCG for spectra).

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


class _StoreFieldsView:
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
    from ..structured import structured_operator

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
        fields: Any = _StoreFieldsView(prob.store.data, prob.train, prob.train)
        if mode == "memory":  # read once; otherwise one row tile per product
            n = prob.train.size
            fields = np.asarray(fields.fields_tile(slice(0, n), slice(0, n)), dtype=np.float64)
        return structured_operator(X_train, fields=fields, **kw)
    return structured_operator(X_train, mode=mode, **kw)


def _fit_structured(prob: Problem, cfg: "SolveJobConfig", y_fit: np.ndarray,
                    progress: bool) -> dict[str, Any]:
    """PCG on the matrix-free Θ_λ + μI; f at the train points is (Θ_λ α)_0, at the test points
    ``structured_predict``. Removes its default checkpoint once converged."""
    from ..solvers import structured_solve
    from ..store import local_beside
    from ..structured import structured_predict

    spec = cfg.structured
    op = structured_train_operator(prob, spec, prob.lam)
    q = prob.q_per_point
    Y = y_fit[prob.train]
    columns = Y.reshape(Y.shape[0], -1).T  # one PCG per one-vs-rest output
    default_ckpt = spec.checkpoint is None
    base = spec.checkpoint or local_beside(cfg.output, "_pcg.npz")
    coefs, iterations, resumed, residuals, paths, converged = [], [], [], [], [], True
    t0 = time.perf_counter()
    for j, yj in enumerate(columns):
        path = base if len(columns) == 1 else base.with_name(f"{base.stem}_c{j}{base.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        res = structured_solve(op, yj, ridge=cfg.ridge, tol=spec.tol, maxiter=spec.maxiter,
                               preconditioner=spec.preconditioner, checkpoint=path,
                               checkpoint_every=spec.checkpoint_every, progress=progress)
        if not res.converged:
            log.warning("PCG stopped after %d iterations at relative residual %.2e > tol %.1e; "
                        "its state is in %s (rerun to continue, e.g. with a larger "
                        "structured.maxiter)", res.iterations, res.residual, spec.tol, path)
        converged &= res.converged
        coefs.append(res.x)
        iterations.append(res.iterations)
        resumed.append(res.resumed_from)
        residuals.append(res.residual)
        paths.append(path)
    t_solve = time.perf_counter() - t0
    C = np.stack(coefs, axis=1)
    f_train = np.asarray(op.matmat(C))[::q]
    f_test = np.zeros((prob.test.size, C.shape[1]))
    if prob.test.size:
        test_fields = None if prob.store is None else \
            _StoreFieldsView(prob.store.data, prob.test, prob.train)
        for j in range(C.shape[1]):
            f_test[:, j] = structured_predict(op, C[:, j], prob.X[prob.test],
                                              test_fields=test_fields, memory_mb=spec.memory_mb)
    shape = Y.shape[1:]
    coef = C.reshape((C.shape[0],) + shape)
    f_train, f_test = f_train.reshape(f_train.shape[:1] + shape), f_test.reshape(f_test.shape[:1] + shape)
    return {"coef": coef, "f_train": f_train, "f_test": f_test, "q": q,
            "residual": max(residuals), "seconds": t_solve, "iterations": iterations, "resumed_from": resumed,
            "converged": converged,
            "checkpoints": [str(p) for p in paths], "remove": paths if default_ckpt else [],
            "scheduler": f"matrix-free PCG[{spec.preconditioner}] on {op.device}"}


# ---- the solve job ------------------------------------------------------------------------


class SolveJobConfig(ProblemSpec):
    """``jntk solve`` config: f_ntk with Θ_λ (λ = ``lam``) and ridge μ on a train/test split."""

    ridge: float = Field(default=0.0, ge=0.0)
    multiclass: bool = False  # one-vs-rest targets (−0.1 / 0.9) from the dataset's labels
    structured: StructuredSpec = Field(default_factory=structured_off)  # matrix-free PCG


def run_solve(cfg: SolveJobConfig, progress: bool = True) -> dict[str, Any]:
    """Fit, predict, score and write the results; returns the summary written as attributes."""
    from ..analysis import accuracy, write_results

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
    fit = _fit_structured(prob, cfg, y_fit, progress) if cfg.structured.enabled else \
        _fit_dense(prob, cfg, y_fit)
    f_train, f_test = fit["f_train"], fit["f_test"]
    summary = {
        "job": "solve", "source": prob.source, "depth": prob.depth, "activation": prob.activation,
        "lam": prob.lam, "ridge": cfg.ridge, "n_train": int(prob.train.size),
        "n_test": int(prob.test.size), "gram_size": int(prob.train.size * fit["q"]),
        "train_accuracy": float(accuracy(f_train, y_score[prob.train])),
        "test_accuracy": float(accuracy(f_test, y_score[prob.test])) if prob.test.size else None,
        "relative_residual": fit["residual"], "solve_seconds": fit["seconds"],
        "scheduler": fit["scheduler"], "config": cfg.recorded(),
        "classes": None if classes is None else [str(c) for c in classes],
        "structured": cfg.structured.enabled,
    }
    if cfg.structured.enabled:
        summary.update(pcg_iterations=fit["iterations"], pcg_resumed_from=fit["resumed_from"],
                       pcg_converged=fit["converged"],
                       preconditioner=cfg.structured.preconditioner,
                       checkpoints=fit["checkpoints"])
    out_dims = ["output"] if f_train.ndim == 2 else []
    write_results(cfg.output, {
        "train_index": (prob.train, ["train"]),
        "test_index": (prob.test, ["test"]),
        "coef": (fit["coef"], ["gram_entry"] + out_dims),
        "f_train": (f_train, ["train"] + out_dims),
        "f_test": (f_test, ["test"] + out_dims),
        "y_train": (y_fit[prob.train], ["train"] + out_dims),
        "y_test": (y_fit[prob.test], ["test"] + out_dims),
    }, summary, group="solve", storage_options=cfg.options_for(cfg.output))
    if fit.get("converged"):
        for path in fit.get("remove", []):  # results written: a default checkpoint is done with
            Path(path).unlink(missing_ok=True)
    return summary


def _fit_dense(prob: Problem, cfg: SolveJobConfig, y_fit: np.ndarray) -> dict[str, Any]:
    """Blockwise Dask Cholesky on the dense training Gram (from the store, or computed)."""
    from ..analysis import KernelRegressor

    t0 = time.perf_counter()
    with compute_context(cfg.compute) as sched:
        model = KernelRegressor(prob.depth, prob.activation, lam=prob.lam, ridge=cfg.ridge,
                                block_size=cfg.compute.block_size, scheduler=sched)
        model.fit(prob.X[prob.train], y_fit[prob.train], gram=prob.train_gram(prob.lam))
    t_solve = time.perf_counter() - t0
    f_train = model.decision_function(prob.X[prob.train])
    f_test = model.decision_function(prob.X[prob.test]) if prob.test.size else \
        np.zeros((0,) + f_train.shape[1:])
    return {"coef": model.coef_, "f_train": f_train, "f_test": f_test, "q": model.q_,
            "residual": model.residual_, "seconds": t_solve, "scheduler": sched}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the analysis commands and their ``jobs/*.py`` entry points."""
    add_config_arguments(parser, "configs/solve_quick.yaml")


def add_structured_flag(parser: argparse.ArgumentParser) -> None:
    """``--structured``: the matrix-free mode of the solve and eigen jobs."""
    parser.add_argument("--structured", action="store_true",
                        help="never form the dense Gram: matrix-free structured operator "
                             "(sets structured.enabled; tune with --set structured.tol=… etc.)")


def load_job_config(args: argparse.Namespace, model_cls: type[Any]) -> Any:
    """The job config from the file, ``--set`` overrides and ``--structured``."""
    from ..config import load_config

    cfg = load_config(args.config, model_cls, args.overrides)
    if getattr(args, "structured", False) and not cfg.structured.enabled:
        cfg.structured = cfg.structured.model_copy(update={"enabled": True})
    return cfg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``solve`` sub-command."""
    parser = subparsers.add_parser(
        "solve", help="kernel regression f_ntk (eq. 4) by blockwise Dask Cholesky",
        description="Solve (Θ_λ(X,X) + μI) α = Y on a train split of a Gram store (or a small "
                    "dataset) and write predictions and train/test accuracy to Zarr.")
    add_arguments(parser)
    add_structured_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_job_config(args, SolveJobConfig)
    s = run_solve(cfg, progress=not args.no_progress)
    test = "n/a" if s["test_accuracy"] is None else f"{s['test_accuracy']:.4f}"
    print(f"solve: {s['source']}, λ={s['lam']:g}, μ={s['ridge']:g}, Gram {s['gram_size']}² on "
          f"{s['scheduler']} in {s['solve_seconds']:.2f}s (relative residual "
          f"{s['relative_residual']:.1e}); train accuracy "
          f"{s['train_accuracy']:.4f}, test accuracy {test} -> {cfg.output}/solve", flush=True)
    if s["structured"]:
        print(f"  PCG iterations {s['pcg_iterations']}, converged: {s['pcg_converged']}", flush=True)
    return 0
