"""``jntk kernel``: one dataset's kernel computed in this process and written to a file.

    jntk kernel --dataset forest_fires --depth 3 --activation gelu --out ff.npy
    jntk kernel --data my.npz --depth 2 --kind nngp --lam 0.01 --out k.npz
    jntk kernel --dataset sonar --depth 5 --plain --out ntk00.npy      # 00 entries only (N×N)
    jntk kernel --dataset banknote --depth 3 --out bank.zarr            # Zarr: same as `jntk gram`

``.npy`` holds the Gram alone (written through a memory map, strip by strip);
``.npz`` holds ``gram``, ``X``, ``y`` and a JSON ``meta``; ``.zarr`` runs the distributed Gram
job (embedded Ray) so the store is the same as ``jntk gram`` writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .text import plain_text

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``kernel`` sub-command."""
    p = subparsers.add_parser(
        "kernel", help="compute one dataset's kernel in this process and write it to a file",
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a dataset of jntk_dist.data (forest_fires, banknote, "
                     "sonar, digits, fibonacci); one of --dataset / --data is required")
    src.add_argument("--data", type=Path, help=".npz with X and y, or .npy/.csv table with y last")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. near_parallel_threshold=0.99 (repeatable)")
    p.add_argument("--depth", type=int, required=True, help="hidden layers L")
    p.add_argument("--activation", default="gelu",
                   help="the activation's name (default gelu; a name it does not know is "
                        "answered with the list)")
    p.add_argument("--kind", default="jntk",  # checked by the kernels (torch: not imported here)
                   help="jntk (Θ, the default) or nngp (Jacobian NNGP Σ^(L))")
    p.add_argument("--lam", type=float, default=None, help="report Θ_λ = ΛΘΛ (default: none, the unscaled Θ)")
    p.add_argument("--plain", action="store_true",
                   help="only the 00 entries (plain NNGP/NTK, N×N; any activation)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="default float64")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the recursion and the expansion (erf/gelu): ~3× faster "
                        "for big N after a compile of seconds")
    p.add_argument("--out", type=Path, required=True, help=".npy, .npz or .zarr")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _options(items: list[str]) -> dict[str, Any]:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


def run(args: argparse.Namespace) -> int:
    """Compute and write the kernel; print where it went."""
    from ..workflows.kernel import KernelRequest, write_kernel

    req = KernelRequest(out=args.out, depth=args.depth, dataset=args.dataset, data=args.data,
                        options=_options(args.option), activation=args.activation,
                        kind=args.kind, lam=args.lam, plain=args.plain, dtype=args.dtype,
                        compile=args.compile, overwrite=args.overwrite,
                        progress=not args.no_progress)
    print(write_kernel(req), flush=True)
    return 0
