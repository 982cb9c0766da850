"""The kernel-regression predictor of eq. (4) / Theorem 10 over a dense Gram.

f_ntk(x) = Θ_λ(x, X)_{0,:} (Θ_λ(X, X) + μI)^{-1} Y,  Y = (y_1, 0…0, y_2, 0…0, …),
with its exact input gradient. λ = 0 is the standard NTK predictor on the 00 Gram.
For λ > 0 and μ = 0, Λ cancels: f_ntk = Θ(x,X)_{0,:} Θ(X,X)^{-1} Y does not depend on λ, it
interpolates y and its gradient vanishes at every training point (the Jacobian targets are 0).

The gradient: Θ_λ(x, x_j)_{0β} = Θ(x, x_j)_{0β} s_β with s = (1, √λ, …), and ∂/∂x_α Θ_{0β} = Θ_{αβ}
(the block identities of docs/design.md), so ∇_α f(x) = Σ_{j,β} Θ(x, x_j)_{αβ} s_β coef_{jβ}.
All blocks come from :func:`jntk_dist.kernels.jntk`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import kernels
from ..operators.dask_arrays import DEFAULT_BLOCK, as_dask, scheduler
from ..solvers.cholesky import add_ridge, cholesky_solve

__all__ = ["KernelRegressor", "training_targets", "accuracy"]

log = logging.getLogger(__name__)

BLOCK_BYTES = 2 ** 27  # cross-kernel blocks held at once when predicting (128 MiB)
DENSE_GRAM_MAX = 24_000  # largest training Gram side computed in memory (4.3 GiB in float64)


def _as_inputs(X: Any, name: str, d0: int | None = None) -> np.ndarray:
    import torch

    arr = np.asarray(X, dtype=np.float64)
    kernels.validate_inputs(torch.as_tensor(arr), name, d0=d0)
    return arr


def training_targets(y: np.ndarray, q: int) -> np.ndarray:
    """Point-major targets of length n·q: y_i in slot i·q, zeros in the Jacobian slots.

    ``y`` is (n,) or (n, c) (one column per one-vs-rest output); the result is (n·q,) or (n·q, c).
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2):
        raise ValueError(f"targets must be (n,) or (n, c), got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("targets contain NaN/inf")
    return kernels.point_major_targets(y, q)


def accuracy(f: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Classification accuracy: sign(f) vs ±1 labels (f (n,) or (n, M) → per column), or argmax
    of one-vs-rest outputs f (n, c) vs integer class indices y (n,) when ``y`` is integer."""
    f, y = np.asarray(f), np.asarray(y)
    if np.issubdtype(y.dtype, np.integer) and f.ndim == 2 and f.shape[0] == y.shape[0]:
        return float(np.mean(np.argmax(f, axis=1) == y))
    hit = np.sign(f) == (np.sign(y)[:, None] if f.ndim == 2 else np.sign(y))
    return hit.mean(axis=0)


class KernelRegressor:
    """Kernel regression with Θ_λ (eq. 4): ``fit`` on (X, y), ``decision_function`` / ``gradient``
    / ``predict`` on new inputs.

    ``lam`` > 0 uses the JNTK Gram Θ_λ (N(d0+1) square); ``lam`` = 0 the plain NTK Θ_00 (N square,
    any activation for prediction; gradients need a smooth one). ``ridge`` μ is added to the
    diagonal. The solve is the blockwise Dask Cholesky of :func:`jntk_dist.solvers.cholesky_solve`.
    """

    def __init__(self, depth: int, activation: str = "gelu", lam: float = 1.0, ridge: float = 0.0,
                 block_size: int = DEFAULT_BLOCK, scheduler: str = "auto"):
        self.depth = depth
        self.activation = activation
        self.lam = lam
        self.ridge = ridge
        self.block_size = block_size
        self.scheduler = scheduler

    # -- fitting -----------------------------------------------------------------------
    @property
    def q_(self) -> int:
        """Entries per training point in the Gram: d0+1 for λ > 0, 1 for the plain NTK."""
        return self.X_train_.shape[1] + 1 if self.lam > 0 else 1

    def _scale(self) -> np.ndarray:
        """Λ's diagonal for one training point, (1, √λ, …) of length q."""
        return kernels.LambdaWeights.of(self.lam).point(self.q_)

    def train_gram(self, X: np.ndarray) -> np.ndarray:
        """The dense training Gram this regressor solves with (small N; stores are used otherwise)."""
        size = X.shape[0] * (X.shape[1] + 1 if self.lam > 0 else 1)
        if size > DENSE_GRAM_MAX:
            raise ValueError(f"the training Gram would be {size}×{size} ({8 * size * size / 2**30:.1f} "
                             f"GiB): too large to compute in memory; write a Gram store with "
                             "`jntk gram` and pass it (config key 'store')")
        if self.lam > 0:
            return kernels.gram(X, depth=self.depth, activation=self.activation, lam=self.lam)
        return kernels.ntk(X, depth=self.depth, activation=self.activation)

    def fit(self, X: Any, y: Any, gram: Any = None) -> "KernelRegressor":
        """Solve (Θ_λ(X,X) + μI) coef = Y. ``gram`` (numpy, dask, Zarr array or path) is the
        training Gram for this λ (Θ_λ, point-major; Θ_00 for λ = 0) if already computed."""
        kernels.check_lam(self.lam)
        self.X_train_ = _as_inputs(X, "X (train)")
        y = np.asarray(y, dtype=np.float64)
        if y.shape[0] != self.X_train_.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows but X has {self.X_train_.shape[0]}")
        self.y_train_ = y
        targets = training_targets(y, self.q_)
        if gram is None:
            gram = self.train_gram(self.X_train_)
        size = self.X_train_.shape[0] * self.q_
        shape = tuple(getattr(gram, "shape", ())) if not isinstance(gram, (str, Path)) else None
        if shape is not None and shape != (size, size):
            raise ValueError(f"training Gram has shape {shape}; expected ({size}, {size}) for "
                             f"{self.X_train_.shape[0]} points with "
                             f"{'d0+1' if self.lam > 0 else '1'} = {self.q_} entries each")
        self.coef_ = cholesky_solve(gram, targets, ridge=self.ridge,
                                           block_size=self.block_size,
                                           scheduler_name=self.scheduler)  # type: ignore[arg-type]
        # one more pass over the Gram: how well the float64 solve satisfies its equations
        g = add_ridge(as_dask(gram), self.ridge)
        with scheduler(self.scheduler):  # type: ignore[arg-type]
            resid = np.asarray((g @ self.coef_).compute()) - targets
        self.residual_ = float(np.linalg.norm(resid) / max(np.linalg.norm(targets), 1e-300))
        if self.residual_ > 1e-6:
            log.warning("kernel regression: relative residual %.2e of the solve; the Gram is "
                        "ill-conditioned (check λ_min with `jntk eigen`, or add a ridge)",
                        self.residual_)
        return self

    # -- prediction --------------------------------------------------------------------
    def _chunks(self, Xt: np.ndarray) -> Iterator[slice]:
        n, p = self.X_train_.shape[0], self.X_train_.shape[1] + 1
        rows = max(1, BLOCK_BYTES // (8 * n * p * p))
        for start in range(0, Xt.shape[0], rows):
            yield slice(start, min(start + rows, Xt.shape[0]))

    def _coef_blocks(self) -> np.ndarray:
        """coef as (n, q, c) with the Λ scaling folded in."""
        c = self.coef_.reshape(self.X_train_.shape[0], self.q_, -1)
        return c * self._scale()[None, :, None]

    def cross_row(self, Xt: Any) -> np.ndarray:
        """Θ_λ(x, X)_{0,:} for each test point: (m, n·q), the row f_ntk contracts with coef."""
        Xt = _as_inputs(Xt, "X (test)", d0=self.X_train_.shape[1])
        if self.lam == 0:
            return kernels.ntk(Xt, self.X_train_, depth=self.depth, activation=self.activation)
        out = np.empty((Xt.shape[0], self.X_train_.shape[0], self.q_))
        for sl in self._chunks(Xt):
            blocks = kernels.jntk(Xt[sl], self.X_train_, depth=self.depth,
                                  activation=self.activation)
            out[sl] = blocks[:, :, 0, :] * self._scale()
        return out.reshape(Xt.shape[0], -1)

    def decision_function(self, Xt: Any) -> np.ndarray:
        """f_ntk(x): (m,) for one output, (m, c) for one-vs-rest outputs."""
        return self.cross_row(Xt) @ self.coef_

    def value_and_gradient(self, Xt: Any) -> tuple[np.ndarray, np.ndarray]:
        """f_ntk(x) (m[, c]) and ∇_x f_ntk(x) (m, d0[, c]) in the ambient R^{d0}."""
        Xt = _as_inputs(Xt, "X (test)", d0=self.X_train_.shape[1])
        coef = self._coef_blocks()  # (n, q, c)
        q, c = self.q_, coef.shape[-1]
        value = np.empty((Xt.shape[0], c))
        grad = np.empty((Xt.shape[0], Xt.shape[1], c))
        for sl in self._chunks(Xt):
            blocks = kernels.jntk(Xt[sl], self.X_train_, depth=self.depth,
                                  activation=self.activation)[:, :, :, :q]
            value[sl] = np.einsum("mnb,nbc->mc", blocks[:, :, 0, :], coef)
            grad[sl] = np.einsum("mnab,nbc->mac", blocks[:, :, 1:, :], coef)
        if self.coef_.ndim == 1:
            return value[:, 0], grad[..., 0]
        return value, grad

    def gradient(self, Xt: Any) -> np.ndarray:
        """∇_x f_ntk(x), (m, d0) (or (m, d0, c) for several outputs)."""
        return self.value_and_gradient(Xt)[1]

    def predict(self, Xt: Any) -> np.ndarray:
        """±1 labels (sign of f) for one output; class indices (argmax) for one-vs-rest outputs."""
        f = self.decision_function(Xt)
        return np.argmax(f, axis=1) if f.ndim == 2 else np.where(f >= 0, 1.0, -1.0)

    def score(self, Xt: Any, y: Any) -> float:
        """Accuracy: ±1 labels, or integer class indices for one-vs-rest outputs."""
        return float(accuracy(self.decision_function(Xt), np.asarray(y)))


# ---- Assumption 8 ------------------------------------------------------------------------
