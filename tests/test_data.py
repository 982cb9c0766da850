"""Tests of jntk_dist.data: shipped files, loaders, the paper's preprocessing, the Fibonacci lattice.

Expected counts and ranges come from the datasets' README (verified independently of this code),
not from the loaders' own output.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import numpy as np
import pytest
from scipy.special import betainc, gamma

from jntk_dist.data import (
    DATASET_NAMES,
    Dataset,
    binary_labels,
    constant_columns,
    dataset_options,
    fibonacci_sphere,
    load_dataset,
    normalize_rows,
    one_vs_rest_targets,
    remove_near_parallel,
    scale_columns,
    train_test_split,
)

SHIPPED = resources.files("jntk_dist").joinpath("datasets")


def _gram_abs(X: np.ndarray) -> np.ndarray:
    G = np.abs(X @ X.T)
    np.fill_diagonal(G, 0.0)
    return G


# ---------------------------------------------------------------- shipped files


def test_shipped_files_match_readme_sha256():
    readme = SHIPPED.joinpath("README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \|.*\| (\d+) \| `([0-9a-f]{64})` \|$", readme, flags=re.M)
    assert {r[0] for r in rows} == {"data_banknote_authentication.txt", "sonar.all-data",
                                    "Algerian_forest_fires_dataset_UPDATE.csv"}
    for filename, size, digest in rows:
        data = SHIPPED.joinpath(filename).read_bytes()
        assert len(data) == int(size), filename
        assert hashlib.sha256(data).hexdigest() == digest, filename
    licence = SHIPPED.joinpath("LICENSE.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in licence
    for doi in ("10.24432/C55P57", "10.24432/C5T01Q", "10.24432/C5KW4N"):
        assert doi in licence


# ---------------------------------------------------------------- loaders: shapes, counts, ranges


def test_forest_fires_default_drops_malformed_row():
    ds = load_dataset("forest_fires")
    assert (ds.n, ds.d0) == (243, 11)
    assert ds.feature_names[-1] == "region" and ds.feature_names[:3] == ("Temperature", "RH", "Ws")
    # README: fire 138 / not fire 106 over 244 rows; the dropped malformed row is 'fire'.
    assert int((ds.labels == "fire").sum()) == 137 and int((ds.labels == "not fire").sum()) == 106
    assert np.array_equal(ds.y, np.where(ds.labels == "fire", 1.0, -1.0))
    assert "line 171" in ds.report and "dropped" in ds.report and "'14.6 9'" in ds.report
    line_171 = 122 + (171 - 128)  # data-row index: 122 Bejaia rows, Sidi-Bel Abbes data from line 128
    assert line_171 not in ds.source_index.tolist() and ds.source_index.tolist()[line_171] == line_171 + 1
    raw = load_dataset("forest_fires", preprocess=False)
    # README's observed ranges over the 243 well-formed rows.
    expected = {"Temperature": (22, 42), "RH": (21, 90), "Ws": (6, 29), "Rain": (0, 16.8),
                "FFMC": (28.6, 96.0), "DMC": (0.7, 65.9), "DC": (6.9, 220.4), "ISI": (0, 19.0),
                "BUI": (1.1, 68.0), "FWI": (0, 31.1), "region": (0, 1)}
    for j, name in enumerate(raw.feature_names):
        assert (raw.X[:, j].min(), raw.X[:, j].max()) == expected[name], name
    # Region: 122 Bejaia rows first, 121 Sidi-Bel Abbes rows after the drop.
    assert raw.X[:, -1].tolist() == [0.0] * 122 + [1.0] * 121


def test_forest_fires_repair_and_error_options():
    ds = load_dataset("forest_fires", malformed="repair", preprocess=False)
    assert (ds.n, ds.d0) == (244, 11)
    assert int((ds.y > 0).sum()) == 138 and int((ds.y < 0).sum()) == 106
    sidi = ds.X[ds.X[:, -1] == 1.0]
    by_region = {0: 59, 1: 79}  # README: fire rows per region
    for region, fires in by_region.items():
        assert int((ds.y[ds.X[:, -1] == region] > 0).sum()) == fires
    dc, isi = ds.feature_names.index("DC"), ds.feature_names.index("ISI")
    repaired = ds.X[ds.source_index == 122 + (171 - 128)]  # line 171: Sidi-Bel Abbes 14/07/2012
    assert repaired.shape[0] == 1 and repaired[0, dc] == 14.6 and repaired[0, isi] == 9.0
    assert sidi.shape[0] == 122
    assert "repaired" in ds.report and "DC=14.6, ISI=9" in ds.report
    with pytest.raises(ValueError, match=r"line 171.*DC and ISI are run together"):
        load_dataset("forest_fires", malformed="error")
    with pytest.raises(ValueError, match="malformed='bogus' is not one of"):
        load_dataset("forest_fires", malformed="bogus")


@pytest.mark.parametrize("features, d0, first, last", [
    ("weather+month", 11, "month", "FWI"), ("weather", 10, "Temperature", "FWI"),
    ("weather+month+region", 12, "month", "region")])
def test_forest_fires_feature_sets(features, d0, first, last):
    ds = load_dataset("forest_fires", features=features)
    assert (ds.n, ds.d0) == (243, d0)
    assert ds.feature_names[0] == first and ds.feature_names[-1] == last


def test_banknote_counts_ranges_and_duplicates():
    ds = load_dataset("banknote")
    assert (ds.n, ds.d0) == (1372, 4)
    assert int((ds.y > 0).sum()) == 610 and int((ds.y < 0).sum()) == 762
    assert np.array_equal(ds.y, np.where(ds.labels == 1, 1.0, -1.0))
    assert "24 rows repeat" in ds.report
    raw = load_dataset("banknote", preprocess=False)
    assert raw.X[0].tolist() == [3.6216, 8.6661, -2.8073, -0.44699]
    assert raw.X[-1].tolist() == [-2.5419, -0.65804, 2.6842, 1.1952]
    assert (raw.X[:, 0].min(), raw.X[:, 0].max()) == (-7.0421, 6.8248)
    assert (raw.X[:, 2].min(), raw.X[:, 2].max()) == (-5.2861, 17.9274)
    dedup = load_dataset("banknote", deduplicate=True)
    assert dedup.n == 1348 and len({tuple(r) for r in dedup.X}) == 1348
    assert "dropped 24 exact duplicate rows" in dedup.report


def test_sonar_counts():
    ds = load_dataset("sonar")
    assert (ds.n, ds.d0) == (208, 60)
    assert int((ds.y > 0).sum()) == 111 and int((ds.y < 0).sum()) == 97
    assert ds.labels[:97].tolist() == ["R"] * 97 and ds.labels[97:].tolist() == ["M"] * 111
    raw = load_dataset("sonar", preprocess=False)
    assert raw.X[0, :3].tolist() == [0.02, 0.0371, 0.0428]
    assert raw.X.min() >= 0.0 and raw.X.max() <= 1.0


def test_digits_shape_and_even_odd_labels():
    ds = load_dataset("digits")
    assert (ds.n, ds.d0) == (1797, 64)
    assert sorted(np.unique(ds.labels).tolist()) == list(range(10))
    assert np.array_equal(ds.y, np.where(ds.labels % 2 == 0, 1.0, -1.0))
    threes = load_dataset("digits", positive=3)
    assert int((threes.y > 0).sum()) == int((threes.labels == 3).sum()) > 0
    cols = load_dataset("digits", scaling="columns")
    assert cols.d0 == 61 and "3 constant columns dropped" in cols.report


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_rows_unit_norm_and_columns_scaled(name):
    ds = load_dataset(name)
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.float64
    assert np.allclose(np.linalg.norm(ds.X, axis=1), 1.0, atol=1e-12, rtol=0)
    assert set(np.unique(ds.y)) <= {-1.0, 1.0}
    if name in ("forest_fires", "banknote", "sonar"):
        raw = load_dataset(name, preprocess=False).X
        scaled = scale_columns(raw)
        assert np.array_equal(scaled.min(axis=0), -np.ones(raw.shape[1]))
        assert np.array_equal(scaled.max(axis=0), np.ones(raw.shape[1]))
        # Affine per column: scaled = a * raw + b, recovered from two rows of each column.
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        assert np.allclose(scaled, -1 + 2 * (raw - lo) / (hi - lo), atol=1e-14)
        assert np.allclose(ds.X, scaled / np.linalg.norm(scaled, axis=1, keepdims=True), atol=1e-15)


# ---------------------------------------------------------------- preprocessing functions


def _greedy_reference(X: np.ndarray, t: float) -> list[int]:
    """Straightforward O(n²) statement of the rule: keep i unless it is near-parallel to a kept row."""
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    kept: list[int] = []
    for i in range(len(U)):
        if not kept or np.abs(U[kept] @ U[i]).max() <= t:
            kept.append(i)
    return kept


def test_remove_near_parallel_matches_rule_and_is_idempotent():
    rng = np.random.default_rng(3)
    base = normalize_rows(rng.standard_normal((60, 5)))
    noisy = normalize_rows(base[rng.integers(0, 60, 40)] + 0.02 * rng.standard_normal((40, 5)))
    X = np.vstack([base, -noisy, base[:5]])  # near-antiparallel copies and exact duplicates
    y = np.arange(len(X), dtype=float)
    Xk, yk, kept = remove_near_parallel(X, y, 0.99, block_size=7)  # small blocks exercise the blocking
    assert kept.tolist() == _greedy_reference(X, 0.99)
    assert np.array_equal(Xk, X[kept]) and np.array_equal(yk, y[kept])
    assert _gram_abs(Xk).max() <= 0.99
    assert len(kept) < len(X) - 5  # the duplicates and some noisy copies went
    # Every dropped row is near-parallel to an earlier kept row.
    for i in sorted(set(range(len(X))) - set(kept.tolist())):
        earlier = kept[kept < i]
        assert np.abs(X[earlier] @ X[i]).max() > 0.99
    again = remove_near_parallel(Xk, None, 0.99)
    assert again[1] is None and again[2].tolist() == list(range(len(Xk)))


@pytest.mark.parametrize("threshold", [0.99, 0.995])
def test_banknote_near_parallel_removal(threshold):
    ds = load_dataset("banknote", near_parallel_threshold=threshold)
    full = load_dataset("banknote")
    assert _gram_abs(ds.X).max() <= threshold
    assert np.array_equal(ds.X, full.X[ds.source_index])
    assert np.array_equal(ds.y, full.y[ds.source_index])
    assert ds.source_index.tolist() == _greedy_reference(full.X, threshold)
    assert f"near-parallel removal (threshold {threshold})" in ds.report
    assert remove_near_parallel(ds.X, ds.y, threshold)[2].size == ds.n


def test_scale_columns_errors_and_options():
    X = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 2.0], [2.0, 5.0, 4.0]])
    with pytest.raises(ValueError, match=r"column 1 \('b'\) is constant"):
        scale_columns(X, feature_names=["a", "b", "c"])
    assert constant_columns(X).tolist() == [1]
    dropped = scale_columns(X, drop_constant=True)
    assert dropped.tolist() == [[-1.0, -1.0], [1.0, 0.0], [0.0, 1.0]]
    assert scale_columns(X, bounds=(0, 5)).tolist()[0] == [-0.6, 1.0, -1.0]
    with pytest.raises(ValueError, match=r"value 5.0 at row 0, column 1 lies outside bounds"):
        scale_columns(X, bounds=(0, 4))
    Xn = X.copy()
    Xn[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf.*row 2"):
        scale_columns(Xn)


def test_normalize_rows_names_zero_row():
    X = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"zero row.*\[1\]"):
        normalize_rows(X)
    assert normalize_rows(X[[0, 2]]).tolist() == [[0.6, 0.8], [1.0, 0.0]]


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_non_finite_value_in_file_names_file_and_line(tmp_path, bad):
    lines = SHIPPED.joinpath("data_banknote_authentication.txt").read_text().splitlines()
    lines[4] = f"{bad},8.6661,-2.8073,-0.44699,0"
    path = tmp_path / "banknote_bad.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"banknote_bad.txt, line 5: column 'variance'.*non-finite.*{bad}"):
        load_dataset("banknote", path=path)


def test_bad_cells_in_forest_file(tmp_path):
    text = SHIPPED.joinpath("Algerian_forest_fires_dataset_UPDATE.csv").read_bytes().decode()
    lines = text.split("\r\n")
    lines[9] = lines[9].replace(",fire", ",smoke", 1).replace(",not fire", ",smoke", 1)
    path = tmp_path / "ff.csv"
    path.write_text("\r\n".join(lines))
    with pytest.raises(ValueError, match=r"ff.csv, line 10: class 'smoke'"):
        load_dataset("forest_fires", path=path)
    lines = text.split("\r\n")
    cells = lines[20].split(",")
    cells[4] = "NaN"
    lines[20] = ",".join(cells)
    path.write_text("\r\n".join(lines))
    with pytest.raises(ValueError, match=r"ff.csv, line 21: column 'RH' holds the non-finite value 'NaN'"):
        load_dataset("forest_fires", path=path)


def test_unknown_names_and_options_are_listed():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; valid names: forest_fires, "
                                         r"banknote, sonar, digits, fibonacci, mnist, cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dedup'\] for dataset 'banknote'.*deduplicate"):
        load_dataset("banknote", dedup=True)
    assert dataset_options("fibonacci") == {"n": 256, "d": 4, "labels": "sign",
                                            "near_parallel_threshold": None}
    assert load_dataset("Forest-Fires").n == 243
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\)"):
        load_dataset("sonar", near_parallel_threshold=1.0)


def test_binary_labels_and_one_vs_rest_targets():
    labels = np.array(["fire", "not fire", "fire"])
    assert binary_labels(labels, "fire").tolist() == [1.0, -1.0, 1.0]
    assert binary_labels(np.array([0, 1, 2, 3]), (1, 3)).tolist() == [-1.0, 1.0, -1.0, 1.0]
    with pytest.raises(ValueError, match=r"positive='fire ' matches no label; labels present: \['fire', 'not fire'\]"):
        binary_labels(labels, "fire ")
    digits = np.array([3, 0, 9, 3])
    T = one_vs_rest_targets(digits)
    assert T.shape == (4, 3)
    assert T.tolist()[0] == [-0.1, 0.9, -0.1] and T.tolist()[1] == [0.9, -0.1, -0.1]
    T10 = one_vs_rest_targets(digits, low=0.0, high=1.0, classes=range(10))
    assert T10.shape == (4, 10) and np.array_equal(T10.argmax(axis=1), digits) and T10.sum() == 4
    with pytest.raises(ValueError, match=r"label 9 of row 2 is not among classes \[0, 3\]"):
        one_vs_rest_targets(digits, classes=[0, 3])


def test_train_test_split_deterministic_stratified_disjoint():
    ds = load_dataset("forest_fires")
    train, test = train_test_split(ds, test_fraction=0.25, seed=0)
    train2, test2 = train_test_split(ds, test_fraction=0.25, seed=0)
    assert np.array_equal(test.source_index, test2.source_index)
    assert np.array_equal(train.X, train2.X)
    other = train_test_split(ds, test_fraction=0.25, seed=1)[1]
    assert not np.array_equal(other.source_index, test.source_index)
    ids_train, ids_test = set(train.source_index.tolist()), set(test.source_index.tolist())
    assert not ids_train & ids_test and ids_train | ids_test == set(ds.source_index.tolist())
    assert int((test.labels == "fire").sum()) == round(0.25 * 137)
    assert int((test.labels == "not fire").sum()) == round(0.25 * 106)
    assert np.all(np.diff(test.source_index) > 0)  # rows keep their order
    position = {s: i for i, s in enumerate(ds.source_index.tolist())}
    rows = [position[s] for s in test.source_index.tolist()]
    assert np.array_equal(test.X, ds.X[rows]) and np.array_equal(test.y, ds.y[rows])
    assert test.name == "forest_fires[test]" and f"{train.n} train / {test.n} test rows" in test.report
    assert test.n == 34 + 26 and train.n == 243 - 60
    plain = train_test_split(ds, test_fraction=0.5, stratify=False)[1]
    assert plain.n == round(0.5 * 243)
    with pytest.raises(ValueError, match="test_fraction must lie in"):
        train_test_split(ds, test_fraction=1.0)


def test_dataset_record_validates():
    with pytest.raises(ValueError, match="y must hold labels ±1"):
        Dataset(X=np.eye(2), y=np.array([1.0, 0.0]), labels=np.array([1, 0]), name="t",
                feature_names=("a", "b"), report="", source_index=np.arange(2))
    with pytest.raises(ValueError, match="2 feature names for d0=3"):
        Dataset(X=np.eye(3)[:2], y=np.array([1.0, -1.0]), labels=np.array([1, 0]), name="t",
                feature_names=("a", "b"), report="", source_index=np.arange(2))


# ---------------------------------------------------------------- Fibonacci lattice


def _cap_radius(n: int, d: int) -> float:
    """Angular radius of a cap holding 1/n of S^{d-1}, small-cap approximation: the spacing scale."""
    area = 2 * np.pi ** (d / 2) / gamma(d / 2)
    ball = np.pi ** ((d - 1) / 2) / gamma((d + 1) / 2)
    return float((area / n / ball) ** (1 / (d - 1)))


def _min_distance(X: np.ndarray) -> float:
    G = X @ X.T
    sq = np.clip(2.0 - 2.0 * G[np.triu_indices(len(X), 1)], 0.0, None)
    return float(np.sqrt(sq.min()))


def _max_cap_error(X: np.ndarray, seed: int = 2, caps: int = 200) -> float:
    """Largest |fraction of points in a cap − the cap's exact measure| over random caps."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    worst = 0.0
    for _ in range(caps):
        v = rng.standard_normal(d)
        v /= np.linalg.norm(v)
        h = rng.uniform(-0.9, 0.9)
        measure = 0.5 * betainc((d - 1) / 2, 0.5, 1 - h * h)  # P(<x, v> > |h|) for uniform x
        measure = measure if h >= 0 else 1 - measure
        worst = max(worst, abs(float((X @ v > h).mean()) - measure))
    return worst


