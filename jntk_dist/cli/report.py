"""``jntk report``: collect the paper-experiment runs into ``docs/reproduction.md``.

Reads ``<runs>/<name>/run.json`` and the result store of every config in ``configs/paper/`` (run
them with ``jntk reproduce [--quick]``), computes the verdicts from the stored numbers
and writes one table per figure (the paper's claim, ours, agree / disagree, why) with the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``jntk report`` and ``jobs/report.py``."""
    from ..workflows.reproduce import PAPER_CONFIGS

    parser.add_argument("--runs", default="runs/paper", help="folder of the runs (default "
                        "runs/paper, as written by jntk reproduce --out)")
    parser.add_argument("--out", default="docs/reproduction.md", help="Markdown report to write "
                        "(its text above the marker line is kept)")
    parser.add_argument("--figures", default=None, help="where the PNGs are copied (default: "
                        "figures/ next to --out)")
    parser.add_argument("--configs", default=str(PAPER_CONFIGS), help="folder of paper configs")
    parser.add_argument("--only", default=None, help="comma-separated experiment names "
                        "(e.g. fig6,b7)")
    parser.add_argument("--merge", action="append", default=[], metavar="RUNS",
                        help="another runs folder whose assumption8 runs join the tables of "
                        "--runs (e.g. depths run separately; repeatable; a depth computed twice "
                        "is taken from the first folder)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report", help="paper claims vs our numbers, from the runs of jntk reproduce",
        description="Collect the runs of the paper configs into a Markdown report: per figure "
                    "the paper's claim, our number, agree/disagree and why, and the figures.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print one summary line per experiment."""
    from ..report import collect, write_report
    from ..workflows.reproduce import paper_configs

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    exps = paper_configs(args.configs, only)
    if not Path(args.runs).is_dir():
        raise FileNotFoundError(f"runs folder {args.runs} does not exist; run "
                                "`jntk reproduce --quick --out "
                                f"{args.runs}` first")
    missing = [d for d in args.merge if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"runs folder(s) to merge do not exist: {missing}")
    reports = collect(args.runs, exps, merge=args.merge, configs=args.configs)
    runs = args.runs + "".join(f"` + `{d}" for d in args.merge)
    out = write_report(reports, args.out, args.figures, runs_dir=runs)
    for r in reports:
        c = r.counts()
        state = r.problem or f"{c['agree']} agree, {c['disagree']} disagree, {c['n/a']} n/a"
        print(f"{r.exp.name:>16} ({', '.join(r.exp.figures)}): {state}")
    print(f"report: {out}", flush=True)
    return 0
