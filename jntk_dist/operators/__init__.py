"""Kernel operators: Gram matrices that are multiplied, never necessarily formed.

* :mod:`.structured` — :class:`StructuredKernel`, the matrix-free Θ_λ(X1, X2) / Σ^(L) of the
  8-field structure (O(N² d0) per product), :func:`structured_operator`, :func:`structured_predict`;
* :mod:`.field_sources` — where its fields come from (memory, a store's array, recomputed);
* :mod:`.distributed` — the X–X operator with its row blocks on Ray actors or Dask tasks;
* :mod:`.dense` — a dense Gram held as a Dask array (e.g. a Gram store) as an operator;
* :mod:`.dask_arrays` — matrix-likes (numpy, Dask, Zarr arrays or paths) as Dask arrays, and the
  scheduler that runs their tasks.
"""

from .dense import DaskOperator
from .distributed import DaskStructuredKernel, RayStructuredKernel
from .field_sources import AccessorFields, ArrayFields, FieldSource, InMemoryFields, RecomputedFields
from .structured import StructuredKernel, structured_operator, structured_predict

__all__ = ["AccessorFields", "ArrayFields", "DaskOperator", "DaskStructuredKernel", "FieldSource",
           "InMemoryFields", "RayStructuredKernel", "RecomputedFields", "StructuredKernel",
           "structured_operator", "structured_predict"]
