"""Many finite networks at once: how far their kernels are from the analytic ones (Figs. 1–3).

A grid of widths × depths × seeds runs concurrently on Ray. Each run is one network (or, for the
Jacobian NNGP, one Monte-Carlo ensemble) and measures, per block component (α, β),

* ``experiment: nngp`` (Fig. 1): Δ = max_{i,j} |Σ̂(x_i,x_j)_{αβ} − Σ^(L)(x_i,x_j)_{αβ}| for the
  Monte-Carlo Jacobian NNGP Σ̂ over ``monte_carlo.n_networks`` random networks;
* ``experiment: jntk`` (Fig. 2 with ``record_steps: [0]``, Fig. 3 with 0, 2^0 … 2^11):
  Δ_{αβ,t} = max_{i,j} |Θ_{d,θ_t}(x_i,x_j)_{αβ} − Θ(x_i,x_j)_{αβ}| while gradient descent on the
  Jacobian-regularised loss (eq. 1) trains the network, plus loss and accuracies.

Two ways to run a grid (``ray.backend``):

* ``train`` -- one Ray Train ``TorchTrainer`` per run (launched from zero-CPU Ray tasks so several
  run at once), checkpointing through ``ray.train.report``; a preempted worker is restarted by
  Ray Train (``max_failures``) and a rerun of the job resumes from the latest checkpoint.
* ``tasks`` -- one plain Ray task per run, checkpointing to a file; retried by Ray on failure.

Resources per run: ``cpus_per_run`` CPUs; with ``use_gpu`` a fraction of a GPU for narrow nets
and a whole GPU from ``wide_width`` on. Results go into one Zarr store with dimensions
(width, depth, seed, step, component), one chunk per run (written by the driver as each run
finishes, so a killed job keeps what it finished), plus PNG plots and fitted log-log slopes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import kernels
from .activations import get_activation
from .config import DatasetSpec, OutputJobConfig, OutputPath, StoreOutput, config_diff
from .finite import FiniteMLP, mc_jacobian_nngp
from .store import (beside, child_location, is_url, local_beside, open_file, open_group,
                    remove_location, store_exists, zarr_target)
from .training import PAPER_COMPONENTS, RobustTrainer, component_label, default_record_steps

__all__ = [
    "DriftConfig",
    "DriftResult",
    "RunSpec",
    "execute_run",
    "fit_slopes",
    "open_drift",
    "plot_drift",
    "run_drift",
]

log = logging.getLogger(__name__)

RUN_FIELDS_STEP = ("loss", "train_accuracy", "test_accuracy")
RUN_FIELDS_COMPONENT = ("distance", "drift")


# ---- config -------------------------------------------------------------------------------


class GridSpec(BaseModel):
    """The grid of runs: every width × depth × seed."""

    model_config = ConfigDict(extra="forbid")

    widths: list[int] = Field(min_length=1)
    depths: list[int] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)

    @field_validator("widths", "depths")
    @classmethod
    def _positive_distinct(cls, value: list[int], info: Any) -> list[int]:
        if any(v < 1 for v in value) or len(set(value)) != len(value):
            raise ValueError(f"{info.field_name} must be distinct integers ≥ 1, got {value}")
        return sorted(value)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value


class NetworkSpec(BaseModel):
    """The finite network: activation φ (smooth) and output scale κ."""

    model_config = ConfigDict(extra="forbid")

    activation: str = "gelu"
    kappa: float = Field(default=0.1, gt=0)

    @field_validator("activation")
    @classmethod
    def _smooth(cls, value: str) -> str:
        act = get_activation(value)
        act.require_smooth()
        return act.name


class TrainingSpec(BaseModel):
    """Gradient descent on eq. (1); ``record_steps: [0]`` measures at initialisation only."""

    model_config = ConfigDict(extra="forbid")

    lam: float = Field(default=0.01, ge=0, le=1)
    lr: float = Field(default=1.0, gt=0)
    record_steps: list[int] = Field(default_factory=default_record_steps)
    substeps: int = Field(default=1, ge=1)

    @field_validator("record_steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or any(v < 0 for v in value):
            raise ValueError(f"record_steps must be a non-empty list of integers ≥ 0, got {value}")
        return sorted(set(value))


class MonteCarloSpec(BaseModel):
    """The Jacobian-NNGP ensemble of each run (``experiment: nngp``)."""

    model_config = ConfigDict(extra="forbid")

    n_networks: int = Field(default=10_000, ge=2)
    segments: int = Field(default=1, ge=1)  # checkpoint after each segment of the ensemble
    batch_size: int | None = Field(default=None, ge=1)


class DriftRaySpec(BaseModel):
    """Where and how the runs execute."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)  # embedded Ray only
    backend: Literal["train", "tasks"] = "train"
    cpus_per_run: float = Field(default=1.0, gt=0)
    use_gpu: bool = False
    narrow_gpu_fraction: float = Field(default=0.25, gt=0, le=1)
    wide_width: int = Field(default=2048, ge=1)  # from this width on a run gets a whole GPU
    max_concurrent: int | None = Field(default=None, ge=1)  # default: what the cluster fits
    max_failures: int = Field(default=2, ge=0)
    # Ray Train controller poll interval (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S; Ray's default 2 s):
    # every ray.train.report waits about this long, so short runs want it small.
    train_poll_interval_s: float | None = Field(default=None, gt=0)


