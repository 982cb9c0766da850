"""Solvers for kernel systems and spectra, on any kernel operator or chunked Gram.

* :mod:`.cg` — preconditioned conjugate gradients for (op + μI) α = y (eq. 4), checkpointed;
* :mod:`.preconditioners` — preconditioners that use the block structure (jacobi, kron,
  two_level, nystrom), and :mod:`.coarse` — the PCA coarse space for real images (pca);
* :mod:`.iterative_eigen` — Lanczos / LOBPCG and shift-invert λ_min of operators;
* :mod:`.cholesky` — blockwise Dask Cholesky solves of dense Grams;
* :mod:`.dense_eigen` — spectra of dense Grams (eigh, Lanczos, shift-invert) and the positivity
  tolerance;
* :mod:`.results`, :mod:`.checkpoint` — what they return (one SolveResult, one EigenResult)
  and how they resume (one checkpoint protocol).
"""

from importlib import import_module
from typing import Any

from .cg import IndefiniteError, labels_to_rhs, pcg, structured_solve
from .coarse import PcaCoarsePreconditioner
from .iterative_eigen import shift_invert_eigs, structured_eigs
from .preconditioners import (PRECONDITIONERS, BlockJacobiPreconditioner, IdentityPreconditioner,
                              KroneckerPreconditioner, NystromPreconditioner, Preconditioner,
                              TwoLevelPreconditioner, make_preconditioner, pivoted_cholesky)
from .results import EigenResult, SolveResult, positivity_tolerance

__all__ = ["PRECONDITIONERS", "BlockJacobiPreconditioner", "CholeskyInverseOperator",
           "EigenResult", "IdentityPreconditioner", "IndefiniteError",
           "KroneckerPreconditioner", "NotPositiveDefiniteError",
           "NystromPreconditioner", "PcaCoarsePreconditioner", "Preconditioner",
           "SolveResult", "TwoLevelPreconditioner", "add_ridge", "cholesky_factor",
           "cholesky_solve", "eigen", "eigh_dense", "labels_to_rhs",
           "make_preconditioner", "pcg", "pivoted_cholesky", "positivity_tolerance",
           "shift_invert_eigs", "smallest_eigenvalue", "structured_eigs",
           "structured_solve", "suggest_ridge", "top_eigenpairs"]

# imported on first use: the dense (Dask) solvers need dask, which a GPU machine with torch
# alone may lack; the operator solvers above do not
_LAZY = {name: ".cholesky" for name in ("CholeskyInverseOperator", "NotPositiveDefiniteError",
                                        "add_ridge", "cholesky_factor", "cholesky_solve")}
_LAZY.update({name: ".dense_eigen" for name in ("eigen", "eigh_dense", "smallest_eigenvalue",
                                                "suggest_ridge", "top_eigenpairs")})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
