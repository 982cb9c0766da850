"""Datasets of the paper and its preprocessing: the first step of the data path.

``load_dataset(name, **options)`` returns a :class:`Dataset` whose ``X`` has the paper's
preprocessing (every column scaled to [-1, 1] by its min/max, then every row to unit norm) and whose
``y`` holds ±1 labels. The preprocessing steps are public functions that compose:

    X = normalize_rows(scale_columns(X_raw))
    X, y, kept = remove_near_parallel(X, y, threshold=0.99)

Datasets: ``forest_fires``, ``banknote`` and ``sonar`` (UCI files shipped in
``jntk_dist/datasets/``, CC BY 4.0), ``digits`` (scikit-learn's bundled copy, no download) and
``fibonacci`` (a deterministic near-uniform point set on the sphere S^{d-1}). docs/datasets.md
explains every choice, including why the forest-fire set has 243 rows where the paper reports 224.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np
import torch
from scipy.special import betaincinv

from .kernels import validate_inputs

__all__ = [
    "DATASET_NAMES",
    "CITATIONS",
    "Dataset",
    "binary_labels",
    "constant_columns",
    "dataset_options",
    "fibonacci_sphere",
    "load_dataset",
    "normalize_rows",
    "one_vs_rest_targets",
    "remove_near_parallel",
    "scale_columns",
    "train_test_split",
]

DATASET_NAMES = ("forest_fires", "banknote", "sonar", "digits", "fibonacci")

FOREST_FIRES_FILE = "Algerian_forest_fires_dataset_UPDATE.csv"
BANKNOTE_FILE = "data_banknote_authentication.txt"
SONAR_FILE = "sonar.all-data"

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
}

FOREST_WEATHER_COLUMNS = ("Temperature", "RH", "Ws", "Rain", "FFMC", "DMC", "DC", "ISI", "BUI", "FWI")
FOREST_HEADER = ("day", "month", "year") + FOREST_WEATHER_COLUMNS + ("Classes",)
FOREST_REGIONS = ("Bejaia", "Sidi-Bel Abbes")  # coded 0 and 1, in file order
FOREST_FEATURE_SETS = ("weather+region", "weather+month", "weather", "weather+month+region")
FOREST_MALFORMED = ("drop", "repair", "error")
BANKNOTE_COLUMNS = ("variance", "skewness", "curtosis", "entropy")
DIGITS_SCALINGS = ("pixel", "columns")
FIBONACCI_LABELS = ("sign", "ones")


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------

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
            raise ValueError(f"Dataset {self.name!r}: X must be a float64 array of shape (n, d0), got "
                             f"{getattr(X, 'dtype', type(X))} with shape {getattr(X, 'shape', None)}")
        n = X.shape[0]
        if not isinstance(y, np.ndarray) or y.shape != (n,) or y.dtype != np.float64:
            raise ValueError(f"Dataset {self.name!r}: y must be float64 of shape ({n},), got "
                             f"{getattr(y, 'dtype', type(y))} with shape {getattr(y, 'shape', None)}")
        if not np.isin(y, (-1.0, 1.0)).all():
            raise ValueError(f"Dataset {self.name!r}: y must hold labels ±1, found values "
                             f"{np.unique(y[~np.isin(y, (-1.0, 1.0))])[:5].tolist()}")
        if np.shape(self.labels) != (n,) or np.shape(self.source_index) != (n,):
            raise ValueError(f"Dataset {self.name!r}: labels and source_index must have shape ({n},), got "
                             f"{np.shape(self.labels)} and {np.shape(self.source_index)}")
        if len(self.feature_names) != X.shape[1]:
            raise ValueError(f"Dataset {self.name!r}: {len(self.feature_names)} feature names for "
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
            raise ValueError(f"Dataset {self.name!r}: row indices must be a 1-D array within [0, {self.n}), "
                             f"got shape {idx.shape}" + (f", range {idx.min()}..{idx.max()}" if idx.size else ""))
        return Dataset(X=self.X[idx].copy(), y=self.y[idx].copy(), labels=self.labels[idx].copy(),
                       name=self.name if name is None else name, feature_names=self.feature_names,
                       report=f"{self.report}\n{note}", source_index=self.source_index[idx].copy())

    def __repr__(self) -> str:
        pos = int((self.y > 0).sum())
        return (f"Dataset(name={self.name!r}, n={self.n}, d0={self.d0}, "
                f"y: {pos} × +1 / {self.n - pos} × -1)")


# ----------------------------------------------------------------------------------------------
# Preprocessing (the paper's, as composable functions)
# ----------------------------------------------------------------------------------------------

def _as_matrix(X: Any, what: str = "X") -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of shape (n, d0), got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {A.shape}")
    bad = ~np.isfinite(A)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"{what} has {rows.size} row(s) with NaN/inf values, e.g. row {rows[0]} "
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
        raise ValueError(f"{len(names)} feature names for {A.shape[1]} columns")
    if bounds is not None:
        lo_b, hi_b = (float(b) for b in bounds)
        if not hi_b > lo_b:
            raise ValueError(f"bounds must be (lo, hi) with lo < hi, got {bounds!r}")
        outside = (A < lo_b) | (A > hi_b)
        if outside.any():
            i, j = (int(v) for v in np.argwhere(outside)[0])
            raise ValueError(f"value {A[i, j]} at row {i}, {_column_label(j, names)} lies outside "
                             f"bounds {bounds!r}")
        return 2.0 * (A - lo_b) / (hi_b - lo_b) - 1.0
    lo, hi = A.min(axis=0), A.max(axis=0)
    const = lo == hi
    if const.any():
        if not drop_constant:
            j = int(np.flatnonzero(const)[0])
            raise ValueError(
                f"{_column_label(j, names)} is constant (every value {lo[j].item()!r}), so min/max scaling to "
                f"[-1, 1] is undefined; constant columns: {np.flatnonzero(const).tolist()}. Pass "
                "drop_constant=True to drop them.")
        A, lo, hi = A[:, ~const], lo[~const], hi[~const]
        if A.shape[1] == 0:
            raise ValueError("every column is constant: nothing is left after dropping them")
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
        raise ValueError(f"near-parallel threshold must lie in (0, 1), got {threshold!r}")
    Y = None if y is None else np.asarray(y)
    if Y is not None and Y.shape[:1] != A.shape[:1]:
        raise ValueError(f"y has {Y.shape[0] if Y.ndim else 0} rows but X has {A.shape[0]}")
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


def _as_value_set(positive: Any) -> list[Any]:
    if isinstance(positive, (str, bytes)) or not isinstance(positive, Iterable):
        return [positive]
    return list(positive)


def binary_labels(labels: Any, positive: Any) -> np.ndarray:
    """Labels as float64 ±1: +1 where the label equals ``positive`` (a value or a collection of
    values), -1 elsewhere. A ``positive`` that matches no label is an error listing the labels seen."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    values = _as_value_set(positive)
    pos = np.isin(lab, values)
    if not pos.any():
        raise ValueError(f"positive={positive!r} matches no label; labels present: "
                         f"{np.unique(lab)[:20].tolist()}")
    return np.where(pos, 1.0, -1.0)


