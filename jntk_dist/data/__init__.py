"""Datasets of the paper and its preprocessing: the first step of the data path.

``load_dataset(name, **options)`` returns a :class:`Dataset` whose ``X`` has the paper's
preprocessing (every column scaled to [-1, 1] by its min/max, then every row to unit norm) and whose
``y`` holds ±1 labels. The preprocessing steps are public functions that compose:

    X = normalize_rows(scale_columns(X_raw))
    X, y, kept = remove_near_parallel(X, y, threshold=0.99)

Datasets: ``forest_fires``, ``banknote`` and ``sonar`` (UCI files shipped in
``jntk_dist/datasets/``, CC BY 4.0; :mod:`.uci`), ``digits`` (scikit-learn's bundled copy, no
download) and ``fibonacci`` (a deterministic near-uniform point set on the sphere S^{d-1};
:mod:`.synthetic`). MNIST and CIFAR-10 from files the user has: :mod:`.images`. A dataset given
as an ``.npz`` / ``.npy`` / ``.csv`` file: :func:`read_xy_file` (:mod:`.files`). Train / test
splits: :mod:`.splits`.
docs/datasets.md explains every choice, including why the forest-fire set has 243 rows where the
paper reports 224.
"""

from .catalog import DATASET_NAMES, IMAGE_DATASET_NAMES, dataset_options, load_dataset
from .dataset import CITATIONS, Dataset
from .files import read_xy_file
from .preprocessing import (binary_labels, constant_columns, normalize_rows, one_vs_rest_targets,
                            remove_near_parallel, near_parallel_pairs, scale_columns)
from .splits import split_xy, train_test_split
from .synthetic import fibonacci_sphere

__all__ = [
    "CITATIONS",
    "DATASET_NAMES",
    "IMAGE_DATASET_NAMES",
    "Dataset",
    "binary_labels",
    "constant_columns",
    "dataset_options",
    "fibonacci_sphere",
    "load_dataset",
    "normalize_rows",
    "one_vs_rest_targets",
    "read_xy_file",
    "remove_near_parallel",
    "near_parallel_pairs",
    "scale_columns",
    "split_xy", "train_test_split",
]
