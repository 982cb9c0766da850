"""The kernel-regression analyses: properties derived from eq. (4), checked against independent
routes (finite differences, scipy's expm, direct per-column fits, Cauchy interlacing)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import xarray as xr

from jntk_dist import analysis, kernels, solvers
from jntk_dist.analysis import KernelRegressor

from conftest import write_gram_store
from conftest import sphere as _sphere


@pytest.fixture(scope="module")
def data():
    X, Xt = _sphere(24, 4, 0), _sphere(9, 4, 1)
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, 1.0, -1.0)
    yt = np.where(Xt[:, 0] + 0.5 * Xt[:, 1] > 0, 1.0, -1.0)
    return X, y, Xt, yt


@pytest.mark.parametrize("lam", [1.0, 0.05])
def test_predictor_interpolates_and_has_zero_gradient_at_training_points(data, lam):
    # Θ_λ(x_i, X) rows are rows of Θ_λ(X, X), so f(x_i) = Y_{i0} = y_i and ∇f(x_i) ∝ Y_{iα} = 0.
    X, y, _, _ = data
    m = KernelRegressor(depth=2, activation="gelu", lam=lam, block_size=40).fit(X, y)
    f, g = m.value_and_gradient(X)
    np.testing.assert_allclose(f, y, atol=1e-9)
    assert np.abs(g).max() <= 1e-9
    assert m.score(X, y) == 1.0


def test_standard_ntk_predictor_interpolates_but_keeps_its_gradient(data):
    X, y, _, _ = data
    m = KernelRegressor(depth=2, activation="gelu", lam=0.0).fit(X, y)
    f, g = m.value_and_gradient(X)
    np.testing.assert_allclose(f, y, atol=1e-9)
    assert np.abs(g).max() > 1e-2  # nothing pins the Jacobian without regularisation


def test_predictor_does_not_depend_on_lambda_without_ridge_but_does_with_ridge(data):
    # Θ_λ = ΛΘΛ and Y = ΛY, so Θ_λ(x,X)_0 Θ_λ^{-1} Y = Θ(x,X)_0 Λ Λ^{-1} Θ^{-1} Λ^{-1} Y: Λ cancels.
    X, y, Xt, _ = data
    f1 = KernelRegressor(depth=2, activation="erf", lam=1.0).fit(X, y).decision_function(Xt)
    f2 = KernelRegressor(depth=2, activation="erf", lam=0.01).fit(X, y).decision_function(Xt)
    np.testing.assert_allclose(f1, f2, atol=1e-8)
    r1 = KernelRegressor(depth=2, activation="erf", lam=1.0, ridge=0.1).fit(X, y).decision_function(Xt)
    r2 = KernelRegressor(depth=2, activation="erf", lam=0.01, ridge=0.1).fit(X, y).decision_function(Xt)
    assert np.abs(r1 - r2).max() > 1e-4


def test_predictor_equals_a_dense_numpy_solve_of_eq4(data):
    X, y, Xt, _ = data
    lam = 0.3
    G = kernels.gram(X, depth=3, activation="erf", lam=lam)
    row0 = kernels.to_gram(kernels.jntk(Xt, X, depth=3, activation="erf", lam=lam))[::X.shape[1] + 1]
    ref = row0 @ np.linalg.solve(G, analysis.training_targets(y, X.shape[1] + 1))
    m = KernelRegressor(depth=3, activation="erf", lam=lam).fit(X, y, gram=G)
    np.testing.assert_allclose(m.decision_function(Xt), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_gradient_matches_central_finite_differences(data, lam):
    X, y, Xt, _ = data
    m = KernelRegressor(depth=2, activation="gelu", lam=lam).fit(X, y)
    grad = m.gradient(Xt)
    h = 1e-5
    fd = np.empty_like(grad)
    for a in range(X.shape[1]):
        e = np.zeros(X.shape[1])
        e[a] = h
        fd[:, a] = (m.decision_function(Xt + e) - m.decision_function(Xt - e)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7 * np.abs(grad).max())


def test_pgd_step_stays_on_sphere_and_lowers_the_margin(data):
    X, y, Xt, yt = data
    std = KernelRegressor(depth=2, activation="gelu", lam=0.0).fit(X, y)
    f, g = std.value_and_gradient(Xt)
    moved = analysis.pgd_perturb(Xt, yt, g, 1e-3)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-12)
    dist = np.linalg.norm(moved - Xt, axis=1)
    assert (dist <= 1e-3 * (1 + 1e-9)).all() and (dist > 0).all()  # the radial part is undone
    # first order: y f(x') − y f(x) ≈ −step·|P_T ∇f| ≤ 0 (P_T: tangent part; the radial part is undone)
    assert (yt * std.decision_function(moved) < yt * f).all()


def test_papers_attack_is_a_raw_loss_gradient_step_then_the_sphere(data):
    """§5.2: "one-step projected gradient descent on the analytic solution without Jacobian
    regularisation, and 0.01 and 0.1 refer to learning rates": x' = P(x + η(f − y)∇f), checked
    against the formula written out by hand; it raises the squared loss (to first order) and
    moves a point by η·|f − y|·|∇f| at most, not by a fixed length."""
    X, y, Xt, yt = data
    std = KernelRegressor(depth=2, activation="gelu", lam=0.0).fit(X, y)
    f, g = std.value_and_gradient(Xt)
    eta = 1e-3
    moved = analysis.pgd_perturb(Xt, yt, g, eta, attack="paper", value=f)
    raw = Xt + eta * (f - yt)[:, None] * g
    np.testing.assert_allclose(moved, raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               rtol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-12)
    step = np.linalg.norm(moved - Xt, axis=1)
    assert (step <= eta * np.abs(f - yt) * np.linalg.norm(g, axis=1) * (1 + 1e-9)).all()
    loss = 0.5 * (f - yt) ** 2
    grew = 0.5 * (std.decision_function(moved) - yt) ** 2 >= loss - 1e-15
    assert grew.all()
    # a different step than the normalised attack of the same size
    assert not np.allclose(moved, analysis.pgd_perturb(Xt, yt, g, eta))
    with pytest.raises(ValueError, match="needs the predictor's values"):
        analysis.pgd_perturb(Xt, yt, g, eta, attack="paper")
    with pytest.raises(ValueError, match="unknown attack"):
        analysis.pgd_perturb(Xt, yt, g, eta, attack="fgsm", value=f)


def test_eigenfeatures_sum_to_the_predictor_and_project_the_targets(data):
    X, y, Xt, _ = data
    lam = 0.2
    G = kernels.gram(X, depth=2, activation="erf", lam=lam)
    eig = solvers.eigh_dense(G)
    Y = analysis.training_targets(y, X.shape[1] + 1)
    m = KernelRegressor(depth=2, activation="erf", lam=lam).fit(X, y, gram=G)
    F = analysis.eigenfeatures(eig, Y, m.cross_row(Xt))
    assert F.shape == (Xt.shape[0], G.shape[0])
    np.testing.assert_allclose(F.sum(axis=1), m.decision_function(Xt), atol=1e-8)
    # at training points Θ_λ(x_i, X)_0 = G[i·q], so f_k(x_i) = (v_k v_kᵀ Y)_{i·q}
    Ftrain = analysis.eigenfeatures(eig, Y, m.cross_row(X))
    proj = eig.vectors * (eig.vectors.T @ Y)[None, :]
    np.testing.assert_allclose(Ftrain, proj[:: X.shape[1] + 1], atol=1e-9)
    acc = analysis.feature_accuracies(F, np.sign(F[:, -1]))
    assert acc.shape == (G.shape[0],) and acc[-1] == 1.0


def test_finite_time_predictions_match_matrix_exponential(data):
    X, y, Xt, _ = data
    lam = 0.5
    G = kernels.gram(X, depth=2, activation="gelu", lam=lam)
    Y = analysis.training_targets(y, X.shape[1] + 1)
    m = KernelRegressor(depth=2, activation="gelu", lam=lam).fit(X, y, gram=G)
    u0 = np.random.default_rng(3).normal(size=Y.shape) * 0.1
    f0t = np.random.default_rng(4).normal(size=Xt.shape[0]) * 0.1
    out = analysis.finite_time_predictions(solvers.eigh_dense(G), Y, [0.0, 0.7, 5.0, 1e9],
                                           cross_row=m.cross_row(Xt), u0_train=u0, u0_test=f0t)
    for i, t in enumerate([0.0, 0.7, 5.0]):
        E = scipy.linalg.expm(-G * t)
        np.testing.assert_allclose(out["train"][i], Y + E @ (u0 - Y), atol=1e-9)
        # test: f_t = f_0 + Θ(x,X)_0 Θ^{-1}(I − e^{−Θt})(Y − u0)
        ref = f0t + m.cross_row(Xt) @ np.linalg.solve(G, (np.eye(G.shape[0]) - E) @ (Y - u0))
        np.testing.assert_allclose(out["test"][i], ref, atol=1e-6)
    # t → ∞: the kernel-regression predictor shifted by the initial function's own regression
    ref_inf = f0t + m.cross_row(Xt) @ np.linalg.solve(G, Y - u0)
    np.testing.assert_allclose(out["test"][-1], ref_inf, atol=1e-6)


def test_one_vs_rest_targets_equal_separate_fits():
    X = _sphere(30, 5, 7)
    labels = np.argmax(X[:, :3], axis=1)
    T = np.where(labels[:, None] == np.arange(3)[None, :], 0.9, -0.1)
    Xt = _sphere(6, 5, 8)
    joint = KernelRegressor(depth=2, activation="erf", lam=0.1).fit(X, T)
    F = joint.decision_function(Xt)
    assert F.shape == (6, 3)
    for c in range(3):
        single = KernelRegressor(depth=2, activation="erf", lam=0.1).fit(X, T[:, c])
        np.testing.assert_allclose(F[:, c], single.decision_function(Xt), atol=1e-9)
    g = joint.gradient(Xt)
    assert g.shape == (6, 5, 3)
    assert joint.score(X, labels) == 1.0
    np.testing.assert_array_equal(joint.predict(Xt), np.argmax(F, axis=1))


def test_assumption8_interlacing_and_singular_inputs():
    X = _sphere(12, 3, 9)
    rows = analysis.assumption8(X, depths=[1, 3], activations=["erf"], progress=False)
    by = {(r.depth, r.kernel): r for r in rows}
    for depth in (1, 3):
        ntk, jntk = by[depth, "ntk"], by[depth, "jntk"]
        assert (ntk.n, jntk.n) == (12, 48)
        # the NTK Gram is a principal submatrix of the JNTK Gram (Cauchy interlacing)
        assert jntk.lambda_min <= ntk.lambda_min + ntk.tolerance
        assert jntk.lambda_max >= ntk.lambda_max - ntk.tolerance
        assert ntk.lambda_min == pytest.approx(np.linalg.eigvalsh(
            kernels.ntk(X, depth=depth, activation="erf"))[0], abs=ntk.tolerance)
    dup = np.vstack([X, X[:1]])
    rows = analysis.assumption8(dup, depths=[2], activations=["gelu"], progress=False)
    assert not any(r.positive for r in rows)  # a repeated point makes every Gram singular
    assert all(abs(r.lambda_min) <= 10 * r.tolerance for r in rows)


def test_bad_inputs_are_named(data):
    X, y, Xt, _ = data
    with pytest.raises(ValueError, match="rows"):
        KernelRegressor(depth=1, lam=1.0).fit(X, y[:-1])
    bad = X.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KernelRegressor(depth=1, lam=1.0).fit(bad, y)
    m = KernelRegressor(depth=1, lam=1.0).fit(X, y)
    with pytest.raises(ValueError, match="d0"):
        m.decision_function(Xt[:, :3])
    with pytest.raises(ValueError, match="shape"):
        KernelRegressor(depth=1, lam=1.0).fit(X, y, gram=np.eye(5))
    for lam in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="must be ≥ 0"):
            KernelRegressor(depth=1, lam=lam).fit(X, y)


def test_results_open_with_xarray(tmp_path):
    path = analysis.write_results(tmp_path / "r.zarr", {
        "eigenvalues": (np.arange(4.0), ["eig"]),
        "features": (np.ones((3, 4)), ["test", "eig"]),
    }, {"lam": 0.1, "note": np.float64(2.0)}, group="eigen_lam0.1")
    ds = xr.open_zarr(str(path), consolidated=False)
    assert ds["features"].dims == ("test", "eig")
    assert ds.attrs["lam"] == 0.1


# ---- the jobs, end to end on real Zarr stores -----------------------------------------------


def _write_store(path, X, y, depth, activation, lam, mode="dense", tile_points=7):
    return write_gram_store(path, X, y, depth=depth, activation=activation, lam=lam, mode=mode,
                            tile_points=tile_points)


@pytest.fixture(scope="module")
def npz_dataset(tmp_path_factory):
    X = _sphere(30, 3, 11)
    y = np.where(X[:, 0] > 0.1, 1.0, -1.0)
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, X=X, y=y)
    return path, X, y


@pytest.mark.parametrize("mode", ["dense", "fields"])
def test_solve_job_from_store_equals_direct_computation(tmp_path, npz_dataset, mode):
    from jntk_dist.workflows.solve import SolveJobConfig, run_solve
    from jntk_dist.workflows.config import load_config

    path, X, y = npz_dataset
    store_path = _write_store(tmp_path / "g.zarr", X, y, depth=2, activation="gelu", lam=0.1,
                              mode=mode)
    cfg = load_config({"store": str(store_path), "test_fraction": 0.3, "seed": 1,
                       "compute": {"block_size": 32}, "output": str(tmp_path / "out.zarr")},
                      SolveJobConfig)
    s = run_solve(cfg)
    assert s["lam"] == 0.1 and s["train_accuracy"] == 1.0 and s["relative_residual"] < 1e-8
    res = xr.open_zarr(str(tmp_path / "out.zarr"), group="solve", consolidated=False)
    train, test = res["train_index"].values, res["test_index"].values
    # This Gram is ill-conditioned (cond ≈ 1e10: 21 points on S², d0 = 3), so two float64 routes
    # to it (tiles from the store vs one direct Gram, entries equal to a few ulps) give
    # coefficients, and predictions, that agree only to about cond·eps. What must hold tightly:
    # the coefficients solve the directly computed system, and f_test is the directly computed
    # test rows times those coefficients (a matvec: rounding ∝ eps·|rows|·|coef|).
    G = kernels.gram(X[train], depth=2, activation="gelu", lam=0.1)
    Y = analysis.training_targets(y[train], X.shape[1] + 1)
    coef = res["coef"].values
    assert np.linalg.norm(G @ coef - Y) <= 1e-8 * np.linalg.norm(Y)
    direct = KernelRegressor(depth=2, activation="gelu", lam=0.1).fit(X[train], y[train])
    rows = direct.cross_row(X[test])
    magnitude = np.abs(rows) @ np.abs(coef)  # a dot product of n terms rounds to ≤ n·eps of it
    assert np.all(np.abs(res["f_test"].values - rows @ coef)
                  <= coef.size * np.finfo(float).eps * magnitude)
    assert np.array_equal(np.sign(res["f_test"].values), direct.predict(X[test]))


def test_eigen_and_eigenfeatures_jobs_from_a_dataset_file(tmp_path, npz_dataset):
    from jntk_dist.workflows.eigen import EigenJobConfig, run_eigen
    from jntk_dist.workflows.eigenfeatures import EigenfeaturesJobConfig, run_eigenfeatures
    from jntk_dist.workflows.config import load_config

    path, X, y = npz_dataset
    base = {"dataset": {"path": str(path)}, "kernel": {"depth": 2, "activation": "erf"},
            "test_fraction": 0.25, "output": str(tmp_path / "r.zarr")}
    s = run_eigen(load_config({**base, "lam": 0.5, "times": [0.0, 1.0, 1e12]}, EigenJobConfig))
    G = kernels.gram(X[xr.open_zarr(str(tmp_path / "r.zarr"), group="eigen_jntk",
                                    consolidated=False)["train_index"].values],
                     depth=2, activation="erf", lam=0.5)
    ref = np.linalg.eigvalsh(G)
    assert s["lambda_min"] == pytest.approx(ref[0], abs=s["tolerance"])
    assert s["positive_definite"] == bool(ref[0] > s["tolerance"])
    assert s["train_accuracy_vs_time"][-1] == 1.0  # t → ∞ interpolates
    assert (tmp_path / "r_eigen_jntk.png").exists()
    e = run_eigenfeatures(load_config({**base, "lams": [1.0, 0.01], "steps": [0.01, 0.1]},
                                      EigenfeaturesJobConfig), progress=False)
    assert set(e["runs"]) == {"lam_1", "lam_0.01", "standard"}
    # without ridge the λ > 0 predictors coincide (Λ cancels), the standard one differs
    assert e["runs"]["lam_1"]["predictor_test_accuracy"] == e["runs"]["lam_0.01"]["predictor_test_accuracy"]
    g = xr.open_zarr(str(tmp_path / "r.zarr"), group="eigenfeatures/lam_1", consolidated=False)
    n_train = e["n_train"]
    assert g["f_test"].shape == (e["n_test"], n_train * (X.shape[1] + 1))  # one f_i per eigenpair
    assert g["test_accuracy"].shape == (n_train * (X.shape[1] + 1),)
    assert (tmp_path / "r_eigenfeatures.png").exists()


def test_assumption8_job_writes_table_and_plot(tmp_path, npz_dataset):
    from jntk_dist.workflows.assumption8 import Assumption8JobConfig, run_assumption8
    from jntk_dist.workflows.config import load_config

    path, X, _ = npz_dataset
    cfg = load_config({"datasets": [{"dataset": {"path": str(path)}, "max_points": 10}],
                       "activations": ["gelu"], "depths": [1, 2],
                       "output": str(tmp_path / "a8.zarr")}, Assumption8JobConfig)
    rows = run_assumption8(cfg, progress=False)
    assert [(r["depth"], r["kernel"], r["n"]) for r in rows] == [
        (1, "ntk", 10), (1, "jntk", 40), (2, "ntk", 10), (2, "jntk", 40)]
    table = xr.open_zarr(str(tmp_path / "a8.zarr"), group="assumption8", consolidated=False)
    np.testing.assert_allclose(table["lambda_min"].values, [r["lambda_min"] for r in rows])
    assert (tmp_path / "a8_assumption8.png").exists()
    assert "| positive (adopted) |" in (tmp_path / "a8_assumption8.md").read_text()


def _outside_every_axes(fig, artist) -> bool:
    """Whether ``artist``'s drawn box overlaps no axes' box of ``fig``."""
    fig.canvas.draw()
    box = artist.get_window_extent()
    return not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_assumption8_figure_names_each_threshold_once_outside_the_data():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jntk_dist.analysis import RELATIVE, PositivityRule
    from jntk_dist.workflows.assumption8 import assumption8_figure

    rows = [{"dataset": ds, "activation": act, "kernel": kind, "depth": d, "n": n,
             "lambda_min": lm * d, "lambda_max": 10.0 * d}
            for ds in ("a", "b") for act in ("gelu", "erf") for d in (1, 2)
            for kind, n, lm in (("ntk", 10, 1e-3), ("jntk", 40, 1e-12))]
    for rule, thresholds in ((RELATIVE, 1), (PositivityRule(rule="float32_resolution"), 2)):
        fig = assumption8_figure(rows, rule)
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert len(labels) == len(set(labels)), labels
        assert sum("threshold" in t or "relative" in t for t in labels) == thresholds, labels
        assert not any(ax.get_legend() for ax in fig.axes)
        assert _outside_every_axes(fig, legend)
        assert all(ax.get_ylabel().startswith("$") for ax in fig.axes)  # mathtext, not λ_min
        plt.close(fig)


def test_eigen_plot_title_is_mathtext_and_t0_is_named_not_scored():
    import matplotlib.mathtext

    from jntk_dist.workflows.eigen import ODE_TITLE, accuracy_vs_time_text

    assert ODE_TITLE.startswith("$") and ODE_TITLE.endswith("$") and "\\Theta" in ODE_TITLE
    matplotlib.mathtext.MathTextParser("agg").parse(ODE_TITLE)  # raises on bad mathtext
    text = accuracy_vs_time_text([0.0, 1.0], [0.0, 0.75], [0.0, 0.5])
    assert "t = 0: f ≡ 0" in text and "t = 1: 0.750 / 0.500" in text
    assert "0.000" not in text  # f ≡ 0 has no accuracy to print


def test_solve_headline_reads_test_accuracy_against_the_majority_class():
    from jntk_dist.workflows.solve import majority_baseline

    base = majority_baseline(np.array([1.0, 1.0, -1.0]), np.array([1.0, -1.0, -1.0, -1.0]))
    assert base == {"majority_class": 1.0, "majority_class_test_accuracy": 0.25}
    assert majority_baseline(np.array([1.0]), np.zeros(0))["majority_class"] is None


def test_eigenfeatures_store_names_the_input_features(tmp_path):
    from jntk_dist.data import load_dataset
    from jntk_dist.workflows.config import load_config
    from jntk_dist.workflows.eigenfeatures import EigenfeaturesJobConfig, run_eigenfeatures

    spec = {"name": "fibonacci", "options": {"n": 16, "d": 3}}
    run_eigenfeatures(load_config({"dataset": spec, "kernel": {"depth": 2}, "lams": [1.0],
                                   "standard": True, "steps": [0.1], "test_fraction": 0.25,
                                   "output": str(tmp_path / "f.zarr")}, EigenfeaturesJobConfig),
                      progress=False)
    ds = xr.open_zarr(str(tmp_path / "f.zarr"), group="eigenfeatures", consolidated=False)
    names = load_dataset("fibonacci", n=16, d=3).feature_names
    assert "feature_name" in ds["pgd_gradient"].coords
    assert list(ds["feature_name"].values) == list(names) and len(names) == 3
    np.testing.assert_array_equal(ds["feature"].values, [0, 1, 2])
    lam = xr.open_zarr(str(tmp_path / "f.zarr"), group="eigenfeatures/lam_1",
                       consolidated=False)
    assert lam.attrs["setting_name"] == "λ = 1"


def test_write_results_accepts_empty_arrays(tmp_path):
    """An empty test split (test_fraction 0, the eigen job's default) must be writable."""
    import zarr

    from jntk_dist.analysis import write_results

    write_results(tmp_path / "r.zarr", {"test_index": (np.zeros(0, dtype=np.int64), ("test",)),
                                        "lam": (np.ones(3), ("k",))}, {"note": "x"})
    g = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert g["test_index"].shape == (0,) and g["lam"][...].tolist() == [1.0, 1.0, 1.0]
