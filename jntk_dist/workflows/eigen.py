"""``jntk eigen CONFIG.yaml``: eigendecomposition of a training Gram, λ_min with its tolerance, and
the finite-time predictions u(t) = Y + e^{−Θt}(u₀ − Y) of the paper's linear ODE.

Full spectrum (scipy, or torch on a GPU) when the Gram has at most ``max_dense`` rows; otherwise
the top-k eigenpairs and the smallest eigenvalue by Lanczos on the Dask array (shift-invert with a
blockwise Cholesky factor for the small end). Results go to a Zarr group with a spectrum plot.
With ``structured:`` (``--structured``) the dense Gram is never formed: the top-k by Lanczos and
λ_min by shift-invert with inner PCG (:func:`jntk_dist.solvers.shift_invert_eigs`; or preconditioned
LOBPCG, ``structured.lambda_min_method: lobpcg``) on the matrix-free operator.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .. import solvers
from ..analysis import (ExtremesSettings, KernelRegressor, accuracy, finite_time_predictions,
                        structured_extremes, training_targets, write_results)
from ..store import beside, open_file
from .config import InexactResultError
from .problem import ProblemSpec, arpack_errors, compute_context, load_problem
from .structured import StructuredSpec, float32_twin, structured_off, train_operator
from ..errors import ConfigError, require_memory


class EigenJobConfig(ProblemSpec):
    """``jntk eigen`` config. ``part: ntk`` uses only the 00 entries (the plain NTK Gram)."""

    part: Literal["jntk", "ntk"] = "jntk"
    k: int = Field(default=16, ge=1)  # eigenpairs at the top on the iterative path
    max_dense: int = Field(default=12000, ge=2)
    vectors: bool = True
    times: list[float] = Field(default_factory=list)  # finite-time predictions (dense path only)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    structured: StructuredSpec = Field(default_factory=structured_off)  # matrix-free extremes
    # write the results and exit 0 even when an iterative eigensolver misses its tolerance (they
    # still carry converged: false); by default such a run fails after writing them
    accept_inexact: bool = False
    # structured: form the matrix for the inertia check that certifies λ_min up to this size
    certify_max_n: int = Field(default=4096, ge=0)


def run_eigen(cfg: EigenJobConfig, progress: bool = True) -> dict[str, Any]:
    """Decompose, write eigenpairs (and finite-time predictions), plot; returns the summary."""
    _check_structured_request(cfg)
    prob = load_problem(cfg)
    lam = 0.0 if cfg.part == "ntk" else prob.lam
    if cfg.part == "jntk" and lam == 0:
        raise ConfigError("part: jntk with lam: 0 has a zero Jacobian part; use part: ntk")
    if cfg.structured.enabled:
        return _run_structured(cfg, prob, lam, progress)
    _check_dense_memory(cfg, len(prob.train) * (prob.q_per_point if lam > 0 else 1))
    model = KernelRegressor(prob.depth, prob.activation, lam=lam)
    gram = prob.train_gram(lam)
    if gram is None:
        gram = model.train_gram(prob.X[prob.train])
    t0 = time.perf_counter()
    with compute_context(cfg.compute) as sched, arpack_errors():
        res = solvers.eigen(gram, k=cfg.k, vectors=cfg.vectors, max_dense=cfg.max_dense,
                            scheduler_name=sched,  # type: ignore[arg-type]
                            certify_max_n=cfg.certify_max_n)
    seconds = time.perf_counter() - t0
    main = res.get("full") or res["top"]
    bottom = res.get("full") or res["bottom"]
    lo, hi = bottom.lambda_min, main.lambda_max
    tau = solvers.positivity_tolerance(hi, main.n)
    summary: dict[str, Any] = {
        "job": "eigen", "source": prob.source, "part": cfg.part, "lam": lam, "depth": prob.depth,
        "activation": prob.activation, "n": main.n, "method": main.method
        + ("" if "full" in res else f"; λ_min: {bottom.method}"),
        "lambda_min": lo, "lambda_max": hi, "tolerance": tau,
        **_interval_summary(bottom.interval_min, main.interval_max, tau),
        "seconds": seconds, "scheduler": sched, "config": cfg.recorded(),
    }
    arrays: dict[str, tuple[np.ndarray, list[str]]] = {
        "eigenvalues": (main.values if "full" in res else main.values, ["eig"]),
        "train_index": (prob.train, ["train"]), "test_index": (prob.test, ["test"]),
    }
    if "bottom" in res:
        arrays["smallest_eigenvalues"] = (res["bottom"].values[:-1], ["eig_low"])
    if main.vectors is not None:
        arrays["eigenvectors"] = (main.vectors, ["gram_entry", "eig"])
    if cfg.times:
        if "full" not in res or main.vectors is None:
            raise ConfigError("finite-time predictions need the full eigendecomposition with "
                             "vectors (raise max_dense or drop 'times')")
        model.X_train_ = prob.X[prob.train]
        Y = training_targets(prob.y[prob.train], model.q_)
        cross = model.cross_row(prob.X[prob.test]) if prob.test.size else None
        ode = finite_time_predictions(main, Y, cfg.times, cross_row=cross)
        arrays["times"] = (ode["times"], ["time"])
        arrays["u_train"] = (ode["train"], ["time", "gram_entry"])
        f_train = ode["train"][:, :: model.q_]
        summary["train_accuracy_vs_time"] = [float(accuracy(f, prob.y[prob.train])) for f in f_train]
        if cross is not None:
            arrays["f_test"] = (ode["test"], ["time", "test"])
            summary["test_accuracy_vs_time"] = [float(accuracy(f, prob.y[prob.test]))
                                                for f in ode["test"]]
    return _write(cfg, arrays, summary, main)


def _check_dense_memory(cfg: EigenJobConfig, rows: int) -> None:
    """Refuse a dense eigendecomposition whose Gram, eigenvectors and LAPACK's copy do not fit."""
    if rows <= cfg.max_dense:
        require_memory(3 * 8 * rows**2, f"the dense eigendecomposition of the {rows}×{rows} Gram",
                       "use --structured (matrix-free λ_min/λ_max), a smaller max_dense (Lanczos "
                       "on the Dask array) or fewer points")


