"""benchmarks/bench_gpu.py runs where CI runs: its help needs no GPU and imports neither Ray, Dask
nor Zarr (the GPU machines have none), and its PCG step at a small N meets its tolerance with
ridge: auto checked against the dense Gram."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jntk_dist import kernels

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_help_and_imports_without_ray_dask_zarr() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--precond" in out.stdout and "--budget-s" in out.stdout
    code = (f"import runpy, sys; runpy.run_path({str(SCRIPT)!r}, run_name='bench')\n"
            "import jntk_dist.kernels, jntk_dist.operators, jntk_dist.solvers\n"
            "import jntk_dist.data.images\n"  # what its steps import
            "bad = [m for m in ('ray', 'dask', 'zarr') if m in sys.modules]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr


def test_solve_step_meets_its_tolerance_with_ridge_auto() -> None:
    bench = _script()
    args = bench.parse(["--device", "cpu", "--no-progress", "--tol", "1e-8"])
    record: dict = {}
    bench.step_solve(args, torch.device("cpu"), 24, record)
    s = record["solve"]["24"]
    X, _ = bench.inputs(args, 24)
    G = kernels.gram(X, depth=args.depth, activation=args.activation, lam=args.lam)
    assert s["ridge"] == pytest.approx(0.01 * np.trace(G) / G.shape[0], rel=1e-12)
    assert s["converged"] and s["true_residual"] <= 1e-8 and s["preconditioner"] == "pca"
    assert s["unknowns"] == 24 * 785
