"""Readers of the shipped UCI files (forest fires, banknote, sonar), each error naming the file
and the line."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .dataset import Dataset, finish_dataset
from .preprocessing import binary_labels, scale_columns
from ..errors import ConfigError, InputError

FOREST_FIRES_FILE = "Algerian_forest_fires_dataset_UPDATE.csv"
BANKNOTE_FILE = "data_banknote_authentication.txt"
SONAR_FILE = "sonar.all-data"
FOREST_WEATHER_COLUMNS = ("Temperature", "RH", "Ws", "Rain", "FFMC", "DMC", "DC", "ISI", "BUI", "FWI")
FOREST_HEADER = ("day", "month", "year") + FOREST_WEATHER_COLUMNS + ("Classes",)
FOREST_REGIONS = ("Bejaia", "Sidi-Bel Abbes")  # coded 0 and 1, in file order
FOREST_FEATURE_SETS = ("weather+region", "weather+month", "weather", "weather+month+region")
FOREST_MALFORMED = ("drop", "repair", "error")
BANKNOTE_COLUMNS = ("variance", "skewness", "curtosis", "entropy")


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
            raise InputError(f"{self.display}: not a text file ({e})") from None
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


def _forest_row(src: _Source, fields: list[str], where: str, malformed: str,
                notes: dict[str, list[str]]) -> list[str] | None:
    """The 14 cells of a forest-fire data row; a row with a wrong number of fields is dropped
    (None), repaired (two numbers run together in one cell, split) or an error, by ``malformed``."""
    if len(fields) == len(FOREST_HEADER):
        return fields
    split = [k for k, c in enumerate(fields[3:-1], start=3) if len(c.split()) == 2]
    run_together = len(fields) == len(FOREST_HEADER) - 1 and len(split) == 1
    if run_together:
        k = split[0]
        what = (f"{where} has {len(fields)} fields: {FOREST_HEADER[k]} and {FOREST_HEADER[k + 1]} "
                f"are run together as {fields[k]!r}")
    else:
        what = f"{where} has {len(fields)} fields instead of {len(FOREST_HEADER)}"
    if malformed == "error" or (malformed == "repair" and not run_together):
        raise InputError(f"{src.display}: malformed row: {what} (malformed={malformed!r}; "
                         "'drop' skips the row, 'repair' splits run-together numbers)")
    if malformed == "drop":
        notes["dropped"].append(what)
        return None
    first, second = fields[k].split()
    notes["repaired"].append(f"{what}; read as {FOREST_HEADER[k]}={first}, "
                             f"{FOREST_HEADER[k + 1]}={second}")
    return fields[:k] + [first, second] + fields[k + 1:]


def _read_forest_fires(src: _Source, malformed: str, notes: list[str]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the two region sections: (values (n, 13) of day..FWI, region 0/1, class names, data-row index)."""
    rows, regions, classes, index = [], [], [], []
    region = None
    counts = {"data": 0, "blank": 0, "titles": 0, "headers": 0}
    per_region = [0, 0]
    changed: dict[str, list[str]] = {"dropped": [], "repaired": []}
    for line_no, raw in enumerate(src.lines, start=1):
        line = raw.strip()
        if not line:
            counts["blank"] += 1
            continue
        if line.endswith("Region Dataset"):
            title = line[: -len("Region Dataset")].strip()
            if title not in FOREST_REGIONS:
                raise src.error(line_no, f"unknown region section {title!r}; expected one of {FOREST_REGIONS}")
            region = FOREST_REGIONS.index(title)
            counts["titles"] += 1
            continue
        fields = [c.strip() for c in line.split(",")]
        if fields[0] == "day":
            if tuple(fields) != FOREST_HEADER:
                raise src.error(line_no, f"unexpected header {fields}; expected {list(FOREST_HEADER)}")
            counts["headers"] += 1
            continue
        if region is None:
            raise src.error(line_no, "data row before any region title line ('... Region Dataset')")
        row_index = counts["data"]
        counts["data"] += 1
        per_region[region] += 1
        where = f"line {line_no} ({FOREST_REGIONS[region]} {'/'.join(fields[:3])})"
        fields = _forest_row(src, fields, where, malformed, changed)
        if fields is None:
            continue
        values = [src.number(c, line_no, FOREST_HEADER[j]) for j, c in enumerate(fields[:-1])]
        label = fields[-1]
        if label not in ("fire", "not fire"):
            raise src.error(line_no, f"class {label!r} is neither 'fire' nor 'not fire'")
        rows.append(values)
        regions.append(region)
        classes.append(label)
        index.append(row_index)
    if counts["data"] == 0:
        raise InputError(f"{src.display}: no data rows found")
    _forest_notes(notes, src, counts, per_region, changed)
    return (np.asarray(rows, dtype=np.float64), np.asarray(regions, dtype=np.float64),
            np.asarray(classes), np.asarray(index, dtype=np.int64))


