"""The CI corner of the robustness matrix (benchmarks/bench_robustness.py --quick): auto meets the
tolerance on every row, checked by an independent residual of the dense Gram."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from jntk_dist import kernels

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_robustness.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script():
    spec = importlib.util.spec_from_file_location("bench_robustness", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_corner_auto_converges_on_every_row(tmp_path):
    bench = _script()
    out = tmp_path / "rows.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["data"] for r in rows} == {"iris", "synthetic"}
    for r in rows:
        auto = r["runs"]["auto"]
        assert auto["converged"] and auto["residual"] <= 1e-6 and auto["iterations"] <= 300
        assert auto["choice"].startswith(f"auto → {auto['built']}")


def test_a_row_solution_checked_against_the_dense_gram():
    bench = _script()
    X, y = bench.load("iris", 40)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0) and set(np.unique(y)) == {-1.0, 1.0}
    from jntk_dist.operators import structured_operator
    from jntk_dist.solvers import structured_solve

    op = structured_operator(X, depth=3, activation="gelu", lam=0.1)
    mu = bench.ridge(op, "1e-2rel")
    G = kernels.gram(X, depth=3, activation="gelu", lam=0.1)
    assert mu == pytest.approx(1e-2 * np.trace(G) / G.shape[0], rel=1e-12)
    res = structured_solve(op, y, ridge=mu, tol=1e-8, progress=False)
    b = np.zeros(G.shape[0])
    b[::X.shape[1] + 1] = y
    assert np.linalg.norm(b - (G + mu * np.eye(G.shape[0])) @ res.x) <= 1e-8 * np.linalg.norm(b)
