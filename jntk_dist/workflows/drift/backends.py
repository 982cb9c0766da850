"""The two ways a drift grid runs on Ray: one Ray Train ``TorchTrainer`` per run (launched from
zero-CPU tasks so several run at once) or one plain Ray task per run with file checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ...solvers.checkpoint import FileCheckpointer, load_state, write_progress
from .config import DriftConfig
from .runs import RunData, RunSpec, execute_run


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
        write_progress(self.progress_dir, metrics)



def run_resources(config: DriftConfig, spec: RunSpec) -> tuple[float, float]:
    """(CPUs, GPUs) of one run: a GPU fraction for narrow nets, a whole GPU for wide ones."""
    r = config.ray
    if not r.use_gpu:
        return r.cpus_per_run, 0.0
    return r.cpus_per_run, 1.0 if spec.width >= r.wide_width else r.narrow_gpu_fraction


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker loop: one grid run, checkpointing through Ray Train."""
    config = DriftConfig.model_validate(loop_config["config"])
    spec = RunSpec(**loop_config["spec"])
    data = RunData(**loop_config["data"])
    checkpointer = RayTrainCheckpointer(Path(loop_config["progress_dir"]))
    # the last report (made by execute_run) carries the result in its checkpoint
    execute_run(config, spec, data, checkpointer, cpus=loop_config["cpus"])


def launch_train(config_dict: dict[str, Any], spec_dict: dict[str, Any],
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
        train_loop,
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


def launch_task(config_dict: dict[str, Any], spec_dict: dict[str, Any],
                 data: dict[str, Any], storage: str, cpus: float) -> dict[str, Any]:
    """Body of the plain Ray task that runs one grid point with file checkpoints."""
    config = DriftConfig.model_validate(config_dict)
    spec = RunSpec(**spec_dict)
    checkpointer = FileCheckpointer(Path(storage) / spec.run_id)
    return execute_run(config, spec, RunData(**data), checkpointer, cpus=cpus)


def spec_dict(spec: RunSpec) -> dict[str, Any]:
    return {"width": spec.width, "depth": spec.depth, "seed": spec.seed,
            "position": list(spec.position)}
