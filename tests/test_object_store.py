"""Gram stores at fsspec URLs on a real local Ray: file:// (through zarr's FsspecStore) and a real
S3 protocol server (moto's, on loopback) with s3fs; the object-store writer lock; the warning for
relative outputs inside a ``ray job submit`` job."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from jntk_dist import kernels
from jntk_dist.workflows.config import ConfigError, load_config
from jntk_dist.workflows.gram import GramJobConfig, describe, run_gram
from jntk_dist.store import (StoreCorruptError, StoreError, StoreLockedError, open_gram,
                             store_lock, verify_store)
from jntk_dist.store.layout import DONE_PATH
from jntk_dist.store.locations import zarr_target
from jntk_dist.store.locks import ObjectStoreLock, StoreLock, lock_path

from conftest import write_sphere_dataset

N, D0, P, DEPTH, ACT = 13, 3, 5, 2, "gelu"  # 3 tile rows, 6 tiles


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_dataset(tmp_path_factory.mktemp("data"), N, D0, seed=11)


def _config(data: Path, out: str | Path, **over: Any) -> GramJobConfig:
    cfg = {"dataset": {"path": str(data)},
           "kernel": {"kind": "jntk", "depth": DEPTH, "activation": ACT, "lam": 0.1},
           "output": str(out), "tile_points": P, "progress": False,
           "ray": {"num_actors": 1}}
    cfg.update(over)
    return load_config(cfg, GramJobConfig)


@pytest.fixture(scope="module")
def local_store(ray_session: None, dataset: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Path:
    """The reference: the same job written to a plain local path."""
    out = tmp_path_factory.mktemp("local") / "g.zarr"
    run_gram(_config(dataset, out))
    return out


@pytest.fixture(scope="module")
def url_store(ray_session: None, dataset: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, str, Any]:
    """A complete store written to a file:// URL: (its folder, its URL, the run result)."""
    folder = tmp_path_factory.mktemp("url") / "g.zarr"
    url = folder.as_uri()
    return folder, url, run_gram(_config(dataset, url))


def _assert_same_store(store: Any, reference: Path, X: np.ndarray) -> None:
    ref = open_gram(reference)
    assert store.is_complete and store.attrs["complete"] is True
    np.testing.assert_array_equal(store.X, ref.X)
    np.testing.assert_array_equal(store.y, ref.y)
    np.testing.assert_array_equal(store.to_numpy(), ref.to_numpy())  # bit for bit
    for key in ("identity", "config_hash", "layout", "kernel", "depth", "activation", "lam"):
        assert store.attrs[key] == ref.attrs[key], key
    # and against the kernel itself, not only against the other store
    full = kernels.to_gram(kernels.jntk(X, X, depth=DEPTH, activation=ACT))
    np.testing.assert_allclose(store.to_numpy(lam=None), full, rtol=1e-12, atol=1e-13)
    lam = store.lam
    np.testing.assert_allclose(store.dask_array(lam=lam).compute(scheduler="threads"),
                               kernels.to_gram(kernels.jntk(X, X, depth=DEPTH, activation=ACT,
                                                            lam=lam)),
                               rtol=1e-12, atol=1e-13)


# ---- file:// URLs (zarr's FsspecStore over the local file system) ------------------------


def test_file_url_run_equals_the_local_path_run(url_store: tuple[Path, str, Any],
                                                local_store: Path, dataset: Path) -> None:
    folder, url, result = url_store
    assert result.path == url and len(result.tiles_computed) == 6
    store = open_gram(url)
    assert isinstance(store.group.store, zarr.storage.FsspecStore)
    _assert_same_store(store, local_store, np.load(dataset)["X"])
    assert verify_store(url).ok and verify_store(url).chunks_checked > 20
    assert (folder / "zarr.json").exists() and (folder / "gram").is_dir()
    # a file:// URL is a local store: its lock is the flock'd <store>.lock, empty once released
    assert Path(str(folder) + ".lock").read_text() == ""
    import xarray

    ds = xarray.open_zarr(url)
    # the stored arrays hold Θ; open_gram reads apply the stored λ unless lam=None
    np.testing.assert_array_equal(ds["gram"].values, open_gram(local_store).to_numpy(lam=None))
    text = describe(result)
    assert f"store: {url}" in text and f"xarray.open_zarr({url!r})" in text


