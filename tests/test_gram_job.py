"""The Gram job end to end on a real local Ray: both store modes, resume, refusals, validation."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jntk_dist import kernels
from jntk_dist.workflows.config import load_config
from jntk_dist.workflows.gram import GramJobConfig, describe, run_gram
from jntk_dist.store import StoreError, StoreLockedError, open_gram, verify_store
from jntk_dist.store.layout import DONE_PATH
from jntk_dist.store.locks import StoreLock
from jntk_dist.workflows.gram_store import identity_of

from conftest import write_format1_store, write_sphere_dataset

N, D0, P, DEPTH, ACT = 23, 3, 5, 2, "gelu"  # N is not a multiple of the tile size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sphere_dataset(tmp_path_factory.mktemp("data"), N, D0, seed=7)


@pytest.fixture(scope="module")
def dense_store(ray_session: None, dataset: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, Any]:
    """One complete dense JNTK store (and its run result), copied by tests that modify it."""
    out = tmp_path_factory.mktemp("dense") / "g.zarr"
    return out, run_gram(_config(dataset, out))


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "g.zarr"
    shutil.copytree(store, out)
    return out


def _config(data: Path, out: Path, **over: Any) -> GramJobConfig:
    cfg = {"dataset": {"path": str(data)},
           "kernel": {"kind": "jntk", "depth": DEPTH, "activation": ACT, "lam": 0.1},
           "output": str(out), "tile_points": P, "progress": False}
    sets = [f"{k}={v}" for k, v in over.items()]
    return load_config(cfg, GramJobConfig, sets)


def _assert_store_is_the_kernel(path: Path, X: np.ndarray, kind: str) -> None:
    store = open_gram(path)
    assert store.is_complete and store.attrs["complete"] is True
    fn = kernels.jntk if kind == "jntk" else kernels.jacobian_nngp
    T = store.layout.n_tiles
    for i in range(T):
        for j in range(i, T):
            (a, b), (c, d) = store.layout.points(i), store.layout.points(j)
            # a diagonal tile is the one-point-set kernel (norms read off the same product)
            ref = kernels.to_gram(fn(X[a:b], None if i == j else X[c:d], depth=DEPTH,
                                     activation=ACT))
            np.testing.assert_array_equal(store.tile(i, j, lam=None), ref)  # bit for bit per tile
    G = store.dask_array(lam=None).compute(scheduler="threads")  # Θ as stored
    full = kernels.to_gram(fn(X, X, depth=DEPTH, activation=ACT))
    # whole-X kernels differ from per-tile calls only in BLAS summation order (~1e-15 relative)
    np.testing.assert_allclose(G, full, rtol=1e-12, atol=1e-13)
    lam = store.lam
    np.testing.assert_allclose(store.dask_array(lam=lam).compute(scheduler="threads"),
                               kernels.to_gram(fn(X, X, depth=DEPTH, activation=ACT, lam=lam)),
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("mode, kind", [("dense", "jntk"), ("fields", "nngp")])
def test_job_writes_the_kernel(dense_store: tuple[Path, Any], dataset: Path, tmp_path: Path,
                               mode: str, kind: str) -> None:
    if mode == "dense":
        out, result = dense_store
    else:
        out = tmp_path / "g.zarr"
        result = run_gram(_config(dataset, out, store=mode, **{"kernel.kind": kind}))
    assert result.tiles_total == 15 and len(result.tiles_computed) == 15  # T = ceil(23/5) = 5
    assert sorted(result.tiles_computed) == sorted((i, j) for i in range(5) for j in range(i, 5))
    assert result.num_actors == 2
    X = np.load(dataset)["X"]
    _assert_store_is_the_kernel(out, X, kind)
    store = open_gram(out)
    assert (store.mode, store.kind, store.depth, store.activation) == (mode, kind, DEPTH, ACT)
    assert store.attrs["config"]["kernel"]["lam"] == 0.1
    np.testing.assert_array_equal(store.y, np.sign(X[:, 0]))
    assert "open_gram" in describe(result) and str(out.resolve()) in describe(result)
    # rerun: nothing to do
    again = run_gram(_config(dataset, out, store=mode, **{"kernel.kind": kind}))
    assert again.tiles_computed == [] and again.tiles_already_done == 15


def test_resume_computes_only_missing_tiles(dense_store: tuple[Path, Any], dataset: Path,
                                            tmp_path: Path) -> None:
    out = _copy(dense_store[0], tmp_path)
    import zarr

    group = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    p = D0 + 1
    lost = [(0, 3), (2, 2), (1, 4)]
    for i, j in lost:  # as if the run had died while writing these tiles
        group[DONE_PATH][i, j] = 0
        group["gram"][i * P * p:(i + 1) * P * p, j * P * p:(j + 1) * P * p] = 0.0
        group["gram"][j * P * p:(j + 1) * P * p, i * P * p:(i + 1) * P * p] = np.nan
    assert open_gram(out).missing_tiles() == sorted(lost)
    result = run_gram(_config(dataset, out))
    assert sorted(result.tiles_computed) == sorted(lost) and result.tiles_already_done == 12
    _assert_store_is_the_kernel(out, np.load(dataset)["X"], "jntk")


def test_config_mismatch_is_refused_naming_keys(dense_store: tuple[Path, Any], dataset: Path,
                                                tmp_path: Path) -> None:
    out = _copy(dense_store[0], tmp_path)
    with pytest.raises(StoreError, match=r"kernel\.depth: 2 -> 3.*--overwrite"):
        run_gram(_config(dataset, out, **{"kernel.depth": 3}))
    with pytest.raises(StoreError, match=r"store: 'dense' -> 'fields'"):
        run_gram(_config(dataset, out, store="fields"))
    with pytest.raises(StoreError, match="tile_points=5"):
        run_gram(_config(dataset, out, tile_points=4))
    # execution settings are not part of the store's identity
    assert run_gram(_config(dataset, out, **{"ray.num_actors": 1})).tiles_computed == []
    result = run_gram(_config(dataset, out, **{"kernel.depth": 3}), overwrite=True)
    assert len(result.tiles_computed) == 15 and open_gram(out).depth == 3


def test_second_writer_is_refused(ray_session: None, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    with StoreLock(out):  # another job holds the store
        with pytest.raises(StoreLockedError, match="being written by another job"):
            run_gram(_config(dataset, out))
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("bad, message", [("nan", "NaN/inf"), ("zero", "zero row")])
def test_bad_rows_rejected_before_any_store(ray_session: None, tmp_path: Path, bad: str,
                                            message: str) -> None:
    X = np.random.default_rng(1).normal(size=(6, 2))
    X[4] = np.nan if bad == "nan" else 0.0
    data = tmp_path / "bad.npz"
    np.savez(data, X=X, y=np.ones(6))
    out = tmp_path / "g.zarr"
    with pytest.raises(ValueError, match=rf"{message}.*\b4\b"):
        run_gram(_config(data, out))
    assert not out.exists()


def test_existing_non_store_is_refused(ray_session: None, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a jntk Gram store"):
        run_gram(_config(dataset, out))
    assert (out / "notes.txt").read_text() == "mine"


def test_command_line_entry(dense_store: tuple[Path, Any], dataset: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from jntk_dist.cli import build_parser

    parser = build_parser()
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"dataset: {{path: {dataset}}}\nkernel: {{depth: 1, activation: {ACT}}}\n"
                   f"output: {dense_store[0]}\ntile_points: {P}\n")
    args = parser.parse_args(["gram", str(cfg), "--set", f"kernel.depth={DEPTH}",
                              "--set", "kernel.lam=0.1", "--no-progress"])
    assert args.func(args) == 0  # the store is complete: nothing to compute
    out = capsys.readouterr().out
    assert f"store: {dense_store[0].resolve()}" in out and "0 computed now, 15 already done" in out
    assert "open_gram(" in out and "xarray.open_zarr(" in out and "g.to_xarray()" in out
    assert "lazy Θ_λ with the stored λ=0.1" in out
    args = parser.parse_args(["gram", str(cfg), "--set", f"kernel.depth={DEPTH}", "--set",
                              "kernel.lam=0.1", "--no-progress", "--repair"])
    assert args.func(args) == 0
    assert "repair: every chunk verified" in capsys.readouterr().out
    args = parser.parse_args(["gram", str(cfg), "--no-progress"])  # depth 1 ≠ the store's 2
    with pytest.raises(StoreError, match=r"kernel\.depth: 2 -> 1"):
        args.func(args)


def test_compile_auto_only_when_workers_have_minutes_of_work():
    from jntk_dist.workflows.gram import AUTO_COMPILE_PAIR_LAYERS, resolve_compile

    big = 2 * AUTO_COMPILE_PAIR_LAYERS
    assert resolve_compile("auto", "gelu", 1, big, 1) is True
    assert resolve_compile("auto", "gelu", 1, big, 4) is False  # spread over 4 workers
    assert resolve_compile("auto", "tanh", 1, big, 1) is False  # quadrature: never compiled
    assert resolve_compile("auto", "gelu", 1, 10, 4, gpu_workers=True) is True  # the GPU path
    assert resolve_compile("auto", "tanh", 1, 10, 4, gpu_workers=True) is False
    assert resolve_compile("auto", "erf", 3, 243 ** 2 / 2, 2) is False  # the quickstart
    assert resolve_compile(True, "erf", 1, 1.0, 8) is True and resolve_compile(False, "erf", 9, big, 1) is False


def _flip_bit(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def test_repair_recomputes_exactly_the_bad_tiles(dense_store: tuple[Path, Any], dataset: Path,
                                                 tmp_path: Path) -> None:
    out = _copy(dense_store[0], tmp_path)
    _flip_bit(out / "gram" / "c" / "0" / "1", 77)  # a flipped bit in tile (0, 1)
    (out / "gram" / "c" / "4" / "3").unlink()  # the lost mirror of tile (3, 4)
    _flip_bit(out / "X" / "c" / "2" / "0", 40)  # and a flipped bit in the inputs
    assert run_gram(_config(dataset, out)).tiles_computed == []  # a rerun trusts the done marks
    assert verify_store(out).bad_tiles == [(0, 1), (3, 4)]
    result = run_gram(_config(dataset, out), repair=True)
    assert sorted(result.tiles_computed) == [(0, 1), (3, 4)] == result.repaired
    assert result.tiles_already_done == 13
    assert any("rewrote X from the dataset" in n for n in result.notes)
    assert "repair: recomputing 2 bad tile(s) (0, 1), (3, 4)" in describe(result)
    assert verify_store(out, samples=64).ok
    _assert_store_is_the_kernel(out, np.load(dataset)["X"], "jntk")


def test_changed_labels_are_rewritten_with_a_note(ray_session: None, dataset: Path,
                                                 tmp_path: Path) -> None:
    data = tmp_path / "points.npz"
    shutil.copy(dataset, data)
    out = tmp_path / "g.zarr"
    run_gram(_config(data, out))
    X, y = np.load(data)["X"], np.load(data)["y"]
    np.savez(data, X=X, y=-y)  # same file, same X, labels negated
    result = run_gram(_config(data, out))
    assert result.tiles_computed == []  # the Gram does not depend on y
    np.testing.assert_array_equal(open_gram(out).y, -y)  # on main the store kept the old y
    assert f"labels y of store {out} differ from the dataset's ({N} of {N} labels)" in \
        describe(result)
    assert run_gram(_config(data, out)).notes == []  # and agree now
    assert verify_store(out).ok  # y matches its recorded hash again


def test_duplicate_points_are_reported_when_the_job_starts(ray_session: None, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    X = np.random.default_rng(11).normal(size=(12, D0))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X[5], X[7] = X[2], -X[3]  # an exact duplicate and an antiparallel pair
    data = tmp_path / "dups.npz"
    np.savez(data, X=X, y=np.sign(X[:, 0]))
    with caplog.at_level(logging.INFO):
        result = run_gram(_config(data, tmp_path / "g.zarr"))
    messages = [r.getMessage() for r in caplog.records]
    warning = next(i for i, m in enumerate(messages) if "near-parallel" in m)
    started = next(i for i, m in enumerate(messages) if "tiles to compute" in m)
    assert warning < started  # said when the job starts, before any tile
    text = messages[warning]
    assert ("2 pair(s) of points are near-parallel (|cos| > 0.9999), 1 of them exact "
            "duplicates, e.g. (2, 5), (3, 7)") in text and "ridge" in text
    assert text in describe(result)


def test_a_format1_store_resumes_as_format1(ray_session: None, dataset: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "old.zarr"
    config = _config(dataset, out)
    X, y = np.load(dataset)["X"], np.load(dataset)["y"]
    attrs = {"config": config.recorded(), "identity": identity_of(config.to_dict()), "dataset": "points",
             "kernel": "jntk", "activation": ACT, "depth": DEPTH, "lam": 0.1, "dtype": "float64"}
    write_format1_store(out, X, y, P=P, attrs=attrs, depth=DEPTH, activation=ACT,
                        skip={(0, 2), (1, 3)})
    result = run_gram(config)
    assert sorted(result.tiles_computed) == [(0, 2), (1, 3)]
    store = open_gram(out)
    assert store.format_version == 1 and (out / "done").is_dir()
    codecs = json.loads((out / "gram" / "zarr.json").read_text())["codecs"]
    assert "crc32c" not in [c["name"] for c in codecs]  # the store keeps its own codecs
    _assert_store_is_the_kernel(out, X, "jntk")
    assert verify_store(out).ok
