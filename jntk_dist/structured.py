"""Matrix-free structured Gram operators for Θ_λ(X1, X2) and Σ^(L)(X1, X2).

Every (d0+1)×(d0+1) block of the Jacobian kernels is a scaled identity plus outer products of
x and x', built from the 8 scalar fields of :mod:`jntk_dist.kernels` (DESIGN.md §2).  With the
point-major vector v = (u_j, w_j) (u_j = v_j0, w_j = v_jβ) the product K v needs only

    G = X1 Wᵀ  (G_ij = <x_i, w_j>),      s_j = <x'_j, w_j>,

    (Kv)_i0 = (κ u)_i + Σ_j κ_b,ij G_ij + 2 (κ_c s)_i
    (Kv)_iα = x_iα [2 (κ_a u)_i + 2 Σ_j κ_ab,ij G_ij + 4 (κ_ac s)_i]
              + (κ_b (W + u∘X2))_iα + 2 (κ_bc (s∘X2))_iα + ((κ_bb ∘ G) X2)_iα

four N×N×d0 matrix products, O(N² d0) flops per column instead of the O(N² d0²) of the dense
Gram, and never more than one row tile of fields in memory.  Θ_λ = ΛΘΛ scales the Jacobian parts
by √λ on the way in and out.

The fields come from a *field source*: the 8 arrays in memory, any object with a
``fields_tile(rows, cols)`` accessor (e.g. a fields store), or :func:`jntk_dist.kernels.fields`
recomputed tile by tile on every product (bounded memory, any N).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from . import kernels
from .kernels import FIELD_NAMES, KernelFields

__all__ = [
    "FieldSource",
    "InMemoryFields",
    "RecomputedFields",
    "ArrayFields",
    "AccessorFields",
    "StructuredKernel",
    "structured_operator",
    "structured_predict",
    "RayStructuredKernel",
    "DaskStructuredKernel",
]

Tensor = torch.Tensor
_K, _KA, _KB, _KC, _KAB, _KAC, _KBB, _KBC = range(8)


# ---- field sources ----------------------------------------------------------------------


class FieldSource(Protocol):
    """Row tiles of the 8 fields of a kernel between two point sets (n1, n2)."""

    shape: tuple[int, int]

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        """Fields of rows × cols as one (8, r, c) tensor (FIELD_NAMES order)."""

    def diagonal(self) -> Tensor:
        """(8, n) fields of the pairs (x_i, x_i) (square sources only)."""


class InMemoryFields:
    """The 8 fields held as one (8, n1, n2) tensor."""

    def __init__(self, stacked: Any, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        if isinstance(stacked, KernelFields):
            stacked = stacked.stack()
        elif isinstance(stacked, dict):
            stacked = np.stack([np.asarray(stacked[n]) for n in FIELD_NAMES])
        t = torch.as_tensor(stacked).to(dtype=dtype, device=device)
        if t.ndim != 3 or t.shape[0] != len(FIELD_NAMES):
            raise ValueError(f"fields must have shape (8, n1, n2) in order {FIELD_NAMES}, "
                             f"got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("fields contain NaN/inf values")
        self.stacked = t
        self.shape = (t.shape[1], t.shape[2])

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        return self.stacked[:, rows] if cols is None else self.stacked[:, rows, cols]

    def diagonal(self) -> Tensor:
        return torch.diagonal(self.stacked, dim1=1, dim2=2)


class _TiledDiagonal:
    """``diagonal()`` of a tiled field source: (8, n) diagonal fields, read block by block."""

    shape: tuple[int, int]

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        raise NotImplementedError

    def diagonal(self, block: int = 256) -> Tensor:
        parts = []
        for start in range(0, self.shape[0], block):
            sl = slice(start, min(start + block, self.shape[0]))
            parts.append(torch.diagonal(self.tile(sl, sl), dim1=1, dim2=2))
        return torch.cat(parts, dim=1)


class RecomputedFields(_TiledDiagonal):
    """Fields recomputed by :func:`kernels.fields` for each requested tile (nothing is stored)."""

    def __init__(self, x1: Tensor, x2: Tensor | None, *, depth: int,
                 activation: str = "gelu", kind: str = "jntk") -> None:
        self.x1, self.x2 = x1, (x1 if x2 is None else x2)
        self.depth, self.activation, self.kind = depth, activation, kind
        self.shape = (self.x1.shape[0], self.x2.shape[0])

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        x2 = self.x2 if cols is None else self.x2[cols]
        return kernels.fields(self.x1[rows], x2, depth=self.depth, activation=self.activation,
                              kind=self.kind).stack()  # type: ignore[arg-type]



class ArrayFields(_TiledDiagonal):
    """Fields read by slicing any (8, n1, n2) array-like: a Zarr array, ``np.memmap``, HDF5, ….

    Only the requested row tile is read, so a fields store on disk never has to fit in memory.
    """

    def __init__(self, array: Any, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) != 3 or shape[0] != len(FIELD_NAMES):
            raise ValueError(f"fields array must have shape (8, n1, n2) in order {FIELD_NAMES}, "
                             f"got {shape}")
        self.array, self.shape = array, (shape[1], shape[2])
        self.dtype, self.device = dtype, device

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        cols = slice(0, self.shape[1]) if cols is None else cols
        t = torch.as_tensor(np.asarray(self.array[:, rows, cols]))
        t = t.to(dtype=self.dtype, device=self.device)
        if not torch.isfinite(t).all():
            raise ValueError(f"fields rows {rows} contain NaN/inf values (incomplete store?)")
        return t



class AccessorFields(_TiledDiagonal):
    """Adapter for any object with ``fields_tile(rows, cols) -> (8, r, c)`` (e.g. a fields store)."""

    def __init__(self, accessor: Any, shape: tuple[int, int], dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        if not callable(getattr(accessor, "fields_tile", None)):
            raise TypeError(f"{type(accessor).__name__} has no fields_tile(rows, cols) method")
        self.accessor, self.shape = accessor, (int(shape[0]), int(shape[1]))
        self.dtype, self.device = dtype, device

    def tile(self, rows: slice, cols: slice | None = None) -> Tensor:
        cols = slice(0, self.shape[1]) if cols is None else cols
        t = torch.as_tensor(np.asarray(self.accessor.fields_tile(rows, cols)))
        t = t.to(dtype=self.dtype, device=self.device)
        r = len(range(*rows.indices(self.shape[0])))
        c = len(range(*cols.indices(self.shape[1])))
        if tuple(t.shape) != (8, r, c):
            raise ValueError(f"fields_tile({rows}, {cols}) returned shape {tuple(t.shape)}, "
                             f"expected (8, {r}, {c})")
        return t



# ---- the row-tile product (the one place the structured formula lives) ------------------


def _rows_matmat(F: Tensor, x_rows: Tensor, x2: Tensor, u: Tensor, W: Tensor, s: Tensor,
                 Zb: Tensor, sX: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of K V for one tile of fields F (8, r, n2); V given as u (n2, m), W (n2, d0, m).

    Zb = W + u∘X2 and sX = s∘X2 are (n2, d0·m) and shared across tiles.
    Returns the output (r, m) and Jacobian (r, d0, m) parts (before Λ scaling).
    """
    r, d0 = x_rows.shape
    n2, m = u.shape
    G = (x_rows @ W.permute(1, 0, 2).reshape(d0, n2 * m)).reshape(r, n2, m)
    t_b = torch.einsum("ij,ijm->im", F[_KB], G)
    t_ab = torch.einsum("ij,ijm->im", F[_KAB], G)
    G.mul_(F[_KBB][:, :, None])  # G is now κ_bb ∘ G
    jac = torch.matmul(G.permute(2, 0, 1), x2).permute(1, 2, 0)  # (r, d0, m)
    jac = jac + (F[_KB] @ Zb + 2.0 * (F[_KBC] @ sX)).reshape(r, d0, m)
    out0 = F[_K] @ u + t_b + 2.0 * (F[_KC] @ s)
    coef = 2.0 * (F[_KA] @ u) + 2.0 * t_ab + 4.0 * (F[_KAC] @ s)
    jac.addcmul_(x_rows[:, :, None], coef[:, None, :])
    return out0, jac


