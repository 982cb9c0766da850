"""Compatibility alias: the structured operator lives in :mod:`jntk_dist.operators` now.

``from jntk_dist.structured import structured_operator`` keeps working for code written before
the package was divided into rooms (docs/design.md).
"""

from .operators import (AccessorFields, ArrayFields, DaskStructuredKernel, FieldSource,
                        InMemoryFields, RayStructuredKernel, RecomputedFields, StructuredKernel,
                        structured_operator, structured_predict)

__all__ = ["AccessorFields", "ArrayFields", "DaskStructuredKernel", "FieldSource", "InMemoryFields",
           "RayStructuredKernel", "RecomputedFields", "StructuredKernel", "structured_operator",
           "structured_predict"]
