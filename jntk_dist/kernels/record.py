"""The records the kernels carry: the 8 scalar fields of a pair, as a jet and as a result.

Every scalar kernel of the bias-free MLP depends on a pair (x, x') only through
a = |x|², b = <x, x'>, c = |x'|²:  k(x, x') = κ(a, b, c). The *fields* are κ with the partial
derivatives the block formula needs (docs/design.md, "The structure"):

    FIELD_NAMES = (κ, κ_a, κ_b, κ_c, κ_ab, κ_ac, κ_bb, κ_bc)

This module is the one home of their order (:data:`FIELD_NAMES`, :data:`FIELD_INDEX`) and of
the mirror identity: the fields of (x', x) are the transposed fields of (x, x') with a and c
swapped (κ_a ↔ κ_c, κ_ab ↔ κ_bc), :data:`MIRROR_ORDER` / :func:`mirror_stack`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FIELD_NAMES", "FIELD_INDEX", "MIRROR_ORDER", "Jet", "Diagonal", "KernelFields",
           "mirror_stack"]

Tensor = torch.Tensor
ArrayLike = Any  # numpy.ndarray | torch.Tensor

FIELD_NAMES = ("k", "k_a", "k_b", "k_c", "k_ab", "k_ac", "k_bb", "k_bc")
FIELD_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}
_A_C_SWAP = {"k_a": "k_c", "k_c": "k_a", "k_ab": "k_bc", "k_bc": "k_ab"}
#: stacked fields of (x', x) = stacked fields of (x, x')[MIRROR_ORDER], transposed
MIRROR_ORDER = tuple(FIELD_INDEX[_A_C_SWAP.get(n, n)] for n in FIELD_NAMES)


def mirror_stack(stacked: ArrayLike) -> ArrayLike:
    """The (8, n2, n1) fields of (x2, x1) from the (8, n1, n2) fields of (x1, x2) (numpy or
    torch; a view where the input allows)."""
    return stacked[list(MIRROR_ORDER)].swapaxes(-1, -2)


@dataclass(frozen=True)
class Jet:
    """κ(a, b, c) with the partial derivatives the block formula needs (broadcastable tensors).

    ``+`` and ``*`` follow the sum and product rules, so the layer recursion reads the same on
    jets as on plain values (Θ ← Σ + Θ·Γ)."""

    k: Tensor | float
    k_a: Tensor | float = 0.0
    k_b: Tensor | float = 0.0
    k_c: Tensor | float = 0.0
    k_ab: Tensor | float = 0.0
    k_ac: Tensor | float = 0.0
    k_bb: Tensor | float = 0.0
    k_bc: Tensor | float = 0.0

    def __add__(self, other: "Jet") -> "Jet":
        return Jet(*(s + o for s, o in zip(self.parts(), other.parts())))

    def __mul__(self, other: "Jet") -> "Jet":
        f, g = self, other
        return Jet(
            k=f.k * g.k,
            k_a=f.k_a * g.k + f.k * g.k_a,
            k_b=f.k_b * g.k + f.k * g.k_b,
            k_c=f.k_c * g.k + f.k * g.k_c,
            k_ab=f.k_ab * g.k + f.k_a * g.k_b + f.k_b * g.k_a + f.k * g.k_ab,
            k_ac=f.k_ac * g.k + f.k_a * g.k_c + f.k_c * g.k_a + f.k * g.k_ac,
            k_bb=f.k_bb * g.k + 2 * f.k_b * g.k_b + f.k * g.k_bb,
            k_bc=f.k_bc * g.k + f.k_b * g.k_c + f.k_c * g.k_b + f.k * g.k_bc,
        )

    def parts(self) -> tuple:
        """The 8 parts in FIELD_NAMES order."""
        return tuple(getattr(self, n) for n in FIELD_NAMES)


@dataclass(frozen=True)
class Diagonal:
    """Σ^(l)(x, x) as a function of the squared norm alone: value and d/d(norm²)."""

    v: Tensor
    d: Tensor | float


@dataclass(frozen=True)
class KernelFields:
    """The 8 scalar fields of Σ^(L) or Θ for all pairs of two point sets, each (n1, n2)."""

    k: Tensor
    k_a: Tensor
    k_b: Tensor
    k_c: Tensor
    k_ab: Tensor
    k_ac: Tensor
    k_bb: Tensor
    k_bc: Tensor
    kind: str = "jntk"
    depth: int = 1
    activation: str = "gelu"

    #: the index of each field in :meth:`stack` (FIELD_NAMES order)
    index = FIELD_INDEX

    def stack(self) -> Tensor:
        """All fields as one tensor of shape (8, n1, n2), in FIELD_NAMES order."""
        return torch.stack([getattr(self, n) for n in FIELD_NAMES])

    @classmethod
    def from_stack(cls, stacked: ArrayLike, **meta: Any) -> "KernelFields":
        """Fields from an (8, n1, n2) array in FIELD_NAMES order (``meta``: kind, depth, …)."""
        stacked = torch.as_tensor(stacked)
        return cls(*(stacked[i] for i in range(len(FIELD_NAMES))), **meta)

    def mirror(self) -> "KernelFields":
        """The fields of the swapped pairs (x2, x1): transposed, a ↔ c."""
        parts = [getattr(self, FIELD_NAMES[i]).T for i in MIRROR_ORDER]
        return KernelFields(*parts, kind=self.kind, depth=self.depth, activation=self.activation)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.k.shape)  # type: ignore[return-value]

    def numpy(self) -> dict[str, np.ndarray]:
        """The fields as a dict of numpy arrays, by name."""
        return {n: getattr(self, n).detach().cpu().numpy() for n in FIELD_NAMES}