def _block_inputs(x2: Tensor, V: Tensor, root_lam: float) -> tuple[Tensor, ...]:
    n2, d0 = x2.shape
    m = V.shape[1]
    Vb = V.reshape(n2, d0 + 1, m)
    u = Vb[:, 0, :].contiguous()
    W = Vb[:, 1:, :] * root_lam if root_lam != 1.0 else Vb[:, 1:, :].contiguous()
    s = torch.einsum("jd,jdm->jm", x2, W)
    Zb = (W + u[:, None, :] * x2[:, :, None]).reshape(n2, d0 * m)
    sX = (s[:, None, :] * x2[:, :, None]).reshape(n2, d0 * m)
    return u, W, s, Zb, sX


# ---- the operator -----------------------------------------------------------------------


class StructuredKernel:
    """Θ_λ(X1, X2) (or Σ^(L)) as a matrix-free operator of shape (n1(d0+1), n2(d0+1)).

    Use :func:`structured_operator` to build one.  ``op @ v`` / :meth:`matvec` / :meth:`matmat`
    accept numpy or torch (numpy in → numpy out); :meth:`aslinearoperator` gives a scipy
    ``LinearOperator``.  Memory is bounded by ``tile_rows`` rows of fields at a time.
    """

    def __init__(self, x1: Tensor, x2: Tensor, source: FieldSource, *, lam: float | None = None,
                 tile_rows: int | None = None, memory_mb: float = 512.0,
                 description: dict[str, Any] | None = None) -> None:
        self.x1, self.x2, self.source = x1, x2, source
        self.n1, self.d0 = x1.shape
        self.n2 = x2.shape[0]
        if tuple(source.shape) != (self.n1, self.n2):
            raise ValueError(f"field source of shape {tuple(source.shape)} does not match inputs "
                             f"({self.n1}, {self.n2})")
        self.lam = None if lam is None else float(lam)
        if self.lam is not None and (not math.isfinite(self.lam) or self.lam < 0):
            raise ValueError(f"lam (Jacobian-regularisation weight λ) must be ≥ 0, got {lam}")
        self.root_lam = 1.0 if self.lam is None else math.sqrt(self.lam)
        self.tile_rows = tile_rows
        self.memory_mb = float(memory_mb)
        self.description = dict(description or {})
        self.n_products = 0  # columns multiplied so far (progress / cost accounting)

    # -- linear-operator protocol ------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n1 * (self.d0 + 1), self.n2 * (self.d0 + 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.x1.dtype

    @property
    def device(self) -> torch.device:
        return self.x1.device

    @property
    def is_square(self) -> bool:
        return self.x1 is self.x2 or (self.n1 == self.n2 and torch.equal(self.x1, self.x2))

    def _rows_per_tile(self, m: int) -> int:
        if self.tile_rows is not None:
            return max(1, int(self.tile_rows))
        per_row = (8 + 2 * m) * self.n2 + 3 * self.d0 * m  # fields + G (and its product) + out
        itemsize = torch.finfo(self.dtype).bits // 8
        return int(max(1, min(self.n1, self.memory_mb * 2**20 / (itemsize * per_row))))

    def matmat(self, V: Any) -> Any:
        """K V for V of shape (n2(d0+1), m); numpy in → numpy out."""
        is_numpy = not isinstance(V, torch.Tensor)
        Vt = torch.as_tensor(np.asarray(V) if is_numpy else V).to(dtype=self.dtype, device=self.device)
        squeeze = Vt.ndim == 1
        if squeeze:
            Vt = Vt[:, None]
        if Vt.ndim != 2 or Vt.shape[0] != self.shape[1]:
            raise ValueError(f"operand of shape {tuple(Vt.shape)} does not match operator shape "
                             f"{self.shape} (point-major, d0={self.d0})")
        out = self._matmat(Vt)
        if squeeze:
            out = out[:, 0]
        return out.cpu().numpy() if is_numpy else out

    def matvec(self, v: Any) -> Any:
        """K v for a vector of length n2(d0+1)."""
        return self.matmat(v)

    def __matmul__(self, V: Any) -> Any:
        return self.matmat(V)

    def _matmat(self, V: Tensor) -> Tensor:
        m = V.shape[1]
        with torch.no_grad():
            u, W, s, Zb, sX = _block_inputs(self.x2, V, self.root_lam)
            out = torch.empty((self.n1, self.d0 + 1, m), dtype=self.dtype, device=self.device)
            step = self._rows_per_tile(m)
            for start in range(0, self.n1, step):
                rows = slice(start, min(start + step, self.n1))
                F = self.source.tile(rows)
                out0, jac = _rows_matmat(F, self.x1[rows], self.x2, u, W, s, Zb, sX)
                out[rows, 0, :] = out0
                out[rows, 1:, :] = jac * self.root_lam if self.root_lam != 1.0 else jac
        self.n_products += m
        return out.reshape(self.n1 * (self.d0 + 1), m)

    def aslinearoperator(self) -> Any:
        """A scipy ``LinearOperator`` (float64 numpy) view of this operator."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.matmat, matmat=self.matmat,
                              rmatvec=self._rmatvec, dtype=np.float64)

    def _rmatvec(self, v: Any) -> Any:
        if not self.is_square:
            raise NotImplementedError("rmatvec is only available for the symmetric X–X operator")
        return self.matmat(v)

    # -- structure used by preconditioners -------------------------------------------------
    def block_diagonal_parts(self) -> dict[str, Tensor]:
        """The diagonal blocks B_i = [[k, c1 xᵀ], [c2 x, κ_b I + e x xᵀ]] (with Λ scaling).

        Returns tensors ``k``, ``c_col`` (B_α0 = c_col x_α), ``c_row`` (B_0β = c_row x_β),
        ``iso`` (κ_b, the identity coefficient) and ``rank1`` (e) of length n.
        """
        if not self.is_square:
            raise ValueError("block diagonal is only defined for the square X–X operator")
        D = self.source.diagonal()
        lam = 1.0 if self.lam is None else self.lam
        return {
            "k": D[_K],
            "c_col": self.root_lam * (2 * D[_KA] + D[_KB]),
            "c_row": self.root_lam * (D[_KB] + 2 * D[_KC]),
            "iso": lam * D[_KB],
            "rank1": lam * (2 * D[_KAB] + 4 * D[_KAC] + D[_KBB] + 2 * D[_KBC]),
        }

    def diagonal(self) -> Tensor:
        """The diagonal of the Gram matrix, point-major (length n(d0+1))."""
        p = self.block_diagonal_parts()
        diag = p["iso"][:, None] + p["rank1"][:, None] * self.x1 ** 2
        return torch.cat([p["k"][:, None], diag], dim=1).reshape(-1)

    def field_matrices(self, names: Sequence[str]) -> dict[str, Tensor]:
        """Full n1×n2 matrices of the named fields, assembled tile by tile."""
        idx = [FIELD_NAMES.index(n) for n in names]
        out = {n: torch.empty((self.n1, self.n2), dtype=self.dtype, device=self.device)
               for n in names}
        step = max(1, self._rows_per_tile(1))
        for start in range(0, self.n1, step):
            rows = slice(start, min(start + step, self.n1))
            F = self.source.tile(rows)
            for n, i in zip(names, idx):
                out[n][rows] = F[i]
        return out

    def compressed_on_inputs(self, fields: dict[str, Tensor] | None = None) -> Tensor:
        """QᵀKQ for the orthonormal Q = [e_i⊗e_0 (all i), e_i⊗x̂_i (all i)]: a 2n×2n matrix.

        The block formula contracted with x̂_i on the left and x̂_j on the right (B = X Xᵀ):
        ⟨x̂_i, x_i⟩ = |x_i|, ⟨x̂_i, x_j⟩ = B_ij/|x_i|.  O(n² d0) for B, O(n²) for the rest.
        """
        if not self.is_square:
            raise ValueError("the compression is only defined for the square X–X operator")
        F = fields if fields is not None else self.field_matrices(FIELD_NAMES)
        return self._compressed(F, self.x1, self.x2)

    def compressed_columns(self, points: Sequence[int]) -> Tensor:
        """The columns of QᵀKQ for the given points: (2n, 2m), the e_0 columns of the m points,
        then their x̂ columns; reads only the fields of those m columns."""
        if not self.is_square:
            raise ValueError("the compression is only defined for the square X–X operator")
        cols = [int(j) for j in points]
        tiles = [self.source.tile(slice(0, self.n1), slice(j, j + 1)) for j in cols]
        T = torch.cat(tiles, dim=2)
        F = {name: T[i] for i, name in enumerate(FIELD_NAMES)}
        C = self._compressed(F, self.x1, self.x2[cols])
        m = len(cols)
        return torch.cat([C[:, :m], C[:, m:]], 1)

    def compressed_diagonal(self) -> Tensor:
        """The diagonal of QᵀKQ (length 2n): k(x_i, x_i), then x̂_iᵀ B_i x̂_i."""
        p = self.block_diagonal_parts()
        sq = torch.linalg.vector_norm(self.x1, dim=1) ** 2
        return torch.cat([p["k"], p["iso"] + p["rank1"] * sq])

    def _compressed(self, F: dict[str, Tensor], x_rows: Tensor, x_cols: Tensor) -> Tensor:
        ni = torch.linalg.vector_norm(x_rows, dim=1)[:, None]
        nj = torch.linalg.vector_norm(x_cols, dim=1)[None, :]
        B = x_rows @ x_cols.T
        lam = 1.0 if self.lam is None else self.lam
        c00 = F["k"]
        c0x = self.root_lam * (F["k_b"] * B / nj + 2 * F["k_c"] * nj)
        cx0 = self.root_lam * (2 * F["k_a"] * ni + F["k_b"] * B / ni)
        cxx = lam * (F["k_b"] * B / (ni * nj) + 2 * F["k_ab"] * ni * B / nj
                     + 4 * F["k_ac"] * ni * nj + F["k_bb"] * B * B / (ni * nj)
                     + 2 * F["k_bc"] * B * nj / ni)
        return torch.cat([torch.cat([c00, c0x], 1), torch.cat([cx0, cxx], 1)], 0)

    def field_columns(self, name: str, points: Sequence[int]) -> Tensor:
        """Columns of one n1×n2 field at the given points: (n1, m)."""
        i = FIELD_NAMES.index(name)
        return torch.cat([self.source.tile(slice(0, self.n1), slice(int(j), int(j) + 1))[i]
                          for j in points], dim=1)

    def to_dense(self) -> Tensor:
        """The dense Gram (small problems only; for checks)."""
        return self._matmat(torch.eye(self.shape[1], dtype=self.dtype, device=self.device))

    def __repr__(self) -> str:
        return (f"StructuredKernel(shape={self.shape}, d0={self.d0}, lam={self.lam}, "
                f"source={type(self.source).__name__}, {self.description})")


def _inputs(x: Any, name: str, dtype: torch.dtype, device: Any, d0: int | None = None) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.to(dtype=dtype, device=device)
    kernels.validate_inputs(t, name, d0=d0)
    return t


def structured_operator(x1: Any, x2: Any | None = None, *, fields: Any = None,
                        depth: int | None = None, activation: str = "gelu",
                        kind: str = "jntk", lam: float | None = None, mode: str = "memory",
                        tile_rows: int | None = None, memory_mb: float = 512.0,
                        dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> StructuredKernel:
    """Build the matrix-free operator of Θ_λ(X1, X2) (``kind="jntk"``) or Σ^(L) (``"nngp"``).

    Field source, in order of precedence:
      * ``fields`` given: a :class:`KernelFields`, an (8, n1, n2) numpy/torch array or a dict of
        the 8 arrays (held in memory); any other (8, n1, n2) array-like such as a Zarr array
        (read one row tile per product); or any object with ``fields_tile(rows, cols)``;
      * ``mode="memory"``: :func:`kernels.fields` once, all 8 n1×n2 fields kept (8·n1·n2 numbers);
      * ``mode="recompute"``: :func:`kernels.fields` per row tile on every product (bounded memory).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t1 = _inputs(x1, "x1", dtype, device)
    t2 = t1 if x2 is None else _inputs(x2, "x2", dtype, device, d0=t1.shape[1])
    desc: dict[str, Any] = {"kind": kind, "depth": depth, "activation": str(activation)}
    if fields is not None:
        if hasattr(fields, "fields_tile"):
            source: FieldSource = AccessorFields(fields, (t1.shape[0], t2.shape[0]), dtype, device)
            desc["mode"] = "accessor"
        elif not isinstance(fields, (KernelFields, dict, np.ndarray, torch.Tensor)):
            source = ArrayFields(fields, dtype, device)  # e.g. a Zarr array read tile by tile
            desc["mode"] = "array"
        else:
            if isinstance(fields, KernelFields):
                desc.update(kind=fields.kind, depth=fields.depth, activation=fields.activation)
            source = InMemoryFields(fields, dtype, device)
            desc["mode"] = "memory"
    else:
        if depth is None:
            raise ValueError("depth (number of hidden layers L) is required to compute fields")
        if mode == "memory":
            source = InMemoryFields(kernels.fields(t1, None if x2 is None else t2, depth=depth,
                                                   activation=activation, kind=kind))  # type: ignore[arg-type]
            source.stacked = source.stacked.to(dtype=dtype, device=device)
        elif mode == "recompute":
            source = RecomputedFields(t1, None if x2 is None else t2, depth=depth,
                                      activation=activation, kind=kind)
        else:
            raise ValueError(f"mode must be 'memory' or 'recompute', got {mode!r}")
        desc["mode"] = mode
    return StructuredKernel(t1, t2, source, lam=lam, tile_rows=tile_rows, memory_mb=memory_mb,
                            description=desc)


