"""Every mistake a user can make ends in one error line, exit 2, nothing half-written and no
stray lock: each row of the table in docs/store.md run as a real ``jntk`` process; the table and
these cases are kept equal. Ctrl-C of a Gram job: one line, exit 130, and the rerun resumes.
``jntk --help`` imports neither torch nor Ray nor Zarr."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"^\| ([a-z0-9-]+) \| .* \| `([^`]+)` \|$")


def _table() -> dict[str, str]:
    text = (REPO / "docs" / "store.md").read_text()
    block = text.split("<!-- user-errors:start -->")[1].split("<!-- user-errors:end -->")[0]
    rows = [TABLE.match(line) for line in block.splitlines() if line.startswith("| ")]
    return {m.group(1): m.group(2) for m in rows if m}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "JNTK_PROGRESS": "off"}


def _jntk(argv: list[str], cwd: Path, prefix: list[str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "jntk_dist.cli", *argv],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _points(folder: Path, n: int = 12, d0: int = 3) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d0))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    path = folder / f"points_{n}_{d0}.npz"
    np.savez(path, X=X, y=np.sign(X[:, 0]))
    return path


def _config(folder: Path, dataset: dict, output: str = "out.zarr") -> Path:
    path = folder / "job.yaml"
    path.write_text(json.dumps({"dataset": dataset, "kernel": {"depth": 2},
                                "output": str(output), "ray": {"num_cpus": 1}}))
    return path


def _points_job(tmp: Path, output: str = "out.zarr") -> list[str]:
    return ["gram", str(_config(tmp, {"path": str(_points(tmp))}, output))]


def _mnist_job(tmp: Path, image_bytes: bytes) -> list[str]:
    (tmp / "mnist").mkdir()
    (tmp / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(image_bytes)
    (tmp / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 16))
    return ["gram", str(_config(tmp, {"name": "mnist", "options": {"directory": "mnist"}}))]


def _cifar_job(tmp: Path, name: str, content: bytes) -> list[str]:
    (tmp / "cifar").mkdir()
    (tmp / "cifar" / name).write_bytes(content)
    return ["gram", str(_config(tmp, {"name": "cifar10", "options": {"directory": "cifar"}}))]


def _victim(tmp: Path) -> Path:
    victim = tmp / "victim.txt"
    victim.write_text("precious data\n")
    return victim


def _plant_lock_symlink(tmp: Path) -> list[str]:
    (tmp / "out.zarr.lock").symlink_to(_victim(tmp))
    return _points_job(tmp)


def _plant_lock_folder(tmp: Path) -> list[str]:
    (tmp / "out.zarr.lock").mkdir()
    return _points_job(tmp)


def _plant_lock_hardlink(tmp: Path) -> list[str]:
    (tmp / "empty.txt").write_text("")  # an empty file looks like a free lock but for its links
    os.link(tmp / "empty.txt", tmp / "out.zarr.lock")
    return _points_job(tmp)


def _plant_lock_foreign(tmp: Path) -> list[str]:
    (tmp / "out.zarr.lock").write_text("my notes, not a lock\n")
    return _points_job(tmp)


def _output_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("not a store\n")
    return _points_job(tmp, "afile")


def _output_symlink_file(tmp: Path) -> list[str]:
    (tmp / "out.zarr").symlink_to(_victim(tmp))
    return _points_job(tmp)


def _read_only(tmp: Path) -> list[str]:
    (tmp / "ro").mkdir()
    return _points_job(tmp, str(tmp / "ro" / "out.zarr"))


def _disk_too_small(tmp: Path) -> list[str]:
    points = _points(tmp, n=2500, d0=400)  # a dense Gram of 8e12 bytes
    return ["gram", str(_config(tmp, {"path": str(points)}))]


def _eigen_out_of_memory(tmp: Path) -> list[str]:
    from jntk_dist.errors import available_memory

    free = available_memory()
    if free is None:
        pytest.skip("this machine does not say how much memory is available")
    n = int(np.sqrt(2 * free / 24) / 30) + 1  # 3 float64 copies of the n·30-row Gram: 2× free
    points = _points(tmp, n=n, d0=29)
    config = tmp / "eigen.yaml"
    config.write_text(json.dumps({"dataset": {"path": str(points)}, "kernel": {"depth": 2},
                                  "lam": 0.01, "max_dense": 30 * n, "times": [],
                                  "output": "e.zarr"}))
    return ["eigen", str(config)]


CASES: dict[str, Callable[[Path], list[str]]] = {
    "config-missing": lambda tmp: ["gram", "nope.yaml"],
    "config-folder": lambda tmp: ["gram", str(tmp)],
    "config-binary": lambda tmp: (tmp.joinpath("c.yaml").write_bytes(gzip.compress(b"x" * 99)),
                                  ["gram", "c.yaml"])[1],
    "lam-inf": lambda tmp: [*_points_job(tmp), "--set", "kernel.lam=.inf"],
    "depth-huge": lambda tmp: [*_points_job(tmp), "--set", "kernel.depth=100000000"],
    "kernel-lam-inf": lambda tmp: ["kernel", "--data", str(_points(tmp)), "--depth", "2",
                                   "--lam", "inf", "--out", "k.npy"],
    "mnist-garbage-gz": lambda tmp: _mnist_job(tmp, np.random.default_rng(1).bytes(4096)),
    "mnist-bad-magic": lambda tmp: _mnist_job(tmp, gzip.compress(b"PK\3\4" + b"\0" * 64)),
    "cifar-garbage-python": lambda tmp: _cifar_job(tmp, "data_batch_1",
                                                   np.random.default_rng(2).bytes(5000)),
    "cifar-bad-binary": lambda tmp: _cifar_job(tmp, "data_batch_1.bin", b"\1" * 5000),
    "output-file": _output_file,
    "output-symlink-file": _output_symlink_file,
    "lock-symlink": _plant_lock_symlink,
    "lock-folder": _plant_lock_folder,
    "lock-hardlink": _plant_lock_hardlink,
    "lock-foreign": _plant_lock_foreign,
    "output-read-only": _read_only,
    "disk-too-small": _disk_too_small,
    "eigen-out-of-memory": _eigen_out_of_memory,
}


def test_the_table_in_docs_lists_exactly_these_cases() -> None:
    assert set(_table()) == set(CASES)


def _can_mount_read_only(tmp: Path) -> bool:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o ro tmpfs {tmp} && ! touch {tmp}/x"],
                           capture_output=True)
    return probe.returncode == 0


def _snapshot(tmp: Path) -> dict[str, bytes | str]:
    """Every path under ``tmp`` with its bytes (or where its link points)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(tmp.rglob("*")):
        key = str(path.relative_to(tmp))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = path.read_bytes()
        else:
            out[key] = "dir"
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    argv = CASES[case](tmp_path)
    prefix = None
    if case == "output-read-only":
        ro = tmp_path / "ro"
        if not _can_mount_read_only(ro):
            pytest.skip("this machine cannot mount a read-only tmpfs (unshare -m)")
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                  'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(ro)]
    before = _snapshot(tmp_path)
    result = _jntk(argv, tmp_path, prefix)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"jntk {argv[0]}: error: "), result.stderr
    if lines[0].rstrip().endswith(":"):  # a config error lists its keys on indented lines
        assert len(lines) > 1 and all(line[:1].isspace() for line in lines[1:]), result.stderr
    else:
        assert len(lines) == 1, result.stderr
    assert _table()[case] in result.stderr
    assert _snapshot(tmp_path) == before  # nothing written, nothing planted touched, no lock


