"""Assumption 8 in structured (matrix-free) mode against the dense eigensolver on small cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sphere as _sphere
from jntk_dist import analysis, kernels
from jntk_dist.workflows.assumption8 import operator_factory
from jntk_dist.workflows.eigen import extremes_settings
from jntk_dist.workflows.structured import StructuredSpec
from jntk_dist.workflows.config import ConfigError, load_config
from jntk_dist.solvers import positivity_tolerance


def test_structured_extremes_match_dense_eigvalsh(one_torch_thread) -> None:
    X = _sphere(24, 5, 3)
    # tol is relative to λ_min itself (≈ 2e-5 here): 1e-6 is tighter than the old residual test
    # 1e-10·λ_max; 1e-10 is below what float64 resolves (eps·λ_max/λ_min ≈ 2e-9)
    spec = StructuredSpec(tol=1e-6, device="cpu")
    rows = analysis.assumption8(X, depths=[1, 4], activations=["gelu", "erf"], kernels_=["jntk"],
                                progress=False, structured=operator_factory(spec),
                                settings=extremes_settings(spec, 4096, 1e-6))
    assert len(rows) == 4
    for r in rows:
        w = np.linalg.eigvalsh(kernels.gram(X, depth=r.depth, activation=r.activation))
        tau = positivity_tolerance(w[-1], w.size)
        assert r.method.startswith("structured") and r.n == w.size == 24 * 6
        assert r.lambda_max == pytest.approx(w[-1], rel=1e-6)  # Lanczos tolerance of λ_max
        # a Ritz value is an upper bound of λ_min, and within its residual of an eigenvalue
        assert w[0] - 10 * tau <= r.lambda_min <= w[0] + r.lambda_min_residual + 10 * tau
        assert r.lambda_min == pytest.approx(w[0], rel=1e-3, abs=10 * tau)
        # converged: the interval is tight relative to λ_min itself (tol = 1e-6), not to λ_max
        assert r.converged and r.lambda_min_hi - r.lambda_min_lo <= 1e-6 * abs(r.lambda_min)
        # the certified interval holds the dense λ_min (up to eigh's own backward error τ)
        assert r.certified and r.lambda_min_lo - tau <= w[0] <= r.lambda_min_hi + tau
        assert r.verdict == ("positive" if w[0] > tau else "not positive")


def test_structured_mode_calls_a_singular_gram_not_positive(one_torch_thread) -> None:
    X = _sphere(10, 4, 5)
    dup = np.vstack([X, X[:1]])  # a repeated point: the JNTK Gram is singular
    spec = StructuredSpec(device="cpu")
    (row,) = analysis.assumption8(dup, depths=[2], activations=["gelu"], kernels_=["jntk"],
                                  progress=False, structured=operator_factory(spec),
                                  settings=extremes_settings(spec, 4096))
    assert not row.positive and row.verdict == "not positive"
    assert abs(row.lambda_min) <= row.lambda_min_residual + 10 * row.tolerance


def test_assumption8_job_in_structured_mode(tmp_path, one_torch_thread) -> None:
    import zarr

    from jntk_dist.workflows.assumption8 import Assumption8JobConfig, run_assumption8

    np.savez(tmp_path / "d.npz", X=_sphere(16, 4, 7), y=np.sign(np.arange(16) - 7.5))
    base = {"datasets": [{"dataset": {"path": str(tmp_path / "d.npz")}}], "depths": [2, 3],
            "activations": ["erf"], "output": str(tmp_path / "a8.zarr")}
    cfg = load_config({**base, "structured": {"tol": 1e-6}}, Assumption8JobConfig)
    rows = run_assumption8(cfg, progress=False)
    dense = run_assumption8(load_config({**base, "output": str(tmp_path / "b.zarr")},
                                        Assumption8JobConfig), progress=False)
    for s, d in zip(rows, dense):
        assert (s["kernel"], s["depth"]) == (d["kernel"], d["depth"])
        assert s["positive"] == d["positive"]
        assert s["lambda_min"] == pytest.approx(d["lambda_min"], rel=1e-4)
        assert (s["lambda_min_residual"] > 0) == (s["kernel"] == "jntk")
        assert s["verdict"] == d["verdict"] and s["certified"] and d["certified"]
        assert s["lambda_min_lo"] <= d["lambda_min_hi"] and d["lambda_min_lo"] <= s["lambda_min_hi"]
    g = zarr.open_group(str(tmp_path / "a8.zarr" / "assumption8"), mode="r")
    assert np.all(g["lambda_min_residual"][...] >= 0)
    assert set(g["verdict"][...]) <= {"positive", "not positive", "undetermined"}
    assert np.all(g["lambda_min_lo"][...] <= g["lambda_min_hi"][...])
    header = (tmp_path / "a8_assumption8.csv").read_text().splitlines()[0]
    assert "lambda_min_lo" in header and "verdict" in header and "positive" in header
    assert "± residual" in (tmp_path / "a8_assumption8.md").read_text()
    with pytest.raises(ConfigError, match="shift-invert only"):
        load_config({**base, "structured": {"lambda_min_method": "lobpcg"}}, Assumption8JobConfig)


def _structured_row(spec: StructuredSpec, X: np.ndarray) -> analysis.Assumption8Row:
    (row,) = analysis.assumption8(X, depths=[2], activations=["gelu"], kernels_=["jntk"],
                                  progress=False, structured=operator_factory(spec),
                                  settings=extremes_settings(spec, 4096, 1e-6))
    return row


@pytest.mark.parametrize("setting", [{"memory_mb": "auto"}, {"precision": "mixed"},
                                     {"compile": False}, {"fields": "recompute"}])
def test_each_structured_setting_reaches_the_operator(setting, one_torch_thread) -> None:
    """memory_mb: auto (no str-vs-number comparison), mixed precision (float32 inner solves),
    compile and fields: the one route builds the operator as the config says."""
    X = _sphere(12, 4, 11)
    w = np.linalg.eigvalsh(kernels.gram(X, depth=2, activation="gelu"))
    spec = StructuredSpec(device="cpu", tol=1e-8, **setting)
    with operator_factory(spec)(X, 2, "gelu") as (op, inner):
        assert str(op.device) == "cpu"
        if setting.get("precision") == "mixed":
            assert inner is not None and inner.dtype == torch.float32
        else:
            assert inner is None
        if "memory_mb" in setting:
            assert op.description["memory_mb"] > 0
    row = _structured_row(spec, X)
    tau = positivity_tolerance(w[-1], w.size)
    assert row.certified and row.lambda_min_lo - tau <= w[0] <= row.lambda_min_hi + tau


def test_an_invalid_device_is_refused_by_the_route() -> None:
    """device reaches the operator: 'cuda' without CUDA is refused (it was ignored: cpu)."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: device: cuda is valid here")
    with pytest.raises(ValueError, match="no CUDA device"):
        _structured_row(StructuredSpec(device="cuda"), _sphere(8, 3, 1))
