"""``jntk kernel``: one dataset's kernel computed in this process and written to a file.

``.npy`` holds the Gram alone (written through a memory map, strip by strip);
``.npz`` holds ``gram``, ``X``, ``y`` and a JSON ``meta``; ``.zarr`` runs the distributed Gram
job (:mod:`.gram`, embedded Ray) so the store is the same as ``jntk gram`` writes. A file is
written under a ``.partial`` name and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, kernels
from ..kernels.inputs import check_depth, check_kind, check_lam
from ..progress import progress
from .config import DatasetSpec, check_max_depth
from .gram import GramJobConfig, describe, run_gram
from ..errors import ConfigError

__all__ = ["KernelRequest", "write_kernel"]

ROW_BLOCK_ENTRIES = 1 << 24  # Gram entries per computed strip (128 MiB in float64)
SUFFIXES = (".npy", ".npz", ".zarr")


@dataclass
class KernelRequest:
    """What ``jntk kernel`` was asked: the data, the kernel, the output file."""

    out: Path
    depth: int
    dataset: str | None = None  # a dataset name of jntk_dist.data, or
    data: Path | None = None  # a file with X and y
    options: dict[str, Any] = field(default_factory=dict)  # dataset options
    activation: str = "gelu"
    kind: str = "jntk"
    lam: float | None = None
    plain: bool = False  # the 00 entries only (plain NNGP/NTK)
    dtype: str = "float64"
    compile: bool = False
    overwrite: bool = False
    progress: bool = True


def write_kernel(req: KernelRequest) -> str:
    """Compute and write the kernel; returns what the CLI prints."""
    out, suffix = req.out, req.out.suffix.lower()
    _check_request(req)
    if suffix == ".zarr":
        return _write_store(req)
    spec = DatasetSpec(name=req.dataset, options=req.options) if req.dataset else \
        DatasetSpec(path=req.data)
    data = spec.load()
    x = torch.as_tensor(data.X, dtype=getattr(torch, req.dtype))
    kernels.validate_inputs(x, "X")
    meta = {"dataset": data.name, "kind": req.kind, "depth": req.depth,
            "activation": req.activation, "lam": req.lam, "plain": req.plain,
            "dtype": req.dtype, "layout": "point-major: row i*(d0+1)+alpha, alpha=0 output",
            "package_version": __version__, "scaling": "kappa^-2"}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.stem + ".partial" + suffix)  # renamed into place when complete
    try:
        _compute_and_save(req, x, data.X, data.y, meta, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return (f"wrote {out} ({req.kind}{' 00' if req.plain else ''}, {data.name}, "
            f"N={data.X.shape[0]}, d0={data.X.shape[1]})")


def _check_request(req: KernelRequest) -> None:
    """Refuse a bad request before anything is computed or shown (one-line ValueErrors)."""
    if req.out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out must end in .npy, .npz or .zarr, got {req.out.name!r}")
    if req.out.exists() and not req.overwrite:
        raise FileExistsError(f"{req.out} exists; pass --overwrite to replace it")
    check_max_depth(check_depth(req.depth))
    check_kind(req.kind)
    if req.lam is not None:
        check_lam(req.lam)
    activation = kernels.get_activation(req.activation)  # unknown names are refused here
    if not req.plain:
        activation.require_smooth()


def _compute_and_save(req: KernelRequest, x: torch.Tensor, X: np.ndarray, y: np.ndarray,
                      meta: dict[str, Any], path: Path) -> None:
    if req.plain:
        fn = kernels.ntk if req.kind == "jntk" else kernels.nngp
        _save(path, fn(x, depth=req.depth, activation=req.activation).numpy(), X, y, meta)
        return
    n, d0 = x.shape
    side = n * (d0 + 1)
    to_npy = path.suffix.lower() == ".npy"
    gram = (np.lib.format.open_memmap(path, mode="w+", dtype=req.dtype, shape=(side, side))
            if to_npy else np.empty((side, side), dtype=req.dtype))
    rows = max(1, ROW_BLOCK_ENTRIES // (side * (d0 + 1)))  # Gram rows of r points: r·(d0+1)
    strips = kernels.gram_strips(x, gram, depth=req.depth, activation=req.activation,
                                 kind=req.kind, lam=req.lam, points_per_strip=rows,
                                 compile=req.compile or None)  # None: JNTK_COMPILE decides
    with progress(n, f"{req.kind} L={req.depth} {req.activation}", unit="pt",
                  enabled=req.progress) as bar:
        for done in strips:
            bar.update(done - bar.n)
    if to_npy:
        gram.flush()
    else:
        _save(path, gram, X, y, meta)


def _save(out: Path, gram: np.ndarray, X: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> None:
    if out.suffix.lower() == ".npy":
        np.save(out, gram)
    else:
        np.savez(out, gram=gram, X=X, y=y, meta=np.array(json.dumps(meta)))


def _write_store(req: KernelRequest) -> str:
    if req.plain:
        raise ConfigError("--plain writes .npy/.npz only; a Zarr store holds Jacobian kernels")
    dataset: dict[str, Any] = ({"name": req.dataset} if req.dataset else {"path": str(req.data)})
    if req.options:
        dataset["options"] = req.options
    config = GramJobConfig.model_validate({
        "dataset": dataset, "output": str(req.out), "store": "dense",
        "kernel": {"kind": req.kind, "depth": req.depth, "activation": req.activation,
                   "dtype": req.dtype, "lam": req.lam}})
    return describe(run_gram(config, overwrite=req.overwrite, progress=req.progress))
