"""Dask row-block matvec (threads and a real distributed LocalCluster) vs the local operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_gram_store
from jntk_dist import kernels
from jntk_dist.operators import DaskStructuredKernel, structured_operator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, D0, KW = 13, 4, dict(depth=3, activation="gelu")


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    x = np.random.default_rng(7).standard_normal((N, D0))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    F = kernels.fields(x, **KW).stack().numpy()
    path = tmp_path_factory.mktemp("fields") / "f.zarr"
    # a fields store of 4-point tiles: several chunks per row block, read across chunk borders
    write_gram_store(path, x, np.sign(x[:, 0]), mode="fields", tile_points=4, **KW)
    V = np.random.default_rng(8).standard_normal((N * (D0 + 1), 3))
    ref = structured_operator(x, fields=F, lam=0.2).matmat(V)
    return x, F, path, V, ref


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.mark.parametrize("source", ["fields", "store", "store-url", "recompute"])
def test_dask_threads_matvec_equals_local(case, source):
    x, F, path, V, ref = case
    kw = {"fields": dict(fields=F), "store": dict(store=path),
          "store-url": dict(store=path.as_uri(), storage_options={"auto_mkdir": False}),
          "recompute": KW}[source]
    op = DaskStructuredKernel(x, lam=0.2, n_blocks=3, scheduler="threads", **kw)
    assert len(op.row_blocks) == 3
    assert _rel(op.matmat(V), ref) <= 1e-12
    assert _rel(op @ V[:, 0], ref[:, 0]) <= 1e-12
    assert _rel(op.aslinearoperator().matvec(V[:, 1]), ref[:, 1]) <= 1e-12
    assert op.n_products == 5


@pytest.mark.parametrize("source", ["fields", "store", "recompute"])
def test_dask_distributed_matvec_equals_local(case, client, source):
    x, F, path, V, ref = case
    kw = {"fields": dict(fields=F), "store": dict(store=path), "recompute": KW}[source]
    from distributed import get_task_stream

    op = DaskStructuredKernel(x, lam=0.2, n_blocks=4, **kw)  # the active client is the default
    with get_task_stream(client) as stream:
        out = op.matmat(torch.as_tensor(V))
    assert isinstance(out, torch.Tensor)
    assert _rel(out.numpy(), ref) <= 1e-12
    # the four row blocks ran as tasks on the cluster's workers, not on the driver
    blocks = [t for t in stream.data if str(t["key"]).startswith("('_dask_row_block")
              or "_dask_row_block" in str(t["key"])]
    assert len(blocks) == 4
    assert {t["worker"] for t in blocks} <= set(client.scheduler_info()["workers"])


def test_dask_bad_input(case, tmp_path):
    x, F, path, V, _ = case
    with pytest.raises(ValueError, match="exactly one field source"):
        DaskStructuredKernel(x, fields=F, depth=3, scheduler="threads")
    with pytest.raises(ValueError, match="fields of other points"):
        DaskStructuredKernel(x[:5], store=path, scheduler="threads")
    with pytest.raises(ValueError, match="fields of other points"):
        DaskStructuredKernel(-x, store=path, scheduler="threads")
    dense = write_gram_store(tmp_path / "dense.zarr", x, np.sign(x[:, 0]), **KW)
    with pytest.raises(ValueError, match="'dense' store"):
        DaskStructuredKernel(x, store=dense, scheduler="threads")
    with pytest.raises(ValueError, match="NaN"):
        DaskStructuredKernel(x, fields=np.where(F > 0.5, np.nan, F), scheduler="threads")
    op = DaskStructuredKernel(x, fields=F, scheduler="threads")
    with pytest.raises(ValueError, match="does not match"):
        op.matmat(np.ones(7))


def test_dask_store_tasks_name_a_bad_chunk(case, tmp_path):
    import shutil

    from jntk_dist.store import StoreCorruptError

    x, F, path, V, ref = case
    bad = tmp_path / "bad.zarr"
    shutil.copytree(path, bad)
    chunk = bad / "fields" / "c" / "0" / "1" / "2"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 1
    chunk.write_bytes(bytes(data))
    op = DaskStructuredKernel(x, store=bad, lam=0.2, n_blocks=3, scheduler="threads")
    with pytest.raises(StoreCorruptError, match=r"chunk fields/c/0/1/2 \(tile \(1, 2\)\)"):
        op.matmat(V)
