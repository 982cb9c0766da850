"""One GPU, full-MNIST scale: what the device does with the project's own code, in one table.

    python benchmarks/bench_gpu.py --out $OUT/bench_gpu.json            # ≤ 8 min on one H200
    python benchmarks/bench_gpu.py --mnist ~/data/mnist --budget-s 420  # real images
    python benchmarks/bench_gpu.py --quick --device cpu                 # a smoke run anywhere

Steps, each timed against the clock (``--budget-s``; a step that would not fit is skipped and
says so):
  1. copy bandwidth of the device (float64 entries/s), the baseline of the ratios below;
  2. the dense JNTK Gram (N = 4096, d0 = 11, L = 11; eager and compiled) as a fraction of it;
  3. the matrix-free product at N = 8192 / 20 000 / 60 000, d0 = 784 (fields recomputed per row
     tile; the compiled recursion; float64);
  4. PCG to 1e-6 at N = 20 000 (preconditioner ``--precond``, default auto: the PCA coarse space where it fits),
     iterations, set-up, wall time, true residual;
  5. the full N = 60 000 solve (47.1M unknowns), when the remaining budget allows.
Inputs are MNIST images when ``--mnist`` names a folder with the IDX files, else synthetic
MNIST-shaped unit vectors (784 pixels in [0, 255], the paper's preprocessing). Peak device
memory is reported per step. Needs torch, numpy, scipy only (no ray, dask, zarr): the package's
kernel, operator and solver rooms import without them. ``--help`` works without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (device work included) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def mnist_shaped(n: int, seed: int = 0) -> np.ndarray:
    """Synthetic MNIST-shaped inputs: n × 784 pixels in [0, 255] with a smooth blob each
    (image-like, low-dimensional), preprocessed as the paper's data: [-1, 1], unit rows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(8, 20, size=(n, 2))
    widths = rng.uniform(2, 6, size=(n, 1, 1))
    img = 255 * np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2)
                       / (2 * widths ** 2))
    X = img.reshape(n, 784) / 127.5 - 1.0
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def inputs(args: argparse.Namespace, n: int) -> tuple[np.ndarray, np.ndarray]:
    if args.mnist:
        from jntk_dist.data.images import image_dataset, load_mnist

        X_raw, labels = load_mnist(args.mnist, split="train", limit=n)
        return image_dataset(X_raw, labels)
    X = mnist_shaped(n)
    return X, np.where(X[:, 300] > X[:, 400], 1.0, -1.0)


def step_copy(device: torch.device, record: dict[str, Any]) -> float:
    entries = 2 ** 28 if device.type == "cuda" else 2 ** 24
    buffers = [torch.randn(entries, dtype=torch.float64, device=device)]
    buffers.append(torch.empty_like(buffers[0]))
    t, _ = timed(lambda: buffers[1].copy_(buffers[0]), device, repeats=5)
    record["copy"] = {"entries": entries, "seconds": t, "entries_per_s": entries / t}
    buffers.clear()  # free the device memory for the next steps
    return entries / t


