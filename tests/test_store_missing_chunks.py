"""A store that says complete but lost a chunk, read by every reader a user has.

What each reader does (docs/store.md, "A damaged store"):
  * ``open_gram(p).read`` / ``.dask_array()`` / ``.to_xarray()`` raise StoreCorruptError naming the
    chunk;
  * ``xarray.open_zarr(p)`` cannot be made to raise (Zarr reads a missing chunk as the array's
    fill value): the Gram's fill value is NaN, and the writer refuses a tile that is not finite,
    so a NaN in a Gram read is always a missing chunk, never data -- the test checks both halves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from jntk_dist import kernels
from jntk_dist.store import StoreCorruptError, StoreError, TileWriter, create_store, open_gram
from jntk_dist.store.layout import StoreLayout
from jntk_dist.store.tiling import upper_tiles

from conftest import sphere

DEPTH, ACT, P = 2, "erf", 4


def _complete_store(path: Path, n: int = 9, d0: int = 2) -> StoreLayout:
    X = sphere(n, d0, seed=3)
    layout = StoreLayout(mode="dense", n_points=n, d0=d0, tile_points=P, dtype="float64")
    create_store(path, X, np.ones(n), layout, {"kernel": "jntk", "depth": DEPTH,
                                               "activation": ACT, "lam": 0.5})
    writer = TileWriter(path)
    for i, j in upper_tiles(layout.n_tiles):
        xi, xj = (torch.from_numpy(writer.points(t)) for t in (i, j))
        writer.write(i, j, kernels.fields(xi, xj, depth=DEPTH, activation=ACT, kind="jntk"),
                     xi, xj)
    return layout


def _chunk_file(path: Path, i: int, j: int) -> Path:
    chunk = path / "gram" / "c" / str(i) / str(j)
    assert chunk.is_file(), sorted(p.relative_to(path) for p in (path / "gram").rglob("*"))
    return chunk


def test_a_deleted_chunk_is_named_by_the_package_and_nan_in_xarray(tmp_path: Path) -> None:
    store = tmp_path / "g.zarr"
    layout = _complete_store(store)
    assert open_gram(store).is_complete
    _chunk_file(store, 0, 1).unlink()

    with pytest.raises(StoreCorruptError, match=r"gram/c/0/1|chunk \(0, 1\)"):
        open_gram(store).read()
    with pytest.raises(StoreCorruptError, match=r"gram/c/0/1|chunk \(0, 1\)"):
        open_gram(store).to_xarray().gram.values
    with pytest.raises(StoreCorruptError, match=r"gram/c/0/1|chunk \(0, 1\)"):
        open_gram(store).dask_array().compute()

    gram = xr.open_zarr(store, consolidated=False)["gram"].values
    rows = P * layout.block
    lost = np.zeros(gram.shape, bool)
    lost[:rows, rows:2 * rows] = True
    assert np.isnan(gram[lost]).all()        # the lost chunk reads as NaN, never as a number
    assert np.isfinite(gram[~lost]).all()    # and nothing else does


def test_the_writer_refuses_a_tile_that_is_not_finite(tmp_path: Path) -> None:
    store = tmp_path / "g.zarr"
    X = sphere(6, 2, seed=1)
    layout = StoreLayout(mode="dense", n_points=6, d0=2, tile_points=P, dtype="float64")
    create_store(store, X, np.ones(6), layout, {"kernel": "jntk", "depth": DEPTH,
                                                "activation": ACT, "lam": 0.5})
    writer = TileWriter(store)
    xi = torch.from_numpy(writer.points(0))
    fields = kernels.fields(xi, xi, depth=DEPTH, activation=ACT, kind="jntk")
    broken = type(fields)(**{**vars(fields), "k": fields.k * float("nan")})
    with pytest.raises(StoreError, match=r"tile \(0, 0\).*not finite"):
        writer.write(0, 0, broken, xi, xi)
    assert not open_gram(store).done_mask()[0, 0]  # not marked done
