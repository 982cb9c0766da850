"""The paper's kernel analyses: the step "solver → analysis" of the data path.

* :class:`KernelRegressor` — the predictor of eq. (4) / Theorem 10,
  f_ntk(x) = Θ_λ(x, X)_{0,:} (Θ_λ(X, X) + μI)^{-1} Y,  Y = (y_1, 0…0, y_2, 0…0, …),
  with its exact input gradient. λ = 0 is the standard NTK predictor on the 00 Gram.
  For λ > 0 and μ = 0, Λ cancels: f_ntk = Θ(x,X)_{0,:} Θ(X,X)^{-1} Y does not depend on λ, it
  interpolates y and its gradient vanishes at every training point (the Jacobian targets are 0).
* :func:`assumption8` — λ_min of the NTK (00) and JNTK Gram vs depth (Fig. 6 / B7 / B8), with the
  positivity tolerance τ = n·eps·λ_max of :func:`jntk_dist.linalg.positivity_tolerance`.
* :func:`eigenfeatures` — f_i(x) = Θ_λ(x,X)_{0,:} λ_i⁻¹ v_i v_iᵀ Y for every eigenpair (Figs. 4/5),
  :func:`pgd_perturb` — one projected-gradient step on the unit sphere against the standard NTK
  predictor (no Jacobian regularisation), and :func:`feature_accuracies`.
* :func:`finite_time_predictions` — u(t) = Y + e^{−Θt}(u₀ − Y) on train points and the matching
  test predictions, from an eigendecomposition (the paper's linear ODE).

The gradient: Θ_λ(x, x_j)_{0β} = Θ(x, x_j)_{0β} s_β with s = (1, √λ, …), and ∂/∂x_α Θ_{0β} = Θ_{αβ}
(block identities of DESIGN.md §2), so ∇_α f(x) = Σ_{j,β} Θ(x, x_j)_{αβ} s_β coef_{jβ}. All blocks
come from :func:`jntk_dist.kernels.jntk`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import kernels, linalg
from .linalg import EigenResult, positivity_tolerance

__all__ = [
    "KernelRegressor",
    "training_targets",
    "accuracy",
    "assumption8",
    "Assumption8Row",
    "structured_extremes",
    "eigenfeatures",
    "feature_accuracies",
    "pgd_perturb",
    "finite_time_predictions",
    "write_results",
]

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
    out = np.zeros((y.shape[0], q) + y.shape[1:], dtype=np.float64)
    out[:, 0] = y
    return out.reshape((y.shape[0] * q,) + y.shape[1:])


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
    diagonal. The solve is the blockwise Dask Cholesky of :func:`jntk_dist.linalg.cholesky_solve`.
    """

    def __init__(self, depth: int, activation: str = "gelu", lam: float = 1.0, ridge: float = 0.0,
                 block_size: int = linalg.DEFAULT_BLOCK, scheduler: str = "auto"):
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
        s = np.full(self.q_, math.sqrt(self.lam))
        s[0] = 1.0
        return s

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
        lam = float(self.lam)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam (λ) must be ≥ 0, got {self.lam}")
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
        self.coef_ = linalg.cholesky_solve(gram, targets, ridge=self.ridge,
                                           block_size=self.block_size,
                                           scheduler_name=self.scheduler)  # type: ignore[arg-type]
        # one more pass over the Gram: how well the float64 solve satisfies its equations
        g = linalg.add_ridge(linalg.as_dask(gram), self.ridge)
        with linalg.scheduler(self.scheduler):  # type: ignore[arg-type]
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


@dataclass
class Assumption8Row:
    """λ_min / λ_max of one Gram matrix and the verdict under τ = n·eps·λ_max."""

    dataset: str
    activation: str
    depth: int
    kernel: str  # "ntk" (00 only) or "jntk"
    n: int  # matrix size
    lambda_min: float
    lambda_max: float
    tolerance: float
    method: str
    lambda_min_residual: float = 0.0  # |Av − θv| of a matrix-free Ritz value (0: dense eigensolver)

    @property
    def positive(self) -> bool:
        """λ_min > τ; for a Ritz value θ ≥ λ_min, decided on the lower bound θ − |Av − θv|."""
        return self.lambda_min - self.lambda_min_residual > self.tolerance

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["positive"] = self.positive
        return d


def _extremes(gram: np.ndarray, max_dense: int) -> tuple[float, float, str]:
    if gram.shape[0] <= max_dense:
        res = linalg.eigh_dense(gram, vectors=False)
    else:
        res = linalg.smallest_eigenvalue(gram)
    return res.lambda_min, res.lambda_max, res.method


