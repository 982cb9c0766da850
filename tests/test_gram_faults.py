"""Faults with real processes: a SIGKILLed driver's store is completed by a rerun; a killed actor
is restarted and its tile retried."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

import pytest

from jntk_dist import kernels
from jntk_dist.cli import main
from jntk_dist.workflows.config import load_config
from jntk_dist.workflows import gram as gram_workflow
from jntk_dist.workflows.gram import GramJobConfig, run_gram
from jntk_dist.store import StoreLockedError, open_gram, verify_store
from jntk_dist.store.layout import DONE_PATH
from jntk_dist.store.writer import store_state

REPO = Path(__file__).resolve().parents[1]
DEPTH, ACT = 2, "erf"


def _env(**extra: str) -> dict[str, str]:
    """The environment of a driver subprocess: this one's now (Ray's auth token included, set
    when the session started), importing this checkout's package, not an installed one."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}


def _dataset(tmp_path: Path, n: int, seed: int) -> Path:
    X = np.random.default_rng(seed).normal(size=(n, 3))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    path = tmp_path / "points.npz"
    np.savez(path, X=X, y=np.ones(n))
    return path


def _yaml(tmp_path: Path, data: Path, out: Path, tile_points: int) -> Path:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"dataset: {{path: {data}}}\n"
                   f"kernel: {{kind: jntk, depth: {DEPTH}, activation: {ACT}}}\n"
                   f"output: {out}\nstore: dense\ntile_points: {tile_points}\n"
                   "progress: false\nray: {tasks_per_actor: 2}\n")
    return cfg


def _done_tiles(store: Path) -> set[tuple[int, int]]:
    """Tiles whose ``done`` chunk exists (one file per tile: tiles/done/c/i/j)."""
    return {(int(p.parent.name), int(p.name)) for p in store.glob(f"{DONE_PATH}/c/*/*")
            if p.name.isdigit()}


def _assert_exact(store_path: Path, X: np.ndarray) -> None:
    store = open_gram(store_path)
    assert store.is_complete
    T = store.layout.n_tiles
    for i in range(T):
        for j in range(T):
            (a, b), (c, d) = store.layout.points(i), store.layout.points(j)
            if i <= j:
                ref = kernels.to_gram(kernels.jntk(X[a:b], None if i == j else X[c:d], depth=DEPTH, activation=ACT))
                np.testing.assert_array_equal(store.tile(i, j), ref)
            else:
                np.testing.assert_array_equal(store.tile(i, j), store.tile(j, i).T)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_sigkilled_driver_leaves_a_store_a_rerun_completes(ray_session: str,
                                                           tmp_path: Path) -> None:
    data, out = _dataset(tmp_path, n=200, seed=3), tmp_path / "g.zarr"
    cfg = _yaml(tmp_path, data, out, tile_points=8)  # 25 x 25 tiles: 325 to compute
    total = 325
    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        driver = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "gram.py"), str(cfg), "-v",
             "--set", f"ray.address={ray_session}"], stdout=fh, stderr=subprocess.STDOUT,
            env=_env())
        try:
            _wait_for(lambda: len(_done_tiles(out)) >= 20 or driver.poll() is not None, 180,
                      "the first 20 tiles")
        finally:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    done_at_kill = _done_tiles(out)
    text = log.read_text()
    submitted = {tuple(map(int, m)) for m in re.findall(r"submitting tile \((\d+), (\d+)\)", text)}
    in_flight = submitted - done_at_kill
    assert 0 < len(done_at_kill) < total, "the kill must land mid-run"
    assert done_at_kill <= submitted
    assert len(in_flight) <= 2 * 2  # actors x tasks_per_actor
    assert not open_gram(out).is_complete

    config = load_config(cfg, GramJobConfig, [])
    before_rerun = set(open_gram(out).missing_tiles())  # killed actors may have finished a few
    result = run_gram(config)
    recomputed = set(result.tiles_computed)
    assert recomputed == before_rerun  # exactly the missing tiles, none of the recorded ones
    assert not recomputed & done_at_kill
    assert len(recomputed & submitted) <= len(in_flight)
    assert result.tiles_already_done + len(recomputed) == total
    _assert_exact(out, np.load(data)["X"])


def test_killed_actor_is_restarted_and_its_tile_retried(ray_session: str,
                                                        tmp_path: Path) -> None:
    data, out = _dataset(tmp_path, n=120, seed=4), tmp_path / "g.zarr"
    config = load_config(_yaml(tmp_path, data, out, tile_points=8), GramJobConfig, [])
    first_pids: list[int] = []
    killed: list[int] = []

    def kill_one_actor_mid_run(actors: list[Any]) -> None:
        first_pids.extend(ray.get([a.pid.remote() for a in actors]))

        def killer() -> None:
            _wait_for(lambda: len(_done_tiles(out)) >= 10, 120, "10 tiles")
            os.kill(first_pids[0], signal.SIGKILL)
            killed.append(first_pids[0])

        threading.Thread(target=killer, daemon=True).start()

    result = run_gram(config, on_start=kill_one_actor_mid_run)
    assert killed == [first_pids[0]]
    _wait_for(lambda: not Path(f"/proc/{killed[0]}").exists(), 30, "the killed actor to go")
    assert len(result.tiles_computed) == 120  # every tile, the interrupted one retried
    assert result.worker_pids - set(first_pids), "the restarted actor (a new pid) did work"
    _assert_exact(out, np.load(data)["X"])


