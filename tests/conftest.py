"""Shared test fixtures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch


def sphere(n: int, d0: int, seed: int) -> "np.ndarray":
    """n points on the unit sphere of R^d0: standard normal rows of ``default_rng(seed)``, each
    divided by its norm."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, d0))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


#: the kernel and ridge of the pca coarse-space tests (erf L = 3, λ = 0.1, μ = 1e-3 on digits:
#: hard for the value/Jacobian block preconditioners)
PCA_KW = dict(depth=3, activation="erf", lam=0.1)
PCA_MU = 1e-3


def digit_rows(n: int) -> tuple[Any, Any]:
    """The first n real 8×8 digit images (d0 = 64) and their labels."""
    from jntk_dist.data import load_dataset

    ds = load_dataset("digits")
    return ds.X[:n], ds.y[:n]


def write_sphere_dataset(folder: Path, n: int, d0: int, seed: int) -> Path:
    """An .npz dataset of n unit vectors in R^d0 (labels: sign of the first coordinate)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d0))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    path = folder / "points.npz"
    np.savez(path, X=X, y=np.sign(X[:, 0]))
    return path


def write_gram_store(path: Path, X: Any, y: Any, *, depth: int, activation: str,
                     lam: float | None = None, mode: str = "dense",
                     tile_points: int = 7) -> Path:
    """A complete Gram store written tile by tile with the store's own writer (no Ray needed)."""
    from jntk_dist import kernels, store

    layout = store.StoreLayout(mode=mode, n_points=X.shape[0], d0=X.shape[1],
                               tile_points=tile_points, dtype="float64")
    store.create_store(path, X, y, layout, {"kernel": "jntk", "depth": depth,
                                            "activation": activation, "lam": lam})
    writer = store.TileWriter(path)
    for i in range(layout.n_tiles):
        for j in range(i, layout.n_tiles):
            xi, xj = (torch.from_numpy(writer.points(k)) for k in (i, j))
            writer.write(i, j, kernels.fields(xi, xj, depth=depth, activation=activation), xi, xj)
    return path


def write_format1_store(path: Path, X: Any, y: Any, *, P: int, attrs: dict[str, Any],
                        depth: int, activation: str,
                        skip: Any = frozenset()) -> Path:
    """A dense store exactly as format 1 (before checksums) laid it out: nested attributes,
    ``done`` at the root, zstd without checksums; tiles written with today's TileWriter (it
    writes format 1 stores as format 1), except those in ``skip``."""
    from dataclasses import asdict

    import numpy as np
    import zarr

    from jntk_dist import kernels, store
    from jntk_dist.store.layout import LAYOUT_DESCRIPTION

    n, d0 = X.shape
    layout = store.StoreLayout(mode="dense", n_points=n, d0=d0, tile_points=P, dtype="float64")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    zstd = zarr.codecs.ZstdCodec(level=1)
    for name, data, dims, chunks in (("X", X, ("point", "feature"), (P, d0)),
                                     ("y", y, ("point",), (P,)),
                                     ("norms", np.linalg.norm(X, axis=1), ("point",), (P,))):
        group.create_array(name, shape=data.shape, chunks=chunks, dtype="float64",
                           dimension_names=dims, compressors=zstd)[...] = data
    p = d0 + 1
    group.create_array("gram", shape=layout.gram_shape, chunks=(P * p, P * p), dtype="float64",
                       fill_value=np.nan, compressors=zstd,
                       dimension_names=("gram_row", "gram_col"))
    group.create_array("done", shape=(layout.n_tiles,) * 2, chunks=(1, 1), dtype="uint8",
                       fill_value=0, compressors=None, dimension_names=("tile_i", "tile_j"))
    group.attrs.update({"format": "jntk-gram", "format_version": 1, "package_version": "0.1.0",
                        "layout": asdict(layout), "layout_description": LAYOUT_DESCRIPTION,
                        "field_names": list(kernels.FIELD_NAMES), "complete": False,
                        "tiles_total": layout.total_tiles, "tiles_done": 0,
                        "completed_tiles": "", **attrs})
    writer = store.TileWriter(path)
    for i in range(layout.n_tiles):
        for j in range(i, layout.n_tiles):
            if (i, j) in skip:
                continue
            xi, xj = (torch.from_numpy(writer.points(k)) for k in (i, j))
            writer.write(i, j, kernels.fields(xi, None if i == j else xj, depth=depth,
                                              activation=activation), xi, xj)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny problems: one torch thread avoids thread-pool stalls on a busy 2-core runner."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_session(one_torch_thread: None) -> Iterator[str]:
    """A local Ray (2 CPUs) for one test module; yields its GCS address."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's S3 server (a real S3 protocol server) in a thread on 127.0.0.1 with one bucket,
    ``jntk``; yields the fsspec ``storage_options`` that reach it (s3fs)."""
    pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is part of the dev extra")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1"
                 ).create_bucket(Bucket="jntk")
    yield options
    server.stop()


def kill_processes(procs: list[Any]) -> None:
    """SIGKILL each psutil process (those already gone are skipped) and wait for them."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