def structured_predict(op: StructuredKernel, alpha: Any, x_test: Any, *,
                       test_fields: Any = None, with_jacobian: bool = False,
                       memory_mb: float = 512.0) -> Any:
    """f_ntk(x) = Θ_λ(x, X)_{0,:} α for the coefficients α = (Θ_λ + μI)⁻¹ y (eq. 4).

    The cross-kernel fields are recomputed from the operator's (kind, depth, activation) unless
    ``test_fields`` (n_test, n) are given.  With ``with_jacobian`` the (n_test, d0+1) predictions
    of value and √λ-scaled input gradient are returned.
    """
    desc = op.description
    cross = structured_operator(
        x_test, op.x2, fields=test_fields, depth=desc.get("depth"),
        activation=desc.get("activation", "gelu"), kind=desc.get("kind", "jntk"),
        lam=op.lam, mode="recompute", memory_mb=memory_mb, dtype=op.dtype, device=op.device)
    out = cross.matmat(alpha)
    is_numpy = isinstance(out, np.ndarray)
    blocks = out.reshape(cross.n1, op.d0 + 1)
    return blocks if with_jacobian else (blocks[:, 0].copy() if is_numpy else blocks[:, 0])


# ---- distributed over row blocks (Ray) --------------------------------------------------


def _make_row_worker_class() -> Any:
    import ray

    @ray.remote
    class _RowBlockWorker:
        """Holds X and one row block of the field source; returns its rows of K V."""

        def __init__(self, x1: np.ndarray, x2: np.ndarray, rows: tuple[int, int], depth: int,
                     activation: str, kind: str, lam: float | None, mode: str,
                     memory_mb: float) -> None:
            torch.set_num_threads(1)
            lo, hi = rows
            self.op = structured_operator(x1[lo:hi], x2, depth=depth, activation=activation,
                                          kind=kind, lam=lam, mode=mode, memory_mb=memory_mb,
                                          device="cpu")

        def matmat(self, V: np.ndarray) -> np.ndarray:
            return self.op.matmat(V)

    return _RowBlockWorker


