"""Train / test splits of a :class:`Dataset` (stratified by label, deterministic in the seed)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .dataset import Dataset

__all__ = ["split_xy", "train_test_split"]


def train_test_split(ds: Dataset, test_fraction: float = 0.25, seed: int = 0,
                     stratify: bool = True) -> tuple[Dataset, Dataset]:
    """Deterministic split of ``ds`` into (train, test); rows keep their order within each part.

    With ``stratify`` each original label (``ds.labels``) contributes round(test_fraction * count)
    rows to the test part (at least one row of each class stays in train), chosen by
    ``numpy.random.default_rng(seed)``. The split acts on the preprocessed data: scaling used the
    whole dataset, as in the paper.
    """
    f = float(test_fraction)
    if not 0.0 < f < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    if stratify:
        groups = [np.flatnonzero(ds.labels == c) for c in np.unique(ds.labels)]
    else:
        groups = [np.arange(ds.n)]
    test_parts = []
    for g in groups:
        k = min(int(round(f * g.size)), g.size - 1)
        test_parts.append(rng.permutation(g)[:k])
    test = np.sort(np.concatenate(test_parts))
    train = np.setdiff1d(np.arange(ds.n), test)
    if test.size == 0 or train.size == 0:
        raise InputError(f"test_fraction={test_fraction} splits {ds.n} rows into {train.size} train and "
                         f"{test.size} test rows: both parts must be non-empty")
    how = "stratified by label" if stratify else "not stratified"
    note = (f"split: test_fraction={f}, seed={seed}, {how}: {train.size} train / {test.size} test rows")
    return (ds.take(train, note + " — this is the train part", name=f"{ds.name}[train]"),
            ds.take(test, note + " — this is the test part", name=f"{ds.name}[test]"))


def split_xy(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test): :func:`train_test_split` stratified by the labels y
    themselves (the split of a drift run, Fig. 3)."""
    ds = Dataset(X=X, y=y, labels=np.asarray(y).copy(), name="data",
                 feature_names=tuple(f"x{i}" for i in range(X.shape[1])), report="",
                 source_index=np.arange(X.shape[0]))
    train, test = train_test_split(ds, test_fraction, seed=seed)
    return train.X, train.y, test.X, test.y