def one_vs_rest_targets(labels: Any, low: float = -0.1, high: float = 0.9,
                        classes: Sequence[Hashable] | None = None) -> np.ndarray:
    """Multi-class regression targets in the style of Arora et al. (2019): row i is ``high`` in the
    column of its class and ``low`` elsewhere; shape (n, n_classes). Columns follow ``classes``
    (default: the sorted distinct labels); a label outside ``classes`` is an error."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    cls = np.unique(lab) if classes is None else np.asarray(list(classes))
    if cls.size != np.unique(cls).size:
        raise ValueError(f"classes must be distinct, got {cls.tolist()}")
    hit = lab[:, None] == cls[None, :]
    missing = ~hit.any(axis=1)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise ValueError(f"label {lab[i].item()!r} of row {i} is not among classes {cls.tolist()}")
    return np.where(hit, float(high), float(low))


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
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
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
        raise ValueError(f"test_fraction={test_fraction} splits {ds.n} rows into {train.size} train and "
                         f"{test.size} test rows: both parts must be non-empty")
    how = "stratified by label" if stratify else "not stratified"
    note = (f"split: test_fraction={f}, seed={seed}, {how}: {train.size} train / {test.size} test rows")
    return (ds.take(train, note + " — this is the train part", name=f"{ds.name}[train]"),
            ds.take(test, note + " — this is the test part", name=f"{ds.name}[test]"))


# ----------------------------------------------------------------------------------------------
# The Fibonacci lattice on S^{d-1}
# ----------------------------------------------------------------------------------------------

def _kronecker_steps(m: int) -> np.ndarray:
    """Roberts' generalised golden ratios: 1/g^k (k=1..m), g the positive root of x^(m+1) = x + 1
    (g is the golden ratio for m = 1)."""
    g = 2.0
    for _ in range(200):  # fixed-point iteration, contracting for every m ≥ 1
        g = (1.0 + g) ** (1.0 / (m + 1))
    return g ** -np.arange(1, m + 1, dtype=np.float64)


def fibonacci_sphere(n: int, d: int = 3) -> np.ndarray:
    """n deterministic, near-uniform unit vectors in R^d (points on S^{d-1}), float64 (n, d).

    A low-discrepancy lattice u_i in [0,1)^{d-1} — u_i1 = (i + 1/2)/n, the other coordinates the
    Kronecker sequence frac(i/g^k) with Roberts' generalised golden ratio g — is mapped through the
    inverse CDFs of the hyperspherical angles of the uniform distribution: the k-th polar angle has
    density ∝ sin^{d-1-k}, i.e. (1 + cos θ_k)/2 ~ Beta((d-k)/2, (d-k)/2), and the last angle is
    uniform in [0, 2π). For d = 3 this is exactly the standard spherical Fibonacci lattice
    (z_i = 1 - (2i+1)/n, longitude 2π i/φ). For d = 2 it is n equally spaced points on the circle.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n (number of points) must be an integer ≥ 1, got {n!r}")
    if isinstance(d, bool) or int(d) != d or d < 2:
        raise ValueError(f"d (ambient dimension, points on S^(d-1)) must be an integer ≥ 2, got {d!r}")
    n, d = int(n), int(d)
    i = np.arange(n, dtype=np.float64)
    u = np.empty((n, d - 1))
    u[:, 0] = (i + 0.5) / n
    if d > 2:
        u[:, 1:] = np.mod(np.outer(i, _kronecker_steps(d - 2)), 1.0)
    x = np.empty((n, d))
    sin_prod = np.ones(n)
    for k in range(d - 2):  # polar angles θ_1..θ_{d-2}
        a = (d - 1 - k) / 2.0
        cos_t = 1.0 - 2.0 * betaincinv(a, a, u[:, k])
        x[:, k] = sin_prod * cos_t
        sin_prod = sin_prod * np.sqrt(np.clip(1.0 - cos_t * cos_t, 0.0, None))
    azimuth = 2.0 * np.pi * u[:, -1]
    x[:, d - 2] = sin_prod * np.cos(azimuth)
    x[:, d - 1] = sin_prod * np.sin(azimuth)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Reading the shipped files
