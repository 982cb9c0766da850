"""`jntk solve --structured` / `jntk eigen --structured`: the matrix-free jobs against the dense jobs
(independent route: the dense Gram solved by Dask Cholesky, eigendecomposed by numpy/scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jntk_dist import kernels
from jntk_dist.workflows.eigen import EigenJobConfig, run_eigen
from jntk_dist.workflows.solve import SolveJobConfig, run_solve
from jntk_dist.workflows.config import InexactResultError, load_config

from conftest import write_gram_store
from conftest import sphere as _sphere

DEPTH, ACT, LAM = 2, "erf", 0.5
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny operators: no thread-pool stalls


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X = _sphere(36, 4, 3)
    y = np.where(X[:, 0] + 0.3 * X[:, 1] > 0, 1.0, -1.0)
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, X=X, y=y)
    return path, X, y


def _write_store(path, X, y, mode):
    return write_gram_store(path, X, y, depth=DEPTH, activation=ACT, lam=LAM, mode=mode,
                            tile_points=10)


def _open(path, group):
    return xr.open_zarr(str(path), group=group, consolidated=False)


def _rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


@pytest.mark.parametrize("source", ["dataset", "fields_store"])
def test_structured_solve_job_equals_dense_solve_job(tmp_path, data, source):
    path, X, y = data
    if source == "dataset":
        base = {"dataset": {"path": str(path)}, "kernel": {"depth": DEPTH, "activation": ACT},
                "lam": LAM}
    else:
        base = {"store": str(_write_store(tmp_path / "f.zarr", X, y, "fields"))}
    base.update(ridge=1e-3, test_fraction=0.25, seed=2)
    dense = run_solve(load_config({**base, "output": str(tmp_path / "d.zarr")}, SolveJobConfig),
                      progress=False)
    out, ckpt = tmp_path / "s.zarr", tmp_path / "s_pcg.npz"
    # a store is read one row tile per product (the path for stores that do not fit in memory)
    structured = {"tol": 1e-10, "fields": "auto" if source == "dataset" else "recompute",
                  "preconditioner": "two_level"}  # iterative: auto would solve it directly
    if source == "dataset":  # a stopped run leaves its default checkpoint; the rerun resumes it
        with pytest.raises(InexactResultError, match="did not converge"):
            run_solve(load_config({**base, "output": str(out),
                                   "structured": {**structured, "maxiter": 3}},
                                  SolveJobConfig), progress=False)
        stopped = _open(out, "solve").attrs  # written, and marked as not converged
        assert stopped["converged"] is False or stopped["converged"] == 0
        assert not stopped["pcg_converged"] and list(stopped["pcg_iterations"]) == [3]
        with np.load(ckpt) as z:
            assert int(z["iteration"]) == 3
    s = run_solve(load_config({**base, "output": str(out), "structured": structured},
                              SolveJobConfig), progress=False)
    assert s["pcg_resumed_from"] == ([3] if source == "dataset" else [0])
    d_res, s_res = _open(tmp_path / "d.zarr", "solve"), _open(out, "solve")
    np.testing.assert_array_equal(s_res["test_index"].values, d_res["test_index"].values)
    assert s_res["f_test"].shape == d_res["f_test"].shape and s_res["f_test"].size > 0
    assert _rel(s_res["f_test"].values, d_res["f_test"].values) <= 1e-6
    assert _rel(s_res["f_train"].values, d_res["f_train"].values) <= 1e-6
    assert _rel(s_res["coef"].values, d_res["coef"].values) <= 1e-6
    assert s["structured"] and s["pcg_converged"] and s["relative_residual"] <= 1e-9
    assert (s["train_accuracy"], s["test_accuracy"]) == (dense["train_accuracy"],
                                                        dense["test_accuracy"])
    assert s["gram_size"] == dense["gram_size"]
    # the default checkpoint beside the output is removed once converged and written
    assert s["checkpoints"] == [str(ckpt)] and not ckpt.exists()


def test_explicit_checkpoint_is_kept_and_checked(tmp_path, data):
    path, X, y = data
    cfg = {"dataset": {"path": str(path)}, "kernel": {"depth": DEPTH, "activation": ACT},
           "lam": LAM, "ridge": 1e-3, "output": str(tmp_path / "o.zarr")}
    ckpt = tmp_path / "cg.npz"
    run_solve(load_config({**cfg, "structured": {"checkpoint": str(ckpt), "maxiter": 2,
                                                 "preconditioner": "two_level"},
                           "accept_inexact": True}, SolveJobConfig), progress=False)  # stopped
    assert ckpt.exists()
    with pytest.raises(ValueError, match="written for another system"):  # another ridge
        run_solve(load_config({**cfg, "ridge": 1e-2, "structured": {"checkpoint": str(ckpt)}},
                              SolveJobConfig), progress=False)


@pytest.mark.parametrize("method", ["shift_invert", "lobpcg"])
def test_structured_eigen_job_extremes_equal_dense_spectrum(tmp_path, data, method):
    path, X, y = data
    base = {"dataset": {"path": str(path)}, "kernel": {"depth": DEPTH, "activation": ACT},
            "lam": LAM, "k": 4, "test_fraction": 0.25}
    dense = run_eigen(load_config({**base, "output": str(tmp_path / "d.zarr")}, EigenJobConfig),
                      progress=False)
    # LOBPCG needs ~700 iterations here: its default cap (500) stopped it at residual 1.4e-5 >
    # tol·λ_max = 5.7e-7, which the job now refuses (converged: false, exit 2)
    more = {"maxiter": 2000} if method == "lobpcg" else {}
    s = run_eigen(load_config({**base, "output": str(tmp_path / "s.zarr"),
                               "structured": {"lambda_min_method": method, **more}},
                              EigenJobConfig), progress=False)
    assert s["converged"]
    assert method in s["method"] and s["lambda_min_products"] > 0
    train = _open(tmp_path / "s.zarr", "eigen_jntk")["train_index"].values
    np.testing.assert_array_equal(train, _open(tmp_path / "d.zarr", "eigen_jntk")["train_index"])
    ref = np.linalg.eigvalsh(kernels.gram(X[train], depth=DEPTH, activation=ACT, lam=LAM))
    assert s["n"] == dense["n"] == ref.size
    assert s["lambda_max"] == pytest.approx(dense["lambda_max"], rel=1e-9)
    scale = dense["lambda_max"]
    assert abs(s["lambda_min"] - dense["lambda_min"]) <= 1e-7 * scale
    assert abs(s["lambda_min"] - ref[0]) <= s["lambda_min_residual"] + 1e-12 * scale
    assert s["lambda_min"] > 1e-6 * scale  # a well-conditioned case: the verdicts must agree
    assert s["positive_definite"] == dense["positive_definite"] is True
    top = _open(tmp_path / "s.zarr", "eigen_jntk")["eigenvalues"].values
    np.testing.assert_allclose(top, ref[-4:], rtol=1e-9)
    assert (tmp_path / "s_eigen_jntk.png").exists()


def test_structured_mode_refuses_what_it_cannot_do(tmp_path, data):
    path, X, y = data
    dense_store = _write_store(tmp_path / "d.zarr", X, y, "dense")
    cfg = load_config({"store": str(dense_store), "ridge": 1e-3, "structured": True,
                       "output": str(tmp_path / "o.zarr")}, SolveJobConfig)
    with pytest.raises(ValueError, match="'dense' store.*store: fields"):
        run_solve(cfg, progress=False)
    base = {"dataset": {"path": str(path)}, "kernel": {"depth": DEPTH, "activation": ACT},
            "lam": LAM, "output": str(tmp_path / "e.zarr"), "structured": True}
    with pytest.raises(ValueError, match="no finite-time predictions"):
        run_eigen(load_config({**base, "times": [1.0]}, EigenJobConfig))
    with pytest.raises(ValueError, match="λ > 0"):
        run_solve(load_config({**base, "lam": 0.0, "ridge": 1e-3}, SolveJobConfig))
    assert not (tmp_path / "o.zarr" / "solve").exists()


def test_structured_flag_and_config_forms(tmp_path, data):
    from jntk_dist.cli import build_parser
    from jntk_dist.workflows.registry import get_job, load_job_config

    path, X, y = data
    conf = tmp_path / "c.yaml"
    conf.write_text(f"dataset: {{path: {path}}}\nkernel: {{depth: 2, activation: erf}}\n"
                    f"ridge: 0.001\nstructured: {{preconditioner: kron, enabled: false}}\n"
                    f"output: {tmp_path / 'o.zarr'}\n")
    def parsed(*argv: str) -> SolveJobConfig:
        args = build_parser().parse_args(["solve", *argv])
        return load_job_config(get_job("solve"), args.config, args.overrides,  # type: ignore
                               structured=args.structured)

    off, on = parsed(str(conf)), parsed(str(conf), "--structured")
    assert not off.structured.enabled and on.structured.enabled
    assert on.structured.preconditioner == "kron"  # the flag keeps the sub-options
    assert not load_config({"dataset": {"path": str(path)}, "kernel": {"depth": 2},
                            "output": "o.zarr"}, SolveJobConfig).structured.enabled
    assert load_config({"dataset": {"path": str(path)}, "kernel": {"depth": 2},
                        "output": "o.zarr", "structured": {"tol": 1e-6}},
                       SolveJobConfig).structured.preconditioner == "auto"
