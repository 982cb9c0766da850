# %% [markdown]
# # Exploring jntk stores: a Gram heatmap, its spectrum, and kernel drift curves
#
# The plain-script twin of `examples/explore_store.ipynb` (the notebook's code cells are the
# `# %%` cells of this file, in order; `tests/test_examples.py` checks that and runs the script).
#
#     jntk gram configs/quickstart.yaml            # -> runs/quickstart.zarr
#     jntk drift configs/drift_quick.yaml          # -> runs/drift_quick.zarr (optional)
#     python examples/explore_store.py --gram runs/quickstart.zarr --drift runs/drift_quick.zarr
#
# Stores are read with xarray / Zarr only (no pickle). On a cluster, copy the store locally or open
# it where it lies (a shared file system mounted on the notebook's machine).

# %%
# Parameters: edit here in the notebook; the script takes them from the command line.
import argparse
import json
import sys
from pathlib import Path

GRAM_STORE = "runs/quickstart.zarr"
DRIFT_STORE: str | None = "runs/drift_quick.zarr"   # None (or a missing path): no drift plots
OUT_DIR = "runs/explore"                              # PNGs are written here
HEATMAP_POINTS = 12                                   # the heatmap shows the first points' blocks
LAM: float | None = None                              # λ of Θ_λ; None: the λ the store records

if "ipykernel" not in sys.modules:  # run as a script
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description="Gram heatmap, spectrum and drift curves of "
                                                 "jntk stores, as PNGs.")
    parser.add_argument("--gram", default=GRAM_STORE, help="Gram store (jntk gram output)")
    parser.add_argument("--drift", default=DRIFT_STORE,
                        help="drift result store (jntk drift output); 'none' to skip")
    parser.add_argument("--out", default=OUT_DIR, help="folder for the PNGs")
    parser.add_argument("--points", type=int, default=HEATMAP_POINTS,
                        help="points shown in the heatmap")
    parser.add_argument("--lam", type=float, default=LAM, help="λ of Θ_λ (default: the store's)")
    args = parser.parse_args()
    GRAM_STORE, OUT_DIR, HEATMAP_POINTS, LAM = args.gram, args.out, args.points, args.lam
    DRIFT_STORE = None if str(args.drift).lower() == "none" else args.drift

out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The Gram store with xarray
# Every array carries dimension names, so `xarray.open_zarr` shows labelled, lazy (Dask) arrays.
# The store keeps the unscaled kernel; its attributes say what it is.

# %%
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

gram = xr.open_zarr(GRAM_STORE)
attrs = gram.attrs
print(gram)
print(f"{attrs['kernel']} of depth {attrs['depth']}, activation {attrs['activation']}, "
      f"dataset {attrs['dataset']}, complete: {attrs.get('complete')}")

# %% [markdown]
# ## Heatmap of Θ_λ over the first points
# Row i·(d0+1)+α is point i, component α (0 = the output, 1..d0 = the input Jacobian). λ is
# applied on read by `jntk_dist.store` (Θ_λ = ΛΘΛ), the same code every job uses.

# %%
from jntk_dist.store import open_gram

store = open_gram(GRAM_STORE)
lam = LAM if LAM is not None else store.lam
n_points, d0 = store.layout.n_points, store.layout.d0
m = min(HEATMAP_POINTS, n_points) * (d0 + 1)
block = store.read(slice(0, m), slice(0, m), lam=lam)
if store.mode == "dense":  # the xarray view holds the same (unscaled) numbers
    assert np.array_equal(gram["gram"][:m, :m].values, store.read(slice(0, m), slice(0, m)))

fig, ax = plt.subplots(figsize=(6, 5))
vmax = np.abs(block).max()
image = ax.imshow(block, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
for k in range(1, m // (d0 + 1)):
    ax.axhline(k * (d0 + 1) - 0.5, color="k", lw=0.3)
    ax.axvline(k * (d0 + 1) - 0.5, color="k", lw=0.3)
fig.colorbar(image, ax=ax, shrink=0.8)
ax.set_title(f"{store.kind} Θ_λ (λ={lam}), first {m // (d0 + 1)} points, blocks of {d0 + 1}")
ax.set_xlabel("gram_col")
ax.set_ylabel("gram_row")
fig.tight_layout()
fig.savefig(out_dir / "gram_heatmap.png", dpi=120)
plt.show()
plt.close(fig)

# %% [markdown]
# ## Spectrum of Θ_λ
# The whole lazy Gram (one Dask chunk per tile) goes to `jntk_dist.solvers.eigen`: the full
# spectrum when it fits one machine, the top eigenvalues and λ_min by Lanczos beyond. λ_min is
# called positive only above τ = n·eps·λ_max.

# %%
from jntk_dist import solvers

spectra = solvers.eigen(store.dask_array(lam=lam), vectors=False)
spectrum = spectra.get("full") or spectra["top"]
lambda_min = (spectra["full"] if "full" in spectra else spectra["bottom"]).lambda_min
values = np.sort(spectrum.values)[::-1]
print(f"spectrum by {spectrum.method}: lambda_max={spectrum.lambda_max:.6e} "
      f"lambda_min={lambda_min:.6e} tau={spectrum.tolerance:.3e} "
      f"positive={lambda_min > spectrum.tolerance}")

fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogy(np.arange(1, values.size + 1), np.clip(values, spectrum.tolerance / 10, None), ".",
            ms=3)
ax.axhline(spectrum.tolerance, color="r", lw=0.8, ls="--", label="τ = n·eps·λ_max")
ax.set_xlabel("index (descending)")
ax.set_ylabel("eigenvalue of Θ_λ")
ax.set_title(f"spectrum, n = {spectrum.n}")
ax.legend()
fig.tight_layout()
fig.savefig(out_dir / "gram_spectrum.png", dpi=120)
plt.show()
plt.close(fig)

# %% [markdown]
# ## Kernel drift curves
# A `jntk drift` store has dims (width, depth, seed, step, component): Δ = max_{i,j} |finite −
# analytic kernel| per block component. The mean over seeds against width on log-log axes should
# fall like width^(-1/2).

# %%
if DRIFT_STORE is None or not Path(DRIFT_STORE).exists():
    print(f"no drift store at {DRIFT_STORE!r}: drift plots skipped")
else:
    drift = xr.open_zarr(DRIFT_STORE, consolidated=False)
    labels = drift.attrs["components"]
    distance = drift["distance"].where(drift["complete"] == 1)
    mean = distance.mean("seed")
    steps = drift["step"].values
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.5), squeeze=False)
    for c, (ax, label) in enumerate(zip(axes[0], labels)):
        for depth in drift["depth"].values:
            for step in (steps[0], steps[-1]) if steps.size > 1 else steps:
                curve = mean.sel(depth=depth, step=step).isel(component=c)
                ax.loglog(drift["width"].values, curve.values, "o-", ms=3,
                          label=f"L={depth}, t={step}")
        ax.set_title(f"component {label}")
        ax.set_xlabel("width")
    axes[0][0].set_ylabel("mean Δ over seeds")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "drift_curves.png", dpi=120)
    plt.show()
    plt.close(fig)
    widest = {label: float(mean.isel(width=-1, component=c).max())
              for c, label in enumerate(labels)}
    print("mean distance at the widest network:", json.dumps(widest))

# %%
print("figures in", out_dir.resolve(), sorted(p.name for p in out_dir.glob("*.png")))
