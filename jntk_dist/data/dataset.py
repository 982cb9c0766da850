"""The dataset record and the shared tail of every loader (deduplicate, scale, normalise,
remove near-parallel rows, report what was done)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .preprocessing import normalize_rows, remove_near_parallel
from ..errors import InputError

__all__ = ["CITATIONS", "Dataset", "finish_dataset"]

CITATIONS = {
    "forest_fires": "Abid, F. Algerian Forest Fires [Dataset]. UCI Machine Learning Repository. "
                    "https://doi.org/10.24432/C5KW4N (CC BY 4.0)",
    "banknote": "Lohweg, V. (2013). Banknote Authentication [Dataset]. UCI Machine Learning "
                "Repository. https://doi.org/10.24432/C55P57 (CC BY 4.0)",
    "sonar": "Sejnowski, T. and Gorman, R. Connectionist Bench (Sonar, Mines vs. Rocks) [Dataset]. "
             "UCI Machine Learning Repository. https://doi.org/10.24432/C5T01Q (CC BY 4.0)",
    "digits": "Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten Digits "
              "[Dataset], test set as bundled with scikit-learn. UCI Machine Learning Repository "
              "(CC BY 4.0)",
    "fibonacci": "synthetic (generalised spherical Fibonacci lattice, jntk_dist.data.fibonacci_sphere)",
    "mnist": "LeCun, Y., Cortes, C. and Burges, C. J. C. The MNIST database of handwritten digits "
             "(the files the user provides; nothing is downloaded)",
    "cifar10": "Krizhevsky, A. (2009). Learning Multiple Layers of Features from Tiny Images; "
               "CIFAR-10 (the files the user provides; nothing is downloaded)",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset ready for the kernels.

    X: float64 (n, d0) inputs; y: float64 (n,) labels ±1; labels: the original labels (class names
    or integer classes) of the same rows; source_index: int (n,) position of each row among the
    source's data rows (0-based file data-row order, sample index for digits/fibonacci), so that
    dropped rows stay traceable; report: what was read, dropped and applied, in words.
    """

    X: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    name: str
    feature_names: tuple[str, ...]
    report: str
    source_index: np.ndarray

    def __post_init__(self) -> None:
        X, y = self.X, self.y
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype != np.float64:
            raise InputError(f"Dataset {self.name!r}: X must be a float64 array of shape (n, d0), got "
                             f"{getattr(X, 'dtype', type(X))} with shape {getattr(X, 'shape', None)}")
        n = X.shape[0]
        if not isinstance(y, np.ndarray) or y.shape != (n,) or y.dtype != np.float64:
            raise InputError(f"Dataset {self.name!r}: y must be float64 of shape ({n},), got "
                             f"{getattr(y, 'dtype', type(y))} with shape {getattr(y, 'shape', None)}")
        if not np.isin(y, (-1.0, 1.0)).all():
            raise InputError(f"Dataset {self.name!r}: y must hold labels ±1, found values "
                             f"{np.unique(y[~np.isin(y, (-1.0, 1.0))])[:5].tolist()}")
        if np.shape(self.labels) != (n,) or np.shape(self.source_index) != (n,):
            raise InputError(f"Dataset {self.name!r}: labels and source_index must have shape ({n},), got "
                             f"{np.shape(self.labels)} and {np.shape(self.source_index)}")
        if len(self.feature_names) != X.shape[1]:
            raise InputError(f"Dataset {self.name!r}: {len(self.feature_names)} feature names for "
                             f"d0={X.shape[1]} columns")
        object.__setattr__(self, "feature_names", tuple(self.feature_names))

    @property
    def n(self) -> int:
        """Number of points."""
        return int(self.X.shape[0])

    @property
    def d0(self) -> int:
        """Input dimension."""
        return int(self.X.shape[1])

    def take(self, indices: Sequence[int] | np.ndarray, note: str, name: str | None = None) -> Dataset:
        """The rows ``indices`` (in that order) as a new Dataset; ``note`` is appended to the report."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < -self.n or idx.max() >= self.n)):
            raise InputError(f"Dataset {self.name!r}: row indices must be a 1-D array within [0, {self.n}), "
                             f"got shape {idx.shape}" + (f", range {idx.min()}..{idx.max()}" if idx.size else ""))
        return Dataset(X=self.X[idx].copy(), y=self.y[idx].copy(), labels=self.labels[idx].copy(),
                       name=self.name if name is None else name, feature_names=self.feature_names,
                       report=f"{self.report}\n{note}", source_index=self.source_index[idx].copy())

    def __repr__(self) -> str:
        pos = int((self.y > 0).sum())
        return (f"Dataset(name={self.name!r}, n={self.n}, d0={self.d0}, "
                f"y: {pos} × +1 / {self.n - pos} × -1)")



def _count_line(y: np.ndarray, labels: np.ndarray) -> str:
    parts = []
    for c in np.unique(labels):
        mask = labels == c
        parts.append(f"{c!s} → {'+1' if y[mask][0] > 0 else '-1'} ({int(mask.sum())})")
    return "labels: " + ", ".join(parts)


def _deduplicate(X: np.ndarray, notes: list[str]) -> np.ndarray:
    """Indices of the first occurrence of each distinct row, in order."""
    _, first = np.unique(X, axis=0, return_index=True)
    keep = np.sort(first)
    notes.append(f"deduplicate=True: dropped {X.shape[0] - keep.size} exact duplicate rows "
                 f"(kept the first occurrence of each)")
    return keep


def finish_dataset(name: str, title: str, X: np.ndarray, labels: np.ndarray, y: np.ndarray,
            feature_names: Sequence[str], source_index: np.ndarray, notes: list[str], *,
            preprocess: bool | None, scale: Callable[[np.ndarray], np.ndarray] | None, scale_note: str,
            near_parallel_threshold: float | None, deduplicate: bool = False) -> Dataset:
    """Shared tail of every loader: deduplicate, scale, normalise, remove near-parallel rows.
    ``preprocess=None``: the data needs no preprocessing (already unit rows) and none is reported."""
    if deduplicate:
        keep = _deduplicate(X, notes)
        X, labels, y, source_index = X[keep], labels[keep], y[keep], source_index[keep]
    if preprocess:
        if scale is not None:
            X = scale(X)
        X = normalize_rows(X)
        notes.append(f"preprocessing: {scale_note}; then every row scaled to unit norm")
    elif preprocess is not None:
        notes.append("preprocessing: none (preprocess=False), raw feature values")
    if near_parallel_threshold is not None:
        n_before = X.shape[0]
        X, _, kept = remove_near_parallel(X, None, near_parallel_threshold)
        labels, y, source_index = labels[kept], y[kept], source_index[kept]
        notes.append(f"near-parallel removal (threshold {near_parallel_threshold}): dropped "
                     f"{n_before - kept.size} of {n_before} rows with |cos(x_i, x_j)| > "
                     f"{near_parallel_threshold} to an earlier kept row")
    notes.append(_count_line(y, labels))
    notes.append(f"result: {X.shape[0]} rows × {X.shape[1]} features")
    report = "\n".join([f"{name}: {title}", f"source: {CITATIONS[name]}"] + notes)
    return Dataset(X=np.ascontiguousarray(X, dtype=np.float64), y=np.asarray(y, dtype=np.float64),
                   labels=labels, name=name, feature_names=tuple(feature_names), report=report,
                   source_index=np.asarray(source_index, dtype=np.int64))