class _RowBlockOperator:
    """Shared face of the distributed operators: K V assembled from per-row-block products."""

    n: int
    d0: int
    n_products: int
    dtype = torch.float64

    @property
    def shape(self) -> tuple[int, int]:
        p = self.n * (self.d0 + 1)
        return (p, p)

    def _row_block_products(self, V: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def matmat(self, V: Any) -> Any:
        """K V (V of shape (N(d0+1), m) or a vector); numpy in → numpy out."""
        is_numpy = not isinstance(V, torch.Tensor)
        Vn = np.asarray(V if is_numpy else V.detach().cpu().numpy(), dtype=np.float64)
        squeeze = Vn.ndim == 1
        Vn = Vn[:, None] if squeeze else Vn
        if Vn.ndim != 2 or Vn.shape[0] != self.shape[1]:
            raise ValueError(f"operand of shape {Vn.shape} does not match operator {self.shape}")
        out = np.concatenate(self._row_block_products(Vn), axis=0)
        self.n_products += Vn.shape[1]
        out = out[:, 0] if squeeze else out
        return out if is_numpy else torch.as_tensor(out)

    def matvec(self, v: Any) -> Any:
        return self.matmat(v)

    def __matmul__(self, V: Any) -> Any:
        return self.matmat(V)

    def aslinearoperator(self) -> Any:
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.matmat, matmat=self.matmat,
                              rmatvec=self.matmat, dtype=np.float64)


