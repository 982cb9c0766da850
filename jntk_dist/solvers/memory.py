"""The one memory rule of the solvers: what a set-up needs at its peak against what the device
has free, with headroom for whatever else runs on the machine.

* free memory and usable share: the one memory rule of :mod:`jntk_dist.kernels.devices`
  (GPU: ``torch.cuda.mem_get_info``; CPU: the *available* RAM); usable: 60 % of it, for both
  the preconditioners' set-up (:func:`.coarse.coarse_budget`, ``auto``) and a product's row
  tiles (:func:`auto_tile_mb`, the jobs' and the operators' ``memory_mb: auto``);
* a :class:`MemoryPlan` counts the set-up's peak (held matrices and temporaries), prints
  "needs X GB on the device, Y GB on the host; has Z GB" and refuses with one line naming the
  alternatives (:class:`NotEnoughMemoryError`) when nothing fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ResourceError
from ..kernels.devices import USABLE_FRACTION, auto_tile_mb, free_bytes, usable_bytes

__all__ = ["USABLE_FRACTION", "NotEnoughMemoryError", "MemoryPlan", "Budget", "free_bytes",
           "usable_bytes", "budget", "auto_tile_mb", "gb"]


class NotEnoughMemoryError(ResourceError, MemoryError):
    """Nothing the solver could build fits the device's memory; the message names what it
    needs, what the device has and the alternatives (a :class:`~jntk_dist.errors.ResourceError`:
    the CLI prints it as one line)."""


def gb(n_bytes: float) -> str:
    """Bytes as GB with 2 significant digits' worth of precision."""
    return f"{n_bytes / 1e9:.2g} GB" if n_bytes < 1e10 else f"{n_bytes / 1e9:.0f} GB"


@dataclass(frozen=True)
class Budget:
    """The bytes a set-up may use and where that number came from."""

    bytes: float
    note: str


def budget(device: torch.device | str, budget_bytes: float | None = None) -> Budget:
    """:func:`usable_bytes` with its origin (a given budget, or the share of the free memory)."""
    if budget_bytes is not None:
        return Budget(float(budget_bytes), "the given budget")
    free = free_bytes(device)
    return Budget(USABLE_FRACTION * free, f"{USABLE_FRACTION:.0%} of {gb(free)} free")


@dataclass
class MemoryPlan:
    """What one choice needs at its set-up's peak, on the device and on the host (the same
    memory on a CPU), against what may be used there."""

    what: str
    device_bytes: float
    host_bytes: float
    usable: Budget
    device: str = "cpu"

    @property
    def needs(self) -> float:
        same = self.device == "cpu"
        return self.device_bytes + self.host_bytes if same else self.device_bytes

    @property
    def fits(self) -> bool:
        return self.needs <= self.usable.bytes

    def text(self) -> str:
        """"needs X GB on the device, Y GB on the host; has Z"."""
        where = "in RAM" if self.device == "cpu" else \
            f"on the device, {gb(self.host_bytes)} on the host"
        return (f"{self.what} needs {gb(self.needs if self.device == 'cpu' else self.device_bytes)}"
                f" {where}; has {gb(self.usable.bytes)} ({self.usable.note})")


def refuse(plans: list[MemoryPlan], alternatives: str) -> NotEnoughMemoryError:
    """The one-line error when no plan fits."""
    tried = "; ".join(p.text() for p in plans)
    return NotEnoughMemoryError(f"no preconditioner fits the memory: {tried}. {alternatives}")
