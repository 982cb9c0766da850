"""One Ray resources spec for every job and one device rule for every room."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from jntk_dist.kernels.devices import choose_device
from jntk_dist.workflows.config import load_config
from jntk_dist.workflows.drift import DriftConfig
from jntk_dist.workflows.gram import GramJobConfig
from jntk_dist.workflows.problem import ComputeSpec
from jntk_dist.workflows.resources import RayResources

PACKAGE = Path(__file__).resolve().parents[1] / "jntk_dist"


def test_every_job_reads_its_ray_as_the_one_spec(tmp_path: Path) -> None:
    gram = load_config({"dataset": {"name": "banknote"}, "kernel": {"depth": 1},
                        "output": str(tmp_path / "g.zarr"),
                        "ray": {"address": "ray://head:10001", "num_cpus": 3}}, GramJobConfig)
    drift = load_config({"experiment": "jntk", "dataset": {"name": "fibonacci"},
                         "grid": {"widths": [16], "depths": [1], "seeds": [0]},
                         "output": str(tmp_path / "d.zarr"), "ray": {"num_cpus": 2}}, DriftConfig)
    compute = ComputeSpec(ray_address="ray://head:10001", num_cpus=4)
    specs = [gram.ray, drift.ray, compute.ray]
    assert all(isinstance(spec, RayResources) for spec in specs)
    assert [(s.address, s.num_cpus) for s in specs] == [
        ("ray://head:10001", 3), (None, 2), ("ray://head:10001", 4)]
    with pytest.raises(ValueError, match="num_cpus"):
        RayResources(num_cpus=0)


def test_the_device_rule() -> None:
    gpu = torch.cuda.is_available()
    assert choose_device().type == choose_device(None).type == ("cuda" if gpu else "cpu")
    assert choose_device("auto", use_gpu=False).type == "cpu"
    assert choose_device("cpu") == torch.device("cpu")
    if not gpu:
        with pytest.raises(ValueError, match="structured.device: cuda, but torch sees no CUDA"):
            choose_device("cuda", what="structured.device")


def test_the_device_rule_is_written_once() -> None:
    rule = re.compile(r"[\"']cuda[\"'] if .*is_available\(\)")
    homes = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py"))
             if rule.search(p.read_text())]
    assert homes == ["kernels/devices.py"], homes
