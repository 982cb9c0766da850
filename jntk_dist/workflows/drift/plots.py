"""Slopes and plots of a drift store: Δ against width on log-log axes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ...networks.training import component_label
from ...store.locations import child_location, open_file


def loglog_slope(widths: Any, values: Any) -> float:
    """Least-squares slope of log2(values) against log2(widths) over the finite positive values
    (NaN with fewer than two)."""
    lw = np.log2(np.asarray(widths, dtype=float))
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    return float(np.polyfit(lw[ok], np.log2(v[ok]), 1)[0]) if ok.sum() >= 2 else math.nan


def fit_slopes(ds: Any) -> Any:
    """Least-squares slope of log2(mean Δ over seeds) against log2(width) for every curve.

    Returns an ``xarray.DataArray`` (depth, step, component); NaN where fewer than two widths
    have finite positive values.
    """
    import xarray as xr

    mean = ds["distance"].mean("seed")
    widths = ds["width"].values
    out = np.full((ds.sizes["depth"], ds.sizes["step"], ds.sizes["component"]), np.nan)
    vals = mean.transpose("width", "depth", "step", "component").values
    for j in range(out.shape[0]):
        for t in range(out.shape[1]):
            for c in range(out.shape[2]):
                out[j, t, c] = loglog_slope(widths, vals[:, j, t, c])
    return xr.DataArray(out, dims=("depth", "step", "component"),
                        coords={"depth": ds["depth"].values, "step": ds["step"].values})


def drift_figures(ds: Any, title: str = "") -> list[tuple[str, Any]]:
    """Δ vs width on log-log axes, one panel per component: each curve the mean over seeds with,
    from 3 seeds on, a light 95% band (mean ± 1.96 standard errors) and, with fewer, each seed's
    value as a faint dot (two seeds' band is wider than the data); each curve's fitted slope in
    its label, a dashed width^(-1/2) guide, the legend below the panel: ``[(name, Figure), …]``.

    At a single step (Figs. 1, 2) the curves are depths (one figure, ``by_depth``); with many
    steps (Fig. 3) there is one figure per depth (``depth<L>``) whose curves are the recorded
    steps. The title defaults to the store's experiment, dataset and activation. Figures are
    made with pyplot (a notebook shows them) and left open: the caller saves and closes them.
    The backend is not changed.
    """
    import matplotlib.pyplot as plt

    slopes = fit_slopes(ds).values
    labels = [component_label(int(a), int(b)) for a, b in zip(ds["alpha"].values,
                                                               ds["beta"].values)]
    mean, half, seeds = _mean_and_band(ds)
    steps, depths = ds["step"].values, ds["depth"].values
    figures: list[tuple[str, list[tuple[int, int, str]]]] = []
    if len(steps) == 1:
        figures.append(("by_depth", [(j, 0, f"L={d}") for j, d in enumerate(depths)]))
    else:
        for j, d in enumerate(depths):
            figures.append((f"depth{d}", [(j, t, f"t={s}") for t, s in enumerate(steps)]))
    out = []
    for name, curves in figures:
        fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.6 + 0.2 * len(curves)),
                                 squeeze=False)
        for c, ax in enumerate(axes[0]):
            _panel(ax, ds["width"].values, [(label, mean[:, j, t, c], half[:, j, t, c],
                                             seeds[:, j, :, t, c], float(slopes[j, t, c]))
                                            for j, t, label in curves])
            ax.set_title(f"component {labels[c]}")
        axes[0][0].set_ylabel("max-norm distance Δ")
        fig.suptitle(title or drift_title(ds))
        fig.tight_layout()
        out.append((name, fig))
    return out


def drift_title(ds: Any) -> str:
    """``jntk: fibonacci, gelu`` — the experiment, dataset and activation a drift store records."""
    import ast

    config = ds.attrs.get("config", {})
    if isinstance(config, str):  # stores written as a dict's repr
        try:
            config = ast.literal_eval(config)
        except (ValueError, SyntaxError):
            config = {}
    dataset = (config.get("dataset") or {}).get("name") or ""
    activation = (config.get("network") or {}).get("activation") or ""
    return f"{ds.attrs.get('experiment', '')}: {dataset}, {activation}".strip(" :,")


def _panel(ax: Any, widths: np.ndarray,
           curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]]) -> None:
    """One component's curves (label, mean, band half-width, per-seed values (width, seed),
    slope) and the width^(-1/2) guide; the legend below the axes, off the data."""
    import matplotlib.pyplot as plt

    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(curves), 1)))
    guide = None
    for (label, m, h, per_seed, slope), color in zip(curves, colors):
        ok = np.isfinite(m) & (m > 0)
        if not ok.any():
            continue
        ax.plot(widths[ok], m[ok], "o-", color=color, ms=3, lw=1.4,
                label=f"{label} (slope {slope:.2f})")
        if per_seed.shape[1] >= BAND_MIN_SEEDS:
            ax.fill_between(widths[ok], np.maximum(m[ok] - h[ok], m[ok] * 1e-3), m[ok] + h[ok],
                            color=color, alpha=0.08, lw=0)
        else:
            for values in per_seed.T:
                seen = ok & np.isfinite(values) & (values > 0)
                ax.plot(widths[seen], values[seen], ".", color=color, ms=3, alpha=0.35)
        guide = guide or (widths[ok][0], m[ok][0])
    if guide is not None:
        ax.plot(widths, guide[1] * (widths / guide[0]) ** -0.5, "--", color="0.4", lw=0.8,
                label=r"$\propto d^{-1/2}$")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width $d$")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
              frameon=False)


# below this many seeds a 95% band (1.96 standard errors of so few values) hides the curves
BAND_MIN_SEEDS = 3


def _mean_and_band(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean Δ over seeds, the half-width of its 95% band, (width, depth, step, component), and
    the per-seed values (width, depth, seed, step, component)."""
    dist = ds["distance"].transpose("width", "depth", "seed", "step", "component").values
    n_seed = np.isfinite(dist).sum(axis=2)
    mean = np.nanmean(np.where(np.isfinite(dist), dist, np.nan), axis=2) if dist.size else dist
    sd = np.nanstd(dist, axis=2, ddof=1) if dist.shape[2] > 1 else np.zeros_like(mean)
    return mean, 1.96 * np.nan_to_num(sd) / np.sqrt(np.maximum(n_seed, 1)), dist


def plot_drift(ds: Any, directory: str | Path, title: str = "",
               storage_options: dict[str, Any] | None = None) -> list[Path | str]:
    """The :func:`drift_figures` as PNGs ``distance_<name>.png`` in ``directory`` (a local folder
    or an fsspec URL, written through fsspec), drawn off-screen. Returns their paths (URLs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in drift_figures(ds, title):
        path = child_location(directory, f"distance_{name}.png")
        with open_file(path, "wb", storage_options) as fh:
            fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
