"""The one protocol of kernel operators, and the operand handling they all share.

A kernel operator is a (possibly huge) matrix known by its products, in the spirit of
``linear_operator``: ``shape``, ``dtype``, ``device``, ``matmat`` / ``matvec`` / ``@``,
``diagonal`` and a scipy view (``aslinearoperator``). The solvers take any
:class:`KernelOperator`; the structure-aware preconditioners also use the
:class:`StructuredParts` of the square X–X structured operator, whatever computes its products
(this process, Ray actors or Dask tasks).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..kernels import LambdaWeights

__all__ = ["KernelOperator", "StructuredParts", "OperatorBase", "AddedDiag"]

Tensor = torch.Tensor


@runtime_checkable
class KernelOperator(Protocol):
    """What every kernel operator offers, and all the solvers need."""

    n_products: int  # operator columns multiplied so far (progress, cost accounting)

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matmat(self, V: Any) -> Any: ...

    def diagonal(self) -> Tensor: ...


class StructuredParts(Protocol):
    """The structure of the square operator Θ_λ(X, X) the preconditioners are built from."""

    n1: int
    d0: int
    lam: float | None
    weights: LambdaWeights  # Λ of ``lam`` (the block record's)
    x1: Tensor
    is_square: bool

    def block_diagonal_parts(self) -> dict[str, Tensor]: ...

    def field_matrices(self, names: Sequence[str]) -> dict[str, Tensor]: ...

    def field_rows(self, rows: slice) -> Tensor: ...

    def field_columns(self, name: str, points: Sequence[int]) -> Tensor: ...

    def field_diagonal(self, name: str) -> Tensor: ...

    def compressed_on_inputs(self, fields: dict[str, Tensor] | None = None) -> Tensor: ...

    def compressed_columns(self, points: Sequence[int]) -> Tensor: ...

    def compressed_diagonal(self) -> Tensor: ...


class OperatorBase:
    """Operand handling shared by all operators: numpy in → numpy out (torch in → torch out),
    vectors or blocks of columns, shape checks, ``@``, ``matvec``, a scipy view and a product
    counter. Subclasses define ``shape``, ``dtype``, ``device`` and ``_matmat(V)`` on a torch
    (n, m) block of this operator's dtype and device."""

    n_products: int = 0
    symmetric: bool = True  # rmatvec = matvec in the scipy view

    shape: Any
    dtype: Any
    device: Any

    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    def matmat(self, V: Any) -> Any:
        """This operator times V (shape (n_cols, m), or a vector); numpy in → numpy out."""
        is_numpy = not isinstance(V, torch.Tensor)
        Vt = torch.as_tensor(np.asarray(V) if is_numpy else V).to(dtype=self.dtype,
                                                                   device=self.device)
        squeeze = Vt.ndim == 1
        if squeeze:
            Vt = Vt[:, None]
        if Vt.ndim != 2 or Vt.shape[0] != self.shape[1]:
            raise ValueError(f"operand of shape {tuple(Vt.shape)} does not match operator shape "
                             f"{tuple(self.shape)}{self._layout_note()}")
        out = self._matmat(Vt)
        self.n_products += Vt.shape[1]
        if squeeze:
            out = out[:, 0]
        return out.cpu().numpy() if is_numpy else out

    def _layout_note(self) -> str:
        return ""

    def matvec(self, v: Any) -> Any:
        """This operator times a vector."""
        return self.matmat(v)

    def __matmul__(self, V: Any) -> Any:
        return self.matmat(V)

    def aslinearoperator(self) -> Any:
        """A scipy ``LinearOperator`` (float64 numpy) view of this operator."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.matmat, matmat=self.matmat,
                              rmatvec=self._rmatvec, dtype=np.float64)

    def _rmatvec(self, v: Any) -> Any:
        if not self.symmetric:
            raise NotImplementedError(f"{type(self).__name__} is not symmetric: no rmatvec")
        return self.matmat(v)


class AddedDiag(OperatorBase):
    """op + μI: the ridge of eq. (4)'s regularised solve (and the shift of shift-invert), as an
    operator of its own."""

    def __init__(self, op: KernelOperator, mu: float) -> None:
        mu = float(mu)
        if not np.isfinite(mu):
            raise ValueError(f"the added diagonal μ must be finite, got {mu}")
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"op + μI needs a square operator, got shape {op.shape}")
        self.op, self.mu = op, mu
        self.symmetric = getattr(op, "symmetric", True)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.op.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> torch.dtype:
        # the ridge is added in float64 even to a float32 operator's products
        return torch.promote_types(self.op.dtype, torch.float64)

    @property
    def device(self) -> torch.device:
        return self.op.device

    def _matmat(self, V: Tensor) -> Tensor:
        out = torch.as_tensor(self.op.matmat(V), dtype=V.dtype, device=V.device)
        return out + self.mu * V

    def diagonal(self) -> Tensor:
        """The diagonal of op, plus μ."""
        return self.op.diagonal() + self.mu

    def __repr__(self) -> str:
        return f"AddedDiag({self.op!r}, mu={self.mu:g})"
