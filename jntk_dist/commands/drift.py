"""``jntk drift CONFIG.yaml``: finite networks vs. the analytic kernels over a width × depth × seed
grid on Ray (Figs. 1–3 of the paper); results in a Zarr store, plots and fitted slopes."""

from __future__ import annotations

import argparse

from . import add_config_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``drift`` sub-command."""
    parser = subparsers.add_parser(
        "drift", help="kernel distance of many finite networks vs width (Ray Train, resumable)",
        description="Run a grid of finite networks (widths × depths × seeds) concurrently on Ray "
                    "and record the max-norm distance of their finite JNTK (during robust "
                    "training) or Monte-Carlo Jacobian NNGP to the analytic kernel. Rerunning "
                    "finishes an interrupted grid; runs resume from their checkpoints.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``jntk drift`` and ``jobs/drift.py``."""
    add_config_arguments(parser, "configs/drift_quick.yaml",
                         "replace an existing store (and its checkpoints)")


def run(args: argparse.Namespace) -> int:
    """Run the grid; print where the results are and the fitted slopes."""
    from ..config import load_config
    from ..drift import DriftConfig, describe, run_drift

    config = load_config(args.config, DriftConfig, args.overrides)
    result = run_drift(config, overwrite=args.overwrite,
                       progress=False if args.no_progress else None)
    print(describe(result), flush=True)
    return 0
