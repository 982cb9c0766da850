"""Acceleration only: torch.compile of the layer step and of the fused block expansion.

Nothing here is mathematics: the compiled functions are :func:`.recursion.layer_flat` and
:func:`.blocks.expansion_fused`, and the tests hold the compiled and eager routes equal to
rounding. Inductor fuses the ~130 elementwise ops of a layer into one loop (3–8× faster per
pair); a one-off compile costs seconds (torch's disk cache) to a minute or two (cold).
"""

from __future__ import annotations

import os
import types
from typing import Any

import torch

from .activations import Activation
from .blocks import expansion_fused
from .recursion import layer_flat

__all__ = ["compile_enabled", "compiled_layer", "compiled_expansion", "block_side",
           "FUSED_EXPANSION_ROWS"]

Tensor = torch.Tensor

_COMPILED: dict[tuple | str, Any] = {}  # torch.compile wrappers, one per graph
# On CPU the ~130 temporaries of a layer stay in cache when a block holds ~16-32 k pairs (2×
# faster than whole 512² tiles); on a GPU big blocks are best. Square blocks of one side keep
# the compiled layer step on one static shape for all but the ragged edge blocks.
CPU_BLOCK_SIDE = 128
GPU_BLOCK_SIDE = 2048
FUSED_EXPANSION_ROWS = 32  # Gram block rows per call of the fused expansion on CPU


def compile_enabled(compile: bool | None) -> bool:
    """``compile`` if given, else the environment variable ``JNTK_COMPILE=1``."""
    if compile is not None:
        return bool(compile)
    return os.environ.get("JNTK_COMPILE", "0").lower() in ("1", "true", "yes")


def block_side(device: torch.device) -> int:
    """Side of the square pair blocks the recursion runs on, per device type."""
    return CPU_BLOCK_SIDE if device.type == "cpu" else GPU_BLOCK_SIDE


def compiled_layer(act: Activation, kind: str, dtype: torch.dtype = torch.float64,
                   shape: tuple[int, int] | None = None,
                   device: torch.device = torch.device("cpu")) -> Any:
    """torch.compile'd layer step (closed-form activations only). With ``shape`` the graph is
    specialised to blocks of that shape (static sizes let inductor vectorise: ~1.7× faster per
    pair on CPU); without, it takes any shape (used for the ragged edge blocks)."""
    key = ("layer", act.name, kind, shape)
    if key not in _COMPILED:
        step = torch.compile(_own_code(_layer_closure(act, kind)), dynamic=shape is None)
        # Without a shape, compile first on distinct sizes: a first call on a square tile would
        # make dynamo assume n1 == n2 ("duck sizing") and recompile for every later shape.
        n1, n2 = shape or (3, 5)
        rows = torch.ones(n1, 1, dtype=dtype, device=device)
        cols = torch.ones(1, n2, dtype=dtype, device=device)
        pair = torch.full((n1, n2), 0.5, dtype=dtype, device=device)
        with torch.no_grad():  # as in fields(): grad mode is part of dynamo's guards
            step(rows, rows.clone(), cols, cols.clone(), *(pair.clone() for _ in range(16)))
        _COMPILED[key] = step
    return _COMPILED[key]


def _layer_closure(act: Activation, kind: str) -> Any:
    def layer(*t: Tensor) -> tuple[Tensor, ...]:
        return layer_flat(act, kind, *t)
    return layer


def _own_code(fn: Any) -> Any:
    """``fn`` with a private copy of its code object. Dynamo keeps its compiled graphs and
    their recompile limit per code object (a functools.partial would share torch's wrapper's),
    so each compiled graph gets its own."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


def compiled_expansion() -> Any:
    """The fused expansion, torch.compile'd with static shapes (dynamic shapes run ~3× slower);
    a new column count or d0 compiles once more (a few seconds)."""
    if "expansion" not in _COMPILED:
        _COMPILED["expansion"] = torch.compile(expansion_fused, dynamic=False)
    return _COMPILED["expansion"]
