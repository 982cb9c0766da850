"""One run of a drift grid: a finite network (or a Monte-Carlo ensemble) measured against the
analytic kernel, resumable from a checkpointer, independent of how the grid is scheduled."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import kernels
from ...kernels.devices import choose_device
from ...networks.finite import FiniteMLP, MonteCarloKernel, mc_distance, mc_jacobian_nngp
from ...networks.training import RobustTrainer
from ...solvers.checkpoint import Checkpointer
from .config import DriftConfig
from ...errors import ConfigError

__all__ = ["RunSpec", "RunData", "grid_runs", "load_run_data", "execute_run", "run_device"]


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid and its position in the store."""

    width: int
    depth: int
    seed: int
    position: tuple[int, int, int]

    @property
    def run_id(self) -> str:
        return f"w{self.width}_d{self.depth}_s{self.seed}"


def grid_runs(config: DriftConfig) -> list[RunSpec]:
    """All runs of the grid, widest last (so narrow runs fill the cluster first)."""
    g = config.grid
    runs = [RunSpec(w, d, s, (i, j, k)) for i, w in enumerate(g.widths)
            for j, d in enumerate(g.depths) for k, s in enumerate(g.seeds)]
    return sorted(runs, key=lambda r: (r.width * r.depth, r.seed))


