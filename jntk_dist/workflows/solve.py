"""``jntk solve``: kernel regression f_ntk (eq. 4) from a Gram store (or small data).

Reads the training Gram Θ_λ from a Gram store (``store:``) -- a lazy Dask array solved by the
blockwise Cholesky of :mod:`jntk_dist.solvers.cholesky` -- or computes it directly for a small
``dataset:``. Writes predictions, coefficients and train/test accuracy to a Zarr group
(``output:``). With ``structured:`` (``--structured``) the dense Gram is never formed: the
matrix-free operator of :mod:`jntk_dist.operators` is solved by PCG
(:func:`jntk_dist.solvers.structured_solve`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from .. import kernels
from ..analysis import KernelRegressor, accuracy, write_results
from ..operators.structured import structured_operator, structured_predict
from ..solvers import AUTO_RIDGE_FRACTION, auto_ridge, structured_solve
from ..solvers.cholesky import NotPositiveDefiniteError
from ..store import local_beside
from .config import InexactResultError, JobError
from .problem import Problem, ProblemSpec, compute_context, load_problem
from .structured import (StoreFieldsView, StructuredSpec, float32_twin, structured_off,
                         train_operator)
from ..errors import ConfigError, require_memory

__all__ = ["SolveJobConfig", "run_solve", "summary_text", "CONFIG", "execute"]

log = logging.getLogger(__name__)


@dataclass
class Fit:
    """What both fit paths (dense Cholesky, matrix-free PCG) return."""

    coef: np.ndarray  # α, point-major (× outputs)
    f_train: np.ndarray
    f_test: np.ndarray
    q: int  # Gram rows per point (d0+1, or 1 for the plain NTK)
    residual: float  # relative residual of the solve (the worst output's)
    seconds: float
    scheduler: str  # where it ran
    converged: bool = True
    iterations: list[int] = field(default_factory=list)  # PCG, per output
    resumed_from: list[int] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    remove_when_done: list[Path] = field(default_factory=list)  # default checkpoints
    operator: dict[str, Any] = field(default_factory=dict)  # the structured operator's description
    preconditioners: list[str] = field(default_factory=list)  # built per output (auto's pick)
    preconditioner_choice: list[str] = field(default_factory=list)  # auto: what and why


def _pcg_columns(op: Any, columns: np.ndarray, cfg: "SolveJobConfig", progress: bool,
                 low: Any = None) -> Fit:
    """One PCG per column of targets (one-vs-rest outputs), each checkpointed."""
    spec = cfg.structured
    base = spec.checkpoint or local_beside(cfg.output, "_pcg.npz")
    fit = Fit(coef=np.empty(0), f_train=np.empty(0), f_test=np.empty(0), q=0, residual=0.0,
              seconds=0.0, scheduler=f"matrix-free PCG[{spec.preconditioner}] on {op.device}")
    coefs, t0 = [], time.perf_counter()
    for j, yj in enumerate(columns):
        path = base if len(columns) == 1 else base.with_name(f"{base.stem}_c{j}{base.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        res = structured_solve(op if low is None else low, yj, ridge=cfg.ridge, tol=spec.tol,
                               maxiter=spec.maxiter, preconditioner=spec.preconditioner,
                               checkpoint=path, checkpoint_every=spec.checkpoint_every,
                               progress=progress, exact_op=None if low is None else op)
        if not res.converged:
            log.warning("PCG stopped after %d iterations at relative residual %.2e > tol %.1e; "
                        "its state is in %s (rerun to continue, e.g. with a larger "
                        "structured.maxiter)", res.iterations, res.residual, spec.tol, path)
        fit.converged &= res.converged
        fit.preconditioners.append(res.preconditioner)
        fit.preconditioner_choice.append(res.preconditioner_choice)
        coefs.append(res.x)
        fit.iterations.append(res.iterations)
        fit.resumed_from.append(res.resumed_from)
        fit.residual = max(fit.residual, res.residual)
        fit.checkpoints.append(path)
    fit.seconds = time.perf_counter() - t0
    fit.scheduler = f"matrix-free PCG[{'/'.join(sorted(set(fit.preconditioners)))}] on {op.device}"
    fit.coef = np.stack(coefs, axis=1)
    fit.remove_when_done = list(fit.checkpoints) if spec.checkpoint is None else []
    return fit


def _fit_structured(prob: Problem, cfg: "SolveJobConfig", y_fit: np.ndarray,
                    progress: bool) -> Fit:
    """PCG on the matrix-free Θ_λ + μI; f at the train points is (Θ_λ α)_0, at the test points
    ``structured_predict``. Removes its default checkpoint once converged."""
    Y = y_fit[prob.train]
    with train_operator(prob, cfg, prob.lam) as op:
        low = float32_twin(op, cfg.structured, prob)
        fit = _pcg_columns(op, Y.reshape(Y.shape[0], -1).T, cfg, progress, low)
        C, fit.q = fit.coef, prob.q_per_point
        f_train = np.asarray(op.matmat(C))[::fit.q]
        f_test = np.zeros((prob.test.size, C.shape[1]))
        if prob.test.size:
            test_fields = None if prob.store is None else \
                StoreFieldsView(prob.store, prob.test, prob.train)
            for j in range(C.shape[1]):
                f_test[:, j] = structured_predict(op, C[:, j], prob.X[prob.test],
                                                  test_fields=test_fields,
                                                  memory_mb=op.memory_mb)
        fit.operator = dict(op.description)
    shape = Y.shape[1:]
    fit.coef = C.reshape((C.shape[0],) + shape)
    fit.f_train = f_train.reshape(f_train.shape[:1] + shape)
    fit.f_test = f_test.reshape(f_test.shape[:1] + shape)
    return fit


# ---- the solve job ------------------------------------------------------------------------


class SolveJobConfig(ProblemSpec):
    """``jntk solve`` config: f_ntk with Θ_λ (λ = ``lam``) and ridge μ on a train/test split."""

    # μ, or "auto": 0.01 × the mean diagonal of the training Gram (tr Θ_λ / (N(d0+1))), the top
    # of the range where test accuracy does not move on digits (docs/structured.md, "Real images")
    ridge: float | Literal["auto"] = Field(default=0.0)
    multiclass: bool = False  # one-vs-rest targets (−0.1 / 0.9) from the dataset's labels
    structured: StructuredSpec = Field(default_factory=structured_off)  # matrix-free PCG
    # dense solve: the largest relative residual |b − (Θ_λ+μI)α| / |b| accepted (structured
    # solves use structured.tol)
    residual_tol: float = Field(default=1e-6, gt=0.0)
    # write the results and exit 0 even when the solve misses its tolerance (they still carry
    # converged: false); by default such a run fails after writing them
    accept_inexact: bool = False

    @field_validator("ridge")
    @classmethod
    def _ridge(cls, value: float | str) -> float | str:
        if value != "auto" and not float(value) >= 0.0:
            raise ConfigError(f"ridge μ must be ≥ 0 or 'auto', got {value}")
        return value


def _targets(cfg: SolveJobConfig, prob: Problem) -> tuple[np.ndarray, np.ndarray, Any]:
    """(targets fitted, labels scored, class names): ±1 labels, or one-vs-rest targets."""
    if not cfg.multiclass:
        return prob.y, prob.y, None
    if cfg.dataset is None or cfg.dataset.name is None:
        raise ConfigError("multiclass: true needs a named dataset (its original labels)")
    from ..data import load_dataset, one_vs_rest_targets

    labels = load_dataset(cfg.dataset.name, **cfg.dataset.options).labels
    classes, class_index = np.unique(labels, return_inverse=True)
    return one_vs_rest_targets(labels), class_index, classes


def _summary(cfg: SolveJobConfig, prob: Problem, fit: Fit, y_score: np.ndarray,
             classes: Any) -> dict[str, Any]:
    tol = cfg.structured.tol if cfg.structured.enabled else cfg.residual_tol
    converged = bool(fit.converged if cfg.structured.enabled else fit.residual <= tol)
    summary = {
        "job": "solve", "source": prob.source, "depth": prob.depth, "activation": prob.activation,
        "lam": prob.lam, "ridge": cfg.ridge, "n_train": int(prob.train.size),
        "n_test": int(prob.test.size), "gram_size": int(prob.train.size * fit.q),
        "train_accuracy": float(accuracy(fit.f_train, y_score[prob.train])),
        "test_accuracy": (float(accuracy(fit.f_test, y_score[prob.test])) if prob.test.size
                          else None),
        **majority_baseline(y_score[prob.train], y_score[prob.test]),
        "relative_residual": fit.residual, "residual_tolerance": tol, "converged": converged,
        "solve_seconds": fit.seconds,
        "scheduler": fit.scheduler, "config": cfg.recorded(),
        "classes": None if classes is None else [str(c) for c in classes],
        "structured": cfg.structured.enabled,
    }
    if cfg.structured.enabled:
        summary.update(pcg_iterations=fit.iterations, pcg_resumed_from=fit.resumed_from,
                       pcg_converged=fit.converged,
                       preconditioner=cfg.structured.preconditioner,
                       preconditioner_built=fit.preconditioners,
                       preconditioner_choice=[c for c in fit.preconditioner_choice if c],
                       checkpoints=[str(p) for p in fit.checkpoints],
                       operator={k: str(v) for k, v in fit.operator.items()})
    return summary


def _auto_ridge(prob: Problem) -> float:
    """``ridge: auto`` (:func:`jntk_dist.solvers.auto_ridge`) from the diagonal fields alone
    (O(N) pairs' worth); λ = 0: of the plain N×N NTK's diagonal."""
    X = prob.X[prob.train]
    if prob.lam > 0:
        return auto_ridge(structured_operator(X, depth=prob.depth, activation=prob.activation,
                                              lam=prob.lam, mode="recompute", device="cpu"))
    diag = [np.diagonal(kernels.ntk(X[s:s + 256], depth=prob.depth, activation=prob.activation))
            for s in range(0, X.shape[0], 256)]
    return AUTO_RIDGE_FRACTION * float(np.concatenate(diag).mean())


def resolve_ridge(cfg: SolveJobConfig, prob: Problem) -> tuple[float, str]:
    """μ and how it was chosen: the config's number, or ``auto`` from the Gram's trace."""
    if cfg.ridge != "auto":
        return float(cfg.ridge), "given"
    mu = _auto_ridge(prob)
    log.info("ridge: auto → μ = %.3g (%.2g × the mean diagonal of the training Gram)", mu,
             AUTO_RIDGE_FRACTION)
    return mu, f"auto: {AUTO_RIDGE_FRACTION:g} × tr(Θ_λ)/(N(d0+1))"


def run_solve(cfg: SolveJobConfig, progress: bool = True) -> dict[str, Any]:
    """Fit, predict, score and write the results; returns the summary written as attributes."""
    prob = load_problem(cfg)
    mu, rule = resolve_ridge(cfg, prob)
    recorded, cfg = cfg.recorded(), cfg.model_copy(update={"ridge": mu})
    y_fit, y_score, classes = _targets(cfg, prob)
    fit = _fit_structured(prob, cfg, y_fit, progress) if cfg.structured.enabled else \
        _fit_dense(prob, cfg, y_fit)
    summary = _summary(cfg, prob, fit, y_score, classes)
    summary.update(ridge_rule=rule, config=recorded)
    out_dims = ["output"] if fit.f_train.ndim == 2 else []
    write_results(cfg.output, {
        "train_index": (prob.train, ["train"]),
        "test_index": (prob.test, ["test"]),
        "coef": (fit.coef, ["gram_entry"] + out_dims),
        "f_train": (fit.f_train, ["train"] + out_dims),
        "f_test": (fit.f_test, ["test"] + out_dims),
        "y_train": (y_fit[prob.train], ["train"] + out_dims),
        "y_test": (y_fit[prob.test], ["test"] + out_dims),
    }, summary, group="solve", storage_options=cfg.options_for(cfg.output))
    if fit.converged:
        for path in fit.remove_when_done:  # results written: a default checkpoint is done with
            Path(path).unlink(missing_ok=True)
    if not summary["converged"] and not cfg.accept_inexact:
        raise InexactResultError(_not_converged(summary, cfg), report=summary_text(summary, cfg))
    return summary


def _not_converged(s: dict[str, Any], cfg: SolveJobConfig) -> str:
    """The one-line error of a solve that missed its tolerance."""
    more = (f", or give PCG more iterations (structured.maxiter; it resumes from "
            f"{s['checkpoints'][0]})" if cfg.structured.enabled else "")
    return (f"the solve did not converge: relative residual {s['relative_residual']:.2e} > "
            f"tolerance {s['residual_tolerance']:.1e}; the results in {cfg.output}/solve carry "
            "converged: false. The Gram is singular or ill-conditioned (duplicate or "
            "near-parallel points; check λ_min with `jntk eigen`): add a ridge (--set "
            f"ridge=1e-6){more}, or accept the inexact result with --set accept_inexact=true")


def _fit_dense(prob: Problem, cfg: SolveJobConfig, y_fit: np.ndarray) -> Fit:
    """Blockwise Dask Cholesky on the dense training Gram (from the store, or computed)."""
    c = cfg.compute
    if not (c.ray_address or c.dask_address or os.environ.get("RAY_ADDRESS")) and \
            c.scheduler in ("auto", "threads", "sync"):  # the Gram and its factor, here
        rows = len(prob.train) * prob.q_per_point
        require_memory(2 * 8 * rows**2, f"the dense solve with the {rows}×{rows} training Gram",
                       "use --structured (matrix-free conjugate gradients) or fewer points")
    t0 = time.perf_counter()
    with compute_context(cfg.compute) as sched:
        model = KernelRegressor(prob.depth, prob.activation, lam=prob.lam, ridge=cfg.ridge,
                                block_size=cfg.compute.block_size, scheduler=sched)
        try:
            model.fit(prob.X[prob.train], y_fit[prob.train], gram=prob.train_gram(prob.lam))
        except NotPositiveDefiniteError as err:  # one line, naming --set ridge=…
            raise JobError(str(err)) from err
    t_solve = time.perf_counter() - t0
    f_train = model.decision_function(prob.X[prob.train])
    f_test = model.decision_function(prob.X[prob.test]) if prob.test.size else \
        np.zeros((0,) + f_train.shape[1:])
    return Fit(coef=model.coef_, f_train=f_train, f_test=f_test, q=model.q_,
               residual=model.residual_, seconds=t_solve, scheduler=sched)



def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """The baseline a test accuracy is read against: the test accuracy of always predicting the
    training set's most frequent class (labels ±1, or class indices when multiclass)."""
    if y_test.size == 0 or y_train.size == 0 or y_train.ndim != 1:
        return {"majority_class": None, "majority_class_test_accuracy": None}
    values, counts = np.unique(y_train, return_counts=True)
    majority = values[np.argmax(counts)]
    return {"majority_class": majority.item(),
            "majority_class_test_accuracy": float(np.mean(y_test == majority))}


def summary_text(s: dict[str, Any], cfg: SolveJobConfig) -> str:
    """What ``jntk solve`` prints: the test accuracy beside the majority-class baseline."""
    test = "n/a" if s["test_accuracy"] is None else f"{s['test_accuracy']:.4f}"
    if s.get("majority_class_test_accuracy") is not None:
        base = s["majority_class_test_accuracy"]
        test += (f" (always predicting the training majority class {s['majority_class']:g}: "
                 f"{base:.4f}{'; NO BETTER than that' if s['test_accuracy'] <= base else ''})")
    text = (f"solve: {s['source']}, λ={s['lam']:g}, μ={s['ridge']:g}, Gram {s['gram_size']}² on "
            f"{s['scheduler']} in {s['solve_seconds']:.2f}s (relative residual "
            f"{s['relative_residual']:.1e}, {'converged' if s['converged'] else 'NOT CONVERGED'}"
            f"); train accuracy "
            f"{s['train_accuracy']:.4f}, test accuracy {test} -> {cfg.output}/solve")
    if s["structured"]:
        text += f"\n  PCG iterations {s['pcg_iterations']}, converged: {s['pcg_converged']}"
        for choice in sorted(set(s["preconditioner_choice"])):
            text += f"\n  {choice}"
    return text


CONFIG = SolveJobConfig


def execute(cfg: SolveJobConfig, *, overwrite: bool = False, progress: bool = True) -> str:
    """Run the job (the registry's entry point); returns what the CLI prints."""
    return summary_text(run_solve(cfg, progress=progress), cfg)
