"""Input handling of the kernels: numpy or torch in, checks that name the offending rows.

Numpy in → numpy out; torch in → torch out (same device). float64 unless asked otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from ..errors import InputError

__all__ = ["KINDS", "validate_inputs", "check_depth", "check_kind", "check_lam"]

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor
KernelKind = Literal["jntk", "nngp"]
KINDS = ("jntk", "nngp")


def to_tensor(x: ArrayLike, dtype: torch.dtype | None,
              device: torch.device | str | None) -> tuple[Tensor, bool]:
    """``x`` as a floating tensor (float64 unless ``dtype`` or a float32 input says otherwise)
    and whether it came as numpy."""
    is_numpy = not isinstance(x, torch.Tensor)
    t = torch.as_tensor(np.asarray(x) if is_numpy else x)
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() and t.dtype != torch.float16 else torch.float64
    return t.to(dtype=dtype, device=device), is_numpy


def validate_inputs(x: Tensor, name: str = "x", d0: int | None = None) -> None:
    """Reject what the kernels are not defined for, naming the offending rows."""
    if x.ndim != 2:
        raise InputError(f"{name} must be a 2-D array of shape (n, d0), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    if d0 is not None and x.shape[1] != d0:
        raise InputError(f"{name} has d0={x.shape[1]} features but d0={d0} was expected")
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        rows = torch.nonzero(bad).flatten()[:10].tolist()
        raise InputError(f"{name} has {int(bad.sum())} row(s) with NaN/inf values, e.g. rows {rows}")
    zero = (x == 0).all(dim=1)
    if zero.any():
        rows = torch.nonzero(zero).flatten()[:10].tolist()
        raise InputError(f"{name} has {int(zero.sum())} zero row(s), e.g. rows {rows}: the "
                         "kernels need nonzero inputs (the paper scales rows to unit norm)")


def prepare(x1: ArrayLike, x2: ArrayLike | None, dtype: torch.dtype | None,
            device: torch.device | str | None) -> tuple[Tensor, Tensor, bool]:
    """Both point sets as validated tensors of one dtype and device (``x2 is x1`` when
    ``x2`` is None) and whether the input was numpy."""
    t1, is_numpy = to_tensor(x1, dtype, device)
    validate_inputs(t1, "x1")
    if x2 is None:
        return t1, t1, is_numpy
    t2, _ = to_tensor(x2, t1.dtype, t1.device)
    validate_inputs(t2, "x2", d0=t1.shape[1])
    return t1, t2, is_numpy


def check_depth(depth: int) -> int:
    """The number of hidden layers L as an int ≥ 1, or a ValueError naming it."""
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise InputError(f"depth (number of hidden layers L) must be an integer ≥ 1, got {depth!r}")
    return int(depth)


def check_kind(kind: str) -> str:
    """``"jntk"`` (Θ) or ``"nngp"`` (Σ^(L)), or a ValueError naming it."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def check_lam(lam: float) -> float:
    """The Jacobian-regularisation weight λ as a finite float ≥ 0 — the one λ check."""
    lam = float(lam)
    if not (0.0 <= lam) or not math.isfinite(lam):
        raise InputError(f"lam (Jacobian-regularisation weight λ) must be ≥ 0, got {lam}")
    return lam


def as_output(t: Tensor, is_numpy: bool) -> ArrayLike:
    """``t`` as numpy when the input was numpy, else as is."""
    return t.detach().cpu().numpy() if is_numpy else t
