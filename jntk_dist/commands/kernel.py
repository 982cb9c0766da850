"""``jntk kernel``: one dataset's kernel computed in this process and written to a file.

    jntk kernel --dataset forest_fires --depth 3 --activation gelu --out ff.npy
    jntk kernel --data my.npz --depth 2 --kind nngp --lam 0.01 --out k.npz
    jntk kernel --dataset sonar --depth 5 --plain --out ntk00.npy      # 00 entries only (N×N)
    jntk kernel --dataset banknote --depth 3 --out bank.zarr            # Zarr: same as `jntk gram`

``.npy`` holds the Gram alone (written through a memory map, row block by row block);
``.npz`` holds ``gram``, ``X``, ``y`` and a JSON ``meta``; ``.zarr`` runs the distributed
:mod:`jntk_dist.gram_job` (embedded Ray) so the store is the same as ``jntk gram`` writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__, kernels
from ..activations import available_activations, get_activation
from ..config import DatasetSpec

log = logging.getLogger(__name__)

ROW_BLOCK_ENTRIES = 1 << 24  # Gram entries per computed row block (128 MiB in float64)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kernel", help="compute one dataset's kernel in this process and write it to a file",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a dataset of jntk_dist.data (forest_fires, banknote, "
                     "sonar, digits, fibonacci)")
    src.add_argument("--data", type=Path, help=".npz with X and y, or .npy/.csv table with y last")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. near_parallel_threshold=0.99 (repeatable)")
    p.add_argument("--depth", type=int, required=True, help="hidden layers L")
    p.add_argument("--activation", default="gelu",
                   help=f"one of {', '.join(available_activations())}")
    p.add_argument("--kind", choices=kernels.KINDS, default="jntk",
                   help="jntk (Θ) or nngp (Jacobian NNGP Σ^(L))")
    p.add_argument("--lam", type=float, default=None, help="report Θ_λ = ΛΘΛ")
    p.add_argument("--plain", action="store_true",
                   help="only the 00 entries (plain NNGP/NTK, N×N; any activation)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the recursion and the expansion (erf/gelu): ~3× faster "
                        "for big N after a compile of seconds")
    p.add_argument("--out", type=Path, required=True, help=".npy, .npz or .zarr")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _dataset(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    spec = DatasetSpec(name=args.dataset, options=_options(args)) if args.dataset else \
        DatasetSpec(path=args.data)
    data = spec.load()
    return data.X, data.y, data.name


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".npz", ".zarr"):
        raise ValueError(f"--out must end in .npy, .npz or .zarr, got {out.name!r}")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if suffix == ".zarr":
        return _run_zarr(args)
    X, y, name = _dataset(args)
    dtype = getattr(torch, args.dtype)
    x = torch.as_tensor(X, dtype=dtype)
    kernels.validate_inputs(x, "X")
    if not args.plain:
        get_activation(args.activation).require_smooth()
    meta = {"dataset": name, "kind": args.kind, "depth": args.depth,
            "activation": args.activation, "lam": args.lam, "plain": args.plain,
            "dtype": args.dtype, "layout": "point-major: row i*(d0+1)+alpha, alpha=0 output",
            "package_version": __version__, "scaling": "kappa^-2"}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.stem + ".partial" + suffix)  # renamed into place when complete
    try:
        _compute_and_save(args, x, X, y, meta, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {out} ({args.kind}{' 00' if args.plain else ''}, {name}, "
          f"N={X.shape[0]}, d0={X.shape[1]})")
    return 0


def _compute_and_save(args: argparse.Namespace, x: torch.Tensor, X: np.ndarray, y: np.ndarray,
                      meta: dict[str, Any], path: Path) -> None:
    if args.plain:
        fn = kernels.ntk if args.kind == "jntk" else kernels.nngp
        _save(path, fn(x, depth=args.depth, activation=args.activation).numpy(), X, y, meta)
        return
    n, d0 = x.shape
    side = n * (d0 + 1)
    to_npy = path.suffix.lower() == ".npy"
    gram = (np.lib.format.open_memmap(path, mode="w+", dtype=args.dtype, shape=(side, side))
            if to_npy else np.empty((side, side), dtype=args.dtype))
    rows = max(1, ROW_BLOCK_ENTRIES // (side * (d0 + 1)))  # Gram rows of r points: r·(d0+1)
    with tqdm(total=n, unit="pt", desc=f"{args.kind} L={args.depth} {args.activation}",
              disable=args.no_progress) as bar:
        p = d0 + 1
        use_compile = args.compile or None  # None: the JNTK_COMPILE environment variable
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            # the Gram is symmetric: compute the strip right of the diagonal, copy the rest
            f = kernels.fields(x[r0:r1], x[r0:], depth=args.depth, activation=args.activation,
                               kind=args.kind, compile=use_compile)
            right = kernels.expand_gram(f, x[r0:r1], x[r0:], lam=args.lam, compile=use_compile)
            gram[r0 * p:r1 * p, r0 * p:] = right.numpy()
            gram[r0 * p:r1 * p, :r0 * p] = gram[:r0 * p, r0 * p:r1 * p].T
            bar.update(r1 - r0)
    if to_npy:
        gram.flush()
    else:
        _save(path, gram, X, y, meta)


def _save(out: Path, gram: np.ndarray, X: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> None:
    if out.suffix.lower() == ".npy":
        np.save(out, gram)
    else:
        np.savez(out, gram=gram, X=X, y=y, meta=np.array(json.dumps(meta)))


def _run_zarr(args: argparse.Namespace) -> int:
    from ..gram_job import GramJobConfig, describe, run_gram

    if args.plain:
        raise ValueError("--plain writes .npy/.npz only; a Zarr store holds Jacobian kernels")
    dataset: dict[str, Any] = ({"name": args.dataset} if args.dataset else
                               {"path": str(args.data)})
    if args.option:
        dataset["options"] = _options(args)
    config = GramJobConfig.model_validate({
        "dataset": dataset, "output": str(args.out), "store": "dense",
        "kernel": {"kind": args.kind, "depth": args.depth, "activation": args.activation,
                   "dtype": args.dtype, "lam": args.lam}})
    result = run_gram(config, overwrite=args.overwrite, progress=not args.no_progress)
    print(describe(result))
    return 0
