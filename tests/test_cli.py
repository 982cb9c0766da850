"""What a user reads from ``jntk``: help text, each job's example config, one-line errors that name
the file and the key (with a suggestion for a typo), and no progress bar before a refusal."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from jntk_dist.cli import build_parser, main
from jntk_dist.workflows.registry import JOBS, load_job_config

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_is_plain_text() -> None:
    helps = {name: p.format_help() for name, p in _subcommands().items()}
    assert {"kernel", "reproduce", "report", "verify", *JOBS} <= set(helps)
    for name, text in helps.items():
        for markup in ("``", ":mod:`", ":func:`", ":class:`", ":meth:`"):
            assert markup not in text, f"jntk {name} --help shows {markup!r}:\n{text}"
    assert "jntk kernel --dataset forest_fires --depth 3" in helps["kernel"]  # examples kept


def test_each_job_points_to_its_own_example_config() -> None:
    helps = {name: p.format_help() for name, p in _subcommands().items()}
    examples = {name: job.example for name, job in JOBS.items()}
    assert len(set(examples.values())) == len(examples)  # no two jobs share one
    for name, job in JOBS.items():
        expected = "configs/quickstart.yaml" if name == "gram" else f"configs/{name}_quick.yaml"
        assert job.example == expected
        assert (REPO / job.example).is_file()
        assert f"(see {job.example})" in " ".join(helps[name].split())
        config = load_job_config(job, REPO / job.example)  # it is a valid config of this job
        assert isinstance(config, job.config_class())


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jntk {command}: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("argv, problem", [
    (["--depth", "-1"], "depth (number of hidden layers L) must be an integer ≥ 1, got -1"),
    (["--depth", "2", "--lam", "-0.5"], "must be ≥ 0, got -0.5"),
    (["--depth", "2", "--activation", "swish"], "unknown activation 'swish'"),
    (["--depth", "2", "--activation", "relu"], "not smooth"),
])
@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_bad_kernel_request_is_refused_before_any_output(
        argv: list[str], problem: str, suffix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JNTK_PROGRESS", "bar")  # a bar started before the check would show
    out = tmp_path / f"k{suffix}"
    assert main(["kernel", "--dataset", "fibonacci", *argv, "--out", str(out)]) == 2
    assert problem in _one_error_line(capsys, "kernel")
    assert not out.exists()


def test_config_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("dataset:\n  name: [forest_fires\nkernel: {depth: 2}\n")
    assert main(["gram", str(bad_yaml)]) == 2
    line = _one_error_line(capsys, "gram")
    assert f"config {bad_yaml}, line " in line and "not valid YAML" in line
    assert "<unicode string>" not in line

    typo = tmp_path / "typo.yaml"
    typo.write_text("dataset: {name: fibonacci}\nkernal: {depth: 2}\noutput: x.zarr\n")
    assert main(["gram", str(typo)]) == 2
    err = capsys.readouterr().err
    assert f"invalid config {typo}" in err
    assert "kernal: unknown key — did you mean 'kernel'?" in err
    assert "kernel: missing (a required key)" in err