@dataclass(frozen=True)
class RunData:
    """The (already split) data a run needs, as float64 numpy arrays."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None


def load_run_data(config: DriftConfig) -> RunData:
    """Load the dataset, split it and keep the first ``max_points`` training rows."""
    from ...data import split_xy

    loaded = config.dataset.load()
    X, y = loaded.X, loaded.y
    kernels.validate_inputs(torch.as_tensor(X), f"dataset {loaded.name!r}")
    if max(max(c) for c in config.components) > X.shape[1]:
        raise ConfigError(f"components {config.components} name input index > d0={X.shape[1]} "
                         f"of dataset {loaded.name!r}")
    x_test = y_test = None
    if config.test_fraction is not None:
        X, y, x_test, y_test = split_xy(X, y, config.test_fraction, config.split_seed)
    if config.max_points is not None:
        X, y = X[:config.max_points], y[:config.max_points]
    return RunData(np.ascontiguousarray(X), np.ascontiguousarray(y),
                   None if x_test is None else np.ascontiguousarray(x_test),
                   None if y_test is None else np.ascontiguousarray(y_test))


def run_device(config: DriftConfig) -> torch.device:
    """The device of a run's networks: ``device: cpu | cuda``, or ``auto`` = CUDA when the run
    asked Ray for a GPU (``ray.use_gpu``) and one is visible, else the CPU. ``cuda`` without a
    visible GPU is an error (not a silent CPU run)."""
    device = choose_device(config.device, use_gpu=config.ray.use_gpu)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.matmul_precision == "high"
    return device


def execute_run(config: DriftConfig, spec: RunSpec, data: RunData,
                checkpointer: Checkpointer | None = None,
                cpus: float | None = None) -> dict[str, Any]:
    """Run one grid point to completion (resuming from ``checkpointer``) and return its records.

    Returns plain lists: ``distance``/``drift`` (steps × components), ``loss``,
    ``train_accuracy``, ``test_accuracy`` (steps), and ``attempts``, ``resumed_from_step``,
    ``started``/``finished`` (wall-clock seconds since the epoch).
    """
    if cpus is not None:
        torch.set_num_threads(max(1, int(cpus)))
    dtype = getattr(torch, config.dtype)
    device = run_device(config)
    state = checkpointer.load() if checkpointer is not None else None
    if state is not None and "result" in state:  # finished before; its driver never wrote it
        return state["result"]
    started = time.time() if state is None else float(state["started"])
    attempts = 1 if state is None else int(state["attempts"]) + 1
    resumed_from = -1 if state is None else int(state["position"])
    x = torch.tensor(data.x, dtype=dtype, device=device)  # a copy: Ray hands out read-only arrays
    n_steps, n_comp = len(config.training.record_steps), len(config.components)
    if config.experiment == "nngp":
        distance, floor = _nngp_run(config, spec, x, state, checkpointer, attempts, started)
        nan = [math.nan] * n_steps
        result = {"distance": [distance], "mc_floor": [floor], "drift": [[math.nan] * n_comp],
                  "loss": nan, "train_accuracy": nan, "test_accuracy": nan, "attempts": attempts,
                  "resumed_from_step": resumed_from, "started": started, "finished": time.time()}
        if checkpointer is not None:
            checkpointer.save({"result": result}, {"run": spec.run_id, "done": True})
        return result

    net = FiniteMLP(x.shape[1], spec.width, spec.depth, config.network.activation,
                    config.network.kappa, seed=spec.seed, dtype=dtype, device=device)
    t = config.training
    trainer = RobustTrainer(
        net, x, torch.tensor(data.y, dtype=dtype, device=device), lam=t.lam, lr=t.lr,
        x_test=None if data.x_test is None else torch.tensor(data.x_test, dtype=dtype,
                                                                 device=device),
        y_test=None if data.y_test is None else torch.tensor(data.y_test, dtype=dtype,
                                                                 device=device),
        components=config.components, substeps=t.substeps)
    if state is not None:
        trainer.load_state_dict(state["trainer"])

    def on_record(tr: RobustTrainer, record: dict[str, Any]) -> None:
        if checkpointer is not None:
            checkpointer.save({"trainer": tr.state_dict(), "attempts": attempts,
                               "position": tr.step, "started": started},
                              {"run": spec.run_id, "step": tr.step, "attempts": attempts,
                               "max_distance": max(record["distance"])})

    h = trainer.run(t.record_steps, on_record=on_record)
    result = {"distance": h.distance, "drift": h.drift, "loss": h.loss,
              "mc_floor": [[math.nan] * n_comp] * n_steps, "train_accuracy": h.train_accuracy,
              "test_accuracy": h.test_accuracy, "attempts": attempts,
              "resumed_from_step": resumed_from, "started": started, "finished": time.time()}
    if checkpointer is not None:
        checkpointer.save({"result": result}, {"run": spec.run_id, "done": True})
    return result


def _nngp_run(config: DriftConfig, spec: RunSpec, x: torch.Tensor, state: dict[str, Any] | None,
              checkpointer: Checkpointer | None, attempts: int, started: float
              ) -> tuple[list[float], list[float]]:
    """Monte-Carlo Σ̂ over the run's ensemble (in checkpointed segments) → Δ per component and
    its Monte-Carlo floor (:func:`jntk_dist.networks.finite.mc_distance`)."""
    mc = config.monte_carlo
    idx = sorted({i for c in config.components for i in c})
    sizes = [len(part) for part in np.array_split(np.arange(mc.n_networks), mc.segments)]
    sums = None if state is None else state["sums"]
    done = 0 if state is None else int(state["position"])
    for k in range(done, len(sizes)):
        part = mc_jacobian_nngp(x, depth=spec.depth, width=spec.width,
                                activation=config.network.activation, n_networks=sizes[k],
                                batch_size=mc.batch_size, seed=spec.seed * 1_000_003 + k,
                                indices=idx, dtype=x.dtype)
        n = part.n_networks
        first = part.mean * n
        second = (part.stderr**2 * n) * (n - 1) + n * part.mean**2  # Σ of squares, recovered
        sums = (first, second, n) if sums is None else (sums[0] + first, sums[1] + second,
                                                        sums[2] + n)
        if checkpointer is not None:
            checkpointer.save({"sums": sums, "attempts": attempts, "position": k + 1,
                               "started": started},
                              {"run": spec.run_id, "step": k + 1, "attempts": attempts})
    assert sums is not None
    n = sums[2]
    mean = sums[0] / n
    var = (sums[1] / n - mean * mean) * n / (n - 1)
    mc = MonteCarloKernel(mean=mean, stderr=torch.sqrt(var.clamp(min=0) / n), n_networks=n)
    sigma = kernels.jacobian_nngp(x, depth=spec.depth, activation=config.network.activation)
    return mc_distance(mc, sigma[:, :, idx][:, :, :, idx], config.components, idx)
