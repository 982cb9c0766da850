"""The catalogue of datasets: ``load_dataset(name, **options)`` and the loaders that are not
file readers (scikit-learn's digits, the Fibonacci lattice)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .dataset import Dataset, finish_dataset
from .preprocessing import as_value_set, binary_labels, constant_columns, scale_columns
from .images import load_image_set
from .synthetic import fibonacci_sphere
from .uci import load_banknote, load_forest_fires, load_sonar
from ..errors import ConfigError

__all__ = ["DATASET_NAMES", "IMAGE_DATASET_NAMES", "dataset_options", "load_dataset"]

DATASET_NAMES = ("forest_fires", "banknote", "sonar", "digits", "fibonacci")  # shipped or bundled
IMAGE_DATASET_NAMES = ("mnist", "cifar10")  # from the user's files (options.directory)
DIGITS_SCALINGS = ("pixel", "columns")
FIBONACCI_LABELS = ("sign", "ones")


def _load_digits(*, positive: Any = (0, 2, 4, 6, 8), scaling: str = "pixel", deduplicate: bool = False,
                 preprocess: bool = True, near_parallel_threshold: float | None = None) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    if scaling not in DIGITS_SCALINGS:
        raise ConfigError(f"scaling={scaling!r} is not one of {DIGITS_SCALINGS}")
    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    names = list(bunch.feature_names)
    notes = [f"read {X.shape[0]} images of 8×8 pixels (values 0..16) from sklearn.datasets.load_digits"]
    y = binary_labels(labels, positive)
    notes.append(f"binary labels: digits {sorted(as_value_set(positive))} → +1, the others → -1 "
                 "(ds.labels keeps the digits; one_vs_rest_targets(ds.labels) gives 10-class targets)")
    if scaling == "pixel":
        scale = lambda A: scale_columns(A, bounds=(0.0, 16.0))  # noqa: E731
        scale_note = "pixel values mapped from [0, 16] to [-1, 1] (x/8 - 1), all 64 columns kept"
    else:
        const = constant_columns(X) if preprocess else np.array([], dtype=np.int64)
        names = [nm for j, nm in enumerate(names) if j not in set(const.tolist())]
        scale = lambda A: scale_columns(A, drop_constant=True)  # noqa: E731
        scale_note = (f"every column scaled to [-1, 1] by its min/max; {const.size} constant columns "
                      f"dropped ({[bunch.feature_names[j] for j in const]})")
    return finish_dataset("digits", "Handwritten digits (scikit-learn copy of UCI optdigits test set)", X, labels,
                   y, names, np.arange(X.shape[0], dtype=np.int64), notes, preprocess=preprocess,
                   scale=scale, scale_note=scale_note, near_parallel_threshold=near_parallel_threshold,
                   deduplicate=deduplicate)


def _load_fibonacci(*, n: int = 256, d: int = 4, labels: str = "sign",
                    near_parallel_threshold: float | None = None) -> Dataset:
    if labels not in FIBONACCI_LABELS:
        raise ConfigError(f"labels={labels!r} is not one of {FIBONACCI_LABELS}")
    X = fibonacci_sphere(n, d)
    notes = [f"generated {X.shape[0]} points of the generalised Fibonacci lattice on S^{d - 1} "
             f"(d={d}); no column scaling (the points are unit vectors already)"]
    if labels == "sign":
        w = np.arange(1, d + 1, dtype=np.float64)
        w /= np.linalg.norm(w)
        y = np.where(X @ w >= 0.0, 1.0, -1.0)
        notes.append("labels='sign': y = sign(<w, x>) with w = (1, 2, ..., d)/|(1, 2, ..., d)| "
                     "(0 → +1); used only for kernel convergence, the labels carry no meaning")
    else:
        y = np.ones(X.shape[0])
        notes.append("labels='ones': y = +1 for every point")
    int_labels = y.astype(np.int64)
    return finish_dataset("fibonacci", f"synthetic points on S^{d - 1}", X, int_labels, y,
                   [f"x{j + 1}" for j in range(d)], np.arange(X.shape[0], dtype=np.int64), notes,
                   preprocess=None, scale=None, scale_note="", deduplicate=False,
                   near_parallel_threshold=near_parallel_threshold)


def _load_mnist(*, directory: str | None = None, split: str = "train", limit: int | None = None,
                positive: Any = None, near_parallel_threshold: float | None = None) -> Dataset:
    return load_image_set("mnist", directory=directory, split=split, limit=limit,
                          positive=positive, near_parallel_threshold=near_parallel_threshold)


def _load_cifar10(*, directory: str | None = None, split: str = "train", limit: int | None = None,
                  positive: Any = None, near_parallel_threshold: float | None = None) -> Dataset:
    return load_image_set("cifar10", directory=directory, split=split, limit=limit,
                          positive=positive, near_parallel_threshold=near_parallel_threshold)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "forest_fires": load_forest_fires,
    "banknote": load_banknote,
    "sonar": load_sonar,
    "digits": _load_digits,
    "fibonacci": _load_fibonacci,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
}


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: "
                         f"{', '.join(DATASET_NAMES + IMAGE_DATASET_NAMES)}")
    return key


def dataset_options(name: str) -> dict[str, Any]:
    """The options ``load_dataset(name, ...)`` accepts, with their defaults."""
    import inspect

    sig = inspect.signature(_LOADERS[_canonical_name(name)])
    return {p.name: p.default for p in sig.parameters.values()}


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load one of DATASET_NAMES or IMAGE_DATASET_NAMES with the paper's preprocessing; see
    docs/datasets.md.

    Options (defaults in :func:`dataset_options`): every dataset takes ``near_parallel_threshold``
    (None, or t in (0, 1): drop rows with |<x_i, x_j>| > t after normalisation, the paper uses 0.99
    for gelu and 0.995 for erf on banknote). The real datasets take ``preprocess`` (False: raw
    values) and ``deduplicate`` (drop exact duplicate rows); the UCI ones ``path`` (read another copy
    of the file). forest_fires: ``features`` in FOREST_FEATURE_SETS, ``malformed`` 'drop' | 'repair'
    | 'error'. digits: ``positive`` (digits labelled +1, default the even ones), ``scaling`` 'pixel'
    | 'columns'. fibonacci: ``n``, ``d``, ``labels`` 'sign' | 'ones'. mnist, cifar10 (your
    files; nothing is downloaded): ``directory``, ``split`` 'train' | 'test', ``limit`` (first
    rows), ``positive`` (default: even digits / animals).
    """
    key = _canonical_name(name)
    valid = dataset_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for dataset {key!r}; valid options: "
                         f"{', '.join(valid)}")
    return _LOADERS[key](**options)
