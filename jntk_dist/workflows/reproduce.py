"""Reproduce the paper: run the experiments of ``configs/paper/`` (``jntk reproduce``).

Each paper config names a job of the registry (``drift``, ``assumption8``, ``eigenfeatures``) and
holds that job's ordinary config, so ``jntk <job>`` runs it too; this module only runs the
experiments (:func:`run_experiment`, :func:`reproduce`), optionally reduced by the config's
``quick:`` overrides (dotted keys, the ``--set`` syntax), each into ``<runs>/<name>/`` with a
``run.json`` (status, wall time, hardware, the config used). :mod:`jntk_dist.report` reads them
back and writes the verdicts.

Paper config format (``configs/paper/<name>.yaml``)::

    title: ...                 # one line
    figures: [Fig. 6]
    job: assumption8           # drift | assumption8 | eigenfeatures
    claim:                     # the paper's claim in its words, and the rules that check it
      text: ...
      rules:                   # one row per curve/setting each, see jntk_dist.report.verdicts
        - {rule: jntk_onset, where: "§5.3, Fig. 6 (l.240)", quote: "…", onset: {gelu: 11}}
        - {rule: rate, ours: true, text: "…", slope: -0.5}   # a claim of ours, marked so
    config: {...}              # the job's config, paper scale
    quick: {grid.widths: [16, 32], ...}   # overrides for --quick
    quick_points: 48           # eigenfeatures only: stratified random subset in --quick
    cluster: ...               # how the full run is meant to be run (free text)
    not_run: ...               # what the report says while the experiment has no run
    paper_size: ...            # the command and estimated time of a run at the paper's size
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import re
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError, DatasetSpec, JobConfig, apply_overrides, load_config
from .ray_session import ray_session
from .registry import get_job, run_config_job

__all__ = ["PAPER_CONFIGS", "PaperConfig", "load_paper_config", "paper_configs", "job_config",
           "hardware", "run_experiment", "reproduce"]

log = logging.getLogger(__name__)

PAPER_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "paper"
JobName = Literal["drift", "assumption8", "eigenfeatures"]


class PaperConfig(BaseModel):
    """One experiment of the paper: which job, the job's config, the claim, the quick overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    title: str
    figures: list[str] = Field(min_length=1)
    job: JobName
    claim: dict[str, Any]
    config: dict[str, Any]
    quick: dict[str, Any] = Field(default_factory=dict)
    quick_points: int | None = Field(default=None, ge=8)
    cluster: str = ""
    not_run: str = ""  # what the report says while there is no run (e.g. the GPU command)
    paper_size: str = ""  # how to run it at the paper's size (command, estimated time)

    def model_post_init(self, _: Any) -> None:
        if not isinstance(self.claim.get("text"), str):
            raise ConfigError(f"paper config {self.name!r}: claim.text (the paper's claim, in words) "
                             "is required")
        rules = self.claim.get("rules")
        if not isinstance(rules, list) or not rules or not all(
                isinstance(r, dict) and isinstance(r.get("rule"), str) for r in rules):
            raise ConfigError(f"paper config {self.name!r}: claim.rules must list the rules that "
                             "check the claim, each a mapping with its 'rule' name")
        if self.quick_points is not None and self.job != "eigenfeatures":
            raise ConfigError(f"paper config {self.name!r}: quick_points applies to eigenfeatures "
                             "jobs only (the others have max_points in their config)")


