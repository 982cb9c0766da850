"""``jntk gram CONFIG.yaml``: compute a dataset's Jacobian NNGP / JNTK Gram into a Zarr store."""

from __future__ import annotations

import argparse

from . import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gram`` sub-command."""
    parser = subparsers.add_parser(
        "gram", help="compute a Gram matrix into a Zarr store with Ray actors (resumable)",
        description="Compute the Jacobian NNGP or JNTK Gram matrix of a dataset, tile by tile on "
                    "Ray actors, into a Zarr store. Rerunning completes a partial store.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``jntk gram`` and ``jobs/gram.py``."""
    add_config_arguments(parser, "configs/quickstart.yaml",
                         "replace an existing store written by a different config")


def run(args: argparse.Namespace) -> int:
    """Run the job; print where the store is and how to open it."""
    from ..config import load_config
    from ..gram_job import GramJobConfig, describe, run_gram

    config = load_config(args.config, GramJobConfig, args.overrides)
    result = run_gram(config, overwrite=args.overwrite,
                      progress=False if args.no_progress else None)
    print(describe(result), flush=True)
    return 0
