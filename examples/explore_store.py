# %% [markdown]
# # Exploring jntk stores: a Gram heatmap, its spectrum, and kernel drift curves
#
# What it reads, and the command (run in the repository folder) that makes each input:
#
#     jntk gram configs/quickstart.yaml     # -> runs/quickstart.zarr   (the README quickstart)
#     jntk drift configs/drift_quick.yaml   # -> runs/drift_quick.zarr  (~30 s; drift curves)
#
# A section whose input is not there yet is skipped with a note naming its command. Open the
# notebook where it lives (`jupyter lab examples/explore_store.ipynb`) or anywhere in the
# repository: relative paths are taken from the repository folder (the first of the working
# folder and its parents that holds `configs/quickstart.yaml`). The next cell holds the
# parameters (tagged `parameters`, so `papermill -p GRAM_STORE …` can set them).
#
# `examples/explore_store.py` is the plain-script twin (the notebook's cells are its `# %%`
# cells, written by `examples/sync_notebook.py`):
#
#     python examples/explore_store.py --gram runs/quickstart.zarr --drift runs/drift_quick.zarr
#
# Stores are read with xarray / Zarr only (no pickle). On a cluster, copy a store locally or open
# it where it lies (a shared file system mounted on the notebook's machine).

# %% tags=["parameters"]
GRAM_STORE = "runs/quickstart.zarr"      # made by: jntk gram configs/quickstart.yaml
DRIFT_STORE = "runs/drift_quick.zarr"    # made by: jntk drift configs/drift_quick.yaml
OUT_DIR = "runs/explore"                 # the PNGs are written here
HEATMAP_POINTS = 6                       # the heatmap shows the first points' blocks
LAM = None                               # λ of Θ_λ; None: the λ the store records

# %%
import argparse
import json
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: arguments override the parameters
    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description="Gram heatmap, spectrum and drift curves of "
                                                 "jntk stores, as PNGs.")
    parser.add_argument("--gram", help=f"Gram store, jntk gram output (default {GRAM_STORE})")
    parser.add_argument("--drift", help="drift store, jntk drift output; 'none' to skip "
                                        f"(default {DRIFT_STORE})")
    parser.add_argument("--out", help=f"folder for the PNGs (default {OUT_DIR})")
    parser.add_argument("--points", type=int, default=HEATMAP_POINTS,
                        help="points shown in the heatmap")
    parser.add_argument("--lam", type=float, default=LAM, help="λ of Θ_λ (default: the store's)")
    args = parser.parse_args()
    # paths given here are the shell's: relative to the working folder
    GRAM_STORE = str(Path(args.gram).resolve()) if args.gram else GRAM_STORE
    if args.drift:
        DRIFT_STORE = None if args.drift.lower() == "none" else str(Path(args.drift).resolve())
    OUT_DIR = str(Path(args.out).resolve()) if args.out else OUT_DIR
    HEATMAP_POINTS, LAM = args.points, args.lam

import matplotlib.pyplot as plt
import numpy as np


def repository() -> Path:
    """The first of the working folder and its parents that holds configs/quickstart.yaml."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "configs/quickstart.yaml").is_file()),
                here)


REPO = repository()


def in_repo(path: str) -> Path:
    """A parameter's path: absolute as given, relative ones from the repository folder."""
    return Path(path).expanduser() if Path(path).expanduser().is_absolute() else REPO / path


def have(store: str | None, command: str, what: str) -> bool:
    """Whether ``store`` exists; if not, a note naming the command that makes it."""
    if store is not None and in_repo(store).exists():
        return True
    print(f"{what} skipped: no store at {in_repo(store) if store else '(none given)'}; make it "
          f"with `{command}` in {REPO}")
    return False


def show(fig, name: str) -> None:
    """Write ``fig`` as <OUT_DIR>/<name>.png, show it in a notebook, close it."""
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    if "ipykernel" in sys.modules:
        from IPython.display import display

        display(fig)
    plt.close(fig)