def _forest_notes(notes: list[str], src: _Source, counts: dict[str, int], per_region: list[int],
                  changed: dict[str, list[str]]) -> None:
    notes.append(f"read {counts['data']} data rows ({FOREST_REGIONS[0]} {per_region[0]}, "
                 f"{FOREST_REGIONS[1]} {per_region[1]}) from {len(src.lines)} lines "
                 f"({counts['titles']} region titles, {counts['headers']} headers, "
                 f"{counts['blank']} blank)")
    for what in changed["dropped"]:
        notes.append(f"dropped malformed row: {what} (malformed='drop'; malformed='repair' would "
                     "split the run-together numbers, see docs/datasets.md)")
    for what in changed["repaired"]:
        notes.append(f"repaired malformed row: {what} (malformed='repair'; this reading agrees with "
                     "the row's BUI and FWI under the FWI-system formulas, see docs/datasets.md)")


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
        raise InputError(f"{src.display}: no data rows found")
    notes.append(f"read {len(rows)} data rows from {len(src.lines)} lines ({n_blank} blank)")
    return np.asarray(rows, dtype=np.float64), np.asarray(labels), np.arange(len(rows), dtype=np.int64)


def _label_reader(src: _Source, allowed: dict[str, Any]) -> Callable[[str, int], Any]:
    def read(cell: str, line_no: int) -> Any:
        if cell not in allowed:
            raise src.error(line_no, f"label {cell!r} is not one of {list(allowed)}")
        return allowed[cell]
    return read



def _finish_uci(name: str, title: str, X: np.ndarray, labels: np.ndarray, y: np.ndarray,
                names: Sequence[str], index: np.ndarray, notes: list[str], *, preprocess: bool,
                near_parallel_threshold: float | None, deduplicate: bool) -> Dataset:
    """The UCI sets' shared tail: every column scaled to [-1, 1] by its min/max, rows to unit
    norm (:func:`.dataset.finish_dataset`)."""
    return finish_dataset(name, title, X, labels, y, names, index, notes, preprocess=preprocess,
                          scale=lambda A: scale_columns(A, feature_names=names),
                          scale_note="every column scaled to [-1, 1] by its min/max",
                          near_parallel_threshold=near_parallel_threshold,
                          deduplicate=deduplicate)


def load_forest_fires(*, features: str = "weather+region", malformed: str = "drop",
                       deduplicate: bool = False, preprocess: bool = True,
                       near_parallel_threshold: float | None = None,
                       path: str | Path | None = None) -> Dataset:
    if features not in FOREST_FEATURE_SETS:
        raise ConfigError(f"features={features!r} is not one of {FOREST_FEATURE_SETS}")
    if malformed not in FOREST_MALFORMED:
        raise ConfigError(f"malformed={malformed!r} is not one of {FOREST_MALFORMED}")
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
    return _finish_uci("forest_fires", "Algerian forest fires, fire = +1, not fire = -1", X,
                       classes, y, names, index, notes, preprocess=preprocess,
                       near_parallel_threshold=near_parallel_threshold, deduplicate=deduplicate)


def load_banknote(*, deduplicate: bool = False, preprocess: bool = True,
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
    return _finish_uci("banknote", "Banknote authentication, class 1 = +1, class 0 = -1", X,
                       labels, y, BANKNOTE_COLUMNS, index, notes, preprocess=preprocess,
                       near_parallel_threshold=near_parallel_threshold, deduplicate=deduplicate)


def load_sonar(*, deduplicate: bool = False, preprocess: bool = True,
                near_parallel_threshold: float | None = None,
                path: str | Path | None = None) -> Dataset:
    src = _Source(SONAR_FILE, path)
    notes: list[str] = [f"file: {src.display}"]
    names = tuple(f"band_{j + 1:02d}" for j in range(60))
    X, labels, index = _read_csv_rows(src, 60, _label_reader(src, {"M": "M", "R": "R"}), names, notes)
    y = binary_labels(labels, "M")
    return _finish_uci("sonar", "Sonar, mines vs. rocks, M (mine) = +1, R (rock) = -1", X, labels,
                       y, names, index, notes, preprocess=preprocess,
                       near_parallel_threshold=near_parallel_threshold, deduplicate=deduplicate)