# ----------------------------------------------------------------------------------------------

class _Source:
    """A data file: its text lines and a display name for messages."""

    def __init__(self, filename: str, path: str | Path | None):
        if path is None:
            ref = resources.files("jntk_dist").joinpath("datasets").joinpath(filename)
            self.display = f"{filename} (shipped in jntk_dist/datasets)"
            data = ref.read_bytes()
        else:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"data file {str(p)!r} does not exist")
            self.display = str(p)
            data = p.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.display}: not a text file ({e})") from None
        self.lines = text.splitlines()  # handles CRLF and a missing final newline

    def error(self, line_no: int, msg: str) -> ValueError:
        return ValueError(f"{self.display}, line {line_no}: {msg}")

    def number(self, cell: str, line_no: int, column: str) -> float:
        try:
            v = float(cell)
        except ValueError:
            raise self.error(line_no, f"column {column!r} holds {cell.strip()!r}, not a number") from None
        if not math.isfinite(v):
            raise self.error(line_no, f"column {column!r} holds the non-finite value {cell.strip()!r}")
        return v


def _read_forest_fires(src: _Source, malformed: str, notes: list[str]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the two region sections: (values (n, 13) of day..FWI, region 0/1, class names, data-row index)."""
    rows, regions, classes, index = [], [], [], []
    region = None
    n_data = n_blank = n_titles = n_headers = 0
    per_region = [0, 0]
    dropped: list[str] = []
    repaired: list[str] = []
    for line_no, raw in enumerate(src.lines, start=1):
        line = raw.strip()
        if not line:
            n_blank += 1
            continue
        if line.endswith("Region Dataset"):
            title = line[: -len("Region Dataset")].strip()
            if title not in FOREST_REGIONS:
                raise src.error(line_no, f"unknown region section {title!r}; expected one of {FOREST_REGIONS}")
            region = FOREST_REGIONS.index(title)
            n_titles += 1
            continue
        fields = [c.strip() for c in line.split(",")]
        if fields[0] == "day":
            if tuple(fields) != FOREST_HEADER:
                raise src.error(line_no, f"unexpected header {fields}; expected {list(FOREST_HEADER)}")
            n_headers += 1
            continue
        if region is None:
            raise src.error(line_no, "data row before any region title line ('... Region Dataset')")
        row_index = n_data
        n_data += 1
        per_region[region] += 1
        where = f"line {line_no} ({FOREST_REGIONS[region]} {'/'.join(fields[:3])})"
        if len(fields) != len(FOREST_HEADER):
            split = [k for k, c in enumerate(fields[3:-1], start=3) if len(c.split()) == 2]
            run_together = len(fields) == len(FOREST_HEADER) - 1 and len(split) == 1
            if run_together:
                k = split[0]
                what = (f"{where} has {len(fields)} fields: {FOREST_HEADER[k]} and {FOREST_HEADER[k + 1]} "
                        f"are run together as {fields[k]!r}")
            else:
                what = f"{where} has {len(fields)} fields instead of {len(FOREST_HEADER)}"
            if malformed == "error" or (malformed == "repair" and not run_together):
                raise ValueError(f"{src.display}: malformed row: {what} (malformed={malformed!r}; "
                                 "'drop' skips the row, 'repair' splits run-together numbers)")
            if malformed == "drop":
                dropped.append(what)
                continue
            first, second = fields[k].split()
            fields = fields[:k] + [first, second] + fields[k + 1:]
            repaired.append(f"{what}; read as {FOREST_HEADER[k]}={first}, {FOREST_HEADER[k + 1]}={second}")
        values = [src.number(c, line_no, FOREST_HEADER[j]) for j, c in enumerate(fields[:-1])]
        label = fields[-1]
        if label not in ("fire", "not fire"):
            raise src.error(line_no, f"class {label!r} is neither 'fire' nor 'not fire'")
        rows.append(values)
        regions.append(region)
        classes.append(label)
        index.append(row_index)
    if n_data == 0:
        raise ValueError(f"{src.display}: no data rows found")
    notes.append(f"read {n_data} data rows ({FOREST_REGIONS[0]} {per_region[0]}, {FOREST_REGIONS[1]} "
                 f"{per_region[1]}) from {len(src.lines)} lines ({n_titles} region titles, {n_headers} "
                 f"headers, {n_blank} blank)")
    for what in dropped:
        notes.append(f"dropped malformed row: {what} (malformed='drop'; malformed='repair' would "
                     "split the run-together numbers, see docs/datasets.md)")
    for what in repaired:
        notes.append(f"repaired malformed row: {what} (malformed='repair'; this reading agrees with "
                     "the row's BUI and FWI under the FWI-system formulas, see docs/datasets.md)")
    return (np.asarray(rows, dtype=np.float64), np.asarray(regions, dtype=np.float64),
            np.asarray(classes), np.asarray(index, dtype=np.int64))


def _read_csv_rows(src: _Source, n_features: int, label_of: Callable[[str, int], Any],
                   feature_names: Sequence[str], notes: list[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Headerless comma-separated rows of n_features numbers and one label."""
    rows, labels = [], []
    n_blank = 0
    for line_no, raw in enumerate(src.lines, start=1):
        if not raw.strip():
            n_blank += 1
            continue
        fields = raw.split(",")
        if len(fields) != n_features + 1:
            raise src.error(line_no, f"{len(fields)} fields, expected {n_features + 1} "
                                     f"({n_features} features and a label)")
        rows.append([src.number(c, line_no, feature_names[j]) for j, c in enumerate(fields[:-1])])
        labels.append(label_of(fields[-1].strip(), line_no))
    if not rows:
        raise ValueError(f"{src.display}: no data rows found")
    notes.append(f"read {len(rows)} data rows from {len(src.lines)} lines ({n_blank} blank)")
    return np.asarray(rows, dtype=np.float64), np.asarray(labels), np.arange(len(rows), dtype=np.int64)


def _label_reader(src: _Source, allowed: dict[str, Any]) -> Callable[[str, int], Any]:
    def read(cell: str, line_no: int) -> Any:
        if cell not in allowed:
            raise src.error(line_no, f"label {cell!r} is not one of {list(allowed)}")
        return allowed[cell]
    return read


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------

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


def _finish(name: str, title: str, X: np.ndarray, labels: np.ndarray, y: np.ndarray,
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


def _load_forest_fires(*, features: str = "weather+region", malformed: str = "drop",
                       deduplicate: bool = False, preprocess: bool = True,
                       near_parallel_threshold: float | None = None,
                       path: str | Path | None = None) -> Dataset:
    if features not in FOREST_FEATURE_SETS:
        raise ValueError(f"features={features!r} is not one of {FOREST_FEATURE_SETS}")
    if malformed not in FOREST_MALFORMED:
        raise ValueError(f"malformed={malformed!r} is not one of {FOREST_MALFORMED}")
    src = _Source(FOREST_FIRES_FILE, path)
    notes: list[str] = [f"file: {src.display}"]
    values, region, classes, index = _read_forest_fires(src, malformed, notes)
    weather = values[:, 3:]
    columns = [weather]
    names = list(FOREST_WEATHER_COLUMNS)
    if "month" in features:
        columns.insert(0, values[:, 1:2])
        names.insert(0, "month")
    if "region" in features:
        columns.append(region[:, None])
        names.append("region")
    X = np.hstack(columns)
    notes.append(f"features ({len(names)}, features={features!r}): {', '.join(names)}"
                 + (" (region: Bejaia=0, Sidi-Bel Abbes=1)" if "region" in features else ""))
    y = binary_labels(classes, "fire")
    return _finish("forest_fires", "Algerian forest fires, fire = +1, not fire = -1", X, classes, y,
                   names, index, notes, preprocess=preprocess,
                   scale=lambda A: scale_columns(A, feature_names=names),
                   scale_note="every column scaled to [-1, 1] by its min/max",
                   near_parallel_threshold=near_parallel_threshold, deduplicate=deduplicate)


def _load_banknote(*, deduplicate: bool = False, preprocess: bool = True,
                   near_parallel_threshold: float | None = None,
                   path: str | Path | None = None) -> Dataset:
    src = _Source(BANKNOTE_FILE, path)
    notes: list[str] = [f"file: {src.display}"]
    X, labels, index = _read_csv_rows(src, 4, _label_reader(src, {"0": 0, "1": 1}), BANKNOTE_COLUMNS, notes)
    labels = labels.astype(np.int64)
    n_dup = X.shape[0] - np.unique(X, axis=0).shape[0]
    if not deduplicate and n_dup:
        notes.append(f"note: {n_dup} rows repeat an earlier row exactly; they make a JNTK Gram matrix "
                     "singular (pass deduplicate=True or a near_parallel_threshold to drop them)")
    y = binary_labels(labels, 1)
    return _finish("banknote", "Banknote authentication, class 1 = +1, class 0 = -1", X, labels, y,
                   BANKNOTE_COLUMNS, index, notes, preprocess=preprocess,
                   scale=lambda A: scale_columns(A, feature_names=BANKNOTE_COLUMNS),
                   scale_note="every column scaled to [-1, 1] by its min/max",
                   near_parallel_threshold=near_parallel_threshold, deduplicate=deduplicate)


def _load_sonar(*, deduplicate: bool = False, preprocess: bool = True,
                near_parallel_threshold: float | None = None,
                path: str | Path | None = None) -> Dataset:
    src = _Source(SONAR_FILE, path)
    notes: list[str] = [f"file: {src.display}"]
    names = tuple(f"band_{j + 1:02d}" for j in range(60))
    X, labels, index = _read_csv_rows(src, 60, _label_reader(src, {"M": "M", "R": "R"}), names, notes)
    y = binary_labels(labels, "M")
    return _finish("sonar", "Sonar, mines vs. rocks, M (mine) = +1, R (rock) = -1", X, labels, y,
                   names, index, notes, preprocess=preprocess,
                   scale=lambda A: scale_columns(A, feature_names=names),
                   scale_note="every column scaled to [-1, 1] by its min/max",
                   near_parallel_threshold=near_parallel_threshold, deduplicate=deduplicate)


def _load_digits(*, positive: Any = (0, 2, 4, 6, 8), scaling: str = "pixel", deduplicate: bool = False,
                 preprocess: bool = True, near_parallel_threshold: float | None = None) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    if scaling not in DIGITS_SCALINGS:
        raise ValueError(f"scaling={scaling!r} is not one of {DIGITS_SCALINGS}")
    bunch = load_digits()
    X = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    names = list(bunch.feature_names)
    notes = [f"read {X.shape[0]} images of 8×8 pixels (values 0..16) from sklearn.datasets.load_digits"]
    y = binary_labels(labels, positive)
    notes.append(f"binary labels: digits {sorted(_as_value_set(positive))} → +1, the others → -1 "
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
    return _finish("digits", "Handwritten digits (scikit-learn copy of UCI optdigits test set)", X, labels,
                   y, names, np.arange(X.shape[0], dtype=np.int64), notes, preprocess=preprocess,
                   scale=scale, scale_note=scale_note, near_parallel_threshold=near_parallel_threshold,
                   deduplicate=deduplicate)


def _load_fibonacci(*, n: int = 256, d: int = 4, labels: str = "sign",
                    near_parallel_threshold: float | None = None) -> Dataset:
    if labels not in FIBONACCI_LABELS:
        raise ValueError(f"labels={labels!r} is not one of {FIBONACCI_LABELS}")
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
    return _finish("fibonacci", f"synthetic points on S^{d - 1}", X, int_labels, y,
                   [f"x{j + 1}" for j in range(d)], np.arange(X.shape[0], dtype=np.int64), notes,
                   preprocess=None, scale=None, scale_note="", deduplicate=False,
                   near_parallel_threshold=near_parallel_threshold)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "forest_fires": _load_forest_fires,
    "banknote": _load_banknote,
    "sonar": _load_sonar,
    "digits": _load_digits,
    "fibonacci": _load_fibonacci,
}


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


def dataset_options(name: str) -> dict[str, Any]:
    """The options ``load_dataset(name, ...)`` accepts, with their defaults."""
    import inspect

    sig = inspect.signature(_LOADERS[_canonical_name(name)])
    return {p.name: p.default for p in sig.parameters.values()}


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load one of DATASET_NAMES with the paper's preprocessing; see docs/datasets.md.

    Options (defaults in :func:`dataset_options`): every dataset takes ``near_parallel_threshold``
    (None, or t in (0, 1): drop rows with |<x_i, x_j>| > t after normalisation, the paper uses 0.99
    for gelu and 0.995 for erf on banknote). The real datasets take ``preprocess`` (False: raw
    values) and ``deduplicate`` (drop exact duplicate rows); the UCI ones ``path`` (read another copy
    of the file). forest_fires: ``features`` in FOREST_FEATURE_SETS, ``malformed`` 'drop' | 'repair'
    | 'error'. digits: ``positive`` (digits labelled +1, default the even ones), ``scaling`` 'pixel'
    | 'columns'. fibonacci: ``n``, ``d``, ``labels`` 'sign' | 'ones'.
    """
    key = _canonical_name(name)
    valid = dataset_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {key!r}; valid options: "
                         f"{', '.join(valid)}")
    return _LOADERS[key](**options)
