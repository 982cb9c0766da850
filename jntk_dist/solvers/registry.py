"""The one list of preconditioners: a registry name → class (in the style of linear_operator).

Every preconditioner of (A + μI) is a :class:`Preconditioner` subclass with a ``name``, a
one-line ``description`` and a ``build(parts, mu, **options)`` constructor, registered once with
:func:`register`. :func:`jntk_dist.solvers.make_preconditioner`, the configs' allowed names,
``auto``, the CLI/config help and the benchmarks all read :data:`REGISTRY` (through
:func:`preconditioner_names` and :func:`preconditioner_help`). This module imports no
preconditioner itself; :mod:`.preconditioners` imports the modules that register them.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["Preconditioner", "REGISTRY", "register", "preconditioner_names",
           "preconditioner_help", "preconditioner_class"]

Tensor = torch.Tensor

REGISTRY: dict[str, type["Preconditioner"]] = {}


class Preconditioner:
    """Approximates (A + μI)⁻¹; ``apply`` maps (n(d0+1), m) → (n(d0+1), m).

    Capabilities a solver may use are declared here, not found by duck typing:
    ``provides_start`` — :meth:`start` gives a starting iterate x₀ for PCG (a coarse-space
    solution, or the exact solution of a direct factorisation). ``choice`` records why this
    preconditioner was built (``auto`` fills it in; empty for a named one).
    """

    name = "none"
    description = "no preconditioning (the identity)"
    provides_start = False
    choice = ""

    @classmethod
    def build(cls, parts: Any, mu: float, **options: Any) -> "Preconditioner":
        """The preconditioner of (parts + μI) (``parts``: the square structured operator's
        :class:`~jntk_dist.operators.StructuredParts`); ``options`` are the class's keywords."""
        return cls(parts, mu, **options)  # type: ignore[call-arg]

    def apply(self, R: Tensor) -> Tensor:
        raise NotImplementedError

    def start(self, b: Tensor) -> Tensor:
        """x₀ for PCG from the right-hand side(s) b (n(d0+1), m); only if ``provides_start``."""
        raise NotImplementedError(f"the {self.name} preconditioner gives no starting iterate")

    def __call__(self, R: Any) -> Any:
        is_numpy = not isinstance(R, torch.Tensor)
        Rt = torch.as_tensor(np.asarray(R)) if is_numpy else R
        squeeze = Rt.ndim == 1
        out = self.apply(Rt[:, None] if squeeze else Rt)
        out = out[:, 0] if squeeze else out
        return out.cpu().numpy() if is_numpy else out


P = TypeVar("P", bound=type[Preconditioner])


def register(cls: P) -> P:
    """Class decorator: list ``cls`` under ``cls.name`` (a name is registered once)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"preconditioner name {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def preconditioner_names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(REGISTRY)


def preconditioner_class(name: str) -> type[Preconditioner]:
    """The class registered as ``name``, or a message listing the names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"preconditioner must be one of {', '.join(REGISTRY)}; got {name!r}"
                         ) from None


def preconditioner_help(sep: str = "; ") -> str:
    """``name: description`` of every registered preconditioner (CLI and config help)."""
    return sep.join(f"{name}: {cls.description}" for name, cls in REGISTRY.items())

