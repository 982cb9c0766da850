"""Solvers for kernel systems and spectra, on any kernel operator or chunked Gram.

* :mod:`.cg` — preconditioned conjugate gradients for (op + μI) α = y (eq. 4), checkpointed;
* :mod:`.registry` — the one list of preconditioners (name → class); :mod:`.preconditioners` —
  those that use the block structure (jacobi, kron, two_level, nystrom) and
  :func:`make_preconditioner`; :mod:`.coarse` — the PCA coarse space (pca); :mod:`.direct` —
  the exact dense Cholesky (direct); :mod:`.lowrank` — randomly pivoted Cholesky
  (rpcholesky); :mod:`.auto` — the choice among them (auto, the default); :mod:`.memory` — the
  one memory rule and plan;
* :mod:`.iterative_eigen` — Lanczos / LOBPCG and shift-invert λ_min of operators;
* :mod:`.cholesky` — blockwise Dask Cholesky solves of dense Grams;
* :mod:`.dense_eigen` — spectra of dense Grams (eigh, Lanczos, shift-invert) and the positivity
  tolerance;
* :mod:`.results`, :mod:`.checkpoint` — what they return (one SolveResult, one EigenResult)
  and how they resume (one checkpoint protocol).
"""

from importlib import import_module
from typing import Any

# first: the registry lists its names in the order of registration, the basic ones first
from .preconditioners import (PRECONDITIONERS, BlockJacobiPreconditioner, IdentityPreconditioner,
                              KroneckerPreconditioner, NystromPreconditioner, Preconditioner,
                              TwoLevelPreconditioner, make_preconditioner, pivoted_cholesky)
from .auto import AUTO_RIDGE_FRACTION, AutoDecision, auto_ridge, choose
from .cg import IndefiniteError, labels_to_rhs, pcg, structured_solve
from .coarse import PcaCoarsePreconditioner
from .refined import RefinedPcaPreconditioner
from .direct import DirectPreconditioner
from .iterative_eigen import shift_invert_eigs, structured_eigs
from .lowrank import RPCholeskyPreconditioner
from .memory import MemoryPlan, NotEnoughMemoryError
from .registry import REGISTRY, preconditioner_help, preconditioner_names
from .results import EigenResult, SolveResult, positivity_tolerance

__all__ = ["AUTO_RIDGE_FRACTION", "PRECONDITIONERS", "REGISTRY", "add_ridge", "auto_ridge",
           "AutoDecision", "BlockJacobiPreconditioner", "cholesky_factor", "cholesky_solve",
           "CholeskyInverseOperator", "choose", "DirectPreconditioner", "eigen", "EigenResult",
           "eigh_dense", "IdentityPreconditioner", "IndefiniteError", "KroneckerPreconditioner",
           "labels_to_rhs", "make_preconditioner", "MemoryPlan", "NotEnoughMemoryError",
           "NotPositiveDefiniteError", "NystromPreconditioner", "PcaCoarsePreconditioner",
           "RefinedPcaPreconditioner", "pcg",
           "pivoted_cholesky", "positivity_tolerance", "Preconditioner", "preconditioner_help",
           "preconditioner_names", "RPCholeskyPreconditioner", "shift_invert_eigs",
           "smallest_eigenvalue", "SolveResult", "structured_eigs", "structured_solve",
           "suggest_ridge", "top_eigenpairs", "TwoLevelPreconditioner"]

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
