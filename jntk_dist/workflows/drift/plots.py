"""Slopes and plots of a drift store: Δ against width on log-log axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...networks.training import component_label
from ...store.locations import child_location, open_file


def fit_slopes(ds: Any) -> Any:
    """Least-squares slope of log2(mean Δ over seeds) against log2(width) for every curve.

    Returns an ``xarray.DataArray`` (depth, step, component); NaN where fewer than two widths
    have finite positive values.
    """
    import xarray as xr

    mean = ds["distance"].mean("seed")
    lw = np.log2(ds["width"].values.astype(float))
    out = np.full((ds.sizes["depth"], ds.sizes["step"], ds.sizes["component"]), np.nan)
    vals = mean.transpose("width", "depth", "step", "component").values
    for j in range(out.shape[0]):
        for t in range(out.shape[1]):
            for c in range(out.shape[2]):
                v = vals[:, j, t, c]
                ok = np.isfinite(v) & (v > 0)
                if ok.sum() >= 2:
                    out[j, t, c] = np.polyfit(lw[ok], np.log2(v[ok]), 1)[0]
    return xr.DataArray(out, dims=("depth", "step", "component"),
                        coords={"depth": ds["depth"].values, "step": ds["step"].values})


def plot_drift(ds: Any, directory: str | Path, title: str = "",
               storage_options: dict[str, Any] | None = None) -> list[Path | str]:
    """Δ vs width on log-log axes, one panel per component, 95% bands over seeds.

    At a single step (Figs. 1, 2) the curves are depths; with many steps (Fig. 3) there is one
    figure per depth whose curves are the recorded steps. ``directory`` is a local folder or an
    fsspec URL (written through fsspec). Returns the PNG paths (URLs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slopes = fit_slopes(ds)
    widths = ds["width"].values
    labels = [component_label(int(a), int(b)) for a, b in zip(ds["alpha"].values,
                                                               ds["beta"].values)]
    dist = ds["distance"].transpose("width", "depth", "seed", "step", "component").values
    n_seed = np.isfinite(dist).sum(axis=2)
    mean = np.nanmean(np.where(np.isfinite(dist), dist, np.nan), axis=2) if dist.size else dist
    sd = np.nanstd(dist, axis=2, ddof=1) if dist.shape[2] > 1 else np.zeros_like(mean)
    half = 1.96 * np.nan_to_num(sd) / np.sqrt(np.maximum(n_seed, 1))
    steps, depths = ds["step"].values, ds["depth"].values
    figures: list[tuple[str, list[tuple[int, int, str]]]] = []
    if len(steps) == 1:
        figures.append(("by_depth", [(j, 0, f"L={d}") for j, d in enumerate(depths)]))
    else:
        for j, d in enumerate(depths):
            figures.append((f"depth{d}", [(j, t, f"t={s}") for t, s in enumerate(steps)]))
    paths = []
    for name, curves in figures:
        fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.6), squeeze=False)
        for c, ax in enumerate(axes[0]):
            colors = plt.cm.viridis(np.linspace(0, 0.9, len(curves)))
            for (j, t, label), color in zip(curves, colors):
                m, h = mean[:, j, t, c], half[:, j, t, c]
                ok = np.isfinite(m) & (m > 0)
                if not ok.any():
                    continue
                slope = float(slopes.values[j, t, c])
                ax.plot(widths[ok], m[ok], "o-", color=color, ms=3,
                        label=f"{label} (slope {slope:.2f})")
                ax.fill_between(widths[ok], np.maximum(m[ok] - h[ok], m[ok] * 1e-3),
                                m[ok] + h[ok], color=color, alpha=0.2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width d")
            ax.set_title(f"component {labels[c]}")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("max-norm distance Δ")
        fig.suptitle(title or str(ds.attrs.get("experiment", "")))
        fig.tight_layout()
        path = child_location(directory, f"distance_{name}.png")
        with open_file(path, "wb", storage_options) as fh:
            fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
