"""Figs. 1 and 3 at the paper's widths (2^6–2^13) on one GPU, with torch and numpy only.

    python benchmarks/run_fig1_fig3_gpu.py --out runs/paper                 # both figures, CUDA
    python benchmarks/run_fig1_fig3_gpu.py --only fig3_gpu --out runs/paper  # one of them
    python benchmarks/run_fig1_fig3_gpu.py --quick --device cpu --out /tmp/r # the CI size, CPU
    jntk report --runs runs/paper                                           # then the report

The grids are those of ``configs/paper/fig1_gpu.yaml`` and ``fig3_gpu.yaml`` (written out in
:data:`PLANS`, since a GPU machine may have no YAML reader; ``tests/test_gpu_script.py`` keeps the
two equal). Each run uses the drift job's per-run code — :func:`mc_jacobian_nngp` +
:func:`mc_distance` (Fig. 1), :class:`FiniteMLP` + :class:`RobustTrainer` (Fig. 3) — without Ray,
Dask or Zarr, one run after another on one device. Per figure it writes ``<out>/<name>/<name>.json``
(the drift store's arrays) and ``<out>/<name>/run.json`` (status, wall time, hardware, the grid),
which ``jntk report`` reads like any run of ``jntk reproduce``.

Estimated wall time of the full grids on one H100 or H200 (from flop counts, not measured:
TF32 matmuls at an assumed 200 TFLOP/s sustained): Fig. 1 ~1–2 min (2 seeds × 10^4 networks per
run; the paper used 10 × 10^6), Fig. 3 ~4 min (2 seeds × 2^11 steps; the paper used 10 seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree, uninstalled

from jntk_dist import kernels  # noqa: E402
from jntk_dist.data import load_dataset, split_xy  # noqa: E402
from jntk_dist.networks import (FiniteMLP, RobustTrainer, mc_distance,  # noqa: E402
                                mc_jacobian_nngp)

COMPONENTS = [(0, 0), (2, 2), (0, 2), (1, 2)]
PAPER_WIDTHS = [2 ** k for k in range(6, 14)]

PLANS: dict[str, dict[str, Any]] = {
    "fig1_gpu": {
        "figures": ["Fig. 1"], "experiment": "nngp",
        "dataset": {"name": "fibonacci", "options": {"n": 256, "d": 4}},
        "grid": {"widths": PAPER_WIDTHS, "depths": [1, 2, 3], "seeds": [0, 1]},
        "network": {"activation": "gelu", "kappa": 0.1},
        "training": {"record_steps": [0]},
        "monte_carlo": {"n_networks": 10_000, "segments": 1},
        "dtype": "float32", "matmul_precision": "high",
    },
    "fig3_gpu": {
        "figures": ["Fig. 3"], "experiment": "jntk",
        "dataset": {"name": "forest_fires"}, "test_fraction": 0.2,
        "grid": {"widths": PAPER_WIDTHS, "depths": [11], "seeds": [0, 1]},
        "network": {"activation": "gelu", "kappa": 0.1},
        "training": {"lam": 0.01, "lr": 1.0, "record_steps": [0] + [2 ** k for k in range(12)]},
        "dtype": "float32", "matmul_precision": "high",
    },
}
QUICK: dict[str, dict[str, Any]] = {  # the configs' quick: blocks (CPU, seconds)
    "fig1_gpu": {"dataset": {"name": "fibonacci", "options": {"n": 8, "d": 4}},
                 "grid": {"widths": [2, 4, 8], "depths": [2, 3], "seeds": [0]},
                 "monte_carlo": {"n_networks": 30_000, "segments": 1},
                 "matmul_precision": "highest"},
    "fig3_gpu": {"max_points": 16,
                 "grid": {"widths": [16, 32, 64], "depths": [11], "seeds": [0]},
                 "training": {"lam": 0.01, "lr": 1.0, "record_steps": [0, 1, 2, 4, 8, 16]},
                 "matmul_precision": "highest"},
}


def plan(name: str, quick: bool) -> dict[str, Any]:
    """The grid and settings of one figure (with its quick changes)."""
    out = copy.deepcopy(PLANS[name])
    if quick:
        out.update(copy.deepcopy(QUICK[name]))
    return out


def load_points(p: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """(x, y, x_test, y_test) as the drift job loads them (split, then the first max_points)."""
    spec = p["dataset"]
    ds = load_dataset(spec["name"], **spec.get("options", {}))
    X, y, xt, yt = ds.X, ds.y, None, None
    if p.get("test_fraction") is not None:
        X, y, xt, yt = split_xy(X, y, p["test_fraction"], 0)
    if p.get("max_points"):
        X, y = X[:p["max_points"]], y[:p["max_points"]]
    return X, y, xt, yt


def nngp_run(p: dict[str, Any], x: torch.Tensor, width: int, depth: int, seed: int
             ) -> dict[str, Any]:
    """Fig. 1, one run: Δ and its Monte-Carlo floor per component (the drift job's measurement)."""
    idx = sorted({i for c in COMPONENTS for i in c})
    act = p["network"]["activation"]
    mc = mc_jacobian_nngp(x, depth=depth, width=width, activation=act,
                          n_networks=p["monte_carlo"]["n_networks"], seed=seed * 1_000_003,
                          indices=idx, dtype=x.dtype)
    sigma = kernels.jacobian_nngp(x, depth=depth, activation=act)[:, :, idx][:, :, :, idx]
    distance, floor = mc_distance(mc, sigma, COMPONENTS, idx)
    nan = [math.nan] * len(COMPONENTS)
    return {"distance": [distance], "mc_floor": [floor], "drift": [nan], "loss": [math.nan],
            "train_accuracy": [math.nan], "test_accuracy": [math.nan]}


def jntk_run(p: dict[str, Any], data: tuple[torch.Tensor | None, ...], width: int, depth: int,
             seed: int) -> dict[str, Any]:
    """Fig. 3, one run: robust training with the finite JNTK measured at the recorded steps."""
    x, y, xt, yt = data
    assert x is not None and y is not None
    t = p["training"]
    net = FiniteMLP(x.shape[1], width, depth, p["network"]["activation"],
                    p["network"]["kappa"], seed=seed, dtype=x.dtype, device=x.device)
    h = RobustTrainer(net, x, y, lam=t["lam"], lr=t["lr"], x_test=xt, y_test=yt,
                      components=COMPONENTS).run(t["record_steps"])
    nan = [[math.nan] * len(COMPONENTS)] * len(h.step)
    return {"distance": h.distance, "drift": h.drift, "mc_floor": nan, "loss": h.loss,
            "train_accuracy": h.train_accuracy, "test_accuracy": h.test_accuracy}


FIELDS = ("distance", "drift", "mc_floor", "loss", "train_accuracy", "test_accuracy")


def run_grid(p: dict[str, Any], device: torch.device, log: Any = print) -> dict[str, Any]:
    """Every run of the grid, narrow to wide; the arrays of the drift store, as lists."""
    dtype = getattr(torch, p["dtype"])
    arrays = [None if a is None else torch.tensor(a, dtype=dtype, device=device)
              for a in load_points(p)]
    g = p["grid"]
    shape = (len(g["widths"]), len(g["depths"]), len(g["seeds"]))
    out: dict[str, Any] = {k: np.full(shape, None, dtype=object) for k in FIELDS}
    seconds = np.zeros(shape)
    for i, w in enumerate(g["widths"]):
        for j, d in enumerate(g["depths"]):
            for k, s in enumerate(g["seeds"]):
                t0 = time.perf_counter()
                res = (nngp_run(p, arrays[0], w, d, s) if p["experiment"] == "nngp"
                       else jntk_run(p, arrays, w, d, s))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[i, j, k] = time.perf_counter() - t0
                for f in FIELDS:
                    out[f][i, j, k] = res[f]
                log(f"  width {w:5d} depth {d:2d} seed {s}: {seconds[i, j, k]:7.1f} s")
    x = arrays[0]
    assert x is not None
    return {"kind": "jntk_dist.drift.json", "experiment": p["experiment"],
            "n_points": int(x.shape[0]), "d0": int(x.shape[1]),
            "width": g["widths"], "depth": g["depths"], "seed": g["seeds"],
            "step": p["training"]["record_steps"], "alpha": [a for a, _ in COMPONENTS],
            "beta": [b for _, b in COMPONENTS], "run_seconds": seconds.tolist(),
            **{f: out[f].tolist() for f in FIELDS}}


def hardware(device: torch.device) -> dict[str, Any]:
    """Where the grid ran (the fields of a ``jntk reproduce`` record)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch": torch.__version__, "gpu": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 1)
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2**30, 1)
    except (OSError, ValueError, AttributeError):
        pass
    return info


def run_figure(name: str, out: Path, device: torch.device, quick: bool) -> dict[str, Any]:
    """One figure's grid into ``<out>/<name>/``; returns its run record (status failed on error)."""
    p = plan(name, quick)
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in p.items() if k != "figures"}
    config.update(device=device.type, components=COMPONENTS)
    record: dict[str, Any] = {
        "experiment": name, "job": "drift", "figures": p["figures"], "quick": quick,
        "overrides": [], "runner": "benchmarks/run_fig1_fig3_gpu.py",
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(device), "status": "failed", "config": config}
    t0 = time.perf_counter()
    try:
        torch.backends.cuda.matmul.allow_tf32 = p["matmul_precision"] == "high"
        result = run_grid(p, device)
        path = run_dir / f"{name}.json"
        path.write_text(json.dumps(result))
        record.update(status="ok", output=str(path))
    except Exception as err:  # recorded, as jntk reproduce does; the other figure still runs
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc(limit=8)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    (run_dir / "run.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the selected figures; one line per run and per figure; exit 1 if one failed."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="fig1_gpu,fig3_gpu", help="comma-separated figures")
    ap.add_argument("--out", default="runs/paper", help="runs folder (as jntk reproduce --out)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="the configs' quick sizes")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA device (use --device cpu)")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PLANS]
    if unknown:
        ap.error(f"unknown figure(s) {unknown}; choose from {list(PLANS)}")
    ok = True
    for name in names:
        print(f"{name} on {device} ({'quick' if args.quick else 'full size'}):", flush=True)
        rec = run_figure(name, Path(args.out), device, args.quick)
        ok &= rec["status"] == "ok"
        print(f"{name}: {rec['status']} in {rec['seconds']:.1f} s"
              + (f" — {rec.get('error')}" if rec["status"] != "ok" else ""), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
