"""The pca preconditioner with its coarse factor local vs held in block rows by Ray actors.

    python benchmarks/bench_distributed_coarse.py                  # 300 digits 8×8, 2 actors
    python benchmarks/bench_distributed_coarse.py --points 100     # a quick run

Both on the same operator (digits 8×8, erf L = 3, λ = 0.1, μ = 1e-3, float64) with the same
coarse space (k, tile, fields held or not), in one run: set-up seconds, PCG iterations and
seconds to ``--tol``, the relative gap between the two coarse factors (‖L_ray − L‖/‖L‖), the
relative gap between the solutions, the actor calls of the set-up and the tiles each actor
holds against the local coarse matrix. Starts its own local Ray (``ray.init(num_cpus=...)``)
and ends it. Exits 1 when a solve misses its tolerance, the factors differ by more than 1e-10
or the iterations differ.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Run both set-ups and solves, print the table; 1 when a check fails."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=300)
    ap.add_argument("--k", type=int, default=None, help="PCA directions (default: chosen)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=None, help="block rows (default 2·actors)")
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--ray-cpus", type=int, default=2)
    args = ap.parse_args(argv)

    import ray

    from jntk_dist.data import load_dataset
    from jntk_dist.operators import structured_operator
    from jntk_dist.solvers import PcaCoarsePreconditioner, structured_solve
    from jntk_dist.solvers.coarse import choose_pca_rank
    from jntk_dist.solvers.distributed_coarse import RayPcaCoarsePreconditioner

    ds = load_dataset("digits")
    X, y = ds.X[:args.points], ds.y[:args.points]
    op = structured_operator(X, depth=3, activation="erf", lam=0.1)
    k = choose_pca_rank(op.x1) if args.k is None else args.k
    options = dict(k=k, factor_dtype=torch.float64, hold_fields=True)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        local, t_local = _timed(lambda: PcaCoarsePreconditioner(op, ridge=1e-3, **options))
        dist, t_dist = _timed(lambda: RayPcaCoarsePreconditioner(
            op, ridge=1e-3, n_actors=args.actors, n_blocks=args.blocks, **options))
        calls = dist.factor.messages
        gap = float(np.linalg.norm(dist.factor.lower() - torch.tril(local.Lc).numpy())
                    / torch.linalg.norm(local.Lc))
        runs = {}
        for name, M in (("local", local), ("ray", dist)):
            runs[name] = _timed(lambda M=M: structured_solve(op, y, ridge=1e-3, tol=args.tol,
                                                             preconditioner=M, progress=False))
        held = dist.factor.bytes_per_actor()
        dist.shutdown()
    finally:
        ray.shutdown()
    (lr, ls), (rr, rs) = runs["local"], runs["ray"]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    M_bytes = (len(y) * (k + 2)) ** 2 * 8
    print(f"{datetime.date.today()} commit {commit}: digits N = {len(y)}, k = {k}, coarse "
          f"M = {len(y) * (k + 2)}, {args.actors} actors, {dist.n_blocks} block rows, "
          f"assembled on the {dist.assembled_on}, torch threads {torch.get_num_threads()}")
    print("| coarse | set-up s | PCG iterations | PCG s | coarse bytes held |")
    print(f"| local | {t_local:.2f} | {lr.iterations} | {ls:.2f} | {M_bytes / 2**20:.1f} MiB |")
    print(f"| ray | {t_dist:.2f} ({t_dist / t_local:.2f}×) | {rr.iterations} | {rs:.2f} "
          f"({rs / ls:.2f}×) | {' + '.join(f'{b / 2**20:.1f}' for b in held)} MiB |")
    x_gap = float(np.linalg.norm(rr.x - lr.x) / np.linalg.norm(lr.x))
    print(f"factor gap {gap:.2e}; solution gap {x_gap:.2e}; set-up actor calls {calls}")
    ok = lr.converged and rr.converged and gap <= 1e-10 and lr.iterations == rr.iterations
    if not ok:
        print("FAILED: a solve missed its tolerance, the factors differ or the iterations differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
