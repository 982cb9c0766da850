"""Structured (matrix-free) JNTK vs the dense Gram: matvec time/memory, PCG iterations, scale.

    python benchmarks/bench_structured.py matvec  [--d0 11 64 784] [--dense-mb 600]
    python benchmarks/bench_structured.py precond [--n 120 --d0 64]
    python benchmarks/bench_structured.py large   [--n 2000 --d0 784 --tol 1e-6]
    python benchmarks/bench_structured.py eigen   [--n 1797 --d0 64 --k 3]
    python benchmarks/bench_structured.py lmin    [--n 1797 --methods shift-invert@0.3 lobpcg]

``matvec``: for each d0 the largest N whose dense Gram fits in ``--dense-mb``; both operators are
built from the same fields, checked against each other, and timed (median of repeats) in the same
run; prints time and stored-memory ratios.  ``precond``: PCG iteration counts on digits with no,
block-Jacobi and Kronecker preconditioning.  ``large``: one structured PCG solve (``--precond``,
any registered name, default auto) of an N(d0+1) system that has no dense counterpart here; inputs are synthetic
unit vectors (MNIST-shaped, d0=784, by default) or ``--digits`` (digits upsampled to 28×28).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from jntk_dist import kernels
from jntk_dist.solvers import (PRECONDITIONERS, preconditioner_help, structured_eigs,
                               structured_solve)
from jntk_dist.operators import structured_operator


def _sphere(n: int, d0: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d0))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _digits(n: int | None = None, upsample: bool = False) -> tuple[np.ndarray, np.ndarray]:
    from jntk_dist.data import load_dataset

    ds = load_dataset("digits")
    X, y = ds.X, ds.y
    if upsample:  # MNIST-shaped 28×28 inputs from the 8×8 digits (bilinear), paper preprocessing
        from scipy.ndimage import zoom

        from jntk_dist.data import normalize_rows

        imgs = X.reshape(-1, 8, 8)
        X = normalize_rows(np.stack([zoom(im, 3.5, order=1) for im in imgs]).reshape(len(X), -1))
    return (X, y) if n is None else (X[:n], y[:n])


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_matvec(args: argparse.Namespace) -> None:
    print(f"# matvec: structured (fields in memory) vs dense Gram, float64, "
          f"{torch.get_num_threads()} torch threads, load avg {os.getloadavg()[0]:.1f}")
    print("| d0 | N | unknowns | dense MB | fields+X MB | memory ratio | (d0+1)²/8 | "
          "dense matvec s | structured matvec s | speed-up | d0/4 | rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d0 in args.d0:
        p = d0 + 1
        n = max(2, int((args.dense_mb * 2**20 / 8) ** 0.5 / p))
        x = _sphere(n, d0, seed=d0)
        f = kernels.fields(x, depth=args.depth, activation="erf")
        op = structured_operator(x, fields=f, lam=args.lam)
        dense = kernels.to_gram(kernels.expand_blocks(f, torch.as_tensor(x), lam=args.lam))
        dense = dense.contiguous()
        v = torch.randn(n * p, 1, dtype=torch.float64)
        diff = float(torch.linalg.vector_norm(op.matmat(v) - dense @ v)
                     / torch.linalg.vector_norm(dense @ v))
        t_dense = _median_time(lambda: dense @ v, args.repeats)
        t_struct = _median_time(lambda: op.matmat(v), args.repeats)
        mb_dense = dense.numel() * 8 / 2**20
        mb_struct = (8 * n * n + n * d0) * 8 / 2**20
        print(f"| {d0} | {n} | {n * p} | {mb_dense:.0f} | {mb_struct:.2f} | "
              f"{mb_dense / mb_struct:.0f}× | {p * p / 8:.0f} | {t_dense:.4f} | {t_struct:.4f} | "
              f"{t_dense / t_struct:.1f}× | {d0 / 4:.1f} | {diff:.1e} |", flush=True)
        dense = None  # free it before the next, larger one


def bench_precond(args: argparse.Namespace) -> None:
    from jntk_dist.solvers import NystromPreconditioner

    if args.synthetic:
        X = _sphere(args.n, args.d0, seed=5)
        y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, 1.0, -1.0)
        what = "synthetic unit vectors"
    else:
        X, y = _digits(args.n, upsample=args.d0 == 784)
        what = "digits"
    d0 = X.shape[1]
    op = structured_operator(X, depth=args.depth, activation=args.activation, lam=args.lam)
    print(f"# PCG iterations to relative residual {args.tol:g}: {what} N={X.shape[0]}, d0={d0} "
          f"({X.shape[0] * (d0 + 1)} unknowns), {args.activation} depth {args.depth}, "
          f"λ={args.lam}, ridge μ={args.ridge}; {torch.get_num_threads()} threads, "
          f"load avg {os.getloadavg()[0]:.1f}")
    print("| preconditioner | iterations | true rel. residual | set-up s | solve s |")
    print("|---|---|---|---|---|")
    for pc in args.preconds:
        if pc.startswith("nystrom@"):  # nystrom@RANK
            t0 = time.perf_counter()
            P = NystromPreconditioner(op, ridge=args.ridge, rank=int(pc.split("@")[1]))
            setup = time.perf_counter() - t0
            label = f"nystrom, rank {P.ranks[0]} + {P.ranks[1]}"
        else:
            P, setup, label = pc, None, pc
        r = structured_solve(op, y, ridge=args.ridge, tol=args.tol, preconditioner=P,
                             maxiter=args.maxiter, progress=False)
        flag = "" if r.converged else " (not converged)"
        print(f"| {label} | {r.iterations}{flag} | {r.residual:.1e} | "
              f"{setup if setup is not None else r.setup_s:.2f} | {r.wall_s:.1f} |", flush=True)


def bench_large(args: argparse.Namespace) -> None:
    if args.digits:
        X, y = _digits(args.n, upsample=args.d0 == 784)
        what = "digits" + (" upsampled to 28×28" if args.d0 == 784 else "")
    else:
        X = _sphere(args.n, args.d0, seed=1)
        y = np.where(np.random.default_rng(2).standard_normal(args.n) > 0, 1.0, -1.0)
        what = "synthetic unit vectors"
    n, d0 = X.shape
    print(f"# large structured solve: {what}, N={n}, d0={d0}: {n * (d0 + 1):,} unknowns "
          f"(dense Gram would be {(n * (d0 + 1)) ** 2 * 8 / 2**40:.1f} TiB); {args.activation} "
          f"depth {args.depth}, λ={args.lam}, ridge μ={args.ridge}, tol {args.tol:g}; "
          f"load avg {os.getloadavg()[0]:.1f}", flush=True)
    t0 = time.perf_counter()
    op = structured_operator(X, depth=args.depth, activation=args.activation, lam=args.lam,
                             mode=args.mode)
    t_fields = time.perf_counter() - t0
    precond, setup = args.precond, None
    if args.precond == "pca" and args.pca_fields != "auto":  # built here: held or streamed
        from jntk_dist.solvers.coarse import PcaCoarsePreconditioner

        precond = PcaCoarsePreconditioner(op, args.ridge, hold_fields=args.pca_fields == "held")
        setup = time.perf_counter() - t0 - t_fields
    r = structured_solve(op, y, ridge=args.ridge, tol=args.tol, preconditioner=precond,
                         maxiter=args.maxiter, checkpoint=args.checkpoint, progress=True,
                         checkpoint_every=60.0)
    total = time.perf_counter() - t0
    setup = r.setup_s if setup is None else setup
    print(f"fields {t_fields:.1f} s, preconditioner set-up {setup:.1f} s, "
          f"{r.iterations} PCG iterations ({r.preconditioner}) in {r.wall_s:.1f} s "
          f"({r.wall_s / max(r.iterations, 1):.2f} s/iteration), converged={r.converged}, "
          f"true relative residual {r.residual:.2e}, total wall {total:.1f} s, "
          f"resumed from iteration {r.resumed_from}", flush=True)


def bench_eigen(args: argparse.Namespace) -> None:
    X, _ = _digits(args.n, upsample=args.d0 == 784)
    n, d0 = X.shape
    op = structured_operator(X, depth=args.depth, activation=args.activation, lam=args.lam)
    print(f"# extreme eigenvalues of Θ_λ: digits N={n}, d0={d0} ({n * (d0 + 1):,} unknowns), "
          f"{args.activation} depth {args.depth}, λ={args.lam}; load avg {os.getloadavg()[0]:.1f}",
          flush=True)
    top = structured_eigs(op, k=args.k, which="LA", method="lanczos", tol=1e-8, progress=False)
    print(f"Lanczos top-{args.k}: {np.array2string(top.values[::-1], precision=6)} "
          f"({top.n_products} products, {top.wall_s:.1f} s, max residual "
          f"{top.residuals.max():.1e})", flush=True)
    low = structured_eigs(op, k=1, which="SA", method="lobpcg", preconditioner=args.precond,
                          shift=args.shift, tol=args.eig_tol, maxiter=args.maxiter,
                          restart_every=50, checkpoint=args.checkpoint, progress=True)
    print(f"LOBPCG({args.precond}) λ_min: {low.values[0]:.6e} ({low.n_products} products, "
          f"{low.wall_s:.1f} s, residual |Av-λv| {low.residuals[0]:.1e}); "
          f"λ_min/λ_max = {low.values[0] / top.values[-1]:.2e}", flush=True)


def bench_lmin(args: argparse.Namespace) -> None:
    """λ_min by shift-invert (inner PCG) vs LOBPCG with the same preconditioner: operator products."""
    from jntk_dist.solvers import positivity_tolerance
    from jntk_dist.solvers import shift_invert_eigs

    if args.synthetic:
        X = _sphere(args.n, args.d0, seed=3)
        what = "synthetic unit vectors"
    else:
        X, _ = _digits(args.n, upsample=args.d0 == 784)
        what = "digits"
    n, d0 = X.shape
    op = structured_operator(X, depth=args.depth, activation=args.activation, lam=args.lam)
    top = structured_eigs(op, k=1, which="LA", method="lanczos", tol=1e-8, progress=False)
    hi = float(top.values[-1])
    tau = positivity_tolerance(hi, op.shape[0])
    tol = args.rel_tol * hi
    print(f"# λ_min of Θ_λ: {what} N={n}, d0={d0} ({op.shape[0]:,} unknowns), {args.activation} "
          f"depth {args.depth}, λ={args.lam}; λ_max={hi:.6g} ({top.n_products} products), "
          f"τ={tau:.2e}; stop at |Av−θv| ≤ {args.rel_tol:g}·λ_max = {tol:.2e}; "
          f"{torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f}", flush=True)
    print("| method | preconditioner | λ_min (Ritz) | residual | certified θ−|r| > τ | products | "
          "outer / inner its | wall s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    budget = None  # products of the previous method (LOBPCG gets as many with --match-products)
    for method in args.methods:
        if method.startswith("shift-invert"):
            red = float(method.split("@")[1]) if "@" in method else 0.3
            r = shift_invert_eigs(op, k=1, shift=tau, preconditioner=args.precond, tol=tol,
                                  inner_reduction=red, maxiter=args.maxiter, progress=True)
            its = f"{r.info['outer_iterations']} / {sum(r.info['inner_iterations'])}"
        elif method == "lobpcg":
            maxiter = budget if args.match_products and budget else args.maxiter
            r = structured_eigs(op, k=1, which="SA", method="lobpcg", preconditioner=args.precond,
                                shift=1000 * tau, tol=tol, maxiter=maxiter, progress=True)
            its = f"{maxiter} max"
        elif method == "lanczos":
            try:
                r = structured_eigs(op, k=1, which="SA", method="lanczos", tol=args.rel_tol,
                                    maxiter=args.maxiter, progress=False)
            except Exception as err:  # ARPACK no-convergence
                print(f"| lanczos | — | not converged ({type(err).__name__}) | | | "
                      f"{op.n_products} | | |", flush=True)
                continue
            its = "—"
        else:
            raise SystemExit(f"unknown method {method}")
        budget = r.n_products
        lo, res = float(r.values[0]), float(r.residuals[0])
        print(f"| {method} | {args.precond if method != 'lanczos' else '—'} | {lo:.6e} | "
              f"{res:.1e} | {lo - res > tau} | {r.n_products} | {its} | {r.wall_s:.0f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    m = sub.add_parser("matvec")
    m.add_argument("--d0", type=int, nargs="+", default=[11, 64, 784])
    m.add_argument("--dense-mb", type=float, default=600.0)
    m.add_argument("--depth", type=int, default=3)
    m.add_argument("--lam", type=float, default=0.1)
    m.add_argument("--repeats", type=int, default=5)
    for name, n, d0 in (("precond", 120, 64), ("large", 2000, 784), ("eigen", None, 64)):
        s = sub.add_parser(name)
        s.add_argument("--n", type=int, default=n)
        s.add_argument("--d0", type=int, default=d0, help="64: digits; 784: 28×28 upsampled")
        s.add_argument("--depth", type=int, default=3)
        s.add_argument("--activation", default="erf")
        s.add_argument("--lam", type=float, default=0.1)
        s.add_argument("--ridge", type=float, default=1e-3)
        s.add_argument("--tol", type=float, default=1e-6)
        s.add_argument("--maxiter", type=int, default=2000)
    pre = sub.choices["precond"]
    pre.add_argument("--synthetic", action="store_true", help="unit vectors instead of digits")
    pre.add_argument("--preconds", nargs="+",
                     default=["none", "jacobi", "kron", "two_level", "nystrom@100"],
                     help="registered names, or nystrom@RANK: " + preconditioner_help())
    eig = sub.choices["eigen"]
    eig.add_argument("--k", type=int, default=3)
    eig.add_argument("--shift", type=float, default=1e-8)
    eig.add_argument("--eig-tol", type=float, default=1e-6)
    eig.add_argument("--checkpoint", default=None)
    eig.add_argument("--precond", default="two_level", choices=PRECONDITIONERS)
    lmin = sub.add_parser("lmin")
    lmin.add_argument("--n", type=int, default=None)
    lmin.add_argument("--d0", type=int, default=64, help="64: digits; 784: 28×28 upsampled")
    lmin.add_argument("--synthetic", action="store_true", help="unit vectors instead of digits")
    lmin.add_argument("--depth", type=int, default=3)
    lmin.add_argument("--activation", default="erf")
    lmin.add_argument("--lam", type=float, default=0.1)
    lmin.add_argument("--rel-tol", type=float, default=1e-9, help="residual ≤ rel_tol·λ_max")
    lmin.add_argument("--maxiter", type=int, default=1000)
    lmin.add_argument("--precond", default="two_level", choices=PRECONDITIONERS)
    lmin.add_argument("--methods", nargs="+", default=["shift-invert@0.3", "lobpcg"],
                      help="shift-invert[@inner_reduction], lobpcg, lanczos")
    lmin.add_argument("--match-products", action="store_true",
                      help="LOBPCG runs at most as many iterations as the previous method's products")
    large = sub.choices["large"]
    large.add_argument("--digits", action="store_true", help="digits instead of synthetic inputs")
    large.add_argument("--mode", default="memory", choices=["memory", "recompute"])
    large.add_argument("--precond", default="auto", choices=PRECONDITIONERS,
                       help=preconditioner_help())
    large.add_argument("--checkpoint", default=None, help=".npz path: resume after a kill")
    large.add_argument("--pca-fields", default="auto", choices=["auto", "held", "streamed"],
                       help="pca: hold the 8 N² fields or recompute them by row tiles")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is steadier on a shared, oversubscribed machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"matvec": bench_matvec, "precond": bench_precond, "large": bench_large,
     "eigen": bench_eigen, "lmin": bench_lmin}[args.part](args)


if __name__ == "__main__":
    main()
