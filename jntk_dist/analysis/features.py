"""Eigenfeatures and robustness (Figs. 4/5, B9–B13), and the finite-time dynamics of the
linearised network (the paper's ODE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..solvers.results import EigenResult
from .regression import accuracy

__all__ = ["eigenfeatures", "feature_accuracies", "pgd_perturb", "ATTACKS",
           "finite_time_predictions",
           "AccuracyRobustness", "accuracy_robustness", "pearson", "bootstrap_less_correlated"]


def eigenfeatures(eig: EigenResult, targets: np.ndarray, cross_row: np.ndarray) -> np.ndarray:
    """f_i(x) = Θ_λ(x,X)_{0,:} λ_i⁻¹ v_i v_iᵀ Y for every eigenpair: (m, M), columns follow
    ``eig.values``. Their sum over i is f_ntk(x) (exactly, for a PD Gram)."""
    if eig.vectors is None:
        raise ValueError("eigenfeatures need eigenvectors (eigh with vectors=True)")
    V, w = eig.vectors, eig.values[: eig.vectors.shape[1]]
    coeff = (V.T @ targets) / w
    return (cross_row @ V) * coeff[None, :]


def feature_accuracies(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy of sign(f_i) against ±1 labels, per eigenfeature column."""
    return np.asarray(accuracy(features, y), dtype=np.float64)


ATTACKS = ("paper", "normalised")
"""The one-step attacks of :func:`pgd_perturb`: ``paper`` (§5.2, l.217: a gradient step of the
standard predictor's loss with the step as learning rate) and ``normalised`` (a step of fixed
length along the normalised margin gradient)."""


def pgd_perturb(X: Any, y: Any, grad: np.ndarray, step: float, attack: str = "normalised",
                value: np.ndarray | None = None) -> np.ndarray:
    """One projected-gradient step on the test inputs, P the projection onto the unit sphere.

    ``attack="paper"`` — "one-step projected gradient descent on the analytic solution without
    Jacobian regularisation, and 0.01 and 0.1 refer to learning rates" (§5.2, l.217): a raw
    gradient step that raises the squared loss ℓ(x) = ½(f(x) − y)² of the standard predictor f,
    x' = P(x + step·∇ℓ(x)) = P(x + step·(f(x) − y)·∇f(x)); needs ``value`` = f(X).
    ``attack="normalised"`` — x' = P(x − step·y·∇f/|∇f|): a step of length ``step`` against the
    margin y·f, whatever the gradient's size. Rows with ∇f = 0 stay put."""
    X = np.asarray(X, dtype=np.float64)
    y = np.sign(np.asarray(y, dtype=np.float64))
    g = np.asarray(grad, dtype=np.float64)
    if g.shape != X.shape:
        raise ValueError(f"gradient shape {g.shape} does not match inputs {X.shape}")
    if attack == "paper":
        if value is None:
            raise ValueError("the paper's attack needs the predictor's values f(X) (value=)")
        f = np.asarray(value, dtype=np.float64).reshape(-1)
        moved = X + float(step) * (f - y)[:, None] * g
    elif attack == "normalised":
        norm = np.linalg.norm(g, axis=1, keepdims=True)
        direction = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
        moved = X - float(step) * y[:, None] * direction
    else:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


# ---- accuracy against robustness (Figs. 4/5) ----------------------------------------------


