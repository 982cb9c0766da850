"""Datasets given as files (``jntk_dist.data.read_xy_file``): the three formats read the same
numbers, and each kind of bad file is a message naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jntk_dist.data import read_xy_file


def test_npz_npy_and_csv_read_the_same_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 3)), np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.save(tmp_path / "d.npy", np.column_stack([X, y]))
    with open(tmp_path / "d.csv", "w") as fh:
        fh.write("a,b,c,label\n")  # a header line is skipped
        for row in np.column_stack([X, y]):
            fh.write(",".join(repr(float(v)) for v in row) + "\n\n")  # blank lines too
    for name in ("d.npz", "d.npy", "d.csv"):
        Xr, yr = read_xy_file(tmp_path / name)
        assert Xr.dtype == yr.dtype == np.float64
        np.testing.assert_array_equal(Xr, X)
        np.testing.assert_array_equal(yr, y)


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.csv does not exist"):
        read_xy_file(tmp_path / "absent.csv")
    (tmp_path / "text.csv").write_text("1,2,3\n4,x,6\n")
    with pytest.raises(ValueError, match=r"text.csv: non-numeric value"):
        read_xy_file(tmp_path / "text.csv")
    np.save(tmp_path / "col.npy", np.ones(4))
    with pytest.raises(ValueError, match=r"col.npy: expected an \(n, d0\+1\) table"):
        read_xy_file(tmp_path / "col.npy")
    np.savez(tmp_path / "short.npz", X=np.ones((4, 2)), y=np.ones(3))
    with pytest.raises(ValueError, match=r"short.npz: X of shape \(4, 2\) and y of shape \(3,\)"):
        read_xy_file(tmp_path / "short.npz")