def load_paper_config(path: str | Path) -> PaperConfig:
    """Read and validate a paper config, including its job config at full and quick size."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"paper config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"paper config {path}: top level must be a mapping")
    try:
        exp = PaperConfig.model_validate({**data, "name": path.stem})
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                 for e in err.errors()]
        raise ConfigError(f"invalid paper config {path}:\n" + "\n".join(lines)) from None
    for quick in (False, True):  # both sizes must be valid job configs
        job_config(exp, Path("runs/paper"), quick=quick, materialise=False)
    return exp


def paper_configs(directory: str | Path = PAPER_CONFIGS,
                  only: Sequence[str] | None = None) -> list[PaperConfig]:
    """All paper configs in ``directory`` (sorted by name), or those named in ``only``."""
    directory = Path(directory)
    # the paper's order: main-text figures first (fig1, fig1_gpu, fig2, …), then the appendix
    # ones (b7, b8, b9, b10, …: numbers compared as numbers)
    def order(p: Path) -> tuple[bool, list[Any]]:
        return (not p.stem.startswith("fig"),
                [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)])

    paths = sorted(directory.glob("*.yaml"), key=order)
    names = [p.stem for p in paths]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"unknown experiment(s) {unknown}; {directory} has {names}")
        paths = [p for p in paths if p.stem in only]
    if not paths:
        raise FileNotFoundError(f"no paper configs (*.yaml) in {directory}")
    return [load_paper_config(p) for p in paths]


def job_config(exp: PaperConfig, runs_dir: Path, quick: bool = False,
               overrides: Sequence[str] = (), materialise: bool = True) -> JobConfig:
    """The validated job config of ``exp``: its ``config`` + ``quick`` overrides (when ``quick``)
    + ``overrides``, with ``output`` set to ``<runs_dir>/<name>/<name>.zarr``.

    With ``quick_points`` (eigenfeatures), a stratified random subset of the dataset is written to
    ``<runs_dir>/<name>/quick_subset.npz`` and used as the dataset (``materialise=False`` only
    validates, without reading the data)."""
    data = copy.deepcopy(exp.config)
    sets = [f"{k}={json.dumps(v)}" for k, v in exp.quick.items()] if quick else []
    apply_overrides(data, sets + list(overrides))
    run_dir = Path(runs_dir) / exp.name
    data["output"] = str(run_dir / f"{exp.name}.zarr")
    if exp.job == "drift":
        data.setdefault("progress", False)
    if quick and exp.quick_points is not None and materialise:
        data["dataset"] = {"path": str(_quick_subset(exp, data, run_dir))}
    try:
        return load_config(data, get_job(exp.job).config_class())
    except ConfigError as err:
        raise ConfigError(f"paper config {exp.name!r}{' (quick)' if quick else ''}: {err}") from None


def _quick_subset(exp: PaperConfig, data: dict[str, Any], run_dir: Path) -> Path:
    """Write a stratified random subset of ``quick_points`` rows of the job's dataset to npz."""
    loaded = DatasetSpec.model_validate(data["dataset"]).load()
    n = loaded.X.shape[0]
    assert exp.quick_points is not None
    if exp.quick_points >= n:
        raise ConfigError(f"{exp.name}: quick_points={exp.quick_points} ≥ the {n} rows of "
                         f"{loaded.name!r}")
    from .problem import split_indices  # imported here: `jntk --help` needs no torch

    _, keep = split_indices(loaded.y, exp.quick_points / n, int(data.get("seed", 0)))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "quick_subset.npz"
    np.savez(path, X=loaded.X[keep], y=loaded.y[keep], source_index=keep)
    return path


def hardware() -> dict[str, Any]:
    """Where a run ran: platform, CPUs, memory, GPU, load average at start."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch": torch.__version__}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2**30, 1)
        info["load_average_1min"] = round(os.getloadavg()[0], 1)
    except (OSError, ValueError, AttributeError):
        pass
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def run_experiment(exp: PaperConfig, runs_dir: str | Path, quick: bool = False,
                   overrides: Sequence[str] = (), overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Run one experiment's job into ``<runs_dir>/<name>/`` and write its ``run.json``.

    A failing job does not raise: its record says ``status: failed`` with the error, so that the
    other experiments still run and the report shows what is missing."""
    runs_dir = Path(runs_dir)
    run_dir = runs_dir / exp.name
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "experiment": exp.name, "job": exp.job, "figures": exp.figures, "quick": quick,
        "overrides": list(overrides), "started_utc": datetime.now(timezone.utc).isoformat(
            timespec="seconds"), "hardware": hardware(), "status": "failed"}
    t0 = time.perf_counter()
    try:
        cfg = job_config(exp, runs_dir, quick=quick, overrides=overrides)
        record["config"] = cfg.to_dict()
        record["output"] = str(cfg.output)
        record["summary"] = run_config_job(get_job(exp.job), cfg, progress=progress)
        record["status"] = "ok"
    except Exception as err:  # recorded, reported; the other experiments go on
        record["error"] = f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc(limit=8)
        log.error("experiment %s failed: %s", exp.name, record["error"])
    record["seconds"] = round(time.perf_counter() - t0, 2)
    (run_dir / "run.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def reproduce(experiments: Sequence[PaperConfig], runs_dir: str | Path, quick: bool = False,
              overrides: Sequence[str] = (), overwrite: bool = False, progress: bool = True,
              num_cpus: int | None = None) -> list[dict[str, Any]]:
    """Run the experiments in sequence (one embedded Ray for all drift grids); return records."""
    embed = any(e.job == "drift" for e in experiments) and not os.environ.get("RAY_ADDRESS")
    with ray_session(num_cpus=num_cpus) if embed else contextlib.nullcontext():
        records = []
        for exp in experiments:
            log.info("experiment %s (%s, %s)", exp.name, exp.job, "quick" if quick else "full size")
            records.append(run_experiment(exp, runs_dir, quick, overrides, overwrite, progress))
        return records
