"""``jntk verify STORE``: check a Gram store chunk by chunk.

    jntk verify runs/quickstart.zarr
    jntk verify s3://bucket/q.zarr --storage-option endpoint_url=http://127.0.0.1:9000

Every chunk must decode and match its checksum (format 2 stores), hold finite numbers, and be
there when its tile is marked done; each computed tile must equal its mirror exactly; X and y
must match their recorded hashes; ``--samples`` random entries are recomputed from the kernels.
Each bad chunk is named with its path and tile; the exit status is 2 when any is found, and
``jntk gram CONFIG --repair`` recomputes exactly the bad tiles.
"""

from __future__ import annotations

import argparse

from .text import plain_text

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``verify`` sub-command."""
    p = subparsers.add_parser(
        "verify", help="check every chunk of a Gram store (checksums, NaN, done marks, "
        "mirrors, sampled entries against the kernels)", description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="the store: a path or an fsspec URL")
    p.add_argument("--samples", type=int, default=16,
                   help="random entries recomputed from the kernels (default 16; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="which entries are sampled (default 0)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option for a URL store (repeatable; values parsed as YAML)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Verify the store; print the report (exit 0), or raise the error listing bad chunks."""
    from ..workflows.config import apply_overrides
    from ..workflows.verify import run_verify

    options = apply_overrides({}, args.storage_option) if args.storage_option else None
    print(run_verify(args.store, options, samples=args.samples, seed=args.seed), flush=True)
    return 0
