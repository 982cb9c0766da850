"""The robustness matrix: PCG iterations to a relative residual of 1e-6 and wall time (set-up +
iterations) for every registered preconditioner and ``auto``, on every kind of data.

    python benchmarks/bench_robustness.py --quick          # the CI corner (< 60 s)
    python benchmarks/bench_robustness.py --full           # the whole matrix (hours on 2 cores)
    python benchmarks/bench_robustness.py --data iris wine --act gelu --depth 3 --mu 1e-3 \\
        --n-max 300 --out matrix.json                      # any part of it

Data: the catalogue (forest fires, banknote, sonar, digits 8×8), scikit-learn's bundled wine,
diabetes (labels: above / below the median) and iris (columns scaled to [-1, 1], rows to unit
norm: the paper's preprocessing), synthetic unit vectors (d0 = 8); each subsampled to at most
``--n-max`` rows (seed 0). μ: ``1e-4rel``, ``1e-3rel``, ``1e-2rel`` (× the mean diagonal of
Θ_λ, the solve job's ``ridge: auto`` rule at 1e-2) and ``1e-3`` (absolute). Kernels: gelu and
erf, L = 3 and 8, λ = 0.1. Each row prints the best single preconditioner and auto's time
against it (the target: auto within 1.2× of the best, ≤ 300 iterations or a direct solve).
Exits non-zero when ``auto`` misses the tolerance on any row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jntk_dist.data import load_dataset, normalize_rows, scale_columns
from jntk_dist.operators import structured_operator
from jntk_dist.solvers import PRECONDITIONERS, structured_solve

DATA = ("forest_fires", "banknote", "sonar", "digits", "wine", "diabetes", "iris", "synthetic")
MUS = ("1e-4rel", "1e-3rel", "1e-2rel", "1e-3")
QUICK = dict(data=["iris", "synthetic"], act=["gelu"], depth=[3], mu=["1e-3"], n_max=120,
             precond=["kron", "pca", "direct", "auto"], maxiter=600)


def load(name: str, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(X on the unit sphere, ±1 labels) of one data set, at most ``n_max`` rows (seed 0)."""
    if name == "synthetic":
        rng = np.random.default_rng(0)
        X = normalize_rows(rng.standard_normal((n_max, 8)))
        y = np.sign(X[:, 0] * X[:, 1] + 0.1)
    elif name in ("wine", "diabetes", "iris"):
        import sklearn.datasets as skd

        raw = getattr(skd, f"load_{name}")()
        X = normalize_rows(scale_columns(raw.data, drop_constant=True))
        t = raw.target
        y = np.where(t > np.median(t), 1.0, -1.0) if name == "diabetes" else \
            np.where(t == 0, 1.0, -1.0)
    else:
        ds = load_dataset(name)
        X, y = ds.X, ds.y
    idx = np.random.default_rng(0).permutation(len(X))[:n_max]
    return np.asarray(X[idx], dtype=np.float64), np.asarray(y[idx], dtype=np.float64)


def ridge(op: Any, rule: str) -> float:
    """μ from a rule: ``<f>rel`` = f × the mean diagonal of Θ_λ, else the number itself."""
    if rule.endswith("rel"):
        return float(rule[:-3]) * float(op.diagonal().mean())
    return float(rule)


def solve_one(op: Any, y: np.ndarray, mu: float, pc: str,
              args: argparse.Namespace) -> dict[str, Any]:
    """One PCG solve; a preconditioner that cannot be built is recorded, not raised."""
    options = {"rank": args.rpc_rank} if pc == "rpcholesky" else {}
    if pc == "direct" and op.shape[0] > args.direct_above:
        return {"error": f"skipped: N(d0+1) > {args.direct_above}"}
    t0 = time.perf_counter()
    try:
        r = structured_solve(op, y, ridge=mu, tol=args.tol, maxiter=args.maxiter,
                             preconditioner=pc, preconditioner_options=options, progress=False)
    except (ValueError, MemoryError) as err:
        return {"error": str(err).splitlines()[0][:160]}
    return {"built": r.preconditioner, "iterations": r.iterations, "converged": r.converged,
            "residual": r.residual, "setup_s": r.setup_s, "total_s": time.perf_counter() - t0,
            "choice": r.preconditioner_choice}