def test_jntk_help_imports_no_torch_ray_or_zarr() -> None:
    probe = ("import sys, contextlib, io\n"
             "from jntk_dist.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "    main(['--help'])\n"
             "print(sorted(m for m in ('torch', 'ray', 'zarr', 'dask') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_missing_config_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    probe = ("import sys\n"
             "from jntk_dist.cli import main\n"
             "code = main(['gram', 'nope.yaml'])\n"
             "print(code, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stderr


def test_ctrl_c_of_a_gram_job_is_one_line_and_the_same_command_resumes(tmp_path: Path) -> None:
    points = _points(tmp_path, n=160, d0=6)
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"dataset": {"path": str(points)}, "kernel": {"depth": 2},
                                  "output": "out.zarr", "tile_points": 8,
                                  "ray": {"num_cpus": 1}}))
    argv = [sys.executable, "-m", "jntk_dist.cli", "gram", str(config)]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    tile_done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "done:" in line and "tile (" in line:
                tile_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert tile_done.wait(180), "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(30)
    err = "".join(lines)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"jntk gram: interrupted; (\d+) of (\d+) tiles kept; the same command "
                         r"resumes", last)
    assert found, err
    kept, total = int(found.group(1)), int(found.group(2))
    assert total == 210 and 1 <= kept < total
    lock = tmp_path / "out.zarr.lock"
    assert not lock.exists() or lock.read_text() == ""  # released: no holder left in it
    rerun = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(rf"tiles: {total - kept} computed now, {kept} already done", rerun.stdout)


def test_a_bug_shows_its_traceback_and_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from jntk_dist.cli import main
    from jntk_dist.workflows import verify

    def broken(*args: object, **kwargs: object) -> str:
        raise ValueError("an internal slip")  # a plain ValueError is a bug, not a user error

    monkeypatch.setattr(verify, "run_verify", broken)
    assert main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an internal slip" in err
    assert err.strip().splitlines()[-1].startswith("jntk verify: internal error ValueError: this "
                                                   "is a bug in jntk_dist")


def test_verbose_adds_the_traceback_to_a_user_error(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from jntk_dist.cli import main

    assert main(["-v", "gram", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "FileNotFoundError" in err
    assert err.strip().splitlines()[-1] == (f"jntk gram: error: config file "
                                            f"{tmp_path / 'nope.yaml'} does not exist")


def test_ctrl_c_in_any_command_is_one_line_exit_130(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from jntk_dist.cli import main
    from jntk_dist.workflows import verify

    def stopped(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "run_verify", stopped)
    assert main(["verify", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "jntk verify: interrupted\n"
