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

from jntk_dist import kernels
from jntk_dist.workflows.config import load_config
from jntk_dist.workflows.gram import GramJobConfig, run_gram
from jntk_dist.store import open_gram

REPO = Path(__file__).resolve().parents[1]
DEPTH, ACT = 2, "erf"


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
    """Tiles whose ``done`` chunk exists (one file per tile: done/c/i/j)."""
    return {(int(p.parent.name), int(p.name)) for p in store.glob("done/c/*/*")
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
             "--set", f"ray.address={ray_session}"], stdout=fh, stderr=subprocess.STDOUT)
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