class DriftConfig(OutputJobConfig):
    """``jntk drift`` config: which kernel, which data, which grid, where results go.

    ``output`` (and ``plots``) are local paths or fsspec URLs (s3://, gs://, file://; the
    driver writes the store). ``checkpoints`` is a local or shared-file-system path: the runs
    write their state there (default: beside a local store; for a URL store the driver's local
    scratch folder, see :func:`jntk_dist.store.local_beside`).
    """

    url_fields = ("output", "plots")

    experiment: Literal["jntk", "nngp"] = "jntk"
    dataset: DatasetSpec
    max_points: int | None = Field(default=None, ge=1)  # first N (training) rows only
    test_fraction: float | None = Field(default=None, gt=0, lt=1)
    split_seed: int = 0
    grid: GridSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    monte_carlo: MonteCarloSpec = Field(default_factory=MonteCarloSpec)
    components: list[tuple[int, int]] = Field(default_factory=lambda: list(PAPER_COMPONENTS))
    dtype: Literal["float64", "float32"] = "float64"
    output: StoreOutput  # a local path or an fsspec URL
    plots: StoreOutput | None = None  # default: <output stem>_plots next to the store
    checkpoints: OutputPath | None = None  # default: <output stem>_checkpoints next to a local
    # store; <scratch>/<stem>-<hash>_checkpoints on this machine for a URL store
    ray: DriftRaySpec = Field(default_factory=DriftRaySpec)
    progress: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "DriftConfig":
        if not self.components or len(set(self.components)) != len(self.components):
            raise ValueError(f"components must be distinct (α, β) pairs, got {self.components}")
        if any(a < 0 or b < 0 for a, b in self.components):
            raise ValueError(f"components need indices ≥ 0 (0 = output), got {self.components}")
        if self.experiment == "nngp" and self.training.record_steps != [0]:
            raise ValueError("experiment 'nngp' measures at initialisation: set "
                             "training.record_steps to [0]")
        return self

    @property
    def plots_dir(self) -> Path | str:
        return self.plots or beside(self.output, "_plots")

    @property
    def checkpoints_dir(self) -> Path:
        return self.checkpoints or local_beside(self.output, "_checkpoints")

    def identity(self) -> dict[str, Any]:
        """The part of the config that determines the store's contents."""
        data = self.to_dict()
        return {k: data[k] for k in ("experiment", "dataset", "max_points", "test_fraction",
                                     "split_seed", "grid", "network", "training", "monte_carlo",
                                     "components", "dtype")}