def _check_structured_request(cfg: EigenJobConfig) -> None:
    if cfg.structured.enabled and (cfg.times or cfg.part == "ntk"):
        raise ConfigError("structured mode gives the extreme eigenvalues (λ_min, λ_max, top-k) of "
                          "the JNTK Θ_λ only: no full spectrum, so no finite-time predictions "
                          "(drop 'times', e.g. --set times=[]) and no part: ntk (its N×N Gram "
                          "needs no structured operator)")


def _write(cfg: EigenJobConfig, arrays: dict[str, tuple[np.ndarray, list[str]]],
           summary: dict[str, Any], main: Any) -> dict[str, Any]:
    write_results(cfg.output, arrays, summary, group=f"eigen_{cfg.part}",
                  storage_options=cfg.options_for(cfg.output))
    summary["plot"] = str(_plot(cfg, main, summary))
    if not summary["converged"] and not cfg.accept_inexact:
        raise InexactResultError(
            f"λ_min did not converge: residual |Av − θv| = "
            f"{summary.get('lambda_min_residual', 0.0):.2e}; {summary['not_converged_why']}; "
            f"the results in {cfg.output}/eigen_{cfg.part} carry converged: false. Give it a "
            "tolerance float64 resolves (--set structured.tol=…), more iterations "
            "(--set structured.maxiter=…), a larger inertia check (--set certify_max_n=…), or "
            "accept the inexact result with --set accept_inexact=true",
            report=summary_text(summary, cfg))
    return summary


