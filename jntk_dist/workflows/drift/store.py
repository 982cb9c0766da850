"""The drift result store: one Zarr group with dimensions (width, depth, seed, step, component),
one chunk per run, written by the driver as each run finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ...networks.training import component_label
from ...store.locations import open_group, zarr_target
from ..config import config_diff
from .config import DriftConfig
from .runs import RunData, RunSpec
from ...errors import StoreError

RUN_FIELDS_STEP = ("loss", "train_accuracy", "test_accuracy")
RUN_FIELDS_COMPONENT = ("distance", "drift", "mc_floor")  # mc_floor: Fig. 1 (NaN otherwise)


def create_store(path: Path | str, config: DriftConfig, data: RunData) -> None:
    g = config.grid
    n_w, n_d, n_s = len(g.widths), len(g.depths), len(g.seeds)
    n_t, n_c = len(config.training.record_steps), len(config.components)
    root = open_group(path, "w", config.options_for(path))
    coords = {"width": g.widths, "depth": g.depths, "seed": g.seeds,
              "step": config.training.record_steps}
    for name, values in coords.items():
        root.create_array(name, data=np.asarray(values, dtype=np.int64), dimension_names=[name])
    root.create_array("alpha", data=np.asarray([a for a, _ in config.components], np.int64),
                      dimension_names=["component"])
    root.create_array("beta", data=np.asarray([b for _, b in config.components], np.int64),
                      dimension_names=["component"])
    for name in RUN_FIELDS_COMPONENT:
        a = root.create_array(name, shape=(n_w, n_d, n_s, n_t, n_c), dtype="f8",
                              chunks=(1, 1, 1, n_t, n_c), fill_value=np.nan,
                              dimension_names=["width", "depth", "seed", "step", "component"])
        a.attrs["coordinates"] = "alpha beta"
    for name in RUN_FIELDS_STEP:
        root.create_array(name, shape=(n_w, n_d, n_s, n_t), dtype="f8", chunks=(1, 1, 1, n_t),
                          fill_value=np.nan, dimension_names=["width", "depth", "seed", "step"])
    for name in ("complete", "attempts", "resumed_from_step"):
        root.create_array(name, shape=(n_w, n_d, n_s), dtype="i8", chunks=(1, 1, 1),
                          fill_value=0, dimension_names=["width", "depth", "seed"])
    for name in ("started", "finished"):
        root.create_array(name, shape=(n_w, n_d, n_s), dtype="f8", chunks=(1, 1, 1),
                          fill_value=np.nan, dimension_names=["width", "depth", "seed"])
    root.attrs.update({
        "kind": "jntk_dist.drift", "version": __version__, "experiment": config.experiment,
        "kernel": "jntk" if config.experiment == "jntk" else "jacobian_nngp",
        "kappa_scaling": "kernels divided by kappa^2", "config": config.recorded(),
        "identity": config.identity(), "n_points": int(data.x.shape[0]), "d0": int(data.x.shape[1]),
        "components": [component_label(a, b) for a, b in config.components],
        "distance": "max_{i,j} |K_finite(x_i,x_j)_{ab} - K_analytic(x_i,x_j)_{ab}|",
        "drift": "max_{i,j} |Theta_{d,theta_t} - Theta_{d,theta_0}|_{ab}",
        "mc_floor": "E max_{i,j} |se_ij Z_ij|, Z standard normal: Delta from Monte-Carlo error alone",
    })


def check_store(path: Path | str, config: DriftConfig) -> None:
    root = open_group(path, "r", config.options_for(path))
    if root.attrs.get("kind") != "jntk_dist.drift":
        raise StoreError(f"{path} exists and is not a drift result store; choose another output "
                         "or pass --overwrite")
    old = root.attrs.get("identity", {})
    diff = config_diff(old, config.identity())
    if diff:
        raise StoreError(f"{path} was written by a different config ({'; '.join(diff[:5])}); "
                         "choose another output or pass --overwrite")


def write_run(path: Path | str, spec: RunSpec, result: dict[str, Any],
               storage_options: dict[str, Any] | None = None) -> None:
    root = open_group(path, "r+", storage_options)
    i, j, k = spec.position
    for name in RUN_FIELDS_COMPONENT + RUN_FIELDS_STEP:
        if name not in root:  # a store written before the field existed (mc_floor)
            continue
        values = np.asarray(result[name], dtype=np.float64)
        expected = root[name].shape[3:]
        if values.shape != expected:
            raise ValueError(f"run {spec.run_id} returned {name} of shape {values.shape}, "
                             f"expected {expected}")
        root[name][i, j, k] = values
    for name in ("attempts", "resumed_from_step", "started", "finished"):
        root[name][i, j, k] = result[name]
    root["complete"][i, j, k] = 1  # written last: a set flag means the chunk above is whole


def open_drift(path: str | Path, storage_options: dict[str, Any] | None = None) -> Any:
    """The result store (a local path or an fsspec URL, ``storage_options`` for fsspec) as an
    ``xarray.Dataset`` (dims width, depth, seed, step, component). A local ``.json`` file is
    read as the grid of ``benchmarks/run_fig1_fig3_gpu.py`` (the same arrays)."""
    import xarray as xr

    if str(path).endswith(".json"):
        return _open_json(Path(path))
    ds = xr.open_zarr(zarr_target(path, storage_options, read_only=True), consolidated=False)
    return ds.set_coords([c for c in ("alpha", "beta") if c in ds.variables])


def _open_json(path: Path) -> Any:
    """The JSON grid of ``benchmarks/run_fig1_fig3_gpu.py`` as the Dataset :func:`open_drift`
    gives for a Zarr store (every run of it complete)."""
    import json

    import xarray as xr

    data = json.loads(path.read_text())
    if data.get("kind") != "jntk_dist.drift.json":
        raise StoreError(f"{path} is not a drift grid written by run_fig1_fig3_gpu.py")
    dims = ["width", "depth", "seed", "step", "component"]
    shape = tuple(len(data[d]) for d in dims[:4])

    def arr(name: str) -> Any:
        return np.array(data[name], dtype=np.float64)

    ds = xr.Dataset(
        {**{f: (dims, arr(f)) for f in RUN_FIELDS_COMPONENT},
         **{f: (dims[:4], arr(f)) for f in RUN_FIELDS_STEP},
         "complete": (dims[:3], np.ones(shape[:3], dtype=np.int64)),
         "run_seconds": (dims[:3], arr("run_seconds"))},
        coords={**{d: np.asarray(data[d], dtype=np.int64) for d in dims[:4]},
                "alpha": ("component", np.asarray(data["alpha"], dtype=np.int64)),
                "beta": ("component", np.asarray(data["beta"], dtype=np.int64))},
        attrs={k: data[k] for k in ("kind", "experiment", "n_points", "d0")})
    return ds
