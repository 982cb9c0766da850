"""Certified λ_min / λ_max intervals (jntk_dist.solvers.certify) against numpy's eigh: clustered
small eigenvalues, a Ritz vector of the wrong eigenvalue, capped iterations, and the eigen job's
matrix-free λ_min on the forest-fires Gram of configs/eigen_quick.yaml (issue 23, measured case 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jntk_dist.analysis import ExtremesSettings, structured_extremes
from jntk_dist.operators.base import OperatorBase
from jntk_dist.solvers import eigh_dense, positivity_tolerance, shift_invert_eigs
from jntk_dist.solvers.certify import smallest_interval
from jntk_dist.solvers.results import positivity_verdict

ROOT = Path(__file__).resolve().parents[1]


class _Matrix(OperatorBase):
    """A dense symmetric matrix as a kernel operator (products only)."""

    def __init__(self, A: np.ndarray) -> None:
        self.A = torch.as_tensor(A)
        self.shape, self.dtype, self.device = tuple(A.shape), torch.float64, torch.device("cpu")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.A @ V


def _clustered(n: int = 160, seed: int = 0, low: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Q diag(λ) Qᵀ with λ = low, 1.1·low, 1.2·low, … (10 of them), then 1e-6 … 1; returns the
    matrix and λ itself (ascending): the truth by construction, not another eigensolver's answer
    (forming A moves the eigenvalues by ≲ n·eps·λ_max, the slack :func:`_holds` allows)."""
    Q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
    lam = np.concatenate([low * (1 + 0.1 * np.arange(10)), np.geomspace(1e-6, 1.0, n - 10)])
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T), np.sort(lam)


def _holds(iv, truth: float, w: np.ndarray) -> bool:
    """[lo, hi] meets the constructed eigenvalue ± τ = n·eps·λ_max (what forming A in floating
    point may move it by; rounding in the products is not in the bounds)."""
    tau = positivity_tolerance(w[-1], w.size)
    return iv.lo - tau <= truth <= iv.hi + tau


def test_three_way_verdict() -> None:
    assert positivity_verdict(2.0, 3.0, 1.0) == "positive"
    assert positivity_verdict(2.0, 3.0, 1.0, certified=False) == "undetermined"
    assert positivity_verdict(0.5, 1.0, 1.0) == "not positive"  # hi ≤ threshold: certain
    assert positivity_verdict(0.5, 1.5, 1.0) == "undetermined"


def test_dense_eigh_interval_holds_lambda_min() -> None:
    A, w = _clustered()
    res = eigh_dense(A, vectors=False, device="cpu")
    iv, tau = res.interval_min, positivity_tolerance(w[-1], w.size)
    assert iv.certified and _holds(iv, w[0], w) and iv.hi - iv.lo == pytest.approx(2 * tau)
    assert iv.verdict(tau) == "positive"  # 1e-9 ≫ τ ≈ 3.6e-14
    assert _holds(res.interval_max, w[-1], w)


def test_inertia_certifies_the_smallest_and_refuses_a_wrong_ritz_vector() -> None:
    A, w = _clustered()
    V = np.linalg.eigh(A)[1]
    theta = np.array([V[:, j] @ A @ V[:, j] for j in range(3)])
    res = np.linalg.norm(A @ V[:, :3] - V[:, :3] * theta, axis=0)
    iv = smallest_interval(theta, res, 1e-6, V[:, 0], A)
    assert iv.certified and iv.converged and _holds(iv, w[0], w)
    assert iv.hi - iv.lo <= 1e-6 * w[0]
    wrong = smallest_interval(theta[1:], res[1:], 1e-6, V[:, 1], A)  # λ₂'s pair, λ₁ missed
    assert not wrong.certified and not wrong.converged and "not certified" in wrong.why
    assert wrong.verdict(positivity_tolerance(w[-1], w.size)) == "undetermined"
    assert not smallest_interval(theta, res, 1e-6).certified  # no matrix: an estimate only