def test_two_spellings_of_one_store_get_one_lock(ray_session: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    data, out = _dataset(tmp_path, n=200, seed=5), tmp_path / "s.zarr"
    cfg = _yaml(tmp_path, data, out, tile_points=8)
    link = tmp_path / "link.zarr"
    link.symlink_to(out, target_is_directory=True)
    log = tmp_path / "a.log"
    with open(log, "w") as fh:  # job A writes the store by its file:// URL
        job_a = subprocess.Popen(
            [sys.executable, str(REPO / "jobs" / "gram.py"), str(cfg), "--set",
             f"output={out.as_uri()}", "--set", f"ray.address={ray_session}"],
            stdout=fh, stderr=subprocess.STDOUT, env=_env())
        try:
            _wait_for(lambda: len(_done_tiles(out)) >= 5 or job_a.poll() is not None, 180,
                      "job A's first tiles")
            assert job_a.poll() is None, log.read_text()[-3000:]
            for spelling in (out, link):  # job B: another depth, --overwrite, other spellings
                config_b = load_config(cfg, GramJobConfig, [f"output={spelling}",
                                                            "kernel.depth=3"])
                with pytest.raises(StoreLockedError, match=f"pid {job_a.pid} "):
                    run_gram(config_b, overwrite=True)
            assert main(["gram", str(cfg), "--set", f"output={link}", "--set", "kernel.depth=3",
                         "--overwrite", "--no-progress"]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"jntk gram: error: store {out} is being written by another "
                                  f"job (pid {job_a.pid} ") and len(err.strip().splitlines()) == 1
        finally:
            os.kill(job_a.pid, signal.SIGKILL)
            job_a.wait()
    store = open_gram(out)
    assert store.depth == 2 and store.attrs["config"]["kernel"]["depth"] == 2
    report = verify_store(out, samples=64)  # every written tile is A's depth-2 kernel
    assert report.ok and report.samples == 64 and report.tiles_done >= 5, report.text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A tmpfs of 128 KiB mounted in the test's folder (root only); yields (folder, resize)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount)], check=True)

    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_one_line_and_the_rerun_resumes(ray_session: str, small_disk: Any,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    mount, resize = small_disk
    data, out = _dataset(tmp_path, n=60, seed=6), mount / "g.zarr"
    cfg = _yaml(tmp_path, data, out, tile_points=10)  # 21 tiles of 40 x 40 float64
    args = ["gram", str(cfg), "--no-progress"]
    assert main(args) == 2  # 128 KiB: the store's size is refused before any work
    err = capsys.readouterr().err
    assert "GB free: choose another output" in err and len(err.strip().splitlines()) == 1
    assert store_state(out) == "absent" and not list(mount.iterdir())  # no store, no lock
    # a disk that fills while the job runs (other writers): the up-front check passes
    monkeypatch.setattr(gram_workflow, "check_disk_space", lambda *args: None)
    assert main(args) == 2  # 128 KiB: full while the arrays are created
    err = capsys.readouterr().err
    assert err.startswith(f"jntk gram: error: no space left on device while writing store {out}")
    assert "free space on that file system and rerun the same command" in err
    assert len(err.strip().splitlines()) == 1 and store_state(out) == "creating"
    resize(512)  # room for the store and a few tiles
    with caplog.at_level("WARNING"):
        assert main(args) == 2
    assert "interrupted while it was being created" in caplog.text  # created again
    err = capsys.readouterr().err
    assert err.startswith("jntk gram: error: no space left on device while writing tile (")
    assert f"of store {out}" in err and len(err.strip().splitlines()) == 1
    partial = open_gram(out)
    assert not partial.is_complete and verify_store(out).ok  # what is marked done is right
    resize(8192)  # the cause fixed
    assert main(args) == 0
    assert "computed now" in capsys.readouterr().out
    _assert_exact(out, np.load(data)["X"])
    assert verify_store(out).ok


def test_a_worker_killed_by_rays_memory_monitor_is_one_line_and_resumes(tmp_path: Path) -> None:
    data, out = _dataset(tmp_path, n=40, seed=9), tmp_path / "g.zarr"
    cfg = _yaml(tmp_path, data, out, tile_points=10)
    command = [sys.executable, str(REPO / "jobs" / "gram.py"), str(cfg), "--set",
               "ray.num_cpus=2"]
    # an embedded Ray whose memory monitor finds the node always over its threshold
    oom = subprocess.run(command + ["--set", "ray.max_restarts=0"], capture_output=True,
                         text=True, timeout=300, env=_env(RAY_memory_usage_threshold="0.001",
                                                          RAY_memory_monitor_refresh_ms="50"))
    assert oom.returncode == 2, oom.stderr[-3000:]
    errors = [line for line in oom.stderr.splitlines() if line.startswith("jntk gram: error:")]
    assert len(errors) == 1 and "Traceback" not in oom.stderr
    assert f"store {out}: Ray's memory monitor killed a worker" in errors[0]
    assert "lower tile_points" in errors[0] and "rerun the same command" in errors[0]
    assert not open_gram(out).is_complete
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_exact(out, np.load(data)["X"])