class RayStructuredKernel(_RowBlockOperator):
    """The X–X operator with its rows split over Ray actors (one row block each).

    Each actor computes (``mode="memory"``) or recomputes (``"recompute"``) its own row block of
    fields; a product broadcasts V once through the object store and gathers the row blocks.
    Requires a running Ray (``ray.init``); call :meth:`shutdown` to free the actors.
    """

    def __init__(self, x: Any, *, depth: int, activation: str = "gelu", kind: str = "jntk",
                 lam: float | None = None, n_workers: int = 2, mode: str = "memory",
                 memory_mb: float = 256.0, num_cpus_per_worker: float = 1.0) -> None:
        import ray

        X = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        kernels.validate_inputs(torch.as_tensor(X), "x")
        self.n, self.d0 = X.shape
        self.lam = lam
        bounds = np.linspace(0, self.n, n_workers + 1).astype(int)
        self.row_blocks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        worker = _make_row_worker_class().options(num_cpus=num_cpus_per_worker)
        x_ref = ray.put(X)
        self.workers = [worker.remote(x_ref, x_ref, rb, depth, activation, kind, lam, mode,
                                      memory_mb) for rb in self.row_blocks]
        self.n_products = 0

    def _row_block_products(self, V: np.ndarray) -> list[np.ndarray]:
        import ray

        v_ref = ray.put(V)
        return ray.get([w.matmat.remote(v_ref) for w in self.workers])

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


