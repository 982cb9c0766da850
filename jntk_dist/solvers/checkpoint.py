"""Checkpoints of iterative state: written atomically, resumed exactly, refused when they belong
to another problem.

One protocol (:class:`Checkpointer`: ``load() -> state | None``, ``save(state, metrics)``) with
two homes for the state: :class:`IterativeCheckpoint` (numpy arrays in one ``.npz``, stamped with
a fingerprint of the problem; the solvers' CG, LOBPCG and shift-invert iterations) and
:class:`FileCheckpointer` (torch tensors in ``state.pt``; the drift runs, whose other home is
Ray Train's checkpoints).
"""

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

__all__ = ["Checkpointer", "IterativeCheckpoint", "FileCheckpointer", "load_state",
           "write_progress", "fingerprint"]


class Checkpointer(Protocol):
    """Where an iteration keeps its state between attempts."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None: ...


def fingerprint(op: Any, **problem: Any) -> str:
    """A digest of the problem an iterative state belongs to: the operator's shape, λ,
    description and inputs, and the named parts of the problem (arrays by their bytes)."""
    h = hashlib.sha256()
    desc = {"shape": list(op.shape), "lam": getattr(op, "lam", None),
            "description": {k: str(v) for k, v in getattr(op, "description", {}).items()}}
    arrays = {k: v for k, v in problem.items() if isinstance(v, np.ndarray)}
    desc.update({k: v for k, v in problem.items() if k not in arrays})
    h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    x1 = getattr(op, "x1", None)
    if x1 is not None:
        h.update(np.ascontiguousarray(x1.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


class IterativeCheckpoint:
    """The state of one iterative computation in ``path`` (``.npz``), for one problem.

    ``load()`` returns the saved arrays, or None when there is no checkpoint; a checkpoint of
    another problem (another ``fingerprint``) is refused with a ValueError naming ``what``.
    ``save(state)`` replaces the file atomically (a kill never leaves half a checkpoint);
    :meth:`due` says whether ``every`` seconds have passed since the last save.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str, what: str,
                 every: float = 60.0) -> None:
        self.path, self.fingerprint, self.what = Path(path), fingerprint, what
        self.every = float(every)
        self._last = time.perf_counter()

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        with np.load(self.path) as z:
            if str(z["fingerprint"]) != self.fingerprint:
                raise ValueError(f"checkpoint {self.path} was written for another system "
                                 f"({self.what} differ); remove it or choose another path")
            return {k: z[k] for k in z.files if k != "fingerprint"}

    def due(self) -> bool:
        return time.perf_counter() - self._last >= self.every

    def save(self, state: dict[str, Any], metrics: dict[str, Any] | None = None) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, fingerprint=np.str_(self.fingerprint), **state)
        os.replace(tmp, self.path)  # atomic: a kill never leaves a half-written checkpoint
        self._last = time.perf_counter()


def load_state(path: Path) -> dict[str, Any]:
    """A run's checkpointed state: tensors and plain values only (``torch.load(weights_only=True)``,
    no arbitrary unpickling); anything else is refused with a clear error."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds more than tensors and plain values; refusing "
                         f"to unpickle it (delete it to restart the run): {err}") from None


class FileCheckpointer:
    """State in ``<dir>/state.pt``, replaced atomically, and the latest metrics in
    ``<dir>/progress.json`` (the drift runs' plain-task backend)."""

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
    """The latest metrics of a run as ``progress.json``, replaced atomically."""
    tmp = directory / "progress.json.tmp"
    tmp.write_text(json.dumps({**metrics, "pid": os.getpid(), "time": time.time()}))
    os.replace(tmp, directory / "progress.json")
