"""examples/: the notebook's script twin runs on real stores and its numbers are right.

A small Gram store (``run_gram``) and a small drift store (``run_drift``) are written by the real
jobs on an embedded Ray; ``examples/explore_store.py`` then runs as a user would run it. Its
printed spectrum is checked against ``numpy.linalg.eigvalsh`` of the Θ_λ Gram computed here with
the kernel library (no store involved), its drift numbers against the drift store read directly.
The notebook must hold exactly the script's cells.
"""

from __future__ import annotations

import io
import json
import re
import runpy
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Iterator
from unittest.mock import patch

import numpy as np
import pytest

from jntk_dist.workflows.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "explore_store.py"
NOTEBOOK = REPO / "examples" / "explore_store.ipynb"
DEPTH, LAM = 2, 0.05


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    import ray

    from jntk_dist.workflows.drift import DriftConfig, run_drift
    from jntk_dist.workflows.gram import GramJobConfig, run_gram

    tmp = tmp_path_factory.mktemp("examples")
    gram_cfg = load_config({
        "dataset": {"name": "fibonacci", "options": {"n": 20, "d": 4}},
        "kernel": {"kind": "jntk", "depth": DEPTH, "activation": "gelu", "lam": LAM},
        "output": str(tmp / "gram.zarr"), "tile_points": 8, "progress": False,
        "ray": {"num_actors": 1},
    }, GramJobConfig)
    drift_cfg = load_config({
        "experiment": "jntk",
        "dataset": {"name": "fibonacci", "options": {"n": 6, "d": 4}},
        "grid": {"widths": [16, 64], "depths": [1], "seeds": [0]},
        "training": {"lam": 0.01, "lr": 1.0, "record_steps": [0, 2]},
        "output": str(tmp / "drift.zarr"),
        "ray": {"backend": "tasks", "cpus_per_run": 0.5}, "progress": False,
    }, DriftConfig)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        run_gram(gram_cfg, progress=False)
        run_drift(drift_cfg, progress=False)
    finally:
        if started:
            ray.shutdown()
    yield gram_cfg.output, drift_cfg.output


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_script_twin_plots_gram_spectrum_and_drift(stores: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    import xarray as xr

    from jntk_dist import kernels
    from jntk_dist.data import load_dataset

    gram_path, drift_path = stores
    out = tmp_path / "figures"
    run = _run("--gram", str(gram_path), "--drift", str(drift_path), "--out", str(out),
               "--points", "5")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("gram_heatmap.png", "gram_spectrum.png", "drift_curves.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name

    # The spectrum it reports equals eigvalsh of Θ_λ computed here, without the store.
    X = load_dataset("fibonacci", n=20, d=4).X
    theta = kernels.gram(X, depth=DEPTH, activation="gelu", kind="jntk", lam=LAM)
    w = np.linalg.eigvalsh(np.asarray(theta))
    found = re.search(r"lambda_max=(\S+) lambda_min=(\S+) tau=(\S+) positive=(\w+)", run.stdout)
    assert found, run.stdout
    lam_max, lam_min = float(found[1]), float(found[2])
    assert lam_max == pytest.approx(w[-1], rel=1e-6)
    assert lam_min == pytest.approx(w[0], rel=1e-4, abs=1e-9 * w[-1])
    assert found[4] == str(w[0] > float(found[3]))

    # The drift summary matches the store read directly.
    ds = xr.open_zarr(str(drift_path), consolidated=False)
    assert int(ds["complete"].sum()) == 2  # widths × seeds
    widest = ds["distance"].mean("seed").isel(width=-1)
    summary = re.search(r"mean distance at the widest network: (\{.*\})", run.stdout)
    assert summary, run.stdout
    printed = json.loads(summary[1])
    for c, label in enumerate(ds.attrs["components"]):
        assert printed[label] == pytest.approx(float(widest.isel(component=c).max()), rel=1e-9)


def test_script_without_drift_store_skips_only_drift(stores: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """In this process (runpy, as the notebook would run it top to bottom): no interpreter start."""
    gram_path, _ = stores
    out = tmp_path / "figures"
    text = io.StringIO()
    with patch.object(sys, "argv", [str(SCRIPT), "--gram", str(gram_path), "--drift", "none",
                                    "--out", str(out)]), redirect_stdout(text):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "drift plots skipped" in text.getvalue()
    assert sorted(p.name for p in out.glob("*.png")) == ["gram_heatmap.png", "gram_spectrum.png"]


def test_notebook_is_the_script_twin() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    sync = runpy.run_path(str(SCRIPT.parent / "sync_notebook.py"))  # the notebook's generator
    expected = sync["cells_of"](SCRIPT.read_text())
    assert expected and [{k: v for k, v in c.items() if k != "id"} for c in nb["cells"]] == expected
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
