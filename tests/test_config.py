"""Job configs: YAML + overrides validated into typed models; errors name the file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jntk_dist.workflows.config import (
    ConfigError,
    DatasetSpec,
    JobConfig,
    KernelSpec,
    apply_overrides,
    config_diff,
    config_hash,
    load_config,
)


class DemoJob(JobConfig):
    dataset: DatasetSpec
    kernel: KernelSpec
    output: str = "out.zarr"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: fibonacci, options: {n: 16}}\n"
                            "kernel: {kind: nngp, depth: 2, activation: erf}\n")
    cfg = load_config(path, DemoJob, ["kernel.depth=4", "kernel.lam=0.01", "output=a/b.zarr"])
    assert cfg.kernel.depth == 4 and cfg.kernel.lam == 0.01 and cfg.kernel.kind == "nngp"
    assert cfg.dataset.options == {"n": 16} and cfg.output == "a/b.zarr"
    assert cfg.kernel.dtype == "float64"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "dataset: {name: x}\nkernel: {depth: 2, activaton: erf}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, DemoJob)
    assert str(path) in str(info.value) and "kernel.activaton: unknown key" in str(info.value)
    with pytest.raises(ConfigError, match="depht: unknown key"):
        load_config({"dataset": {"name": "x"}, "kernel": {"depth": 1}}, DemoJob, ["depht=3"])


@pytest.mark.parametrize("override, key", [
    ("kernel.depth=0", "kernel.depth"),
    ("kernel.kind=ntk", "kernel.kind"),
    ("kernel.dtype=float16", "kernel.dtype"),
    ("kernel.activation=relu", "kernel.activation"),  # not smooth enough for Jacobian kernels
    ("kernel.activation=swishy", "kernel.activation"),
    ("kernel.lam=-1", "kernel.lam"),
])
def test_bad_values_name_the_key(override: str, key: str) -> None:
    base = {"dataset": {"name": "x"}, "kernel": {"depth": 2}}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(base, DemoJob, [override])


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["depth"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"kernel": 3}, ["kernel.depth=2"])
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_dataset_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        load_config({"dataset": {}, "kernel": {"depth": 1}}, DemoJob)
    with pytest.raises(ConfigError, match="exactly one"):
        load_config({"dataset": {"name": "a", "path": "b.npz"}, "kernel": {"depth": 1}}, DemoJob)
    with pytest.raises(ConfigError, match=r"\.npz, \.npy or \.csv"):
        load_config({"dataset": {"path": "b.txt"}, "kernel": {"depth": 1}}, DemoJob)


def test_dataset_files_relative_to_config(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(7, 3)), np.sign(rng.normal(size=7))
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    with open(tmp_path / "d.csv", "w") as fh:
        fh.write("a,b,c,label\n")
        np.savetxt(fh, np.column_stack([X, y]), delimiter=",", fmt="%.17g")
    for name in ("d.npz", "d.npy", "d.csv"):
        path = _write(tmp_path, f"dataset: {{path: {name}}}\nkernel: {{depth: 1}}\n")
        data = load_config(path, DemoJob).dataset.load()
        np.testing.assert_array_equal(data.X, X)
        np.testing.assert_array_equal(data.y, y)
    np.savez(tmp_path / "bad.npz", X=X)
    with pytest.raises(ValueError, match=r"missing array\(s\) \['y'\]"):
        DatasetSpec(path=tmp_path / "bad.npz").load()


def test_hash_and_diff() -> None:
    a = load_config({"dataset": {"name": "x"}, "kernel": {"depth": 2}}, DemoJob)
    b = load_config({"dataset": {"name": "x"}, "kernel": {"depth": 3}}, DemoJob)
    assert config_hash(a) == config_hash(a.to_dict()) != config_hash(b)
    assert config_diff(a.to_dict(), b.to_dict()) == ["kernel.depth: 2 -> 3"]


def test_object_store_outputs_are_refused_not_mangled():
    """Path outputs refuse URLs; the gram job's store output keeps them as URLs."""
    from jntk_dist.workflows.config import OutputPath
    from jntk_dist.workflows.gram import GramJobConfig

    class PathJob(JobConfig):
        output: OutputPath

    with pytest.raises(ValueError, match="object-store URLs"):
        PathJob.model_validate({"output": "s3://b/x.zarr"})
    cfg = GramJobConfig.model_validate({"dataset": {"name": "sonar"}, "output": "s3://b/x.zarr",
                                        "kernel": {"depth": 2}})
    assert cfg.output == "s3://b/x.zarr"