def structured_extremes(X: np.ndarray, depth: int, activation: str, tol: float = 1e-8,
                        preconditioner: str = "two_level", maxiter: int | None = None,
                        memory_mb: float = 512.0, fields: str = "auto"
                        ) -> tuple[float, float, float, str]:
    """λ_min, λ_max of the JNTK Gram Θ(X, X) without forming it (the matrix-free operator of
    :mod:`jntk_dist.structured`): λ_max by Lanczos, λ_min by shift-invert with inner PCG and
    shift τ = n·eps·λ_max (:func:`jntk_dist.solvers.shift_invert_eigs`) to the residual
    ``tol``·λ_max (λ_max to the relative Lanczos tolerance max(``tol``, 1e-6)). ``fields``: "memory", "recompute" or "auto" (as ``structured.fields`` of the
    solve/eigen jobs). Returns (θ, |Av − θv|, λ_max, method): the Ritz value θ ≥ λ_min and an
    eigenvalue lies within the residual of θ, so θ − residual > τ is the positivity test (the
    rule of ``jntk eigen --structured``)."""
    from .solvers import shift_invert_eigs, structured_eigs
    from .structured import structured_operator

    mode = fields  # auto: the 8 n² fields held in memory if they fit memory_mb, else recomputed
    if mode == "auto":
        mode = "memory" if 8 * 8 * X.shape[0] ** 2 <= memory_mb * 2**20 else "recompute"
    op = structured_operator(X, depth=depth, activation=activation, kind="jntk", mode=mode,
                             memory_mb=memory_mb, device="cpu")
    n = op.shape[0]
    # λ_max only sets τ (and the reported λ_min/λ_max): 6 digits are plenty, and a tight Lanczos
    # tolerance stalls on the clustered top of shallow JNTKs (sonar, L = 1: minutes at 1e-10)
    top = structured_eigs(op, k=1, which="LA", method="lanczos", tol=max(tol, 1e-6),
                          maxiter=maxiter, progress=False, return_vectors=False)
    hi = float(top.values[-1])
    tau = positivity_tolerance(hi, n)
    bottom = shift_invert_eigs(op, k=1, shift=tau, preconditioner=preconditioner, tol=tol * hi,
                               maxiter=maxiter or 200, progress=False, return_vectors=False)
    converged = "" if bottom.info.get("converged") else ", not converged"
    method = (f"structured: lanczos λ_max; shift-invert[{bottom.info.get('preconditioner')}] "
              f"λ_min ({bottom.n_products} products, {bottom.info.get('outer_iterations')} outer"
              f"{converged})")
    return float(bottom.values[0]), float(bottom.residuals[0]), hi, method


def assumption8(X: Any, depths: Iterable[int], activations: Sequence[str],
                dataset: str = "data", kernels_: Sequence[str] = ("ntk", "jntk"),
                max_dense: int = 12000, progress: bool = True,
                structured: Any = None) -> list[Assumption8Row]:
    """λ_min of the NTK (00) and JNTK (λ = 1, unscaled Θ) Gram of X for each activation and depth.

    ``structured``: a :class:`jntk_dist.commands.solve.StructuredSpec` (or None); when enabled,
    the JNTK's extremes come from :func:`structured_extremes` (its ``tol``, ``preconditioner``,
    ``maxiter``, ``memory_mb``) instead of a dense Gram; the n×n NTK Gram stays dense."""
    from tqdm.auto import tqdm

    X = _as_inputs(X, "X")
    unknown = set(kernels_) - {"ntk", "jntk"}
    if unknown:
        raise ValueError(f"kernels must be among ('ntk', 'jntk'), got {sorted(unknown)}")
    use_structured = structured is not None and structured.enabled
    jobs = [(a, int(L), k) for a in activations for L in depths for k in kernels_]
    rows = []
    for act, depth, kind in tqdm(jobs, desc="assumption 8", disable=not progress):
        residual = 0.0
        if kind == "jntk" and use_structured:
            lo, residual, hi, method = structured_extremes(
                X, depth, act, tol=structured.tol, preconditioner=structured.preconditioner,
                maxiter=structured.maxiter, memory_mb=structured.memory_mb,
                fields=structured.fields)
            n = X.shape[0] * (X.shape[1] + 1)
        else:
            if kind == "ntk":
                gram = kernels.ntk(X, depth=depth, activation=act)
            else:
                gram = kernels.gram(X, depth=depth, activation=act)
            lo, hi, method = _extremes(gram, max_dense)
            n = gram.shape[0]
            del gram
        rows.append(Assumption8Row(dataset, act, depth, kind, n, lo, hi,
                                   positivity_tolerance(hi, n), method, residual))
    return rows


# ---- eigenfeatures and robustness --------------------------------------------------------


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


def write_results(path: str | Path, arrays: dict[str, tuple[np.ndarray, Sequence[str]]],
                  attrs: dict[str, Any], group: str | None = None, overwrite: bool = True,
                  storage_options: dict[str, Any] | None = None) -> Path | str:
    """Write arrays (each with its dimension names, for ``xarray.open_zarr``) and attributes to a
    Zarr group (``path``, or its member ``group``); returns the group's path.

    ``path`` is a local path or an fsspec URL (``storage_options`` go to fsspec)."""
    from .store import child_location, is_url, open_group

    path = path if is_url(path) else Path(path)
    root = open_group(path, "a", storage_options)
    g = root.require_group(group) if group else root
    for name, (arr, dims) in arrays.items():
        arr = np.asarray(arr)
        if arr.ndim != len(dims):
            raise ValueError(f"array {name!r} has {arr.ndim} dims but names {list(dims)} were given")
        if overwrite and name in g:
            del g[name]
        z = g.create_array(name, shape=arr.shape, dtype=arr.dtype,
                           chunks=arr.shape if arr.size else (1,) * arr.ndim,
                           dimension_names=list(dims))
        z[...] = arr
    g.attrs.update(_jsonable(attrs))
    return child_location(path, group) if group else path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
