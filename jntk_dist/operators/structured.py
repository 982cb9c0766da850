"""Matrix-free structured Gram operators for Θ_λ(X1, X2) and Σ^(L)(X1, X2).

Every (d0+1)×(d0+1) block of the Jacobian kernels is a scaled identity plus outer products of
x and x', built from the 8 scalar fields of :mod:`jntk_dist.kernels` (docs/design.md §1.5). The
block, Λ and their contractions are the block record's (:class:`jntk_dist.kernels.Block`): the
product K v row tile by row tile (:meth:`~jntk_dist.kernels.Block.product_rows`, O(N² d0) flops
per column instead of the O(N² d0²) of the dense Gram, never more than one row tile of fields in
memory), the diagonal blocks (:meth:`~jntk_dist.kernels.Block.coincident`); this operator drives
them and compresses the blocks onto span{e_0, x̂_i} for the preconditioners.

The fields come from a *field source* (:mod:`.field_sources`): the 8 arrays in memory, a fields
store, or :func:`jntk_dist.kernels.fields` recomputed tile by tile (bounded memory, any N).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .. import kernels
from ..kernels import FIELD_INDEX, FIELD_NAMES, KernelFields
from ..kernels.devices import auto_tile_mb, choose_device
from .base import OperatorBase
from .field_sources import AccessorFields, ArrayFields, FieldSource, InMemoryFields, RecomputedFields

__all__ = ["StructuredKernel", "structured_operator", "structured_predict", "auto_memory_mb"]

Tensor = torch.Tensor


# ---- the operator -----------------------------------------------------------------------


class StructuredKernel(OperatorBase):
    """Θ_λ(X1, X2) (or Σ^(L)) as a matrix-free operator of shape (n1(d0+1), n2(d0+1)).

    Use :func:`structured_operator` to build one. ``op @ v`` / :meth:`matvec` / :meth:`matmat`
    accept numpy or torch (numpy in → numpy out); :meth:`aslinearoperator` gives a scipy
    ``LinearOperator``. Memory is bounded by ``tile_rows`` rows of fields at a time. The square
    X–X operator also exposes the structure the preconditioners use (:class:`StructuredParts`).
    Subclasses may compute the products elsewhere (row blocks on Ray actors or Dask tasks,
    :mod:`.distributed`) while the structure still comes from ``source``.
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
        self.weights = kernels.LambdaWeights.of(lam)  # Λ: (1, √λ, λ); all 1 without λ
        self.lam = self.weights.lam
        self.tile_rows = tile_rows
        self.memory_mb = float(memory_mb)
        self.description = dict(description or {})
        self.n_products = 0
        self.symmetric = self.is_square

    # -- the operator ------------------------------------------------------------------------
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

    def _layout_note(self) -> str:
        return f" (point-major, d0={self.d0})"

    def _rows_per_tile(self, m: int) -> int:
        if self.tile_rows is not None:
            return max(1, int(self.tile_rows))
        per_row = (8 + 2 * m) * self.n2 + 3 * self.d0 * m  # fields + G (and its product) + out
        itemsize = torch.finfo(self.dtype).bits // 8
        return int(max(1, min(self.n1, self.memory_mb * 2**20 / (itemsize * per_row))))

    def _matmat(self, V: Tensor) -> Tensor:
        return self._local_rows(V, 0, self.n1)

    def _local_rows(self, V: Tensor, start: int, stop: int) -> Tensor:
        """Rows start:stop (points) of K V, computed here tile by tile from ``source``."""
        m = V.shape[1]
        with torch.no_grad():
            operand = kernels.product_operand(self.x2, V, self.weights)
            out = torch.empty((stop - start, self.d0 + 1, m), dtype=self.dtype,
                              device=self.device)
            step = self._rows_per_tile(m)
            for r0 in range(start, stop, step):
                rows = slice(r0, min(r0 + step, stop))
                block = kernels.Block(self.source.tile(rows))
                out0, jac = block.product_rows(self.x1[rows], self.x2, operand)
                local = slice(rows.start - start, rows.stop - start)
                out[local, 0, :] = out0
                out[local, 1:, :] = self.weights.on_jacobian(jac)
        return out.reshape((stop - start) * (self.d0 + 1), m)

    def diagonal(self) -> Tensor:
        """The diagonal of the Gram matrix, point-major (length n(d0+1))."""
        p = self.block_diagonal_parts()
        diag = p["iso"][:, None] + p["rank1"][:, None] * self.x1 ** 2
        return torch.cat([p["k"][:, None], diag], dim=1).reshape(-1)

    # -- structure used by preconditioners -----------------------------------------------------
    def _require_square(self, what: str) -> None:
        if not self.is_square:
            raise ValueError(f"{what} is only defined for the square X–X operator")

    def field_diagonal(self, name: str) -> Tensor:
        """One field at the pairs (x_i, x_i), length n (square operator)."""
        self._require_square("the diagonal")
        return self.source.diagonal()[FIELD_INDEX[name]]

    def block_diagonal_parts(self) -> dict[str, Tensor]:
        """The diagonal blocks B_i = [[k, c1 xᵀ], [c2 x, κ_b I + e x xᵀ]] (with Λ scaling).

        Returns tensors ``k``, ``c_col`` (B_α0 = c_col x_α), ``c_row`` (B_0β = c_row x_β),
        ``iso`` (κ_b, the identity coefficient) and ``rank1`` (e) of length n.
        """
        self._require_square("the block diagonal")
        return kernels.Block(self.source.diagonal(), self.weights).coincident()

    def field_rows(self, rows: slice) -> Tensor:
        """The 8 fields of ``rows`` × all columns, (8, r, n2) in FIELD_NAMES order (held:
        a view; recomputed or remote: computed now)."""
        return self.source.tile(rows)

    def field_matrices(self, names: Sequence[str]) -> dict[str, Tensor]:
        """Full n1×n2 matrices of the named fields, assembled tile by tile."""
        idx = [FIELD_INDEX[n] for n in names]
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
        self._require_square("the compression")
        F = fields if fields is not None else self.field_matrices(FIELD_NAMES)
        return self._compressed(F, self.x1, self.x2)

    def compressed_columns(self, points: Sequence[int]) -> Tensor:
        """The columns of QᵀKQ for the given points: (2n, 2m), the e_0 columns of the m points,
        then their x̂ columns; reads only the fields of those m columns."""
        self._require_square("the compression")
        cols = [int(j) for j in points]
        tiles = [self.source.tile(slice(0, self.n1), slice(j, j + 1)) for j in cols]
        C = self._compressed(torch.cat(tiles, dim=2), self.x1, self.x2[cols])
        m = len(cols)
        return torch.cat([C[:, :m], C[:, m:]], 1)

    def compressed_diagonal(self) -> Tensor:
        """The diagonal of QᵀKQ (length 2n): k(x_i, x_i), then x̂_iᵀ B_i x̂_i."""
        p = self.block_diagonal_parts()
        sq = torch.linalg.vector_norm(self.x1, dim=1) ** 2
        return torch.cat([p["k"], p["iso"] + p["rank1"] * sq])

    def _compressed(self, F: Any, x_rows: Tensor, x_cols: Tensor) -> Tensor:
        """The blocks of fields F (by name, or stacked) contracted with x̂_i and x̂_j."""
        ni = torch.linalg.vector_norm(x_rows, dim=1)[:, None]
        nj = torch.linalg.vector_norm(x_cols, dim=1)[None, :]
        B = x_rows @ x_cols.T
        w, t = self.weights, kernels.Block(F).term
        # terms on ⟨x̂_i, x_i⟩ = |x_i|, ⟨x̂_i, x_j⟩ = B_ij/|x_i|, ⟨x̂_i, x̂_j⟩ = B_ij/(|x_i| |x_j|)
        c00 = t("value")
        c0x = w.root * (t("row_x") * B / nj + t("row_xp") * nj)
        cx0 = w.root * (t("col_x") * ni + t("col_xp") * B / ni)
        cxx = w.jac * (t("iso") * B / (ni * nj) + t("xx") * ni * B / nj
                       + t("xxp") * ni * nj + t("xpx") * B * B / (ni * nj)
                       + t("xpxp") * B * nj / ni)
        return torch.cat([torch.cat([c00, c0x], 1), torch.cat([cx0, cxx], 1)], 0)

    def field_columns(self, name: str, points: Sequence[int]) -> Tensor:
        """Columns of one n1×n2 field at the given points: (n1, m)."""
        i = FIELD_INDEX[name]
        return torch.cat([self.source.tile(slice(0, self.n1), slice(int(j), int(j) + 1))[i]
                          for j in points], dim=1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, d0={self.d0}, lam={self.lam}, "
                f"source={type(self.source).__name__}, {self.description})")


