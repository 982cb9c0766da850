"""Kernel operators: Gram matrices that are multiplied, never necessarily formed.

* :mod:`.base` — the one protocol (:class:`KernelOperator`: shape, dtype, device, matmat,
  diagonal; :class:`StructuredParts` for the preconditioners), the operand handling all operators
  share (:class:`OperatorBase`) and :class:`AddedDiag` (op + μI);
* :mod:`.structured` — :class:`StructuredKernel`, the matrix-free Θ_λ(X1, X2) / Σ^(L) of the
  8-field structure (O(N² d0) per product), :func:`structured_operator`, :func:`structured_predict`;
* :mod:`.field_sources` — where its fields come from (memory, a store's array, recomputed);
* :mod:`.distributed` — the same operator with its row blocks on Ray actors or Dask tasks;
* :mod:`.dense` — a dense Gram held as a Dask array (e.g. a dense Gram store);
* :mod:`.dask_arrays` — matrix-likes (numpy, Dask, Zarr arrays or paths) as Dask arrays, and the
  scheduler that runs their tasks.
"""

from importlib import import_module
from typing import Any

from .base import AddedDiag, KernelOperator, OperatorBase, StructuredParts
from .distributed import DaskStructuredKernel, RayStructuredKernel
from .field_sources import AccessorFields, ArrayFields, FieldSource, InMemoryFields, RecomputedFields
from .structured import StructuredKernel, structured_operator, structured_predict

__all__ = ["AccessorFields", "AddedDiag", "ArrayFields", "DaskStructuredKernel", "DenseOperator",
           "FieldSource", "InMemoryFields", "KernelOperator", "OperatorBase",
           "RayStructuredKernel", "RecomputedFields", "StructuredKernel", "StructuredParts",
           "structured_operator", "structured_predict"]

# imported on first use: they need dask, which a GPU machine with torch alone may lack
_LAZY = {"DenseOperator": ".dense"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