def step_dense(args: argparse.Namespace, device: torch.device, copy_rate: float,
               record: dict[str, Any]) -> None:
    from jntk_dist import kernels

    n = 4096 if not args.quick else 256
    x = torch.randn(n, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = (x / torch.linalg.vector_norm(x, dim=1, keepdim=True)).to(device)
    out = {}
    for compile in (False, True):
        if compile:
            t0 = time.perf_counter()
            kernels.compile_warm_up(args.activation, "jntk", torch.float64, device,
                                    gram_columns=(n, 11))
            out["compile_warm_up_s"] = time.perf_counter() - t0
        gram = [torch.empty((n * 12, n * 12), dtype=torch.float64, device=device)]

        def build() -> Any:
            f = kernels.fields(x, depth=11, activation=args.activation, compile=compile)
            return kernels.expand_gram(f, x, out=gram[0], compile=compile)
        t, _ = timed(build, device, repeats=2)
        key = "compiled" if compile else "eager"
        out[key] = {"seconds": t, "fraction_of_copy": (n * 12) ** 2 / t / copy_rate}
        gram.clear()
    out["n"], out["peak_gib"] = n, peak_gib(device)
    record["dense_gram"] = out


def step_matvec(args: argparse.Namespace, device: torch.device, n: int,
                record: dict[str, Any]) -> None:
    from jntk_dist.operators import structured_operator

    X, _ = inputs(args, n)
    op = structured_operator(X, depth=args.depth, activation=args.activation, lam=args.lam,
                             mode="recompute", memory_mb="auto", device=device, compile=True)
    v = torch.randn(op.shape[1], dtype=torch.float64, device=device)
    t_first, _ = timed(lambda: op.matmat(v), device)
    t, _ = timed(lambda: op.matmat(v), device, repeats=2)
    record.setdefault("matvec", {})[str(n)] = {"unknowns": op.shape[0], "first_s": t_first,
                                               "seconds": t, "peak_gib": peak_gib(device)}


def step_solve(args: argparse.Namespace, device: torch.device, n: int,
               record: dict[str, Any]) -> None:
    from jntk_dist.operators import structured_operator
    from jntk_dist.solvers import auto_ridge, structured_solve

    X, y = inputs(args, n)
    op = structured_operator(X, depth=args.depth, activation=args.activation, lam=args.lam,
                             mode="recompute", memory_mb="auto", device=device, compile=True)
    t0 = time.perf_counter()
    ridge = auto_ridge(op) if args.ridge == "auto" else float(args.ridge)
    res = structured_solve(op, y, ridge=ridge, tol=args.tol, preconditioner=args.precond,
                           maxiter=args.maxiter, progress=not args.no_progress)
    record.setdefault("solve", {})[str(n)] = {
        "unknowns": op.shape[0], "preconditioner": res.preconditioner, "ridge": ridge,
        "preconditioner_choice": res.preconditioner_choice,
        "setup_s": res.setup_s,
        "iterations": res.iterations, "converged": res.converged, "true_residual": res.residual,
        "wall_s": time.perf_counter() - t0, "peak_gib": peak_gib(device)}


def fits(record: dict[str, Any], start: float, budget: float, estimate: float, name: str) -> bool:
    left = budget - (time.perf_counter() - start)
    if estimate > left:
        record.setdefault("skipped", []).append(
            f"{name}: estimated {estimate:.0f} s, {left:.0f} s of the budget left")
        return False
    return True


def table(record: dict[str, Any]) -> str:
    lines = [f"device: {record['device']}  torch {record['torch']}",
             f"copy bandwidth: {record['copy']['entries_per_s']:.3e} float64 entries/s"]
    if "dense_gram" in record:
        d = record["dense_gram"]
        lines.append(f"dense Gram N={d['n']} d0=11 L=11: eager {d['eager']['fraction_of_copy']:.1%}"
                     f", compiled {d['compiled']['fraction_of_copy']:.1%} of copy bandwidth "
                     f"(compile {d['compile_warm_up_s']:.0f} s once)")
    for n, m in record.get("matvec", {}).items():
        lines.append(f"matvec N={n} ({m['unknowns']:,} unknowns): {m['seconds']:.2f} s "
                     f"(first {m['first_s']:.1f} s), peak {m['peak_gib']} GiB")
    for n, s in record.get("solve", {}).items():
        lines.append(f"PCG[{s['preconditioner']}] N={n}: {s['iterations']} iterations, converged "
                     f"{s['converged']}, true residual {s['true_residual']:.1e}, set-up "
                     f"{s['setup_s']:.0f} s, total {s['wall_s']:.0f} s, peak {s['peak_gib']} GiB")
    lines += [f"skipped: {s}" for s in record.get("skipped", [])]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mnist", default=None, help="folder with the MNIST IDX files (optional)")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget (s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 20000, 60000])
    p.add_argument("--solve-n", type=int, default=20000)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--activation", default="erf")
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--ridge", default="auto", help="μ, or auto: 0.01 × the mean diagonal "
                   "(the solve job's ridge: auto)")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--maxiter", type=int, default=2000)
    p.add_argument("--precond", default="auto", help="a registered preconditioner; auto (the "
                   "memory plan's choice: on images pca where it fits, at N = 60 000 with "
                   "streamed fields on a 141 GB H200 only, else nystrom), or one of: none, "
                   "jacobi, kron, two_level, nystrom, pca, direct, rpcholesky")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run on any device)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.solve_n = [256, 512], 512
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    start = time.perf_counter()
    record: dict[str, Any] = {
        "command": " ".join(sys.argv), "device": (torch.cuda.get_device_name(device)
                                                  if device.type == "cuda" else platform.processor()
                                                  or "cpu"),
        "torch": torch.__version__, "inputs": "MNIST" if args.mnist else "synthetic MNIST-shaped",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)}}
    copy_rate = step_copy(device, record)
    step_dense(args, device, copy_rate, record)
    per_pair = None
    for n in args.sizes:
        est = 3 * per_pair * n * n if per_pair else 0.0  # first call + 2 timed, ∝ N²
        if not fits(record, start, args.budget_s, est, f"matvec N={n}"):
            continue
        step_matvec(args, device, n, record)
        per_pair = record["matvec"][str(n)]["seconds"] / n ** 2
        print(table(record), flush=True)
    if per_pair and fits(record, start, args.budget_s, 200 * per_pair * args.solve_n ** 2,
                         f"PCG N={args.solve_n}"):
        step_solve(args, device, args.solve_n, record)
    full = max(args.sizes)
    if per_pair and full != args.solve_n and fits(record, start, args.budget_s,
                                                  200 * per_pair * full ** 2, f"PCG N={full}"):
        step_solve(args, device, full, record)
    record["wall_s"] = time.perf_counter() - start
    print(table(record), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    missed = [n for n, s in record.get("solve", {}).items() if not s["converged"]]
    if missed:
        print(f"PCG missed tol = {args.tol:g} at N = {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
