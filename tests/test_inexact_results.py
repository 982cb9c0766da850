"""A solve, eigendecomposition or λ_min that misses its tolerance fails (exit 2, one line) after
writing its results with ``converged: false``; ``accept_inexact: true`` accepts them; the ridge
the errors suggest is an option that exists (``--set ridge=…``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from jntk_dist.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unit_rows(n: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, 3))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _attrs(out: Path, group: str) -> dict:
    return dict(zarr.open_group(str(out), mode="r", use_consolidated=False)[group].attrs)


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith(f"jntk {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def near_duplicates(tmp_path: Path) -> Path:
    """12 points, the last 1e-6 away from the first with the opposite label (no ridge: the
    solve cannot fit both)."""
    X = _unit_rows(12, seed=3)
    X[11] = X[0] + 1e-6 * np.array([0.0, 1.0, 0.0])
    X[11] /= np.linalg.norm(X[11])
    y = np.sign(X[:, 0])
    y[11] = -y[0]
    path = tmp_path / "near.npz"
    np.savez(path, X=X, y=y)
    cfg = tmp_path / "solve.yaml"
    cfg.write_text(f"dataset: {{path: {path}}}\nkernel: {{depth: 2, activation: erf}}\n"
                   f"lam: 0.5\ntest_fraction: 0\noutput: {tmp_path / 'out.zarr'}\n")
    return cfg


def test_a_dense_solve_that_misses_its_tolerance_fails_after_writing_converged_false(
        near_duplicates: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.zarr"
    assert main(["solve", str(near_duplicates), "--no-progress"]) == 2  # exit 0 on main
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "solve")
    assert "the solve did not converge: relative residual" in line
    assert "> tolerance 1.0e-06" in line and "--set ridge=" in line
    assert "--set accept_inexact=true" in line
    assert "NOT CONVERGED" in captured.out  # the summary of what was written comes first
    attrs = _attrs(out, "solve")
    assert attrs["converged"] is False and attrs["relative_residual"] > 1e-6
    # an explicit option accepts the inexact result: exit 0, still recorded as not converged
    assert main(["solve", str(near_duplicates), "--set", "accept_inexact=true",
                 "--no-progress"]) == 0
    assert _attrs(out, "solve")["converged"] is False
    # and a ridge (the option the message names) makes it an exact solve
    assert main(["solve", str(near_duplicates), "--set", "ridge=1e-3", "--no-progress"]) == 0
    attrs = _attrs(out, "solve")
    assert attrs["converged"] is True and attrs["relative_residual"] <= 1e-6


def test_a_singular_gram_suggests_a_ridge_option_that_exists(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture
                                                             ) -> None:
    X = _unit_rows(12, seed=3)
    X[11] = X[0]  # an exact duplicate: Cholesky fails
    data = tmp_path / "dup.npz"
    np.savez(data, X=X, y=np.sign(X[:, 0]))
    cfg = tmp_path / "solve.yaml"
    cfg.write_text(f"dataset: {{path: {data}}}\nkernel: {{depth: 2, activation: erf}}\n"
                   f"lam: 0.5\ntest_fraction: 0\noutput: {tmp_path / 'out.zarr'}\n")
    assert main(["solve", str(cfg), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, "solve")
    assert "not numerically positive definite" in line and "--set ridge=" in line
    assert "--ridge" not in line  # no such option
    ridge = line.split("--set ridge=")[1].split(")")[0]
    assert main(["solve", str(cfg), "--set", f"ridge={ridge}", "--no-progress"]) == 0


def test_structured_solve_eigen_and_assumption8_that_miss_their_tolerance_fail(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    X = _unit_rows(30, seed=3)
    data = tmp_path / "points.npz"
    np.savez(data, X=X, y=np.sign(X[:, 0]))
    base = f"dataset: {{path: {data}}}\nkernel: {{depth: 3, activation: erf}}\nlam: 0.5\n"
    solve = tmp_path / "solve.yaml"
    solve.write_text(base + f"test_fraction: 0\noutput: {tmp_path / 's.zarr'}\n"
                     "structured: {maxiter: 2, preconditioner: kron}\n")
    assert main(["solve", str(solve), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, "solve")
    assert "did not converge" in line and "structured.maxiter" in line
    assert _attrs(tmp_path / "s.zarr", "solve")["converged"] is False
    assert (tmp_path / "s_pcg.npz").exists()  # kept: a rerun with more iterations resumes

    eigen = tmp_path / "eigen.yaml"
    eigen.write_text(base + f"test_fraction: 0\nk: 2\noutput: {tmp_path / 'e.zarr'}\n"
                     "structured: {maxiter: 2, preconditioner: kron}\n")
    assert main(["eigen", str(eigen), "--no-progress"]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "eigen")
    assert "λ_min did not converge: residual" in line and "accept_inexact" in line
    assert "NOT CONVERGED" in captured.out
    attrs = _attrs(tmp_path / "e.zarr", "eigen_jntk")
    assert attrs["converged"] is False and attrs["lambda_min_residual"] > attrs[
        "residual_tolerance"]
    assert main(["eigen", str(eigen), "--set", "accept_inexact=true", "--no-progress"]) == 0

    a8 = tmp_path / "a8.yaml"
    a8.write_text(f"datasets: [{{dataset: {{path: {data}}}}}]\nactivations: [erf]\n"
                  f"depths: [3]\nkernels: [jntk]\noutput: {tmp_path / 'a.zarr'}\n"
                  "structured: {maxiter: 2, preconditioner: kron}\n")
    assert main(["assumption8", str(a8), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, "assumption8")
    assert "λ_min did not converge for 1 of 1 rows" in line
    table = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["assumption8"]
    assert list(table["converged"][...]) == [False]
    assert "(not converged)" in (tmp_path / "a_assumption8.md").read_text()
