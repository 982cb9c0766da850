"""The ``jntk drift`` config: which kernel, which data, which grid, where results go."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...kernels import get_activation
from ...networks.training import PAPER_COMPONENTS, default_record_steps
from ...store.locations import beside, local_beside
from ..config import DatasetSpec, OutputJobConfig, OutputPath, StoreOutput
from ..resources import RayResources
from ...errors import ConfigError

__all__ = ["DriftConfig", "GridSpec", "NetworkSpec", "TrainingSpec", "MonteCarloSpec",
           "DriftRaySpec"]


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
            raise ConfigError(f"{info.field_name} must be distinct integers ≥ 1, got {value}")
        return sorted(value)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ConfigError(f"seeds must be distinct, got {value}")
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
            raise ConfigError(f"record_steps must be a non-empty list of integers ≥ 0, got {value}")
        return sorted(set(value))


class MonteCarloSpec(BaseModel):
    """The Jacobian-NNGP ensemble of each run (``experiment: nngp``)."""

    model_config = ConfigDict(extra="forbid")

    n_networks: int = Field(default=10_000, ge=2)
    segments: int = Field(default=1, ge=1)  # checkpoint after each segment of the ensemble
    batch_size: int | None = Field(default=None, ge=1)


class DriftRaySpec(RayResources):
    """Where (:class:`jntk_dist.workflows.resources.RayResources`) and how the runs execute."""

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
    # where each run's networks run: auto = CUDA when ray.use_gpu and a GPU is visible to the run
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # float32 matmuls on CUDA: highest = IEEE float32, high = TF32 tensor cores (about 8× the
    # throughput on an H100, ~1e-3 relative rounding per product)
    matmul_precision: Literal["highest", "high"] = "highest"
    output: StoreOutput  # a local path or an fsspec URL
    plots: StoreOutput | None = None  # default: <output stem>_plots next to the store
    checkpoints: OutputPath | None = None  # default: <output stem>_checkpoints next to a local
    # store; <scratch>/<stem>-<hash>_checkpoints on this machine for a URL store
    ray: DriftRaySpec = Field(default_factory=DriftRaySpec)
    progress: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> "DriftConfig":
        if not self.components or len(set(self.components)) != len(self.components):
            raise ConfigError(f"components must be distinct (α, β) pairs, got {self.components}")
        if any(a < 0 or b < 0 for a, b in self.components):
            raise ConfigError(f"components need indices ≥ 0 (0 = output), got {self.components}")
        if self.experiment == "nngp" and self.training.record_steps != [0]:
            raise ConfigError("experiment 'nngp' measures at initialisation: set "
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