def _inputs(x: Any, name: str, dtype: torch.dtype, device: Any, d0: int | None = None) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.to(dtype=dtype, device=device)
    kernels.validate_inputs(t, name, d0=d0)
    return t


def auto_memory_mb(device: torch.device | str) -> float:
    """The working-set budget of a product's row tile under ``memory_mb: "auto"``: the one
    memory rule (:func:`jntk_dist.kernels.devices.auto_tile_mb`: a quarter of 60 % of the
    device's free memory, GPU or RAM, at most 4 GiB)."""
    return auto_tile_mb(device)


def _field_source(fields: Any, t1: Tensor, t2: Tensor, one_set: bool, desc: dict[str, Any], *,
                  depth: int | None, activation: str, kind: str, mode: str, dtype: torch.dtype,
                  device: Any, compile: bool | None,
                  fields_dtype: torch.dtype | None) -> FieldSource:
    """The field source :func:`structured_operator` describes (and its mode, into ``desc``)."""
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
            source = InMemoryFields(kernels.fields(t1, None if one_set else t2, depth=depth,
                                                   activation=activation, kind=kind,  # type: ignore[arg-type]
                                                   compile=compile))
            source.stacked = source.stacked.to(dtype=dtype, device=device)
        elif mode == "recompute":
            source = RecomputedFields(t1, None if one_set else t2, depth=depth,
                                      activation=activation, kind=kind, compile=compile,
                                      fields_dtype=fields_dtype)
        else:
            raise ValueError(f"mode must be 'memory' or 'recompute', got {mode!r}")
        desc["mode"] = mode
    return source


