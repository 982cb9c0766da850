"""examples/: the notebook runs where it lives after the README quickstart, and its script twin's
numbers are right.

A small Gram store (``run_gram``) and a small drift store (``run_drift``) are written by the real
jobs on an embedded Ray; ``examples/explore_store.py`` then runs as a user would run it. Its
printed spectrum is checked against ``numpy.linalg.eigvalsh`` of the Θ_λ Gram computed here with
the kernel library (no store involved), its drift numbers against the drift store read directly.
The notebook must hold exactly the script's cells.

The notebook itself is executed by a real Jupyter kernel (nbclient) with examples/ as its working
folder, in a copy of configs/ and examples/ where only the README quickstart
(``jntk gram configs/quickstart.yaml``) was run — and then again with a drift store where
``jntk drift configs/drift_quick.yaml`` puts it.
"""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import shutil
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
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, not an installed one
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


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
    for name in ("gram_heatmap.png", "gram_spectrum.png", "drift_depth1.png"):
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
    assert "drift curves skipped" in text.getvalue()
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


# ---- the notebook, where it lives ---------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of configs/ and examples/ in which the README quickstart ran, from that folder as
    the README says, with stderr a pipe (as in a file or ``ray job logs``); (folder, its stderr)."""
    root = tmp_path_factory.mktemp("checkout")
    for folder in ("configs", "examples"):
        shutil.copytree(REPO / folder, root / folder)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JNTK_PROGRESS_EVERY_S": "0"}
    env.pop("JNTK_PROGRESS", None)
    run = subprocess.run([sys.executable, "-m", "jntk_dist.cli", "gram", "configs/quickstart.yaml"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return root, run.stderr


def _execute(root: Path, parameters: str = "") -> tuple[str, int]:
    """Run examples/explore_store.ipynb in a Jupyter kernel whose working folder is examples/;
    ``parameters`` is injected after the cell tagged 'parameters', as papermill does. Returns
    the text the cells printed and the number of images they displayed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(root / "examples" / "explore_store.ipynb", as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    if parameters:
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(parameters))
    nb.cells.append(nbformat.v4.new_code_cell(_SHADE_PROBE))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(root / "examples")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    return text, images


# how far from white (the colour of 0) the heatmap paints the Jacobian–Jacobian entries, as a
# fraction of the colour scale; a linear scale leaves them within 1e-3 of white
_SHADE_PROBE = """
if HAVE_GRAM:
    jacobian = np.arange(block.shape[0]) % p != 0
    jj = block[np.ix_(jacobian, jacobian)]
    shade = np.abs(np.asarray(image.norm(jj)) - float(image.norm(0.0)))
    print(f"JJ_SHADE {float(np.median(shade)):.6f}")
"""


def test_notebook_runs_where_it_lives_after_the_quickstart(quickstart: tuple[Path, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, log = quickstart
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports this checkout's package
    text, images = _execute(root)
    assert images == 2, text  # the heatmap and the spectrum
    assert {p.name for p in (root / "runs" / "explore").glob("*.png")} == {
        "gram_heatmap.png", "gram_spectrum.png"}  # under the repository, not examples/runs
    assert "Θ_λ (λ = 0.01), spectrum by" in text  # the stored λ, stated
    skipped = [line for line in text.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "drift curves" in skipped[0], text
    assert "`jntk drift configs/drift_quick.yaml`" in skipped[0]
    shade = float(re.search(r"JJ_SHADE (\S+)", text)[1])
    assert shade > 0.1, f"Jacobian blocks nearly white in the heatmap: median shade {shade}"

    # the quickstart said what it was doing during Ray's silent start, and its progress came as
    # plain lines (no carriage-return redraws) ending with a summary
    assert "\r" not in log
    start, ready = log.find("starting Ray (embedded, 2 CPUs) …"), log.find("Ray ready in")
    assert 0 <= start < ready, log[-3000:]
    counts = [int(m[1]) for m in re.finditer(r"gram tiles: (\d+)/6 tile", log)]
    assert counts == sorted(counts) and counts[-1] == 6, log[-3000:]
    assert re.search(r"gram tiles: 6/6 tile \(100%\), .* in \d", log), log[-3000:]


def test_notebook_shows_drift_curves_when_the_drift_store_is_there(
        quickstart: tuple[Path, str], stores: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift store where ``jntk drift configs/drift_quick.yaml`` writes it; the Gram part is
    switched off through the parameters (papermill's way) to keep this short."""
    root, _ = quickstart
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    shutil.copytree(stores[1], root / "runs" / "drift_quick.zarr", dirs_exist_ok=True)
    try:
        text, images = _execute(root, "GRAM_STORE = None")
    finally:
        shutil.rmtree(root / "runs" / "drift_quick.zarr")
    assert images == 1, text  # one depth, two steps: one figure (the CLI's drift_figures)
    assert (root / "runs" / "explore" / "drift_depth1.png").stat().st_size > 5000
    assert "mean distance at the widest network:" in text
    assert "heatmap and spectrum skipped" in text and "drift curves skipped" not in text