def cell(s: dict[str, Any]) -> str:
    """A table cell: iterations (or why not) and the total time."""
    if "error" in s:
        return "— (" + s["error"][:40] + ")"
    flag = "" if s["converged"] else f" ✗ {s['residual']:.0e}"
    return f"{s['iterations']}{flag}, {s['total_s']:.1f} s"


def matrix_row(name: str, X: np.ndarray, y: np.ndarray, act: str, depth: int, rule: str,
               args: argparse.Namespace) -> dict[str, Any]:
    op = structured_operator(X, depth=depth, activation=act, lam=0.1)
    mu = ridge(op, rule)
    runs = {pc: solve_one(op, y, mu, pc, args) for pc in args.precond}
    done = {pc: s for pc, s in runs.items() if pc != "auto" and s.get("converged")}
    best = min(done, key=lambda pc: done[pc]["total_s"]) if done else None
    row = {"data": name, "n": X.shape[0], "d0": X.shape[1], "activation": act, "depth": depth,
           "mu_rule": rule, "mu": mu, "runs": runs, "best": best}
    auto = runs.get("auto", {})
    if best and auto.get("converged"):
        row["auto_over_best"] = auto["total_s"] / done[best]["total_s"]
    return row


def markdown(rows: list[dict[str, Any]], precond: list[str]) -> str:
    head = ["data", "N", "d0", "act", "L", "μ"] + precond + ["auto chose", "auto / best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        auto = r["runs"].get("auto", {})
        ratio = f"{r['auto_over_best']:.2f} ({r['best']})" if "auto_over_best" in r else "—"
        cells = [r["data"], str(r["n"]), str(r["d0"]), r["activation"], str(r["depth"]),
                 f"{r['mu_rule']} = {r['mu']:.2g}"] + [cell(r["runs"][pc]) for pc in precond]
        lines.append("| " + " | ".join(cells + [auto.get("built", "—"), ratio]) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"the CI corner: {QUICK}")
    p.add_argument("--full", action="store_true", help="every data set, μ, activation, depth")
    p.add_argument("--data", nargs="+", default=["iris", "banknote", "synthetic"],
                   choices=DATA)
    p.add_argument("--act", nargs="+", default=["gelu"], choices=["gelu", "erf"])
    p.add_argument("--depth", nargs="+", type=int, default=[3])
    p.add_argument("--mu", nargs="+", default=["1e-3"], help=f"rules among {MUS}")
    p.add_argument("--precond", nargs="+", default=list(PRECONDITIONERS),
                   choices=list(PRECONDITIONERS))
    p.add_argument("--n-max", type=int, default=300, help="rows per data set (subsampled)")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--rpc-rank", type=int, default=2000, help="rpcholesky's largest rank")
    p.add_argument("--direct-above", type=int, default=16000,
                   help="skip the direct column above this N(d0+1) (auto may still choose it)")
    p.add_argument("--maxiter", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.full:
        args.data, args.act, args.depth, args.mu = list(DATA), ["gelu", "erf"], [3, 8], list(MUS)
    return args


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    print(f"# robustness matrix, {datetime.date.today()}, commit {_commit()}, tol {args.tol:g}, "
          f"maxiter {args.maxiter}, λ = 0.1, {args.threads} thread(s), load "
          f"{os.getloadavg()[0]:.1f}; cells: iterations, set-up + solve seconds", flush=True)
    rows = []
    for name in args.data:
        X, y = load(name, args.n_max)
        for act in args.act:
            for depth in args.depth:
                for rule in args.mu:
                    rows.append(matrix_row(name, X, y, act, depth, rule, args))
                    print(markdown(rows[-1:], args.precond).splitlines()[-1], flush=True)
    print(markdown(rows, args.precond))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    missed = [f"{r['data']}/{r['activation']}/L{r['depth']}/{r['mu_rule']}" for r in rows
              if "auto" in r["runs"] and not r["runs"]["auto"].get("converged")]
    if missed:
        print(f"auto missed tol = {args.tol:g} on: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