# ---- one run ------------------------------------------------------------------------------


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
    from .data import Dataset, train_test_split

    loaded = config.dataset.load()
    X, y = loaded.X, loaded.y
    kernels.validate_inputs(torch.as_tensor(X), f"dataset {loaded.name!r}")
    if max(max(c) for c in config.components) > X.shape[1]:
        raise ValueError(f"components {config.components} name input index > d0={X.shape[1]} "
                         f"of dataset {loaded.name!r}")
    x_test = y_test = None
    if config.test_fraction is not None:
        ds = Dataset(X=X, y=y, labels=y.copy(), name=loaded.name,
                     feature_names=tuple(f"x{i}" for i in range(X.shape[1])), report="",
                     source_index=np.arange(X.shape[0]))
        train, test = train_test_split(ds, config.test_fraction, seed=config.split_seed)
        X, y, x_test, y_test = train.X, train.y, test.X, test.y
    if config.max_points is not None:
        X, y = X[:config.max_points], y[:config.max_points]
    return RunData(np.ascontiguousarray(X), np.ascontiguousarray(y),
                   None if x_test is None else np.ascontiguousarray(x_test),
                   None if y_test is None else np.ascontiguousarray(y_test))


class Checkpointer(Protocol):
    """Where a run keeps its state between attempts."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...


def load_state(path: Path) -> dict[str, Any]:
    """A run's checkpointed state: tensors and plain values only (``torch.load(weights_only=True)``,
    no arbitrary unpickling); anything else is refused with a clear error."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds more than tensors and plain values; refusing "
                         f"to unpickle it (delete it to restart the run): {err}") from None


class FileCheckpointer:
    """State in ``<dir>/state.pt``, replaced atomically (plain-task backend)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "state.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return load_state(self.path)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        _write_progress(self.directory, metrics)


class RayTrainCheckpointer:
    """State through Ray Train: ``ray.train.get_checkpoint`` / ``ray.train.report``."""

    def __init__(self, progress_dir: Path) -> None:
        self.progress_dir = Path(progress_dir)
        self.progress_dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return load_state(Path(d) / "state.pt")

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        _write_progress(self.progress_dir, metrics)


def _write_progress(directory: Path, metrics: dict[str, Any]) -> None:
    tmp = directory / "progress.json.tmp"
    tmp.write_text(json.dumps({**metrics, "pid": os.getpid(), "time": time.time()}))
    os.replace(tmp, directory / "progress.json")


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
    device = torch.device("cuda" if config.ray.use_gpu and torch.cuda.is_available() else "cpu")
    state = checkpointer.load() if checkpointer is not None else None
    if state is not None and "result" in state:  # finished before; its driver never wrote it
        return state["result"]
    started = time.time() if state is None else float(state["started"])
    attempts = 1 if state is None else int(state["attempts"]) + 1
    resumed_from = -1 if state is None else int(state["position"])
    x = torch.tensor(data.x, dtype=dtype, device=device)  # a copy: Ray hands out read-only arrays
    n_steps = len(config.training.record_steps)
    n_comp = len(config.components)

    if config.experiment == "nngp":
        distance = _nngp_run(config, spec, x, state, checkpointer, attempts, started)
        nan = [math.nan] * n_steps
        result = {"distance": [distance], "drift": [[math.nan] * n_comp], "loss": nan,
                  "train_accuracy": nan, "test_accuracy": nan, "attempts": attempts,
                  "resumed_from_step": resumed_from, "started": started,
                  "finished": time.time()}
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
              "train_accuracy": h.train_accuracy, "test_accuracy": h.test_accuracy,
              "attempts": attempts, "resumed_from_step": resumed_from, "started": started,
              "finished": time.time()}
    if checkpointer is not None:
        checkpointer.save({"result": result}, {"run": spec.run_id, "done": True})
    return result


def _nngp_run(config: DriftConfig, spec: RunSpec, x: torch.Tensor, state: dict[str, Any] | None,
              checkpointer: Checkpointer | None, attempts: int, started: float) -> list[float]:
    """Monte-Carlo Σ̂ over the run's ensemble (in checkpointed segments) → Δ per component."""
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
    mean = sums[0] / sums[2]
    sigma = kernels.jacobian_nngp(x, depth=spec.depth, activation=config.network.activation)
    sigma = sigma[:, :, idx][:, :, :, idx]
    pos = {c: k for k, c in enumerate(idx)}
    diff = (mean - sigma).abs()
    return [float(diff[:, :, pos[a], pos[b]].max()) for a, b in config.components]


# ---- backends -----------------------------------------------------------------------------


