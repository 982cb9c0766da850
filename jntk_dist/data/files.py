"""A dataset given as a file: ``.npz`` with arrays ``X`` and ``y``, or a ``.npy`` / ``.csv`` table
whose last column is y. The values are used as they are (no preprocessing)."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["read_xy_file"]


def read_xy_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X float64 (n, d0), y float64 (n,)) of a ``.npz`` holding arrays ``X`` and ``y``, or of a
    ``.npy`` / ``.csv`` (n, d0+1) numeric table with y last (a CSV header line is allowed).
    A missing file is a ``FileNotFoundError``; an unreadable file, a missing array, a table of
    the wrong shape or a non-numeric CSV value an :class:`~jntk_dist.errors.InputError`, each
    naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    try:
        X, y = _read_table(path)
    except (InputError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"dataset file {path} cannot be read: {err}") from None
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise InputError(f"{path}: X of shape {X.shape} and y of shape {y.shape} do not match")
    return X, y


def _read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as z:
            missing = {"X", "y"} - set(z.files)
            if missing:
                raise InputError(f"{path}: missing array(s) {sorted(missing)}; found {z.files}")
            return z["X"], z["y"]
    table = np.load(path) if suffix == ".npy" else _read_csv(path)
    if table.ndim != 2 or table.shape[1] < 2:
        raise InputError(f"{path}: expected an (n, d0+1) table with y last, "
                         f"got shape {table.shape}")
    return table[:, :-1], table[:, -1]


def _read_csv(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if rows:
        try:
            [float(v) for v in rows[0]]
        except ValueError:
            rows = rows[1:]  # header line
    try:
        return np.array([[float(v) for v in r] for r in rows], dtype=np.float64)
    except ValueError as err:
        raise InputError(f"{path}: non-numeric value ({err})") from None
