"""The one device rule (which torch device a ``device`` setting means) and the one memory rule
(how much of a device's free memory a set-up or a product's row tiles may use).

Free memory: on a GPU ``torch.cuda.mem_get_info`` (after emptying PyTorch's cache), on the CPU the
*available* RAM (:func:`jntk_dist.errors.available_memory`). Usable: :data:`USABLE_FRACTION` of
it, the rest being headroom for whatever else runs; a product's row tiles under
``memory_mb: auto`` get :data:`TILE_SHARE` of the usable memory, at most :data:`TILE_CAP_MB`."""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError, available_memory

__all__ = ["DeviceChoice", "choose_device", "USABLE_FRACTION", "free_bytes", "usable_bytes",
           "auto_tile_mb"]

USABLE_FRACTION = 0.6  # of the free memory: the rest is headroom for what else runs
TILE_SHARE = 0.25  # of the usable memory: a product's row tiles under memory_mb: auto
TILE_CAP_MB = 4096.0  # larger row tiles do not make products faster

DeviceChoice = Literal["auto", "cpu", "cuda"]


def choose_device(setting: str | torch.device | None = "auto", *, use_gpu: bool = True,
                  what: str = "device") -> torch.device:
    """The torch device of a ``device`` setting. ``auto`` (or None) is CUDA when torch sees a GPU
    and ``use_gpu`` (e.g. the Ray worker was given one), else the CPU; ``cuda`` where torch sees
    no GPU is a ``ValueError`` naming the setting ``what`` (never a silent CPU run); any other
    value is ``torch.device(setting)``."""
    if setting is None or setting == "auto":
        return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: cuda, but torch sees no CUDA device here "
                         f"(torch.cuda.is_available() is False); use {what}: auto or cpu")
    return device


def free_bytes(device: torch.device | str) -> int:
    """Free memory of ``device``: the GPU's (cache emptied first) or the available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return int(torch.cuda.mem_get_info(device)[0])
    free = available_memory()
    if free is None:
        raise OSError("cannot read the available memory (no psutil, no MemAvailable)")
    return free


def usable_bytes(device: torch.device | str, budget_bytes: float | None = None,
                 fraction: float = USABLE_FRACTION) -> float:
    """What a set-up may use: ``budget_bytes`` when given (tests force decisions with it),
    else ``fraction`` of the device's free memory."""
    if budget_bytes is not None:
        return float(budget_bytes)
    return fraction * free_bytes(device)


def auto_tile_mb(device: torch.device | str, budget_bytes: float | None = None) -> float:
    """The row-tile working set of a product under ``memory_mb: auto``: a quarter of the usable
    memory (the same rule as every set-up), at most 4 GiB."""
    return min(TILE_CAP_MB, TILE_SHARE * usable_bytes(device, budget_bytes) / 2**20)