def test_fibonacci_d3_is_the_standard_spherical_lattice():
    n = 100
    X = fibonacci_sphere(n, 3)
    i = np.arange(n)
    z = 1 - (2 * i + 1) / n
    golden = (1 + 5 ** 0.5) / 2
    lon = 2 * np.pi * i / golden
    r = np.sqrt(1 - z * z)
    assert np.allclose(X, np.stack([z, r * np.cos(lon), r * np.sin(lon)], axis=1), atol=1e-9)


@pytest.mark.parametrize("n, d, spacing", [(256, 4, 0.85), (1000, 4, 0.85), (256, 3, 1.5), (200, 5, 0.7)])
def test_fibonacci_points_unit_spread_uniform(n, d, spacing):
    X = fibonacci_sphere(n, d)
    assert X.shape == (n, d)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-14, rtol=0)
    assert np.array_equal(X, fibonacci_sphere(n, d))
    rng = np.random.default_rng(0)
    R = normalize_rows(rng.standard_normal((n, d)))
    # Minimum distance: a fixed fraction of the equal-area spacing (the optimum is below about 2x it),
    # far above what i.i.d. uniform points reach.
    scale = 2 * np.sin(_cap_radius(n, d) / 2)
    assert _min_distance(X) >= spacing * scale
    assert _min_distance(X) >= 2 * _min_distance(R)
    assert np.abs(X.mean(axis=0)).max() < 0.01
    assert np.abs(X.T @ X / n - np.eye(d) / d).max() < 0.01
    # Cap counts: i.i.d. points err by ~1/sqrt(n); the lattice by well under that.
    assert _max_cap_error(X) < 0.6 / np.sqrt(n) < _max_cap_error(R)


def test_fibonacci_dataset_default():
    ds = load_dataset("fibonacci")
    assert (ds.n, ds.d0) == (256, 4)
    assert np.array_equal(ds.X, fibonacci_sphere(256, 4))
    w = np.arange(1, 5) / np.linalg.norm(np.arange(1, 5))
    assert np.array_equal(ds.y, np.where(ds.X @ w >= 0, 1.0, -1.0))
    assert 0 < (ds.y > 0).sum() < ds.n
    assert load_dataset("fibonacci", n=10, d=3, labels="ones").y.tolist() == [1.0] * 10
    with pytest.raises(ValueError, match="d \\(ambient dimension"):
        fibonacci_sphere(10, 1)