def _run_resources(config: DriftConfig, spec: RunSpec) -> tuple[float, float]:
    """(CPUs, GPUs) of one run: a GPU fraction for narrow nets, a whole GPU for wide ones."""
    r = config.ray
    if not r.use_gpu:
        return r.cpus_per_run, 0.0
    return r.cpus_per_run, 1.0 if spec.width >= r.wide_width else r.narrow_gpu_fraction


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop: one grid run, checkpointing through Ray Train."""
    import ray.train

    config = DriftConfig.model_validate(loop_config["config"])
    spec = RunSpec(**loop_config["spec"])
    data = RunData(**loop_config["data"])
    checkpointer = RayTrainCheckpointer(Path(loop_config["progress_dir"]))
    # the last report (made by execute_run) carries the result in its checkpoint
    execute_run(config, spec, data, checkpointer, cpus=loop_config["cpus"])


def _launch_train(config_dict: dict[str, Any], spec_dict: dict[str, Any],
                  data: dict[str, Any], storage: str, cpus: float, gpus: float,
                  max_failures: int, poll_interval_s: float | None) -> dict[str, Any]:
    """Body of the zero-CPU Ray task that owns one TorchTrainer and waits for it."""
    if poll_interval_s is not None:  # propagated by Ray Train to its controller and workers
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(poll_interval_s)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = RunSpec(**spec_dict)
    resources = {"CPU": cpus}
    if gpus:
        resources["GPU"] = gpus
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"config": config_dict, "spec": spec_dict, "data": data,
                           "progress_dir": str(Path(storage) / spec.run_id), "cpus": cpus},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=spec.run_id, storage_path=storage,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    state = None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            state = load_state(Path(d) / "state.pt")
    if state is None or "result" not in state:
        raise RuntimeError(f"Ray Train run {spec.run_id} ended without checkpointing its result "
                           f"(last metrics: {result.metrics})")
    return state["result"]


def _launch_task(config_dict: dict[str, Any], spec_dict: dict[str, Any],
                 data: dict[str, Any], storage: str, cpus: float) -> dict[str, Any]:
    """Body of the plain Ray task that runs one grid point with file checkpoints."""
    config = DriftConfig.model_validate(config_dict)
    spec = RunSpec(**spec_dict)
    checkpointer = FileCheckpointer(Path(storage) / spec.run_id)
    return execute_run(config, spec, RunData(**data), checkpointer, cpus=cpus)


def _spec_dict(spec: RunSpec) -> dict[str, Any]:
    return {"width": spec.width, "depth": spec.depth, "seed": spec.seed,
            "position": list(spec.position)}


# ---- the store ----------------------------------------------------------------------------


def _create_store(path: Path | str, config: DriftConfig, data: RunData) -> None:
    from . import __version__

    g = config.grid
    n_w, n_d, n_s = len(g.widths), len(g.depths), len(g.seeds)
    n_t, n_c = len(config.training.record_steps), len(config.components)
    root = open_group(path, "w", config.options_for(path))
    coords = {"width": g.widths, "depth": g.depths, "seed": g.seeds,
              "step": config.training.record_steps}
    for name, values in coords.items():
        root.create_array(name, data=np.asarray(values, dtype=np.int64), dimension_names=[name])
    root.create_array("alpha", data=np.asarray([a for a, _ in config.components], np.int64),
                      dimension_names=["component"])
    root.create_array("beta", data=np.asarray([b for _, b in config.components], np.int64),
                      dimension_names=["component"])
    for name in RUN_FIELDS_COMPONENT:
        a = root.create_array(name, shape=(n_w, n_d, n_s, n_t, n_c), dtype="f8",
                              chunks=(1, 1, 1, n_t, n_c), fill_value=np.nan,
                              dimension_names=["width", "depth", "seed", "step", "component"])
        a.attrs["coordinates"] = "alpha beta"
    for name in RUN_FIELDS_STEP:
        root.create_array(name, shape=(n_w, n_d, n_s, n_t), dtype="f8", chunks=(1, 1, 1, n_t),
                          fill_value=np.nan, dimension_names=["width", "depth", "seed", "step"])
    for name in ("complete", "attempts", "resumed_from_step"):
        root.create_array(name, shape=(n_w, n_d, n_s), dtype="i8", chunks=(1, 1, 1),
                          fill_value=0, dimension_names=["width", "depth", "seed"])
    for name in ("started", "finished"):
        root.create_array(name, shape=(n_w, n_d, n_s), dtype="f8", chunks=(1, 1, 1),
                          fill_value=np.nan, dimension_names=["width", "depth", "seed"])
    root.attrs.update({
        "kind": "jntk_dist.drift", "version": __version__, "experiment": config.experiment,
        "kernel": "jntk" if config.experiment == "jntk" else "jacobian_nngp",
        "kappa_scaling": "kernels divided by kappa^2", "config": config.recorded(),
        "identity": config.identity(), "n_points": int(data.x.shape[0]), "d0": int(data.x.shape[1]),
        "components": [component_label(a, b) for a, b in config.components],
        "distance": "max_{i,j} |K_finite(x_i,x_j)_{ab} - K_analytic(x_i,x_j)_{ab}|",
        "drift": "max_{i,j} |Theta_{d,theta_t} - Theta_{d,theta_0}|_{ab}",
    })


def _check_store(path: Path | str, config: DriftConfig) -> None:
    root = open_group(path, "r", config.options_for(path))
    if root.attrs.get("kind") != "jntk_dist.drift":
        raise ValueError(f"{path} exists and is not a drift result store; choose another output "
                         "or pass --overwrite")
    old = root.attrs.get("identity", {})
    diff = config_diff(old, config.identity())
    if diff:
        raise ValueError(f"{path} was written by a different config ({'; '.join(diff[:5])}); "
                         "choose another output or pass --overwrite")


def _write_run(path: Path | str, spec: RunSpec, result: dict[str, Any],
               storage_options: dict[str, Any] | None = None) -> None:
    root = open_group(path, "r+", storage_options)
    i, j, k = spec.position
    for name in RUN_FIELDS_COMPONENT + RUN_FIELDS_STEP:
        values = np.asarray(result[name], dtype=np.float64)
        expected = root[name].shape[3:]
        if values.shape != expected:
            raise ValueError(f"run {spec.run_id} returned {name} of shape {values.shape}, "
                             f"expected {expected}")
        root[name][i, j, k] = values
    for name in ("attempts", "resumed_from_step", "started", "finished"):
        root[name][i, j, k] = result[name]
    root["complete"][i, j, k] = 1  # written last: a set flag means the chunk above is whole


def open_drift(path: str | Path, storage_options: dict[str, Any] | None = None) -> Any:
    """The result store (a local path or an fsspec URL, ``storage_options`` for fsspec) as an
    ``xarray.Dataset`` (dims width, depth, seed, step, component)."""
    import xarray as xr

    ds = xr.open_zarr(zarr_target(path, storage_options, read_only=True), consolidated=False)
    return ds.set_coords([c for c in ("alpha", "beta") if c in ds.variables])


# ---- slopes and plots ---------------------------------------------------------------------


def fit_slopes(ds: Any) -> Any:
    """Least-squares slope of log2(mean Δ over seeds) against log2(width) for every curve.

    Returns an ``xarray.DataArray`` (depth, step, component); NaN where fewer than two widths
    have finite positive values.
    """
    import xarray as xr

    mean = ds["distance"].mean("seed")
    lw = np.log2(ds["width"].values.astype(float))
    out = np.full((ds.sizes["depth"], ds.sizes["step"], ds.sizes["component"]), np.nan)
    vals = mean.transpose("width", "depth", "step", "component").values
    for j in range(out.shape[0]):
        for t in range(out.shape[1]):
            for c in range(out.shape[2]):
                v = vals[:, j, t, c]
                ok = np.isfinite(v) & (v > 0)
                if ok.sum() >= 2:
                    out[j, t, c] = np.polyfit(lw[ok], np.log2(v[ok]), 1)[0]
    return xr.DataArray(out, dims=("depth", "step", "component"),
                        coords={"depth": ds["depth"].values, "step": ds["step"].values})


def plot_drift(ds: Any, directory: str | Path, title: str = "",
               storage_options: dict[str, Any] | None = None) -> list[Path | str]:
    """Δ vs width on log-log axes, one panel per component, 95% bands over seeds.

    At a single step (Figs. 1, 2) the curves are depths; with many steps (Fig. 3) there is one
    figure per depth whose curves are the recorded steps. ``directory`` is a local folder or an
    fsspec URL (written through fsspec). Returns the PNG paths (URLs).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slopes = fit_slopes(ds)
    widths = ds["width"].values
    labels = [component_label(int(a), int(b)) for a, b in zip(ds["alpha"].values,
                                                               ds["beta"].values)]
    dist = ds["distance"].transpose("width", "depth", "seed", "step", "component").values
    n_seed = np.isfinite(dist).sum(axis=2)
    mean = np.nanmean(np.where(np.isfinite(dist), dist, np.nan), axis=2) if dist.size else dist
    sd = np.nanstd(dist, axis=2, ddof=1) if dist.shape[2] > 1 else np.zeros_like(mean)
    half = 1.96 * np.nan_to_num(sd) / np.sqrt(np.maximum(n_seed, 1))
    steps, depths = ds["step"].values, ds["depth"].values
    figures: list[tuple[str, list[tuple[int, int, str]]]] = []
    if len(steps) == 1:
        figures.append(("by_depth", [(j, 0, f"L={d}") for j, d in enumerate(depths)]))
    else:
        for j, d in enumerate(depths):
            figures.append((f"depth{d}", [(j, t, f"t={s}") for t, s in enumerate(steps)]))
    paths = []
    for name, curves in figures:
        fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.6), squeeze=False)
        for c, ax in enumerate(axes[0]):
            colors = plt.cm.viridis(np.linspace(0, 0.9, len(curves)))
            for (j, t, label), color in zip(curves, colors):
                m, h = mean[:, j, t, c], half[:, j, t, c]
                ok = np.isfinite(m) & (m > 0)
                if not ok.any():
                    continue
                slope = float(slopes.values[j, t, c])
                ax.plot(widths[ok], m[ok], "o-", color=color, ms=3,
                        label=f"{label} (slope {slope:.2f})")
                ax.fill_between(widths[ok], np.maximum(m[ok] - h[ok], m[ok] * 1e-3),
                                m[ok] + h[ok], color=color, alpha=0.2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("width d")
            ax.set_title(f"component {labels[c]}")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("max-norm distance Δ")
        fig.suptitle(title or str(ds.attrs.get("experiment", "")))
        fig.tight_layout()
        path = child_location(directory, f"distance_{name}.png")
        with open_file(path, "wb", storage_options) as fh:
            fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


# ---- the job ------------------------------------------------------------------------------


@dataclass
class DriftResult:
    """What ``run_drift`` did."""

    path: Path | str  # a local path or a URL
    runs_total: int
    runs_computed: list[str] = field(default_factory=list)
    runs_already_done: int = 0
    seconds: float = 0.0
    plots: list[Path | str] = field(default_factory=list)
    slopes: dict[str, float] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict)


