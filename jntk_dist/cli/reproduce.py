"""``jntk reproduce``: run every paper experiment of ``configs/paper/`` in sequence.

    jntk reproduce --quick                      # all, reduced, into runs/paper
    jntk reproduce --only fig6,b7 --out runs/paper-full
    ray job submit --working-dir . -- python jobs/reproduce.py --only fig1   # on a cluster
    jntk report --runs runs/paper --out docs/reproduction.md               # then the report

Each experiment runs its job from the registry (``drift`` / ``assumption8`` / ``eigenfeatures``)
with the config's ``config:`` block, plus its ``quick:`` overrides with ``--quick``, plus ``--set``
overrides; output goes to ``<out>/<name>/`` with a ``run.json`` (status, wall time, hardware).
A failing experiment is recorded and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse

from .text import plain_text
from ..errors import ConfigError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` sub-command."""
    from ..workflows.reproduce import PAPER_CONFIGS

    p = subparsers.add_parser(
        "reproduce", help="run the paper's experiments (configs/paper/) into a runs folder",
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="apply each config's quick: block")
    p.add_argument("--only", default=None, help="comma-separated experiment names (default: all)")
    p.add_argument("--out", default="runs/paper", help="runs folder (default runs/paper)")
    p.add_argument("--configs", default=str(PAPER_CONFIGS), help="folder of paper configs (default configs/paper of "
                   "this checkout)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a job-config key in every selected "
                   "experiment (after quick:)")
    p.add_argument("--overwrite", action="store_true", help="delete earlier results first "
                   "(otherwise drift grids resume and the analyses rewrite their groups)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the selected experiments; one line per experiment; exit 1 if any failed."""
    from ..store import is_url
    from ..workflows.reproduce import paper_configs, reproduce

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if is_url(args.out):
        raise ConfigError(f"--out {args.out} is a URL; the runs folder (run.json, stores, "
                         "figures read by jntk report) must be a local or shared path")
    exps = paper_configs(args.configs, only)
    records = reproduce(exps, args.out, quick=args.quick, overrides=args.overrides,
                        overwrite=args.overwrite, progress=not args.no_progress,
                        num_cpus=args.num_cpus)
    for r in records:
        state = "ok" if r["status"] == "ok" else f"FAILED: {r.get('error')}"
        print(f"{r['experiment']:>16}: {r['seconds']:8.1f} s  {state}", flush=True)
    print(f"runs in {args.out}; report: jntk report --runs {args.out}", flush=True)
    return 0 if all(r["status"] == "ok" for r in records) else 1
