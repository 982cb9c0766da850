"""The base class of every preconditioner (those of :mod:`.preconditioners` and the PCA coarse
space of :mod:`.coarse` derive from it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = ["Preconditioner"]


class Preconditioner:
    """Approximates (A + μI)⁻¹; ``apply`` maps (n(d0+1), m) → (n(d0+1), m)."""

    name = "none"

    def apply(self, R: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, R: Any) -> Any:
        is_numpy = not isinstance(R, torch.Tensor)
        Rt = torch.as_tensor(np.asarray(R)) if is_numpy else R
        squeeze = Rt.ndim == 1
        out = self.apply(Rt[:, None] if squeeze else Rt)
        out = out[:, 0] if squeeze else out
        return out.cpu().numpy() if is_numpy else out