def _start_ray(config: DriftConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if config.ray.address:
        ray.init(address=config.ray.address, **kwargs)
    else:
        ray.init(num_cpus=config.ray.num_cpus, **kwargs)
    return True


def _max_concurrent(config: DriftConfig, n_runs: int) -> int:
    import ray

    if config.ray.max_concurrent is not None:
        return min(config.ray.max_concurrent, n_runs)
    total = ray.cluster_resources()
    fit = int(total.get("CPU", 1) // config.ray.cpus_per_run)
    if config.ray.use_gpu:
        fit = min(fit, int(total.get("GPU", 0) // config.ray.narrow_gpu_fraction))
    return max(1, min(fit, n_runs))


def run_drift(config: DriftConfig, overwrite: bool = False, progress: bool | None = None,
              on_submit: Callable[[RunSpec], None] | None = None) -> DriftResult:
    """Run (or finish) the grid of ``config`` on Ray; write the store, plots and slopes."""
    import ray
    from tqdm.auto import tqdm

    start = time.perf_counter()
    path = config.output
    options = config.options_for(path)
    data = load_run_data(config)
    if overwrite and store_exists(path, options):
        remove_location(path, options)
        shutil.rmtree(config.checkpoints_dir, ignore_errors=True)
    if store_exists(path, options):
        _check_store(path, config)
    else:
        if not is_url(path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        _create_store(path, config, data)
    complete = open_group(path, "r", options)["complete"][...]
    runs = grid_runs(config)
    todo = [r for r in runs if not complete[r.position]]
    result = DriftResult(path=path, runs_total=len(runs), runs_already_done=len(runs) - len(todo),
                         storage_options=options or {})
    storage = config.checkpoints_dir.resolve()
    storage.mkdir(parents=True, exist_ok=True)
    started = _start_ray(config) if todo else False
    try:
        if todo:
            _dispatch(config, todo, data, storage, path, result,
                      progress=config.progress if progress is None else progress,
                      on_submit=on_submit, tqdm=tqdm)
    finally:
        if started:
            ray.shutdown()
    ds = open_drift(path, options)
    if bool(ds["complete"].all()):
        result.plots = plot_drift(ds, config.plots_dir,
                                  title=f"{config.experiment}: {config.dataset.name or ''}, "
                                        f"{config.network.activation}",
                                  storage_options=config.options_for(config.plots_dir))
        slopes = fit_slopes(ds)
        for j, d in enumerate(slopes["depth"].values):
            for t, s in enumerate(slopes["step"].values):
                for c, (a, b) in enumerate(config.components):
                    result.slopes[f"L={d} t={s} {component_label(a, b)}"] = \
                        float(slopes.values[j, t, c])
        open_group(path, "r+", options).attrs["slopes"] = {
            k: (v if math.isfinite(v) else None) for k, v in result.slopes.items()}
    result.seconds = time.perf_counter() - start
    return result


def _dispatch(config: DriftConfig, todo: list[RunSpec], data: RunData, storage: Path,
              path: Path | str, result: DriftResult, progress: bool,
              on_submit: Callable[[RunSpec], None] | None, tqdm: Any) -> None:
    import ray

    config_dict = config.to_dict()
    data_dict = {"x": data.x, "y": data.y, "x_test": data.x_test, "y_test": data.y_test}
    data_ref = ray.put(data_dict)
    limit = _max_concurrent(config, len(todo))
    backend = config.ray.backend
    train_remote = ray.remote(num_cpus=0, max_retries=0)(_launch_train)
    task_remote = ray.remote(_launch_task)
    pending: dict[Any, RunSpec] = {}
    queue = list(todo)
    log.info("drift: %d runs, %d at a time, backend %s", len(todo), limit, backend)

    def submit(spec: RunSpec) -> None:
        cpus, gpus = _run_resources(config, spec)
        if backend == "train":
            ref = train_remote.remote(config_dict, _spec_dict(spec), data_ref, str(storage),
                                      cpus, gpus, config.ray.max_failures,
                                      config.ray.train_poll_interval_s)
        else:
            ref = task_remote.options(num_cpus=cpus, num_gpus=gpus,
                                      max_retries=config.ray.max_failures,
                                      retry_exceptions=False).remote(
                config_dict, _spec_dict(spec), data_ref, str(storage), cpus)
        pending[ref] = spec
        if on_submit is not None:
            on_submit(spec)

    with tqdm(total=len(todo), disable=not progress, desc="drift runs") as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                submit(queue.pop(0))
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            run_result = ray.get(ready[0])
            _write_run(path, spec, run_result, config.options_for(path))
            result.runs_computed.append(spec.run_id)
            bar.update()


def describe(result: DriftResult) -> str:
    """A short human summary of a drift run."""
    lines = [f"drift store: {result.path} ({result.runs_total} runs; computed "
             f"{len(result.runs_computed)}, already done {result.runs_already_done}) "
             f"in {result.seconds:.1f} s",
             f"open with: jntk_dist.drift.open_drift({str(result.path)!r}"
             + (", storage_options=…)" if result.storage_options else ")")]
    if result.slopes:
        rows: dict[str, list[str]] = {}
        header: list[str] = []
        for key, value in result.slopes.items():
            curve, comp = key.rsplit(" ", 1)
            rows.setdefault(curve, []).append(f"{value:+7.3f}")
            if comp not in header:
                header.append(comp)
        lines.append("log-log slope of mean Δ vs width (Δ ∝ width^slope):")
        lines.append(f"  {'':>14}" + "".join(f"{c:>8}" for c in header))
        lines += [f"  {curve:>14} " + " ".join(vals) for curve, vals in rows.items()]
    lines += [f"plot: {p}" for p in result.plots]
    return "\n".join(lines)
