"""How far a single-precision computation moves λ_min of the NTK / JNTK Grams, route by route,
against LAPACK dsyevd on the float64 Gram (the reference):

* ``ssyevd``   — the float64 Gram rounded to float32, LAPACK ssyevd (numpy.linalg.eigvalsh);
* ``ssyev``    — the same rounded Gram, LAPACK ssyev, the QR-iteration driver
                 (scipy.linalg.eigh(driver='ev') in float32);
* ``kernel32`` — the kernel itself computed in float32 (torch), then ssyevd;
* ``lobpcg32`` — a float32 LOBPCG for the smallest eigenvalue of the rounded Gram (scipy, no
                 preconditioner, tol 1e-7, at most ``--lobpcg-iters`` (500) iterations; its residual
                 |Gv − θv| is printed: a residual above |θ| says it did not converge).

    python benchmarks/float32_floor.py                  # the forest-fire / banknote cases
    python benchmarks/float32_floor.py --quick          # two small cases
    python benchmarks/float32_floor.py --cases sonar    # sonar JNTK, n = 12688 (hours on 2 cores)

Prints one line per Gram and route: n, λ_min (float64), λ_min of the route, their difference,
the calibrated τ₃₂(n) = 1e-6·√(n/2916) of configs/paper/fig6.yaml and whether the route's sign
agrees with float64; then, per Gram size, the largest |error| of each route. Kernels are
κ⁻²-scaled (Θ), as everywhere in the package. A float64 λ_min below the relative rule's
n·eps₆₄·λ_max is itself unresolved: its sign column reads ``f64?``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jntk_dist import kernels  # noqa: E402
from jntk_dist.analysis import RELATIVE, PositivityRule  # noqa: E402
from jntk_dist.data import load_dataset  # noqa: E402

TAU32 = PositivityRule(rule="float32_resolution", scale=1e-6, reference_n=2916, exponent=0.5)
ROUTES = ("ssyevd", "ssyev", "kernel32", "lobpcg32")

BANKNOTE = ("banknote", {"near_parallel_threshold": 0.99})
CASES = {  # name → [(dataset, options, activation, kernel, depths)]
    "default": [("forest_fires", {}, "gelu", "ntk", [1]),
                ("forest_fires", {}, "gelu", "jntk", [1, 10, 11]),
                ("forest_fires", {}, "erf", "jntk", [5, 6]),
                (*BANKNOTE, "gelu", "ntk", [1]),
                (*BANKNOTE, "gelu", "jntk", [7])],
    "quick": [(*BANKNOTE, "gelu", "ntk", [1]), (*BANKNOTE, "gelu", "jntk", [7])],
    "sonar": [("sonar", {}, "gelu", "jntk", [1]), ("sonar", {}, "erf", "jntk", [1])],
}


def _gram(X: np.ndarray, act: str, kind: str, depth: int, dtype: object = None) -> np.ndarray:
    if kind == "ntk":
        return np.asarray(kernels.ntk(X, depth=depth, activation=act, dtype=dtype))
    return np.asarray(kernels.gram(X, depth=depth, activation=act, dtype=dtype))


def _lobpcg(G32: np.ndarray, iters: int) -> tuple[float, float]:
    """Smallest eigenvalue of the float32 Gram by LOBPCG (4 vectors, random start), and the
    residual |Gv − θv| of its vector."""
    import warnings

    from scipy.sparse.linalg import lobpcg

    rng = np.random.default_rng(0)
    X0 = rng.standard_normal((G32.shape[0], 4)).astype(np.float32)
    with warnings.catch_warnings():  # non-convergence is reported by the residual printed
        warnings.simplefilter("ignore")
        w, v = lobpcg(G32, X0, largest=False, tol=1e-7, maxiter=iters)
    i = int(np.argmin(w))
    r = G32 @ v[:, i] - w[i] * v[:, i]
    return float(w[i]), float(np.linalg.norm(r))


def one(X: np.ndarray, act: str, kind: str, depth: int, routes: list[str], iters: int
        ) -> dict[str, float]:
    """λ_min, λ_max of the float64 Gram and λ_min of each route (plus LOBPCG's residual)."""
    import scipy.linalg
    import torch

    G = _gram(X, act, kind, depth)
    w64 = np.linalg.eigvalsh(G)
    out = {"n": G.shape[0], "lo64": float(w64[0]), "hi": float(w64[-1])}
    G32 = G.astype(np.float32)
    del G
    for route in routes:
        t0 = time.perf_counter()
        if route == "ssyevd":
            out[route] = float(np.linalg.eigvalsh(G32)[0])
        elif route == "ssyev":
            out[route] = float(scipy.linalg.eigh(G32, eigvals_only=True, driver="ev")[0])
        elif route == "kernel32":
            K = _gram(X, act, kind, depth, dtype=torch.float32)
            assert K.dtype == np.float32
            out[route] = float(np.linalg.eigvalsh(K)[0])
        else:
            out[route], out["lobpcg_residual"] = _lobpcg(G32, iters)
        out[f"{route}_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table and the per-size summary."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the two small banknote cases")
    ap.add_argument("--cases", choices=sorted(CASES), default="default")
    ap.add_argument("--routes", default=",".join(ROUTES), help=f"any of {', '.join(ROUTES)}")
    ap.add_argument("--lobpcg-iters", type=int, default=500)
    args = ap.parse_args(argv)
    routes = [r for r in args.routes.split(",") if r]
    bad = [r for r in routes if r not in ROUTES]
    if bad:
        ap.error(f"unknown route(s) {bad}; known: {', '.join(ROUTES)}")
    print(f"{'dataset':>12} {'act':>4} {'kernel':>6} {'L':>3} {'n':>5} {'route':>8} "
          f"{'λ_min f64':>10} {'λ_min f32':>10} {'f32−f64':>9} {'τ32':>8} {'sign':>5} {'s':>5}")
    worst: dict[tuple[int, str], float] = {}
    for name, opts, act, kind, depths in CASES["quick" if args.quick else args.cases]:
        X = load_dataset(name, **opts).X
        for depth in depths:
            r = one(X, act, kind, depth, routes, args.lobpcg_iters)
            resolved = RELATIVE.positive(r["lo64"], r["n"], r["hi"])
            for route in routes:
                err = r[route] - r["lo64"]
                key = (int(r["n"]), route)
                worst[key] = max(worst.get(key, 0.0), abs(err))
                extra = (f"  residual {r['lobpcg_residual']:.1e}" if route == "lobpcg32" else "")
                print(f"{name:>12} {act:>4} {kind:>6} {depth:>3} {r['n']:>5} {route:>8} "
                      f"{r['lo64']:>10.3e} {r[route]:>+10.2e} {err:>+9.1e} "
                      f"{TAU32.threshold(r['n'], r['hi']):>8.2e} "
                      f"{sign(r[route], r['lo64'], resolved):>5} "
                      f"{r[f'{route}_s']:>5.0f}{extra}", flush=True)
    print("\nlargest |λ_min(route) − λ_min(float64)| per Gram size:")
    for n in sorted({k[0] for k in worst}):
        print(f"  n = {n:>5}: " + ", ".join(f"{rt} {worst[(n, rt)]:.1e}" for rt in routes
                                            if (n, rt) in worst))
    return 0


def sign(value: float, reference: float, resolved: bool) -> str:
    """Whether a route's λ_min has the float64 one's sign (``f64?``: float64 unresolved)."""
    if not resolved:
        return "f64?"
    return "same" if (value > 0) == (reference > 0) else "FLIP"


if __name__ == "__main__":
    sys.exit(main())