def _run_structured(cfg: EigenJobConfig, prob: Any, lam: float, progress: bool) -> dict[str, Any]:
    """Top-k (Lanczos) and λ_min (shift-invert or LOBPCG, structured preconditioner) of the
    matrix-free Θ_λ by the one structured route (:func:`jntk_dist.analysis.structured_extremes`):
    λ_min with an interval, certified smallest by inertia up to ``certify_max_n``."""
    with train_operator(prob, cfg, lam) as op, arpack_errors():
        return _structured_extremes(cfg, prob, op, lam, progress)


def extremes_settings(spec: StructuredSpec, certify_max_n: int,
                      top_tol: float | None = None) -> ExtremesSettings:
    """The plain settings of the one structured λ route from a ``structured:`` config."""
    return ExtremesSettings(tol=spec.tol, preconditioner=spec.preconditioner,
                            maxiter=spec.maxiter, lambda_min_method=spec.lambda_min_method,
                            checkpoint=None if spec.checkpoint is None else str(spec.checkpoint),
                            checkpoint_every=spec.checkpoint_every, top_tol=top_tol,
                            certify_max_n=certify_max_n)


def _structured_extremes(cfg: EigenJobConfig, prob: Any, op: Any, lam: float,
                         progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    inner = float32_twin(op, cfg.structured, prob)
    ext = structured_extremes(op, extremes_settings(cfg.structured, cfg.certify_max_n),
                              k_top=cfg.k, top_vectors=cfg.vectors, inner_op=inner,
                              progress=progress)
    top, bottom, iv = ext.top, ext.bottom, ext.interval_min
    n, hi, tau = op.shape[0], float(top.values[-1]), ext.tolerance
    summary: dict[str, Any] = {
        "job": "eigen", "source": prob.source, "part": cfg.part, "lam": lam, "depth": prob.depth,
        "activation": prob.activation, "n": n, "structured": True, "method": ext.method,
        "lambda_min_products": int(bottom.n_products),
        "lambda_min": iv.value, "lambda_min_residual": float(bottom.residuals[0]),
        "lambda_max": hi, "lambda_max_residual": float(top.residuals[-1]), "tolerance": tau,
        "residual_tolerance": cfg.structured.tol * abs(iv.value),
        **_interval_summary(iv, ext.interval_max, tau),
        "operator_products": int(top.n_products + bottom.n_products),
        "seconds": time.perf_counter() - t0, "scheduler": f"matrix-free on {op.device}",
        "precision": cfg.structured.precision, "config": cfg.recorded(),
    }
    arrays: dict[str, tuple[np.ndarray, list[str]]] = {
        "eigenvalues": (top.values, ["eig"]),
        "smallest_eigenvalues": (bottom.values, ["eig_low"]),
        "train_index": (prob.train, ["train"]), "test_index": (prob.test, ["test"]),
    }
    if top.vectors is not None:
        arrays["eigenvectors"] = (top.vectors, ["gram_entry", "eig"])
    return _write(cfg, arrays, summary, top)


def _interval_summary(iv: Any, iv_max: Any, tau: float) -> dict[str, Any]:
    """λ_min's interval, certificate and three-way verdict (and λ_max's interval)."""
    verdict = iv.verdict(tau)
    return {"lambda_min_lo": iv.lo, "lambda_min_hi": iv.hi, "certified": iv.certified,
            "certificate": iv.how, "converged": bool(iv.converged), "not_converged_why": iv.why,
            "lambda_max_lo": None if iv_max is None else iv_max.lo,
            "lambda_max_hi": None if iv_max is None else iv_max.hi,
            "verdict": verdict, "positive_definite": verdict == "positive",
            "tolerance_rule": "positive iff the certified interval of λ_min lies above "
                              "τ = n·eps(float64)·λ_max; not positive iff it lies at or below "
                              "τ; otherwise undetermined"}


# the paper's linear ODE (u₀ = 0), in matplotlib mathtext
ODE_TITLE = r"$u(t) = Y + e^{-\Theta t}(u_0 - Y),\ u_0 = 0$"


def _plot(cfg: EigenJobConfig, res: Any, summary: dict[str, Any]) -> Path | str:
    """The spectrum plot ``<output stem>_eigen_<part>.png`` (through fsspec for a URL output)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if cfg.times else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    w = np.sort(res.values)[::-1]
    ax.semilogy(np.arange(1, w.size + 1), np.where(w > 0, w, np.nan), ".", ms=3,
                label=r"$\lambda_i > 0$")
    if (w <= 0).any():
        ax.semilogy(np.flatnonzero(w <= 0) + 1, -w[w <= 0], "x", ms=3,
                    label=r"$|\lambda_i|,\ \lambda_i \leq 0$")
    ax.axhline(summary["tolerance"], ls="--", c="k", lw=0.8,
               label=r"$\tau = n\,\epsilon\,\lambda_{\max}$")
    ax.set(xlabel="index $i$ (descending)", ylabel=r"eigenvalue $\lambda_i$",
           title=f"{cfg.part.upper()} Gram, depth {summary['depth']} {summary['activation']}, "
                 f"$\\lambda = {summary['lam']:g}$")
    ax.legend(fontsize=8)
    if cfg.times:
        ax = axes[0, 1]
        t = np.asarray(cfg.times, dtype=float)
        tt = np.where(t > 0, t, np.nan)
        ax.semilogx(tt, summary["train_accuracy_vs_time"], "o-", label="train")
        if "test_accuracy_vs_time" in summary:
            ax.semilogx(tt, summary["test_accuracy_vs_time"], "s-", label="test")
        ax.set(xlabel="training time $t$ (t = 0 left out: $f \\equiv 0$ there)",
               ylabel="accuracy", ylim=(0, 1.02), title=ODE_TITLE)
        ax.legend(loc="lower left")
    fig.tight_layout()
    path = beside(cfg.output, f"_eigen_{cfg.part}.png")
    with open_file(path, "wb", cfg.options_for(cfg.output)) as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return path


def summary_text(s: dict[str, Any], cfg: EigenJobConfig) -> str:
    """What ``jntk eigen`` prints."""
    verdict = {"positive": "positive definite", "not positive": "NOT numerically positive "
               "definite", "undetermined": "positivity UNDETERMINED"}[s["verdict"]]
    if not s.get("converged", True):
        verdict += f" (NOT CONVERGED: {s.get('not_converged_why', 'inexact')})"
    cert = "certified" if s["certified"] else "not certified smallest"
    text = (f"eigen: {s['source']}, {s['part']} Gram n={s['n']} ({s['method']}, "
            f"{s['seconds']:.2f}s): λ_min={s['lambda_min']:.3e} in [{s['lambda_min_lo']:.4e}, "
            f"{s['lambda_min_hi']:.4e}] ({cert}), λ_max={s['lambda_max']:.3e}, "
            f"τ={s['tolerance']:.2e} -> {verdict}; results {cfg.output}/eigen_{s['part']}, "
            f"plot {s['plot']}")
    if "test_accuracy_vs_time" in s:
        text += "\n" + accuracy_vs_time_text(cfg.times, s["train_accuracy_vs_time"],
                                             s["test_accuracy_vs_time"])
    return text


def accuracy_vs_time_text(times: list[float], train: list[float], test: list[float]) -> str:
    """Train/test accuracy of u(t) per time; t = 0 is named, not scored: there u₀ = 0, f ≡ 0
    predicts no class (its 'accuracy' 0 is no measurement)."""
    cells = [f"t = {t:g}: f ≡ 0 (untrained)" if t == 0 else f"t = {t:g}: {a:.3f} / {b:.3f}"
             for t, a, b in zip(times, train, test)]
    return "  train / test accuracy of u(t): " + "; ".join(cells)


CONFIG = EigenJobConfig


def execute(cfg: EigenJobConfig, *, overwrite: bool = False, progress: bool = True) -> str:
    """Run the job (the registry's entry point); returns what the CLI prints."""
    return summary_text(run_eigen(cfg, progress=progress), cfg)