def test_resume_on_a_url_store(url_store: tuple[Path, str, Any], local_store: Path,
                               dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "g.zarr"
    shutil.copytree(url_store[0], folder)
    url = folder.as_uri()
    group = zarr.open_group(zarr_target(url), mode="r+", use_consolidated=False)
    p = D0 + 1
    lost = [(0, 2), (1, 1)]
    for i, j in lost:  # as if the run had died while writing these tiles
        group[DONE_PATH][i, j] = 0
        group["gram"][i * P * p:(i + 1) * P * p, j * P * p:(j + 1) * P * p] = 0.0
    assert open_gram(url).missing_tiles() == sorted(lost)
    result = run_gram(_config(dataset, url))
    assert sorted(result.tiles_computed) == sorted(lost) and result.tiles_already_done == 4
    _assert_same_store(open_gram(url), local_store, np.load(dataset)["X"])
    with pytest.raises(StoreError, match=r"kernel\.depth: 2 -> 3"):  # a different config
        run_gram(_config(dataset, url, kernel={"depth": 3, "activation": ACT}))


def test_second_writer_on_a_file_url_store_is_refused(ray_session: None, dataset: Path,
                                                      tmp_path: Path) -> None:
    url = (tmp_path / "g.zarr").as_uri()
    holder = store_lock(url)
    # a file:// URL names a local store: the same flock'd lock file as its plain path
    assert isinstance(holder, StoreLock) and holder.path == lock_path(tmp_path / "g.zarr")
    with holder:  # another job holds the store
        info = json.loads(Path(tmp_path / "g.zarr.lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        for spelling in (url, tmp_path / "g.zarr"):
            with pytest.raises(StoreLockedError, match=r"being written by another job \(pid "):
                run_gram(_config(dataset, spelling))
    assert not (tmp_path / "g.zarr").exists()  # nothing was written
    assert not (tmp_path / "g.zarr.lock").exists()  # released, and removed: no store beside it


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_object_lock_staleness(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = (tmp_path / "s.zarr").as_uri()
    lock_file = tmp_path / "s.zarr.lock"

    def plant(**info: Any) -> None:
        lock_file.write_text(json.dumps({"started": "earlier", "token": "theirs", **info}))

    here = socket.gethostname()
    plant(pid=_dead_pid(), host=here, heartbeat=time.time())  # crashed job on this host
    with caplog.at_level(logging.WARNING), ObjectStoreLock(url) as lock:
        assert json.loads(lock_file.read_text())["token"] == lock.token
    assert "stale lock" in caplog.text and "no longer running" in caplog.text
    assert not lock_file.exists()

    plant(pid=4242, host="node-elsewhere", heartbeat=time.time() - 5)  # live on another node
    with pytest.raises(StoreLockedError, match="pid 4242 on node-elsewhere.*delete it by hand"):
        ObjectStoreLock(url, stale_after_s=60).acquire()
    assert json.loads(lock_file.read_text())["token"] == "theirs"  # untouched

    caplog.clear()
    plant(pid=4242, host="node-elsewhere", heartbeat=time.time() - 120)  # that node died
    with caplog.at_level(logging.WARNING), ObjectStoreLock(url, stale_after_s=60):
        pass
    assert "heartbeat is 12" in caplog.text and not lock_file.exists()

    with ObjectStoreLock(url, heartbeat_s=0.2) as lock:  # the holder renews its heartbeat
        first = json.loads(lock_file.read_text())["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads(lock_file.read_text())["heartbeat"] == first:
            assert time.monotonic() < deadline, "heartbeat never renewed"
            time.sleep(0.1)


# ---- configs ------------------------------------------------------------------------------


def test_url_config_checks(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, "s3://bucket/g.zarr",
                  storage_options={"endpoint_url": "http://127.0.0.1:9000", "secret": "s3cr3t"})
    assert cfg.output == "s3://bucket/g.zarr"  # kept as a URL, not mangled into a Path
    assert cfg.recorded()["storage_options"] == {"endpoint_url": "<not recorded>",
                                                 "secret": "<not recorded>"}
    assert isinstance(_config(dataset, tmp_path / "g.zarr").output, Path)
    with pytest.raises(ConfigError, match="storage_options apply to URLs"):
        _config(dataset, tmp_path / "g.zarr", storage_options={"anon": True})
    with pytest.raises(ConfigError, match="unknown URL scheme 'nosuch'"):
        _config(dataset, "nosuch://bucket/g.zarr")


def test_missing_fsspec_backend_names_the_extra(dataset: Path) -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed here: no missing backend to report")
    with pytest.raises(ImportError, match=r'gcsfs.*pip install "jntk-dist\[gcs\]"'):
        run_gram(_config(dataset, "gs://bucket/g.zarr"))


def test_relative_output_in_a_ray_job_warns(monkeypatch: pytest.MonkeyPatch, dataset: Path,
                                            tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    with caplog.at_level(logging.WARNING, logger="jntk_dist.workflows.config"):
        _config(dataset, "runs/g.zarr")  # not inside a Ray job: no warning
        assert caplog.text == ""
        # what Ray's job supervisor sets for the driver of `ray job submit`
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
            {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}))
        _config(dataset, tmp_path / "g.zarr")  # absolute: fine
        _config(dataset, "s3://bucket/g.zarr")  # URL: fine
        assert caplog.text == ""
        _config(dataset, "runs/g.zarr")
    assert "relative path inside the Ray job raysubmit_abc" in caplog.text
    assert str(Path("runs/g.zarr").resolve()) in caplog.text
    assert "absolute path" in caplog.text and "s3://" in caplog.text


# ---- a real S3 protocol server on loopback ---------------------------------------------


def test_gram_job_to_s3(s3_server: dict[str, Any], local_store: Path, dataset: Path) -> None:
    url = "s3://jntk/runs/g.zarr"
    result = run_gram(_config(dataset, url, storage_options=s3_server))
    assert len(result.tiles_computed) == 6
    store = open_gram(url, storage_options=s3_server)
    assert isinstance(store.group.store, zarr.storage.FsspecStore)
    _assert_same_store(store, local_store, np.load(dataset)["X"])
    # credentials given as storage options are not written into the store
    assert store.attrs["config"]["storage_options"]["secret"] == "<not recorded>"
    import s3fs
    import xarray

    fs = s3fs.S3FileSystem(**s3_server)
    assert not fs.exists("jntk/runs/g.zarr.lock")  # released
    ds = xarray.open_zarr(url, storage_options=s3_server)
    assert ds["gram"].dims == ("gram_row", "gram_col") and ds.attrs["complete"] is True
    np.testing.assert_array_equal(ds["gram"].values, open_gram(local_store).to_numpy(lam=None))
    np.testing.assert_array_equal(ds["X"].values, np.load(dataset)["X"])
    # jntk verify lists and reads every chunk through s3fs; a deleted chunk is named
    report = verify_store(url, s3_server)
    assert report.ok and report.tiles_done == 6 and report.chunks_checked > 20, report.text()
    fs.rm("jntk/runs/g.zarr/gram/c/1/0")
    fs.invalidate_cache()
    with pytest.raises(StoreCorruptError, match=r"chunk gram/c/1/0 \(the mirror of tile "
                       r"\(0, 1\)\) of store s3://jntk/runs/g.zarr is missing"):
        open_gram(url, storage_options=s3_server).to_numpy()
    assert verify_store(url, s3_server).bad_tiles == [(0, 1)]
    result = run_gram(_config(dataset, url, storage_options=s3_server), repair=True)
    assert result.tiles_computed == [(0, 1)]  # exactly the bad tile
    _assert_same_store(open_gram(url, storage_options=s3_server), local_store,
                       np.load(dataset)["X"])
    # a rerun finds it complete; a second writer is refused through the lock object
    assert run_gram(_config(dataset, url, storage_options=s3_server)).tiles_computed == []
    with ObjectStoreLock(url, s3_server):
        assert fs.exists("jntk/runs/g.zarr.lock")
        with pytest.raises(StoreLockedError, match="being written by another job"):
            run_gram(_config(dataset, url, storage_options=s3_server))


def test_reproduce_refuses_a_url_runs_folder():
    """The runs folder of jobs/reproduce.py is read back by jntk report: a URL is refused."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "jobs" / "reproduce.py"), "--quick",
                           "--only", "fig6", "--out", "s3://bucket/runs"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--out s3://bucket/runs is a URL" in proc.stderr
