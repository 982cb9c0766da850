"""The paper's preprocessing as composable functions, and labels (splits: :mod:`.splits`).

    X = normalize_rows(scale_columns(X_raw))
    X, y, kept = remove_near_parallel(X, y, threshold=0.99)
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import torch

from ..kernels import validate_inputs
from ..errors import InputError

__all__ = ["binary_labels", "constant_columns", "normalize_rows", "one_vs_rest_targets",
           "remove_near_parallel", "near_parallel_pairs", "scale_columns", "as_value_set"]


def _as_matrix(X: Any, what: str = "X") -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise InputError(f"{what} must be a 2-D array of shape (n, d0), got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise InputError(f"{what} is empty: shape {A.shape}")
    bad = ~np.isfinite(A)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise InputError(f"{what} has {rows.size} row(s) with NaN/inf values, e.g. row {rows[0]} "
                         f"(column {int(np.flatnonzero(bad[rows[0]])[0])}); rows {rows[:10].tolist()}")
    return A


def _column_label(j: int, names: Sequence[str] | None) -> str:
    return f"column {j} ({names[j]!r})" if names is not None else f"column {j}"


def constant_columns(X: Any) -> np.ndarray:
    """Indices of the columns of X whose values are all equal."""
    A = _as_matrix(X)
    return np.flatnonzero(A.min(axis=0) == A.max(axis=0))


def scale_columns(X: Any, *, drop_constant: bool = False, bounds: tuple[float, float] | None = None,
                  feature_names: Sequence[str] | None = None) -> np.ndarray:
    """Scale every column affinely to [-1, 1]: its minimum to -1 and its maximum to +1.

    A constant column cannot be scaled: it raises a ValueError naming the column, unless
    ``drop_constant=True``, which drops it (find which with :func:`constant_columns`). ``bounds=(lo,
    hi)`` scales every column by the fixed range [lo, hi] instead of its own min/max (e.g. digits'
    pixel range (0, 16)); a value outside it is an error. ``feature_names`` only improve messages.
    """
    A = _as_matrix(X)
    names = None if feature_names is None else list(feature_names)
    if names is not None and len(names) != A.shape[1]:
        raise InputError(f"{len(names)} feature names for {A.shape[1]} columns")
    if bounds is not None:
        lo_b, hi_b = (float(b) for b in bounds)
        if not hi_b > lo_b:
            raise InputError(f"bounds must be (lo, hi) with lo < hi, got {bounds!r}")
        outside = (A < lo_b) | (A > hi_b)
        if outside.any():
            i, j = (int(v) for v in np.argwhere(outside)[0])
            raise InputError(f"value {A[i, j]} at row {i}, {_column_label(j, names)} lies outside "
                             f"bounds {bounds!r}")
        return 2.0 * (A - lo_b) / (hi_b - lo_b) - 1.0
    lo, hi = A.min(axis=0), A.max(axis=0)
    const = lo == hi
    if const.any():
        if not drop_constant:
            j = int(np.flatnonzero(const)[0])
            raise InputError(
                f"{_column_label(j, names)} is constant (every value {lo[j].item()!r}), so min/max scaling to "
                f"[-1, 1] is undefined; constant columns: {np.flatnonzero(const).tolist()}. Pass "
                "drop_constant=True to drop them.")
        A, lo, hi = A[:, ~const], lo[~const], hi[~const]
        if A.shape[1] == 0:
            raise InputError("every column is constant: nothing is left after dropping them")
    # (x - lo) / (hi - lo) is exactly 0 at the minimum and exactly 1 at the maximum.
    return 2.0 * (A - lo) / (hi - lo) - 1.0


def normalize_rows(X: Any) -> np.ndarray:
    """Scale every row to unit Euclidean norm; a zero row (or NaN/inf) is a ValueError naming it."""
    A = _as_matrix(X)
    validate_inputs(torch.from_numpy(A if A.flags.writeable else A.copy()), name="X")
    return A / np.linalg.norm(A, axis=1, keepdims=True)


def remove_near_parallel(X: Any, y: Any | None, threshold: float, *, block_size: int = 1024
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Greedily drop rows nearly parallel (or antiparallel) to an earlier kept row.

    Rows are visited in order; row i is kept unless |cos(x_i, x_k)| > threshold for some already
    kept row k (on unit rows cos is the inner product), so the first row of each near-parallel group
    survives. Exact duplicates are always removed (cos = 1). Returns (X[kept], y[kept], kept) with
    ``kept`` the sorted row indices; y may be None (then None is returned) or have any trailing shape.
    The result has no pair above the threshold, so applying the function again keeps every row.
    """
    A = _as_matrix(X)
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise InputError(f"near-parallel threshold must lie in (0, 1), got {threshold!r}")
    Y = None if y is None else np.asarray(y)
    if Y is not None and Y.shape[:1] != A.shape[:1]:
        raise InputError(f"y has {Y.shape[0] if Y.ndim else 0} rows but X has {A.shape[0]}")
    U = normalize_rows(A)
    n = U.shape[0]
    kept: list[int] = []
    for start in range(0, n, block_size):
        block = U[start:start + block_size]
        candidates = np.arange(block.shape[0])
        if kept:
            clash = (np.abs(block @ U[kept].T) > t).any(axis=1)
            candidates = candidates[~clash]
        within = np.abs(block[candidates] @ block[candidates].T) > t
        chosen: list[int] = []
        for j in range(candidates.size):
            if not chosen or not within[j, chosen].any():
                chosen.append(j)
        kept.extend((start + candidates[chosen]).tolist())
    idx = np.asarray(kept, dtype=np.int64)
    return A[idx], (None if Y is None else Y[idx]), idx


