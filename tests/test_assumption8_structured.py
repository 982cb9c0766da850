"""Assumption 8 in structured (matrix-free) mode against the dense eigensolver on small cases."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import sphere as _sphere
from jntk_dist import analysis, kernels
from jntk_dist.workflows.structured import StructuredSpec
from jntk_dist.workflows.config import ConfigError, load_config
from jntk_dist.solvers import positivity_tolerance


def test_structured_extremes_match_dense_eigvalsh(one_torch_thread) -> None:
    X = _sphere(24, 5, 3)
    spec = StructuredSpec(tol=1e-10)
    rows = analysis.assumption8(X, depths=[1, 4], activations=["gelu", "erf"], kernels_=["jntk"],
                                progress=False, structured=spec)
    assert len(rows) == 4
    for r in rows:
        w = np.linalg.eigvalsh(kernels.gram(X, depth=r.depth, activation=r.activation))
        tau = positivity_tolerance(w[-1], w.size)
        assert r.method.startswith("structured") and r.n == w.size == 24 * 6
        assert r.lambda_max == pytest.approx(w[-1], rel=1e-6)  # Lanczos tolerance of λ_max
        # a Ritz value is an upper bound of λ_min, and within its residual of an eigenvalue
        assert w[0] - 10 * tau <= r.lambda_min <= w[0] + r.lambda_min_residual + 10 * tau
        assert r.lambda_min == pytest.approx(w[0], rel=1e-3, abs=10 * tau)
        assert r.lambda_min_residual <= 1e-10 * w[-1]
        assert r.positive == (w[0] > tau)


def test_structured_mode_calls_a_singular_gram_not_positive(one_torch_thread) -> None:
    X = _sphere(10, 4, 5)
    dup = np.vstack([X, X[:1]])  # a repeated point: the JNTK Gram is singular
    (row,) = analysis.assumption8(dup, depths=[2], activations=["gelu"], kernels_=["jntk"],
                                  progress=False, structured=StructuredSpec())
    assert not row.positive
    assert abs(row.lambda_min) <= row.lambda_min_residual + 10 * row.tolerance


def test_assumption8_job_in_structured_mode(tmp_path, one_torch_thread) -> None:
    import zarr

    from jntk_dist.workflows.assumption8 import Assumption8JobConfig, run_assumption8

    np.savez(tmp_path / "d.npz", X=_sphere(16, 4, 7), y=np.sign(np.arange(16) - 7.5))
    base = {"datasets": [{"dataset": {"path": str(tmp_path / "d.npz")}}], "depths": [2, 3],
            "activations": ["erf"], "output": str(tmp_path / "a8.zarr")}
    cfg = load_config({**base, "structured": {"tol": 1e-10}}, Assumption8JobConfig)
    rows = run_assumption8(cfg, progress=False)
    dense = run_assumption8(load_config({**base, "output": str(tmp_path / "b.zarr")},
                                        Assumption8JobConfig), progress=False)
    for s, d in zip(rows, dense):
        assert (s["kernel"], s["depth"]) == (d["kernel"], d["depth"])
        assert s["positive"] == d["positive"]
        assert s["lambda_min"] == pytest.approx(d["lambda_min"], rel=1e-4)
        assert (s["lambda_min_residual"] > 0) == (s["kernel"] == "jntk")
    g = zarr.open_group(str(tmp_path / "a8.zarr" / "assumption8"), mode="r")
    assert np.all(g["lambda_min_residual"][...] >= 0)
    assert "± residual" in (tmp_path / "a8_assumption8.md").read_text()
    with pytest.raises(ConfigError, match="shift-invert only"):
        load_config({**base, "structured": {"lambda_min_method": "lobpcg"}}, Assumption8JobConfig)
