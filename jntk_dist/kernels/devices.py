"""The one device rule: which torch device a ``device`` setting means."""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError

__all__ = ["DeviceChoice", "choose_device"]

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