# ---- distributed over row blocks (Dask) -------------------------------------------------


class _RowWindow:
    """Rows [lo, hi) of an (8, n1, n2) array-like, sliced lazily (only what a tile asks for)."""

    def __init__(self, array: Any, lo: int, hi: int) -> None:
        self.array, self.lo = array, lo
        self.shape = (int(array.shape[0]), hi - lo, int(array.shape[2]))

    def __getitem__(self, key: tuple[Any, slice, slice]) -> Any:
        first, rows, cols = key
        start, stop, _ = rows.indices(self.shape[1])
        return self.array[first, self.lo + start:self.lo + stop, cols]


def _dask_row_block(X: np.ndarray, rows: tuple[int, int], V: np.ndarray, lam: float | None,
                    fields: Any, store: tuple[str, str] | None, recompute: dict[str, Any] | None,
                    memory_mb: float) -> np.ndarray:
    """One Dask task: rows [lo, hi) of K V, with the row block's fields in memory, read from a
    Zarr fields array inside the task, or recomputed by ``kernels.fields``."""
    lo, hi = rows
    x1 = torch.as_tensor(X[lo:hi])
    x2 = torch.as_tensor(X)
    source: FieldSource
    if fields is not None:
        source = InMemoryFields(fields)
    elif store is not None:
        import zarr

        path, name = store
        source = ArrayFields(_RowWindow(zarr.open_array(store=path, path=name, mode="r"), lo, hi))
    else:
        assert recompute is not None
        source = RecomputedFields(x1, x2, **recompute)
    op = StructuredKernel(x1, x2, source, lam=lam, memory_mb=memory_mb)
    return op.matmat(V)


