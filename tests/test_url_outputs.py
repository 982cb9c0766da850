"""Every job's results at fsspec URLs: the drift grid and the analysis jobs (solve, eigen,
assumption8) written to ``file://`` URLs and to ``s3://`` on moto's S3 server (loopback, s3fs),
a Gram store read from ``s3://`` as the analyses' input, read back with ``xarray.open_zarr``
and checked against an independent route (the kernels and numpy), plots written through
fsspec, checkpoints kept in local scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from jntk_dist import kernels
from jntk_dist.workflows.assumption8 import Assumption8JobConfig, run_assumption8
from jntk_dist.workflows.eigen import EigenJobConfig, run_eigen
from jntk_dist.workflows.solve import SolveJobConfig, run_solve
from jntk_dist.workflows.config import ConfigError, load_config
from jntk_dist.workflows.drift import DriftConfig, open_drift, run_drift
from jntk_dist.networks.finite import FiniteMLP, finite_jntk
from jntk_dist.workflows.gram import GramJobConfig, run_gram
from jntk_dist.store import beside, local_beside

N, D0, DEPTH, ACT, LAM = 13, 3, 2, "gelu", 0.1
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(N, D0))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.where(X[:, 0] + 0.3 * X[:, 1] >= 0, 1.0, -1.0)
    path = tmp_path_factory.mktemp("data") / "points.npz"
    np.savez(path, X=X, y=y)
    return path, X, y


def _s3fs(options: dict[str, Any]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(**options)


def _url_bytes(url: str, options: dict[str, Any] | None = None) -> bytes:
    import fsspec

    with fsspec.open(url, "rb", **(options or {})) as fh:
        return fh.read()


# ---- drift ------------------------------------------------------------------------------


def _drift_config(output: str, widths: tuple[int, ...] = (16, 32), **over: Any) -> DriftConfig:
    data: dict[str, Any] = {
        "experiment": "jntk",
        "dataset": {"name": "fibonacci", "options": {"n": 6, "d": 4}},
        "grid": {"widths": list(widths), "depths": [1], "seeds": [0]},
        "network": {"activation": "gelu", "kappa": 0.1},
        "training": {"lam": 0.01, "lr": 1.0, "record_steps": [0, 1]},
        "output": output, "progress": False,
        "ray": {"backend": "tasks", "cpus_per_run": 1},
    }
    data.update(over)
    return load_config(data, DriftConfig)


def _assert_drift_values(ds: xr.Dataset, cfg: DriftConfig) -> None:
    """Step-0 distances against the finite and analytic kernels computed here."""
    from jntk_dist.workflows.drift import load_run_data

    widths = cfg.grid.widths
    assert dict(ds.sizes) == {"width": len(widths), "depth": 1, "seed": 1, "step": 2,
                              "component": 4}
    assert ds["distance"].dims == ("width", "depth", "seed", "step", "component")
    assert bool(ds["complete"].all()) and bool(np.isfinite(ds["distance"]).all())
    x = load_run_data(cfg).x
    analytic = kernels.jntk(x, x, depth=1, activation="gelu")
    for width in widths:
        net = FiniteMLP(x.shape[1], width, 1, "gelu", 0.1, seed=0, dtype=torch.float64)
        finite = finite_jntk(net, x)
        expected = [np.abs(finite[:, :, a, b] - analytic[:, :, a, b]).max()
                    for a, b in cfg.components]
        np.testing.assert_allclose(ds["distance"].sel(width=width, depth=1, seed=0, step=0),
                                   expected, rtol=1e-9)


def test_drift_to_a_file_url(ray_session: None, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JNTK_SCRATCH", str(tmp_path / "scratch"))
    folder = tmp_path / "out" / "drift.zarr"
    url = folder.as_uri()
    cfg = _drift_config(url)
    assert cfg.output == url and cfg.plots_dir == (tmp_path / "out" / "drift_plots").as_uri()
    result = run_drift(cfg)
    assert sorted(result.runs_computed) == ["w16_d1_s0", "w32_d1_s0"] and result.path == url
    assert (folder / "zarr.json").exists()
    ds = xr.open_zarr(url, consolidated=False)
    _assert_drift_values(ds, cfg)
    xr.testing.assert_identical(open_drift(url), open_drift(folder))  # URL = path reading
    # plots through fsspec beside the store; checkpoints in this machine's scratch folder
    assert result.plots == [f"{cfg.plots_dir}/distance_depth1.png"]
    assert (tmp_path / "out" / "drift_plots" / "distance_depth1.png").read_bytes()[:8] == PNG
    scratch = local_beside(url, "_checkpoints")
    assert scratch.parent == tmp_path / "scratch" and (scratch / "w16_d1_s0" / "state.pt").exists()
    assert not (tmp_path / "out" / "drift_checkpoints").exists()
    with pytest.raises(ValueError, match="network.kappa"):  # another config is refused
        run_drift(_drift_config(url, network={"activation": "gelu", "kappa": 0.2}))


def test_drift_to_s3(ray_session: None, s3_server: dict[str, Any], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JNTK_SCRATCH", str(tmp_path / "scratch"))
    url = "s3://jntk/drift/d.zarr"
    cfg = _drift_config(url, widths=(16,), storage_options=s3_server)
    result = run_drift(cfg)
    assert result.runs_computed == ["w16_d1_s0"]
    ds = xr.open_zarr(url, storage_options=s3_server, consolidated=False)
    _assert_drift_values(ds, cfg)
    assert ds.attrs["config"]["storage_options"]["secret"] == "<not recorded>"
    assert "testing" not in str(ds.attrs)  # no credential value in the store
    fs = _s3fs(s3_server)
    assert fs.cat("jntk/drift/d_plots/distance_depth1.png")[:8] == PNG
    again = run_drift(cfg)  # complete: nothing to do
    assert again.runs_computed == [] and again.runs_already_done == 1
    # --overwrite deletes the objects and recomputes
    fs.pipe("jntk/drift/d.zarr/stray-object", b"left over")
    redo = run_drift(cfg, overwrite=True)
    assert redo.runs_computed == ["w16_d1_s0"]
    fs.invalidate_cache()
    assert not fs.exists("jntk/drift/d.zarr/stray-object")
    _assert_drift_values(open_drift(url, s3_server), cfg)


# ---- analysis jobs ----------------------------------------------------------------------


def _theta_lambda(X: np.ndarray) -> np.ndarray:
    return kernels.gram(X, depth=DEPTH, activation=ACT, lam=LAM)


def test_solve_and_eigen_from_an_s3_store_to_s3(ray_session: None, s3_server: dict[str, Any],
                                                 points: tuple[Path, np.ndarray, np.ndarray]
                                                 ) -> None:
    data, X, y = points
    store = "s3://jntk/analysis/gram.zarr"
    run_gram(load_config({"dataset": {"path": str(data)}, "output": store,
                          "kernel": {"depth": DEPTH, "activation": ACT, "lam": LAM},
                          "tile_points": 5, "progress": False, "ray": {"num_actors": 1},
                          "storage_options": s3_server}, GramJobConfig))
    out = "s3://jntk/analysis/results.zarr"
    cfg = load_config({"store": store, "output": out, "test_fraction": 0.25, "seed": 1,
                       "storage_options": s3_server, "compute": {"scheduler": "threads"}},
                      SolveJobConfig)
    summary = run_solve(cfg, progress=False)
    ds = xr.open_zarr(out, group="solve", storage_options=s3_server, consolidated=False)
    train, test = ds["train_index"].values, ds["test_index"].values
    assert train.size + test.size == N and test.size > 0
    # independent route: numpy solve with the kernels' Θ_λ
    coef = np.linalg.solve(_theta_lambda(X[train]), kernels_targets(y[train]))
    cross = kernels.jntk(X[test], X[train], depth=DEPTH, activation=ACT, lam=LAM)[:, :, 0, :]
    np.testing.assert_allclose(ds["f_test"].values, cross.reshape(test.size, -1) @ coef,
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ds["f_train"].values, y[train], atol=1e-6)  # interpolates
    assert summary["source"] == f"store {store}"
    assert ds.attrs["config"]["storage_options"]["key"] == "<not recorded>"

    eig = run_eigen(load_config({"store": store, "output": out, "k": 4, "max_dense": 1000,
                                 "storage_options": s3_server}, EigenJobConfig), progress=False)
    ev = xr.open_zarr(out, group="eigen_jntk", storage_options=s3_server, consolidated=False)
    np.testing.assert_allclose(np.sort(ev["eigenvalues"].values),
                               np.linalg.eigvalsh(_theta_lambda(X)), rtol=1e-8, atol=1e-12)
    assert eig["plot"] == beside(out, "_eigen_jntk.png") == "s3://jntk/analysis/results_eigen_jntk.png"
    assert _url_bytes(eig["plot"], s3_server)[:8] == PNG
    # both groups live in one store
    names = {p.rsplit("/", 1)[1] for p in _s3fs(s3_server).ls("jntk/analysis/results.zarr",
                                                              detail=False)}
    assert {"solve", "eigen_jntk"} <= names


def kernels_targets(y: np.ndarray) -> np.ndarray:
    """Point-major targets (y_i, 0, …, 0), built here rather than by the package."""
    out = np.zeros((y.size, D0 + 1))
    out[:, 0] = y
    return out.ravel()


def test_structured_solve_to_a_file_url_checkpoints_in_scratch(
        points: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JNTK_SCRATCH", str(tmp_path / "scratch"))
    data, X, y = points
    url = (tmp_path / "solve.zarr").as_uri()
    base = {"dataset": {"path": str(data)}, "output": url, "test_fraction": 0.25,
            "kernel": {"depth": DEPTH, "activation": ACT}, "lam": LAM, "ridge": 1e-3,
            "structured": {"preconditioner": "jacobi", "tol": 1e-10, "checkpoint_every": 1e-6}}
    ckpt = local_beside(url, "_pcg.npz")
    assert ckpt.parent == tmp_path / "scratch"
    stopped = run_solve(load_config({**base, "structured": {**base["structured"], "maxiter": 3},
                                     "accept_inexact": True}, SolveJobConfig),
                        progress=False)  # stopped on purpose (exit 2 without accept_inexact)
    assert stopped["pcg_converged"] is False and ckpt.exists()  # kept for the rerun
    assert stopped["checkpoints"] == [str(ckpt)]
    done = run_solve(load_config(base, SolveJobConfig), progress=False)
    assert done["pcg_converged"] is True and done["pcg_resumed_from"] == [3]
    assert not ckpt.exists()  # converged and written: the default checkpoint is removed
    ds = xr.open_zarr(url, group="solve", consolidated=False)
    train = ds["train_index"].values
    G = _theta_lambda(X[train]) + 1e-3 * np.eye(train.size * (D0 + 1))
    np.testing.assert_allclose(ds["coef"].values, np.linalg.solve(G, kernels_targets(y[train])),
                               rtol=1e-6, atol=1e-8)
    with pytest.raises(ConfigError, match="structured.checkpoint: .*object-store URLs"):
        load_config({**base, "structured": {"checkpoint": "s3://jntk/c.npz"}}, SolveJobConfig)
    with pytest.raises(ConfigError, match="storage_options apply to URLs"):
        load_config({**base, "output": str(tmp_path / "x.zarr"),
                     "storage_options": {"anon": True}}, SolveJobConfig)


def test_assumption8_to_a_file_url(points: tuple[Path, np.ndarray, np.ndarray],
                                   tmp_path: Path) -> None:
    data, X, _ = points
    url = (tmp_path / "a8" / "table.zarr").as_uri()
    cfg = load_config({"datasets": [{"dataset": {"path": str(data)}, "label": "pts"}],
                       "activations": [ACT], "depths": [1, 2], "output": url},
                      Assumption8JobConfig)
    run_assumption8(cfg, progress=False)
    ds = xr.open_zarr(url, group="assumption8", consolidated=False)
    for r in range(ds.sizes["row"]):
        depth, kind = int(ds["depth"][r]), str(ds["kernel"].values[r])
        G = kernels.ntk(X, depth=depth, activation=ACT) if kind == "ntk" else \
            kernels.gram(X, depth=depth, activation=ACT)
        np.testing.assert_allclose(float(ds["lambda_min"][r]), np.linalg.eigvalsh(G)[0],
                                   rtol=1e-6, atol=1e-12)
    assert sorted(set(ds["kernel"].values)) == ["jntk", "ntk"] and ds.sizes["row"] == 4
    folder = tmp_path / "a8"
    assert (folder / "table_assumption8.png").read_bytes()[:8] == PNG
    assert (folder / "table_assumption8.csv").read_text().startswith("dataset,activation")
    assert "| pts |" in (folder / "table_assumption8.md").read_text()