@pytest.mark.parametrize("low", [1e-9, 1e-5])
def test_matrix_free_route_on_clustered_eigenvalues(low: float) -> None:
    A, w = _clustered(low=low, seed=1)
    ext = structured_extremes(_Matrix(A), ExtremesSettings(tol=1e-6, preconditioner="none",
                                                           bottom_k=3, maxiter=300))
    iv, tau = ext.interval_min, positivity_tolerance(w[-1], w.size)
    assert iv.certified and _holds(iv, w[0], w), iv
    assert ext.converged and iv.hi - iv.lo <= 1e-6 * abs(iv.value)
    assert iv.verdict(tau) == "positive"
    assert ext.interval_max.certified and _holds(ext.interval_max, w[-1], w)


def test_capped_iterations_report_not_converged() -> None:
    A, w = _clustered(seed=2)
    op = _Matrix(A)
    raw = shift_invert_eigs(op, k=2, shift=positivity_tolerance(w[-1], w.size),
                            preconditioner="none", tol=0.0, rtol=1e-8, maxiter=1,
                            progress=False)
    assert not raw.converged and not raw.info["converged"]
    assert raw.values[0] >= w[0] - 1e-15  # a Rayleigh quotient: an upper bound of λ_min
    ext = structured_extremes(op, ExtremesSettings(tol=1e-8, preconditioner="none", maxiter=1))
    assert not ext.converged and ext.interval_min.why
    assert ext.interval_min.hi >= w[0] - 1e-15
    big = structured_extremes(op, ExtremesSettings(tol=1e-6, preconditioner="none",
                                                   maxiter=300, certify_max_n=10))
    assert not big.interval_min.certified and not big.converged
    assert "too large" in big.interval_min.why
    assert big.interval_min.verdict(positivity_tolerance(w[-1], w.size)) == "undetermined"


@pytest.mark.slow
def test_eigen_quick_structured_lambda_min_is_certified(tmp_path, one_torch_thread) -> None:
    """`jntk eigen configs/eigen_quick.yaml --structured --set "times=[]"` stored λ_min = 1.491e-8
    as converged; the dense eigh of the same Gram gives 1.177e-9. Now: an interval that holds
    the dense value, certified smallest, and — at the default tol = 1e-8, finer than float64
    resolves (eps·λ_max = 9e-14 against λ_min = 1.2e-9) — not converged, saying why."""
    import yaml

    from jntk_dist.workflows.config import load_config
    from jntk_dist.workflows.eigen import EigenJobConfig, run_eigen

    raw = yaml.safe_load((ROOT / "configs" / "eigen_quick.yaml").read_text())
    raw.update(times=[], output=str(tmp_path / "dense.zarr"))
    dense = run_eigen(load_config(raw, EigenJobConfig), progress=False)
    assert dense["certified"] and dense["verdict"] == "positive"
    truth, tau = dense["lambda_min"], dense["tolerance"]
    for tol, converged in ((1e-8, False), (1e-3, True)):
        raw.update(structured={"device": "cpu", "tol": tol}, accept_inexact=True,
                   output=str(tmp_path / f"mf{tol:g}.zarr"))
        s = run_eigen(load_config(raw, EigenJobConfig), progress=False)
        assert s["certified"] and s["converged"] is converged, s["not_converged_why"]
        assert s["lambda_min_lo"] - tau <= truth <= s["lambda_min_hi"] + tau
        assert s["lambda_min"] == pytest.approx(truth, rel=1e-3)
        assert s["verdict"] == "positive"
        if not converged:
            assert "float64 resolution" in s["not_converged_why"]


def test_dask_route_intervals_hold_the_extremes() -> None:
    """Lanczos on the Dask array: λ_max in [θ, θ + r]; the shift-invert λ_min interval
    certified by inertia (n ≤ certify_max_n) and not certified beyond."""
    from jntk_dist.solvers import eigen

    A, w = _clustered(n=120, seed=3, low=1e-5)
    out = eigen(A, k=3, max_dense=50, scheduler_name="sync")
    assert _holds(out["top"].interval_max, w[-1], w)
    iv = out["bottom"].interval_min
    assert iv.certified and _holds(iv, w[0], w) and out["bottom"].converged
    big = eigen(A, k=3, max_dense=50, scheduler_name="sync", certify_max_n=10)
    assert not big["bottom"].interval_min.certified and not big["bottom"].converged
    assert _holds(big["bottom"].interval_min, w[0], w)
