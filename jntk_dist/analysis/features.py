"""Eigenfeatures and robustness (Figs. 4/5, B9–B13), and the finite-time dynamics of the
linearised network (the paper's ODE)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..solvers.results import EigenResult
from .regression import accuracy

__all__ = ["eigenfeatures", "feature_accuracies", "pgd_perturb", "finite_time_predictions"]


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


def pgd_perturb(X: Any, y: Any, grad: np.ndarray, step: float) -> np.ndarray:
    """One projected-gradient step against the margin y·f: x' = P(x − step·y·∇f/|∇f|),
    P the projection onto the unit sphere. Rows with ∇f = 0 stay put."""
    X = np.asarray(X, dtype=np.float64)
    y = np.sign(np.asarray(y, dtype=np.float64))
    g = np.asarray(grad, dtype=np.float64)
    if g.shape != X.shape:
        raise ValueError(f"gradient shape {g.shape} does not match inputs {X.shape}")
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    direction = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
    moved = X - float(step) * y[:, None] * direction
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


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
