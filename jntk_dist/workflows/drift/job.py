"""``jntk drift``: run (or finish) a grid of finite networks on Ray and write the store."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...networks.training import component_label
from ...progress import progress as progress_bar
from ...store.locations import is_url, open_group, remove_location, store_exists
from .backends import launch_task, launch_train, run_resources, spec_dict
from .config import DriftConfig
from .plots import fit_slopes, plot_drift
from .runs import RunData, RunSpec, grid_runs, load_run_data
from .store import check_store, create_store, open_drift, write_run
from ...errors import ConfigError

log = logging.getLogger(__name__)


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


def _check_gpu_request(config: DriftConfig) -> None:
    """Refuse ``ray.use_gpu`` on an embedded Ray without a GPU (its runs would wait forever);
    on a cluster, say that the runs wait for GPU nodes (an autoscaler may add them)."""
    import ray

    if not config.ray.use_gpu or ray.cluster_resources().get("GPU", 0) > 0:
        return
    if config.ray.address is None and not os.environ.get("RAY_ADDRESS"):
        raise ConfigError("ray.use_gpu is true, but this machine's Ray has no GPU, so the runs "
                         "would wait for one forever; on CPUs: --set ray.use_gpu=false --set "
                         "ray.backend=tasks, or submit to a GPU cluster (ray job submit)")
    log.warning("ray.use_gpu is true and the cluster has no GPU now: the runs wait until GPU "
                "nodes join (an autoscaler's GPU group) — stop with Ctrl-C if none will")


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
    start = time.perf_counter()
    path = config.output
    options = config.options_for(path)
    data = load_run_data(config)
    if overwrite and store_exists(path, options):
        remove_location(path, options)
        shutil.rmtree(config.checkpoints_dir, ignore_errors=True)
    if store_exists(path, options):
        check_store(path, config)
    else:
        if not is_url(path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        create_store(path, config, data)
    complete = open_group(path, "r", options)["complete"][...]
    runs = grid_runs(config)
    todo = [r for r in runs if not complete[r.position]]
    result = DriftResult(path=path, runs_total=len(runs), runs_already_done=len(runs) - len(todo),
                         storage_options=options or {})
    storage = config.checkpoints_dir.resolve()
    storage.mkdir(parents=True, exist_ok=True)
    if todo:
        with config.ray.session():
            _dispatch(config, todo, data, storage, path, result,
                      progress=config.progress if progress is None else progress,
                      on_submit=on_submit)
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
              on_submit: Callable[[RunSpec], None] | None) -> None:
    import ray

    config_dict = config.to_dict()
    data_dict = {"x": data.x, "y": data.y, "x_test": data.x_test, "y_test": data.y_test}
    _check_gpu_request(config)
    data_ref = ray.put(data_dict)
    limit = _max_concurrent(config, len(todo))
    backend = config.ray.backend
    train_remote = ray.remote(num_cpus=0, max_retries=0)(launch_train)
    task_remote = ray.remote(launch_task)
    pending: dict[Any, RunSpec] = {}
    queue = list(todo)
    log.info("drift: %d runs, %d at a time, backend %s", len(todo), limit, backend)

    def submit(spec: RunSpec) -> None:
        cpus, gpus = run_resources(config, spec)
        if backend == "train":
            ref = train_remote.remote(config_dict, spec_dict(spec), data_ref, str(storage),
                                      cpus, gpus, config.ray.max_failures,
                                      config.ray.train_poll_interval_s)
        else:
            ref = task_remote.options(num_cpus=cpus, num_gpus=gpus,
                                      max_retries=config.ray.max_failures,
                                      retry_exceptions=False).remote(
                config_dict, spec_dict(spec), data_ref, str(storage), cpus)
        pending[ref] = spec
        if on_submit is not None:
            on_submit(spec)

    with progress_bar(len(todo), "drift runs", unit="run", enabled=progress) as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                submit(queue.pop(0))
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            run_result = ray.get(ready[0])
            write_run(path, spec, run_result, config.options_for(path))
            result.runs_computed.append(spec.run_id)
            bar.update()


def describe(result: DriftResult) -> str:
    """A short human summary of a drift run."""
    lines = [f"drift store: {result.path} ({result.runs_total} runs; computed "
             f"{len(result.runs_computed)}, already done {result.runs_already_done}) "
             f"in {result.seconds:.1f} s",
             f"open with: jntk_dist.workflows.drift.open_drift({str(result.path)!r}"
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


CONFIG = DriftConfig


def execute(config: DriftConfig, *, overwrite: bool = False, progress: bool = True) -> str:
    """Run the job (the registry's entry point); returns what the CLI prints."""
    return describe(run_drift(config, overwrite=overwrite, progress=None if progress else False))
