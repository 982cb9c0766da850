"""The full-dataset path on CPU at small N: MNIST/CIFAR-10 configs on tiny standard-format files
written here, device selection, tile sizing from a memory budget, the Ray backend of the
structured solve, and the PCG progress estimate."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from jntk_dist import kernels
from jntk_dist.data import load_dataset
from jntk_dist.operators import structured_operator
from jntk_dist.kernels.devices import auto_tile_mb
from jntk_dist.operators.structured import auto_memory_mb
from jntk_dist.solvers.cg import eta_seconds
from jntk_dist.workflows.config import ConfigError, load_config
from jntk_dist.workflows.registry import get_job, load_job_config, run_config_job
from jntk_dist.workflows.solve import SolveJobConfig, run_solve
from jntk_dist.workflows.structured import StructuredSpec, resolve_device

REPO = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """A tiny MNIST in the real IDX format: 10 train and 6 test 28×28 images of two blobs."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("t10k", 6)):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):  # even digits bright on the left, odd on the right
            images[i, 8:20, 4:12] += 200 if c % 2 == 0 else 0
            images[i, 8:20, 16:24] += 0 if c % 2 == 0 else 200
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.clip(images, 0, 255))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def _config(mnist_dir: Path, tmp_path: Path, **structured) -> SolveJobConfig:
    overrides = [f"dataset.options.directory={mnist_dir}",
                 f"test_dataset.options.directory={mnist_dir}",
                 f"output={tmp_path / 'm.zarr'}", "structured.tol=1e-8",
                 "structured.checkpoint_every=3600"]
    overrides += [f"structured.{k}={v}" for k, v in structured.items()]
    return load_job_config(get_job("solve"), REPO / "configs" / "mnist.yaml", overrides)


def test_mnist_config_trains_on_the_train_files_and_predicts_the_test_files(mnist_dir, tmp_path):
    cfg = _config(mnist_dir, tmp_path)
    s = run_solve(cfg, progress=False)
    assert (s["n_train"], s["n_test"]) == (10, 6) and s["pcg_converged"]
    assert s["gram_size"] == 10 * 785 and s["operator"]["device"] == "cpu"
    # an independent route: the dense Gram of the same images, solved directly
    train = load_dataset("mnist", directory=str(mnist_dir), split="train")
    test = load_dataset("mnist", directory=str(mnist_dir), split="test")
    kw = dict(depth=3, activation="erf", lam=0.1)
    G = kernels.gram(train.X, **kw)  # 7850², 0.5 GB
    assert s["ridge"] == pytest.approx(0.01 * np.trace(G) / (10 * 785), rel=1e-12)  # ridge: auto
    G += s["ridge"] * np.eye(10 * 785)
    rhs = np.zeros(10 * 785)
    rhs[::785] = train.y
    coef = np.linalg.solve(G, rhs)
    f_test = kernels.to_gram(kernels.jntk(test.X, train.X, **kw))[::785] @ coef
    assert s["test_accuracy"] == pytest.approx(float(np.mean(np.sign(f_test) == test.y)))
    assert s["relative_residual"] <= 1e-8
    text = run_config_job(get_job("solve"), cfg, progress=False)
    assert "test accuracy" in text and "PCG iterations" in text


def test_ray_backend_gives_the_local_solution(mnist_dir, tmp_path, ray_session):
    local = run_solve(_config(mnist_dir, tmp_path / "l"), progress=False)
    remote = run_solve(_config(mnist_dir, tmp_path / "r", backend="ray", workers=2,
                               fields="recompute"), progress=False)
    assert remote["operator"]["backend"] == "ray"
    assert remote["pcg_iterations"] == local["pcg_iterations"]
    assert remote["test_accuracy"] == local["test_accuracy"]


def test_image_dataset_errors_name_the_problem(mnist_dir, tmp_path):
    with pytest.raises(ValueError, match="needs options.directory"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="test_fraction or test_dataset"):
        load_config({"dataset": {"name": "mnist", "options": {"directory": str(mnist_dir)}},
                     "test_dataset": {"name": "mnist",
                                      "options": {"directory": str(mnist_dir), "split": "test"}},
                     "test_fraction": 0.2, "kernel": {"depth": 2}, "output": "o.zarr"},
                    SolveJobConfig)


def test_device_and_tile_budget():
    spec = StructuredSpec(device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(spec).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device(StructuredSpec(device="cuda"))
        assert auto_memory_mb("cpu") == auto_tile_mb("cpu") <= 4096.0  # the one memory rule
    x = np.random.default_rng(1).standard_normal((30, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for budget in (0.05, 1.0):  # rows per tile follow the budget: (8 + 2m)·n + 3·d0·m per row
        op = structured_operator(x, depth=2, mode="recompute", memory_mb=budget)
        per_row = (8 + 2) * 30 + 3 * 4
        assert op._rows_per_tile(1) == min(30, max(1, int(budget * 2**20 / (8 * per_row))))


def test_eta_follows_the_rate_of_decrease():
    history = [10.0 ** -k for k in range(1, 6)]  # a decade per iteration, at 1e-5 now
    assert eta_seconds(history, 1e-8, 2.0) == pytest.approx(6.0)  # 3 decades × 2 s
    assert eta_seconds([1.0, 2.0, 3.0], 1e-8, 1.0) is None  # not falling
    assert eta_seconds([1.0], 1e-8, 1.0) is None
