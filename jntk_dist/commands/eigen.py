"""``jntk eigen CONFIG.yaml``: eigendecomposition of a training Gram, λ_min with its tolerance, and
the finite-time predictions u(t) = Y + e^{−Θt}(u₀ − Y) of the paper's linear ODE.

Full spectrum (scipy, or torch on a GPU) when the Gram has at most ``max_dense`` rows; otherwise
the top-k eigenpairs and the smallest eigenvalue by Lanczos on the Dask array (shift-invert with a
blockwise Cholesky factor for the small end). Results go to a Zarr group with a spectrum plot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .solve import ProblemSpec, add_arguments, compute_context, load_problem


class EigenJobConfig(ProblemSpec):
    """``jntk eigen`` config. ``part: ntk`` uses only the 00 entries (the plain NTK Gram)."""

    part: Literal["jntk", "ntk"] = "jntk"
    k: int = Field(default=16, ge=1)  # eigenpairs at the top on the iterative path
    max_dense: int = Field(default=12000, ge=2)
    vectors: bool = True
    times: list[float] = Field(default_factory=list)  # finite-time predictions (dense path only)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)


def run_eigen(cfg: EigenJobConfig) -> dict[str, Any]:
    """Decompose, write eigenpairs (and finite-time predictions), plot; returns the summary."""
    from .. import linalg
    from ..analysis import KernelRegressor, accuracy, finite_time_predictions, training_targets, \
        write_results

    prob = load_problem(cfg)
    lam = 0.0 if cfg.part == "ntk" else prob.lam
    if cfg.part == "jntk" and lam == 0:
        raise ValueError("part: jntk with lam: 0 has a zero Jacobian part; use part: ntk")
    model = KernelRegressor(prob.depth, prob.activation, lam=lam)
    gram = prob.train_gram(lam)
    if gram is None:
        gram = model.train_gram(prob.X[prob.train])
    t0 = time.perf_counter()
    with compute_context(cfg.compute) as sched:
        res = linalg.eigen(gram, k=cfg.k, vectors=cfg.vectors, max_dense=cfg.max_dense,
                           scheduler_name=sched)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    main = res.get("full") or res["top"]
    bottom = res.get("full") or res["bottom"]
    lo, hi = bottom.lambda_min, main.lambda_max
    tau = linalg.positivity_tolerance(hi, main.n)
    summary: dict[str, Any] = {
        "job": "eigen", "source": prob.source, "part": cfg.part, "lam": lam, "depth": prob.depth,
        "activation": prob.activation, "n": main.n, "method": main.method
        + ("" if "full" in res else f"; λ_min: {bottom.method}"),
        "lambda_min": lo, "lambda_max": hi, "tolerance": tau, "positive_definite": bool(lo > tau),
        "tolerance_rule": "positive iff λ_min > τ = n·eps(float64)·λ_max",
        "seconds": seconds, "scheduler": sched, "config": cfg.to_dict(),
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
            raise ValueError("finite-time predictions need the full eigendecomposition with "
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
    group = f"eigen_{cfg.part}"
    write_results(cfg.output, arrays, summary, group=group)
    summary["plot"] = str(_plot(cfg, main, summary, Path(cfg.output).with_suffix("")))
    return summary


def _plot(cfg: EigenJobConfig, res: Any, summary: dict[str, Any], stem: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if cfg.times else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    w = np.sort(res.values)[::-1]
    ax.semilogy(np.arange(1, w.size + 1), np.where(w > 0, w, np.nan), ".", ms=3, label="λ_i > 0")
    if (w <= 0).any():
        ax.semilogy(np.flatnonzero(w <= 0) + 1, -w[w <= 0], "x", ms=3, label="|λ_i|, λ_i ≤ 0")
    ax.axhline(summary["tolerance"], ls="--", c="k", lw=0.8, label="τ = n·eps·λ_max")
    ax.set(xlabel="index i", ylabel="eigenvalue",
           title=f"{cfg.part.upper()} Gram, depth {summary['depth']} {summary['activation']}, "
                 f"λ={summary['lam']:g}")
    ax.legend(fontsize=8)
    if cfg.times:
        ax = axes[0, 1]
        t = np.asarray(cfg.times, dtype=float)
        tt = np.where(t > 0, t, np.nan)
        ax.semilogx(tt, summary["train_accuracy_vs_time"], "o-", label="train")
        if "test_accuracy_vs_time" in summary:
            ax.semilogx(tt, summary["test_accuracy_vs_time"], "s-", label="test")
        ax.set(xlabel="t", ylabel="accuracy", title="u(t) = Y + e^{−Θt}(u₀ − Y), u₀ = 0")
        ax.legend()
    fig.tight_layout()
    path = stem.parent / f"{stem.name}_eigen_{cfg.part}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eigen`` sub-command."""
    parser = subparsers.add_parser(
        "eigen", help="eigendecomposition / λ_min of a Gram, finite-time ODE predictions",
        description="Eigendecompose the training Gram of a store (dense when it fits, Lanczos on "
                    "the Dask array otherwise), decide positive definiteness with τ = n·eps·λ_max, "
                    "and optionally evaluate u(t) = Y + e^{−Θt}(u₀ − Y).")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config

    cfg = load_config(args.config, EigenJobConfig, args.overrides)
    s = run_eigen(cfg)
    verdict = "positive definite" if s["positive_definite"] else "NOT numerically positive definite"
    print(f"eigen: {s['source']}, {s['part']} Gram n={s['n']} ({s['method']}, {s['seconds']:.2f}s): "
          f"λ_min={s['lambda_min']:.3e}, λ_max={s['lambda_max']:.3e}, τ={s['tolerance']:.2e} -> "
          f"{verdict}; results {cfg.output}/eigen_{s['part']}, plot {s['plot']}", flush=True)
    if "test_accuracy_vs_time" in s:
        print("  t:", cfg.times, "test accuracy:", [round(a, 4) for a in s["test_accuracy_vs_time"]])
    return 0
