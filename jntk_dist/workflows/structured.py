"""The matrix-free (structured) mode of the solve and eigen jobs: the ``structured:`` config and
the training operator Θ_λ(X_train, X_train) it builds — fields from a fields store, in memory or
recomputed; products in this process (CPU or GPU) or by row blocks on Ray actors or Dask tasks."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import kernels
from ..kernels.devices import choose_device
from ..operators import DaskStructuredKernel, RayStructuredKernel
from ..operators.structured import structured_operator
from ..solvers import PRECONDITIONERS, preconditioner_help
from ..solvers.memory import auto_tile_mb
from .config import OutputPath
from .problem import Problem, compute_context
from ..errors import ConfigError

__all__ = ["StructuredSpec", "structured_off", "StoreFieldsView", "structured_train_operator",
           "resolve_device", "train_operator", "float32_twin"]

log = logging.getLogger(__name__)

class StructuredSpec(BaseModel):
    """``structured:`` of the solve/eigen jobs: never form the dense Gram; use the matrix-free
    operator of :mod:`jntk_dist.operators.structured` (PCG for solves, Lanczos/LOBPCG for spectra).

    ``structured: true`` (or ``--structured``) turns it on with these defaults; a mapping turns it
    on unless it says ``enabled: false``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # a registered name (jntk_dist.solvers.PRECONDITIONERS); auto: chosen from N, d0, X and the
    # free memory, recorded with its reason in the summary (docs/structured.md, "auto")
    preconditioner: str = Field(default="auto", description=preconditioner_help())
    tol: float = Field(default=1e-8, gt=0.0)  # PCG: |b − Aα|/|b|; LOBPCG: |Av − θv| ≤ tol·λ_max
    maxiter: int | None = Field(default=None, ge=1)  # None: the solvers' defaults
    checkpoint: OutputPath | None = None  # a local path; solve default: <output stem>_pcg.npz
    # beside a local output, in this machine's scratch folder for a URL output (store.local_beside)
    checkpoint_every: float = Field(default=60.0, gt=0.0)  # seconds between checkpoints
    memory_mb: float | Literal["auto"] = 512.0  # working set of a product's row tile; auto:
    # a quarter of 60 % of the device's free memory (GPU or RAM), at most 4 GiB
    # (jntk_dist.solvers.memory: the one rule of the set-ups too)
    fields: Literal["auto", "memory", "recompute"] = "auto"  # auto: held in memory if the 8 N²
    # fields fit in memory_mb, else recomputed (a store: read) per row tile on every product
    lambda_min_method: Literal["shift_invert", "lobpcg"] = "shift_invert"  # eigen: λ_min route
    # (shift-invert with inner PCG: fewer products on digits, docs/structured.md)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    compile: bool | Literal["auto"] = "auto"  # the compiled field recursion; auto: on CUDA
    backend: Literal["local", "ray", "dask"] = "local"  # where products run: this process, or
    # row blocks on Ray actors (one GPU each with gpus_per_worker: 1) or Dask tasks
    precision: Literal["float64", "mixed"] = "float64"  # mixed: float32 fields and products
    # drive PCG, the residual is replaced by the float64 one every 10× of decrease and at the end
    # (reliable updates), so tol holds for the float64 system (local backend, computed fields)
    workers: int = Field(default=2, ge=1)  # ray / dask: row blocks
    gpus_per_worker: float = Field(default=0.0, ge=0.0)  # ray: fractional GPUs allowed

    @field_validator("preconditioner")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in PRECONDITIONERS:
            raise ValueError(f"structured.preconditioner must be one of "
                             f"{', '.join(PRECONDITIONERS)}; got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return {"enabled": bool(value)}
        return value


def structured_off() -> StructuredSpec:
    """The default of the ``structured:`` key: dense Gram."""
    return StructuredSpec(enabled=False)


class StoreFieldsView:
    """``fields_tile(rows, cols)`` of a fields store's (8, N, N) fields restricted to index sets
    (the train split, or test × train), read one row tile at a time (a corrupt or missing chunk
    raises naming it: :meth:`jntk_dist.store.GramStore.read_fields`)."""

    def __init__(self, store: Any, row_index: np.ndarray, col_index: np.ndarray) -> None:
        self.store, self.rows, self.cols = store, np.asarray(row_index), np.asarray(col_index)

    def fields_tile(self, rows: slice, cols: slice) -> np.ndarray:
        r, c = self.rows[rows], self.cols[cols]
        if r.size == 0 or c.size == 0:
            return np.zeros((8, r.size, c.size))
        block = self.store.read_fields(slice(int(r.min()), int(r.max()) + 1),
                                       slice(int(c.min()), int(c.max()) + 1))
        return block[:, r - r.min()][:, :, c - c.min()]


def resolve_device(spec: StructuredSpec) -> torch.device:
    """The device of the structured operator: ``auto`` is CUDA when present."""
    return choose_device(spec.device, what="structured.device")


def _compile_setting(spec: StructuredSpec, device: torch.device,
                     activation: str) -> bool | None:
    """``compile: auto`` compiles the field recursion on CUDA (closed-form activations) and
    leaves it to ``JNTK_COMPILE`` elsewhere (None)."""
    if spec.compile == "auto":
        on_gpu = device.type == "cuda" and kernels.get_activation(activation).has_closed_form
        return True if on_gpu else None
    return bool(spec.compile)


def _warm_up(activation: str, device: torch.device) -> float:
    """Compile (or load from torch's cache) the layer step now; returns the seconds it took
    (once per process: later calls find the compiled graphs)."""
    t0 = time.perf_counter()
    kernels.compile_warm_up(activation, "jntk", torch.float64, device)
    seconds = time.perf_counter() - t0
    log.info("compiled field recursion ready on %s in %.1f s", device, seconds)
    return seconds


def _distributed_operator(X: np.ndarray, spec: StructuredSpec, kw: dict[str, Any],
                          mode: str) -> Any:
    if spec.backend == "ray":
        return RayStructuredKernel(X, n_workers=spec.workers, mode=mode,
                                   num_gpus_per_worker=spec.gpus_per_worker, **kw)
    return DaskStructuredKernel(X, n_blocks=spec.workers, **kw)


def structured_train_operator(prob: Problem, spec: StructuredSpec, lam: float) -> Any:
    """The matrix-free Θ_λ(X_train, X_train): fields read tile by tile from a ``fields`` store,
    else from ``kernels.fields`` (held in memory or recomputed per tile, ``spec.fields``), on
    ``spec.device``; products here or on ``spec.backend``'s row blocks. The operator's
    ``description`` records the device, the tile budget and the compile time."""
    if lam <= 0:
        raise ConfigError("structured mode is the matrix-free Θ_λ with λ > 0 (lam: 0 is the plain "
                         "N×N NTK Gram; use the dense path for it)")
    X_train = prob.X[prob.train]
    device = resolve_device(spec)
    memory_mb = auto_tile_mb(device) if spec.memory_mb == "auto" else float(spec.memory_mb)
    compile = _compile_setting(spec, device, prob.activation)
    compile_s = _warm_up(prob.activation, device) if kernels.compile_enabled(compile) else 0.0
    kw: dict[str, Any] = {"depth": prob.depth, "activation": prob.activation, "lam": lam,
                          "memory_mb": memory_mb}
    mode = spec.fields
    if mode == "auto":
        mode = "memory" if 8 * 8 * X_train.shape[0] ** 2 <= memory_mb * 2**20 else "recompute"
    if prob.store is not None:
        op = _store_operator(prob, X_train, mode, kw, device)
    elif spec.backend != "local":
        op = _distributed_operator(X_train, spec, kw, mode)
    else:
        op = structured_operator(X_train, mode=mode, device=device, compile=compile, **kw)
    op.description.update(device=str(op.device), memory_mb=round(memory_mb, 1),
                          compile_seconds=round(compile_s, 2), backend=spec.backend)
    return op


def _store_operator(prob: Problem, X_train: np.ndarray, mode: str, kw: dict[str, Any],
                    device: torch.device) -> Any:
    if prob.store.mode != "fields":
        raise ConfigError(f"structured mode reads the kernel's 8 scalar fields, but "
                         f"{prob.source} is a {prob.store.mode!r} store (Gram entries only); "
                         "write it with `store: fields` in the gram config, or give "
                         "'dataset' + 'kernel' to compute the fields per tile")
    fields: Any = StoreFieldsView(prob.store, prob.train, prob.train)
    if mode == "memory":  # read once; otherwise one row tile per product
        n = prob.train.size
        fields = np.asarray(fields.fields_tile(slice(0, n), slice(0, n)), dtype=np.float64)
    return structured_operator(X_train, fields=fields, device=device, **kw)


@contextlib.contextmanager
def train_operator(prob: Problem, cfg: Any, lam: float) -> Iterator[Any]:
    """:func:`structured_train_operator` for a job config (``cfg.structured``, ``cfg.compute``),
    inside the cluster its backend needs (Ray for ``backend: ray``, started or attached as
    ``compute`` says); the operator's actors are freed on exit."""
    spec = cfg.structured
    if spec.backend == "local":
        context: Any = contextlib.nullcontext()
    else:
        compute = cfg.compute
        if spec.backend == "ray" and compute.scheduler != "ray":
            compute = compute.model_copy(update={"scheduler": "ray"})
        context = compute_context(compute)
    with context:
        op = structured_train_operator(prob, spec, lam)
        try:
            yield op
        finally:
            if hasattr(op, "shutdown"):
                op.shutdown()


def float32_twin(op: Any, spec: StructuredSpec, prob: Problem) -> Any:
    """The float32 operator of ``precision: mixed`` (None for ``float64``): the same kernel
    with float32 fields and products, on the same device and row tiles."""
    if spec.precision != "mixed":
        return None
    if spec.backend != "local" or prob.store is not None:
        raise ConfigError("structured.precision: mixed needs backend: local and fields computed "
                         "from a dataset (not a store)")
    desc = op.description
    return structured_operator(op.x1.to(torch.float32), depth=prob.depth,
                               activation=prob.activation, lam=op.lam, mode=desc["mode"],
                               memory_mb=op.memory_mb, dtype=torch.float32, device=op.device,
                               compile=desc.get("compile"))