def near_parallel_pairs(X: Any, threshold: float, *, block_size: int = 2048,
                        max_work: float = 2e10, examples: int = 5
                        ) -> tuple[int, int | None, list[tuple[int, int]]]:
    """Pairs of rows that make a kernel Gram singular (or nearly) by construction:
    (exact duplicate pairs, pairs with |cos(x_i, x_j)| > ``threshold`` -- duplicates included --
    or None when n²·d0 exceeds ``max_work`` (the blockwise check would take minutes), up to
    ``examples`` such pairs (i < j)). Nothing is removed (:func:`remove_near_parallel` does)."""
    A = _as_matrix(X)
    n = A.shape[0]
    _, counts = np.unique(A, axis=0, return_counts=True)
    duplicates = int((counts * (counts - 1) // 2).sum())
    if float(n) * n * A.shape[1] > max_work:
        return duplicates, None, []
    U = normalize_rows(A)
    total, found = 0, []
    for start in range(0, n, block_size):
        close = np.abs(U[start:start + block_size] @ U[start:].T) > threshold
        rows, cols = np.nonzero(np.triu(close, k=1))  # j > i only
        total += rows.size
        found.extend((start + int(r), start + int(c)) for r, c in zip(rows[:examples],
                                                                     cols[:examples]))
    return duplicates, total, sorted(found)[:examples]


def as_value_set(positive: Any) -> list[Any]:
    if isinstance(positive, (str, bytes)) or not isinstance(positive, Iterable):
        return [positive]
    return list(positive)


def binary_labels(labels: Any, positive: Any) -> np.ndarray:
    """Labels as float64 ±1: +1 where the label equals ``positive`` (a value or a collection of
    values), -1 elsewhere. A ``positive`` that matches no label is an error listing the labels seen."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {lab.shape}")
    values = as_value_set(positive)
    pos = np.isin(lab, values)
    if not pos.any():
        raise InputError(f"positive={positive!r} matches no label; labels present: "
                         f"{np.unique(lab)[:20].tolist()}")
    return np.where(pos, 1.0, -1.0)


def one_vs_rest_targets(labels: Any, low: float = -0.1, high: float = 0.9,
                        classes: Sequence[Hashable] | None = None) -> np.ndarray:
    """Multi-class regression targets in the style of Arora et al. (2019): row i is ``high`` in the
    column of its class and ``low`` elsewhere; shape (n, n_classes). Columns follow ``classes``
    (default: the sorted distinct labels); a label outside ``classes`` is an error."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {lab.shape}")
    cls = np.unique(lab) if classes is None else np.asarray(list(classes))
    if cls.size != np.unique(cls).size:
        raise InputError(f"classes must be distinct, got {cls.tolist()}")
    hit = lab[:, None] == cls[None, :]
    missing = ~hit.any(axis=1)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise InputError(f"label {lab[i].item()!r} of row {i} is not among classes {cls.tolist()}")
    return np.where(hit, float(high), float(low))
