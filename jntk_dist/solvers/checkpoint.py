"""Checkpoints of iterative state: written atomically, resumed exactly, refused when they
belong to another problem. Used by the solvers (CG, LOBPCG, shift-invert) and the drift runs."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["Checkpointer", "FileCheckpointer", "load_state", "write_progress", "fingerprint",
           "save_npz"]


class Checkpointer(Protocol):
    """Where a run keeps its state between attempts."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...


def load_state(path: Path) -> dict[str, Any]:
    """A run's checkpointed state: tensors and plain values only (``torch.load(weights_only=True)``,
    no arbitrary unpickling); anything else is refused with a clear error."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds more than tensors and plain values; refusing "
                         f"to unpickle it (delete it to restart the run): {err}") from None


class FileCheckpointer:
    """State in ``<dir>/state.pt``, replaced atomically (plain-task backend)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "state.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return load_state(self.path)

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        write_progress(self.directory, metrics)


def write_progress(directory: Path, metrics: dict[str, Any]) -> None:
    tmp = directory / "progress.json.tmp"
    tmp.write_text(json.dumps({**metrics, "pid": os.getpid(), "time": time.time()}))
    os.replace(tmp, directory / "progress.json")


def fingerprint(op: Any, b: np.ndarray, ridge: float, precond: str) -> str:
    h = hashlib.sha256()
    desc = {"shape": list(op.shape), "lam": getattr(op, "lam", None), "ridge": float(ridge),
            "preconditioner": precond,
            "description": {k: str(v) for k, v in getattr(op, "description", {}).items()}}
    h.update(json.dumps(desc, sort_keys=True).encode())
    h.update(np.ascontiguousarray(b).tobytes())
    x1 = getattr(op, "x1", None)
    if x1 is not None:
        h.update(np.ascontiguousarray(x1.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


def save_npz(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint
