"""benchmarks/run_fig1_fig3_gpu.py: its grids are the GPU configs', a CPU run at quick size
(the same per-run code, device cpu) is read by the report, and one of its runs equals the drift
job's run of the same grid point."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from jntk_dist.report import evaluate
from jntk_dist.workflows.drift import RunSpec, execute_run, load_run_data
from jntk_dist.workflows.reproduce import PAPER_CONFIGS, job_config, load_paper_config

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_script", ROOT / "benchmarks" /
                                                  "run_fig1_fig3_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("quick", [False, True])
def test_script_grids_are_the_configs(quick: bool, tmp_path: Path) -> None:
    gpu = _script()
    for name in gpu.PLANS:
        cfg = job_config(load_paper_config(PAPER_CONFIGS / f"{name}.yaml"), tmp_path, quick=quick,
                         materialise=False)
        p = gpu.plan(name, quick)
        assert cfg.experiment == p["experiment"] and cfg.dataset.name == p["dataset"]["name"]
        assert (cfg.dataset.options or {}) == p["dataset"].get("options", {})
        assert cfg.grid.model_dump() == p["grid"]
        assert cfg.training.record_steps == p["training"]["record_steps"]
        assert cfg.network.model_dump() == p["network"]
        assert cfg.dtype == p["dtype"]
        assert cfg.matmul_precision == p["matmul_precision"]
        assert cfg.test_fraction == p.get("test_fraction") and cfg.max_points == p.get("max_points")
        assert [tuple(c) for c in cfg.components] == gpu.COMPONENTS
        if cfg.experiment == "nngp":
            assert cfg.monte_carlo.n_networks == p["monte_carlo"]["n_networks"]
            assert cfg.monte_carlo.segments == 1
        else:
            assert (cfg.training.lam, cfg.training.lr) == (p["training"]["lam"],
                                                           p["training"]["lr"])


def test_cpu_run_of_the_script_is_reported(tmp_path: Path) -> None:
    gpu = _script()
    assert gpu.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    for name in gpu.PLANS:
        record = json.loads((tmp_path / name / "run.json").read_text())
        assert record["status"] == "ok" and record["config"]["device"] == "cpu"
        rep = evaluate(load_paper_config(PAPER_CONFIGS / f"{name}.yaml"), tmp_path)
        assert rep.problem == "" and rep.rows and rep.figures
        assert "on device cpu" in rep.size
    # one grid point of the script equals the drift job's run of it (same seeds, same code)
    exp = load_paper_config(PAPER_CONFIGS / "fig1_gpu.yaml")
    cfg = job_config(exp, tmp_path / "job", quick=True)
    out = execute_run(cfg, RunSpec(width=4, depth=3, seed=0, position=(1, 1, 0)),
                      load_run_data(cfg))
    data = json.loads((tmp_path / "fig1_gpu" / "fig1_gpu.json").read_text())
    np.testing.assert_allclose(data["distance"][1][1][0], out["distance"], rtol=1e-5)
    np.testing.assert_allclose(data["mc_floor"][1][1][0], out["mc_floor"], rtol=1e-5)
