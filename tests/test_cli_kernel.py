"""`jntk kernel` end to end: real files, compared with the library computed directly."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from jntk_dist import kernels
from jntk_dist.cli import main


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data_file(tmp_path):
    X = unit_rows(13, 3, seed=0)
    y = np.sign(X[:, 0])
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=y)
    return path, X, y


def test_npy_gram_equals_library(tmp_path, data_file, monkeypatch):
    path, X, _ = data_file
    monkeypatch.setattr("jntk_dist.workflows.kernel.ROW_BLOCK_ENTRIES", 5 * 52 * 4)  # 3 row blocks
    out = tmp_path / "k.npy"
    assert main(["kernel", "--data", str(path), "--depth", "3", "--activation", "erf",
                 "--lam", "0.1", "--out", str(out), "--no-progress"]) == 0
    got = np.load(out)
    ref = kernels.gram(X, depth=3, activation="erf", lam=0.1)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15)


def test_npz_carries_inputs_and_metadata(tmp_path, data_file):
    path, X, y = data_file
    out = tmp_path / "k.npz"
    assert main(["kernel", "--data", str(path), "--depth", "2", "--kind", "nngp",
                 "--out", str(out), "--no-progress"]) == 0
    with np.load(out) as z:
        np.testing.assert_array_equal(z["X"], X)
        np.testing.assert_array_equal(z["y"], y)
        meta = json.loads(str(z["meta"]))
        np.testing.assert_allclose(z["gram"], kernels.gram(X, depth=2, kind="nngp"),
                                   rtol=1e-13, atol=1e-15)
    assert meta["kind"] == "nngp" and meta["depth"] == 2 and meta["activation"] == "gelu"


def test_plain_relu_kernel(tmp_path, data_file):
    path, X, _ = data_file
    out = tmp_path / "ntk.npy"
    assert main(["kernel", "--data", str(path), "--depth", "4", "--activation", "relu",
                 "--plain", "--out", str(out), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(out), kernels.ntk(X, depth=4, activation="relu"),
                               rtol=1e-14)


def test_errors_name_the_problem(tmp_path, data_file, capsys):
    path, X, y = data_file
    out = tmp_path / "k.npy"
    assert main(["kernel", "--data", str(path), "--depth", "2", "--activation", "relu",
                 "--out", str(out), "--no-progress"]) == 2
    assert "not smooth" in capsys.readouterr().err
    assert not out.exists()
    bad = tmp_path / "bad.npz"
    Xbad = X.copy()
    Xbad[4] = np.nan
    np.savez(bad, X=Xbad, y=y)
    assert main(["kernel", "--data", str(bad), "--depth", "2", "--out", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"")
    assert main(["kernel", "--data", str(path), "--depth", "2", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_console_script_runs_on_shipped_dataset(tmp_path):
    out = tmp_path / "sonar.npz"
    proc = subprocess.run([sys.executable, "-m", "jntk_dist.cli", "kernel", "--dataset", "sonar",
                           "--depth", "2", "--plain", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert z["gram"].shape == (208, 208)
        # unit rows: Σ^(l)(x, x) = 1 at every layer, so Θ^(2)(x, x) = 1 + g + g², g = E[φ'(z)²]
        nodes, w = np.polynomial.hermite_e.hermegauss(120)
        cdf = 0.5 * (1 + np.vectorize(math.erf)(nodes / math.sqrt(2)))
        dgelu = cdf + nodes * np.exp(-nodes**2 / 2) / math.sqrt(2 * math.pi)
        second_moment = (w * (nodes * cdf) ** 2).sum() / w.sum()
        g = (w * dgelu**2).sum() / w.sum() / second_moment
        np.testing.assert_allclose(np.diag(z["gram"]), 1 + g + g * g, rtol=1e-8)