def structured_operator(x1: Any, x2: Any | None = None, *, fields: Any = None,
                        depth: int | None = None, activation: str = "gelu",
                        kind: str = "jntk", lam: float | None = None, mode: str = "memory",
                        tile_rows: int | None = None, memory_mb: float | str = 512.0,
                        dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None, compile: bool | None = None,
                        fields_dtype: torch.dtype | None = None) -> StructuredKernel:
    """Build the matrix-free operator of Θ_λ(X1, X2) (``kind="jntk"``) or Σ^(L) (``"nngp"``).

    Field source, in order of precedence:
      * ``fields`` given: a :class:`KernelFields`, an (8, n1, n2) numpy/torch array or a dict of
        the 8 arrays (held in memory); any other (8, n1, n2) array-like such as a Zarr array
        (read one row tile per product); or any object with ``fields_tile(rows, cols)``;
      * ``mode="memory"``: :func:`kernels.fields` once, all 8 n1×n2 fields kept (8·n1·n2 numbers);
      * ``mode="recompute"``: :func:`kernels.fields` per row tile on every product (bounded memory).

    ``device``: default CUDA when present. ``memory_mb``: a product's row-tile budget, or
    ``"auto"`` (:func:`auto_memory_mb`: the one memory rule). ``compile``: the compiled
    field recursion for computed fields (None: ``JNTK_COMPILE``). ``fields_dtype``: compute the
    recomputed fields in this precision (e.g. float32) while products stay in ``dtype``.
    """
    if device is None:
        device = choose_device()
    if memory_mb == "auto":
        memory_mb = auto_memory_mb(device)
    t1 = _inputs(x1, "x1", dtype, device)
    t2 = t1 if x2 is None else _inputs(x2, "x2", dtype, device, d0=t1.shape[1])
    desc: dict[str, Any] = {"kind": kind, "depth": depth, "activation": str(activation)}
    if compile is not None:
        desc["compile"] = bool(compile)
    if fields_dtype is not None:
        desc["fields_dtype"] = str(fields_dtype).replace("torch.", "")
    source = _field_source(fields, t1, t2, x2 is None, desc, depth=depth, activation=activation,
                           kind=kind, mode=mode, dtype=dtype, device=device, compile=compile,
                           fields_dtype=fields_dtype)
    return StructuredKernel(t1, t2, source, lam=lam, tile_rows=tile_rows,
                            memory_mb=float(memory_mb), description=desc)


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
        lam=op.lam, mode="recompute", memory_mb=memory_mb, dtype=op.dtype, device=op.device,
        compile=desc.get("compile"),
        fields_dtype=getattr(torch, desc["fields_dtype"]) if "fields_dtype" in desc else None)
    out = cross.matmat(alpha)
    is_numpy = isinstance(out, np.ndarray)
    blocks = out.reshape(cross.n1, op.d0 + 1)
    return blocks if with_jacobian else (blocks[:, 0].copy() if is_numpy else blocks[:, 0])
