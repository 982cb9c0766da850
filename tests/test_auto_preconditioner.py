"""``auto`` and the preconditioner registry: each branch of ``auto`` (forced by memory budgets and
the direct-solve threshold passed as arguments) against a dense float64 solve of the expanded
Gram, tabular-like data converging with the default, the memory plan's refusal, and a residual
above the start never passing quietly."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.data import load_dataset
from jntk_dist.errors import ResourceError
from jntk_dist.operators import structured_operator
from jntk_dist.solvers import (PRECONDITIONERS, REGISTRY, NotEnoughMemoryError, Preconditioner,
                               make_preconditioner, structured_solve)
from jntk_dist.solvers.memory import free_bytes
from jntk_dist.workflows.structured import StructuredSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MU = 1e-3
TABULAR = dict(depth=3, activation="gelu", lam=0.1)
IMAGES = dict(depth=3, activation="erf", lam=0.1)


def _sphere(n: int, d0: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, d0))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _dense_solution(X: np.ndarray, y: np.ndarray, kw: dict) -> np.ndarray:
    """α of (Θ_λ + μI) α = (y_i, 0…0) by numpy on the Gram of kernels.gram (not the operator)."""
    G = kernels.gram(X, **kw) + MU * np.eye(X.shape[0] * (X.shape[1] + 1))
    b = np.zeros(G.shape[0])
    b[::X.shape[1] + 1] = y
    return np.linalg.solve(G, b)


@pytest.fixture(scope="module")
def tabular():
    """200 points in d0 = 8 on the unit sphere (a tabular-like shape: N ≫ d0)."""
    X = _sphere(200, 8, seed=0)
    y = np.sign(X[:, 0] * X[:, 1] + 0.1)
    return X, y, _dense_solution(X, y, TABULAR)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    X, y = ds.X[:60], ds.y[:60]
    return X, y, _dense_solution(X, y, IMAGES)


def _auto_solve(X, y, kw, memory_mb=512.0, **options):
    op = structured_operator(X, memory_mb=memory_mb, **kw)
    return structured_solve(op, y, ridge=MU, tol=1e-12, maxiter=4000, progress=False,
                            preconditioner_options=options)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_tabular_data_converge_with_the_default(tabular):
    X, y, alpha = tabular
    op = structured_operator(X, **TABULAR)
    res = structured_solve(op, y, ridge=MU, tol=1e-8, progress=False)  # the default: auto
    assert res.preconditioner == "direct" and res.converged and res.residual <= 1e-8
    assert res.preconditioner_choice.startswith("auto → direct (N(d0+1) = 1,800 ≤ 8,000")
    assert "needs" in res.preconditioner_choice and "has" in res.preconditioner_choice
    assert _rel(res.x, alpha) <= 1e-8


@pytest.mark.parametrize("options,expected", [
    ({"direct_max": 1000}, "pca"),  # rank(X) = 8 ≤ 16: the coarse space spans span(X)
    ({"direct_max": 1000, "budget_bytes": 5e8}, "rpcholesky"),  # that space does not fit
    ({"direct_max": 100}, "rpcholesky"),  # nor is it cheaper than a direct solve of its size
])
def test_small_d0_branches_equal_the_dense_solve(tabular, options, expected):
    X, y, alpha = tabular
    res = _auto_solve(X, y, TABULAR, **options)
    assert res.preconditioner == expected, res.preconditioner_choice
    assert res.converged and res.residual <= 1e-12 and res.iterations <= 20
    assert _rel(res.x, alpha) <= 1e-8


@pytest.mark.parametrize("direct_max,expected", [(1500, "direct"), (1000, "rpcholesky")])
def test_flat_spectrum_branch_equals_the_dense_solve(direct_max, expected):
    """100 Gaussian directions in d0 = 24: 85 % of ‖X‖² needs more than 16 of them."""
    X = _sphere(100, 24, seed=4)
    y = np.sign(X[:, 0] + 0.2)
    res = _auto_solve(X, y, TABULAR, direct_max=direct_max)
    assert res.preconditioner == expected, res.preconditioner_choice
    assert "a flat spectrum" in res.preconditioner_choice
    assert res.converged and _rel(res.x, _dense_solution(X, y, TABULAR)) <= 1e-8


def test_rpcholesky_below_full_rank_still_solves(tabular):
    X, y, alpha = tabular
    op = structured_operator(X, **TABULAR)
    M = make_preconditioner(op, "rpcholesky", MU, rank=400)
    assert M.rank <= 400
    res = structured_solve(op, y, ridge=MU, tol=1e-12, maxiter=4000, preconditioner=M,
                           progress=False)
    assert res.converged and _rel(res.x, alpha) <= 1e-8


@pytest.mark.parametrize("options,memory_mb,expected", [
    ({}, 512.0, "direct"),
    ({"direct_max": 100}, 512.0, "pca"),  # images: rank(X) > 16
    ({"direct_max": 100, "budget_bytes": 1e5}, 0.5, "nystrom"),  # pca's 2N space does not fit
])
def test_image_branches_equal_the_dense_solve(digits, options, memory_mb, expected):
    X, y, alpha = digits
    res = _auto_solve(X, y, IMAGES, memory_mb=memory_mb, **options)
    assert res.preconditioner == expected, res.preconditioner_choice
    assert res.converged and res.residual <= 1e-12
    assert _rel(res.x, alpha) <= 1e-8


def test_nothing_fits_is_one_line_naming_needs_and_alternatives(tabular):
    X, y, _ = tabular
    op = structured_operator(X, **TABULAR)
    with pytest.raises(NotEnoughMemoryError) as err:
        make_preconditioner(op, "auto", MU, budget_bytes=1e5)
    msg = str(err.value)
    assert "\n" not in msg and "direct (N(d0+1) = 1,800) needs" in msg
    assert "has 0.0001 GB (the given budget)" in msg and "Alternatives:" in msg
    assert isinstance(err.value, ResourceError)  # the CLI prints it as one line


def test_free_memory_is_the_available_ram():
    psutil = pytest.importorskip("psutil")
    assert abs(free_bytes("cpu") - psutil.virtual_memory().available) < 2**30


def test_the_default_everywhere_is_auto_and_names_come_from_the_registry():
    assert inspect.signature(structured_solve).parameters["preconditioner"].default == "auto"
    assert inspect.signature(make_preconditioner).parameters["kind"].default == "auto"
    assert StructuredSpec().preconditioner == "auto"
    assert PRECONDITIONERS == tuple(REGISTRY)
    assert {"none", "jacobi", "kron", "two_level", "nystrom", "pca", "direct", "rpcholesky",
            "pca_refined",
            "auto"} == set(PRECONDITIONERS)
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.description and issubclass(cls, Preconditioner)
        assert StructuredSpec(preconditioner=name).preconditioner == name
    with pytest.raises(ValueError, match="must be one of none, jacobi, kron"):
        StructuredSpec(preconditioner="krom")


class _Overshooting(Preconditioner):
    """Scales the Jacobian rows by 10⁶: one CG step then overshoots in the residual norm."""

    name = "overshoot"

    def __init__(self, d0: int) -> None:
        self.d0 = d0

    def apply(self, R: torch.Tensor) -> torch.Tensor:
        out = R.clone().reshape(-1, self.d0 + 1, R.shape[1])
        out[:, 1:] *= 1e6
        return out.reshape(R.shape) + 1e3 * R.roll(1, 0)


def test_a_residual_above_the_start_warns_and_is_not_converged(tabular):
    X, y, _ = tabular
    op = structured_operator(X, **TABULAR)
    with pytest.warns(RuntimeWarning, match="WORSE than x = 0"):
        res = structured_solve(op, y, ridge=MU, tol=1e-8, maxiter=1,
                               preconditioner=_Overshooting(8), progress=False)
    assert res.residual > 1 and not res.converged
