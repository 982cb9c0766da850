"""``jntk assumption8 CONFIG.yaml``: λ_min of the NTK (00) and JNTK Gram matrices vs depth
(the paper's Fig. 6 / B7 / B8), as a table (Zarr, CSV, Markdown) and a plot.

"Positive" follows the config's ``positivity`` rule (:class:`jntk_dist.analysis.PositivityRule`):
``relative`` (the default) is λ_min > τ = n·eps(float64)·λ_max, below which an eigenvalue is not
distinguishable from 0 by a backward-stable float64 eigensolver; ``float32_resolution`` is
λ_min > τ₃₂(n), what a single-precision eigensolver resolves (the rule of the paper configs).
Both verdicts are written (``positive`` under the configured rule, ``positive_relative``).

With ``structured:`` (``--structured``) the JNTK Gram is never formed: λ_max by Lanczos and λ_min
by shift-invert with inner PCG on the matrix-free operator
(:func:`jntk_dist.analysis.structured_extremes`); the row then holds the Ritz value θ ≥ λ_min and
its residual |Av − θv|, and "positive" means θ − |Av − θv| > τ.
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..analysis import RELATIVE, PositivityRule, assumption8, write_results
from ..store import beside, open_file
from .config import DatasetSpec, InexactResultError, OutputJobConfig, StoreOutput
from .eigen import extremes_settings
from .problem import ComputeSpec, Problem, arpack_errors, compute_context
from .structured import StructuredSpec, float32_twin, structured_off, structured_train_operator
from ..errors import ConfigError


class Assumption8Dataset(BaseModel):
    """One dataset of the study; ``activations`` restricts it (e.g. banknote's per-activation
    near-parallel threshold), ``label`` names it in the table."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetSpec
    activations: list[str] | None = None
    label: str | None = None
    max_points: int | None = Field(default=None, ge=2)  # deterministic random subset (quick runs)


class Assumption8JobConfig(OutputJobConfig):
    """``jntk assumption8`` config; ``output`` is a local path or an fsspec URL."""

    datasets: list[Assumption8Dataset]
    activations: list[str] = Field(default_factory=lambda: ["gelu", "erf"])
    depths: list[int]
    kernels: list[Literal["ntk", "jntk"]] = Field(default_factory=lambda: ["ntk", "jntk"])
    max_dense: int = Field(default=12000, ge=2)
    structured: StructuredSpec = Field(default_factory=structured_off)  # matrix-free JNTK extremes
    seed: int = 0
    positivity: PositivityRule = RELATIVE  # which computed λ_min counts as positive
    output: StoreOutput
    # write the table and exit 0 even when a matrix-free λ_min misses its tolerance (its row
    # still says converged: false); by default such a run fails after writing the table
    accept_inexact: bool = False
    # structured: form the matrix for the inertia check that certifies λ_min up to this size
    certify_max_n: int = Field(default=4096, ge=0)

    @field_validator("structured")
    @classmethod
    def _structured_supported(cls, spec: StructuredSpec) -> StructuredSpec:
        if spec.enabled and spec.lambda_min_method != "shift_invert":
            raise ConfigError("assumption8 computes λ_min by shift-invert only "
                             f"(structured.lambda_min_method: {spec.lambda_min_method!r})")
        if spec.enabled and spec.checkpoint is not None:
            raise ConfigError("structured.checkpoint is not supported by assumption8 (one λ_min "
                             "per dataset, activation and depth; each takes seconds to minutes)")
        return spec


