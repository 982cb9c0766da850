"""pca (float64 coarse factor) against pca_refined (float32 coarse factor refined in float64):
PCG iterations to ``--tol``, set-up and total time, the coarse factor's bytes, and the ratios
refined / float64 measured in the same run (the target: iterations ≤ 1.15×, factor ≤ ½).

    python benchmarks/bench_refined.py --n 1000          # digits 8×8, erf L = 3, λ = 0.1, μ = 1e-3

Exits non-zero when either solve misses the tolerance or the dense-free check of the solutions
(their difference relative to the float64 path's solution) is above 1e-5.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time

import numpy as np
import torch

from jntk_dist.data import load_dataset
from jntk_dist.operators import structured_operator
from jntk_dist.solvers import PcaCoarsePreconditioner, structured_solve
from jntk_dist.solvers.refined import RefinedPcaPreconditioner


def run(cls: type, op, y: np.ndarray, mu: float, tol: float, k: int | None) -> dict:
    t0 = time.perf_counter()
    P = cls(op, ridge=mu, k=k)
    setup = time.perf_counter() - t0
    res = structured_solve(op, y, ridge=mu, tol=tol, preconditioner=P, progress=False,
                           maxiter=2000)
    total = time.perf_counter() - t0
    return dict(name=P.name, k=P.k, it=res.iterations, ok=res.converged, setup=setup,
                total=total, factor=P.Lc.nbytes, x=res.x, rel=res.residual,
                refine=getattr(P, "refine_products", 0),
                worst=getattr(P, "worst_coarse_residual", 0.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--mu", type=float, default=1e-3)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refined-first", action="store_true",
                    help="run pca_refined first (at pca's chosen k), to see the order's effect")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("digits")
    X, y = ds.X[:args.n], ds.y[:args.n]
    op = structured_operator(X, depth=3, activation="erf", lam=0.1)
    if args.refined_first:
        b = run(RefinedPcaPreconditioner, op, y, args.mu, args.tol, None)
        a = run(PcaCoarsePreconditioner, op, y, args.mu, args.tol, b["k"])
    else:
        a = run(PcaCoarsePreconditioner, op, y, args.mu, args.tol, None)
        b = run(RefinedPcaPreconditioner, op, y, args.mu, args.tol, a["k"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit},"
          f" digits 8×8 N = {args.n}, erf L = 3, λ = 0.1, μ = {args.mu}, tol {args.tol}, "
          f"{args.threads} threads{', pca_refined first' if args.refined_first else ''}")
    for r in (a, b):
        print(f"{r['name']:12s} k = {r['k']:2d}  iterations {r['it']:4d}  converged {r['ok']}  "
              f"rel. residual {r['rel']:.1e}  set-up {r['setup']:6.1f} s  total {r['total']:6.1f} s"
              f"  coarse factor {r['factor'] / 1e6:7.1f} MB  refinement products {r['refine']}"
              f"  worst coarse residual {r['worst']:.1e}")
    diff = np.linalg.norm(b["x"] - a["x"]) / np.linalg.norm(a["x"])
    print(f"refined / float64: iterations {b['it'] / a['it']:.3f}, total time "
          f"{b['total'] / a['total']:.2f}, coarse factor {b['factor'] / a['factor']:.2f}; "
          f"‖x_refined − x_float64‖/‖x_float64‖ = {diff:.1e}")
    return 0 if a["ok"] and b["ok"] and diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
