"""The drift grid: Ray Train runs at once, Zarr results with labelled dims, killed runs resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from jntk_dist import kernels
from jntk_dist.workflows.config import load_config
from jntk_dist.solvers.checkpoint import FileCheckpointer
from jntk_dist.workflows.drift import (DriftConfig, RunSpec, execute_run, fit_slopes,
                                       load_run_data, open_drift, plot_drift, run_drift)
from jntk_dist.networks.finite import FiniteMLP, finite_jntk, mc_jacobian_nngp
from jntk_dist.networks.training import RobustTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_config(tmp_path: Path, **changes: object) -> DriftConfig:
    data = {
        "experiment": "jntk",
        "dataset": {"name": "fibonacci", "options": {"n": 6, "d": 4}},
        "grid": {"widths": [16, 32], "depths": [1], "seeds": [0, 1]},
        "network": {"activation": "gelu", "kappa": 0.1},
        "training": {"lam": 0.01, "lr": 1.0, "record_steps": [0, 1, 2, 4]},
        "output": str(tmp_path / "drift.zarr"),
        "ray": {"num_cpus": 2, "backend": "train", "cpus_per_run": 0.5,
                "train_poll_interval_s": 0.5},
        "progress": False,
    }
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]  # type: ignore[index]
        node[last] = value  # type: ignore[index]
    return load_config(data, DriftConfig)


def test_paper_configs_validate() -> None:
    for name in ("drift_quick", "drift_fig1", "drift_fig3"):
        cfg = load_config(CONFIGS / f"{name}.yaml", DriftConfig)
        assert cfg.grid.widths
    fig3 = load_config(CONFIGS / "drift_fig3.yaml", DriftConfig)
    assert fig3.grid.depths == [11] and fig3.training.record_steps[-1] == 2**11
    assert fig3.training.lam == 0.01 and fig3.network.kappa == 0.1
    fig1 = load_config(CONFIGS / "drift_fig1.yaml", DriftConfig)
    assert fig1.experiment == "nngp" and fig1.monte_carlo.n_networks == 10**6
    assert fig1.grid.widths == [2**k for k in range(6, 14)]


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="grid.widhts: unknown key"):
        load_config({"dataset": {"name": "fibonacci"}, "grid": {"widhts": [1], "depths": [1],
                     "seeds": [0], "widths": [2]}, "output": "x.zarr"}, DriftConfig)
    with pytest.raises(ValueError, match="not smooth"):
        small_config(tmp_path, **{"network.activation": "relu"})
    with pytest.raises(ValueError, match="record_steps"):
        small_config(tmp_path, experiment="nngp")


def test_execute_run_resumes_from_checkpoint_identically(tmp_path: Path) -> None:
    """A run whose state was saved at step 2 finishes with exactly the uninterrupted records."""
    cfg = small_config(tmp_path)
    data = load_run_data(cfg)
    spec = RunSpec(width=32, depth=1, seed=1, position=(1, 0, 1))
    fresh = execute_run(cfg, spec, data)
    assert fresh["attempts"] == 1 and fresh["resumed_from_step"] == -1

    net = FiniteMLP(4, 32, 1, "gelu", 0.1, seed=1)
    trainer = RobustTrainer(net, data.x, data.y, lam=0.01, lr=1.0)
    trainer.run([0, 1, 2])
    ck = FileCheckpointer(tmp_path / "ck")
    ck.save({"trainer": trainer.state_dict(), "attempts": 1, "position": 2,
             "started": time.time()}, {"step": 2})
    resumed = execute_run(cfg, spec, data, ck)
    assert resumed["attempts"] == 2 and resumed["resumed_from_step"] == 2
    np.testing.assert_allclose(resumed["distance"], fresh["distance"], rtol=1e-12)
    np.testing.assert_allclose(resumed["loss"], fresh["loss"], rtol=1e-12)
    # the finished run is kept: asking again returns it without recomputing
    assert execute_run(cfg, spec, data, ck)["finished"] == resumed["finished"]
    # step-0 distance from an independent computation
    theta = kernels.jntk(data.x, depth=1, activation="gelu")
    direct = np.abs(finite_jntk(FiniteMLP(4, 32, 1, "gelu", 0.1, seed=1), data.x) - theta)
    assert fresh["distance"][0][0] == pytest.approx(float(direct[:, :, 0, 0].max()), rel=1e-12)


def test_nngp_run_in_segments_matches_direct_monte_carlo(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, experiment="nngp", **{"training.record_steps": [0],
                       "monte_carlo": {"n_networks": 400, "segments": 2}})
    data = load_run_data(cfg)
    spec = RunSpec(width=16, depth=2, seed=3, position=(0, 0, 0))
    out = execute_run(cfg, spec, data, FileCheckpointer(tmp_path / "mc"))
    idx = [0, 1, 2]
    x = torch.as_tensor(data.x)
    parts = [mc_jacobian_nngp(x, depth=2, width=16, activation="gelu", n_networks=200,
                              seed=3 * 1_000_003 + k, indices=idx) for k in range(2)]
    mean = (parts[0].mean + parts[1].mean) / 2
    sigma = torch.as_tensor(kernels.jacobian_nngp(data.x, depth=2, activation="gelu"))
    sigma = sigma[:, :, idx][:, :, :, idx]
    expected = [float((mean - sigma)[:, :, a, b].abs().max())
                for a, b in [(0, 0), (2, 2), (0, 2), (1, 2)]]
    np.testing.assert_allclose(out["distance"][0], expected, rtol=1e-10)


def test_mc_distance_floor_is_the_expected_maximum_of_the_noise() -> None:
    """The Monte-Carlo floor of Fig. 1 against the known E max |Z| of standard normals: ≈ 0.80
    for one pair, ≈ 3.9 for 10^4 pairs (a table value), scaled by the standard error."""
    from jntk_dist.networks import MonteCarloKernel, mc_distance

    for n, expected in ((1, 0.798), (100, 3.9)):  # n² pairs
        mean = torch.zeros((n, n, 1, 1), dtype=torch.float64)
        mean[0, 0, 0, 0] = 0.25
        mc = MonteCarloKernel(mean=mean, stderr=torch.full_like(mean, 0.01), n_networks=10)
        dist, floor = mc_distance(mc, torch.zeros_like(mean), [(0, 0)], [0], draws=64)
        assert dist == [0.25]
        assert floor[0] == pytest.approx(0.01 * expected, rel=0.2)


def test_run_device_follows_the_config(tmp_path: Path) -> None:
    from jntk_dist.workflows.drift import run_device

    assert run_device(small_config(tmp_path, device="cpu")).type == "cpu"
    assert run_device(small_config(tmp_path, device="auto")).type == "cpu"  # ray.use_gpu false
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda, but torch sees no CUDA device"):
            run_device(small_config(tmp_path, device="cuda"))
    with pytest.raises(ValueError, match="device"):
        small_config(tmp_path, device="tpu")


def test_slopes_and_plots(tmp_path: Path) -> None:
    widths = np.array([64, 128, 256, 512])
    rng = np.random.default_rng(0)
    dist = 3.0 * widths[:, None, None, None, None] ** -0.5 * \
        np.exp(0.01 * rng.standard_normal((4, 2, 3, 2, 2)))
    ds = xr.Dataset({"distance": (("width", "depth", "seed", "step", "component"), dist)},
                    coords={"width": widths, "depth": [1, 2], "seed": [0, 1, 2], "step": [0, 4],
                            "alpha": ("component", [0, 2]), "beta": ("component", [0, 2])})
    slopes = fit_slopes(ds)
    assert slopes.shape == (2, 2, 2)
    np.testing.assert_allclose(slopes.values, -0.5, atol=0.03)
    paths = plot_drift(ds, tmp_path / "plots")
    assert [p.name for p in paths] == ["distance_depth1.png", "distance_depth2.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_drift_figures_band_from_three_seeds_dots_below_and_legends_off_the_data() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from jntk_dist.workflows.drift import drift_figures

    widths = np.array([64, 128, 256])
    rng = np.random.default_rng(1)
    for n_seed, bands in ((2, False), (3, True)):
        dist = widths[:, None, None, None, None] ** -0.5 * \
            np.exp(0.3 * rng.standard_normal((3, 1, n_seed, 2, 1)))
        ds = xr.Dataset({"distance": (("width", "depth", "seed", "step", "component"), dist)},
                        coords={"width": widths, "depth": [1], "seed": np.arange(n_seed),
                                "step": [0, 4], "alpha": ("component", [0]),
                                "beta": ("component", [0])})
        (_, fig), = drift_figures(ds)
        (ax,) = fig.axes
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert bool(polys) == bands
        assert all(p.get_alpha() <= 0.1 for p in polys)  # light bands, the curves on top
        fig.canvas.draw()
        assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
        plt.close(fig)


def _kill_after_first_checkpoint(progress: Path, stop: threading.Event) -> dict:
    """Wait until the run has reported a training step, then SIGKILL its worker process."""
    while not stop.is_set():
        try:
            info = json.loads(progress.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
            continue
        if info.get("step", 0) >= 1 and not info.get("done"):
            os.kill(int(info["pid"]), signal.SIGKILL)
            return info
        if info.get("done"):
            return {}
        time.sleep(0.05)
    return {}


@pytest.mark.slow  # Ray Train: a controller + worker process per run; 3-5 min at load 10-30
def test_ray_train_grid_concurrent_zarr_and_killed_worker_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """4 small runs at once under Ray Train; one worker is killed mid-run and resumes."""
    import ray

    caplog.set_level(logging.INFO, logger="jntk_dist.workflows.drift.job")
    cfg = small_config(tmp_path, **{"training.record_steps": [0, 1, 2, 4, 8, 16]})
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        target = cfg.checkpoints_dir / "w32_d1_s1" / "progress.json"
        stop = threading.Event()
        killed: dict = {}
        killer = threading.Thread(
            target=lambda: killed.update(_kill_after_first_checkpoint(target, stop)))
        killer.start()
        try:
            result = run_drift(cfg)
        finally:
            stop.set()
            killer.join()
    finally:
        ray.shutdown()
    assert sorted(result.runs_computed) == ["w16_d1_s0", "w16_d1_s1", "w32_d1_s0", "w32_d1_s1"]
    ds = open_drift(cfg.output)
    assert dict(ds.sizes) == {"width": 2, "depth": 1, "seed": 2, "step": 6, "component": 4}
    assert ds["distance"].dims == ("width", "depth", "seed", "step", "component")
    assert list(ds["step"].values) == [0, 1, 2, 4, 8, 16]
    assert bool(ds["complete"].all()) and bool(np.isfinite(ds["distance"]).all())
    # all four runs were let in flight at once (2 CPUs, 0.5 per run), not one after another
    assert "drift: 4 runs, 4 at a time, backend train" in caplog.text
    # the killed run was restarted by Ray Train from its checkpoint and matches a clean run
    assert killed, "the run finished before its worker could be killed"
    assert int(ds["attempts"].sel(width=32, depth=1, seed=1)) == 2
    # (from the latest checkpoint the controller had registered: step ≥ 0, not from scratch)
    assert int(ds["resumed_from_step"].sel(width=32, depth=1, seed=1)) >= 0
    clean = execute_run(cfg, RunSpec(32, 1, 1, (1, 0, 1)), load_run_data(cfg))
    np.testing.assert_allclose(ds["distance"].sel(width=32, depth=1, seed=1).values,
                               clean["distance"], rtol=1e-10)
    assert result.plots and all(p.exists() for p in result.plots)
    # a rerun finds everything done; a different config is refused by name
    again = run_drift(cfg)
    assert again.runs_computed == [] and again.runs_already_done == 4
    other = small_config(tmp_path, **{"network.kappa": 0.2})
    with pytest.raises(ValueError, match="network.kappa"):
        run_drift(other)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_runs_on_an_embedded_ray_without_a_gpu_are_refused(tmp_path: Path) -> None:
    """Ray would queue GPU runs forever on a CPU-only local Ray: the job says so instead."""
    cfg = small_config(tmp_path, **{"ray.use_gpu": True})
    with pytest.raises(ValueError, match="has no GPU.*ray.use_gpu=false"):
        run_drift(cfg)
    complete = open_drift(cfg.output)["complete"]
    assert not bool(complete.any())  # the store exists, empty and resumable on a CPU run
    done = run_drift(cfg.model_copy(update={"ray": cfg.ray.model_copy(update={
        "use_gpu": False, "backend": "tasks"})}))
    assert sorted(done.runs_computed) == ["w16_d1_s0", "w16_d1_s1", "w32_d1_s0", "w32_d1_s1"]
