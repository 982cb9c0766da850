"""What a single-precision eigensolver resolves: λ_min of NTK / JNTK Grams in float64 against
λ_min of the same Gram rounded to float32 and decomposed by LAPACK ssyevd (numpy, float32).

    python benchmarks/float32_floor.py            # the cases of docs/reproduction.md (~5–15 min)
    python benchmarks/float32_floor.py --quick    # two small cases

Prints one line per Gram: n, λ_min (float64), λ_min (float32), their difference, and the
positivity threshold τ₃₂(n) = 1e-6·√(n/2916) of configs/paper/fig6.yaml with both verdicts — the
evidence behind that rule (a float32 λ_min is noise at the 10⁻⁷–10⁻⁶ level for these Grams,
growing with n). Kernels are κ⁻²-scaled (Θ), as everywhere in the package.
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

RULE = PositivityRule(rule="float32_resolution", scale=1e-6, reference_n=2916, exponent=0.5)

CASES = [  # (dataset, options, activation, kernel, depths)
    ("forest_fires", {}, "gelu", "ntk", [1]),
    ("forest_fires", {}, "gelu", "jntk", [1, 9, 10, 11]),
    ("forest_fires", {}, "erf", "jntk", [4, 5, 6]),
    ("banknote", {"near_parallel_threshold": 0.99}, "gelu", "ntk", [1, 2]),
    ("banknote", {"near_parallel_threshold": 0.99}, "gelu", "jntk", [6, 7]),
]
QUICK = [("banknote", {"near_parallel_threshold": 0.99}, "gelu", "ntk", [1]),
         ("banknote", {"near_parallel_threshold": 0.99}, "gelu", "jntk", [7])]


def one(X: np.ndarray, act: str, kind: str, depth: int) -> dict[str, float]:
    """λ_min, λ_max in float64 and λ_min of the float32-rounded Gram by ssyevd."""
    G = (kernels.ntk(X, depth=depth, activation=act) if kind == "ntk"
         else kernels.gram(X, depth=depth, activation=act))
    w64 = np.linalg.eigvalsh(G)
    w32 = np.linalg.eigvalsh(G.astype(np.float32))
    return {"n": G.shape[0], "lo64": float(w64[0]), "hi": float(w64[-1]), "lo32": float(w32[0])}


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print(f"{'dataset':>12} {'act':>4} {'kernel':>6} {'L':>3} {'n':>5} {'λ_min f64':>10} "
          f"{'λ_min f32':>10} {'f32−f64':>9} {'τ32':>8} {'f32 rule':>8} {'relative':>8} {'s':>5}")
    for name, opts, act, kind, depths in QUICK if args.quick else CASES:
        X = load_dataset(name, **opts).X
        for depth in depths:
            t0 = time.perf_counter()
            r = one(X, act, kind, depth)
            yes = {True: "PD", False: "·"}
            print(f"{name:>12} {act:>4} {kind:>6} {depth:>3} {r['n']:>5} {r['lo64']:>10.3e} "
                  f"{r['lo32']:>+10.2e} {r['lo32'] - r['lo64']:>+9.1e} "
                  f"{RULE.threshold(r['n'], r['hi']):>8.2e} "
                  f"{yes[RULE.positive(r['lo64'], r['n'], r['hi'])]:>8} "
                  f"{yes[RELATIVE.positive(r['lo64'], r['n'], r['hi'])]:>8} "
                  f"{time.perf_counter() - t0:>5.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