class DaskStructuredKernel(_RowBlockOperator):
    """The X–X operator as one Dask task per row block, for clusters run by Dask.

    Field source (one of): ``fields`` — an (8, N, N) array held by the driver (each block's rows are
    scattered to the cluster once when a ``distributed`` client is active); ``store`` — the path of
    a Zarr fields array (``(path, array_name)``, e.g. a fields-mode Gram store and ``"fields"``)
    opened *inside* each task, so every worker reads only its rows (this also works where
    ``da.from_zarr`` on Zarr 3 does not, e.g. Ray's Dask scheduler); or ``depth`` (+ activation,
    kind) — each task recomputes its rows with ``kernels.fields``.  ``scheduler``: any Dask
    scheduler name or client (``None``: Dask's default, a ``distributed`` client when one is
    active).  Exposes ``matmat`` and ``aslinearoperator`` like :class:`StructuredKernel`.
    """

    def __init__(self, x: Any, *, fields: Any = None, store: tuple[str, str] | str | None = None,
                 depth: int | None = None, activation: str = "gelu", kind: str = "jntk",
                 lam: float | None = None, n_blocks: int = 2, scheduler: Any = None,
                 memory_mb: float = 256.0) -> None:
        X = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        kernels.validate_inputs(torch.as_tensor(X), "x")
        self.n, self.d0 = X.shape
        if sum(v is not None for v in (fields, store, depth)) != 1:
            raise ValueError("give exactly one field source: fields (an (8, N, N) array), store "
                             "(a Zarr fields array path) or depth (recompute the fields)")
        if lam is not None and (not math.isfinite(float(lam)) or float(lam) < 0):
            raise ValueError(f"lam (Jacobian-regularisation weight λ) must be ≥ 0, got {lam}")
        self.lam = None if lam is None else float(lam)
        self.scheduler, self.memory_mb = scheduler, float(memory_mb)
        bounds = np.linspace(0, self.n, max(1, int(n_blocks)) + 1).astype(int)
        self.row_blocks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        self.store = (store, "fields") if isinstance(store, str) else store
        self.recompute = None if depth is None else {"depth": depth, "activation": activation,
                                                     "kind": kind}
        client = self._client()
        self.X: Any = client.scatter(X, broadcast=True, hash=False) if client is not None else X
        self.blocks: list[Any] = [None] * len(self.row_blocks)
        if fields is not None:
            F = fields.stack().numpy() if isinstance(fields, KernelFields) else np.asarray(fields)
            if F.shape != (len(FIELD_NAMES), self.n, self.n):
                raise ValueError(f"fields must have shape (8, {self.n}, {self.n}), got {F.shape}")
            if not np.isfinite(F).all():
                raise ValueError("fields contain NaN/inf values")
            blocks = [np.ascontiguousarray(F[:, lo:hi]) for lo, hi in self.row_blocks]
            self.blocks = client.scatter(blocks, hash=False) if client is not None else blocks
        elif self.store is not None:
            import zarr

            shape = tuple(zarr.open_array(store=self.store[0], path=self.store[1], mode="r").shape)
            if shape != (len(FIELD_NAMES), self.n, self.n):
                raise ValueError(f"fields array {self.store[1]!r} in {self.store[0]} has shape "
                                 f"{shape}, expected (8, {self.n}, {self.n}) for these inputs")
        self.n_products = 0

    def _client(self) -> Any:
        if self.scheduler is not None and not hasattr(self.scheduler, "scatter"):
            return None  # a named local scheduler ("threads", "sync", …)
        if self.scheduler is not None:
            return self.scheduler
        try:
            from distributed import get_client

            return get_client()
        except (ImportError, ValueError):
            return None

    def _row_block_products(self, V: np.ndarray) -> list[np.ndarray]:
        import dask

        v = dask.delayed(V, name=f"V-{dask.base.tokenize(V)}")  # shipped once, not per task
        task = dask.delayed(_dask_row_block, pure=True)
        parts = [task(self.X, rb, v, self.lam, blk, self.store, self.recompute, self.memory_mb)
                 for rb, blk in zip(self.row_blocks, self.blocks)]
        kw = {} if self.scheduler is None else {"scheduler": self.scheduler}
        return list(dask.compute(*parts, **kw))