def operator_factory(spec: StructuredSpec) -> Any:
    """(X, depth, activation) → a context giving Θ(X, X) (λ = 1) as ``spec`` builds it (device,
    backend, precision, compile, memory_mb: the solve/eigen jobs' :func:`structured_train_operator`)
    and its float32 twin for ``precision: mixed`` (None otherwise); Ray actors freed on exit."""

    @contextlib.contextmanager
    def build(X: np.ndarray, depth: int, activation: str) -> Iterator[tuple[Any, Any]]:
        n = X.shape[0]
        prob = Problem(X=X, y=np.zeros(n), depth=depth, activation=activation, lam=1.0,
                       train=np.arange(n), test=np.arange(0), source="assumption8")
        ray = spec.backend == "ray"
        with compute_context(ComputeSpec(scheduler="ray")) if ray else contextlib.nullcontext():
            op = structured_train_operator(prob, spec, 1.0)
            try:
                yield op, float32_twin(op, spec, prob)
            finally:
                if hasattr(op, "shutdown"):
                    op.shutdown()
    return build


def run_assumption8(cfg: Assumption8JobConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Compute the table, write it (Zarr group ``assumption8``, CSV, Markdown) and the plot."""
    rows: list[dict[str, Any]] = []
    for entry in cfg.datasets:
        data = entry.dataset.load()
        X = data.X
        label = entry.label or data.name
        if entry.max_points is not None and entry.max_points < X.shape[0]:
            keep = np.sort(np.random.default_rng(cfg.seed).permutation(X.shape[0])[:entry.max_points])
            X = X[keep]
            label += f" ({entry.max_points} of {data.X.shape[0]} points)"
        acts = entry.activations or cfg.activations
        spec = cfg.structured
        with arpack_errors():
            found = assumption8(
                X, cfg.depths, acts, dataset=label, kernels_=cfg.kernels,
                max_dense=cfg.max_dense, progress=progress,
                structured=operator_factory(spec) if spec.enabled else None,
                # λ_max only sets τ: 6 digits are plenty, a tight Lanczos stalls on the
                # clustered top of shallow JNTKs (sonar, L = 1: minutes at 1e-10)
                settings=extremes_settings(spec, cfg.certify_max_n, max(spec.tol, 1e-6)),
                rule=cfg.positivity)
        rows.extend(r.as_dict() for r in found)
    out, options = cfg.output, cfg.options_for(cfg.output)
    cols = ["dataset", "activation", "depth", "kernel", "n", "lambda_min", "lambda_min_residual",
            "lambda_max", "tolerance", "positive_relative", "threshold", "positive", "converged",
            "method", "lambda_min_lo", "lambda_min_hi", "certified", "verdict", "verdict_relative",
            "certificate"]
    write_results(out, {
        c: (np.array([r[c] for r in rows], dtype=str if c in _TEXT_COLUMNS else None), ["row"])
        for c in cols}, _table_attrs(cfg),
        group="assumption8", storage_options=options)
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=cols)
    w.writeheader()
    w.writerows({c: r[c] for c in cols} for r in rows)
    with open_file(beside(out, "_assumption8.csv"), "wb", options) as fh:
        fh.write(table.getvalue().encode())
    with open_file(beside(out, "_assumption8.md"), "wb", options) as fh:
        fh.write(markdown_table(rows, cfg.positivity).encode())
    plot(rows, beside(out, "_assumption8.png"), options, rule=cfg.positivity)
    inexact = [r for r in rows if not r["converged"]]
    if inexact and not cfg.accept_inexact:
        which = "; ".join(f"{r['dataset']} {r['activation']} depth {r['depth']} (residual "
                          f"{r['lambda_min_residual']:.1e})" for r in inexact[:4])
        raise InexactResultError(
            f"λ_min did not converge for {len(inexact)} of {len(rows)} rows: {which}; the table "
            f"{out}/assumption8 says converged: false for them. Give shift-invert more "
            "iterations (--set structured.maxiter=…), or accept the inexact rows with "
            "--set accept_inexact=true", report=summary_text(rows, cfg))
    return rows


_TEXT_COLUMNS = ("dataset", "activation", "kernel", "method", "verdict", "verdict_relative",
                 "certificate")


def _table_attrs(cfg: Assumption8JobConfig) -> dict[str, Any]:
    """The attributes of the ``assumption8`` group: the config and the verdict rules."""
    return {"job": "assumption8", "config": cfg.recorded(),
            "positivity": cfg.positivity.model_dump(),
            "verdict_rule": "verdict (adopted rule: threshold) and verdict_relative (tolerance = "
                            "n·eps(float64)·λ_max) are three-way on the interval "
                            "[lambda_min_lo, lambda_min_hi]: positive iff it is certified to "
                            "hold λ_min and lambda_min_lo > the threshold, not positive iff "
                            "lambda_min_hi ≤ the threshold, else undetermined",
            "tolerance_rule": f"adopted rule {cfg.positivity.describe()}; positive / "
                              "positive_relative iff verdict / verdict_relative is positive"}


def markdown_table(rows: list[dict[str, Any]], rule: PositivityRule = RELATIVE) -> str:
    """The table as Markdown: λ_min, λ_max and both verdicts per dataset/activation/depth/kernel
    (the relative rule's τ, and the threshold of ``rule``, the configured one)."""
    lines = [f"positive (adopted): {rule.describe()}; positive (relative): "
             f"{RELATIVE.describe()}", "",
             "| dataset | activation | depth | kernel | n | λ_min | ± residual | λ_min interval | "
             "λ_max | τ_rel | positive (relative) | threshold (adopted) | positive (adopted) |",
             "|---|---|---:|---|---:|---:|---:|---|---:|---:|---|---:|---|"]
    for r in rows:
        res = r.get("lambda_min_residual", 0.0)
        lines.append(f"| {r['dataset']} | {r['activation']} | {r['depth']} | {r['kernel']} | "
                     f"{r['n']} | {r['lambda_min']:.3e} | {f'{res:.1e}' if res else '—'} | "
                     f"{_interval_cell(r)} | {r['lambda_max']:.3e} | {r['tolerance']:.1e} | "
                     f"{_verdict_cell(r, 'verdict_relative', 'positive_relative')} | "
                     f"{r['threshold']:.2e} | {_verdict_cell(r, 'verdict', 'positive')}"
                     f"{'' if r.get('converged', True) else ' (not converged)'} |")
    return "\n".join(lines) + "\n"


def _interval_cell(r: dict[str, Any]) -> str:
    lo, hi = r.get("lambda_min_lo"), r.get("lambda_min_hi")
    if lo is None or hi is None:
        return "—"
    return f"[{lo:.4e}, {hi:.4e}]{'' if r.get('certified', True) else ' (smallest not certified)'}"


def _verdict_cell(r: dict[str, Any], verdict: str, boolean: str) -> str:
    """The three-way verdict; rows written before it existed show their yes/no."""
    if verdict in r:
        return {"positive": "yes", "not positive": "no"}.get(r[verdict], r[verdict])
    return "yes" if r[boolean] else "no"


def plot(rows: Sequence[dict[str, Any]], path: Path | str,
         storage_options: dict[str, Any] | None = None, rule: PositivityRule = RELATIVE) -> None:
    """λ_min vs depth per dataset (one panel each), in the paper's conventions (Fig. 6, B7, B8):
    NTK blue dots, JNTK green; on the JNTK curve x = positive under ``rule`` ("The x-marks
    indicate that the nonzero minimum eigenvalue assumption is satisfied"), o = not; the NTK points
    are not marked. Solid gelu, dashed erf; grey dotted: ``rule``'s threshold for the JNTK Gram,
    and, when ``rule`` is not the relative one, grey dash-dot: the relative τ = n·eps·λ_max. One
    legend below the panels, each entry once. Rows as written by :func:`run_assumption8` (also
    merged ones); λ_min ≤ 0 is drawn at the axis floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = assumption8_figure(rows, rule)
    with open_file(path, "wb", storage_options) as fh:  # a path or an fsspec URL
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def assumption8_figure(rows: Sequence[dict[str, Any]], rule: PositivityRule = RELATIVE) -> Any:
    """The figure :func:`plot` saves (pyplot's, left open: the caller closes it)."""
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.6), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        sel = [r for r in rows if r["dataset"] == name]
        for act, kind in dict.fromkeys((r["activation"], r["kernel"]) for r in sel):
            rr = sorted((r for r in sel if r["activation"] == act and r["kernel"] == kind),
                        key=lambda r: r["depth"])
            _curve(ax, rr, act, kind, rule)
        ax.set(xlabel="depth $L$", title=name,
               ylabel=r"$\lambda_{\min}$ ($\kappa^{-2}$-scaled)")
    handles = _legend_handles(rows, rule)
    ncol = min(len(handles), 2 * len(datasets))  # about two entries per panel's width
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.05 * -(-len(handles) // ncol), 1, 1))
    return fig


def _curve(ax: Any, rr: list[dict[str, Any]], act: str, kind: str, rule: PositivityRule) -> None:
    """One (activation, kernel) curve of λ_min vs depth; on JNTK its verdicts and thresholds."""
    d = np.array([r["depth"] for r in rr])
    lo = np.maximum(np.array([r["lambda_min"] for r in rr], dtype=float), 1e-300)
    style = "-" if act == "gelu" else "--"
    if kind == "ntk":
        ax.semilogy(d, lo, style, marker=".", c="tab:blue", lw=1)
        return
    ax.semilogy(d, lo, style, c="tab:green", lw=1.2)
    pos = np.array([rule.positive(r["lambda_min"], r["n"], r["lambda_max"],
                                  r.get("lambda_min_residual", 0.0)) for r in rr])
    ax.semilogy(d[pos], lo[pos], "x", c="tab:red", ms=7, mew=1.5)
    ax.semilogy(d[~pos], lo[~pos], "o", mfc="none", c="k", ms=6)
    ax.semilogy(d, [rule.threshold(r["n"], r["lambda_max"]) for r in rr], ":", c="0.4", lw=0.8)
    if rule != RELATIVE:
        ax.semilogy(d, [RELATIVE.threshold(r["n"], r["lambda_max"]) for r in rr], "-.",
                    c="0.7", lw=0.8)


def _legend_handles(rows: Sequence[dict[str, Any]], rule: PositivityRule) -> list[Any]:
    """The figure legend: every curve style, marker and threshold drawn, once each."""
    from matplotlib.lines import Line2D

    handles = []
    for act, kind in sorted(dict.fromkeys((r["activation"], r["kernel"]) for r in rows),
                            key=lambda ak: (ak[1] != "ntk", ak[0])):
        style = "-" if act == "gelu" else "--"
        handles.append(Line2D([], [], ls=style, marker="." if kind == "ntk" else "",
                              c="tab:blue" if kind == "ntk" else "tab:green",
                              label=f"{kind.upper()} {act}"))
    handles += [Line2D([], [], ls="", marker="x", c="tab:red", mew=1.5,
                       label="JNTK positive definite"),
                Line2D([], [], ls="", marker="o", mfc="none", c="k", label="JNTK not positive"),
                Line2D([], [], ls=":", c="0.4", label=f"threshold ({rule.rule})"
                       if rule != RELATIVE else r"threshold $n\,\epsilon\,\lambda_{\max}$")]
    if rule != RELATIVE:
        handles.append(Line2D([], [], ls="-.", c="0.7",
                              label=r"relative $n\,\epsilon\,\lambda_{\max}$"))
    return handles


def summary_text(rows: list[dict[str, Any]], cfg: Assumption8JobConfig) -> str:
    """What ``jntk assumption8`` prints: the table and where it went."""
    stem = beside(cfg.output, "_assumption8")
    return (markdown_table(rows) + f"assumption8: {len(rows)} rows -> {cfg.output}/assumption8, "
            f"{stem}.csv, {stem}.md, {stem}.png")


CONFIG = Assumption8JobConfig


def execute(cfg: Assumption8JobConfig, *, overwrite: bool = False, progress: bool = True) -> str:
    """Run the job (the registry's entry point); returns what the CLI prints."""
    return summary_text(run_assumption8(cfg, progress=progress), cfg)