out_dir = in_repo(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
HAVE_GRAM = have(GRAM_STORE, "jntk gram configs/quickstart.yaml", "heatmap and spectrum")
HAVE_DRIFT = have(DRIFT_STORE, "jntk drift configs/drift_quick.yaml", "drift curves")

# %% [markdown]
# ## The Gram store with xarray
# Every array carries dimension names, so `xarray.open_zarr` shows labelled, lazy (Dask) arrays.
# The store keeps the unscaled kernel Θ; its attributes say what it is.
# A chunk lost after the store was finished reads here as NaN (the arrays' fill value; the writer
# never stores a NaN, so NaN always means missing); `open_gram` below, `store.to_xarray()` and
# `jntk verify` refuse such a store and name the chunk.

# %%
import xarray as xr

if HAVE_GRAM:
    gram = xr.open_zarr(in_repo(GRAM_STORE))
    attrs = gram.attrs
    print(gram)
    print(f"{attrs['kernel']} of depth {attrs['depth']}, activation {attrs['activation']}, "
          f"dataset {attrs['dataset']}, stored λ {attrs.get('lam')}, "
          f"complete: {attrs.get('complete')}")

# %% [markdown]
# ## Heatmap of Θ_λ over the first points
# Row i·(d0+1)+α is point i, component α (0 = the output f, 1..d0 = the input Jacobian ∂f/∂x_α);
# the grid separates the points' (d0+1)×(d0+1) blocks. Θ_λ = ΛΘΛ, Λ = diag(1, √λ, …, √λ), is
# read with an explicit λ (the store's, unless `LAM` says otherwise; λ = 1 is the unscaled Θ).
# Its entries span four decades (output–output ≈ 1, Jacobian–Jacobian ≈ λ·10⁻¹…λ·10⁻³), so the
# colour scale is symmetric-logarithmic: sign by colour, magnitude by depth of colour.

# %%
from matplotlib.colors import SymLogNorm

from jntk_dist.store import open_gram

if HAVE_GRAM:
    store = open_gram(in_repo(GRAM_STORE))
    lam = LAM if LAM is not None else (store.lam if store.lam is not None else 1.0)
    kernel = "Θ" if lam == 1.0 else f"Θ_λ (λ = {lam:g})"
    n_points, p = store.layout.n_points, store.layout.d0 + 1
    k = min(HEATMAP_POINTS, n_points)
    block = store.read(slice(0, k * p), slice(0, k * p), lam=lam)
    if store.mode == "dense":  # the xarray view holds the same numbers: Θ, λ = 1
        assert np.array_equal(gram["gram"][:k * p, :k * p].values,
                              store.read(slice(0, k * p), slice(0, k * p), lam=1.0))
    vmax = float(np.abs(block).max())
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(block, cmap="RdBu_r", interpolation="nearest",
                      norm=SymLogNorm(linthresh=1e-4 * vmax, linscale=0.5, vmin=-vmax, vmax=vmax))
    for edge in range(1, k):
        ax.axhline(edge * p - 0.5, color="k", lw=0.6)
        ax.axvline(edge * p - 0.5, color="k", lw=0.6)
    ax.set_xticks(np.arange(k) * p + (p - 1) / 2, [f"x{i}" for i in range(k)])
    ax.set_yticks(np.arange(k) * p + (p - 1) / 2, [f"x{i}" for i in range(k)])
    top = int(np.floor(np.log10(vmax)))
    decades = [10.0 ** (top - i) for i in range(4)]  # all above the linear band ±1e-4·vmax
    fig.colorbar(image, ax=ax, shrink=0.8, ticks=[*decades, 0.0, *(-d for d in decades)],
                 label=f"{kernel} (symmetric log, linear within ±{1e-4 * vmax:.1e})")
    ax.set_title(f"{store.kind} {kernel}: first {k} points, {p}×{p} blocks")
    fig.tight_layout()
    show(fig, "gram_heatmap")

# %% [markdown]
# ## Spectrum of Θ_λ
# The whole lazy Gram (one Dask chunk per tile, the same explicit λ) goes to
# `jntk_dist.solvers.eigen`: the full spectrum when it fits one machine, the top eigenvalues and
# λ_min by Lanczos beyond. λ_min is called positive only above τ = n·eps·λ_max.

# %%
from jntk_dist import solvers

if HAVE_GRAM:
    spectra = solvers.eigen(store.dask_array(lam=lam), vectors=False)
    spectrum = spectra.get("full") or spectra["top"]
    lambda_min = (spectra["full"] if "full" in spectra else spectra["bottom"]).lambda_min
    values = np.sort(spectrum.values)[::-1]
    print(f"{kernel}, spectrum by {spectrum.method}: lambda_max={spectrum.lambda_max:.6e} "
          f"lambda_min={lambda_min:.6e} tau={spectrum.tolerance:.3e} "
          f"positive={lambda_min > spectrum.tolerance}")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(np.arange(1, values.size + 1), np.clip(values, spectrum.tolerance / 10, None),
                ".", ms=3)
    ax.axhline(spectrum.tolerance, color="r", lw=0.8, ls="--", label="τ = n·eps·λ_max")
    ax.set_xlabel("index (descending)")
    ax.set_ylabel(f"eigenvalue of {kernel}")
    ax.set_title(f"spectrum, n = {spectrum.n}")
    ax.legend()
    fig.tight_layout()
    show(fig, "gram_spectrum")

# %% [markdown]
# ## Kernel drift curves
# A `jntk drift` store has dims (width, depth, seed, step, component): Δ = max_{i,j} |finite −
# analytic kernel| per block component. The figures are the ones `jntk drift` writes
# (`jntk_dist.workflows.drift.drift_figures`): mean Δ over seeds against width on log-log axes
# with 95% bands, each curve's fitted slope and a dashed width^(-1/2) guide, which the curves
# should follow.

# %%
from jntk_dist.workflows.drift import drift_figures, open_drift

if HAVE_DRIFT:
    drift = open_drift(in_repo(DRIFT_STORE))
    for name, fig in drift_figures(drift):
        show(fig, f"drift_{name}")
    labels = drift.attrs["components"]
    mean = drift["distance"].where(drift["complete"] == 1).mean("seed")
    widest = {label: float(mean.isel(width=-1, component=c).max())
              for c, label in enumerate(labels)}
    print("mean distance at the widest network:", json.dumps(widest))

# %%
print("figures in", out_dir, sorted(p.name for p in out_dir.glob("*.png")))
