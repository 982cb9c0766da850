"""Speed of the finite-width pieces: finite-JNTK throughput, training steps/s, drift-grid wall time.

    python benchmarks/bench_finite.py                       # everything (several minutes)
    python benchmarks/bench_finite.py --parts kernel,train  # no Ray
    python benchmarks/bench_finite.py --parts grid --backends tasks,train

Baselines measured in the same run:
* finite JNTK: the direct definition -- the materialised parameter Jacobian of (f, ∇ₓf) from
  ``torch.func.jacrev`` and J Jᵀ -- at the widths where it fits in memory;
* drift grid: the same grid with one run at a time (max_concurrent=1) vs two at once.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jntk_dist.networks.finite import FiniteMLP, finite_jntk, jet_forward


def unit_rows(n: int, d0: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, d0), generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def direct_jntk(net: FiniteMLP, x: torch.Tensor) -> torch.Tensor:
    """Baseline: Θ_d from the materialised Jacobian of F = (f, ∇ₓf) w.r.t. all parameters."""
    names = [f"weights.{i}" for i in range(len(net.weights))]
    params = {n: w.detach() for n, w in zip(names, net.weights)}

    def F(p: dict, xs: torch.Tensor) -> torch.Tensor:
        return jet_forward([p[n] for n in names], xs, net.activation, net.kappa)[0]

    J = torch.func.jacrev(F)(params, x)  # dict of (n, 1+d0, *shape)
    flat = torch.cat([j.reshape(x.shape[0] * (x.shape[1] + 1), -1) for j in J.values()], dim=1)
    gram = flat @ flat.T / net.kappa**2
    n, p = x.shape[0], x.shape[1] + 1
    return gram.reshape(n, p, n, p).permute(0, 2, 1, 3)


def bench_kernel(widths: list[int], depth: int, n: int, d0: int) -> None:
    print(f"\n## finite JNTK throughput (depth {depth}, n={n} points, d0={d0}, all "
          f"{(d0 + 1) ** 2} block entries, float64, {torch.get_num_threads()} threads)")
    print(f"{'width':>6} {'factors s':>10} {'entries/s':>12} {'direct s':>10} {'speed-up':>9}")
    x = unit_rows(n, d0)
    entries = n * n * (d0 + 1) ** 2
    for w in widths:
        net = FiniteMLP(d0, w, depth, "gelu", kappa=0.1, seed=0)
        finite_jntk(net, x)  # warm-up
        t = best_of(lambda: finite_jntk(net, x))
        params = sum(p.numel() for p in net.weights)
        if params * n * (d0 + 1) * 8 <= 1.5e9:
            ref = direct_jntk(net, x)
            err = float((finite_jntk(net, x) - ref).abs().max())
            td = best_of(lambda: direct_jntk(net, x), repeat=2)
            direct = f"{td:10.3f} {td / t:8.1f}x"
            assert err < 1e-8 * float(ref.abs().max()), err
        else:
            direct = f"{'(too big)':>10} {'':>9}"
        print(f"{w:6d} {t:10.3f} {entries / t:12.3e} {direct}", flush=True)


def bench_training(widths: list[int], depth: int, n: int, d0: int, steps: int) -> None:
    from jntk_dist.networks.training import RobustTrainer

    print(f"\n## robust training: full-batch GD steps/s (depth {depth}, n={n}, d0={d0}, "
          "float64); finite-JNTK record (components 00,22,02,12) in s")
    print(f"{'width':>6} {'steps/s':>9} {'record s':>9}")
    x = unit_rows(n, d0, seed=1)
    y = torch.sign(x[:, 0])
    for w in widths:
        net = FiniteMLP(d0, w, depth, "gelu", kappa=0.1, seed=0)
        tr = RobustTrainer(net, x, y, lam=0.01, lr=1.0)
        tr.gd_step()
        t = time.perf_counter()
        for _ in range(steps):
            tr.gd_step()
        rate = steps / (time.perf_counter() - t)
        rec = best_of(tr.kernel, repeat=1)
        print(f"{w:6d} {rate:9.2f} {rec:9.3f}", flush=True)


def bench_grid(backends: list[str]) -> None:
    import ray

    from jntk_dist.workflows.config import load_config
    from jntk_dist.workflows.drift import DriftConfig, run_drift

    print("\n## drift grid wall time on 2 cores: 4 runs (widths 64,128 × seeds 0,1, depth 1, "
          "32 Fibonacci points, steps 0,1,2,4,8,16,32)")
    print(f"{'backend':>8} {'concurrent':>10} {'wall s':>8} {'mean run s':>10}")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        for backend in backends:
            walls = {}
            for conc in (1, 2):
                with tempfile.TemporaryDirectory() as d:
                    cfg = load_config({
                        "dataset": {"name": "fibonacci", "options": {"n": 32, "d": 4}},
                        "grid": {"widths": [64, 128], "depths": [1], "seeds": [0, 1]},
                        "training": {"record_steps": [0, 1, 2, 4, 8, 16, 32]},
                        "output": str(Path(d) / "g.zarr"), "progress": False,
                        "ray": {"backend": backend, "cpus_per_run": 1, "max_concurrent": conc,
                                "train_poll_interval_s": 0.5},
                    }, DriftConfig)
                    t = time.perf_counter()
                    run_drift(cfg)
                    walls[conc] = time.perf_counter() - t
                    import zarr
                    g = zarr.open_group(str(cfg.output), mode="r")
                    run_s = float(np.mean(g["finished"][...] - g["started"][...]))
                print(f"{backend:>8} {conc:10d} {walls[conc]:8.1f} {run_s:10.1f}", flush=True)
            print(f"{backend:>8} speed-up 2 vs 1 concurrent: {walls[1] / walls[2]:.2f}x")
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="kernel,train,grid")
    parser.add_argument("--widths", default="512,1024,2048,4096,8192")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--backends", default="tasks,train")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    parts = args.parts.split(",")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if "kernel" in parts:
        bench_kernel(widths, args.depth, args.points, 4)
    if "train" in parts:
        bench_training(widths, args.depth, args.points, 4, args.steps)
    if "grid" in parts:
        bench_grid(args.backends.split(","))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
