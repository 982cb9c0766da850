"""Stores that cannot lie, without Ray: flipped bits, deleted chunks and damaged metadata are
named (chunk path, tile, store) by readers and by `jntk verify`; format 1 stores still read and
verify; a store cut during creation is recognised; one writer lock per store whatever its
spelling, never taken from a live holder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from jntk_dist import kernels
from jntk_dist.cli import main
from jntk_dist.store import (StoreCorruptError, StoreError, StoreLockedError, open_gram,
                             store_lock, verify_store)
from jntk_dist.store.locks import StoreLock, _pid_start, lock_path
from jntk_dist.store.writer import store_state

from conftest import write_format1_store, write_gram_store

DEPTH, ACT, LAM = 2, "erf", 0.3
REPO = Path(__file__).resolve().parents[1]


def _unit_rows(n: int, d0: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(n, d0))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _store(path: Path, mode: str = "dense", n: int = 9) -> Path:
    X = _unit_rows(n, 3, seed=1)
    return write_gram_store(path, X, np.sign(X[:, 0]), depth=DEPTH, activation=ACT, lam=LAM,
                            mode=mode, tile_points=4)


def _flip(path: Path, bit: int) -> bytes:
    """Flip one bit of a file; returns the original bytes."""
    original = path.read_bytes()
    data = bytearray(original)
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    return original


def test_every_single_bit_flip_fails_its_checksum_and_is_named(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture
                                                               ) -> None:
    path = _store(tmp_path / "g.zarr")
    expected = open_gram(path).tile(0, 1)
    chunk = path / "gram" / "c" / "0" / "1"
    rng = np.random.default_rng(0)
    bits = rng.choice(chunk.stat().st_size * 8, size=60, replace=False)
    for bit in bits:  # on main, 283 of 300 such flips decoded to wrong numbers silently
        original = _flip(chunk, int(bit))
        with pytest.raises(StoreCorruptError, match=r"chunk gram/c/0/1 \(tile \(0, 1\)\) of "
                           rf"store {path}.*cannot be read.*jntk verify"):
            open_gram(path).tile(0, 1)
        chunk.write_bytes(original)
    np.testing.assert_array_equal(open_gram(path).tile(0, 1), expected)  # restored: reads again
    _flip(path / "gram" / "c" / "1" / "0", 100)  # the mirror chunk of the same tile
    store = open_gram(path)
    with pytest.raises(StoreCorruptError, match=r"gram/c/1/0 \(the mirror of tile \(0, 1\)\)"):
        store.dask_array().compute(scheduler="sync")
    np.testing.assert_array_equal(store.tile(0, 1), expected)  # the other chunks still read
    report = verify_store(path)
    assert not report.ok and report.bad_tiles == [(0, 1)]
    assert [b.key for b in report.bad] == ["gram/c/1/0"] and "checksum" in report.bad[0].problem
    assert main(["verify", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "BAD chunk gram/c/1/0 (the mirror of tile (0, 1)): fails its checksum" in out
    assert err.startswith("jntk verify: error: store ") and "gram/c/1/0" in err
    assert len(err.strip().splitlines()) == 1 and "bad tiles (0, 1): `jntk gram CONFIG --repair`" in err


@pytest.mark.parametrize("mode", ["dense", "fields"])
def test_a_deleted_chunk_of_a_done_tile_is_named_not_read_as_nan(tmp_path: Path,
                                                                mode: str) -> None:
    path = _store(tmp_path / "g.zarr", mode)
    key = "gram/c/0/2" if mode == "dense" else "fields/c/0/0/2"
    (path / key).unlink()
    store = open_gram(path)
    assert store.is_complete  # the tile is marked done: its chunk must be there
    with pytest.raises(StoreCorruptError, match=rf"chunk {key} \(tile \(0, 2\)\) of store "
                       r".* is missing although its tile is marked done"):
        store.tile(0, 2)
    with pytest.raises(StoreCorruptError, match=key):
        store.dask_array().compute(scheduler="threads")
    report = verify_store(path)
    assert report.bad_tiles == [(0, 2)] and report.bad[0].key == key
    assert "missing" in report.bad[0].problem and report.tiles_done == 6


def test_damaged_metadata_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _store(tmp_path / "g.zarr")
    for member in ("", "gram/"):
        meta = path / member / "zarr.json"
        original = meta.read_bytes()
        meta.write_bytes(original[:len(original) // 2])  # a truncated write (disk full, kill)
        with pytest.raises(StoreCorruptError, match=rf"metadata file {path}/{member}zarr.json "
                           "is damaged"):
            open_gram(path)
        assert main(["verify", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{member}zarr.json is damaged" in err and len(err.strip().splitlines()) == 1
        meta.write_bytes(original)
    assert verify_store(path).ok  # fixed: nothing else was touched


def test_format1_stores_still_read_and_verify(tmp_path: Path) -> None:
    X = _unit_rows(9, 3, seed=2)
    path = tmp_path / "old.zarr"
    write_format1_store(path, X, np.ones(9), P=4, attrs={
        "kernel": "jntk", "depth": DEPTH, "activation": ACT, "lam": LAM,
        "config": {"kernel": {"depth": DEPTH}}}, depth=DEPTH, activation=ACT)
    store = open_gram(path)
    assert store.format_version == 1 and store.is_complete and store.attrs["config"]["kernel"]
    np.testing.assert_allclose(store.to_numpy(), kernels.gram(X, depth=DEPTH, activation=ACT,
                                                              lam=LAM), rtol=1e-12, atol=1e-13)
    view = store.to_xarray()
    assert view.attrs["format_version"] == 1 and json.loads(view.attrs["layout"])["n_points"] == 9
    report = verify_store(path)
    assert report.ok and not report.checksums and report.samples == 16
    # no checksum: a flipped mantissa bit decodes to a wrong number, but the mirror check and the
    # sampled recomputation name the tile (readers of format 1 cannot know)
    gram = zarr.open_array(str(path / "gram"), mode="r+")
    mirror = np.asarray(gram[32:36, 16:32])  # chunk gram/c/2/1: the mirror of tile (1, 2)
    flipped = mirror.copy()
    flipped.view(np.uint64)[1, 5] ^= 1  # the last mantissa bit of one entry
    gram[32:36, 16:32] = flipped
    assert not np.array_equal(open_gram(path).tile(2, 1, lam=None), mirror)  # read silently
    report = verify_store(path)
    assert report.bad_tiles == [(1, 2)] and "differs from its mirror chunk" in report.text()
    # a damaged chunk file of format 1: zstd's own error, now naming the chunk
    chunk = path / "gram" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-50])
    with pytest.raises(StoreCorruptError, match=r"chunk gram/c/0/0 \(tile \(0, 0\)\) of store "
                       r".*cannot be read \((RuntimeError|ValueError)"):
        open_gram(path).tile(0, 0)


def test_a_store_killed_while_it_is_created_is_recognised(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "big.zarr"
    script = (
        "import numpy as np, sys\n"
        "from jntk_dist.store import StoreLayout, create_store\n"
        "n = 400_000\n"
        "X = np.random.default_rng(0).normal(size=(n, 3)); X /= np.linalg.norm(X, axis=1)[:, None]\n"
        "lay = StoreLayout(mode='fields', n_points=n, d0=3, tile_points=40, dtype='float64')\n"
        f"create_store({str(path)!r}, X, np.ones(n), lay, {{'kernel': 'jntk', 'depth': 2, "
        "'activation': 'erf'})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    root = path / "zarr.json"
    # X's metadata is written once `point`'s 10 000 chunks are: the ~40 000 chunk writes of X, y,
    # norms, point_i and point_j are still ahead when the kill lands
    inside = path / "X" / "zarr.json"
    deadline = time.monotonic() + 120
    while not inside.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert inside.exists() and proc.poll() is None, "the creation ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(root.read_text())["attributes"]["creation_complete"] is False
    assert store_state(path) == "creating"
    with pytest.raises(StoreError, match="interrupted while it was being created.*rerun"):
        open_gram(path)
    assert main(["verify", str(path)]) == 2
    assert "creation was interrupted" in capsys.readouterr().out
    # a format 1 store cut before its attributes: a bare group of our arrays
    bare = zarr.open_group(str(tmp_path / "old.zarr"), mode="w-", zarr_format=3)
    bare.create_array("X", shape=(3, 2), dtype="float64")
    assert store_state(tmp_path / "old.zarr") == "creating"
    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w-", zarr_format=3)
    other.create_array("mine", shape=(3,), dtype="float64")
    assert store_state(tmp_path / "other.zarr") == "foreign"


def _hold(url: str, ready: "object") -> None:
    store_lock(url).acquire()
    ready.set()  # type: ignore[attr-defined]
    time.sleep(120)


def test_one_lock_per_store_whatever_its_spelling(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import multiprocessing

    real = tmp_path / "runs" / "s.zarr"
    real.parent.mkdir()
    link = tmp_path / "link.zarr"
    link.symlink_to(real, target_is_directory=True)  # a symlink to a store that is not there yet
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(real.as_uri(), ready))  # job A: file:// URL
    holder.start()
    try:
        assert ready.wait(30)
        spellings = [real, str(real) + "/", link, tmp_path / "runs" / ".." / "runs" / "s.zarr",
                     "file://localhost" + str(real), os.path.relpath(real)]
        for spelling in spellings:  # job B by any other spelling is refused
            with pytest.raises(StoreLockedError, match=f"pid {holder.pid} "):
                store_lock(spelling).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with caplog.at_level("WARNING"), store_lock(link):  # the dead holder's lock is taken over
        assert json.loads(lock_path(real).read_text())["pid"] == os.getpid()
    assert "no longer running" in caplog.text

    # a live process named in the lock file but not holding the flock (a writer locking another
    # way, e.g. an older object lock on file://) is never taken over ...
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = {"pid": sleeper.pid, "host": socket.gethostname(),
                "pid_start": _pid_start(sleeper.pid), "started": "earlier"}
        lock_path(real).write_text(json.dumps(live))
        with pytest.raises(StoreLockedError, match=f"pid {sleeper.pid} "):
            StoreLock(real).acquire()
        # ... unless that pid now belongs to a later process (its start time differs)
        lock_path(real).write_text(json.dumps({**live, "pid_start": 1}))
        with StoreLock(real):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_job_reading_a_corrupt_store_names_the_chunk(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    path = _store(tmp_path / "g.zarr")
    _flip(path / "gram" / "c" / "2" / "1", 333)
    cfg = tmp_path / "solve.yaml"
    cfg.write_text(f"store: {path}\nridge: 1e-3\ntest_fraction: 0\n"
                   f"output: {tmp_path / 'out.zarr'}\n")
    assert main(["solve", str(cfg), "--no-progress"]) == 2  # a zstd/NaN traceback on main
    err = capsys.readouterr().err
    assert err.startswith("jntk solve: error: chunk gram/c/2/1 (the mirror of tile (1, 2)) of "
                          f"store {path} cannot be read") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.zarr").exists()  # nothing was written
