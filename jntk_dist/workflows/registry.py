"""The list of config jobs (those run from a YAML config). The CLI makes one ``jntk <job>`` per
entry (its other commands, kernel, reproduce, report and verify, it adds itself), and
``jobs/<job>.py`` (what ``ray job submit`` runs) and the paper reproduction (:mod:`.reproduce`)
look jobs up here.

A config job's module provides ``CONFIG`` (its typed config, a :class:`.config.JobConfig`) and
``execute(config, *, overwrite, progress) -> str`` (runs it, returns what the CLI prints). Modules
are imported only when their job runs, so ``jntk --help`` stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import JobConfig, read_config, validate_config
from ..errors import ConfigError

__all__ = ["Job", "JOBS", "get_job", "load_job_config", "run_config_job"]


@dataclass(frozen=True)
class Job:
    """One job: its name, what ``--help`` says, where its code is and how it is configured."""

    name: str
    help: str
    description: str
    module: str  # the workflow module (CONFIG, execute)
    example: str  # a config to start from
    overwrite_help: str | None = None  # the job can replace an existing output (--overwrite)
    repair_help: str | None = None  # the job can repair its existing output (--repair)
    structured: bool = False  # the job has the matrix-free mode (--structured)
    resumes: bool = False  # rerun after an interruption, it goes on where it stopped

    def workflow(self) -> Any:
        """The job's module (imported now)."""
        return importlib.import_module(self.module)

    def config_class(self) -> type[JobConfig]:
        """The job's typed config."""
        return self.workflow().CONFIG


_P = "jntk_dist.workflows."

JOBS: dict[str, Job] = {job.name: job for job in (
    Job("gram", "compute a Gram matrix into a Zarr store with Ray actors (resumable)",
        "Compute the Jacobian NNGP or JNTK Gram matrix of a dataset, tile by tile on Ray "
        "actors, into a Zarr store. Rerunning completes a partial store.",
        _P + "gram", "configs/quickstart.yaml",
        overwrite_help="replace an existing store written by a different config",
        repair_help="verify every chunk of the existing store first (as `jntk verify`) and "
                    "recompute exactly the bad tiles", resumes=True),
    Job("drift", "kernel distance of many finite networks vs width (Ray Train, resumable)",
        "Run a grid of finite networks (widths × depths × seeds) concurrently on Ray and record "
        "the max-norm distance of their finite JNTK (during robust training) or Monte-Carlo "
        "Jacobian NNGP to the analytic kernel. Rerunning finishes an interrupted grid; runs "
        "resume from their checkpoints.",
        _P + "drift", "configs/drift_quick.yaml",
        overwrite_help="replace an existing store (and its checkpoints)", resumes=True),
    Job("solve", "kernel regression f_ntk (eq. 4) by blockwise Dask Cholesky",
        "Solve (Θ_λ(X,X) + μI) α = Y on a train split of a Gram store (or a small dataset) and "
        "write predictions and train/test accuracy to Zarr.",
        _P + "solve", "configs/solve_quick.yaml", structured=True),
    Job("eigen", "eigendecomposition / λ_min of a Gram, finite-time ODE predictions",
        "Eigendecompose the training Gram of a store (dense when it fits, Lanczos on the Dask "
        "array otherwise), decide positive definiteness with τ = n·eps·λ_max, and optionally "
        "evaluate u(t) = Y + e^{−Θt}(u₀ − Y).",
        _P + "eigen", "configs/eigen_quick.yaml", structured=True),
    Job("assumption8", "λ_min of the NTK and JNTK Gram vs depth (Fig. 6 / B7 / B8)",
        "Smallest eigenvalue of the NTK (00) and JNTK Gram matrices for each dataset, activation "
        "and depth; positive iff λ_min > τ = n·eps·λ_max.",
        _P + "assumption8", "configs/assumption8_quick.yaml", structured=True),
    Job("eigenfeatures", "eigenfeatures and their robustness to a PGD step (Figs. 4/5)",
        "For each λ (and standard training): eigenfeatures f_i of Θ_λ, their test accuracy and "
        "their accuracy after a one-step projected-gradient perturbation of the test inputs; "
        "pair plots coloured by λ.",
        _P + "eigenfeatures", "configs/eigenfeatures_quick.yaml"),
)}


def get_job(name: str) -> Job:
    """The job called ``name``, or a ValueError listing the jobs."""
    if name not in JOBS:
        raise ConfigError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    return JOBS[name]


def load_job_config(job: Job, source: str | Path | dict[str, Any],
                    overrides: Sequence[str] = (), structured: bool = False) -> JobConfig:
    """The job's config from a YAML file (or a mapping), ``--set`` overrides and
    ``--structured`` (turns the matrix-free mode on)."""
    read = read_config(source)  # a wrong path or bad YAML fails before the job is imported
    cfg = validate_config(read, job.config_class(), overrides)
    if structured and job.structured and not cfg.structured.enabled:  # type: ignore[attr-defined]
        cfg.structured = cfg.structured.model_copy(update={"enabled": True})  # type: ignore[attr-defined]
    return cfg


def run_config_job(job: Job, config: JobConfig, *, overwrite: bool = False,
                   progress: bool = True, repair: bool = False) -> str:
    """Run ``job`` on a validated ``config``; returns its summary text. ``repair`` goes to jobs
    that have ``--repair``."""
    extra = {"repair": repair} if job.repair_help else {}
    return job.workflow().execute(config, overwrite=overwrite, progress=progress, **extra)