@dataclass(frozen=True)
class AccuracyRobustness:
    """How accuracy and robustness of a set of eigenfeatures relate (§5.2, l.217–219).

    ``r``: Pearson correlation of (clean accuracy a_i, perturbed accuracy b_i) — what Fig. 5's
    fitted-Gaussian ellipses show; ``q_accurate``: among the most accurate features (top
    ``decile`` of a_i, ties included) the fraction with b_i < a_i − ``margin`` ("highly accurate
    but less robust"); ``q_robust``: among the most robust (top decile of b_i) the fraction with
    a_i < b_i − margin ("highly robust but less accurate")."""

    n: int
    r: float
    q_accurate: float
    q_robust: float


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    da = a - a.mean(axis=-1, keepdims=True)
    db = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((da * da).sum(axis=-1) * (db * db).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (da * db).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def _top(values: np.ndarray, decile: float) -> np.ndarray:
    """Indices of the top ``decile`` of ``values`` (at least one; ties with the last included)."""
    k = max(1, int(np.ceil(decile * values.size)))
    cut = np.sort(values)[::-1][k - 1]
    return np.flatnonzero(values >= cut)


def accuracy_robustness(clean: Any, perturbed: Any, decile: float = 0.1,
                        margin: float = 0.1) -> AccuracyRobustness:
    """The statistics of :class:`AccuracyRobustness` for per-feature accuracies ``clean`` (a_i)
    and ``perturbed`` (b_i, after the perturbation)."""
    a = np.asarray(clean, dtype=np.float64).ravel()
    b = np.asarray(perturbed, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"clean and perturbed accuracies must be non-empty and of one shape, got "
                         f"{a.shape} and {b.shape}")
    if not 0 < decile <= 1:
        raise ValueError(f"decile must be in (0, 1], got {decile}")
    acc, rob = _top(a, decile), _top(b, decile)
    return AccuracyRobustness(int(a.size), float(pearson(a, b)),
                              float(np.mean(b[acc] < a[acc] - margin)),
                              float(np.mean(a[rob] < b[rob] - margin)))


def bootstrap_less_correlated(base: tuple[Any, Any], others: Sequence[tuple[Any, Any]],
                              n_boot: int = 2000, seed: int = 0) -> float:
    """One-sided bootstrap p-value of "Pearson r of ``base`` < min of the r of ``others``" (each a
    pair of per-feature accuracies, resampled independently over its features): the fraction of
    resamples (plus one, over n_boot + 1) in which r_base ≥ min r_other."""
    rng = np.random.default_rng(seed)

    def resampled(pair: tuple[Any, Any]) -> np.ndarray:
        a, b = (np.asarray(v, dtype=np.float64).ravel() for v in pair)
        idx = rng.integers(0, a.size, size=(n_boot, a.size))
        return pearson(a[idx], b[idx])

    r_base = resampled(base)
    r_min = np.min(np.stack([resampled(p) for p in others]), axis=0)
    hits = np.sum(~(r_base < r_min))  # NaN (a constant resample) counts against the claim
    return float((hits + 1) / (n_boot + 1))


# ---- finite-time predictions -------------------------------------------------------------


def finite_time_predictions(eig: EigenResult, targets: np.ndarray, times: Sequence[float],
                            cross_row: np.ndarray | None = None,
                            u0_train: np.ndarray | None = None,
                            u0_test: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Solutions of the linear ODE du/dt = −Θ(u − Y) at the given times (t in the ODE's units).

    train: u(t) = Y + V e^{−Λt} Vᵀ (u₀ − Y), shape (T, n·q).
    test:  f_t(x) = f_0(x) + Θ(x,X)_{0,:} V diag((1 − e^{−λ_i t})/λ_i) Vᵀ (Y − u₀), shape (T, m).
    u₀ defaults to 0 (the mean network at initialisation). Eigenvalues ≤ 0 contribute
    t·(Y − u₀) along their eigenvector (the λ → 0 limit), never a blow-up.
    """
    if eig.vectors is None:
        raise ValueError("finite-time predictions need eigenvectors")
    V, w = eig.vectors, eig.values[: eig.vectors.shape[1]]
    Y = np.asarray(targets, dtype=np.float64)
    u0 = np.zeros_like(Y) if u0_train is None else np.asarray(u0_train, dtype=np.float64)
    r0 = V.T @ (u0 - Y)
    w = w.reshape((-1,) + (1,) * (Y.ndim - 1))  # broadcast over one-vs-rest columns
    times = np.asarray(list(times), dtype=np.float64)
    if (times < 0).any():
        raise ValueError(f"times must be ≥ 0, got {times.tolist()}")
    train = np.stack([Y + V @ (np.exp(-w * t) * r0) for t in times])
    out = {"times": times, "train": train}
    if cross_row is not None:
        f0 = np.zeros(cross_row.shape[0]) if u0_test is None else np.asarray(u0_test)
        CV = cross_row @ V
        pos = w > 0
        test = []
        for t in times:
            weight = np.where(pos, -np.expm1(-np.where(pos, w, 0) * t) / np.where(pos, w, 1), t)
            test.append(f0 - CV @ (weight * r0))
        out["test"] = np.stack(test)
    return out


# ---- results ----------------------------------------------------------------------------
