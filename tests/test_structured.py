"""Structured (matrix-free) operator vs the dense Gram of kernels.expand_blocks + to_gram."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import zarr

from conftest import sphere as _sphere
from jntk_dist import kernels
from jntk_dist.data.images import image_dataset, load_cifar10, load_mnist, read_idx
from jntk_dist.operators import structured_operator, structured_predict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dense(x1, x2, *, depth, activation, kind, lam):
    f = kernels.fields(x1, x2, depth=depth, activation=activation, kind=kind)
    t2 = None if x2 is None else torch.as_tensor(x2)
    return kernels.to_gram(kernels.expand_blocks(f, torch.as_tensor(x1), t2, lam=lam)).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = [  # n1, n2 (None: square X–X), d0, depth, activation, kind, lam, mode, tile_rows
    (9, None, 5, 3, "gelu", "jntk", None, "memory", None),
    (8, None, 11, 2, "erf", "jntk", 0.01, "recompute", 3),
    (7, None, 4, 4, "gelu", "nngp", 0.5, "memory", 2),
    (6, 10, 6, 1, "gelu", "jntk", 0.2, "recompute", 4),
    (12, 5, 3, 2, "erf", "nngp", None, "memory", 5),
]


@pytest.mark.parametrize("n1,n2,d0,depth,act,kind,lam,mode,tile", CASES)
def test_matvec_and_matmat_equal_dense(n1, n2, d0, depth, act, kind, lam, mode, tile):
    x1 = _sphere(n1, d0, seed=n1 + d0)
    x2 = None if n2 is None else _sphere(n2, d0, seed=100 + n2)
    dense = _dense(x1, x2, depth=depth, activation=act, kind=kind, lam=lam)
    op = structured_operator(x1, x2, depth=depth, activation=act, kind=kind, lam=lam, mode=mode,
                             tile_rows=tile)
    assert op.shape == dense.shape
    rng = np.random.default_rng(0)
    v = rng.standard_normal(dense.shape[1])
    V = rng.standard_normal((dense.shape[1], 3))
    assert _rel(op @ v, dense @ v) <= 1e-12
    assert _rel(op.matmat(V), dense @ V) <= 1e-12
    lin = op.aslinearoperator()
    assert _rel(lin.matvec(v), dense @ v) <= 1e-12
    # torch in -> torch out
    out = op.matmat(torch.as_tensor(V))
    assert isinstance(out, torch.Tensor) and _rel(out.numpy(), dense @ V) <= 1e-12
    if n2 is None:
        np.testing.assert_allclose(op.diagonal().numpy(), np.diag(dense), rtol=1e-12, atol=1e-14)


def test_non_unit_inputs_and_zero_lambda():
    x = _sphere(6, 4, 3) * np.linspace(0.5, 2.0, 6)[:, None]  # norms ≠ 1 exercise κ_a, κ_c terms
    for lam in (0.0, 0.3):
        dense = _dense(x, None, depth=2, activation="gelu", kind="jntk", lam=lam)
        op = structured_operator(x, depth=2, activation="gelu", lam=lam)
        v = np.random.default_rng(1).standard_normal(dense.shape[0])
        assert _rel(op @ v, dense @ v) <= 1e-12


def test_field_sources_zarr_and_accessor(tmp_path):
    x = _sphere(10, 5, 7)
    f = kernels.fields(x, depth=2, activation="erf")
    dense = _dense(x, None, depth=2, activation="erf", kind="jntk", lam=0.1)
    v = np.random.default_rng(2).standard_normal(dense.shape[0])
    # real Zarr array on disk, read one row tile per product
    arr = zarr.create_array(str(tmp_path / "fields.zarr"), shape=(8, 10, 10), chunks=(8, 4, 10),
                            dtype="float64")
    arr[:] = f.stack().numpy()
    op_z = structured_operator(x, fields=zarr.open_array(str(tmp_path / "fields.zarr")),
                               lam=0.1, tile_rows=4)
    assert op_z.description["mode"] == "array"
    assert _rel(op_z @ v, dense @ v) <= 1e-12

    class Reader:
        calls = 0

        def fields_tile(self, rows, cols):
            Reader.calls += 1
            return f.stack().numpy()[:, rows, cols]

    op_a = structured_operator(x, fields=Reader(), lam=0.1, tile_rows=3)
    assert _rel(op_a @ v, dense @ v) <= 1e-12
    assert Reader.calls == 4  # ceil(10 / 3) row tiles, never the whole matrix at once
    op_m = structured_operator(x, fields=f, lam=0.1)
    assert _rel(op_m @ v, dense @ v) <= 1e-12
    np.testing.assert_allclose(op_a.diagonal().numpy(), np.diag(dense), rtol=1e-12, atol=1e-14)


def test_bad_inputs_are_named():
    x = _sphere(5, 3, 0)
    op = structured_operator(x, depth=1, activation="erf")
    with pytest.raises(ValueError, match="does not match operator shape"):
        op @ np.ones(5 * 3)
    bad = x.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        structured_operator(bad, depth=1)
    with pytest.raises(ValueError, match="d0=4"):
        structured_operator(x, _sphere(4, 4, 1), depth=1)
    with pytest.raises(ValueError, match="shape"):
        structured_operator(x, fields=np.zeros((7, 5, 5)))
    with pytest.raises(ValueError, match="relu|smooth|Lipschitz|Dirac"):
        structured_operator(x, depth=1, activation="relu")
    with pytest.raises(ValueError, match="λ"):
        structured_operator(x, depth=1, lam=-1.0)


def test_predict_matches_dense_cross_kernel():
    xtr, xte = _sphere(8, 4, 11), _sphere(5, 4, 12)
    alpha = np.random.default_rng(3).standard_normal(8 * 5)
    op = structured_operator(xtr, depth=3, activation="gelu", lam=0.05)
    cross = _dense(xte, xtr, depth=3, activation="gelu", kind="jntk", lam=0.05)
    np.testing.assert_allclose(structured_predict(op, alpha, xte), (cross @ alpha)[::5],
                               rtol=1e-12, atol=1e-13)
    full = structured_predict(op, alpha, xte, with_jacobian=True)
    np.testing.assert_allclose(full.reshape(-1), cross @ alpha, rtol=1e-11, atol=1e-13)


def test_ray_row_blocks_equal_dense():
    ray = pytest.importorskip("ray")
    from jntk_dist.operators import RayStructuredKernel

    x = _sphere(9, 4, 5)
    dense = _dense(x, None, depth=2, activation="erf", kind="jntk", lam=0.2)
    V = np.random.default_rng(4).standard_normal((dense.shape[0], 2))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        op = RayStructuredKernel(x, depth=2, activation="erf", lam=0.2, n_workers=2,
                                 mode="recompute")
        try:
            assert len(op.row_blocks) == 2
            assert _rel(op.matmat(V), dense @ V) <= 1e-12
            assert _rel(op.aslinearoperator().matvec(V[:, 0]), dense @ V[:, 0]) <= 1e-12
        finally:
            op.shutdown()
    finally:
        if started:
            ray.shutdown()


# ---- image loaders on real standard-format files written here ---------------------------


def _write_idx(path, array: np.ndarray, type_code: int, compress: bool) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim,
                                                                *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_mnist_idx_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    labels[:2] = [0, 1]
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x08, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x08, compress=False)
    X, lab = load_mnist(tmp_path, "train")
    assert X.shape == (7, 784) and X.dtype == np.float64
    np.testing.assert_array_equal(X, images.reshape(7, -1))
    np.testing.assert_array_equal(lab, labels)
    assert load_mnist(tmp_path, "train", limit=3)[0].shape == (3, 784)
    Xp, y = image_dataset(X, lab)
    np.testing.assert_allclose(np.linalg.norm(Xp, axis=1), 1.0)
    np.testing.assert_array_equal(y, np.where(lab % 2 == 0, 1.0, -1.0))
    floats = rng.standard_normal((3, 2)).astype(np.float32)
    _write_idx(tmp_path / "f.idx", floats, 0x0D, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    raw = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "cut")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(tmp_path, "test")


def test_cifar10_python_batch_loader(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5]
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"testing batch 1 of 1"},
                    fh)
    X, lab = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(X, data)
    np.testing.assert_array_equal(lab, labels)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path, "train")
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": data[:, :100], b"labels": labels}, fh)
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(tmp_path, "test")


def test_operator_over_a_real_fields_store(tmp_path):
    """The fields array of a Zarr Gram store (written tile by tile) feeds the operator directly."""
    from jntk_dist.store import StoreLayout, TileWriter, create_store, open_gram

    x = _sphere(10, 4, 13)
    layout = StoreLayout(mode="fields", n_points=10, d0=4, tile_points=4, dtype="float64")
    path = tmp_path / "fields_store.zarr"
    create_store(path, x, np.ones(10), layout, attrs={"kind": "jntk", "depth": 2,
                                                       "activation": "erf", "lam": None})
    writer = TileWriter(path)
    T = layout.n_tiles
    op_of = lambda: structured_operator(open_gram(path).X, fields=open_gram(path).data,  # noqa
                                        lam=0.2, tile_rows=4)
    for i in range(T):
        for j in range(i, T):
            if (i, j) == (0, T - 1):
                continue  # leave one tile (and its mirror) unwritten for now
            xi, xj = torch.as_tensor(writer.points(i)), torch.as_tensor(writer.points(j))
            writer.write(i, j, kernels.fields(xi, xj, depth=2, activation="erf"), xi, xj)
    v = np.random.default_rng(6).standard_normal(10 * 5)
    with pytest.raises(ValueError, match="incomplete store"):
        op_of() @ v
    xi, xj = torch.as_tensor(writer.points(0)), torch.as_tensor(writer.points(T - 1))
    writer.write(0, T - 1, kernels.fields(xi, xj, depth=2, activation="erf"), xi, xj)
    dense = _dense(x, None, depth=2, activation="erf", kind="jntk", lam=0.2)
    assert _rel(op_of() @ v, dense @ v) <= 1e-12
